"""Benchmark: canonical update hash vs raw SHA-256 over the same bytes (DESIGN.md section 6).

The bar: ``compute_update_hash`` runs at >= 90 % of raw ``hashlib.sha256`` throughput on the
same tensor bytes, i.e. the canonical encoding adds no copies and little per-tensor overhead.

The update is a ResNet-18 ``state_dict`` (torchvision, random init, nothing downloaded; 122
tensors, 11.7 M values) converted to float32 numpy arrays. Both contenders are timed in the same
run, alternating, after a warm-up, because shared machines are noisy (LIMITS.md). Throughput for
both is reported over the tensor bytes only (the canonical headers add ~8 KiB, not counted).

    python experiments/bench_hash.py [--repeats 15] [--json results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from fedchain.crypto.hashing import compute_update_hash


def build_update() -> dict[str, np.ndarray]:
    """ResNet-18 state_dict as float32 numpy arrays (BatchNorm counters included, as float32)."""
    state = torchvision.models.resnet18(weights=None).state_dict()
    return {name: t.detach().to(torch.float32).numpy() for name, t in state.items()}


def raw_buffer(update: dict[str, np.ndarray]) -> np.ndarray:
    """All tensor bytes as one contiguous buffer, in canonical (sorted-name) order."""
    return np.concatenate([update[name].reshape(-1).view(np.uint8) for name in sorted(update)])


def hash_raw(buffer: np.ndarray) -> bytes:
    return hashlib.sha256(buffer.data).digest()


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(repeats: int, warmup: int) -> dict[str, Any]:
    update = build_update()
    buffer = raw_buffer(update)
    nbytes = buffer.nbytes
    for _ in range(warmup):
        compute_update_hash(update)
        hash_raw(buffer)
    canonical, raw = [], []
    for _ in range(repeats):  # alternate so drifts in machine load hit both alike
        canonical.append(time_once(lambda: compute_update_hash(update)))
        raw.append(time_once(lambda: hash_raw(buffer)))
    canonical_s, raw_s = statistics.median(canonical), statistics.median(raw)
    return {
        "tensors": len(update),
        "values": sum(int(a.size) for a in update.values()),
        "bytes": nbytes,
        "repeats": repeats,
        "warmup": warmup,
        "canonical_median_s": canonical_s,
        "raw_median_s": raw_s,
        "canonical_gb_s": nbytes / canonical_s / 1e9,
        "raw_gb_s": nbytes / raw_s / 1e9,
        "ratio_canonical_over_raw": raw_s / canonical_s,
        "canonical_all_s": canonical,
        "raw_all_s": raw,
        "digest": compute_update_hash(update).hex(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def print_table(r: dict[str, Any]) -> None:
    print(
        f"torch {r['torch']}  numpy {r['numpy']}  python {r['python']}  cpu_count {r['cpu_count']}"
    )
    print(
        f"update: ResNet-18 state_dict, {r['tensors']} tensors, {r['values']:,} float32 values, "
        f"{r['bytes'] / 2**20:.1f} MiB; {r['repeats']} alternating repeats after "
        f"{r['warmup']} warm-up"
    )
    print(f"{'method':<34}{'median s':>10}{'GB/s':>8}")
    print(f"{'compute_update_hash (canonical)':<34}{r['canonical_median_s']:>10.4f}"
          f"{r['canonical_gb_s']:>8.2f}")  # fmt: skip
    print(f"{'hashlib.sha256, one buffer (raw)':<34}{r['raw_median_s']:>10.4f}"
          f"{r['raw_gb_s']:>8.2f}")  # fmt: skip
    print(f"ratio canonical/raw = {r['ratio_canonical_over_raw']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each first")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    results = run(args.repeats, args.warmup)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
