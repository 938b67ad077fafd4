"""The one Ed25519 acceptance rule: which public keys and signatures fedchain accepts.

Every signature fedchain checks goes through :func:`verify` (or, for a cached key,
:func:`load_public_key` then :func:`verify_with`). RFC 8032 leaves implementations free to
accept or refuse some encodings, and they differ: OpenSSL (behind ``cryptography``) accepts a
small-order public key such as the identity point, for which the one signature R = identity,
S = 0 verifies *every* message, while libsodium refuses it. Two honest verifiers would then
disagree on whether a ledger is valid, and anyone could sign as such a participant. fedchain
therefore fixes the rule, and it is libsodium's ``crypto_sign_verify_detached`` as released
from 1.0.16 up to at least 1.0.22 (``src/libsodium/crypto_sign/ed25519/ref10/open.c``)::

    public key A (32 bytes), signature R || S (32 + 32 bytes), message M; y(X) is the 32-byte
    little-endian integer X with bit 255 (the sign of x) cleared:
    1. refuse unless len(A) == 32 and len(R || S) == 64
    2. refuse if y(A) >= p                     non-canonical key            (p = 2**255 - 19)
    3. refuse if y(A) is a small-order y       A in the 8-torsion           (SMALL_ORDER_Y)
    4. refuse if y(R) >= p                     non-canonical R
    5. refuse if y(R) is a small-order y       R in the 8-torsion
    6. refuse if int(S, little-endian) >= L    non-canonical S (malleable)  (the group order)
    7. accept iff the cofactorless equation holds: encode([S]B - [k]A) == R byte for byte,
       k = SHA-512(R || A || M) mod L (RFC 8032 §5.1.7 without the cofactor 8; a key that is
       not a point is refused here)

Steps 1-6 are integer comparisons (about 2 µs together, 1-2 % of step 7); step 7 is
``cryptography``'s verify, which compares encodings, so it never accepts a non-canonical R:
step 4 only words the refusal. Released libsodium refuses exactly the same triples (it
compares encodings too and checks R only against its small-order list, which is step 5 plus
two non-canonical encodings that step 4 already refuses); ``tests/test_ed25519.py`` checks the
agreement against libsodium itself (PyNaCl). Note that libsodium's unreleased development
branch (2022-11 on) verifies *cofactored* (``[8](R - [S]B + [k]A) == O``) and accepts some
signatures that this rule refuses: a mixed-order key or R crafted by its signer. A verifier
built on such a libsodium must add the cofactorless comparison of step 7.

What the checks do not cover, on purpose: a key that is not a curve point at all is refused
only by step 7 (deciding it needs a square root mod p, ~200 µs of Python: as much as a whole
verify), and a key with a torsion component (mixed order) is accepted like libsodium does;
its owner knows its private scalar, so the cofactorless equation still binds the signature to
the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "FIELD_PRIME",
    "GROUP_ORDER",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "SMALL_ORDER_Y",
    "CheckedKey",
    "check_public_key",
    "check_signature",
    "explain_refusal",
    "load_public_key",
    "verify",
    "verify_with",
]

PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64

FIELD_PRIME: Final = 2**255 - 19
"""p: coordinates are integers mod p; an encoding's y must be below it (canonical)."""

GROUP_ORDER: Final = 2**252 + 27742317777372353535851937790883648493
"""L: the order of the base point B; S must be below it, or S and S + L both verify."""

_ORDER_8_Y: Final = 2707385501144840649318225287225658788936804267575313519463743609750303402022
"""y₈ in hex: 0x05fc536d880238b13933c6d305acdfd5f098eff289f4c345b027b2c28f95e826."""

SMALL_ORDER_Y: Final[Mapping[int, int]] = MappingProxyType(
    {1: 1, FIELD_PRIME - 1: 2, 0: 4, _ORDER_8_Y: 8, FIELD_PRIME - _ORDER_8_Y: 8}
)
"""The y-coordinates of the 8 points of order dividing 8, mapped to that order.

The curve -x² + y² = 1 + d·x²·y² has 8 such points: the identity (0, 1), (0, -1) of order 2,
(±√-1, 0) of order 4, and four of order 8, whose doubles are (±√-1, 0): their y satisfies
y² = -x², hence d·y⁴ + 2·y² - 1 = 0, giving the two values y₈ and p - y₈ (each with both signs
of x). These are libsodium's blocklist (``ge25519_has_small_order``), which like this table
ignores the sign bit; ``tests/test_ed25519.py`` re-derives the set from the curve equation.
"""

_Y_MASK: Final = (1 << 255) - 1
_S_OFFSET: Final = 32


@final
class CheckedKey:
    """A public key that passed :func:`check_public_key`, parsed for ``cryptography``.

    Only :func:`load_public_key` makes one, so :func:`verify_with` never sees an unchecked key.
    """

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes, key: Ed25519PublicKey) -> None:
        self.raw = raw
        self._key = key


def check_public_key(key: object) -> str | None:
    """Why ``key`` is refused as an Ed25519 public key (steps 1-3 of the rule), or None."""
    if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
        return f"a public key must be {PUBLIC_KEY_SIZE} bytes, got {_describe(key)}"
    return _check_point(key, "the public key")


def check_signature(signature: object) -> str | None:
    """Why ``signature`` is refused whatever the key and message (steps 1, 4-6), or None."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        return f"a signature must be {SIGNATURE_SIZE} bytes, got {_describe(signature)}"
    reason = _check_point(signature[:_S_OFFSET], "the signature's R")
    if reason is not None:
        return reason
    if int.from_bytes(signature[_S_OFFSET:], "little") >= GROUP_ORDER:
        return "the signature's S is not below the group order L (non-canonical: malleable)"
    return None


def explain_refusal(public_key: object, signature: object) -> str | None:
    """Why the rule refuses this key or signature whatever the message (steps 1-6), or None."""
    return check_public_key(public_key) or check_signature(signature)


def load_public_key(key: bytes) -> CheckedKey | None:
    """The key parsed for repeated checks, or None if the rule refuses it (steps 1-3)."""
    if check_public_key(key) is not None:
        return None
    try:
        return CheckedKey(key, Ed25519PublicKey.from_public_bytes(key))
    except ValueError:
        return None


def verify_with(key: CheckedKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies for an already checked ``key``."""
    if check_signature(signature) is not None:
        return False
    try:
        key._key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether the rule accepts ``signature`` by ``public_key`` over ``message``.

    Never raises for malformed input: a wrong type or length is a refusal like any other.
    """
    loaded = load_public_key(public_key)
    return loaded is not None and verify_with(loaded, signature, message)


def _check_point(encoding: bytes, what: str) -> str | None:
    y = int.from_bytes(encoding, "little") & _Y_MASK
    if y >= FIELD_PRIME:
        return f"{what} is a non-canonical encoding (y is not below p = 2^255 - 19)"
    order = SMALL_ORDER_Y.get(y)
    if order is not None:
        return (
            f"{what} is a small-order point (order {order}): signatures by or with it prove nothing"
        )
    return None


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"{len(value)} bytes"
    return type(value).__name__
