"""Tests for fedchain.ledger.signatures: plain and caching verifiers give the same answers."""

from __future__ import annotations

import dataclasses

import pytest

from fedchain.errors import InvalidTransaction
from fedchain.ledger.codec import compute_hash
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.objects import Block, UpdateCommitment
from fedchain.ledger.signatures import (
    PLAIN,
    CachingVerifier,
    PlainVerifier,
    Verifier,
    is_signed_by,
)
from fedchain.ledger.state import process_transactions
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.ledger.verify import iter_replay


def _two_rounds(participants: int) -> tuple[SyntheticFederation, list[Block]]:
    """Genesis block plus two round blocks (the second carries commitments and attestations)."""
    federation = SyntheticFederation(participants, seed=7)
    state = compute_genesis_state(federation.genesis)
    blocks = [compute_genesis_block(federation.genesis)]
    for _ in range(2):
        block, state = federation.make_round(state)
        blocks.append(block)
    return federation, blocks


def test_caching_verifier_replays_to_the_same_states_as_plain() -> None:
    _, blocks = _two_rounds(40)  # 40 commitments + 40 attestations: the threaded batch path
    plain = [step.post for step in iter_replay(blocks)]
    with CachingVerifier(threads=4) as verifier:
        cached = [step.post for step in iter_replay(blocks, verifier=verifier)]
        again = [step.post for step in iter_replay(blocks, verifier=verifier)]  # cache hits
    assert cached == plain
    assert again == plain


def test_invalid_signature_refused_alike_by_every_verifier() -> None:
    _, blocks = _two_rounds(40)
    pre = list(iter_replay(blocks[:2]))[-1].post
    block = blocks[2]
    index = next(i for i, tx in enumerate(block.transactions) if isinstance(tx, UpdateCommitment))
    genuine = block.transactions[index]
    assert isinstance(genuine, UpdateCommitment)
    forged = dataclasses.replace(genuine, signature=bytes(64))
    txs = [*block.transactions[:index], forged, *block.transactions[index + 1 :]]
    verifiers: list[Verifier] = [PLAIN, CachingVerifier(threads=1), CachingVerifier(threads=4)]
    messages = []
    for verifier in verifiers:
        # the genuine body applies with every verifier (and warms the caches) ...
        process_transactions(pre, block.transactions, block.header.round, verifier=verifier)
        # ... and the forged one is refused by every one, with the same message
        with pytest.raises(InvalidTransaction, match="bad signature") as info:
            process_transactions(pre, txs, block.header.round, verifier=verifier)
        messages.append(str(info.value))
    assert len(set(messages)) == 1


def test_cache_hit_never_accepts_a_new_triple() -> None:
    federation, blocks = _two_rounds(3)
    genesis_hash = compute_hash(federation.genesis)
    commitment = next(tx for tx in blocks[2].transactions if isinstance(tx, UpdateCommitment))
    key = commitment.public_key
    verifier = CachingVerifier(threads=1, cache_size=2)
    assert is_signed_by(commitment, key, genesis_hash, verifier=verifier)
    assert is_signed_by(commitment, key, genesis_hash, verifier=verifier)  # a cache hit
    flipped = bytes([commitment.signature[0] ^ 1]) + commitment.signature[1:]
    refused = [
        (dataclasses.replace(commitment, signature=flipped), key, genesis_hash),
        (dataclasses.replace(commitment, round=commitment.round + 1), key, genesis_hash),
        (commitment, bytes(32), genesis_hash),
        (commitment, key, bytes(32)),
    ]
    for obj, public_key, federation_id in refused:
        assert not is_signed_by(obj, public_key, federation_id, verifier=verifier)
        assert not is_signed_by(obj, public_key, federation_id)
    assert is_signed_by(commitment, key, genesis_hash, verifier=verifier)  # after the clear


def test_invalid_verifier_settings() -> None:
    with pytest.raises(ValueError):
        CachingVerifier(threads=0)
    with pytest.raises(ValueError):
        CachingVerifier(cache_size=0)
    assert isinstance(PLAIN, PlainVerifier)
    assert not hasattr(PLAIN, "__dict__")  # stateless: sharing the default is safe


def test_invalid_small_order_key_and_malleated_signature_refused_by_every_verifier() -> None:
    """The identity point's universal signature (R = identity, S = 0), which OpenSSL accepts for
    every message, and a valid signature with S + L: refused by both verifiers, cached or not."""
    federation, blocks = _two_rounds(3)
    genesis_hash = compute_hash(federation.genesis)
    commitment = next(tx for tx in blocks[2].transactions if isinstance(tx, UpdateCommitment))
    identity_point = bytes([1]) + bytes(31)
    universal = identity_point + bytes(32)
    group_order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(commitment.signature[32:], "little") + group_order
    malleated = commitment.signature[:32] + s.to_bytes(32, "little")
    roots = [bytes(32), b"\xab" * 32]
    with CachingVerifier(threads=2) as caching:
        for verifier in (PLAIN, caching):
            for root in roots:
                assert not verifier.verify(identity_point, universal, root)
            jobs = [(i, identity_point, universal, root) for i, root in enumerate(roots * 20)]
            assert verifier.verify_batch(jobs) == frozenset()  # 40 jobs: the threaded path
            forged = dataclasses.replace(commitment, public_key=identity_point, signature=universal)
            assert not is_signed_by(forged, identity_point, genesis_hash, verifier=verifier)
            assert not is_signed_by(
                dataclasses.replace(commitment, signature=malleated),
                commitment.public_key,
                genesis_hash,
                verifier=verifier,
            )
            assert is_signed_by(commitment, commitment.public_key, genesis_hash, verifier=verifier)
