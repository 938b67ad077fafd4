"""Signature checks for the ledger: a plain serial verifier by default, a caching one on request.

A :class:`Verifier` answers one question: does this exact (public key, signature, signing root)
triple verify under Ed25519, by fedchain's one acceptance rule (:mod:`fedchain.crypto.ed25519`:
libsodium's, so no small-order or non-canonical key, R or S)? Both implementations give the same
answer for every triple, so the choice changes speed only, never which blocks and transactions
the ledger accepts.

- :data:`PLAIN` (the default everywhere): serial, no cache, no threads, no state. The pure
  transition uses it unless a caller passes something else.
- :class:`CachingVerifier` (opt-in, at the edges: a coordinator process, ``fedchain verify``,
  the benchmarks): parsed keys and verified triples are remembered, and a block's independent
  signatures are checked on a thread pool it owns (``cryptography`` releases the GIL while it
  verifies). Close it (or use it as a context manager) to stop its threads.

The transition passes ``verifier=`` down explicitly; nothing here is process-global.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from fedchain.crypto import ed25519
from fedchain.crypto.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, compute_signing_root
from fedchain.ledger.derived import SIGNING_DOMAINS, signing_message
from fedchain.ledger.objects import (
    Attestation,
    BlockTransaction,
    Hash32,
    PublicKey,
    Refusal,
    Registration,
    SignedObject,
    UpdateCommitment,
)

__all__ = [
    "PLAIN",
    "CachingVerifier",
    "PlainVerifier",
    "SignatureJob",
    "Verifier",
    "compute_preverified",
    "is_signed_by",
]

SignatureJob = tuple[int, bytes, bytes, bytes]
"""``(tag, public key, signature, signing root)``; ``tag`` names the job in the answer."""

_BATCH_MIN_JOBS = 32
"""Fewer jobs than this are checked on the calling thread: a pool round trip costs more."""


class Verifier(Protocol):
    """Checks Ed25519 signatures over signing roots; True/the tags of the triples that verify."""

    def verify(self, key: bytes, signature: bytes, root: bytes) -> bool: ...

    def verify_batch(self, jobs: Sequence[SignatureJob]) -> frozenset[int]: ...


class PlainVerifier:
    """Serial, uncached verification: every triple is checked from scratch, on this thread."""

    __slots__ = ()

    def verify(self, key: bytes, signature: bytes, root: bytes) -> bool:
        return ed25519.verify(key, signature, root)

    def verify_batch(self, jobs: Sequence[SignatureJob]) -> frozenset[int]:
        return frozenset(
            tag for tag, key, signature, root in jobs if self.verify(key, signature, root)
        )


PLAIN: Verifier = PlainVerifier()
"""The default verifier: stateless, so sharing one instance is safe."""


class CachingVerifier:
    """Verification with parsed keys and verified triples cached, and batches on a thread pool.

    ``threads`` (default: the machine's cores, at most 4) is how many threads check a batch.
    A coordinator checks each commitment when it admits it and again when it builds the block,
    so repeats cost a dict lookup. Only exact triples that verified are remembered, so a cache
    hit can never accept anything new. ``cache_size`` bounds the remembered triples (the cache
    is emptied when full).
    """

    def __init__(self, *, threads: int | None = None, cache_size: int = 1 << 15) -> None:
        if threads is None:
            threads = max(1, min(4, os.cpu_count() or 1))
        if type(threads) is not int or threads < 1:
            raise ValueError("threads must be a positive integer")
        if type(cache_size) is not int or cache_size < 1:
            raise ValueError("cache_size must be a positive integer")
        self.threads = threads
        self._cache_size = cache_size
        self._verified: dict[tuple[bytes, bytes, bytes], None] = {}
        # parsed keys, and None for the keys the acceptance rule refuses (nothing verifies then)
        self._load_key = functools.lru_cache(maxsize=4096)(ed25519.load_public_key)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def verify(self, key: bytes, signature: bytes, root: bytes) -> bool:
        triple = (key, signature, root)
        if triple in self._verified:
            return True
        loaded = self._load_key(key)
        if loaded is None or not ed25519.verify_with(loaded, signature, root):
            return False
        if len(self._verified) >= self._cache_size:
            self._verified.clear()
        self._verified[triple] = None
        return True

    def verify_batch(self, jobs: Sequence[SignatureJob]) -> frozenset[int]:
        threads = self.threads
        if threads == 1 or len(jobs) < _BATCH_MIN_JOBS:
            return frozenset(self._verify_jobs(jobs))
        chunks = [jobs[i::threads] for i in range(threads)]
        pool = self._get_pool()
        return frozenset(itertools.chain.from_iterable(pool.map(self._verify_jobs, chunks)))

    def _verify_jobs(self, jobs: Sequence[SignatureJob]) -> list[int]:
        return [tag for tag, key, signature, root in jobs if self.verify(key, signature, root)]

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fedchain-sig")
            return self._pool

    def close(self) -> None:
        """Stop the thread pool (the caches stay usable; a later batch starts a new pool)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> CachingVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# The ledger's signed objects


_SIGNERS: dict[type, str] = {
    Registration: "public_key",
    UpdateCommitment: "public_key",
    Attestation: "validator",
    Refusal: "public_key",
}
"""The block transactions that carry one signature, and the field naming their signer."""


def compute_preverified(
    verifier: Verifier,
    genesis_hash: Hash32,
    transactions: Sequence[BlockTransaction],
    encodings: Sequence[bytes] | None,
) -> frozenset[int]:
    """``id()``\\ s of a block's signed transactions whose signature verifies, checked up front
    in one batch. The rest are checked, and refused with their message, in order, by the
    transaction's own rule; a verifier may leave out any job it likes at the cost of that
    second check. ``encodings``: ``encode(tx)`` of each transaction, if already made."""
    jobs: list[SignatureJob] = []
    for index, tx in enumerate(transactions):
        field = _SIGNERS.get(type(tx))
        if field is None:
            continue
        key, signature = getattr(tx, field), tx.signature  # type: ignore[union-attr]
        if len(key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            continue
        encoding = None if encodings is None else encodings[index]
        message = signing_message(tx, encoding)  # type: ignore[arg-type]
        root = compute_signing_root(SIGNING_DOMAINS[type(tx)], message, genesis_hash)
        jobs.append((id(tx), key, signature, root))
    return verifier.verify_batch(jobs)


def is_signed_by(
    obj: SignedObject,
    public_key: PublicKey,
    genesis_hash: Hash32,
    *,
    verifier: Verifier = PLAIN,
) -> bool:
    """Whether ``obj`` carries a valid signature by ``public_key`` in this federation."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(obj.signature) != SIGNATURE_SIZE:
        return False
    root = compute_signing_root(SIGNING_DOMAINS[type(obj)], signing_message(obj), genesis_hash)
    return verifier.verify(public_key, obj.signature, root)
