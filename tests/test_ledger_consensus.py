"""Tests for fedchain.ledger.consensus: proposers, finality, double signing, fork checks."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchain.crypto.identity import public_key_bytes
from fedchain.errors import InvalidBlock, LedgerError
from fedchain.ledger.builder import (
    build_block,
    make_genesis,
    make_rules,
    sign_attestation,
    sign_genesis_participant,
    sign_header,
)
from fedchain.ledger.codec import compute_hash
from fedchain.ledger.consensus import (
    PROPOSER_SEED_DOMAIN,
    FinalityTracker,
    check_extends,
    compute_finalized_height,
    compute_proposer,
    detect_double_sign,
    get_proposer,
    get_validators,
    is_descendant,
)
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_federation_id
from fedchain.ledger.genesis import compute_genesis_state
from fedchain.ledger.objects import (
    DOUBLE_SIGN,
    Attestation,
    AttestationPair,
    BlockHeader,
    HeaderPair,
    SignedHeader,
    Transaction,
)

KEYS = {i: Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(1, 5)}
PUB = {i: public_key_bytes(key) for i, key in KEYS.items()}
KEY_BY_PUBLIC = {public: KEYS[i] for i, public in PUB.items()}
STAKES = {1: 100, 2: 200, 3: 300, 4: 400}

# Known answer: proposers (by seed index) for this parent hash and STAKES, attempts 0..4.
KNOWN_PARENT = hashlib.sha256(b"fedchain test parent").digest()
KNOWN_PROPOSERS = [4, 3, 2, 1, 3]


def validators(stakes: dict[int, int]) -> list[tuple[bytes, int]]:
    return [(PUB[i], stake) for i, stake in stakes.items()]


# --------------------------------------------------------------------------------------------------
# Proposer choice


def test_known_proposers() -> None:
    chosen = [compute_proposer(KNOWN_PARENT, validators(STAKES), a) for a in range(5)]
    assert chosen == [PUB[i] for i in KNOWN_PROPOSERS]


def test_proposer_matches_reference_walk() -> None:
    for attempt in range(5):
        seed = hashlib.sha256(PROPOSER_SEED_DOMAIN + KNOWN_PARENT + struct.pack("<I", attempt))
        target = int.from_bytes(seed.digest(), "big") % sum(STAKES.values())
        cumulative, expected = 0, None
        for key, stake in sorted(validators(STAKES)):
            cumulative += stake
            if target < cumulative:
                expected = key
                break
        assert compute_proposer(KNOWN_PARENT, validators(STAKES), attempt) == expected


def test_proposer_ignores_input_order() -> None:
    listed = validators(STAKES)
    for attempt in range(5):
        assert compute_proposer(KNOWN_PARENT, listed, attempt) == compute_proposer(
            KNOWN_PARENT, listed[::-1], attempt
        )


def test_proposer_in_proportion_to_stake() -> None:
    stakes = {1: 10, 2: 20, 3: 70}
    draws = 3_000
    counts = Counter(
        compute_proposer(hashlib.sha256(struct.pack("<I", n)).digest(), validators(stakes))
        for n in range(draws)
    )
    total = sum(stakes.values())
    for i, stake in stakes.items():
        p = stake / total
        sigma = math.sqrt(draws * p * (1 - p))
        assert abs(counts[PUB[i]] - draws * p) < 4 * sigma, (i, counts[PUB[i]])


def test_single_validator_always_proposes() -> None:
    assert all(compute_proposer(KNOWN_PARENT, [(PUB[2], 5)], a) == PUB[2] for a in range(5))


@pytest.mark.parametrize(
    ("listed", "attempt", "message"),
    [
        ([], 0, "no validators"),
        ([(PUB[1], 0)], 0, "non-positive stake"),
        ([(PUB[1], 5), (PUB[1], 5)], 0, "listed twice"),
        ([(PUB[1], 5)], -1, "attempt -1"),
        ([(PUB[1], 5)], 2**32, "attempt"),
    ],
)
def test_invalid_proposer_inputs(
    listed: list[tuple[bytes, int]], attempt: int, message: str
) -> None:
    with pytest.raises(LedgerError, match=message):
        compute_proposer(KNOWN_PARENT, listed, attempt)


# --------------------------------------------------------------------------------------------------
# Validators


@pytest.fixture(scope="module")
def pre() -> LedgerState:
    rules = make_rules(min_stake=100, reward_per_round=0)
    federation_id = compute_federation_id("consensus-test", rules)
    participants = [
        sign_genesis_participant(
            KEYS[i],
            federation_id,
            stake=stake,
            dataset_hash=hashlib.sha256(bytes([i])).digest(),
            num_examples=10,
        )
        for i, stake in STAKES.items()
    ]
    genesis = make_genesis(
        "consensus-test", participants, initial_model_hash=bytes(32), rules=rules
    )
    return compute_genesis_state(genesis)


def test_validators_are_active_and_sorted(pre: LedgerState) -> None:
    assert get_validators(pre) == sorted(validators(STAKES))
    ejected = dataclasses.replace(pre.participants[PUB[2]], stake=99, active=False)
    post = dataclasses.replace(pre, participants={**pre.participants, PUB[2]: ejected})
    assert get_validators(post) == sorted(validators({1: 100, 3: 300, 4: 400}))
    assert get_proposer(post, 3) == compute_proposer(post.head_hash, get_validators(post), 3)


# --------------------------------------------------------------------------------------------------
# Finality: validators A, B, C, D with stakes 10, 20, 30, 60 (total 120; 2/3 is 80)

A, B, C, D = (PUB[i] for i in (1, 2, 3, 4))
FOUR = {A: 10, B: 20, C: 30, D: 60}


def same_validators(heights: int) -> dict[int, dict[bytes, int]]:
    return {height: FOUR for height in range(1, heights + 1)}


def test_finality_at_exactly_two_thirds() -> None:
    assert compute_finalized_height(same_validators(3), [(D, 3), (B, 3)]) == 3  # 80 of 120


def test_finality_above_two_thirds() -> None:
    assert compute_finalized_height(same_validators(3), [(D, 3), (C, 3)]) == 3  # 90 of 120


def test_finality_below_two_thirds() -> None:
    assert compute_finalized_height(same_validators(3), [(D, 3), (A, 3)]) == 0  # 70 of 120
    assert compute_finalized_height(same_validators(3), [(A, 3), (B, 3), (C, 3)]) == 0  # 60


def test_finality_attestation_counts_for_ancestors() -> None:
    # D attests 2, B attests 3: blocks 1 and 2 have D + B = 80; block 3 has B alone.
    assert compute_finalized_height(same_validators(3), [(D, 2), (B, 3)]) == 2
    # Attesting only the head finalizes every block below it.
    assert compute_finalized_height(same_validators(5), [(D, 5), (C, 5)]) == 5


def test_finality_counts_each_validator_once() -> None:
    repeated = [(D, 3), (D, 3), (D, 1), (A, 3), (A, 2)]
    assert compute_finalized_height(same_validators(3), repeated) == 0
    assert compute_finalized_height(same_validators(3), [*repeated, (B, 3)]) == 3


def test_finality_ignores_ejected_validator() -> None:
    # D is ejected by block 2: from block 3 on its attestations count for nothing.
    by_height = {1: FOUR, 2: FOUR, 3: {A: 10, B: 20, C: 30}, 4: {A: 10, B: 20, C: 30}}
    attestations = [(D, 4), (A, 4), (B, 4)]
    assert compute_finalized_height(by_height, attestations) == 2  # D + A + B = 90 of 120
    assert compute_finalized_height(by_height, [*attestations, (C, 4)]) == 4


def test_finality_ignores_non_validators() -> None:
    outsider = hashlib.sha256(b"outsider").digest()
    assert compute_finalized_height(same_validators(2), [(D, 2), (outsider, 2)]) == 0


def test_finality_never_goes_back() -> None:
    assert compute_finalized_height(same_validators(3), [(D, 1)], finalized_height=2) == 2
    assert compute_finalized_height(same_validators(3), [], finalized_height=2) == 2


# --------------------------------------------------------------------------------------------------
# Finality followed block by block (what `fedchain verify` keeps: the heights not yet final)


# One step: a block whose pre-state gives each of A-D a stake (0: not a validator), carrying
# attestations (validator index, how far below the block's parent it attests).
STEP = st.tuples(
    st.lists(st.sampled_from([0, 10, 20, 30, 60]), min_size=4, max_size=4),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(STEP, min_size=1, max_size=25))
def test_finality_tracker_equals_the_whole_map(steps) -> None:
    """After every block, the tracker's kept heights give the same final height as the map of
    every height; its own final height is never above it, and it keeps no height at or below."""
    outsider = hashlib.sha256(b"outsider").digest()
    keys = [A, B, C, D, outsider]
    tracker, every, highest = FinalityTracker(), {}, {}
    for height, (stakes, attestations) in enumerate(steps, start=1):
        validators = {k: s for k, s in zip(keys, stakes, strict=False) if s}
        every[height] = validators
        tracker.add_block(height, validators)
        for index, below in attestations:  # in block `height`: heights 1..height-1
            target = height - 1 - below
            if target > highest.get(keys[index], 0):  # the ledger: attestations move up
                highest[keys[index]] = target
                tracker.attest(keys[index], target)
        whole = compute_finalized_height(every, highest.items())
        assert tracker.final_height <= whole
        assert all(h > tracker.final_height for h in tracker.validators_by_height)
        kept = compute_finalized_height(
            tracker.validators_by_height, highest.items(), tracker.final_height
        )
        assert kept == whole


def test_finality_tracker_keeps_only_heights_not_yet_final() -> None:
    tracker = FinalityTracker()
    for height in range(1, 1001):
        tracker.add_block(height, FOUR)
        if height > 1:  # everyone attests the parent, as clients do in their replies
            for key in FOUR:
                tracker.attest(key, height - 1)
    assert tracker.final_height == 999 and list(tracker.validators_by_height) == [1000]


def test_finality_tracker_keeps_every_height_of_a_chain_never_final() -> None:
    tracker = FinalityTracker()
    for height in range(1, 101):
        tracker.add_block(height, FOUR)
        if height > 1:
            tracker.attest(A, height - 1)  # 10 of 120: never final
    assert tracker.final_height == 0 and len(tracker.validators_by_height) == 100
    tracker.attest(D, 100)  # 70 of 120 up to 99, 70 at 100: still not
    assert tracker.final_height == 0
    tracker.attest(B, 100)  # 90 of 120 at every height
    assert tracker.final_height == 100 and not tracker.validators_by_height


# --------------------------------------------------------------------------------------------------
# Finality on a real chain, from the ledger's own attestations


def propose(state: LedgerState, transactions: Sequence[Transaction] = ()) -> Any:
    return build_block(state, transactions, KEY_BY_PUBLIC[get_proposer(state)])[1]


def attest(state: LedgerState, i: int, height: int) -> Attestation:
    block_hash = state.block_hashes.get(height)
    assert block_hash is not None
    return sign_attestation(KEYS[i], state.genesis_hash, height=height, block_hash=block_hash)


def test_finality_from_chain(pre: LedgerState) -> None:
    states = [pre]
    for _ in range(3):
        states.append(propose(states[-1]))
    by_height = {s.height + 1: dict(get_validators(s)) for s in states}
    # Validators 3 and 4 (700 of 1000) attest block 2 inside block 4.
    head = propose(states[-1], [attest(states[-1], 3, 2), attest(states[-1], 4, 2)])
    assert dict(head.last_attested) == {PUB[3]: 2, PUB[4]: 2}
    assert compute_finalized_height(by_height, head.last_attested.items()) == 2


# --------------------------------------------------------------------------------------------------
# Double signing


def header(height: int, proposer: int = 4, **changes: Any) -> BlockHeader:
    base = BlockHeader(height, 1, bytes(32), bytes(32), bytes(32), PUB[proposer], 0)
    return dataclasses.replace(base, **changes)


def signed(h: BlockHeader, i: int = 4) -> SignedHeader:
    return sign_header(KEYS[i], bytes(32), h)


def test_detect_double_signed_headers() -> None:
    first, second = signed(header(3)), signed(header(3, state_root=b"\x01" * 32))
    evidence = detect_double_sign(first, second, round=7)
    assert evidence is not None
    assert (evidence.kind, evidence.offender, evidence.round) == (DOUBLE_SIGN, PUB[4], 7)
    assert isinstance(evidence.evidence, HeaderPair)
    assert {evidence.evidence.first, evidence.evidence.second} == {first, second}
    assert compute_hash(evidence.evidence.first.header) < compute_hash(
        evidence.evidence.second.header
    )
    assert detect_double_sign(second, first, round=7) == evidence


def test_detect_double_signed_attestations() -> None:
    first = sign_attestation(KEYS[2], bytes(32), height=5, block_hash=b"\x01" * 32)
    second = sign_attestation(KEYS[2], bytes(32), height=5, block_hash=b"\x02" * 32)
    evidence = detect_double_sign(second, first, round=1)
    assert evidence is not None
    assert evidence.offender == PUB[2]
    assert evidence.evidence == AttestationPair(first, second)


def test_no_double_sign() -> None:
    h = signed(header(3))
    assert detect_double_sign(h, h, 0) is None
    assert detect_double_sign(h, signed(header(4)), 0) is None  # different heights
    assert detect_double_sign(h, signed(header(3, proposer=3), 3), 0) is None  # two signers
    a = sign_attestation(KEYS[2], bytes(32), height=5, block_hash=b"\x01" * 32)
    b = sign_attestation(KEYS[3], bytes(32), height=5, block_hash=b"\x02" * 32)
    c = sign_attestation(KEYS[2], bytes(32), height=6, block_hash=b"\x02" * 32)
    assert detect_double_sign(a, a, 0) is None
    assert detect_double_sign(a, b, 0) is None
    assert detect_double_sign(a, c, 0) is None
    assert detect_double_sign(a, h, 0) is None  # not comparable


# --------------------------------------------------------------------------------------------------
# Client-side fork check


def linked(start: BlockHeader, count: int, salt: bytes = b"") -> list[BlockHeader]:
    headers, parent = [], start
    for _ in range(count):
        child = header(parent.height + 1, parent_hash=compute_hash(parent), tx_root=salt * 32)
        headers.append(child)
        parent = child
    return headers


def test_is_descendant() -> None:
    final = header(2)
    chain = linked(final, 3)
    assert is_descendant(final, chain)
    assert is_descendant(final, [])
    check_extends(final, chain)


def test_invalid_head_on_a_fork() -> None:
    final = header(2)
    fork = linked(header(2, state_root=b"\x09" * 32), 3)
    assert not is_descendant(final, fork)
    with pytest.raises(InvalidBlock, match="does not extend the final block at height 2"):
        check_extends(final, fork)


def test_invalid_head_with_a_broken_link() -> None:
    final = header(2)
    chain = linked(final, 3)
    spliced = [chain[0], *linked(header(3, tx_root=b"\x05" * 32), 2)]
    assert not is_descendant(final, spliced)
    skipped = [chain[0], chain[2]]
    assert not is_descendant(final, skipped)
    wrong_height = [dataclasses.replace(chain[0], height=9)]
    assert not is_descendant(final, wrong_height)
