"""Experiment: which aggregation rule keeps accuracy and keeps attackers from the rewards?

Issue 6 (DESIGN.md section 6): with 30 % and 40 % attackers of every kind the default rule must
keep accuracy within 2 points of the clean run, and attackers plus free riders must end with
< 1 % of the rewards.

The grid (``experiments/configs/robustness.toml``): rules x data partitions x seeds, each run
clean (0 %) and with each attack at each attacker fraction. Every run is a real federation: the
real ServerApp logic and ClientApp code (``server/inprocess_grid.py`` delivers the messages in
process instead of Ray, which would add 5 s of start-up to each of ~2,000 runs), the attackers
being real clients with ``fedchain simulate``'s ``--attack``/``--attackers``. fedchain's rules run
with the ledger on (admission checks, contribution scores, rewards, slashing); Flower's own
strategies (``flwr-*``) run unmodified with the ledger off, since they know no stake. Each
ledger-on run is verified (``verify_ledger``) before its numbers are read.

Per run it records the final test accuracy (the global model after the last round, on the
source's test split), and for ledger runs the attackers' share of all rewards paid, their share
of the total stake at the end, and how many of them were slashed, rejected or ejected.

    python experiments/robustness.py [--config experiments/configs/robustness.toml]
        [--jobs 2] [--out experiments/results] [--only-report]

Runs go to ``--out/robustness_runs.csv`` as they finish (an interrupted grid resumes where it
stopped: rows already there are not run again); then ``robustness.md`` (tables) and
``robustness_*.png`` (plots) are written from the CSV. ``--only-report`` redoes just that.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ORACLE_RULE, ABSENT = "flwr-fedavg", "absent"
"""The reference run of each attacker fraction: Flower's FedAvg with the would-be attackers
absent (never answering): what is left once their data is gone, the most any rule can keep."""
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "robustness.toml"
TARGET_DROP = 2.0  # accuracy points, at 30 % and 40 % attackers
TARGET_SHARE = 0.01  # of all rewards paid, attackers and free riders together
JUDGED_FRACTIONS = (0.3, 0.4)

FIELDS = [
    "rule",
    "partition",
    "seed",
    "attack",
    "fraction",
    "attackers",
    "accuracy",
    "curve",
    "reward_share",
    "stake_share_start",
    "stake_share_end",
    "slashed",
    "rejected",
    "ejected",
    "seconds",
]


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    rule: str
    partition: str  # "iid" or "dirichlet-0.5"
    settings: tuple[tuple[str, Any], ...]  # RunConfig settings of the partition
    seed: int
    attack: str  # "none" for the clean run
    fraction: float

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.rule, self.partition, str(self.seed), self.attack, f"{self.fraction:g}")


def load_grid(path: Path) -> tuple[list[Cell], dict[str, Any]]:
    """The grid's cells (in a good running order) and the settings every run shares."""
    doc = tomllib.loads(path.read_text())
    grid, base = doc["grid"], dict(doc.get("run", {}))
    cells = []
    for part in grid["partitions"]:
        settings = dict(part)
        name = settings["partitioner"]
        if "alpha" in settings:
            name += f"-{settings['alpha']:g}"
        frozen = tuple(sorted(settings.items()))
        for seed in grid["seeds"]:
            for fraction in grid["fractions"]:  # the reference: the honest clients alone
                cells.append(Cell(ORACLE_RULE, name, frozen, seed, ABSENT, float(fraction)))
            for rule in grid["rules"]:
                cells.append(Cell(rule, name, frozen, seed, "none", 0.0))
                for attack in grid["attacks"]:
                    for fraction in grid["fractions"]:
                        cells.append(Cell(rule, name, frozen, seed, attack, float(fraction)))
    return cells, base


# --------------------------------------------------------------------------------------------
# One run (in a worker process)


def _init_worker() -> None:
    import logging

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.ERROR)
    from fedchain.learning.training import configure_threads

    configure_threads(1)


