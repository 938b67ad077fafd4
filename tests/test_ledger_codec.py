"""Tests for fedchain.ledger.codec: the canonical encoding, its decoder, and known answers."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import typing
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchain.crypto.identity import Domain, verify_signature
from fedchain.errors import DecodeError, LedgerError
from fedchain.ledger import containers, objects
from fedchain.ledger.builder import sign_commitment, sign_genesis_participant
from fedchain.ledger.codec import MAX_INT, MIN_INT, compute_hash, decode, encode, encode_with_empty
from fedchain.ledger.containers import ParticipantState, StateRootBody
from fedchain.ledger.derived import compute_federation_id, signing_message
from fedchain.ledger.objects import (
    AnchorReceipt,
    AnchorStatement,
    AppApproval,
    Attestation,
    AttestationPair,
    Block,
    BlockHeader,
    ContributionRecord,
    Genesis,
    GenesisParticipant,
    HeaderPair,
    ModelRecord,
    ModelVersion,
    Refusal,
    Registration,
    Rejection,
    RewardDeltas,
    Rules,
    SignedHeader,
    SlashingEvidence,
    Transaction,
    UpdateCommitment,
)

ALL_CLASSES: list[type] = [
    Rules,
    ModelRecord,
    GenesisParticipant,
    Genesis,
    Registration,
    UpdateCommitment,
    ModelVersion,
    ContributionRecord,
    RewardDeltas,
    SlashingEvidence,
    Rejection,
    Attestation,
    HeaderPair,
    AttestationPair,
    BlockHeader,
    SignedHeader,
    Block,
    ParticipantState,
    StateRootBody,
    AnchorReceipt,
    AnchorStatement,
    AppApproval,
    Refusal,
]

# --------------------------------------------------------------------------------------------------
# Known answers: a small fixed Genesis and a commitment signed by the key from seed bytes([2]) * 32.

KNOWN_GENESIS_ENCODING = (
    "030800000066697865642d3031016400000000000000e80300000000000002000000020000000e000000626164"
    "5f636f6d6d69746d656e74e803000000000000020000000b000000646f75626c655f7369676e88130000000000"
    "00060000006665646176670100000002000000040000006265746103000000302e350d0000006c656176655f6f"
    "6e655f6f75741027000000000000e8030000000000000000000000000000102700000000000010270000000000"
    "0000000000000000000000000000000000ffffffffffffffff030000006f666600000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000400"
    "0000000400000066756c6c00000000000000002000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000020000000ec0644226350697ec6ac68945b2f5c7243df067836473819076d2909997ba07201000000"
    "02200000008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c6400000000000000"
    "200000008b39793d95ce9e9571a79b45048e3731c480de5d80ed4536c2ff461ef0df7dc13c0000000000000008"
    "000000686f6c6465722d310000000000000000000000004000000058cf54bbc74f38373b3f342d350fef4c95f3"
    "dd8ec521af5671cdad766833ef9e7c0f81f3d34481a757c753734cbdf7fd912234f70334199496b726227a681b"
    "0b"
)
KNOWN_GENESIS_HASH = "f264a9c7537c22b0c5b0b0d61a7dc66cdd4893834c071316c7748059bf45cc02"
KNOWN_COMMITMENT_ENCODING = (
    "0b0800000066697865642d3031010000000000000020000000ec0644226350697ec6ac68945b2f5c7243df0678"
    "36473819076d2909997ba07220000000d952941b25b0d61ede498c9aa511f5903460958973127ac773cb80236a"
    "a49efd3200000000000000200000008139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9"
    "b39400000000000000000000000000000000000000000000000040000000c37fa09fd8b8d0532e9ac21482d2ad"
    "9bc8da3fc4a93cb45224a27e3e992782c8a9f3ae35b840375d4b4948502590f68161036ac5048e644f5afaede6"
    "c9908f00"
)
KNOWN_COMMITMENT_SIGNATURE = (
    "c37fa09fd8b8d0532e9ac21482d2ad9bc8da3fc4a93cb45224a27e3e992782c8a9f3ae35b840375d4b49485025"
    "90f68161036ac5048e644f5afaede6c9908f00"
)


def known_genesis() -> Genesis:
    rules = Rules(
        min_stake=100,
        reward_per_round=1_000,
        slash_bps=(("bad_commitment", 1_000), ("double_sign", 5_000)),
        aggregation_rule="fedavg",
        aggregation_params=(("beta", "0.5"),),
        contribution_method="leave_one_out",
        weight_cap_bps=10_000,
        reputation_penalty_bps=1_000,
    )
    key = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
    participant = sign_genesis_participant(
        key,
        compute_federation_id("fixed-01", rules),
        stake=100,
        dataset_hash=hashlib.sha256(b"dataset-1").digest(),
        num_examples=60,
        name="holder-1",
    )
    return Genesis(
        run_id="fixed-01",
        rules=rules,
        initial_model_hash=hashlib.sha256(b"model-0").digest(),
        participants=(participant,),
    )


def known_commitment() -> UpdateCommitment:
    key = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
    return sign_commitment(
        key,
        compute_hash(known_genesis()),
        run_id="fixed-01",
        round=1,
        base_model_hash=hashlib.sha256(b"model-0").digest(),
        update_hash=hashlib.sha256(b"update-2-1").digest(),
        num_examples=50,
    )


def test_invalid_retired_commitment_mismatch_tag() -> None:
    """Tag 22 was bad-commitment evidence (a commitment and an "observed" hash only the
    coordinator saw); it is retired, so such evidence no longer decodes at all."""
    commitment = known_commitment()
    evidence = (
        bytes([SlashingEvidence.TAG])
        + struct.pack("<I", len(b"bad_commitment"))
        + b"bad_commitment"
        + struct.pack("<I", 32)
        + commitment.public_key
        + struct.pack("<q", 1)
        + bytes([22])
        + encode(commitment)
        + struct.pack("<I", 32)
        + bytes(32)
    )
    with pytest.raises(DecodeError):
        decode(SlashingEvidence, evidence)
    with pytest.raises(DecodeError):
        decode(Transaction, evidence)


def test_known_genesis_encoding_and_hash() -> None:
    genesis = known_genesis()
    assert encode(genesis).hex() == KNOWN_GENESIS_ENCODING
    assert compute_hash(genesis).hex() == KNOWN_GENESIS_HASH
    assert decode(Genesis, bytes.fromhex(KNOWN_GENESIS_ENCODING)) == genesis


def test_known_commitment_encoding_and_signature() -> None:
    commitment = known_commitment()
    assert encode(commitment).hex() == KNOWN_COMMITMENT_ENCODING
    assert commitment.signature.hex() == KNOWN_COMMITMENT_SIGNATURE
    verify_signature(
        commitment.public_key,
        commitment.signature,
        Domain.UPDATE,
        signing_message(commitment),
        bytes.fromhex(KNOWN_GENESIS_HASH),
    )


# --------------------------------------------------------------------------------------------------
# Layout, checked against a hand-written reference


def test_attestation_layout_matches_reference() -> None:
    attestation = Attestation(bytes([7]) * 32, 5, bytes([8]) * 32, bytes([9]) * 64)
    reference = (
        bytes([Attestation.TAG])
        + struct.pack("<I", 32)
        + bytes([7]) * 32
        + struct.pack("<q", 5)
        + struct.pack("<I", 32)
        + bytes([8]) * 32
        + struct.pack("<I", 64)
        + bytes([9]) * 64
    )
    assert encode(attestation) == reference
    assert compute_hash(attestation) == hashlib.sha256(reference).digest()


def test_signing_message_is_encoding_with_empty_signature() -> None:
    attestation = Attestation(bytes([7]) * 32, 5, bytes([8]) * 32, bytes([9]) * 64)
    expected = encode(dataclasses.replace(attestation, signature=b""))
    assert signing_message(attestation) == expected
    assert encode_with_empty(attestation, "signature") == expected
    assert expected.endswith(struct.pack("<I", 0))


def test_nested_tuple_union_and_str_layout() -> None:
    record = ContributionRecord(round=-1, scores=((b"k", 3),))
    reference = (
        bytes([ContributionRecord.TAG])
        + struct.pack("<q", -1)
        + struct.pack("<I", 1)  # one score
        + struct.pack("<I", 2)  # a (key, score) pair has 2 items
        + struct.pack("<I", 1)
        + b"k"
        + struct.pack("<q", 3)
    )
    assert encode(record) == reference
    rejection = Rejection(round=2, public_key=b"", reason="é")
    assert encode(rejection).endswith(struct.pack("<I", 2) + "é".encode())


def test_tags_are_unique() -> None:
    tags = [cls.TAG for cls in ALL_CLASSES]  # type: ignore[attr-defined]
    assert len(set(tags)) == len(tags)
    assert all(0 < tag < 256 for tag in tags)


def test_all_ledger_classes_are_listed() -> None:
    found = {
        value
        for module in (objects, containers)
        for value in vars(module).values()
        if isinstance(value, type) and dataclasses.is_dataclass(value) and hasattr(value, "TAG")
    }
    assert found == set(ALL_CLASSES)


# --------------------------------------------------------------------------------------------------
# Round trips (property tests)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a ledger field type, within the codec's ranges."""
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(MIN_INT, MAX_INT)
    if tp is bytes:
        return st.binary(max_size=40)
    if tp is str:
        return st.text(st.characters(codec="utf-8"), max_size=8)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is tuple:
        return st.tuples(*(strategy_for(arg) for arg in args))
    if args:  # a union
        return st.one_of(*(st.none() if arg is type(None) else strategy_for(arg) for arg in args))
    hints = typing.get_type_hints(tp)
    fields = dataclasses.fields(tp)
    return st.builds(tp, *(strategy_for(hints[field.name]) for field in fields))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type, data: st.DataObject) -> None:
    obj = data.draw(strategy_for(cls))
    encoded = encode(obj)
    assert decode(cls, encoded) == obj
    assert encode(decode(cls, encoded)) == encoded


