"""Experiment: do the contribution methods agree with exact Shapley and recover data quality?

Issue 5, point 4 (DESIGN.md section 6: GTG-Shapley Pearson >= 0.98 against exact Shapley for 10
clients at <= 10 % of its model evaluations).

Set-up: scikit-learn's 8x8 digits; the train split (1,437 images) is split IID over 10 clients
(``fedchain.data.partition``). Client ``k`` in 0..8 has a fraction ``k / 10`` of its labels flipped
to a different class drawn uniformly (0 %, 10 %, ..., 80 %), seeded; client 9 is a free rider that
returns the global model unchanged (a zero update) while claiming its examples. The coordinator
holds ``--val`` examples of the digits test split as its validation set; the rest of the test
split only reports the global model's accuracy. Plain-Python FedAvg (as in
``experiments/bench_training.py``): ``--rounds`` rounds, every client trains ``TrainConfig()``
(2 local epochs, batch 16) from the global model, updates are averaged by example count
(``fedchain.aggregation.rules``), torch on one thread.

Every round the same 10 updates are scored in four *settings*: two coalition-model definitions
(``renormalised``: ``base + sum_S w_i d_i / sum_S w_i``, the issue's definition; ``fixed``:
``base + sum_S w_i d_i / sum_all w_i``, each member moves the model by its share of the real
round) times two utilities on the validation set (``accuracy``; ``loss``: minus the mean
cross-entropy). In each setting every method scores the round from scratch:

* exact Shapley: all 1,024 coalition models. One evaluation pass per coalition definition gives
  both utilities (``evaluate`` returns loss and accuracy together), so both settings of a
  definition report the time of that one pass;
* GTG-Shapley with the parameters given on the command line (default: the library defaults),
  sampling seed ``derive_seed(seed, round)``, its own cache (evaluations and time are its own);
* leave-one-out (11 evaluations, its own cache);
* gradient similarity (no evaluations; the same in every setting).

Scores are summed over rounds. Per setting, the table compares each method's summed scores with
summed exact Shapley (Pearson, Spearman), counts distinct coalition models evaluated, and checks
the ranking against the data-quality order (client 0 best, ..., client 8, then the free rider):
target Spearman >= 0.9. One sampling seed proves little, so GTG-Shapley is also rerun with
``--gtg-repeats`` other sampling seeds on the exact utility values already computed (the same
values, no new model evaluations; their evaluation counts are what they would have cost).

    python experiments/contribution_quality.py [--rounds 5] [--seed 0] [--out experiments/results]

Writes ``contribution_quality.md`` and ``contribution_quality.csv`` into ``--out`` and prints the
tables. ``--dump-utilities FILE.npz`` also saves every coalition utility (setting x round x 1,024),
so GTG's parameters can be studied offline without retraining.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import torch
from scipy import stats

from fedchain.aggregation.rules import compute_weights
from fedchain.data.partition import partition
from fedchain.data.sources import ArrayDataset, load_source
from fedchain.learning.architectures import build_model, load_numpy_state, state_to_numpy
from fedchain.learning.training import (
    EvalResult,
    TrainConfig,
    compute_update,
    configure_threads,
    derive_seed,
    evaluate,
    train_local,
)
from fedchain.privacy.dpsgd import train_dpsgd
from fedchain.rounds.coalitions import (
    CachedUtility,
    compute_coalition_model,
    make_coalition_utility,
)
from fedchain.rounds.contribution import GTG_DEFAULTS, compute_scores

CLIENTS = 10
DP_SAMPLE_RATE = 0.1  # --dp-noise: DP-SGD draws each example with this chance a step
FREE_RIDER = 9
NOISE = tuple(k / 10 for k in range(FREE_RIDER))  # clients 0..8: 0 %, 10 %, ..., 80 %
MODEL = "cnn"
COALITIONS = ("renormalised", "fixed")
UTILITIES = ("accuracy", "loss")
SETTINGS = tuple((c, u) for c in COALITIONS for u in UTILITIES)
METHODS = ("shapley", "gtg-shapley", "leave-one-out", "gradient-similarity")
PEARSON_TARGET = 0.98
EVAL_SHARE_TARGET = 0.10
QUALITY_TARGET = 0.9
# Data-quality order: client 0 (clean) best ... client 8 (80 % noise), the free rider last.
QUALITY = -np.arange(CLIENTS, dtype=np.float64)
ALL = frozenset(range(CLIENTS))
NONE: frozenset[int] = frozenset()

Setting = tuple[str, str]
Update = dict[str, np.ndarray]


@dataclass
class Totals:
    """One method's scores summed over rounds, with its cost."""

    scores: np.ndarray = field(default_factory=lambda: np.zeros(CLIENTS))
    evaluations: int = 0
    seconds: float = 0.0
    per_round_evaluations: list[int] = field(default_factory=list)

    def add(self, scores: np.ndarray, evaluations: int, seconds: float) -> None:
        self.scores = self.scores + scores
        self.evaluations += evaluations
        self.seconds += seconds
        self.per_round_evaluations.append(evaluations)


