"""Tests for fedchain.crypto.identity: signing roots, signatures, key files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto.identity import (
    NO_FEDERATION,
    Domain,
    compute_signing_root,
    fingerprint,
    generate_identity,
    load_identity,
    load_public_key,
    public_key_bytes,
    save_identity,
    sign,
    verify_signature,
)
from fedchain.errors import ConfigError, KeyFileError, SignatureError

SEED = bytes(range(32))
MESSAGE = b"fedchain known-answer message"
FEDERATION = bytes([0x11]) * 32

# Known answers for the key derived from SEED (Ed25519 signatures are deterministic).
KNOWN_PUBLIC_KEY = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
KNOWN_FINGERPRINT = "56475aa75463474c"
KNOWN_ROOT_NO_FEDERATION = "7b51c7608ac1882838e70057e7defb87bb33d29af677d9fa233d0c5f04d285f0"
KNOWN_SIGNATURE_NO_FEDERATION = (
    "e51c199e31a1368e58ff5b77525f7e57607d84dec7cebf1d840f850b23594ea5"
    "777a1ce0c1f977bd7a75acd945aa31704318cb0c5a0da52aa25f81b9839ed402"
)
KNOWN_ROOT_FEDERATION = "a666d55ff8ef317648f7b505c55c418da840eb3308d91f9120ee6e238ea40d20"
KNOWN_SIGNATURE_FEDERATION = (
    "9ab165ad5f15c92e737ddfcf23b686e1f30e30c8009512961e027fd1f8a23fc1"
    "505bd7a8ebdf14981a50c263eae4c15788439cbc9e414dd50779d2d245289e0c"
)


@pytest.fixture(scope="module")
def known_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEED)


def reference_signing_root(domain: bytes, message: bytes, federation: bytes) -> bytes:
    return hashlib.sha256(
        bytes([len(domain)]) + domain + federation + hashlib.sha256(message).digest()
    ).digest()


# --------------------------------------------------------------------------------------------------
# Known answers


def test_known_public_key_and_fingerprint(known_key: Ed25519PrivateKey) -> None:
    public = public_key_bytes(known_key)
    assert public.hex() == KNOWN_PUBLIC_KEY
    assert fingerprint(public) == KNOWN_FINGERPRINT
    assert fingerprint(public) == hashlib.sha256(public).hexdigest()[:16]


@pytest.mark.parametrize(
    ("federation", "root_hex", "signature_hex"),
    [
        (NO_FEDERATION, KNOWN_ROOT_NO_FEDERATION, KNOWN_SIGNATURE_NO_FEDERATION),
        (FEDERATION, KNOWN_ROOT_FEDERATION, KNOWN_SIGNATURE_FEDERATION),
    ],
    ids=["no-federation", "federation"],
)
def test_known_signing_root_and_signature(
    known_key: Ed25519PrivateKey, federation: bytes, root_hex: str, signature_hex: str
) -> None:
    root = compute_signing_root(Domain.UPDATE, MESSAGE, federation)
    assert root.hex() == root_hex
    assert root == reference_signing_root(b"fedchain/update-commitment/v1", MESSAGE, federation)
    signature = sign(known_key, Domain.UPDATE, MESSAGE, federation)
    assert signature.hex() == signature_hex
    assert signature == known_key.sign(root)
    verify_signature(bytes.fromhex(KNOWN_PUBLIC_KEY), signature, Domain.UPDATE, MESSAGE, federation)


def test_default_federation_is_zeros() -> None:
    assert bytes(32) == NO_FEDERATION
    assert compute_signing_root(Domain.BLOCK, b"m") == compute_signing_root(
        Domain.BLOCK, b"m", bytes(32)
    )


def test_domain_tags_are_fixed_and_distinct() -> None:
    assert {d.value for d in Domain} == {
        b"fedchain/update-commitment/v1",
        b"fedchain/block-header/v1",
        b"fedchain/attestation/v1",
        b"fedchain/registration/v1",
        b"fedchain/app-approval/v1",
        b"fedchain/refusal/v1",
    }
    roots = {compute_signing_root(d, MESSAGE) for d in Domain}
    assert len(roots) == len(Domain)


# --------------------------------------------------------------------------------------------------
# Sign / verify


@pytest.fixture(scope="module")
def signed() -> tuple[bytes, bytes]:
    key = generate_identity()
    return public_key_bytes(key), sign(key, Domain.UPDATE, MESSAGE, FEDERATION)


def test_sign_verify_round_trip(signed: tuple[bytes, bytes]) -> None:
    public, signature = signed
    assert len(public) == 32 and len(signature) == 64
    verify_signature(public, signature, Domain.UPDATE, MESSAGE, FEDERATION)


def test_invalid_wrong_key(signed: tuple[bytes, bytes]) -> None:
    other = public_key_bytes(generate_identity())
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(other, signed[1], Domain.UPDATE, MESSAGE, FEDERATION)


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_invalid_flipped_signature_byte(signed: tuple[bytes, bytes], index: int) -> None:
    public, signature = signed
    flipped = bytearray(signature)
    flipped[index] ^= 0x01
    with pytest.raises(SignatureError):
        verify_signature(public, bytes(flipped), Domain.UPDATE, MESSAGE, FEDERATION)


@pytest.mark.parametrize("domain", [Domain.BLOCK, Domain.ATTESTATION, Domain.REGISTRATION])
def test_invalid_other_domain(signed: tuple[bytes, bytes], domain: Domain) -> None:
    with pytest.raises(SignatureError):
        verify_signature(*signed, domain, MESSAGE, FEDERATION)


def test_invalid_other_federation(signed: tuple[bytes, bytes]) -> None:
    with pytest.raises(SignatureError):
        verify_signature(*signed, Domain.UPDATE, MESSAGE, NO_FEDERATION)


def test_invalid_other_message(signed: tuple[bytes, bytes]) -> None:
    with pytest.raises(SignatureError):
        verify_signature(*signed, Domain.UPDATE, MESSAGE + b"!", FEDERATION)


@pytest.mark.parametrize(
    ("public", "signature", "match"),
    [
        (bytes(31), bytes(64), "public key must be 32 bytes"),
        (bytes(33), bytes(64), "public key must be 32 bytes"),
        (bytes(32), bytes(63), "signature must be 64 bytes"),
        (bytes(32), bytes(65), "signature must be 64 bytes"),
        ("00" * 32, bytes(64), "public key must be 32 bytes"),
        (bytes(32), None, "signature must be 64 bytes"),
    ],
)
def test_invalid_malformed_lengths(public: Any, signature: Any, match: str) -> None:
    with pytest.raises(SignatureError, match=match):
        verify_signature(public, signature, Domain.UPDATE, MESSAGE)


def test_invalid_non_point_public_key(signed: tuple[bytes, bytes]) -> None:
    # Not every 32-byte string is a curve point; it must still be a plain SignatureError.
    with pytest.raises(SignatureError):
        verify_signature(b"\xff" * 32, signed[1], Domain.UPDATE, MESSAGE, FEDERATION)


IDENTITY_POINT = bytes([1]) + bytes(31)
UNIVERSAL_SIGNATURE = IDENTITY_POINT + bytes(32)  # R = identity, S = 0: OpenSSL accepts it for any


def test_invalid_small_order_key_with_its_universal_signature() -> None:
    for domain in Domain:
        with pytest.raises(SignatureError, match="small-order point"):
            verify_signature(IDENTITY_POINT, UNIVERSAL_SIGNATURE, domain, MESSAGE, FEDERATION)


def test_invalid_non_canonical_signatures(signed: tuple[bytes, bytes]) -> None:
    public, signature = signed
    group_order = 2**252 + 27742317777372353535851937790883648493
    malleated = int.from_bytes(signature[32:], "little") + group_order
    with pytest.raises(SignatureError, match="S is not below the group order"):
        verify_signature(
            public,
            signature[:32] + malleated.to_bytes(32, "little"),
            Domain.UPDATE,
            MESSAGE,
            FEDERATION,
        )
    with pytest.raises(SignatureError, match="R is a small-order point"):
        verify_signature(public, UNIVERSAL_SIGNATURE, Domain.UPDATE, MESSAGE, FEDERATION)


def test_domain_accepts_exact_tag_bytes_only() -> None:
    tag: Any = b"fedchain/block-header/v1"
    assert compute_signing_root(tag, b"m") == compute_signing_root(Domain.BLOCK, b"m")
    bogus: Any = b"fedchain/other/v1"
    with pytest.raises(ConfigError, match="unknown signature domain"):
        compute_signing_root(bogus, b"m")


@pytest.mark.parametrize("federation", [bytes(31), bytes(33), b""])
def test_invalid_federation_length(federation: bytes) -> None:
    with pytest.raises(ConfigError, match="federation id must be 32 bytes"):
        compute_signing_root(Domain.UPDATE, b"m", federation)


def test_invalid_fingerprint_length() -> None:
    with pytest.raises(ConfigError):
        fingerprint(bytes(31))


# --------------------------------------------------------------------------------------------------
# Key files


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("passphrase", [None, b"correct horse battery staple"])
def test_save_load_round_trip(tmp_path: Path, passphrase: bytes | None) -> None:
    key = generate_identity()
    private_path, public_path = save_identity(key, tmp_path / "id.key", passphrase)
    assert (private_path, public_path) == (tmp_path / "id.key", tmp_path / "id.pub")
    assert mode_of(private_path) == 0o600
    loaded = load_identity(private_path, passphrase)
    assert public_key_bytes(loaded) == public_key_bytes(key)
    assert load_public_key(public_path) == public_key_bytes(key)
    assert public_path.read_text() == public_key_bytes(key).hex() + "\n"
    header = private_path.read_bytes().splitlines()[0]
    expected = b"BEGIN OPENSSH PRIVATE KEY" if passphrase else b"BEGIN PRIVATE KEY"
    assert expected in header
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.key", "id.pub"]  # no temp files


def test_private_key_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private_path, _ = save_identity(generate_identity(), tmp_path / "id.key", None)
    finally:
        os.umask(old)
    assert mode_of(private_path) == 0o600


@pytest.mark.parametrize("existing", ["id.key", "id.pub"])
def test_invalid_overwrite_refused(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(KeyFileError, match="already exists"):
        save_identity(generate_identity(), tmp_path / "id.key", None)
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_invalid_unwritable_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "id.key"
    with pytest.raises(KeyFileError, match="cannot create: No such file or directory"):
        save_identity(generate_identity(), missing, None)
    assert list(tmp_path.iterdir()) == []


def test_invalid_private_path_ending_in_pub(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        save_identity(generate_identity(), tmp_path / "id.pub", None)


def test_invalid_empty_passphrase_on_save(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="passphrase"):
        save_identity(generate_identity(), tmp_path / "id.key", b"")


def test_invalid_save_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="missing"):
        save_identity(generate_identity(), tmp_path / "missing" / "id.key", None)


@pytest.fixture
def encrypted_key(tmp_path: Path) -> Path:
    return save_identity(generate_identity(), tmp_path / "enc.key", b"right")[0]


@pytest.fixture
def plain_key(tmp_path: Path) -> Path:
    return save_identity(generate_identity(), tmp_path / "plain.key", None)[0]


def test_invalid_wrong_passphrase(encrypted_key: Path) -> None:
    with pytest.raises(KeyFileError, match="wrong passphrase") as info:
        load_identity(encrypted_key, b"wrong")
    assert str(encrypted_key) in str(info.value)


def test_invalid_missing_passphrase(encrypted_key: Path) -> None:
    with pytest.raises(KeyFileError, match="is encrypted: give its passphrase") as info:
        load_identity(encrypted_key, None)
    assert str(encrypted_key) in str(info.value)


def test_invalid_passphrase_for_unencrypted_key(plain_key: Path) -> None:
    with pytest.raises(KeyFileError, match="not encrypted"):
        load_identity(plain_key, b"something")


def test_invalid_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file") as info:
        load_identity(tmp_path / "nope.key", None)
    assert "nope.key" in str(info.value)


def test_invalid_corrupted_plain_key(plain_key: Path) -> None:
    lines = plain_key.read_bytes().splitlines(keepends=True)
    body = bytearray(lines[1])
    body[20] = ord("A") if body[20] != ord("A") else ord("B")
    plain_key.write_bytes(lines[0] + bytes(body) + b"".join(lines[2:]))
    with pytest.raises(KeyFileError, match="damaged") as info:
        load_identity(plain_key, None)
    assert str(plain_key) in str(info.value)


def test_invalid_corrupted_encrypted_key(encrypted_key: Path) -> None:
    lines = encrypted_key.read_bytes().splitlines(keepends=True)
    encrypted_key.write_bytes(b"".join(lines[:2]) + b"".join(lines[3:]))
    with pytest.raises(KeyFileError) as info:
        load_identity(encrypted_key, b"right")
    assert str(encrypted_key) in str(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a PKCS#8 or OpenSSH PEM private key"),
        (b"hello world\n", "not a PKCS#8 or OpenSSH PEM private key"),
        (
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "is damaged",
        ),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n", "found a PUBLIC KEY block"),
    ],
)
def test_invalid_not_a_pem_private_key(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=match) as info:
        load_identity(path, None)
    assert str(path) in str(info.value)


def test_invalid_not_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        load_identity(path, None)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_invalid_unencrypted_key_readable_by_others(plain_key: Path, mode: int) -> None:
    plain_key.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        load_identity(plain_key, None)
    assert str(plain_key) in str(info.value)


def test_encrypted_key_readable_by_others_still_loads(encrypted_key: Path) -> None:
    encrypted_key.chmod(0o644)
    load_identity(encrypted_key, b"right")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"00" * 31 + b"\n",
        b"00" * 33 + b"\n",
        b"zz" * 32 + b"\n",
        b"00" * 16 + b"\n" + b"00" * 16,
    ],
    ids=["empty", "short", "long", "not-hex", "two-lines"],
)
def test_invalid_public_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "id.pub"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match="not a public key file") as info:
        load_public_key(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (IDENTITY_POINT, "small-order point"),
        (bytes(32), "small-order point"),
        (b"\xec" + b"\xff" * 30 + b"\x7f", "small-order point"),
        (b"\xee" + b"\xff" * 30 + b"\x7f", "non-canonical"),
        (b"\xff" * 32, "non-canonical"),
    ],
    ids=["identity", "order-4", "order-2", "identity-non-canonical", "non-canonical"],
)
def test_invalid_public_key_file_refused_by_the_ed25519_rule(
    tmp_path: Path, key: bytes, reason: str
) -> None:
    path = tmp_path / "id.pub"
    path.write_text(key.hex() + "\n")
    with pytest.raises(KeyFileError, match=f"refused as an identity: .*{reason}") as info:
        load_public_key(path)
    assert str(path) in str(info.value)


def test_invalid_missing_public_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        load_public_key(tmp_path / "nope.pub")


def test_public_key_file_tolerates_uppercase_and_no_newline(tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    path.write_bytes(KNOWN_PUBLIC_KEY.upper().encode())
    assert load_public_key(path).hex() == KNOWN_PUBLIC_KEY


def test_passphrase_key_uses_bcrypt_kdf_with_configured_rounds(tmp_path: Path) -> None:
    """Encrypted identities are OpenSSH format with bcrypt-pbkdf (not PKCS#8 with 2048 rounds)."""
    import base64
    import struct

    from fedchain.crypto.identity import IDENTITY_KDF_ROUNDS

    save_identity(generate_identity(), tmp_path / "id.key", b"pw")
    pem = (tmp_path / "id.key").read_bytes()
    blob = base64.b64decode(b"".join(pem.split(b"-----")[2].split()))
    fields, at = [], len(b"openssh-key-v1\x00")
    for _ in range(3):  # ciphername, kdfname, kdfoptions
        (n,) = struct.unpack(">I", blob[at : at + 4])
        fields.append(blob[at + 4 : at + 4 + n])
        at += 4 + n
    assert fields[0] == b"aes256-ctr" and fields[1] == b"bcrypt"
    assert struct.unpack(">I", fields[2][-4:])[0] == IDENTITY_KDF_ROUNDS


def test_encrypted_pkcs8_from_other_tools_still_loads(tmp_path: Path) -> None:
    key = generate_identity()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    (tmp_path / "other.key").write_bytes(pem)
    loaded = load_identity(tmp_path / "other.key", b"pw")
    assert public_key_bytes(loaded) == public_key_bytes(key)
