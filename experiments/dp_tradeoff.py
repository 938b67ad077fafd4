"""Experiment: what example-level differential privacy costs the default federation.

Issue 15, deliverable 3 (part): the default federation (``fedchain simulate``'s defaults: digits,
10 IID clients, 20 rounds, the CNN, rule ``screened``, the default contribution method,
``mc-shapley``; and the same with plain FedAvg) with DP-SGD at epsilon 1, 3, 8 and infinity (DP
off), each clean and with 30 % sign-flip attackers. A run the federation itself stops (an error)
is recorded as aborted. For each epsilon the noise multiplier is the smallest whose 20 rounds (20
DP-SGD steps a round at sampling rate 0.1, delta 1e-5) stay within it, by Opacus's RDP
accountant; the genesis' cap is then exactly 20 participations. Every run is a real federation on
the in-process grid (as ``experiments/robustness.py``), verified before its numbers are read; it
records the final test accuracy and the attackers' share of the rewards. ``--dataset``,
``--train-examples`` and ``--test-examples`` are the runs' own settings (a subsample is part of
each run's configuration); ``--contribution`` picks another scorer.

With ``--fidelity-rounds R ...`` the runs of ``--fidelity-rules`` at ``--fidelity-seeds`` also
measure how well the scores on their ledger track exact Shapley values in rounds R
(:func:`measure_fidelity`: 1,024 coalition evaluations a round); ``--fidelity-only`` measures it
afterwards for runs kept with ``--keep``.

    python experiments/dp_tradeoff.py [--out experiments/results] [--seeds 0 1 2] [--rounds 20]
    python experiments/dp_tradeoff.py --dataset fashion-mnist --train-examples 1000 \
        --test-examples 500 --name dp_tradeoff_fashion-mnist --fidelity-rounds 1 10

Writes ``NAME_runs.csv`` (rows as they finish; a rerun skips rows already there) and
``NAME.md`` (``--name``, default ``dp_tradeoff``). Runs one federation at a time (DP-SGD is
CPU-bound).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.robustness import Cell, _init_worker, run_cell
from fedchain.config import RunConfig
from fedchain.ledger.builder import make_rules
from fedchain.privacy.accountant import compute_dp_rules, compute_epsilon, privacy_of

EPSILONS = (1.0, 3.0, 8.0, math.inf)
SAMPLE_RATE, DELTA, LOCAL_EPOCHS = 0.1, 1e-5, 2
STEPS = round(LOCAL_EPOCHS / SAMPLE_RATE)
ATTACK, FRACTION = "sign-flip", 0.3
RULES = ("screened", "fedavg")  # the default rule, and plain FedAvg by examples for reference
FIELDS = [
    "dataset",
    "contribution",
    "rule",
    "epsilon",
    "noise",
    "spent",
    "seed",
    "attack",
    "accuracy",
    "reward_share",
    "curve",
    "aborted",
    "seconds",
    "fidelity_median",
    "fidelity_min",
    "fidelity_rounds",
    "fidelity_undefined",
    "fidelity_seconds",
]


def spent(noise: float, rounds: int) -> float:
    rules = make_rules(
        dp=compute_dp_rules(
            "example", noise_multiplier=noise, clip_norm=1.0, delta=DELTA, max_epsilon=1e9,
            sample_rate=SAMPLE_RATE, steps_per_round=STEPS,
        )
    )  # fmt: skip
    return compute_epsilon(privacy_of(rules), rounds)


def noise_for(epsilon: float, rounds: int) -> float:
    """The smallest noise multiplier (to 1e-3) whose ``rounds`` participations spend at most
    ``epsilon``."""
    low, high = 0.3, 50.0
    while high - low > 1e-3:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle, rounds) > epsilon else (low, middle)
    return round(high + 5e-4, 3)


def dp_settings(epsilon: float, rounds: int) -> tuple[dict[str, Any], float, float]:
    if math.isinf(epsilon):
        return {}, 0.0, math.inf
    noise = noise_for(epsilon, rounds)
    used = spent(noise, rounds)
    settings = {
        "dp": "example",
        "dp-noise": noise,
        "dp-clip": 1.0,
        "dp-sample-rate": SAMPLE_RATE,
        "dp-delta": DELTA,
        "dp-max-epsilon": epsilon,
    }
    return settings, noise, used


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--dataset", default=RunConfig.dataset)
    parser.add_argument("--contribution", default=RunConfig.contribution)
    parser.add_argument(
        "--train-examples", type=int, default=0, help="subsample of the train split (0: all)"
    )
    parser.add_argument(
        "--test-examples", type=int, default=0, help="subsample of the test split (0: all)"
    )
    parser.add_argument("--name", default="dp_tradeoff", help="results' file stem")
    parser.add_argument(
        "--markdown-only", action="store_true", help="run nothing: write the markdown of the CSV"
    )
    parser.add_argument("--keep", type=Path, help="keep each run directory here")
    parser.add_argument(
        "--fidelity-rounds",
        type=int,
        nargs="*",
        default=[],
        help="rounds whose scores are compared with exact Shapley (none: not measured)",
    )
    parser.add_argument("--fidelity-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fidelity-rules", nargs="+", default=["screened"], choices=RULES)
    parser.add_argument(
        "--fidelity-only",
        action="store_true",
        help="run nothing: measure the fidelity of the rows already run, from --keep",
    )
    args = parser.parse_args(argv)
    shown = sys.argv[1:] if argv is None else argv  # the command the table's runs came from
    args.argv = [a for a in shown if a not in ("--markdown-only", "--fidelity-only")]
    if args.fidelity_only:
        fill_fidelity(args)
        return
    if args.markdown_only:
        write_markdown(args.out / f"{args.name}_runs.csv", args.out / f"{args.name}.md", args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / f"{args.name}_runs.csv"
    done = set()
    if csv_path.exists():
        with csv_path.open() as f:
            done = {(r["rule"], r["epsilon"], r["seed"], r["attack"]) for r in csv.DictReader(f)}
    _init_worker()
    base: dict[str, Any] = {
        "rounds": args.rounds,
        "local-epochs": LOCAL_EPOCHS,
        "dataset": args.dataset,
        "contribution": args.contribution,
    }
    if args.train_examples:
        base["train-examples"] = args.train_examples
    if args.test_examples:
        base["test-examples"] = args.test_examples
    for epsilon in args.epsilons:
        settings, noise, used = dp_settings(epsilon, args.rounds)
        for rule in args.rules:
            for seed in args.seeds:
                for attack, fraction in (("none", 0.0), (ATTACK, FRACTION)):
                    if (rule, f"{epsilon:g}", str(seed), attack) in done:
                        continue
                    cell = Cell(rule, "iid", (("partitioner", "iid"),), seed, attack, fraction)
                    out = {
                        "dataset": args.dataset,
                        "contribution": args.contribution,
                        "rule": rule,
                        "epsilon": f"{epsilon:g}",
                        "noise": f"{noise:g}",
                        "spent": f"{used:.3f}",
                        "seed": seed,
                        "attack": attack,
                    }
                    measure = (
                        args.fidelity_rounds
                        and rule in args.fidelity_rules
                        and seed in args.fidelity_seeds
                    )
                    with tempfile.TemporaryDirectory(prefix="fedchain-dp-") as scratch:
                        keep = Path(scratch) if measure else None
                        if args.keep is not None:
                            keep = args.keep / run_name(rule, epsilon, seed, attack)
                            keep.mkdir(parents=True, exist_ok=True)
                        try:
                            row = run_cell(cell, {**base, **settings}, keep)
                            out.update(
                                accuracy=row["accuracy"],
                                reward_share=row.get("reward_share", ""),
                                curve=row["curve"],
                                seconds=row["seconds"],
                            )
                        except Exception as e:  # a run the federation stops: a finding
                            out.update(accuracy="", reward_share="", curve="", aborted=str(e)[:200])
                        if measure and keep is not None and not out.get("aborted"):
                            started = time.perf_counter()
                            out.update(measure_fidelity(keep / "run", args.fidelity_rounds))
                            out["fidelity_seconds"] = f"{time.perf_counter() - started:.1f}"
                    _append(csv_path, out)
                    print(rule, out["epsilon"], attack, out.get("accuracy"), flush=True)
    write_markdown(csv_path, args.out / f"{args.name}.md", args)


def fill_fidelity(args: argparse.Namespace) -> None:
    """Measure the fidelity of the CSV's rows that lack it and whose run directory is kept in
    ``--keep`` (``--fidelity-rules``, ``--fidelity-seeds``), rewriting the CSV after each."""
    csv_path = args.out / f"{args.name}_runs.csv"
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    _init_worker()
    for row in rows:
        run_dir = args.keep / run_name(
            row["rule"], float(row["epsilon"]), int(row["seed"]), row["attack"]
        )
        if (
            row.get("fidelity_median")
            or row["rule"] not in args.fidelity_rules
            or int(row["seed"]) not in args.fidelity_seeds
            or not (run_dir / "run").is_dir()
        ):
            continue
        started = time.perf_counter()
        row.update(measure_fidelity(run_dir / "run", args.fidelity_rounds))
        row["fidelity_seconds"] = f"{time.perf_counter() - started:.1f}"
        print(row["rule"], row["epsilon"], row["attack"], row["fidelity_median"], flush=True)
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    write_markdown(csv_path, args.out / f"{args.name}.md", args)


def measure_fidelity(run_dir: Path, rounds: Sequence[int]) -> dict[str, str]:
    """The run's contribution scores against exact Shapley values, in ``rounds``: each round's
    full coalition table (the run's own scorer, on its archived updates: 2**n evaluations), its
    exact Shapley values, and the Pearson correlation with the scores the ledger recorded for
    the same clients. A round whose exact values or recorded scores are all equal has no
    correlation (the noised updates all scored 0, say): counted, not averaged."""
    import numpy as np
    import torch

    from fedchain.config import load_config_file
    from fedchain.ledger.objects import SCORE_SCALE
    from fedchain.ledger.verify import verify_ledger
    from fedchain.rounds.coalitions import make_coalition_utility
    from fedchain.rounds.contribution import compute_exact_shapley
    from fedchain.rounds.recheck import iter_round_scores
    from fedchain.rounds.validation import RoundScorer
    from fedchain.runs.archive import UpdateArchive
    from fedchain.runs.layout import CONFIG_FILENAME
    from fedchain.runs.prepare import load_split

    config = load_config_file(run_dir / CONFIG_FILENAME)
    report = verify_ledger(run_dir)
    if not report.ok:
        raise RuntimeError(f"{run_dir}: the ledger does not verify: {report.failure}")
    torch.set_num_threads(1)
    scorer = RoundScorer(config, load_split(config)[1])
    wanted = set(rounds)
    exact: dict[int, tuple[np.ndarray, list[Any]]] = {}

    def capture(base: Any, updates: list[Any], weights: Sequence[float], round_: int) -> Any:
        n = len(updates)
        if round_ not in wanted or round_ in exact:  # screened's later calls; other rounds
            return np.zeros(n)
        u = make_coalition_utility(base, updates, weights, scorer._utility, renormalise=False)
        table = np.array([u(frozenset(i for i in range(n) if m >> i & 1)) for m in range(1 << n)])
        values = compute_exact_shapley(n, lambda s: float(table[sum(1 << i for i in s)]))
        exact[round_] = (np.asarray(values, dtype=np.float64), updates)
        return values

    pearsons: list[float] = []
    undefined = 0
    for scores in iter_round_scores(run_dir, report, config, capture):
        if scores.round not in exact or scores.recorded is None:
            continue
        values, scored = exact.pop(scores.round)
        record = next(r for r in report.round_records if r.model_version.round == scores.round)
        committed = UpdateArchive(run_dir).load_many([c.update_hash for c in record.commitments])
        recorded = []
        for s in scored:  # the scored updates' keys (the norm screen may have left some out)
            key = next(
                k
                for k, c in zip(scores.keys, committed, strict=True)
                if all(np.array_equal(c[name], s[name]) for name in c)
            )
            recorded.append(scores.recorded.get(key, 0) / SCORE_SCALE)
        if len(values) < 3 or np.ptp(values) == 0 or np.ptp(recorded) == 0:
            undefined += 1
            continue
        pearsons.append(float(np.corrcoef(values, recorded)[0, 1]))
    return {
        "fidelity_median": f"{statistics.median(pearsons):.4f}" if pearsons else "",
        "fidelity_min": f"{min(pearsons):.4f}" if pearsons else "",
        "fidelity_rounds": " ".join(str(r) for r in sorted(wanted)),
        "fidelity_undefined": str(undefined),
    }


def run_name(rule: str, epsilon: float, seed: int, attack: str) -> str:
    return f"{rule}-eps{epsilon:g}-s{seed}-{attack}"


def _append(csv_path: Path, row: dict[str, Any]) -> None:
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def describe(args: argparse.Namespace) -> str:
    """The set-up, as the markdown's header says it."""
    data = args.dataset
    if args.train_examples or args.test_examples:
        data += (
            f" (subsample: train-examples {args.train_examples or 'all'}, of which 10 % is the "
            f"coordinator's validation split; test-examples {args.test_examples or 'all'})"
        )
    return (
        f"{data}, 10 IID clients, CNN, {args.rounds} rounds, {LOCAL_EPOCHS} local epochs; "
        f"contribution scores: {args.contribution} (the default: "
        f"{RunConfig.contribution}, budget {RunConfig.contribution_budget}); DP-SGD at sampling "
        f"rate {SAMPLE_RATE:g}, {STEPS} steps a round, clip 1, delta {DELTA:g}, noise multiplier "
        f"the smallest whose {args.rounds} rounds stay within epsilon (Opacus RDP); attack: "
        f"{FRACTION:.0%} {ATTACK}."
    )


def _pct(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1%}"
    return f"{mean:.1%} ({min(values):.1%}-{max(values):.1%})"


def write_markdown(csv_path: Path, md_path: Path, args: argparse.Namespace) -> None:
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    command = "python experiments/dp_tradeoff.py " + " ".join(args.argv)
    run_s = sum(float(r["seconds"]) for r in rows if r.get("seconds"))
    fidelity_s = sum(float(r["fidelity_seconds"]) for r in rows if r.get("fidelity_seconds"))
    lines = [
        f"# Example-level DP on {args.dataset} (experiments/dp_tradeoff.py)",
        "",
        f"Command: `{command}` (run with `nice -n 10` on the shared 2-core machine; a rerun "
        "skips the rows already in the CSV).  ",
        f"Time: {len(rows)} federations, {run_s / 60:.1f} min in all (each run's own time), plus "
        f"{fidelity_s / 60:.1f} min measuring fidelity.",
        "",
        describe(args),
        "",
        "Fidelity: in the rounds named, every coalition of the round's scored updates is "
        "evaluated with the run's own scorer on its archived updates (2^10 = 1,024 "
        "evaluations), and the Pearson correlation between the exact Shapley values and the "
        "scores the ledger recorded is taken; the median (and the minimum) over those rounds. A "
        "round whose exact values or recorded scores are all equal has none (counted as "
        "'undefined').",
        "",
        "## Mean over seeds (min-max)",
        "",
        "| rule | epsilon | noise multiplier | attack | seeds | final accuracy | attackers' "
        "reward share | fidelity (Pearson vs exact Shapley; median over the runs measured) |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str, str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["rule"], r["epsilon"], r["noise"], r["attack"]), []).append(r)
    for (rule, epsilon, noise, attack), members in groups.items():
        ok = [r for r in members if r["accuracy"]]
        accuracy = _pct([float(r["accuracy"]) for r in ok])
        share = _pct([float(r["reward_share"]) for r in ok if r["reward_share"]])
        if share == "-" and ok:
            share = "nothing paid"
        aborted = len(members) - len(ok)
        if aborted:
            accuracy += f", {aborted} aborted"
        fidelity = [float(r["fidelity_median"]) for r in ok if r.get("fidelity_median")]
        fid = f"{statistics.median(fidelity):.3f}" if fidelity else "-"
        lines.append(
            f"| {rule} | {epsilon} | {noise} | {attack} | {len(members)} | {accuracy} | "
            f"{share} | {fid} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        "| rule | epsilon | epsilon spent | seed | attack | final accuracy | attackers' reward "
        "share | fidelity median (min; rounds; undefined) | seconds |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|",
    ]
    for r in rows:
        share = f"{float(r['reward_share']):.1%}" if r["reward_share"] else "nothing paid"
        accuracy = (
            f"{float(r['accuracy']):.1%}" if r["accuracy"] else f"aborted: {r['aborted'][:90]}"
        )
        fid = "-"
        if r.get("fidelity_rounds"):
            fid = (
                f"{r['fidelity_median'] or 'n/a'} ({r['fidelity_min'] or 'n/a'}; rounds "
                f"{r['fidelity_rounds']}; {r['fidelity_undefined']} undefined)"
            )
        lines.append(
            f"| {r['rule']} | {r['epsilon']} | {r['spent']} | {r['seed']} | {r['attack']} | "
            f"{accuracy} | {share} | {fid} | {r.get('seconds') or '-'} |"
        )
    md_path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