def flip_labels(ds: ArrayDataset, fraction: float, rng: np.random.Generator) -> ArrayDataset:
    """A copy of ``ds`` with ``round(fraction * len)`` labels moved to another class, uniformly."""
    y = ds.y.copy()
    count = round(fraction * len(ds))
    chosen = rng.choice(len(ds), size=count, replace=False)
    y[chosen] = (y[chosen] + rng.integers(1, len(ds.classes), size=count)) % len(ds.classes)
    return ArrayDataset(ds.name, ds.x, y, ds.classes, ds.value_max)


def make_clients(train: ArrayDataset, seed: int) -> list[ArrayDataset]:
    parts = partition(train.y, CLIENTS, "iid", seed=seed)
    clients = []
    for k, idx in enumerate(parts):
        data = train.subset(idx)
        if k < FREE_RIDER:
            data = flip_labels(data, NOISE[k], np.random.default_rng([seed, k]))
        clients.append(data)
    return clients


def split_test(test: ArrayDataset, val_size: int, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    order = np.random.default_rng([seed, 1_000]).permutation(len(test))
    return test.subset(np.sort(order[:val_size])), test.subset(np.sort(order[val_size:]))


def gtg_params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_permutations": args.gtg_max_permutations,
        "max_evaluations": args.gtg_max_evaluations,
        "round_tolerance": args.gtg_round_tolerance,
        "truncation_tolerance": args.gtg_truncation_tolerance,
        "convergence_tolerance": args.gtg_convergence_tolerance,
    }


def utility_of(result: EvalResult, utility: str) -> float:
    return result.accuracy if utility == "accuracy" else -result.loss


