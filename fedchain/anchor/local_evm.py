"""A local EVM node, for tests and trials: eth-tester's in-memory chain behind JSON-RPC over HTTP.

``--anchor-url memory`` is a chain inside one process, gone when it ends; :func:`serve_evm` puts
such a chain behind a URL (``fedchain anchor serve-evm``), so that ``fedchain simulate --anchor
evm`` and ``fedchain verify --anchors`` in other processes publish to and check with the same
chain, as they would with a real node. Each JSON-RPC request goes through web3's
``EthereumTesterProvider`` and its formatting middleware (RPC parameters to eth-tester's and back,
as web3 does in-process); numbers and bytes in results go out as JSON-RPC hex strings.

It deploys fedchain's anchor contract at start. Its accounts are eth-tester's funded test
accounts, unlocked, with well-known keys, and its chain lives in memory: a witness for trying and
testing only, never a trust anchor. A real deployment anchors to a public chain's node.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address
from web3 import EthereumTesterProvider, Web3
from web3.types import Wei

from fedchain.anchor import evm
from fedchain.anchor.local_http import serve_http
from fedchain.errors import AnchorError

__all__ = ["FUNDING_WEI", "LocalEvmNode", "answer_rpc", "serve_evm"]

Rpc = Callable[[str, Any], Any]
"""Send one request (method, params) to the chain; its response dict (``result`` or ``error``)."""


@dataclass(frozen=True, slots=True)
class LocalEvmNode:
    """A served chain: its URL, chain id, the anchor contract and the account anchors come from
    (the one ``simulate --anchor evm`` sends from, ``verify --evm-sender``)."""

    url: str
    chain_id: int
    contract: str
    sender: str


def _to_rpc(value: Any) -> Any:
    """A result as JSON-RPC writes it: quantities and byte strings as 0x-hex."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {k: _to_rpc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_rpc(v) for v in value]
    return str(value)


def answer_rpc(rpc: Rpc, request: Any) -> dict[str, Any]:
    """The JSON-RPC 2.0 response to one request object, sent to the chain through ``rpc``."""
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "not a request"}}
    answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
    try:
        response = rpc(request["method"], request.get("params", []))
    except Exception as e:  # eth-tester's and the formatters' errors: the caller's to read
        answer["error"] = {"code": -32000, "message": f"{type(e).__name__}: {e}"}
        return answer
    if "error" in response:
        answer["error"] = dict(response["error"])
    else:
        answer["result"] = _to_rpc(response.get("result"))
    return answer


def _make_handler(rpc: Rpc) -> type[http.server.BaseHTTPRequestHandler]:
    lock = threading.Lock()  # eth-tester is not thread-safe: one request at a time

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                request = json.loads(body)
            except ValueError:
                answer: Any = {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": -32700, "message": "not JSON"},
                }
            else:
                with lock:
                    if isinstance(request, list):  # a batch
                        answer = [answer_rpc(rpc, r) for r in request]
                    else:
                        answer = answer_rpc(rpc, request)
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the command prints its own lines

    return Handler


FUNDING_WEI = Wei(10**19)
"""What :func:`serve_evm` gives each account it is asked to fund: 10 ether, gas for ~10⁵ anchors."""


@contextlib.contextmanager
def serve_evm(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    fund: Sequence[str] = (),
) -> Iterator[LocalEvmNode]:
    """A fresh in-memory chain served on ``host``:``port`` (see
    :func:`~fedchain.anchor.local_http.serve_http`) while in the block, with fedchain's anchor
    contract deployed through the served URL itself, and :data:`FUNDING_WEI` sent to each
    address in ``fund`` (accounts that sign their own anchors: ``simulate --anchor-key``)."""
    provider = EthereumTesterProvider()
    bare = Web3(provider, middleware=[])  # the provider's own formatting only, as a node's
    rpc: Rpc = provider.request_func(bare, bare.middleware_onion)
    with serve_http(_make_handler(rpc), host, port, allow_remote=allow_remote) as url:
        w3 = evm.connect(url)
        contract = evm.deploy_contract(w3)
        for address in fund:
            _send_funds(w3, address)
        yield LocalEvmNode(url, int(w3.eth.chain_id), contract, str(w3.eth.accounts[0]))


def _send_funds(w3: Web3, address: str) -> None:
    """:data:`FUNDING_WEI` from the chain's first account to ``address``."""
    try:
        to = to_checksum_address(address)
    except ValueError as e:
        raise AnchorError(f"{address!r} is not an EVM address to fund") from e
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": to, "value": FUNDING_WEI})
    w3.eth.wait_for_transaction_receipt(tx)