def run_cell(cell: Cell, base: Mapping[str, Any], keep: Path | None = None) -> dict[str, Any]:
    """Run one federation and return its CSV row. ``keep``: a folder to make the run
    directory in (as ``keep/run``) and leave there, instead of a temporary one."""
    from clients.client_app import app as client_app
    from fedchain.config import RunConfig, merge_config
    from fedchain.learning.attacks import select_attackers
    from fedchain.ledger.codec import decode
    from fedchain.ledger.objects import Block, Rejection, RewardDeltas, SlashingEvidence
    from fedchain.ledger.store import LEDGER_FILENAME, LedgerStore
    from fedchain.ledger.verify import verify_ledger
    from fedchain.runs.prepare import prepare_run
    from server.federate import run_federation
    from server.inprocess_grid import NODE_BASE, InProcessGrid

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        scratch = (
            str(keep)
            if keep is not None
            else stack.enter_context(tempfile.TemporaryDirectory(prefix="fedchain-robust-"))
        )
        clients = int(base.get("clients", 10))
        count = round(cell.fraction * clients)
        settings: dict[str, Any] = {
            **base,
            **dict(cell.settings),
            "seed": cell.seed,
            "aggregation": cell.rule,
            "ledger": not cell.rule.startswith("flwr-"),
            "run-id": "run",
            "out": scratch,
        }
        if count and cell.attack != ABSENT:
            settings.update(attack=cell.attack, attackers=count)
        config = merge_config(RunConfig(), settings)
        setup = prepare_run(config)
        chosen = select_attackers(clients, count, cell.seed)
        attackers = {setup.public_keys[i] for i in chosen}
        grid = InProcessGrid(client_app, config.clients)
        if cell.attack == ABSENT:
            grid.down = {NODE_BASE + i for i in chosen}
        curve: list[float] = []
        run_federation(
            grid, config, setup.run_dir, lambda r, o, accuracy, s: curve.append(accuracy)
        )
        row: dict[str, Any] = {
            "rule": cell.rule,
            "partition": cell.partition,
            "seed": cell.seed,
            "attack": cell.attack,
            "fraction": f"{cell.fraction:g}",
            "attackers": count,
            "accuracy": f"{curve[-1]:.4f}",
            "curve": " ".join(f"{a:.4f}" for a in curve),
        }
        if config.ledger:
            report = verify_ledger(setup.run_dir)
            if not report.ok or report.state is None:
                raise RuntimeError(f"{cell}: the ledger does not verify: {report.failure}")
            rewards: dict[bytes, int] = defaultdict(int)
            slashed: set[bytes] = set()
            rejected: set[bytes] = set()
            with LedgerStore.open(setup.run_dir / LEDGER_FILENAME, readonly=True) as store:
                for stored in store.iter_blocks():
                    for tx in decode(Block, stored.data).transactions:
                        if isinstance(tx, RewardDeltas):
                            for key, delta in tx.deltas:
                                rewards[key] += max(delta, 0)
                        elif isinstance(tx, SlashingEvidence):
                            slashed.add(tx.offender)
                        elif isinstance(tx, Rejection):
                            rejected.add(tx.public_key)
            paid = sum(rewards.values())
            final = report.state.participants
            total_end = sum(p.stake for p in final.values())
            attackers_end = sum(p.stake for k, p in final.items() if k in attackers)
            row.update(
                reward_share=f"{sum(rewards[k] for k in attackers) / paid:.5f}" if paid else "",
                stake_share_start=f"{len(attackers) / config.clients:.5f}",
                stake_share_end=f"{attackers_end / total_end:.5f}",
                slashed=len(slashed & attackers),
                rejected=len(rejected & attackers),
                ejected=sum(1 for k, p in final.items() if k in attackers and not p.active),
            )
    row["seconds"] = f"{time.perf_counter() - started:.2f}"
    return row


# --------------------------------------------------------------------------------------------
# The grid


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _key(row: Mapping[str, str]) -> tuple[str, str, str, str, str]:
    return (row["rule"], row["partition"], row["seed"], row["attack"], row["fraction"])


