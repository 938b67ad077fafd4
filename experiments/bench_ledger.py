"""Benchmark: ledger append and verify throughput against raw Ed25519 (issue 3, DESIGN.md §6).

A synthetic federation of ``--participants`` clients runs ``--rounds`` rounds; every round each
client signs an update commitment and attests to the previous block (as clients do in their
replies), and the round's block also registers the model version and the reward split. The
blocks are built in memory first (signing is not what is measured), then:

* append: the blocks are stored, one SQLite transaction per block (WAL, synchronous=FULL), the
  way the coordinator does after building them;
* verify: ``verify_ledger`` replays the file from genesis (decode, column checks, proposer
  choice, every signature, every state transition, roots, finality);
* raw: ``Ed25519PublicKey.verify`` from ``cryptography`` on a sample of the same signatures,
  with the keys already loaded — the ceiling for any verifier in Python.

Verify and raw runs alternate, so the machine's load hits both; the figure of merit is the
ratio of signatures per second, verify / raw (goal ≥ 0.8).

    python experiments/bench_ledger.py [--rounds 1000] [--participants 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedchain.crypto.identity import Domain, compute_signing_root
from fedchain.ledger.chain import Chain, compute_stored_block
from fedchain.ledger.codec import compute_hash
from fedchain.ledger.derived import signing_message
from fedchain.ledger.objects import Attestation, UpdateCommitment
from fedchain.ledger.signatures import CachingVerifier, Verifier
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.ledger.verify import verify_ledger


def build_blocks(federation: SyntheticFederation, rounds: int, verifier: Verifier) -> list:  # type: ignore[type-arg]
    """The blocks of ``rounds`` rounds, built in memory on top of the genesis state."""
    with tempfile.TemporaryDirectory() as scratch:
        chain = Chain.create(Path(scratch) / "build.db", federation.genesis)
        state, blocks = chain.state, []
        chain.close()
    started = time.perf_counter()
    for r in range(rounds):
        block, state = federation.make_round(state, verifier=verifier)
        blocks.append(block)
        if (r + 1) % 100 == 0:
            print(
                f"  built {r + 1}/{rounds} blocks ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return blocks


def report_sigs(blocks: list) -> int:  # type: ignore[type-arg]
    """Signatures a verify checks: one header per block plus each signed transaction."""
    return sum(
        1 + sum(isinstance(tx, UpdateCommitment | Attestation) for tx in b.transactions)
        for b in blocks
    )


def raw_sample(blocks: list, genesis_hash: bytes, size: int) -> list:  # type: ignore[type-arg]
    """(loaded key, signature, signing root) for ``size`` signatures taken from the blocks."""
    sample = []
    for block in blocks:
        for tx in block.transactions:
            if isinstance(tx, UpdateCommitment | Attestation):
                key = tx.public_key if isinstance(tx, UpdateCommitment) else tx.validator
                domain = Domain.UPDATE if isinstance(tx, UpdateCommitment) else Domain.ATTESTATION
                root = compute_signing_root(domain, signing_message(tx), genesis_hash)
                sample.append((Ed25519PublicKey.from_public_bytes(key), tx.signature, root))
                if len(sample) == size:
                    return sample
    return sample


class Interleaved:
    """Runs a slice of raw verifies every ``every`` blocks of a ``verify_ledger`` replay.

    The slices run inside verify's progress callback and are timed on their own; their time is
    subtracted from verify's. Both thus share the machine's load at a ~1 s granularity.
    """

    def __init__(self, sample: list, slice_size: int, every: int, threads: int) -> None:  # type: ignore[type-arg]
        self.sample, self.slice_size, self.every = sample, slice_size, every
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self.threads = threads
        self.raw_seconds, self.raw_count, self.position = 0.0, 0, 0

    def __call__(self, height: int, head: int) -> None:
        if height == 0 or height % self.every:
            return
        batch = [
            self.sample[(self.position + i) % len(self.sample)] for i in range(self.slice_size)
        ]
        self.position += self.slice_size
        started = time.perf_counter()
        if self.pool is None:
            verify_batch(batch)
        else:
            list(
                self.pool.map(verify_batch, [batch[i :: self.threads] for i in range(self.threads)])
            )
        self.raw_seconds += time.perf_counter() - started
        self.raw_count += len(batch)


def verify_batch(batch: list) -> None:  # type: ignore[type-arg]
    for key, signature, root in batch:
        key.verify(signature, root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw-sample", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=10, help="blocks between raw slices")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads for signature checks (verify and raw)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    print(f"python {platform.python_version()}  cpu_count {os.cpu_count()}")
    print(
        f"{args.rounds} rounds x {args.participants} commitments (+ attestations), "
        f"{args.threads} signature thread(s): building…"
    )
    federation = SyntheticFederation(args.participants, seed=1)
    # One verifier for the whole run, as one process would hold (building fills its cache too).
    verifier = CachingVerifier(threads=args.threads)
    blocks = build_blocks(federation, args.rounds, verifier)
    txs = sum(len(b.transactions) for b in blocks)

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "ledger.db"
        chain = Chain.create(path, federation.genesis)
        rows = [compute_stored_block(b) for b in blocks]
        started = time.perf_counter()
        for row in rows:
            chain.store.append(row)
        append_s = time.perf_counter() - started
        chain.close()
        size_mb = path.stat().st_size / 1e6

        sample = raw_sample(blocks, compute_hash(federation.genesis), args.raw_sample)
        sigs_per_block = max(1, report_sigs(blocks) // len(blocks))
        verify_rates, raw_rates, ratios, seconds = [], [], [], []
        for i in range(args.repeats):
            raw = Interleaved(sample, sigs_per_block * args.every, args.every, args.threads)
            report = verify_ledger(path, on_block=raw, verifier=verifier)
            if not report.ok:
                raise SystemExit(f"verify failed: {report.failure}")
            verify_s = report.seconds - raw.raw_seconds
            rate, raw_rate = report.signatures / verify_s, raw.raw_count / raw.raw_seconds
            verify_rates.append(rate)
            raw_rates.append(raw_rate)
            ratios.append(rate / raw_rate)
            seconds.append(verify_s)
            print(
                f"  repeat {i + 1}: verify {verify_s:.1f} s, {rate:,.0f} sig/s; "
                f"raw {raw_rate:,.0f} sig/s ({raw.raw_count:,} interleaved); "
                f"ratio {rate / raw_rate:.3f}",
                flush=True,
            )
    verifier.close()

    result = {
        "rounds": args.rounds,
        "participants": args.participants,
        "threads": args.threads,
        "blocks": len(blocks),
        "transactions": txs,
        "signatures": report.signatures,
        "ledger_mb": round(size_mb, 1),
        "append_blocks_per_s": round(len(blocks) / append_s, 1),
        "append_tx_per_s": round(txs / append_s),
        "verify_s_median": round(statistics.median(seconds), 2),
        "verify_sig_per_s_median": round(statistics.median(verify_rates)),
        "raw_sig_per_s_median": round(statistics.median(raw_rates)),
        "ratio_median": round(statistics.median(ratios), 3),
        "final_height": report.final_height,
    }
    sigs = report.signatures
    print(
        f"ledger: {len(blocks)} blocks, {txs:,} transactions, {sigs:,} signatures, {size_mb:.1f} MB"
    )
    print(
        f"append: {result['append_blocks_per_s']} blocks/s "
        f"({result['append_tx_per_s']:,} tx/s), one transaction per block"
    )
    print(
        f"verify: {result['verify_s_median']} s, "
        f"{result['verify_sig_per_s_median']:,} sig/s (median of {args.repeats})"
    )
    print(f"raw Ed25519 verify: {result['raw_sig_per_s_median']:,} sig/s")
    print(f"ratio verify/raw = {result['ratio_median']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
