"""The EVM witness: digests recorded by fedchain's anchor contract on an Ethereum-style chain.

The contract (``contracts/FedchainAnchor.sol``, compiled offline to ``FedchainAnchor.json``; see
``contracts/compile.js``) keeps ``digest -> (EVM block number, block timestamp)`` for the first
call that anchors a digest and emits ``Anchored(digest, sender, blockNumber, timestamp)``.

A proof is JSON ``{"chain_id", "contract", "tx_hash"}``: the call that anchored the digest. To
check one, :class:`EvmWitness` asks its own node (the one the verifier trusts, never one named
by the proof): the chain id must be the node's, the contract the one the verifier trusts, the
code at that address the artifact's, the transaction a successful call to it that emitted the
digest, and the contract's record of the digest must exist (its block and time are the stamp).

Nodes: a JSON-RPC URL (:func:`connect`), or ``"memory"``: an in-memory chain in this process
(eth-tester on py-evm, :func:`memory_chain`), for tests and trials (to share one with other
processes, serve it: :mod:`fedchain.anchor.local_evm`). A digest is sent from the node's first
account (a development node's, e.g. eth-tester's or ``anvil``'s funded ones), or, where the node
holds no unlocked account (a public chain's), signed here with a key from a file
(:func:`load_account`, :func:`signing_with`) and sent raw.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import EthereumTesterProvider, Web3
from web3.exceptions import TransactionNotFound, Web3Exception
from web3.logs import DISCARD
from web3.middleware import SignAndSendRawMiddlewareBuilder

from fedchain.anchor.witness import Stamp, WitnessRecord, compute_anchor_digest
from fedchain.errors import AnchorError
from fedchain.ledger.objects import AnchorStatement

__all__ = [
    "ARTIFACT_PATH",
    "MEMORY",
    "EvmWitness",
    "connect",
    "deploy_contract",
    "load_account",
    "load_artifact",
    "memory_chain",
    "signing_with",
]

SAFE_RECURSION_LIMIT = 12_288
"""The interpreter's recursion limit once this module is imported, at most. ``py_ecc`` (imported
by web3) raises it to 100,000 for the whole process: deep enough that json's C parser overflows
the C stack on a deeply nested document (a crash where a ``RecursionError`` was due). py-evm asks
for 12,288 (1,024 EVM call frames), which json survives; a lower limit set before stays."""
sys.setrecursionlimit(min(sys.getrecursionlimit(), SAFE_RECURSION_LIMIT))

ARTIFACT_PATH = Path(__file__).parent / "contracts" / "FedchainAnchor.json"
MEMORY = "memory"
"""The node URL that names this process's in-memory chain (:func:`memory_chain`)."""

_MEMORY_LOCK = threading.Lock()


@cache
def load_artifact() -> dict[str, Any]:
    """The compiled contract: ``abi``, ``bytecode`` (deployment), ``deployedBytecode``."""
    artifact: dict[str, Any] = json.loads(ARTIFACT_PATH.read_text())
    return artifact


@cache
def memory_chain() -> Web3:
    """This process's in-memory EVM chain (eth-tester's py-evm backend, funded test accounts).

    One per process, so that a simulated run and ``verify`` in the same process (a test, a
    notebook) see the same chain; it is gone when the process ends."""
    return Web3(EthereumTesterProvider())


def connect(url: str) -> Web3:
    """A node: ``"memory"`` (this process's in-memory chain) or a JSON-RPC HTTP URL."""
    if url == MEMORY:
        return memory_chain()
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    if not w3.is_connected():
        raise AnchorError(f"no EVM node answers at {url}")
    return w3


def load_account(path: Path) -> LocalAccount:
    """The EVM account whose private key is in the file ``path`` (64 hex digits, ``0x``
    optional). Refused if others may read the file, as ssh refuses such a key: it spends the
    account's funds. Messages never show the file's content."""
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise AnchorError(f"cannot read the EVM key file {path}: {e}") from e
    if mode & 0o077:
        raise AnchorError(
            f"the EVM key file {path} can be read by others (mode {mode:o}): chmod 600 it"
        )
    try:
        account: LocalAccount = Account.from_key(text)
    except (ValueError, TypeError):
        raise AnchorError(
            f"{path} does not hold an EVM private key (64 hex digits, 0x optional)"
        ) from None
    return account