def run_grid(cells: Sequence[Cell], base: Mapping[str, Any], csv_path: Path, jobs: int) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    done = {_key(r) for r in read_rows(csv_path)}
    todo = [c for c in cells if c.key not in done]
    print(f"{len(cells)} runs in the grid, {len(cells) - len(todo)} already in {csv_path}")
    if not todo:
        return
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not csv_path.exists()
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with csv_path.open("a", newline="") as f, Progress(*columns) as progress:
        writer = csv.DictWriter(f, FIELDS)
        if new_file:
            writer.writeheader()
        task = progress.add_task("robustness grid", total=len(todo))
        for cell, row in _results(todo, base, jobs):
            writer.writerow(row)
            f.flush()
            progress.update(
                task,
                advance=1,
                description=f"{cell.rule:>17} {cell.partition:>13} {cell.attack:>16} "
                f"{cell.fraction:4.0%} acc {float(row['accuracy']):6.2%}",
            )


def _results(
    cells: Sequence[Cell], base: Mapping[str, Any], jobs: int
) -> Iterator[tuple[Cell, dict[str, Any]]]:
    """Run the cells, ``jobs`` at a time in worker processes (1: in this process), yielding
    each result as it arrives. A failed run stops the grid: it is a bug to look at."""
    if jobs == 1:
        _init_worker()
        for cell in cells:
            yield cell, run_cell(cell, base)
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker) as pool:
        queue = iter(cells)
        running: dict[Future[dict[str, Any]], Cell] = {}

        def submit() -> None:
            cell = next(queue, None)
            if cell is not None:
                running[pool.submit(run_cell, cell, base)] = cell

        for _ in range(jobs * 2):
            submit()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                yield cell, future.result()
                submit()


# --------------------------------------------------------------------------------------------
# Tables and plots


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """Means over seeds of accuracy, drop from the same rule's clean run, reward share."""
    clean = {
        (r["rule"], r["partition"], r["seed"]): float(r["accuracy"])
        for r in rows
        if r["attack"] == "none"
    }
    acc: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    drop: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    share: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    stake: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        key = (r["rule"], r["partition"], r["attack"], r["fraction"])
        a = float(r["accuracy"])
        acc[key].append(a)
        reference = clean.get((r["rule"], r["partition"], r["seed"]))
        if reference is not None:
            drop[key].append(100 * (reference - a))
        if r.get("reward_share"):
            share[key].append(float(r["reward_share"]))
        if r.get("stake_share_end"):
            stake[key].append(float(r["stake_share_end"]))
    return {"acc": acc, "drop": drop, "share": share, "stake": stake}


def _ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    seen = set(values)
    return [v for v in preferred if v in seen] + sorted(seen - set(preferred))


def _reference_drop(s: Mapping[str, Any], partition: str, fraction: str) -> float:
    """Mean drop of the honest-only reference run (0 when the grid has none)."""
    values = s["drop"].get((ORACLE_RULE, partition, ABSENT, fraction), [])
    return statistics.fmean(values) if values else 0.0


def verdicts(rows: Sequence[Mapping[str, str]], rules: Sequence[str]) -> list[dict[str, Any]]:
    """Per rule: clean accuracy, worst mean drop at 30/40 %, worst reward share, pass/fail."""
    s = summarise(rows)
    out = []
    for rule in rules:
        keys = [k for k in s["drop"] if k[0] == rule and k[2] not in ("none", ABSENT)]
        judged = [k for k in keys if float(k[3]) in JUDGED_FRACTIONS]
        if not judged:
            continue
        worst = max(judged, key=lambda k: statistics.fmean(s["drop"][k]))
        worst_drop = statistics.fmean(s["drop"][worst])
        excess = max(
            statistics.fmean(s["drop"][k]) - _reference_drop(s, k[1], k[3]) for k in judged
        )
        shares = [(statistics.fmean(s["share"][k]), k) for k in judged if s["share"].get(k)]
        worst_share = max(shares) if shares else None
        clean = [
            statistics.fmean(v) for k, v in s["acc"].items() if k[0] == rule and k[2] == "none"
        ]
        failing = sorted(
            {
                f"{k[2]} {float(k[3]):.0%} ({k[1]})"
                for k in judged
                if statistics.fmean(s["drop"][k]) > TARGET_DROP
            }
        )
        out.append(
            {
                "rule": rule,
                "clean": statistics.fmean(clean) if clean else math.nan,
                "worst_drop": worst_drop,
                "worst_excess": excess,
                "worst_case": f"{worst[2]} {float(worst[3]):.0%} ({worst[1]})",
                "worst_share": worst_share[0] if worst_share else None,
                "share_case": (
                    f"{worst_share[1][2]} {float(worst_share[1][3]):.0%}" if worst_share else ""
                ),
                "failing": failing,
                "passes": worst_drop <= TARGET_DROP
                and (worst_share is None or worst_share[0] < TARGET_SHARE),
                "ledger": worst_share is not None,
            }
        )
    return out


