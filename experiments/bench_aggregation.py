"""Benchmark: fedchain's weighted average vs Flower's ``aggregate()`` (DESIGN.md section 6).

The bar: aggregating accepted updates runs near memory speed, at least 10x Flower's own
``flwr.server.strategy.aggregate.aggregate`` on the same updates (LIMITS.md). All contenders get
the same N client updates of ResNet-18 size (torchvision ``resnet18(weights=None).state_dict()``
shapes, 122 tensors, 11.7 M values, random float32 data, nothing downloaded) and the same
example-count weights:

(a) fedchain ``aggregate(rule="fedavg")``: in-place BLAS axpy into one output per tensor;
(b) Flower ``aggregate([(ndarrays, num_examples), ...])`` (legacy strategies' helper, the one
    LIMITS.md times);
(c) numpy ``w @ stacked`` per tensor, the updates stacked beforehand (stacking not timed): the
    hardware reference, once with numpy's default BLAS threads and once held to one thread;
(d) Flower's Message-API ``aggregate_arrayrecords`` (what ``flwr.serverapp.strategy.FedAvg``
    runs), records built beforehand, its deserialising of every array included (N <= 20 only).

Timed runs alternate between contenders (the machines are shared and noisy: LIMITS.md); medians
are reported, throughput as bytes of all client updates read per second. The robust rules are
timed once each for the record. Accuracy of the float32 accumulation is checked against a
float64 reference.

    python experiments/bench_aggregation.py [--clients 10] [--repeats 9] [--json results.json]
    python experiments/bench_aggregation.py --clients 100 --repeats 5
    python experiments/bench_aggregation.py --flat-values 1000000   # LIMITS.md's 10 x 1 M row
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fedchain  # noqa: F401  (first: Flower's telemetry off before flwr is imported)

# isort: split

import numpy as np
import threadpoolctl
import torch
import torchvision
from flwr.server.strategy.aggregate import aggregate as flower_aggregate

from fedchain.aggregation.rules import aggregate
from fedchain.aggregation.weights import RuleParams, compute_weights

Update = dict[str, np.ndarray]


def update_shapes(flat_values: int | None) -> dict[str, tuple[int, ...]]:
    """ResNet-18 state_dict shapes (BatchNorm counters included), or one flat tensor."""
    if flat_values:
        return {"flat": (flat_values,)}
    state = torchvision.models.resnet18(weights=None).state_dict()
    return {name: tuple(t.shape) for name, t in state.items()}


def build_updates(shapes: dict[str, tuple[int, ...]], clients: int, seed: int) -> list[Update]:
    """Random float32 updates, one fresh allocation per tensor as a deserialised reply would be."""
    rng = np.random.default_rng(seed)
    return [
        {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
        for _ in range(clients)
    ]


def mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def float64_reference(updates: list[Update], weights: np.ndarray) -> Update:
    out = {}
    for name in updates[0]:
        acc = np.zeros(updates[0][name].shape, dtype=np.float64)
        for u, w in zip(updates, weights, strict=True):
            acc += w * u[name].astype(np.float64)
        out[name] = acc
    return out


def max_errors(result: dict[str, np.ndarray], reference: Update) -> tuple[float, float]:
    """(largest absolute error, largest error relative to its tensor's largest magnitude)."""
    abs_err, rel_err = 0.0, 0.0
    for name, ref in reference.items():
        if ref.size == 0:
            continue
        err = float(np.max(np.abs(np.asarray(result[name], dtype=np.float64) - ref)))
        scale = float(np.max(np.abs(ref))) or 1.0
        abs_err, rel_err = max(abs_err, err), max(rel_err, err / scale)
    return abs_err, rel_err


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_arrayrecord_contender(
    updates: list[Update], examples: list[int]
) -> Callable[[], object] | None:
    try:
        from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
        from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
    except ImportError:
        return None
    records = [
        RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in u.items()}),
                "metrics": MetricRecord({"num-examples": e}),
            }
        )
        for u, e in zip(updates, examples, strict=True)
    ]
    return lambda: aggregate_arrayrecords(records, "num-examples")


