"""The witness a run's settings or ``verify``'s options name, and a coordinator's anchoring.

The EVM witness needs web3 (≈ 2 s to import) and the RFC 3161 one rfc3161-client: each is
imported only when asked for, so a run or a ``verify`` without anchors never loads them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fedchain.anchor.receipts import Anchoring
from fedchain.anchor.witness import Witness
from fedchain.config import RunConfig
from fedchain.errors import AnchorError
from fedchain.ledger.objects import AnchorReceipt
from fedchain.ledger.verify import VerifyReport

__all__ = [
    "make_evm_witness",
    "make_rfc3161_witness",
    "make_run_anchoring",
    "make_verify_witnesses",
]


def make_evm_witness(
    url: str, contract: str, trusted_senders: tuple[str, ...] = (), key_file: str = ""
) -> Witness:
    """The anchor contract ``contract`` on the node at ``url`` (``"memory"``: this process's
    in-memory chain); an empty ``contract`` deploys a new one (a publisher's first run).
    ``key_file``: sign what the witness sends with that file's EVM key (empty: the node's
    first account sends)."""
    try:
        from fedchain.anchor import evm  # web3: only when an EVM witness is asked for
    except ImportError as e:
        raise AnchorError(
            f"the EVM witness needs web3: pip install 'fedchain[anchor]' ({e})"
        ) from e

    w3 = evm.connect(url)
    if key_file:
        w3 = evm.signing_with(w3, evm.load_account(Path(key_file)))
    return evm.EvmWitness(w3, contract or evm.deploy_contract(w3), trusted_senders)


def make_rfc3161_witness(tsa_cert: Path, url: str = "") -> Witness:
    """The TSA whose tokens verify against the PEM certificate(s) ``tsa_cert``; requests go to
    ``url`` (empty: this witness only checks)."""
    try:
        from fedchain.anchor import rfc3161  # rfc3161-client: only when a TSA is asked for
    except ImportError as e:
        raise AnchorError(
            f"the RFC 3161 witness needs rfc3161-client: pip install 'fedchain[anchor]' ({e})"
        ) from e

    try:
        pem = Path(tsa_cert).read_bytes()
    except OSError as e:
        raise AnchorError(f"cannot read the TSA certificate {tsa_cert}: {e}") from e
    send = rfc3161.http_transport(url) if url else None
    return rfc3161.Rfc3161Witness(rfc3161.load_certificates(pem), send)


def make_run_anchoring(
    config: RunConfig, run_dir: Path, verified: VerifyReport | None
) -> Anchoring | None:
    """The anchoring ``config`` asks for (None when off), resuming after the highest height
    the verified ledger already anchored."""
    if config.anchor == "off":
        return None
    witness: Witness
    if config.anchor == "evm":
        witness = make_evm_witness(
            config.anchor_url, config.anchor_contract, key_file=config.anchor_key
        )
    else:
        witness = make_rfc3161_witness(Path(config.anchor_tsa_cert), config.anchor_url)
    receipts = verified.anchor_receipts if verified is not None else ()
    anchored = max((r.statement.height for _, r in receipts), default=0)
    return Anchoring(witness, config.anchor_every, run_dir, anchored)


def make_verify_witnesses(
    receipts: Sequence[AnchorReceipt],
    *,
    evm_url: str = "",
    evm_contract: str = "",
    evm_senders: Sequence[str] = (),
    tsa_cert: Path | None = None,
) -> tuple[dict[str, Witness], list[str]]:
    """The witnesses ``verify --anchors`` checks with, and notes for the user.

    Without ``evm_contract`` the contract the ``receipts`` name is used, and a note says so
    (its code is still checked to be fedchain's anchor contract; pin it to be sure whose)."""
    witnesses: dict[str, Witness] = {}
    notes: list[str] = []
    if evm_url:
        contract = evm_contract
        if not contract:
            named = sorted({_contract_of(r) for r in receipts if r.witness == "evm"} - {""})
            if len(named) != 1:
                raise AnchorError(
                    "give --evm-contract: the receipts name "
                    + ("no EVM contract" if not named else f"several ({', '.join(named)})")
                )
            contract = named[0]
            notes.append(
                f"EVM contract {contract}: taken from the receipts (pin it with --evm-contract)"
            )
        witnesses["evm"] = make_evm_witness(evm_url, contract, tuple(evm_senders))
    if tsa_cert is not None:
        witnesses["rfc3161"] = make_rfc3161_witness(tsa_cert)
    return witnesses, notes


def _contract_of(receipt: AnchorReceipt) -> str:
    try:
        contract = json.loads(receipt.proof).get("contract", "")
    except (ValueError, AttributeError):
        return ""
    return contract if isinstance(contract, str) else ""