def correlations(scores: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    if np.ptp(scores) == 0 or np.ptp(reference) == 0:
        return float("nan"), float("nan")
    return (
        float(stats.pearsonr(scores, reference).statistic),
        float(stats.spearmanr(scores, reference).statistic),
    )


class Experiment:
    """Trains the federation round by round and scores every round in every setting."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        train, test = load_source("digits", split="train"), load_source("digits", split="test")
        self.val, self.rest = split_test(test, args.val, args.seed)
        self.clients = make_clients(train, args.seed)
        sizes = [len(c) for c in self.clients]
        self.weights = compute_weights(
            "fedavg", examples=sizes, stakes=[1] * CLIENTS, reputations=[10_000] * CLIENTS
        )
        shape, classes = train.x.shape[1:], len(train.classes)
        self.model = build_model(MODEL, shape, classes, seed=args.seed)
        self.scorer = build_model(MODEL, shape, classes, seed=args.seed)
        self.params = gtg_params(args)
        self.totals = {(s, m): Totals() for s in SETTINGS for m in METHODS}
        self.repeats = {s: [Totals() for _ in range(args.gtg_repeats)] for s in SETTINGS}
        self.utilities = {s: [] for s in SETTINGS}  # type: dict[Setting, list[np.ndarray]]
        self.rounds: list[dict[str, Any]] = []
        print(
            f"digits: {len(train)} train over {CLIENTS} clients {sizes}, {len(self.val)} "
            f"validation, {len(self.rest)} test; label noise {[f'{p:.0%}' for p in NOISE]}, "
            f"client {FREE_RIDER} free rider; {args.rounds} rounds",
            flush=True,
        )

    def evaluate_arrays(self, arrays: dict[str, np.ndarray]) -> EvalResult:
        load_numpy_state(self.scorer, arrays)
        return evaluate(self.scorer, self.val)

    def train_round(self, rnd: int, base: Update) -> list[Update]:
        updates = []
        for k, data in enumerate(self.clients):
            if k == FREE_RIDER:
                updates.append({n: np.zeros_like(v) for n, v in base.items()})
                continue
            load_numpy_state(self.model, base)
            cfg = replace(TrainConfig(), seed=derive_seed(self.args.seed, rnd, k))
            if self.args.dp_noise:  # example-level DP (issue 15): DP-SGD, seeded to reproduce
                train_dpsgd(
                    self.model, data, lr=cfg.lr, momentum=cfg.momentum,
                    noise_multiplier=self.args.dp_noise, clip=1.0, sample_rate=DP_SAMPLE_RATE,
                    steps=round(cfg.epochs / DP_SAMPLE_RATE), seed=cfg.seed,
                )  # fmt: skip
            else:
                train_local(self.model, data, cfg)
            updates.append(compute_update(base, state_to_numpy(self.model)))
        return updates

    def score_round(self, rnd: int, base: Update, updates: list[Update]) -> None:
        seed = derive_seed(self.args.seed, rnd)
        start = time.perf_counter()
        similarity = compute_scores(
            "gradient-similarity", n=CLIENTS, updates=updates, weights=self.weights
        )
        similarity_s = time.perf_counter() - start
        for coalitions in COALITIONS:
            renormalise = coalitions == "renormalised"
            records: dict[frozenset[int], EvalResult] = {}

            def record(
                c: frozenset[int],
                renormalise: bool = renormalise,
                records: dict[frozenset[int], EvalResult] = records,
            ) -> EvalResult:
                arrays = compute_coalition_model(
                    base, updates, self.weights, c, renormalise=renormalise
                )
                records[c] = self.evaluate_arrays(arrays)
                return records[c]

            start = time.perf_counter()
            exact_first = compute_scores(
                "shapley", n=CLIENTS, utility=lambda c: utility_of(record(c), UTILITIES[0])
            )
            pass_s = time.perf_counter() - start
            line = [f"{coalitions}: exact {len(records)} evals {pass_s:.1f} s"]
            for utility in UTILITIES:
                setting = (coalitions, utility)
                table = {c: utility_of(r, utility) for c, r in records.items()}
                exact = (
                    exact_first
                    if utility == UTILITIES[0]
                    else compute_scores("shapley", n=CLIENTS, utility=table.__getitem__)
                )
                self.totals[setting, "shapley"].add(exact, len(records), pass_s)
                self.totals[setting, "gradient-similarity"].add(similarity, 0, similarity_s)
                for method in ("gtg-shapley", "leave-one-out"):
                    scores, evals, seconds = self.score_fresh(
                        method, base, updates, renormalise, utility, seed
                    )
                    self.totals[setting, method].add(scores, evals, seconds)
                    line.append(f"{utility} {method} {evals} evals {seconds:.1f} s")
                self.replay_gtg(setting, table, rnd)
                self.utilities[setting].append(
                    np.array([table[frozenset(i for i in ALL if m >> i & 1)] for m in range(1024)])
                )
            print(f"  round {rnd} {'; '.join(line)}", flush=True)
        self.rounds.append(
            {
                "round": rnd,
                "val_before": records[NONE].accuracy,
                "val_after": records[ALL].accuracy,
                "loss_before": records[NONE].loss,
                "loss_after": records[ALL].loss,
            }
        )

    def score_fresh(
        self,
        method: str,
        base: Update,
        updates: list[Update],
        renormalise: bool,
        utility: str,
        seed: int,
    ) -> tuple[np.ndarray, int, float]:
        """Score with a new cache: the method pays for (and is timed on) its own evaluations."""

        def score_model(arrays: dict[str, np.ndarray]) -> float:
            return utility_of(self.evaluate_arrays(arrays), utility)

        cached = make_coalition_utility(
            base, updates, self.weights, score_model, renormalise=renormalise
        )
        params = self.params if method == "gtg-shapley" else {}
        start = time.perf_counter()
        scores = compute_scores(method, n=CLIENTS, utility=cached, seed=seed, **params)
        return scores, cached.evaluations, time.perf_counter() - start

    def replay_gtg(self, setting: Setting, table: dict[frozenset[int], float], rnd: int) -> None:
        for r, totals in enumerate(self.repeats[setting]):
            replay = CachedUtility(table.__getitem__)
            seed = derive_seed(self.args.seed, rnd, 1 + r)
            scores = compute_scores(
                "gtg-shapley", n=CLIENTS, utility=replay, seed=seed, **self.params
            )
            totals.add(scores, replay.evaluations, 0.0)

    def run(self) -> None:
        configure_threads(1)
        state = state_to_numpy(self.model)
        for rnd in range(1, self.args.rounds + 1):
            start = time.perf_counter()
            updates = self.train_round(rnd, state)
            print(f"round {rnd}: trained in {time.perf_counter() - start:.1f} s", flush=True)
            self.score_round(rnd, state, updates)
            state = compute_coalition_model(state, updates, self.weights, ALL)
            load_numpy_state(self.model, state)
            self.rounds[-1]["test_after"] = evaluate(self.model, self.rest).accuracy
            r = self.rounds[-1]
            print(
                f"  round {rnd}: validation accuracy {100 * r['val_before']:.1f} -> "
                f"{100 * r['val_after']:.1f} %, test {100 * r['test_after']:.1f} %",
                flush=True,
            )
        if self.args.dump_utilities:
            np.savez(
                self.args.dump_utilities,
                settings=np.array([f"{c}/{u}" for c, u in SETTINGS]),
                utilities=np.array([self.utilities[s] for s in SETTINGS]),
                weights=self.weights,
            )


def table_rows(exp: Experiment) -> list[dict[str, Any]]:
    rows = []
    for setting in SETTINGS:
        exact = exp.totals[setting, "shapley"]
        for method in METHODS:
            t = exp.totals[setting, method]
            pearson, spearman = correlations(t.scores, exact.scores)
            _, quality = correlations(t.scores, QUALITY)
            share = t.evaluations / exact.evaluations
            rows.append(
                {
                    "coalitions": setting[0],
                    "utility": setting[1],
                    "method": method,
                    "pearson_vs_exact": pearson,
                    "spearman_vs_exact": spearman,
                    "evaluations": t.evaluations,
                    "evaluations_pct_of_exact": round(100 * share, 2),
                    "seconds": round(t.seconds, 2),
                    "spearman_vs_quality": quality,
                    "free_rider_last": bool(
                        t.scores[FREE_RIDER] < np.delete(t.scores, FREE_RIDER).min()
                    ),
                    "meets_gtg_target": (
                        pearson >= PEARSON_TARGET and share <= EVAL_SHARE_TARGET
                        if method == "gtg-shapley"
                        else ""
                    ),
                }
            )
    return rows


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def repeat_summary(exp: Experiment, setting: Setting) -> str:
    repeats = exp.repeats[setting]
    if not repeats:
        return ""
    exact = exp.totals[setting, "shapley"]
    pearsons = [correlations(rep.scores, exact.scores)[0] for rep in repeats]
    shares = [100 * rep.evaluations / exact.evaluations for rep in repeats]
    met = sum(
        p >= PEARSON_TARGET and s <= 100 * EVAL_SHARE_TARGET
        for p, s in zip(pearsons, shares, strict=True)
    )
    return (
        f"GTG-Shapley over {len(repeats)} other sampling seeds (same utility values): Pearson "
        f"min {min(pearsons):.4f}, median {statistics.median(pearsons):.4f}, max "
        f"{max(pearsons):.4f}; evaluations {min(shares):.1f}-{max(shares):.1f} % of exact; "
        f"target met with {met} of {len(repeats)} seeds."
    )


def markdown(exp: Experiment, rows: list[dict[str, Any]], runtime: float, command: str) -> str:
    args = exp.args
    lines = [
        "# Contribution scores against exact Shapley (issue 5, point 4)",
        "",
        f"Command: `{command}`  ",
        f"Total runtime: {runtime:.0f} s on {os.cpu_count()} cores (torch on 1 thread, shared "
        f"machine); torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"python {platform.python_version()}.",
        "",
        "10 clients on digits (IID split of the train split), label noise "
        f"{', '.join(f'{p:.0%}' for p in NOISE)} on clients 0-8, client 9 a free rider (zero "
        f"update); {args.rounds} FedAvg rounds, seed {args.seed}"
        + (
            f", clients training with DP-SGD (noise multiplier {args.dp_noise:g}, clip 1, "
            f"sampling rate {DP_SAMPLE_RATE:g})"
            if args.dp_noise
            else ""
        )
        + f"; utilities measured on "
        f"{args.val} validation examples of the test split. Scores summed over rounds. "
        "Evaluations = distinct coalition models evaluated (exact: 1,024 per round). Quality "
        "order: client 0 best ... client 8, free rider last (target Spearman >= "
        f"{QUALITY_TARGET}). Coalition models: *renormalised* = base + sum_S w_i d_i / sum_S w_i; "
        "*fixed* = base + sum_S w_i d_i / sum_all w_i. Exact Shapley's time is one evaluation "
        "pass per coalition definition, shared by its two utilities.",
        "",
        f"GTG-Shapley parameters: {exp.params} (max_permutations None = one guided cycle of "
        f"{CLIENTS}).",
    ]
    for setting in SETTINGS:
        coalitions, utility = setting
        utility_name = "validation accuracy" if utility == "accuracy" else "minus validation loss"
        lines += [
            "",
            f"## {coalitions} coalitions, utility = {utility_name}",
            "",
            "| method | Pearson vs exact | Spearman vs exact | evaluations | % of exact | time (s) "
            "| Spearman vs quality | free rider last |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            if (r["coalitions"], r["utility"]) != setting:
                continue
            lines.append(
                f"| {r['method']} | {fmt(r['pearson_vs_exact'], 4)} | "
                f"{fmt(r['spearman_vs_exact'])} | {r['evaluations']} | "
                f"{r['evaluations_pct_of_exact']:.1f} | {r['seconds']:.1f} | "
                f"{fmt(r['spearman_vs_quality'])} | {'yes' if r['free_rider_last'] else 'no'} |"
            )
        gtg = next(
            r
            for r in rows
            if (r["coalitions"], r["utility"]) == setting and r["method"] == "gtg-shapley"
        )
        lines += [
            "",
            f"GTG-Shapley target (Pearson >= {PEARSON_TARGET} at <= {EVAL_SHARE_TARGET:.0%} of "
            f"exact's evaluations): **{'met' if gtg['meets_gtg_target'] else 'NOT met'}** "
            f"(Pearson {fmt(gtg['pearson_vs_exact'], 4)} at {gtg['evaluations_pct_of_exact']:.1f} "
            f"%); evaluations per round "
            f"{exp.totals[setting, 'gtg-shapley'].per_round_evaluations}.",
        ]
        summary = repeat_summary(exp, setting)
        if summary:
            lines += ["", summary]
        lines += [
            "",
            "| client | label noise | " + " | ".join(METHODS) + " |",
            "|---|---|" + "---:|" * len(METHODS),
        ]
        for k in range(CLIENTS):
            noise = "free rider" if k == FREE_RIDER else f"{NOISE[k]:.0%}"
            cells = " | ".join(f"{exp.totals[setting, m].scores[k]:+.4f}" for m in METHODS)
            lines.append(f"| {k} | {noise} | {cells} |")
    lines += [
        "",
        "## Global model per round",
        "",
        "| round | validation accuracy before -> after | validation loss before -> after "
        "| test accuracy (rest) |",
        "|---:|---:|---:|---:|",
    ]
    for r in exp.rounds:
        lines.append(
            f"| {r['round']} | {100 * r['val_before']:.1f} -> {100 * r['val_after']:.1f} % | "
            f"{r['loss_before']:.3f} -> {r['loss_after']:.3f} | {100 * r['test_after']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--val", type=int, default=300, help="validation examples (of 360)")
    parser.add_argument("--gtg-repeats", type=int, default=20, help="extra GTG sampling seeds")
    default: Callable[[str], Any] = GTG_DEFAULTS.__getitem__
    parser.add_argument(
        "--gtg-max-permutations", type=optional_int, default=default("max_permutations")
    )
    parser.add_argument(
        "--gtg-max-evaluations", type=optional_int, default=default("max_evaluations")
    )
    parser.add_argument("--gtg-round-tolerance", type=float, default=default("round_tolerance"))
    parser.add_argument(
        "--gtg-truncation-tolerance", type=float, default=default("truncation_tolerance")
    )
    parser.add_argument(
        "--gtg-convergence-tolerance", type=float, default=default("convergence_tolerance")
    )
    parser.add_argument("--dump-utilities", type=Path, help="save coalition utilities (.npz)")
    parser.add_argument(
        "--dp-noise", type=float, default=0.0, help="DP-SGD noise multiplier (0: no DP)"
    )
    parser.add_argument("--name", default="contribution_quality", help="results' file stem")
    args = parser.parse_args()
    if args.rounds < 1 or not 1 <= args.val < 360 or args.gtg_repeats < 0:
        parser.error("--rounds must be >= 1, --val in 1..359, --gtg-repeats >= 0")
    command = shlex.join(["python", "experiments/contribution_quality.py", *sys.argv[1:]])
    start = time.perf_counter()
    exp = Experiment(args)
    exp.run()
    runtime = time.perf_counter() - start
    rows = table_rows(exp)
    text = markdown(exp, rows, runtime, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    write_csv(args.out / f"{args.name}.csv", rows)
    print()
    print(text, end="")
    print(f"wrote {args.out / args.name}.md and .csv ({runtime:.0f} s)")


if __name__ == "__main__":
    main()