@settings(max_examples=40, deadline=None)
@given(tx=strategy_for(Transaction))
def test_round_trip_through_union(tx: Any) -> None:
    decoded = decode(Transaction, encode(tx))
    assert type(decoded) is type(tx)
    assert decoded == tx


@settings(max_examples=40, deadline=None)
@given(block=strategy_for(Block), cut=st.integers(min_value=0))
def test_invalid_truncated_block(block: Block, cut: int) -> None:
    encoded = encode(block)
    prefix = encoded[: cut % len(encoded)]
    with pytest.raises(DecodeError):
        decode(Block, prefix)


# --------------------------------------------------------------------------------------------------
# Decoder rejections

SAMPLE = Attestation(bytes([7]) * 32, 5, bytes([8]) * 32, bytes([9]) * 64)


def test_invalid_trailing_bytes() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode(Attestation, encode(SAMPLE) + b"\x00")


def test_invalid_every_truncation() -> None:
    encoded = encode(SAMPLE)
    for cut in range(len(encoded)):
        with pytest.raises(DecodeError):
            decode(Attestation, encoded[:cut])


def test_invalid_unknown_tag() -> None:
    encoded = bytearray(encode(SAMPLE))
    encoded[0] = 255
    with pytest.raises(DecodeError, match="unknown tag 255"):
        decode(Attestation, bytes(encoded))


