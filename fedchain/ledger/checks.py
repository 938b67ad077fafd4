"""Value checks and display ids that the genesis and the transaction rules share: key and hash
sizes, the Ed25519 key acceptance rule, strict ordering, the agreed rounds, and short ids for
error messages."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from fedchain.crypto import ed25519
from fedchain.crypto.identity import fingerprint
from fedchain.errors import InvalidTransaction
from fedchain.ledger.objects import HASH_SIZE, PublicKey, Rules

__all__ = [
    "check_agreed_round",
    "check_participant_key",
    "check_size",
    "describe_hash",
    "describe_key",
    "is_strictly_sorted",
]


def check_participant_key(key: PublicKey) -> None:
    """Refuse a participant key the Ed25519 acceptance rule refuses (wrong size, small order,
    non-canonical): every signature by it would be refused, and a small-order key would let
    anyone sign as it under a lenient verifier."""
    check_size(key, "public key")
    reason = ed25519.check_public_key(key)
    if reason is not None:
        raise InvalidTransaction(f"participant key {describe_key(key)} is refused: {reason}")


def check_size(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidTransaction(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def is_strictly_sorted(items: Sequence[Any]) -> bool:
    return all(a < b for a, b in itertools.pairwise(items))


def describe_key(key: bytes) -> str:
    """A display id for a key: its :func:`~fedchain.crypto.identity.fingerprint`, as the CLI
    shows."""
    return fingerprint(key) if len(key) == HASH_SIZE else f"<{len(key)}-byte key>"


def describe_hash(value: bytes) -> str:
    return value[:8].hex() + "…" if len(value) == HASH_SIZE else f"<{len(value)} bytes>"


def check_agreed_round(rules: Rules, round_: int, what: str) -> None:
    """Refuse ``what`` for a round past the genesis's ``max_rounds`` (0: no limit): every
    participant registered for that many rounds and no more."""
    if rules.max_rounds and round_ > rules.max_rounds:
        raise InvalidTransaction(
            f"{what} is for round {round_}, past the {rules.max_rounds} rounds the genesis's "
            "participants agreed to"
        )