def _worst_drop_table(
    s: Mapping[str, Any], rules: Sequence[str], partitions: Sequence[str], fractions: Sequence[str]
) -> list[str]:
    """Per rule, the worst mean drop over attacks for each partition and judged fraction, with
    the honest-only reference's drop in the first row, and the attackers' largest reward share."""
    judged = [f for f in fractions if float(f) in JUDGED_FRACTIONS]
    columns = [(p, f) for p in partitions for f in judged]
    lines = [
        "Worst mean accuracy drop over all attacks (points below the same rule's clean run):",
        "",
        "| rule | clean | "
        + " | ".join(f"{p} {float(f):.0%}" for p, f in columns)
        + " | attackers' largest reward share |",
        "|---|---|" + "---|" * (len(columns) + 1),
        "| *honest clients only* | | "
        + " | ".join(f"{_reference_drop(s, p, f):.1f}" for p, f in columns)
        + " | |",
    ]
    for rule in rules:
        clean = [x for k, v in s["acc"].items() if k[0] == rule and k[2] == "none" for x in v]
        cells = []
        for p, f in columns:
            drops = [
                statistics.fmean(v)
                for k, v in s["drop"].items()
                if k[0] == rule and k[1] == p and k[3] == f and k[2] not in ("none", ABSENT)
            ]
            worst = max(drops) if drops else math.nan
            cells.append("" if math.isnan(worst) else f"{worst:.1f}")
        shares = [
            statistics.fmean(v)
            for k, v in s["share"].items()
            if k[0] == rule and float(k[3]) in JUDGED_FRACTIONS and k[2] != ABSENT
        ]
        share = f"{max(shares):.2%}" if shares else "-"
        mean_clean = f"{100 * statistics.fmean(clean):.1f}" if clean else ""
        lines.append(f"| {rule} | {mean_clean} | " + " | ".join(cells) + f" | {share} |")
    return lines


def _axes(
    rows: Sequence[Mapping[str, str]], grid_path: Path
) -> tuple[dict[str, Any], list[str], list[str], list[str], list[str]]:
    """(grid file, rules, attacks, partitions, fractions) present in ``rows``, in grid order."""
    doc = tomllib.loads(grid_path.read_text())
    rules = _ordered((r["rule"] for r in rows), doc["grid"]["rules"])
    attacks = _ordered(
        (r["attack"] for r in rows if r["attack"] not in ("none", ABSENT)), doc["grid"]["attacks"]
    )
    partitions = _ordered((r["partition"] for r in rows), [])
    fractions = sorted({r["fraction"] for r in rows}, key=float)
    return doc, rules, attacks, partitions, fractions


