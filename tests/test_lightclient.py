"""fedchain.ledger.lightclient: a client's checkpoint -> check the headers it is shown -> new one.

The pre-state is the shared synthetic federation's blocks 0..4 (conftest's ``genesis`` and
``participant_keys``; block 4 plays the pending block); each case shows a client part of it.
Negative cases are named ``test_invalid_*``: each raises :class:`InvalidBlock` and so leaves the
client's checkpoint where it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto.identity import public_key_bytes
from fedchain.errors import InvalidBlock
from fedchain.ledger.builder import sign_header
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.lightclient import Checkpoint, check_head
from fedchain.ledger.objects import Block, Genesis, SignedHeader
from fedchain.ledger.signatures import PLAIN, CachingVerifier, Verifier
from fedchain.ledger.synthetic import SyntheticFederation


@pytest.fixture(scope="module")
def blocks(synthetic_federation: SyntheticFederation) -> list[Block]:
    """Blocks 0..4 of the shared synthetic federation (pure: no ledger file)."""
    genesis = synthetic_federation.genesis
    chain, state = [compute_genesis_block(genesis)], compute_genesis_state(genesis)
    for _ in range(4):
        block, state = synthetic_federation.make_round(state)
        chain.append(block)
    return chain


@pytest.fixture(scope="module")
def genesis_hash(genesis: Genesis) -> bytes:
    return compute_genesis_state(genesis).genesis_hash


def headers(blocks: list[Block], start: int, end: int = 3) -> list[SignedHeader]:
    return [b.signed_header for b in blocks[start : end + 1]]


def checkpoint(blocks: list[Block], height: int) -> Checkpoint:
    return Checkpoint(height, compute_block_hash(blocks[height].header))


def test_a_new_client_trusts_the_first_header_and_keeps_the_final_block(
    blocks: list[Block], genesis_hash: bytes
) -> None:
    assert check_head(None, headers(blocks, 0), 2, None, genesis_hash) == checkpoint(blocks, 2)


def test_the_checkpoint_moves_forward_along_headers_that_extend_it(
    blocks: list[Block], genesis_hash: bytes
) -> None:
    saved = checkpoint(blocks, 1)
    pending = blocks[4].header
    assert check_head(saved, headers(blocks, 1), 3, pending, genesis_hash) == checkpoint(blocks, 3)


def test_headers_may_start_before_the_checkpoint(blocks: list[Block], genesis_hash: bytes) -> None:
    saved = checkpoint(blocks, 2)
    assert check_head(saved, headers(blocks, 0), 2, None, genesis_hash) == saved


def test_invalid_no_headers(blocks: list[Block], genesis_hash: bytes) -> None:
    with pytest.raises(InvalidBlock, match="no headers"):
        check_head(None, [], 0, None, genesis_hash)


def test_invalid_a_header_that_does_not_link_to_its_parent(
    blocks: list[Block], genesis_hash: bytes
) -> None:
    shown = headers(blocks, 0)
    del shown[2]  # 0, 1, 3: a gap
    with pytest.raises(InvalidBlock, match="does not link"):
        check_head(None, shown, 1, None, genesis_hash)


@pytest.fixture(params=["plain", "caching"])
def verifier(request: pytest.FixtureRequest) -> Iterator[Verifier]:
    """Both ways a client checks proposer signatures; the caching one has just checked the
    honest headers (so a forgery meets a warm cache)."""
    if request.param == "plain":
        yield PLAIN
        return
    with CachingVerifier(threads=1) as caching:
        yield caching


def test_invalid_a_header_whose_proposer_did_not_sign_it(
    blocks: list[Block], genesis_hash: bytes, verifier: Verifier
) -> None:
    check_head(None, headers(blocks, 0), 1, None, genesis_hash, verifier=verifier)
    shown = headers(blocks, 0)
    shown[2] = dataclasses.replace(shown[2], signature=bytes(64))
    with pytest.raises(InvalidBlock, match=r"header 2: .*small-order point"):
        check_head(None, shown, 1, None, genesis_hash, verifier=verifier)


def test_invalid_a_header_signed_by_another_participant(
    blocks: list[Block],
    genesis_hash: bytes,
    participant_keys: list[Ed25519PrivateKey],
    verifier: Verifier,
) -> None:
    check_head(None, headers(blocks, 0), 1, None, genesis_hash, verifier=verifier)
    shown = headers(blocks, 0)
    proposer = shown[2].header.proposer
    other = next(k for k in participant_keys if public_key_bytes(k) != proposer)
    shown[2] = sign_header(other, genesis_hash, shown[2].header)
    with pytest.raises(InvalidBlock, match="header 2: the proposer's signature does not verify"):
        check_head(None, shown, 1, None, genesis_hash, verifier=verifier)


def test_invalid_a_malformed_header_signature_says_why(
    blocks: list[Block], genesis_hash: bytes, verifier: Verifier
) -> None:
    shown = headers(blocks, 0)
    shown[1] = dataclasses.replace(shown[1], signature=shown[1].signature[:-1])
    with pytest.raises(InvalidBlock, match=r"header 1: .*does not verify.*: .*64 bytes"):
        check_head(None, shown, 1, None, genesis_hash, verifier=verifier)


def test_invalid_headers_of_another_federation(blocks: list[Block]) -> None:
    with pytest.raises(InvalidBlock, match="header 1"):
        check_head(None, headers(blocks, 0), 1, None, b"\x01" * 32)


def test_invalid_a_history_that_rewrites_the_clients_final_block(
    blocks: list[Block], genesis_hash: bytes
) -> None:
    saved = Checkpoint(2, b"\x02" * 32)  # the client saw another block 2 final
    with pytest.raises(InvalidBlock, match="does not extend the last final block"):
        check_head(saved, headers(blocks, 0), 3, None, genesis_hash)


def test_invalid_headers_that_start_after_the_checkpoint(
    blocks: list[Block], genesis_hash: bytes
) -> None:
    with pytest.raises(InvalidBlock, match="does not extend the last final block"):
        check_head(checkpoint(blocks, 1), headers(blocks, 2), 3, None, genesis_hash)


def test_invalid_a_pending_block_that_does_not_extend_the_head(
    blocks: list[Block], genesis_hash: bytes
) -> None:
    with pytest.raises(InvalidBlock, match="pending block"):
        check_head(None, headers(blocks, 0, 2), 1, blocks[4].header, genesis_hash)


@pytest.mark.parametrize("final_height", [-1, 4])
def test_invalid_final_height_outside_the_headers(
    blocks: list[Block], genesis_hash: bytes, final_height: int
) -> None:
    with pytest.raises(InvalidBlock, match="outside the headers"):
        check_head(None, headers(blocks, 0), final_height, None, genesis_hash)


def test_invalid_final_height_below_the_checkpoint(
    blocks: list[Block], genesis_hash: bytes
) -> None:
    with pytest.raises(InvalidBlock, match="below 2"):
        check_head(checkpoint(blocks, 2), headers(blocks, 0), 1, None, genesis_hash)
