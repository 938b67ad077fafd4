"""Benchmark: which part of batched coalition evaluation helps (issue 17, item 2).

One synthetic round of the default federation's model (``digits``, ``cnn``, or ``--model``):
``n`` updates drawn at random around the initial model, the coalitions ``mc-shapley`` plans for
them (:func:`fedchain.rounds.contribution.plan_permutation_walks`, default budget), of which the
first ``--models`` are built and scored five ways, each split into building the coalition models
and the validation passes, in CPU milliseconds per model (``time.process_time``: less moved by
other processes on a shared machine than wall time), best of ``--repeats``:

1. ``per-coalition``: :func:`~fedchain.rounds.coalitions.compute_coalition_model` per coalition
   (every check per call), then ``load_numpy_state`` + :func:`~fedchain.learning.training.evaluate`
   (the scorer before batching);
2. ``per-coalition, checks hoisted``: :func:`~fedchain.rounds.coalitions.make_coalition_utility`
   (inputs checked and the zero stand-in made once per round), same passes;
3. ``matrix product, evaluate()``: the models as ``base + K @ D``, each then loaded and passed
   through ``evaluate`` as before;
4. ``matrix product, loop passes``: :class:`~fedchain.rounds.validation.ValidationPasses` in
   ``loop`` mode (no per-call checks or conversions, ``no_grad``);
5. ``matrix product, vmap passes``: the same in ``vmap`` mode.

    python experiments/bench_coalition_eval.py --clients 10 --clients 30 --clients 100

Torch and BLAS use one thread, as in ``bench_scaling.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import fedchain.rounds.validation as validation
from fedchain.config import RunConfig, merge_config
from fedchain.learning.architectures import load_numpy_state, state_to_numpy
from fedchain.learning.training import configure_threads, evaluate
from fedchain.rounds.coalitions import compute_coalition_model, make_coalition_utility
from fedchain.rounds.contribution import list_walk_coalitions, plan_permutation_walks
from fedchain.runs.prepare import load_split


def cpu_ms(function: Callable[[], Any], count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return 1e3 * best / count


def bench(model: str, n: int, models: int, repeats: int) -> dict[str, tuple[float, float]]:
    config = merge_config(RunConfig(), {"dataset": "digits", "model": model, "run-id": "x"})
    held = load_split(config)[1]
    scorer = validation.RoundScorer(config, held, passes="loop")
    net, passes = scorer.net, scorer.passes
    base = state_to_numpy(net)
    rng = np.random.default_rng(0)
    updates = [
        {k: rng.normal(0, 0.02, v.shape).astype(np.float32) for k, v in base.items()}
        for _ in range(n)
    ]
    weights = rng.integers(5, 20, n).astype(float)
    coalitions = list_walk_coalitions(plan_permutation_walks(n, seed=0), n)[:models]
    k = len(coalitions)
    built: list[dict[str, np.ndarray]] = []
    out: dict[str, tuple[float, float]] = {}

    def build_each() -> None:
        built[:] = [
            compute_coalition_model(base, updates, weights, c, renormalise=False)
            for c in coalitions
        ]

    def build_hoisted() -> None:
        captured: list[dict[str, np.ndarray]] = []

        def keep(arrays: dict[str, np.ndarray]) -> float:
            captured.append(arrays)
            return 0.0

        utility = make_coalition_utility(base, updates, weights, keep, renormalise=False)
        utility.evaluate_many(coalitions)
        built[:] = captured

    def evaluate_built() -> None:
        for arrays in built:
            load_numpy_state(net, arrays)
            evaluate(net, held)

    build_ms = cpu_ms(build_each, k, repeats)
    pass_ms = cpu_ms(evaluate_built, k, repeats)
    out["per-coalition"] = (build_ms, pass_ms)
    out["per-coalition, checks hoisted"] = (cpu_ms(build_hoisted, k, repeats), pass_ms)

    captured_rows: list[torch.Tensor] = []

    def product(block: torch.Tensor, stacked: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        rows = original(block, stacked, flat)
        captured_rows.append(rows)
        return rows

    original = validation._models
    batch = scorer.batch_utility(base, updates, weights)
    if batch is None:
        raise SystemExit("the stacked updates exceed STACK_LIMIT_BYTES")
    validation._models = product  # type: ignore[assignment]
    passes_utilities = passes.utilities
    passes.utilities = lambda models: [0.0] * len(models)  # type: ignore[method-assign]
    try:
        gemm_ms = cpu_ms(lambda: batch(coalitions), k, repeats)
    finally:
        validation._models = original
        passes.utilities = passes_utilities  # type: ignore[method-assign]
    rows = torch.cat(captured_rows[-(len(captured_rows) // repeats) :])
    names, shapes = passes.names, passes.shapes
    as_arrays = []
    for row in rows:
        parts = torch.split(row, passes.sizes)
        as_arrays.append(
            {nm: p.reshape(s).numpy() for nm, p, s in zip(names, parts, shapes, strict=True)}
        )
    built[:] = as_arrays
    out["matrix product, evaluate()"] = (gemm_ms, cpu_ms(evaluate_built, k, repeats))
    out["matrix product, loop passes"] = (
        gemm_ms,
        cpu_ms(lambda: passes.utilities(rows), k, repeats),
    )
    vmapped = validation.ValidationPasses(net, held, "vmap")
    out["matrix product, vmap passes"] = (
        gemm_ms,
        cpu_ms(lambda: vmapped.utilities(rows), k, repeats),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, action="append", required=True)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--models", type=int, default=120, help="coalitions timed per cell")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_threads(1)
    print("| model | clients | variant | build ms/model | pass ms/model | total ms/model |")
    print("|---|---|---|---|---|---|")
    for n in args.clients:
        for variant, (build, passes) in bench(args.model, n, args.models, args.repeats).items():
            print(
                f"| {args.model} | {n} | {variant} | {build:.2f} | {passes:.2f} | "
                f"{build + passes:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