def signing_with(w3: Web3, account: LocalAccount) -> Web3:
    """A client of ``w3``'s node that sends from ``account``, signing each transaction here
    with its key (web3's sign-and-send-raw middleware); ``w3`` itself is left as it was."""
    signer = Web3(w3.provider)
    signer.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(account), layer=0)
    signer.eth.default_account = account.address
    return signer


def deploy_contract(w3: Web3) -> str:
    """Deploy the anchor contract from the node's first account; its checksum address."""
    artifact = load_artifact()
    contract = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    try:
        tx_hash = contract.constructor().transact({"from": _sender(w3)})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    except Web3Exception as e:
        raise AnchorError(f"could not deploy the anchor contract: {e}") from e
    address = receipt["contractAddress"]
    if receipt["status"] != 1 or address is None:
        raise AnchorError("the anchor contract's deployment failed on the chain")
    return str(address)


class EvmWitness:
    """The anchor contract at ``contract`` on the chain ``w3`` talks to.

    ``trusted_senders``: accounts whose anchors :meth:`history` lists besides those that sent
    the receipts in hand (the coordinator's account, for a verifier that knows it: a ledger
    stripped of every receipt is then still caught)."""

    kind = "evm"

    def __init__(self, w3: Web3, contract: str, trusted_senders: Sequence[str] = ()) -> None:
        try:
            contract = to_checksum_address(contract)
        except ValueError as e:
            raise AnchorError(f"{contract!r} is not an EVM address") from e
        self.w3 = w3
        self.address = contract
        self.contract = w3.eth.contract(address=contract, abi=load_artifact()["abi"])
        self.trusted_senders = tuple(to_checksum_address(s) for s in trusted_senders)
        self.gas_used: list[int] = []  # per publish, for the cost benchmark

    def publish(self, statement: AnchorStatement) -> bytes:
        digest = compute_anchor_digest(statement)
        w3 = self.w3
        call = self.contract.functions.anchor(statement.genesis_hash, statement.height, digest)
        try:
            with _MEMORY_LOCK:  # eth-tester is not thread-safe; a real node does not mind
                tx_hash = call.transact({"from": _sender(w3)})
                receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
                chain_id = w3.eth.chain_id
        except Web3Exception as e:
            raise AnchorError(f"the EVM node did not anchor digest {digest.hex()}: {e}") from e
        if receipt["status"] != 1:
            raise AnchorError(f"the anchor transaction {tx_hash.hex()} failed on the chain")
        self.gas_used.append(int(receipt["gasUsed"]))
        proof = {"chain_id": chain_id, "contract": self.address, "tx_hash": "0x" + tx_hash.hex()}
        encoded = json.dumps(proof, sort_keys=True, separators=(",", ":")).encode()
        self.check(statement, encoded)  # a call to an address without the contract succeeds too
        return encoded

    def check(self, statement: AnchorStatement, proof: bytes) -> Stamp:
        digest = compute_anchor_digest(statement)
        chain_id, contract, tx_hash = _parse_proof(proof)
        with _MEMORY_LOCK:
            try:
                return self._check(statement, digest, chain_id, contract, tx_hash)[0]
            except Web3Exception as e:
                raise AnchorError(f"the EVM node could not check the anchor: {e}") from e

    def history(self, genesis_hash: bytes, proofs: Sequence[bytes]) -> list[WitnessRecord]:
        senders: set[str] = set(self.trusted_senders)
        with _MEMORY_LOCK:
            try:
                for proof in proofs:
                    sender = self._sender_of(proof)
                    if sender is not None:
                        senders.add(sender)
                logs = self.contract.events.Anchored().get_logs(
                    from_block=0, argument_filters={"federation": genesis_hash}
                )
            except (Web3Exception, TransactionNotFound) as e:
                raise AnchorError(f"the EVM node could not list the anchors: {e}") from e
        records = []
        for log in logs:
            args = log["args"]
            if args["sender"] not in senders or bytes(args["federation"]) != genesis_hash:
                continue  # anyone may call the contract: only the anchorer's records count
            stamp = Stamp(int(args["timestamp"]), self._where(int(args["blockNumber"])))
            records.append(WitnessRecord(int(args["height"]), bytes(args["digest"]), stamp))
        return records

    def _sender_of(self, proof: bytes) -> str | None:
        """Who sent the call a proof names (None for a proof that names none: its receipt's
        own check reports it)."""
        try:
            _, _, tx_hash = _parse_proof(proof)
            return str(self.w3.eth.get_transaction(tx_hash)["from"])  # type: ignore[arg-type]
        except (AnchorError, TransactionNotFound):
            return None

    def _where(self, block_number: int) -> str:
        return f"EVM chain {self.w3.eth.chain_id}, contract {self.address}, block {block_number}"

    def _check(
        self,
        statement: AnchorStatement,
        digest: bytes,
        chain_id: int,
        contract: str,
        tx_hash: str,
    ) -> tuple[Stamp, str]:
        w3 = self.w3
        if chain_id != w3.eth.chain_id:
            raise AnchorError(
                f"the receipt is for EVM chain {chain_id}; the node is chain {w3.eth.chain_id}"
            )
        if contract != self.address:
            raise AnchorError(
                f"the receipt names contract {contract}; the trusted anchor contract is "
                f"{self.address}"
            )
        code = bytes(w3.eth.get_code(self.address))
        if code != bytes.fromhex(load_artifact()["deployedBytecode"].removeprefix("0x")):
            raise AnchorError(f"{self.address} does not hold fedchain's anchor contract code")
        try:
            receipt = w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound as e:
            raise AnchorError(f"the chain has no anchor transaction {tx_hash}") from e
        if receipt["status"] != 1 or receipt["to"] != self.address:
            raise AnchorError(f"transaction {tx_hash} is not a successful call to {self.address}")
        events = self.contract.events.Anchored().process_receipt(receipt, errors=DISCARD)
        mine = [e["args"] for e in events if bytes(e["args"]["digest"]) == digest]
        if not mine:
            shown = ", ".join(bytes(e["args"]["digest"]).hex() for e in events) or "nothing"
            raise AnchorError(
                f"transaction {tx_hash} anchored {shown}, not this statement's digest "
                f"{digest.hex()}"
            )
        if int(mine[0]["height"]) != statement.height:
            raise AnchorError(
                f"transaction {tx_hash} claims height {mine[0]['height']}, the statement "
                f"{statement.height}"
            )
        block_number, timestamp = self.contract.functions.stampOf(digest).call()
        if block_number == 0:
            raise AnchorError(f"contract {self.address} has no record of digest {digest.hex()}")
        return Stamp(int(timestamp), self._where(int(block_number))), str(mine[0]["sender"])


def _sender(w3: Web3) -> str:
    """The account to send from: the client's own (:func:`signing_with`), else the node's
    first."""
    if isinstance(w3.eth.default_account, str):  # web3's "empty" marker when unset
        return w3.eth.default_account
    accounts = w3.eth.accounts
    if not accounts:
        raise AnchorError("the EVM node manages no account to send the anchor from")
    return str(accounts[0])


def _parse_proof(proof: bytes) -> tuple[int, str, str]:
    try:
        doc = json.loads(proof)
        chain_id, contract, tx_hash = doc["chain_id"], doc["contract"], doc["tx_hash"]
    except (ValueError, KeyError, TypeError) as e:
        raise AnchorError("the EVM proof is not {chain_id, contract, tx_hash} JSON") from e
    if type(chain_id) is not int or not isinstance(contract, str) or not isinstance(tx_hash, str):
        raise AnchorError("the EVM proof's fields have the wrong types")
    try:
        contract = to_checksum_address(contract)
        int(tx_hash.removeprefix("0x"), 16)
    except ValueError as e:
        raise AnchorError(f"the EVM proof names a malformed address or hash: {e}") from e
    tx = tx_hash if tx_hash.startswith("0x") else "0x" + tx_hash
    return chain_id, contract, tx
