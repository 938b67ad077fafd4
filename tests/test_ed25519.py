"""Tests for fedchain.crypto.ed25519: the acceptance rule agrees with libsodium, byte for byte.

libsodium is reached through PyNaCl (a test dependency). Points the tests need but no library
makes (small-order and mixed-order keys, signatures by them) come from a tiny reference
implementation of the curve below, in plain integers, written from RFC 8032 §5.1.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from fedchain.crypto import ed25519
from fedchain.crypto.ed25519 import FIELD_PRIME as P
from fedchain.crypto.ed25519 import GROUP_ORDER as L

# --------------------------------------------------------------------------------------------------
# A reference curve: extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x*y = T/Z

Point = tuple[int, int, int, int]
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY: Point = (0, 1, 1, 0)


def add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa, bb = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    cc, dd = 2 * t1 * t2 * D % P, 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def mul(k: int, point: Point) -> Point:
    result = IDENTITY
    while k:
        if k & 1:
            result = add(result, point)
        point, k = add(point, point), k >> 1
    return result


def neg(point: Point) -> Point:
    x, y, z, t = point
    return (-x % P, y, z, -t % P)


def encode(point: Point) -> bytes:
    x, y, z, _ = point
    inverse = pow(z, P - 2, P)
    x, y = x * inverse % P, y * inverse % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def decode(data: bytes) -> Point | None:
    """RFC 8032 §5.1.3 decoding (None: not a point), except that y >= p is reduced mod p."""
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, (y & ((1 << 255) - 1)) % P
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P or (x == 0 and sign):
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def decode_point(data: bytes) -> Point:
    point = decode(data)
    assert point is not None
    return point


BASE = decode_point((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))  # y = 4/5, x even


def challenge(r: bytes, key: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + key + message).digest(), "little") % L


def sign_raw(
    scalar: int, key: bytes, message: bytes, nonce: int, torsion: Point = IDENTITY
) -> bytes:
    """A signature by private scalar ``scalar`` for the encoding ``key``; R = [nonce]B + torsion."""
    r = encode(add(mul(nonce, BASE), torsion))
    s = (nonce + challenge(r, key, message) * scalar) % L
    return r + s.to_bytes(32, "little")


def torsion_points() -> list[Point]:
    """The 8-torsion subgroup, found without the table under test: [L]Q has order dividing 8."""
    for y in range(2, 100):
        q = decode(y.to_bytes(32, "little"))
        if q is not None:
            t = mul(L, q)
            if encode(mul(4, t)) != encode(IDENTITY):  # order 8: it generates them all
                return [mul(k, t) for k in range(8)]
    raise AssertionError("no point of order 8 found")


TORSION = torsion_points()
ORDER_8 = TORSION[1]


def order_of(point: Point) -> int:
    return next(n for n in (1, 2, 4, 8) if encode(mul(n, point)) == encode(IDENTITY))


def both_signs(y: int) -> list[bytes]:
    return [y.to_bytes(32, "little"), (y | 1 << 255).to_bytes(32, "little")]


# --------------------------------------------------------------------------------------------------
# The three verifiers


def libsodium_accepts(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        crypto_sign_open(signature + message, key)  # crypto_sign_verify_detached inside
    except BadSignatureError:
        return False
    return True


def openssl_accepts(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def assert_agrees(key: bytes, signature: bytes, message: bytes, expected: bool) -> None:
    assert ed25519.verify(key, signature, message) is expected
    assert libsodium_accepts(key, signature, message) is expected
    checked = ed25519.load_public_key(key)
    assert (checked is not None and ed25519.verify_with(checked, signature, message)) is expected


HONEST = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HONEST_KEY = HONEST.public_key().public_bytes_raw()
MESSAGES = [b"", b"a", b"fedchain", bytes(range(200))]

IDENTITY_KEY = bytes([1]) + bytes(31)
UNIVERSAL = IDENTITY_KEY + bytes(32)
"""R = the identity, S = 0: [0]B = R + [k]·identity for every k, so it "signs" any message."""


# --------------------------------------------------------------------------------------------------
# The constants


def test_constants_are_the_curve() -> None:
    assert encode(mul(L, BASE)) == encode(IDENTITY)
    assert encode(BASE).hex() == "58" + "66" * 31  # RFC 8032's base point encoding
    assert P == 2**255 - 19


def test_small_order_table_is_the_8_torsion_subgroup() -> None:
    ys = {}
    for point in TORSION:
        _, y, z, _ = point
        ys[y * pow(z, P - 2, P) % P] = order_of(point)
    assert ys == dict(ed25519.SMALL_ORDER_Y)
    for y, order in ed25519.SMALL_ORDER_Y.items():  # the docstring's derivation
        assert (order == 8) == ((D * y**4 + 2 * y**2 - 1) % P == 0)


def test_small_order_table_is_libsodium_blocklist() -> None:
    blocklist = [  # ge25519_has_small_order in libsodium 1.0.16-1.0.22, as printed there
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ]
    canonical = {int.from_bytes(bytes.fromhex(h), "little") for h in blocklist[:5]}
    assert canonical == set(ed25519.SMALL_ORDER_Y)
    for entry in blocklist[5:]:  # p and p + 1: non-canonical encodings of y = 0 and y = 1
        assert "non-canonical" in str(ed25519.check_public_key(bytes.fromhex(entry)))


# --------------------------------------------------------------------------------------------------
# Known answers: every case is checked against libsodium too


def test_valid_signature_and_wrong_message() -> None:
    for message in MESSAGES:
        signature = HONEST.sign(message)
        assert_agrees(HONEST_KEY, signature, message, True)
        assert_agrees(HONEST_KEY, signature, message + b"!", False)
    assert ed25519.check_public_key(HONEST_KEY) is None


def test_invalid_identity_key_with_its_universal_signature() -> None:
    for message in MESSAGES:
        assert openssl_accepts(IDENTITY_KEY, UNIVERSAL, message)  # the hole this rule closes
        assert_agrees(IDENTITY_KEY, UNIVERSAL, message, False)
    assert "small-order point (order 1)" in str(ed25519.check_public_key(IDENTITY_KEY))


@pytest.mark.parametrize("index", range(8))
def test_invalid_every_small_order_key(index: int) -> None:
    """A signature that OpenSSL accepts exists for every small-order key: R = -[k]A, S = 0."""
    point = TORSION[index]
    key = encode(point)
    forged = None
    for attempt in range(400):
        message = b"forged %d" % attempt
        for r_point in TORSION:
            r = encode(r_point)
            if encode(neg(mul(challenge(r, key, message), point))) == r:
                forged = (r + bytes(32), message)
                break
        if forged:
            break
    assert forged is not None
    assert openssl_accepts(key, *forged)
    assert_agrees(key, *forged, False)
    for encoding in both_signs(int.from_bytes(key, "little") & ((1 << 255) - 1)):
        assert "small-order" in str(ed25519.check_public_key(encoding))
        assert_agrees(encoding, *forged, False)


def test_invalid_every_small_order_r() -> None:
    """R = identity with S = k·a is a signature OpenSSL accepts from the key's owner."""
    scalar = 0x1234567890ABCDEF
    key = encode(mul(scalar, BASE))
    message = b"small R"
    s = challenge(IDENTITY_KEY, key, message) * scalar % L
    assert openssl_accepts(key, IDENTITY_KEY + s.to_bytes(32, "little"), message)
    for y in ed25519.SMALL_ORDER_Y:
        for r in both_signs(y):
            for s_bytes in (s.to_bytes(32, "little"), bytes(32)):
                assert "R is a small-order point" in str(ed25519.check_signature(r + s_bytes))
                assert_agrees(key, r + s_bytes, message, False)