def test_invalid_tag_of_another_class() -> None:
    with pytest.raises(DecodeError, match="unknown tag"):
        decode(Registration, encode(SAMPLE))


def test_invalid_tag_outside_union() -> None:
    header = BlockHeader(1, 1, b"", b"", b"", b"", 0)
    with pytest.raises(DecodeError, match="unknown tag"):
        decode(Transaction, encode(header))


def test_invalid_length_past_end() -> None:
    encoded = bytearray(encode(SAMPLE))
    encoded[1:5] = struct.pack("<I", 2**32 - 1)
    with pytest.raises(DecodeError, match="past the end"):
        decode(Attestation, bytes(encoded))


def test_invalid_item_count_past_end() -> None:
    encoded = bytes([RewardDeltas.TAG]) + struct.pack("<q", 1) + struct.pack("<I", 2**32 - 1)
    with pytest.raises(DecodeError, match="exceeds the data"):
        decode(RewardDeltas, encoded)


def test_invalid_fixed_tuple_arity() -> None:
    encoded = bytearray(encode(RewardDeltas(1, ((b"k", 5),))))
    offset = 1 + 8 + 4  # tag, round, item count: then the pair's own count
    assert encoded[offset : offset + 4] == struct.pack("<I", 2)
    encoded[offset : offset + 4] = struct.pack("<I", 3)
    with pytest.raises(DecodeError, match="item count 3, expected 2"):
        decode(RewardDeltas, bytes(encoded))


