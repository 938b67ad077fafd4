"""Experiment: fine-tuning a pretrained base federatedly, in each mode, vs. training from scratch.

Issue 14, deliverable 7. A base is pretrained centrally on Fashion-MNIST classes 0-4 (Debian's
``dataset-fashion-mnist``, the ``fashion-mnist`` source), saved as a safetensors base file; the
federation then learns classes 5-9 (relabelled 0-4, written to an ``.npz`` file: the ``npz``
source) across 10 IID clients, once per mode, each a real ``fedchain simulate`` run started as a
user would start it (a subprocess), with the same seed, rounds and data:

* ``scratch``: ``--finetune full`` and no base (the model starts from its random initialisation);
* ``full``, ``head``, ``lora``: ``--base-weights`` the pretrained base, with that fine-tuning mode.

Every other setting is ``fedchain simulate``'s default (rule ``screened``, ``mc-shapley`` scores,
2 local epochs, batch 16, learning rate 0.05). For each run and round it records:

* the central test accuracy (the run's ``metrics.json``);
* the bytes one client's update carries: the trainable tensors the genesis lists (float32), as
  the run's initial model file holds them; the message adds framing, signature and ledger view;
* the seconds of the three ledger-side computations that scale with the model, measured by
  re-running them after the run on the archived updates (``updates/``), as ``fedchain verify
  --scores`` does (:mod:`fedchain.rounds.recheck`), one round at a time: hashing every accepted
  update (what the coordinator does at admission; each client hashes its own once), the
  aggregation rule's arithmetic (``screened``: its norm screen and the weighted average, without
  the validation evaluations it asks for), and contribution scoring (every validation-loss
  evaluation of the round: the ones ``screened`` asks for to select, then the contribution
  scores; with ``screened`` these are one and the same). The runs record only each round's
  total seconds, so re-running them is what separates the three; the numbers are for this
  machine, after the fact, one process, one thread (as the coordinator), the fastest of a few
  repeats (on a busy shared machine single timings vary by 2x and more).

Sized for 2 shared CPU cores with the built-in ``cnn`` (defaults: a 10,000-example base, 3,000
training and 2,000 test examples for the federation, 5 rounds; 9-10 minutes on a busy machine,
most of it contribution scoring). ``--model mobilenet_v3_small`` (or another torchvision
architecture) runs the same experiment with a backbone worth freezing, for a bigger machine.
Also prints, for reference, the update size in each mode of some torchvision architectures
(built, not trained), where the backbone dominates and ``head``/``lora`` shrink the update most.

    python experiments/finetune.py [--out experiments/results] [--work runs/finetune]
        [--rounds 5] [--train 3000] [--test 2000] [--pretrain 10000] [--model cnn]

Writes ``finetune_runs.csv`` (one row per mode and round; a rerun skips the modes already
there, and reuses the base and data files in ``--work`` when their settings match),
``finetune.md`` and ``finetune.png`` under ``--out``, and prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedchain.aggregation.rules import AggregationResult
from fedchain.aggregation.screened import StepTester
from fedchain.aggregation.weights import make_rule_params
from fedchain.config import RunConfig, load_config_file
from fedchain.crypto.hashing import compute_update_hash
from fedchain.data.sources import ArrayDataset, load_source
from fedchain.errors import ConfigError
from fedchain.learning.architectures import build_model, state_to_numpy
from fedchain.learning.base import save_base
from fedchain.learning.training import TrainConfig, configure_threads, evaluate, train_local
from fedchain.ledger.verify import RoundRecord, verify_ledger
from fedchain.rounds.recheck import compute_aggregated_model, make_scorer
from fedchain.rounds.scores import bind_step_tester, compute_aggregation, compute_raw_scores
from fedchain.runs.archive import UpdateArchive
from fedchain.runs.layout import CONFIG_FILENAME, METRICS_FILENAME
from fedchain.runs.registry import load_model

MODES = ("scratch", "full", "head", "lora")
BASE_CLASSES = (0, 1, 2, 3, 4)  # the base learns these; the federation the other five
FEDERATED_CLASSES = (5, 6, 7, 8, 9)
SIZE_MODELS = ("mobilenet_v3_small", "resnet18")
REPEATS = 5  # hashing and aggregation are timed this many times, the fastest kept
SCORING_REPEATS = 2  # and scoring this many (the first is slower: warm-up, the run's exit)
FIELDS = [
    "mode",
    "round",
    "accuracy",
    "loss",
    "accepted",
    "round_seconds",
    "update_bytes",
    "trainable_params",
    "hash_seconds",
    "aggregate_seconds",
    "score_seconds",
    "run_seconds",
]
Arrays = dict[str, np.ndarray]
Scorer = Callable[[Arrays, list[Arrays], list[float], int], np.ndarray]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument(
        "--work", type=Path, default=Path("runs/finetune"), help="base, npz and run directories"
    )
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--train", type=int, default=3000, help="federated training examples")
    parser.add_argument("--test", type=int, default=2000, help="federated test examples")
    parser.add_argument("--pretrain", type=int, default=10000, help="base training examples")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timing-rounds",
        type=int,
        default=1,
        help="re-run hashing, aggregation and scoring on this many last rounds of each run",
    )
    parser.add_argument("--size-models", nargs="*", default=list(SIZE_MODELS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    started = time.perf_counter()
    # one thread, as the coordinator (server/simulation.py): scoring's many small forward
    # passes with one thread per core spin-wait against everything else on the cores
    configure_threads(1)

    base_path, base_info = make_base(args, work)
    npz_path = make_federated_data(args, work)
    csv_path = args.out / "finetune_runs.csv"
    done = set()
    if csv_path.exists():
        with csv_path.open() as f:
            done = {row["mode"] for row in csv.DictReader(f)}
    for mode in args.modes:
        if mode in done:
            continue
        run_dir, seconds = run_mode(args, work, mode, npz_path, base_path)
        rows = measure_run(run_dir, mode, seconds, args.timing_rounds)
        for row in rows:
            _append(csv_path, row)
        final = rows[-1]
        print(
            f"{mode}: {seconds:.0f} s, final accuracy {float(final['accuracy']):.1%}, "
            f"{int(final['update_bytes']):,} bytes per update",
            flush=True,
        )
    sizes = [size_row(name, args.lora_rank) for name in args.size_models]
    markdown = write_markdown(csv_path, args, base_info, sizes)
    (args.out / "finetune.md").write_text(markdown)
    write_plot(csv_path, args.out / "finetune.png")
    print(markdown)
    print(f"wall time: {time.perf_counter() - started:.0f} s")


# --- the base -----------------------------------------------------------------------------------


def _pick(ds: ArrayDataset, classes: Sequence[int], count: int, seed: int) -> ArrayDataset:
    """``count`` examples (at most all) of ``classes``, drawn with ``seed``, labels relabelled
    to ``0 .. len(classes) - 1`` in ``classes``' order."""
    where = np.flatnonzero(np.isin(ds.y, classes))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(where, size=min(count, where.size), replace=False))
    relabel = np.full(int(ds.y.max()) + 1, -1, dtype=np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    names = tuple(ds.classes[c] for c in classes)
    return ArrayDataset(ds.name, ds.x[chosen], relabel[ds.y[chosen]], names, ds.value_max)


def make_base(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    """Pretrain the base centrally on classes 0-4 (or reuse the one ``work`` holds for the same
    settings); its file and what it scored."""
    settings = {
        "model": args.model,
        "pretrain": args.pretrain,
        "epochs": args.pretrain_epochs,
        "seed": args.seed,
    }
    path, info_path = work / "base.safetensors", work / "base.json"
    if path.exists() and info_path.exists():
        info: dict[str, Any] = json.loads(info_path.read_text())
        if info.get("settings") == settings:
            return path, info
    train = _pick(load_source("fashion-mnist", split="train"), BASE_CLASSES, args.pretrain, 1)
    test = _pick(load_source("fashion-mnist", split="test"), BASE_CLASSES, 10**9, 2)
    shape = tuple(train.x.shape[1:])
    model = build_model(args.model, shape, len(BASE_CLASSES), seed=args.seed)
    t0 = time.perf_counter()
    config = TrainConfig(epochs=args.pretrain_epochs, seed=args.seed)
    result = train_local(model, train, config)
    seconds = time.perf_counter() - t0
    accuracy = evaluate(model, test).accuracy
    base_hash = save_base(model, path)
    info = {
        "settings": settings,
        "hash": base_hash.hex(),
        "examples": len(train),
        "test_examples": len(test),
        "accuracy": accuracy,
        "loss": result.loss,
        "seconds": round(seconds, 1),
    }
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    print(
        f"base: {args.model} on classes 0-4, {len(train)} examples, {args.pretrain_epochs} "
        f"epochs, {seconds:.0f} s: test accuracy {accuracy:.1%} (hash {base_hash.hex()[:16]})",
        flush=True,
    )
    return path, info


def make_federated_data(args: argparse.Namespace, work: Path) -> Path:
    """An ``.npz`` of classes 5-9 relabelled 0-4: ``x``/``y`` (training, split among the
    clients) and ``x_test``/``y_test``; pixels as float32 in [0, 1] (the npz source does not
    scale), as the base saw them."""
    path = work / f"fashion-5-9-{args.train}-{args.test}-s{args.seed}.npz"
    if path.exists():
        return path
    train = _pick(load_source("fashion-mnist", split="train"), FEDERATED_CLASSES, args.train, 3)
    test = _pick(load_source("fashion-mnist", split="test"), FEDERATED_CLASSES, args.test, 4)
    scale = float(train.value_max or 1.0)
    partial = path.with_suffix(".part.npz")
    np.savez(
        partial,
        x=(train.x / scale).astype(np.float32),
        y=train.y,
        x_test=(test.x / scale).astype(np.float32),
        y_test=test.y,
    )
    partial.rename(path)
    return path


# --- the federated runs ---------------------------------------------------------------------------


def run_mode(
    args: argparse.Namespace, work: Path, mode: str, npz: Path, base: Path
) -> tuple[Path, float]:
    """One ``fedchain simulate`` run in ``mode`` (a fresh run directory); (its path, seconds)."""
    runs = work / "runs"
    run_dir = runs / mode
    if run_dir.exists():  # a run this script did not finish measuring: start it again
        shutil.rmtree(run_dir)
    command = [
        sys.executable, "-m", "fedchain", "simulate",
        "--dataset", "npz", "--data-root", str(npz),
        "--clients", str(args.clients), "--rounds", str(args.rounds),
        "--model", args.model, "--seed", str(args.seed),
        "--out", str(runs), "--run-id", mode,
    ]  # fmt: skip
    if mode == "scratch":
        command += ["--finetune", "full"]
    else:
        command += [
            "--finetune", mode,
            "--base-weights", str(base),
            "--base-source", "experiments/finetune.py: Fashion-MNIST classes 0-4, centrally",
            "--base-licence", "MIT (Fashion-MNIST: MIT)",
        ]  # fmt: skip
        if mode == "lora":
            command += ["--lora-rank", str(args.lora_rank)]
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    print(f"{mode}: {' '.join(command[1:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=repo, stdout=subprocess.DEVNULL)
    return run_dir, time.perf_counter() - t0


class TimedScorer:
    """A scorer that adds up the seconds spent in it and keeps what it returned; while
    ``replay`` holds results, it returns those instead (in order), evaluating nothing."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer, self.seconds = scorer, 0.0
        self.results: list[np.ndarray] = []
        self.replay: list[np.ndarray] | None = None

    def __call__(
        self, base: Arrays, updates: list[Arrays], weights: list[float], round_: int
    ) -> np.ndarray:
        if self.replay is not None:
            return self.replay.pop(0)
        t0 = time.perf_counter()
        try:
            result = self.scorer(base, updates, weights, round_)
        finally:
            self.seconds += time.perf_counter() - t0
        self.results.append(result)
        return result

    def step_tester(self, base: Arrays) -> StepTester:
        """The scorer's step tester (``screened``'s paired step test), timed and replayed the
        same way."""
        inner = bind_step_tester(self.scorer, base)

        def test(step: Mapping[str, np.ndarray]) -> np.ndarray:
            if self.replay is not None:
                return self.replay.pop(0)
            if inner is None:
                raise ConfigError("the scorer measures no per-example losses")
            t0 = time.perf_counter()
            try:
                result = np.asarray(inner(step))
            finally:
                self.seconds += time.perf_counter() - t0
            self.results.append(result)
            return result

        return test


def measure_run(
    run_dir: Path, mode: str, run_seconds: float, timing_rounds: int
) -> list[dict[str, Any]]:
    """The run's rows: accuracy and seconds from ``metrics.json``, the update's size from the
    initial model, and hashing, aggregation and scoring re-run on the archived updates of the
    last ``timing_rounds`` rounds (other rows leave them empty)."""
    history = json.loads((run_dir / METRICS_FILENAME).read_text())["rounds"]
    report = verify_ledger(run_dir)
    if not report.ok or report.state is None:
        raise SystemExit(f"{run_dir}: the ledger does not verify: {report.failure}")
    config = load_config_file(run_dir / CONFIG_FILENAME)
    record = report.state.genesis.rules.model
    initial = load_model(run_dir, report.initial_model_hash)
    update_bytes = sum(int(a.nbytes) for a in initial.values())
    params = sum(int(a.size) for a in initial.values())
    order = tuple(record.trainable) or tuple(initial)
    scorer = make_scorer(config, report)
    timed = None if scorer is None else TimedScorer(scorer)
    if scorer is not None:  # warm-up, untimed: torch's first forward passes
        scorer(initial, [{n: np.zeros_like(a) for n, a in initial.items()}], [1.0], 0)
    compute_update_hash(initial)
    timings = {
        rec.model_version.round: time_round(run_dir, rec, config, order, timed)
        for rec in report.round_records[-timing_rounds:] if timing_rounds > 0
    }  # fmt: skip
    rows = []
    for row in history:
        round_ = int(row["round"])
        timing = timings.get(round_)
        rows.append(
            {
                "mode": mode,
                "round": round_,
                "accuracy": row["accuracy"],
                "loss": row["loss"],
                "accepted": row["accepted"],
                "round_seconds": row["seconds"],
                "update_bytes": update_bytes,
                "trainable_params": params,
                "hash_seconds": "" if timing is None else f"{timing[0]:.6f}",
                "aggregate_seconds": "" if timing is None else f"{timing[1]:.6f}",
                "score_seconds": "" if timing is None else f"{timing[2]:.6f}",
                "run_seconds": f"{run_seconds:.1f}",
            }
        )
    return rows


def time_round(
    run_dir: Path,
    rec: RoundRecord,
    config: RunConfig,
    order: tuple[str, ...],
    timed: TimedScorer | None,
) -> tuple[float, float, float]:
    """Seconds of one round's hashing (every accepted update), aggregation (without the
    scorer's evaluations) and scoring (every evaluation), re-run on its archived updates as
    ``fedchain verify --scores`` does (:mod:`fedchain.rounds.recheck`)."""
    version = rec.model_version
    parent = load_model(run_dir, version.parent_hash)
    base = {n: parent[n] for n in order}  # the model's order, as the coordinator holds it
    loaded = UpdateArchive(run_dir).load_many([c.update_hash for c in rec.commitments])
    updates = [{n: u[n] for n in order} for u in loaded]
    hashing = min(_timed(lambda: [compute_update_hash(u) for u in updates]) for _ in range(REPEATS))
    keys = [c.public_key for c in rec.commitments]

    def aggregate() -> AggregationResult:
        result = compute_aggregation(
            version.rule,
            make_rule_params(config),
            base,
            updates,
            examples=[c.num_examples for c in rec.commitments],
            stakes=[rec.participants[k].stake for k in keys],
            reputations=[rec.participants[k].reputation_bps for k in keys],
            scorer=timed,
            round_=version.round,
        )
        compute_aggregated_model(base, result)  # the new model, as the coordinator makes it
        return result

    scoring = []
    for _ in range(SCORING_REPEATS):  # the scorer's evaluations (the rule's included) timed
        scored_before = _seconds(timed)
        if timed is not None:
            timed.results = []
        result = aggregate()
        compute_raw_scores(result, base, updates, timed, version.round)
        scoring.append(_seconds(timed) - scored_before)
    aggregating = []
    for _ in range(REPEATS):  # the rule's arithmetic alone: its scores replayed
        if timed is not None:
            timed.replay = list(timed.results)
        aggregating.append(_timed(aggregate))
    if timed is not None:
        timed.replay = None
    return hashing, min(aggregating), min(scoring)


def _seconds(timed: TimedScorer | None) -> float:
    return 0.0 if timed is None else timed.seconds


def _timed(work: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


def size_row(name: str, rank: int) -> dict[str, Any]:
    """Trainable parameters of torchvision architecture ``name`` (28x28 grey input, 5 classes)
    in each mode, its own fresh weights standing in for a base (built only; nothing trained)."""
    import torch

    shape, classes = (1, 28, 28), len(FEDERATED_CLASSES)
    fresh = build_model(name, shape, classes, seed=0)
    base = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
    row: dict[str, Any] = {"model": name}
    for mode in ("full", "head", "lora"):
        with torch.no_grad():
            model = build_model(
                name, shape, classes, seed=0, finetune=mode,
                lora_rank=rank if mode == "lora" else 0, base=base,
            )  # fmt: skip
        row[mode] = sum(a.size for a in state_to_numpy(model).values())
    return row


# --- output ---------------------------------------------------------------------------------------


def _append(csv_path: Path, row: dict[str, Any]) -> None:
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _read(csv_path: Path) -> dict[str, list[dict[str, str]]]:
    by_mode: dict[str, list[dict[str, str]]] = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            by_mode.setdefault(row["mode"], []).append(row)
    return {mode: by_mode[mode] for mode in MODES if mode in by_mode}


def write_markdown(
    csv_path: Path,
    args: argparse.Namespace,
    base: dict[str, Any],
    sizes: list[dict[str, Any]],
) -> str:
    by_mode = _read(csv_path)
    rounds = max(int(r["round"]) for rows in by_mode.values() for r in rows)
    lines = [
        "# Fine-tuning a pretrained base (experiments/finetune.py)",
        "",
        f"Base: `{args.model}` pretrained centrally on Fashion-MNIST classes 0-4 "
        f"({base['examples']:,} examples, {args.pretrain_epochs} epochs: "
        f"{base['accuracy']:.1%} on their {base['test_examples']:,} test images). "
        f"Federation: classes 5-9 (relabelled 0-4), {args.train:,} training examples across "
        f"{args.clients} IID clients, {args.test:,} test examples, `fedchain simulate`'s "
        "defaults otherwise (rule screened, mc-shapley scores, 2 local epochs). "
        "scratch = `--finetune full` without a base; lora rank "
        f"{args.lora_rank}. Round 0 is the initial model.",
        "",
        "| mode | " + " | ".join(f"round {r}" for r in range(rounds + 1)) + " |",
        "|---|" + "---:|" * (rounds + 1),
    ]
    for mode, rows in by_mode.items():
        accuracy = {int(r["round"]): float(r["accuracy"]) for r in rows}
        cells = [f"{accuracy[r]:.1%}" if r in accuracy else "-" for r in range(rounds + 1)]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per round (round: its wall time in the run, mean over rounds 1..R; hashing: all the "
        "round's accepted updates; aggregation: the rule's arithmetic; scoring: every "
        "validation-loss evaluation of the round, the screen's included; these three re-run "
        f"after the run on the archived updates of the last {args.timing_rounds} rounds, one "
        f"thread, the fastest of {REPEATS} (scoring: {SCORING_REPEATS}) repeats):",
        "",
        "| mode | trainable parameters | bytes per client per round | hashing (ms) | "
        "aggregation (ms) | scoring (s) | round (s) | run wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, rows in by_mode.items():
        later = [r for r in rows if int(r["round"]) > 0]

        def mean(key: str, rows: list[dict[str, str]] = later) -> float:
            values = [float(r[key]) for r in rows if r[key]]
            return sum(values) / max(1, len(values))

        first = rows[0]
        lines.append(
            f"| {mode} | {int(first['trainable_params']):,} | {int(first['update_bytes']):,} | "
            f"{mean('hash_seconds') * 1e3:.2f} | {mean('aggregate_seconds') * 1e3:.2f} | "
            f"{mean('score_seconds'):.2f} | {mean('round_seconds'):.1f} | "
            f"{float(first['run_seconds']):.0f} |"
        )
    if sizes:
        lines += [
            "",
            "For reference, the trainable parameters (x 4 bytes per update) of torchvision "
            "architectures in each mode (built for 28x28 grey input and 5 classes, not trained): "
            f"where the backbone dominates, head and lora (rank {args.lora_rank}) shrink the "
            "update most.",
            "",
            "| model | full | head | lora |",
            "|---|---:|---:|---:|",
        ]
        for row in sizes:
            lines.append(
                f"| {row['model']} | {row['full']:,} | {row['head']:,} "
                f"({row['head'] / row['full']:.1%}) | {row['lora']:,} "
                f"({row['lora'] / row['full']:.1%}) |"
            )
    return "\n".join(lines) + "\n"


def write_plot(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_mode = _read(csv_path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, rows in by_mode.items():
        left.plot(
            [int(r["round"]) for r in rows],
            [float(r["accuracy"]) for r in rows],
            marker="o",
            label=mode,
        )
    left.set_xlabel("round")
    left.set_ylabel("test accuracy (classes 5-9)")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend()
    modes = list(by_mode)
    right.bar(modes, [int(by_mode[m][0]["update_bytes"]) / 1024 for m in modes])
    right.set_ylabel("KiB per client per round")
    right.set_title("update size")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