def test_invalid_non_canonical_keys_and_r() -> None:
    signature = HONEST.sign(b"m")
    for y in range(P, 1 << 255):  # the 19 encodings of y >= p, each with both signs of x
        for encoding in both_signs(y):
            assert "non-canonical" in str(ed25519.check_public_key(encoding))
            assert_agrees(encoding, UNIVERSAL, b"m", False)
            assert_agrees(encoding, signature, b"m", False)
            assert_agrees(HONEST_KEY, encoding + signature[32:], b"m", False)
    # the non-canonical encoding of the identity (y = p + 1) is a universal key for OpenSSL too
    assert openssl_accepts((P + 1).to_bytes(32, "little"), UNIVERSAL, b"m")


def test_invalid_s_not_below_group_order() -> None:
    message = b"malleable"
    signature = HONEST.sign(message)
    s = int.from_bytes(signature[32:], "little")
    malleated = [s + k * L for k in range(1, 16) if s + k * L < 1 << 256]
    malleated += [L, (1 << 256) - 1]
    for value in malleated:
        forged = signature[:32] + value.to_bytes(32, "little")
        assert "S is not below the group order" in str(ed25519.check_signature(forged))
        assert_agrees(HONEST_KEY, forged, message, False)
    # OpenSSL >= 3 refuses these too (its own S < L check); the rule does not rely on it
    assert_agrees(HONEST_KEY, signature[:32] + (L - 1).to_bytes(32, "little"), message, False)


