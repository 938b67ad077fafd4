"""Values derived from the ledger's objects: hashes, transaction roots, signing messages and
signature domains, the federation id a genesis participant signs, the DP mechanism a
federation's rules fix, and who may be given its models.

The objects themselves (:mod:`fedchain.ledger.objects`) only declare fields; everything here is
a pure function of them and of their one byte form (:func:`fedchain.ledger.codec.encode`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Sequence

from fedchain.crypto.identity import Domain
from fedchain.ledger.codec import compute_hash, encode, encode_with_empty
from fedchain.ledger.objects import (
    DP_OFF,
    EMPTY_HASH,
    AppApproval,
    Attestation,
    Block,
    BlockHeader,
    BlockTransaction,
    Genesis,
    GenesisParticipant,
    Hash32,
    PublicKey,
    Refusal,
    Registration,
    Rules,
    SignedHeader,
    SignedObject,
    UpdateCommitment,
)

__all__ = [
    "SIGNING_DOMAINS",
    "compute_block_hash",
    "compute_dp_mechanism",
    "compute_federation_id",
    "compute_tx_root",
    "compute_tx_root_of_encodings",
    "is_model_recipient",
    "signing_message",
]

SIGNING_DOMAINS: dict[type, Domain] = {
    GenesisParticipant: Domain.REGISTRATION,
    Registration: Domain.REGISTRATION,
    UpdateCommitment: Domain.UPDATE,
    Attestation: Domain.ATTESTATION,
    SignedHeader: Domain.BLOCK,
    AppApproval: Domain.APP_APPROVAL,
    Refusal: Domain.REFUSAL,
}
"""The signature domain of each signed class. A :class:`GenesisParticipant` and an
:class:`AppApproval` sign with the federation id (:func:`compute_federation_id`) as the
federation, every other one with the genesis hash."""


_U32 = struct.Struct("<I")
_EMPTY_SIGNATURE = _U32.pack(0)


def signing_message(obj: SignedObject, encoding: bytes | None = None) -> bytes:
    """The bytes a signed object's signature covers: its encoding with ``signature = b""``.

    ``encoding``, if given, must be ``encode(obj)``; the message is then cut from it instead of
    encoding again (the signature is every signed class's last field, checked at import).
    """
    if encoding is None:
        return encode_with_empty(obj, "signature")
    return encoding[: len(encoding) - _U32.size - len(obj.signature)] + _EMPTY_SIGNATURE


def compute_federation_id(run_id: str, rules: Rules) -> Hash32:
    """The id a genesis participant's registration signs: the hash of the federation's contract
    as fixed before anyone registers, ``compute_hash(Genesis(run_id, rules, EMPTY_HASH, ()))``
    (the initial model is made only when the run starts, and the participants are what is
    being signed)."""
    return compute_hash(Genesis(run_id, rules, EMPTY_HASH, ()))


def is_model_recipient(genesis: Genesis, public_key: PublicKey) -> bool:
    """Whether the federation's contract lets ``public_key`` be given its models: one of its
    participants, or a key its rules' ``model_access`` lists."""
    return public_key in genesis.rules.model_access or any(
        p.public_key == public_key for p in genesis.participants
    )


def compute_dp_mechanism(rules: Rules) -> tuple[int, int, int]:
    """``(noise multiplier micro, sampling rate micro, steps)``: what every commitment in a
    federation with these rules must claim (``(0, 0, 0)`` with DP off)."""
    if rules.dp_mode == DP_OFF:
        return (0, 0, 0)
    return (rules.dp_noise_micro, rules.dp_sample_rate_micro, rules.dp_steps_per_round)


def compute_block_hash(block_or_header: Block | BlockHeader) -> Hash32:
    """A block's hash is the hash of its header (the signature is not part of it)."""
    header = block_or_header.header if isinstance(block_or_header, Block) else block_or_header
    return compute_hash(header)


def compute_tx_root(transactions: Sequence[BlockTransaction]) -> Hash32:
    """``sha256(u32 count | compute_hash(tx) for each tx, in block order)``."""
    return compute_tx_root_of_encodings([encode(tx) for tx in transactions])


def compute_tx_root_of_encodings(encodings: Sequence[bytes]) -> Hash32:
    """:func:`compute_tx_root` from the transactions' encodings (``encode(tx)`` each)."""
    root = hashlib.sha256(_U32.pack(len(encodings)))
    for encoding in encodings:
        root.update(hashlib.sha256(encoding).digest())
    return root.digest()


def _check_signature_is_last_field() -> None:
    for cls in SIGNING_DOMAINS:
        if dataclasses.fields(cls)[-1].name != "signature":
            raise TypeError(f"{cls.__name__}: the signature must be the last field")


_check_signature_is_last_field()