def test_invalid_utf8() -> None:
    encoded = bytes([Rejection.TAG]) + struct.pack("<q", 1) + struct.pack("<I", 0)
    encoded += struct.pack("<I", 1) + b"\xff"
    with pytest.raises(DecodeError, match="UTF-8"):
        decode(Rejection, encoded)


def test_invalid_bool_byte() -> None:
    participant = ParticipantState(b"k", 1, 2, b"d", 3, True)
    encoded = bytearray(encode(participant))
    # active, before the i64 dp_participations, the empty app digest and the i64s
    # app_approvals, score_debt and harm_debt
    assert encoded[-37] == 1
    encoded[-37] = 2
    with pytest.raises(DecodeError, match="not 0 or 1"):
        decode(ParticipantState, bytes(encoded))


def test_invalid_not_bytes() -> None:
    with pytest.raises(DecodeError, match="expected bytes"):
        decode(Attestation, "not bytes")  # type: ignore[call-overload]


def test_decode_accepts_memoryview_and_bytearray() -> None:
    encoded = encode(SAMPLE)
    assert decode(Attestation, memoryview(encoded)) == SAMPLE
    assert decode(Attestation, bytearray(encoded)) == SAMPLE


def test_invalid_decode_target() -> None:
    with pytest.raises(LedgerError, match="not a ledger object"):
        decode(int, b"\x00")


# --------------------------------------------------------------------------------------------------
# Encoder rejections


@pytest.mark.parametrize("height", [MAX_INT + 1, MIN_INT - 1])
def test_invalid_int_out_of_range(height: int) -> None:
    with pytest.raises(LedgerError, match="outside the i64 range"):
        encode(dataclasses.replace(SAMPLE, height=height))


@pytest.mark.parametrize("height", [MAX_INT, MIN_INT])
def test_int_range_bounds_round_trip(height: int) -> None:
    attestation = dataclasses.replace(SAMPLE, height=height)
    assert decode(Attestation, encode(attestation)) == attestation


def test_invalid_bool_where_int_expected() -> None:
    with pytest.raises(LedgerError, match="must be an int, got bool"):
        encode(dataclasses.replace(SAMPLE, height=True))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("validator", bytearray(32), "must be bytes"),
        ("validator", "k", "must be bytes"),
        ("height", 1.0, "must be an int"),
    ],
)
def test_invalid_field_types(field: str, value: Any, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        encode(dataclasses.replace(SAMPLE, **{field: value}))


def test_invalid_list_where_tuple_expected() -> None:
    with pytest.raises(LedgerError, match="must be a tuple"):
        encode(RewardDeltas(1, [(b"k", 1)]))  # type: ignore[arg-type]


def test_invalid_wrong_class_in_union_field() -> None:
    header = BlockHeader(1, 1, b"", b"", b"", b"", 0)
    block = Block(SignedHeader(header, b""), (header,))  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="must be"):
        encode(block)


def test_invalid_lone_surrogate() -> None:
    with pytest.raises(LedgerError, match="not valid Unicode"):
        encode(Rejection(1, b"", "\ud800"))


def test_invalid_encode_non_ledger_object() -> None:
    with pytest.raises(LedgerError, match="not a ledger object"):
        encode(object())


# --------------------------------------------------------------------------------------------------
# Optional fields (no ledger class uses one yet; the codec supports them)


@dataclasses.dataclass(frozen=True)
class _WithOptional:
    TAG: ClassVar[int] = 250
    note: str | None
    count: int


def test_optional_round_trip_and_layout() -> None:
    assert encode(_WithOptional(None, 1)) == bytes([250, 0]) + struct.pack("<q", 1)
    some = _WithOptional("x", 2)
    assert encode(some) == bytes([250, 1]) + struct.pack("<I", 1) + b"x" + struct.pack("<q", 2)
    assert decode(_WithOptional, encode(some)) == some
    assert decode(_WithOptional, encode(_WithOptional(None, 1))) == _WithOptional(None, 1)


def test_invalid_optional_flag() -> None:
    with pytest.raises(DecodeError, match="optional flag"):
        decode(_WithOptional, bytes([250, 2]) + struct.pack("<q", 1))