def test_mixed_order_key_is_verified_cofactorless_like_released_libsodium() -> None:
    """A key with an order-8 component passes the prechecks; its owner's signatures verify only
    when [k]T = O (k divisible by 8), in both libraries: the equation has no cofactor."""
    scalar = 987654321987654321
    key = encode(add(mul(scalar, BASE), ORDER_8))
    assert ed25519.check_public_key(key) is None
    outcomes = set()
    for nonce in range(1, 40):
        message = b"mixed %d" % nonce
        signature = sign_raw(scalar, key, message, nonce)
        expected = challenge(signature[:32], key, message) % 8 == 0
        outcomes.add(expected)
        assert_agrees(key, signature, message, expected)
        assert openssl_accepts(key, signature, message) is expected
    assert outcomes == {True, False}


def test_invalid_mixed_order_r() -> None:
    scalar = 55555
    key = encode(mul(scalar, BASE))
    for torsion in TORSION[1:]:
        signature = sign_raw(scalar, key, b"m", 777, torsion)
        assert ed25519.check_signature(signature) is None  # not small order, only mixed
        assert_agrees(key, signature, b"m", False)


@pytest.mark.parametrize(
    ("key", "signature"),
    [
        (HONEST_KEY[:31], HONEST.sign(b"m")),
        (HONEST_KEY + b"\0", HONEST.sign(b"m")),
        (HONEST_KEY, HONEST.sign(b"m")[:63]),
        ("not bytes", HONEST.sign(b"m")),
        (HONEST_KEY, None),
        (bytearray(HONEST_KEY), HONEST.sign(b"m")),
    ],
)
def test_invalid_malformed_input_is_refused_not_raised(key: object, signature: object) -> None:
    assert ed25519.verify(key, signature, b"m") is False  # type: ignore[arg-type]
    assert ed25519.explain_refusal(key, signature) is not None


def test_key_not_on_the_curve_is_refused_by_the_equation() -> None:
    y = next(y for y in range(2, 100) if decode(y.to_bytes(32, "little")) is None)
    key = y.to_bytes(32, "little")
    assert ed25519.check_public_key(key) is None  # documented: the prechecks do not decide it
    assert_agrees(key, HONEST.sign(b"m"), b"m", False)


# --------------------------------------------------------------------------------------------------
# Property: on random keys, messages and damaged signatures, the rule and libsodium agree


@settings(max_examples=300, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    message=st.binary(max_size=64),
    flips=st.lists(st.integers(0, 511), max_size=3),
    key_flips=st.lists(st.integers(0, 255), max_size=1),
)
def test_rule_agrees_with_libsodium(
    seed: bytes, message: bytes, flips: list[int], key_flips: list[int]
) -> None:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    key = bytearray(private.public_key().public_bytes_raw())
    signature = bytearray(private.sign(message))
    for bit in flips:
        signature[bit // 8] ^= 1 << bit % 8
    for bit in key_flips:
        key[bit // 8] ^= 1 << bit % 8
    ours = ed25519.verify(bytes(key), bytes(signature), message)
    assert ours == libsodium_accepts(bytes(key), bytes(signature), message)
    if not flips and not key_flips:
        assert ours


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(
        st.binary(min_size=32, max_size=32),
        st.sampled_from([encode(t) for t in TORSION]),
        st.integers(P, (1 << 256) - 1).map(lambda n: n.to_bytes(32, "little")),
    ),
    r=st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from([encode(t) for t in TORSION])),
    s=st.one_of(st.integers(0, 2**4), st.integers(L - 2**4, L + 2**4), st.integers(0, 2**256 - 1)),
    message=st.binary(max_size=16),
)
def test_rule_agrees_with_libsodium_on_arbitrary_bytes(
    key: bytes, r: bytes, s: int, message: bytes
) -> None:
    signature = r + s.to_bytes(32, "little")
    assert ed25519.verify(key, signature, message) == libsodium_accepts(key, signature, message)