def time_robust_rules(
    updates: list[Update], examples: list[int], total_bytes: int, *, with_flower: bool
) -> dict[str, Any]:
    """Each robust rule once; Flower's unweighted counterparts too for small N (for scale)."""
    clients = len(updates)
    weights = compute_weights(
        "median", examples=examples, stakes=[1] * clients, reputations=[10_000] * clients
    )
    robust: dict[str, Any] = {}
    for rule in ("median", "trimmed-mean", "multi-krum"):
        start = time.perf_counter()
        result = aggregate(updates, weights, rule=rule, params=RuleParams())
        elapsed = time.perf_counter() - start
        robust[rule] = {
            "seconds": elapsed,
            "gb_s": total_bytes / elapsed / 1e9,
            "selected": len(result.selected),
        }
    if not with_flower or clients > 20:
        return robust
    from flwr.server.strategy.aggregate import (
        aggregate_krum,
        aggregate_median,
        aggregate_trimmed_avg,
    )

    results = [(list(u.values()), e) for u, e in zip(updates, examples, strict=True)]
    f = max(0, (clients - 3) // 2)
    flower = {
        "Flower aggregate_median (unweighted)": lambda: aggregate_median(results),
        "Flower aggregate_trimmed_avg (unweighted)": lambda: aggregate_trimmed_avg(results, 0.2),
        "Flower aggregate_krum (multi)": lambda: aggregate_krum(results, f, clients - f),
    }
    for name, fn in flower.items():
        elapsed = time_once(fn)
        robust[name] = {"seconds": elapsed, "gb_s": total_bytes / elapsed / 1e9, "selected": None}
    return robust


def run(
    clients: int, repeats: int, warmup: int, flat_values: int | None, seed: int
) -> dict[str, Any]:
    shapes = update_shapes(flat_values)
    values = sum(int(np.prod(s)) for s in shapes.values())
    update_bytes = values * 4
    total_bytes = update_bytes * clients
    available = mem_available()
    # updates + stacked copy + Flower's scaled copies and sums, with room to spare
    heavy_ok = available > 3.5 * total_bytes
    if available < 1.3 * total_bytes:
        raise SystemExit(
            f"{clients} updates need {total_bytes / 2**30:.1f} GiB, "
            f"only {available / 2**30:.1f} GiB available"
        )

    updates = build_updates(shapes, clients, seed)
    rng = np.random.default_rng(seed + 1)
    examples = [int(e) for e in rng.integers(100, 5_000, size=clients)]
    weights = compute_weights(
        "fedavg", examples=examples, stakes=[1] * clients, reputations=[10_000] * clients
    )
    controller = threadpoolctl.ThreadpoolController()

    contenders: dict[str, Callable[[], object]] = {
        "fedchain aggregate (fedavg)": lambda: aggregate(updates, weights, rule="fedavg"),
    }
    notes = []
    if heavy_ok:
        names = list(shapes)
        flower_input = [([u[n] for n in names], e) for u, e in zip(updates, examples, strict=True)]
        contenders["Flower aggregate()"] = lambda: flower_aggregate(flower_input)
        stacked = {n: np.stack([u[n].reshape(-1) for u in updates]) for n in names}
        w32 = weights.astype(np.float32)

        def matmul() -> object:
            return {n: w32 @ s for n, s in stacked.items()}

        def matmul_one_thread() -> object:
            with controller.limit(limits=1, user_api="blas"):
                return matmul()

        contenders["numpy w @ stacked (default threads)"] = matmul
        contenders["numpy w @ stacked (1 BLAS thread)"] = matmul_one_thread
    else:
        notes.append(
            f"only {available / 2**30:.1f} GiB available: Flower and stacked contenders skipped"
        )
    if clients <= 20 and heavy_ok:
        arrayrecord = make_arrayrecord_contender(updates, examples)
        if arrayrecord is not None:
            contenders["Flower aggregate_arrayrecords (Message API)"] = arrayrecord

    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):  # alternate so drifts in machine load hit all alike
        for name, fn in contenders.items():
            times[name].append(time_once(fn))

    reference = float64_reference(updates, weights)
    ours = aggregate(updates, weights, rule="fedavg").arrays
    abs_err, rel_err = max_errors(ours, reference)
    accuracy = {"fedchain_max_abs_err": abs_err, "fedchain_max_rel_err": rel_err}
    if heavy_ok:
        theirs = flower_aggregate(
            [([u[n] for n in shapes], e) for u, e in zip(updates, examples, strict=True)]
        )
        f_abs, f_rel = max_errors(dict(zip(shapes, theirs, strict=True)), reference)
        accuracy |= {"flower_max_abs_err": f_abs, "flower_max_rel_err": f_rel}
    del reference, ours

    robust = time_robust_rules(updates, examples, total_bytes, with_flower=heavy_ok)

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ours_s = medians["fedchain aggregate (fedavg)"]
    rows = {
        name: {
            "median_s": s,
            "gb_s": total_bytes / s / 1e9,
            "speed_vs_fedchain": ours_s / s,
            "all_s": times[name],
        }
        for name, s in medians.items()
    }
    flower_s = medians.get("Flower aggregate()")
    return {
        "clients": clients,
        "tensors": len(shapes),
        "values_per_update": values,
        "bytes_per_update": update_bytes,
        "bytes_read": total_bytes,
        "repeats": repeats,
        "warmup": warmup,
        "contenders": rows,
        "ratio_fedchain_over_flower": (flower_s / ours_s) if flower_s else None,
        "accuracy": accuracy,
        "robust_once": robust,
        "notes": notes,
        "mem_available_bytes": available,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def print_table(r: dict[str, Any]) -> None:
    print(
        f"numpy {r['numpy']}  torch {r['torch']}  python {r['python']}  cpu_count {r['cpu_count']}"
        f"  load average {' '.join(f'{x:.2f}' for x in r['load_average'])}"
    )
    print(
        f"{r['clients']} clients x {r['tensors']} tensors, {r['values_per_update']:,} float32 "
        f"values each ({r['bytes_per_update'] / 2**20:.1f} MiB); "
        f"{r['bytes_read'] / 1e9:.2f} GB read per aggregation; "
        f"{r['repeats']} alternating repeats after {r['warmup']} warm-up"
    )
    print(f"{'contender':<46}{'median s':>10}{'GB/s':>8}{'speed rel. fedchain':>21}")
    for name, row in r["contenders"].items():
        print(
            f"{name:<46}{row['median_s']:>10.4f}{row['gb_s']:>8.2f}"
            f"{row['speed_vs_fedchain']:>20.2f}x"
        )
    if r["ratio_fedchain_over_flower"] is not None:
        print(f"ratio fedchain/Flower (speed) = {r['ratio_fedchain_over_flower']:.2f}  (bar >= 10)")
    acc = r["accuracy"]
    line = f"max error vs float64: fedchain abs {acc['fedchain_max_abs_err']:.2e} "
    line += f"rel {acc['fedchain_max_rel_err']:.2e}"
    if "flower_max_abs_err" in acc:
        line += f"; Flower abs {acc['flower_max_abs_err']:.2e} rel {acc['flower_max_rel_err']:.2e}"
    print(line)
    print("robust rules, timed once (fedchain weighted; Flower's unweighted for scale):")
    for rule, row in r["robust_once"].items():
        chosen = "" if row["selected"] is None else f"  selected {row['selected']}/{r['clients']}"
        print(f"  {rule:<44}{row['seconds']:>9.3f} s{row['gb_s']:>8.2f} GB/s{chosen}")
    for note in r["notes"]:
        print(f"note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10, help="number of updates (default 10)")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of each (default 9)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each first")
    parser.add_argument(
        "--flat-values", type=int, help="use one flat float32 tensor of this size, not ResNet-18"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.clients < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--clients and --repeats must be >= 1 and --warmup >= 0")
    results = run(args.clients, args.repeats, args.warmup, args.flat_values, args.seed)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
