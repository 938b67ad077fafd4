"""Benchmark: the coordinator's per-round scoring on a run's own rounds, before and after.

Replays every archived round of a finished run directory as ``fedchain verify --scores`` does
(:func:`fedchain.rounds.recheck.iter_round_scores`: the round's rule over its archived updates,
with the run's :class:`~fedchain.rounds.validation.RoundScorer`), which is exactly the scoring the
coordinator did while its clients waited: for ``screened``, the contribution scores plus the
step gains. Each variant is timed on the same inputs in one process, the variants alternated
repeat by repeat (a shared machine's load moves them alike), torch on one thread as in
``fedchain simulate``'s server; the scores of every variant must be bit-identical to the first's.

Variants:

* ``aten-pool``: the ``cnn`` model's adaptive pool computed by ATen's kernel
  (``nn.AdaptiveAvgPool2d.forward``: the code before the exact tensor-op pool);
* ``one-thread``: the code as it is, the passes on one thread (``RoundScorer(threads=1)``,
  as ``verify --scores`` runs them);
* ``current``: the code as it is, the passes on
  :func:`~fedchain.rounds.validation.count_pass_threads` threads, as the coordinator of
  ``fedchain simulate`` runs them.

Prints per variant the scorer's time a round (the time inside the scorer's calls: wall seconds,
and CPU seconds by ``time.process_time``; the replay's loading, hashing and aggregation are not
counted) as min / median / max over the repeats of its mean over the rounds, the coalition
evaluations a round, and the ratio of each variant's time to the first's, per repeat
(min / median / max).

    python experiments/bench_round_scoring.py RUN_DIR --repeats 7
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torch import nn

from fedchain.config import load_config_file
from fedchain.learning.training import configure_threads
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.recheck import iter_round_scores, make_scorer
from fedchain.rounds.validation import PassThreads, RoundScorer, count_pass_threads
from fedchain.tasks.cnn import UniformAveragePool


@contextlib.contextmanager
def aten_pool(scorer: RoundScorer) -> Iterator[None]:
    pools = [m for m in scorer.net.modules() if isinstance(m, UniformAveragePool)]
    for m in pools:
        m.forward = nn.AdaptiveAvgPool2d.forward.__get__(m)  # type: ignore[method-assign]
    try:
        with threads(1)(scorer):
            yield
    finally:
        for m in pools:
            del m.forward


def threads(count: int) -> Callable[[RoundScorer], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def use(scorer: RoundScorer) -> Iterator[None]:
        kept, scorer.threads = scorer.threads, PassThreads(scorer.passes, scorer.validation, count)
        try:
            yield
        finally:
            scorer.threads = kept

    return use


class TimedScorer:
    """``scorer`` with the wall and CPU time spent in its calls added up."""

    def __init__(self, scorer: RoundScorer) -> None:
        self.scorer, self.net = scorer, scorer.net
        self.wall = self.cpu = 0.0

    def __call__(self, *args: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return self.scorer(*args)
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


VARIANTS: dict[str, Callable[[RoundScorer], contextlib.AbstractContextManager[None]]] = {
    "aten-pool": aten_pool,
    "one-thread": threads(1),
    "current": threads(count_pass_threads()),
}


def spread(values: list[float]) -> str:
    return f"{min(values):.4f} / {statistics.median(values):.4f} / {max(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    configure_threads(1)
    report = verify_ledger(args.run_dir, details=True)
    config = load_config_file(args.run_dir / "config.toml")
    scorer = make_scorer(config, report)
    if not isinstance(scorer, RoundScorer):
        raise SystemExit("the run scores without a validation scorer: nothing to time")

    def replay() -> tuple[list[tuple[float, ...] | None], float, float]:
        scorer.evaluations = 0
        timed = TimedScorer(scorer)
        raw = [s.raw for s in iter_round_scores(args.run_dir, report, config, timed)]
        return raw, timed.wall, timed.cpu

    for variant in VARIANTS.values():
        with variant(scorer):
            replay()  # warm-up: imports, the first allocations, the threads
    reference = None
    rounds = 0
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    evaluations: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, variant in VARIANTS.items():
            with variant(scorer):
                raw, wall, cpu = replay()
            if reference is None:
                reference, rounds = raw, len(raw)
            elif raw != reference:
                raise SystemExit(f"variant {name!r} changed the scores")
            evaluations[name] = scorer.evaluations
            times[name].append((wall / rounds, cpu / rounds))
    print(
        f"{args.run_dir}: {rounds} rounds, {args.repeats} repeats, scores bit-identical; "
        f"current: {count_pass_threads()} pass threads"
    )
    print("| variant | evaluations a round | wall s a round | CPU s a round | wall / first |")
    print("|---|---|---|---|---|")
    first = next(iter(VARIANTS))
    for name in VARIANTS:
        walls = [w for w, _ in times[name]]
        cpus = [c for _, c in times[name]]
        ratios = [w / f for (w, _), (f, _) in zip(times[name], times[first], strict=True)]
        print(
            f"| {name} | {evaluations[name] / rounds:.1f} | {spread(walls)} | {spread(cpus)} | "
            f"{spread(ratios)} |"
        )


if __name__ == "__main__":
    main()
