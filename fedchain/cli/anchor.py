"""``fedchain anchor serve-evm`` and ``serve-tsa``: local witnesses to try anchoring with.

Each serves a witness (:mod:`fedchain.anchor.local_evm`, :mod:`fedchain.anchor.local_tsa`) on a
loopback port until Ctrl-C or SIGTERM, prints what ``simulate --anchor`` and ``verify --anchors``
need, and writes it to ``--info FILE`` (JSON, written once serving, removed on stop) for scripts.
For trying and testing only: their keys are in the open and their records die with them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from fedchain.cli.common import console, make_app
from fedchain.durable import write_atomically
from fedchain.errors import AnchorError, ConfigError

app = make_app(
    "Local witnesses to try anchoring with (for trying and testing only, not a trust anchor: "
    "their keys are in the open and their records are gone when they stop)."
)

Host = Annotated[
    str,
    typer.Option(help="Address to listen on; a non-loopback one needs --allow-remote."),
]
Port = Annotated[int, typer.Option(help="Port to listen on (0: any free port, printed).")]
AllowRemote = Annotated[
    bool,
    typer.Option(
        "--allow-remote",
        help="Allow a non-loopback --host: anyone who reaches it can use this witness.",
    ),
]
Info = Annotated[
    Path | None,
    typer.Option(
        help="Write what clients need (JSON) here once serving; removed when it stops.",
    ),
]
NOT_A_TRUST_ANCHOR = "for trying and testing only, not a trust anchor"


@app.command("serve-evm")
def serve_evm(
    host: Host = "127.0.0.1",
    port: Port = 0,
    allow_remote: AllowRemote = False,
    info: Info = None,
    fund: Annotated[
        list[str] | None,
        typer.Option(
            help="Send 10 test ether to this address at start (repeatable): the account of a "
            "`simulate --anchor-key` key file, which pays for its own anchors.",
        ),
    ] = None,
) -> None:
    """Serve an EVM test chain with fedchain's anchor contract (for trying and testing only).

    An in-memory chain (eth-tester) over JSON-RPC, with the contract deployed, until Ctrl-C or
    SIGTERM: `simulate --anchor evm --anchor-url URL --anchor-contract ADDR` and
    `verify RUN --anchors --evm-url URL --evm-contract ADDR` in other terminals use it. For
    trying and testing only, not a trust anchor: its accounts' keys are public and its chain is
    gone when it stops."""
    try:
        from fedchain.anchor.local_evm import serve_evm as serve  # web3: only when asked for
    except ImportError as e:
        raise AnchorError(f"serve-evm needs web3: pip install 'fedchain[anchor]' ({e})") from e

    with (
        _until_stopped() as stopped,
        serve(host, port, allow_remote=allow_remote, fund=tuple(fund or ())) as node,
    ):
        _say(
            f"EVM node   {node.url} (chain id {node.chain_id}; {NOT_A_TRUST_ANCHOR})",
            f"contract   {node.contract}",
            f"sender     {node.sender}",
            f"anchor:    fedchain simulate --anchor evm --anchor-url {node.url} "
            f"--anchor-contract {node.contract} ...",
            f"verify:    fedchain verify RUN --anchors --evm-url {node.url} "
            f"--evm-contract {node.contract} --evm-sender {node.sender}",
        )
        doc = {
            "url": node.url,
            "chain_id": node.chain_id,
            "contract": node.contract,
            "sender": node.sender,
        }
        with _info_file(info, doc):
            _say("Ctrl-C stops it (the chain and its anchors go with it).")
            _wait(stopped)


@app.command("serve-tsa")
def serve_tsa(
    cert: Annotated[
        Path,
        typer.Option(
            help="Write the TSA's root certificate (PEM) here: `--anchor-tsa-cert` and "
            "`verify --tsa-cert` take it. Must not exist.",
        ),
    ],
    host: Host = "127.0.0.1",
    port: Port = 0,
    allow_remote: AllowRemote = False,
    info: Info = None,
) -> None:
    """Serve an RFC 3161 test timestamping authority (for trying and testing only).

    A fresh TSA over HTTP (POST application/timestamp-query) until Ctrl-C or SIGTERM:
    `simulate --anchor rfc3161 --anchor-url URL --anchor-tsa-cert CERT` uses it, and later
    `verify RUN --anchors --tsa-cert CERT` checks the run (the TSA need not run then). For
    trying and testing only, not a trust anchor: its key lives in this process and a new one
    is made at each start."""
    try:
        from fedchain.anchor.local_tsa import LocalTsa  # asn1crypto: only when asked for
    except ImportError as e:
        raise AnchorError(
            f"serve-tsa needs asn1crypto: pip install 'fedchain[anchor]' ({e})"
        ) from e

    tsa = LocalTsa()
    try:
        write_atomically(cert, tsa.root_pem, overwrite=False)
    except FileExistsError:
        raise ConfigError(
            f"{cert} exists: a new TSA's certificate would replace the one earlier runs verify "
            "against; name another file"
        ) from None
    with _until_stopped() as stopped, tsa.serve(host, port, allow_remote=allow_remote) as url:
        _say(
            f"TSA        {url} ({NOT_A_TRUST_ANCHOR})",
            f"cert       {cert}",
            f"anchor:    fedchain simulate --anchor rfc3161 --anchor-url {url} "
            f"--anchor-tsa-cert {cert} ...",
            f"verify:    fedchain verify RUN --anchors --tsa-cert {cert}",
        )
        with _info_file(info, {"url": url, "cert": str(cert.resolve())}):
            _say("Ctrl-C stops it (the certificate file stays, for verify).")
            _wait(stopped)


def _say(*lines: str) -> None:
    """Print whole lines (no wrapping: they are commands to copy), as plain text."""
    for line in lines:
        console.print(line, soft_wrap=True, markup=False)


@contextlib.contextmanager
def _until_stopped() -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets while in the block (so the command ends cleanly,
    leaving its ``with`` blocks, instead of dying in one)."""
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _wait(stopped: threading.Event) -> None:
    while not stopped.wait(0.5):  # a timed wait: signal handlers run between the waits
        pass
    _say("stopped")


@contextlib.contextmanager
def _info_file(path: Path | None, doc: dict[str, Any]) -> Iterator[None]:
    if path is None:
        yield
        return
    write_atomically(path, (json.dumps(doc, indent=2) + "\n").encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