def write_markdown(
    rows: Sequence[Mapping[str, str]], grid_path: Path, out: Path, command: str
) -> str:
    doc, rules, attacks, partitions, fractions = _axes(rows, grid_path)
    seeds = sorted({r["seed"] for r in rows}, key=int)
    s = summarise(rows)
    lines = [
        "# Robustness: accuracy and rewards under attack, by aggregation rule",
        "",
        f"Produced by `{command}` on {platform.machine()} with {os.cpu_count()} cores; "
        f"{len(rows)} runs, seeds {', '.join(seeds)}. Settings shared by every run: "
        + ", ".join(f"{k} = {v}" for k, v in doc.get("run", {}).items())
        + ". Attackers are chosen by seed among the clients; the clean run is the same rule, "
        "partition and seed with no attacker. `flwr-*` are Flower's own strategies (ledger off, "
        "no rewards); the others are fedchain's stake-weighted rules with the ledger on.",
        "",
        *([str(doc["provenance"]["note"]), ""] if doc.get("provenance", {}).get("note") else []),
        f"## Verdict per rule (target: mean drop <= {TARGET_DROP:g} points at 30 % and 40 % "
        f"for every attack and partition; attackers' reward share < {TARGET_SHARE:.0%})",
        "",
        "The reference is the same federation with the would-be attackers absent (Flower's "
        "FedAvg over the honest clients alone): their data is gone, so its drop is the least "
        "any rule can have. *Beyond reference* is a rule's drop minus that one, worst case.",
        "",
        "| rule | clean accuracy | worst mean drop (points) | worst case | beyond reference "
        "| failing cases | attackers' largest reward share | passes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts(rows, rules):
        share = (
            f"{v['worst_share']:.2%} ({v['share_case']})" if v["worst_share"] is not None else "-"
        )
        failing = ", ".join(v["failing"]) if v["failing"] else "none"
        lines.append(
            f"| {v['rule']} | {v['clean']:.2%} | {v['worst_drop']:.1f} | {v['worst_case']} "
            f"| {v['worst_excess']:.1f} | {failing} | {share} | {'yes' if v['passes'] else 'no'} |"
        )
    lines += ["", *_worst_drop_table(s, rules, partitions, fractions)]
    lines += [
        "",
        "Reference drop (honest clients only), mean points below the clean FedAvg run: "
        + "; ".join(
            f"{p} {float(f):.0%}: {_reference_drop(s, p, f):.1f}"
            for p in partitions
            for f in fractions
            if (ORACLE_RULE, p, ABSENT, f) in s["drop"]
        )
        + ".",
    ]
    for partition in partitions:
        lines += ["", f"## Final accuracy, {partition} (mean ± sd over seeds, %)", ""]
        for attack in attacks:
            lines += [
                f"**{attack}**",
                "",
                "| rule | " + " | ".join(f"{float(f):.0%}" for f in fractions) + " |",
                "|---|" + "---|" * len(fractions),
            ]
            for rule in rules:
                cells = []
                for fraction in fractions:
                    key = (rule, partition, "none" if float(fraction) == 0 else attack, fraction)
                    mean, sd = _mean_sd(s["acc"].get(key, []))
                    cells.append("" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * sd:.1f}")
                lines.append(f"| {rule} | " + " | ".join(cells) + " |")
            reference = []
            for fraction in fractions:
                mean, sd = _mean_sd(s["acc"].get((ORACLE_RULE, partition, ABSENT, fraction), []))
                if float(fraction) == 0:
                    mean, sd = _mean_sd(s["acc"].get((ORACLE_RULE, partition, "none", "0"), []))
                reference.append("" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * sd:.1f}")
            if any(reference[1:]):
                lines.append("| *honest clients only* | " + " | ".join(reference) + " |")
            lines.append("")
    lines += [
        "## Attackers' share of rewards and of stake at the end (ledger rules, mean over "
        "partitions and seeds)",
        "",
        "Reward share: attackers' rewards / all rewards paid. Stake share: attackers' stake / "
        "all stake after the last round (it starts at the attacker fraction).",
        "",
    ]
    judged = [f for f in fractions if float(f) in JUDGED_FRACTIONS]
    header = " | ".join(f"{a} {float(f):.0%}" for a in attacks for f in judged)
    lines += [f"| rule | measure | {header} |", "|---|---|" + "---|" * (len(attacks) * len(judged))]
    for rule in rules:
        for measure, name in (("share", "reward share"), ("stake", "stake share")):
            values = []
            for attack in attacks:
                for fraction in judged:
                    pooled = [
                        x
                        for p in partitions
                        for x in s[measure].get((rule, p, attack, fraction), [])
                    ]
                    values.append(f"{statistics.fmean(pooled):.2%}" if pooled else "-")
            if any(v != "-" for v in values):
                lines.append(f"| {rule} | {name} | " + " | ".join(values) + " |")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def write_plots(rows: Sequence[Mapping[str, str]], grid_path: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, rules, attacks, partitions, fractions = _axes(rows, grid_path)
    s = summarise(rows)
    written = []
    for partition in partitions:
        columns = 4
        lines = math.ceil(len(attacks) / columns)
        fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3.4 * lines), squeeze=False)
        for ax, attack in zip(axes.flat, attacks, strict=False):
            for i, rule in enumerate(rules):
                xs, ys, es = [], [], []
                for fraction in fractions:
                    key = (rule, partition, "none" if float(fraction) == 0 else attack, fraction)
                    mean, sd = _mean_sd(s["acc"].get(key, []))
                    if not math.isnan(mean):
                        xs.append(100 * float(fraction))
                        ys.append(100 * mean)
                        es.append(100 * sd)
                style = "--" if rule.startswith("flwr-") else "-"
                ax.errorbar(
                    xs,
                    ys,
                    yerr=es,
                    label=rule,
                    linestyle=style,
                    marker="o",
                    ms=3,
                    capsize=2,
                    color=plt.get_cmap("tab10")(i % 10),
                )
            xs, ys = [], []
            for fraction in fractions:
                attack_key = "none" if float(fraction) == 0 else ABSENT
                values = s["acc"].get((ORACLE_RULE, partition, attack_key, fraction), [])
                if values:
                    xs.append(100 * float(fraction))
                    ys.append(100 * statistics.fmean(values))
            if len(xs) > 1:
                ax.plot(xs, ys, "k:", label="honest clients only")
            ax.set_title(attack)
            ax.set_xlabel("attackers (%)")
            ax.set_ylabel("final accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(attacks) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(rules), 5), fontsize=8)
        fig.suptitle(f"Final accuracy by attacker fraction, {partition} (mean ± sd over seeds)")
        fig.tight_layout(rect=(0, 0.07, 1, 0.96))
        path = out_dir / f"robustness_{partition}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    ledger_rules = [r for r in rules if any(k[0] == r for k in s["share"])]
    if ledger_rules:
        fig, ax = plt.subplots(figsize=(12, 3.8))
        width = 0.8 / len(ledger_rules)
        for i, rule in enumerate(ledger_rules):
            heights = []
            for attack in attacks:
                pooled = [
                    x
                    for p in partitions
                    for f in fractions
                    if float(f) in JUDGED_FRACTIONS
                    for x in s["share"].get((rule, p, attack, f), [])
                ]
                heights.append(100 * statistics.fmean(pooled) if pooled else 0.0)
            ax.bar([j + i * width for j in range(len(attacks))], heights, width, label=rule)
        ax.axhline(100 * TARGET_SHARE, color="red", linestyle=":", label="1 % target")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(attacks))], attacks, fontsize=8)
        ax.set_ylabel("attackers' share of rewards (%)")
        ax.set_title("Attackers' share of rewards at 30 % and 40 % attackers (mean)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "robustness_rewards.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="grid TOML")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--only-report", action="store_true", help="tables/plots from the CSV")
    parser.add_argument("--name", default="robustness", help="file name stem of the results")
    args = parser.parse_args(argv)
    cells, base = load_grid(args.config)
    csv_path = args.out / f"{args.name}_runs.csv"
    if not args.only_report:
        run_grid(cells, base, csv_path, max(1, args.jobs))
    rows = read_rows(csv_path)
    wanted = {c.key for c in cells}
    rows = [
        r
        for r in rows
        if (r["rule"], r["partition"], r["seed"], r["attack"], r["fraction"]) in wanted
    ]
    command = "python experiments/robustness.py " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--only-report"
    )
    text = write_markdown(rows, args.config, args.out / f"{args.name}.md", command.strip())
    plots = write_plots(rows, args.config, args.out)
    print(text.split("\n## Final accuracy")[0])
    print("wrote", args.out / f"{args.name}.md", *plots)


if __name__ == "__main__":
    main()
