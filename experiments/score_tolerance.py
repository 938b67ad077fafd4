"""How far recomputed contribution scores move when float reductions run in another order.

``fedchain verify --scores`` recomputes every round's scores from the archived updates and
compares them with the ledger's within a tolerance (:mod:`fedchain.rounds.recheck`). This
experiment sets that tolerance from a measurement. We have no second machine, so each
configuration below changes, in a fresh process, what a different machine would change: the
number of torch threads (how reductions are split), ATen's vector kernels (AVX2 or scalar),
the instruction sets oneDNN and MKL may use (their GEMM/convolution blocking), and oneDNN itself
(off: torch's own convolution). Each recomputes the raw (unquantised) scores of every round of
a run with the code ``verify --scores`` runs (:func:`fedchain.rounds.recheck.iter_round_scores`).

Reported per round: the largest absolute difference of a raw score from the run's recorded score
(and between configurations), and the same relative to the round's largest |score|; then the
tolerance (:func:`fedchain.rounds.recheck.compute_score_tolerances`: its relative term follows
the round's largest positive score, never a negative one) and the largest reward movement a
nudge inside it can buy (every other score moved against the target by the full tolerance, the
target's for it), next to what the old fixed 0.005 allowed. Takes about 12 minutes on 2 cores
(five fresh processes, each recomputing every round).

    python experiments/score_tolerance.py RUN_DIR [--out experiments/results]

RUN_DIR is a finished run (the default: ``fedchain simulate --out /tmp/w2 --run-id demo``).
Writes ``score_tolerance.json`` (every raw score) and ``score_tolerance.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CONFIGS: dict[str, dict[str, str]] = {
    "threads-2": {"FC_THREADS": "2"},
    "threads-1": {"FC_THREADS": "1"},
    "threads-1-aten-scalar": {"FC_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
    "threads-2-sse41": {
        "FC_THREADS": "2",
        "DNNL_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "MKL_CBWR": "COMPATIBLE",
    },
    "threads-1-no-onednn": {"FC_THREADS": "1", "FC_MKLDNN": "0"},
}
"""Name -> environment of the worker process (FC_*: read by the worker itself)."""

OLD_TOLERANCE = 0.005  # score units: the fixed tolerance before issue 12


def worker(run_dir: Path) -> None:
    """Print ``{round: [raw scores in commitment order]}`` for this process's configuration."""
    import torch

    torch.set_num_threads(int(os.environ["FC_THREADS"]))
    if os.environ.get("FC_MKLDNN") == "0":
        torch.backends.mkldnn.enabled = False
    from fedchain.config import load_config_file
    from fedchain.ledger.verify import verify_ledger
    from fedchain.rounds.recheck import iter_round_scores, make_scorer
    from fedchain.runs.layout import CONFIG_FILENAME

    config = load_config_file(run_dir / CONFIG_FILENAME)
    report = verify_ledger(run_dir)
    if not report.ok:
        raise SystemExit(f"{run_dir}: the ledger does not verify: {report.failure}")
    started = time.perf_counter()
    rounds = {}
    for scores in iter_round_scores(run_dir, report, config, make_scorer(config)):
        if scores.problem:
            raise SystemExit(scores.problem)
        rounds[scores.round] = {k.hex(): x for k, x in zip(scores.keys, scores.raw, strict=True)}
    seconds = time.perf_counter() - started
    info = {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}
    print(json.dumps({"rounds": rounds, "seconds": seconds, "info": info}))


def recorded_scores(run_dir: Path) -> dict[int, dict[str, float]]:
    from fedchain.ledger.objects import SCORE_SCALE
    from fedchain.ledger.verify import verify_ledger

    report = verify_ledger(run_dir)
    return {
        r.model_version.round: {k.hex(): v / SCORE_SCALE for k, v in r.contribution.scores}
        for r in report.round_records
        if r.contribution is not None
    }


def reward_movement(
    scores: dict[str, float], tolerances: dict[str, float], pool: int
) -> tuple[int, int]:
    """(largest gain, largest loss) of one client's reward, in pool units, over nudges of each
    score by at most its tolerance: the target's score up (down), every other one down (up)."""
    from fedchain.ledger.objects import SCORE_SCALE
    from fedchain.rounds.rewards import compute_reward_split

    def split(values: dict[str, float]) -> dict[str, int]:
        shares = [(bytes.fromhex(k), round(v * SCORE_SCALE)) for k, v in values.items()]
        return {k.hex(): a for k, a in compute_reward_split(pool, sorted(shares))}

    honest = split(scores)
    gain = loss = 0
    for target in scores:
        sign = {k: 1 if k == target else -1 for k in scores}
        up = split({k: v + sign[k] * tolerances[k] for k, v in scores.items()})
        down = split({k: v - sign[k] * tolerances[k] for k, v in scores.items()})
        gain = max(gain, up.get(target, 0) - honest.get(target, 0))
        loss = max(loss, honest.get(target, 0) - down.get(target, 0))
    return gain, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--analyse", action="store_true", help="re-read OUT/score_tolerance.json, recompute nothing"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.run_dir)
        return
    from fedchain.config import load_config_file
    from fedchain.ledger.objects import SCORE_SCALE
    from fedchain.rounds.recheck import (
        SCORE_TOLERANCE_QUANTA,
        SCORE_TOLERANCE_RELATIVE,
        compute_score_tolerances,
    )
    from fedchain.runs.layout import CONFIG_FILENAME

    results = {}
    if args.analyse:
        results = json.loads((args.out / "score_tolerance.json").read_text())["configs"]
    for name, env in CONFIGS.items():
        if name in results:
            continue
        cmd = [sys.executable, __file__, str(args.run_dir), "--worker"]
        done = subprocess.run(
            cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise SystemExit(f"{name}: {done.stderr[-2000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]['seconds']:.0f} s {results[name]['info']}", flush=True)
    recorded = recorded_scores(args.run_dir)
    pool = load_config_file(args.run_dir / CONFIG_FILENAME).reward_per_round
    rows = []
    for round_, scores in sorted(recorded.items()):
        runs = [
            {k: float(v) for k, v in r["rounds"][str(round_)].items()} for r in results.values()
        ]
        inter = max(abs(a[k] - b[k]) for a in runs for b in runs for k in scores)
        scale = max(abs(v) for v in scores.values())
        top = max((v for v in scores.values() if v > 0), default=0.0)  # sets the tolerance
        quanta = max(abs(round(r[k] * SCORE_SCALE) - round(scores[k] * SCORE_SCALE))
                     for r in runs for k in scores)  # fmt: skip
        zeros = {sum(v == 0.0 for v in r.values()) for r in runs}
        tolerances = compute_score_tolerances({bytes.fromhex(k): v for k, v in runs[0].items()})
        by_hex = {k.hex(): t for k, t in tolerances.items()}
        new_gain, new_loss = reward_movement(scores, by_hex, pool)
        old_gain, old_loss = reward_movement(scores, dict.fromkeys(scores, OLD_TOLERANCE), pool)
        positive = sum(v for v in scores.values() if v > 0)
        rows.append(
            (round_, positive, scale, inter, inter / scale if scale else 0.0, quanta,
             "/".join(map(str, sorted(zeros))), max(by_hex.values()), new_gain, new_loss,
             old_gain, old_loss, top)
        )  # fmt: skip
    worst_abs = max(r[3] for r in rows)
    worst_rel = max(r[4] for r in rows)
    worst_rel_big = max((r[4] for r in rows if r[12] > 0.02), default=0.0)
    lines = [
        "# Score tolerance: recomputed scores across float reduction orders",
        "",
        f"`python experiments/score_tolerance.py {args.run_dir}` on {platform.machine()} "
        f"({os.cpu_count()} cores), torch {next(iter(results.values()))['info']['torch']}; "
        "the run: the default `fedchain simulate` (digits, 10 clients, 20 rounds, rule "
        "`screened`, GTG-Shapley scores).",
        "",
        "Configurations (each a fresh process recomputing every round with "
        "`recheck.iter_round_scores`), against the scores the run recorded (times: on a "
        "machine shared with other work, not a benchmark):",
        "",
        *(f"- `{n}`: {env}, {results[n]['seconds']:.0f} s" for n, env in CONFIGS.items()),
        "",
        "Per round: the sum of the recorded positive scores (what the reward split divides "
        "by) and the largest |score|; the largest difference between two configurations' raw "
        "scores (score units = validation loss), absolute and relative to the largest |score|; "
        "the largest difference in quanta (1e-6) between a configuration's quantised score and "
        "the recorded one (what `verify --scores` compares); how many scores are exactly 0.0 "
        "(in every configuration); the tolerance (max("
        f"{SCORE_TOLERANCE_QUANTA} quanta, {SCORE_TOLERANCE_RELATIVE:g} x largest positive "
        "score: a negative score never widens it), 0 "
        "for an exact zero); and the most one client's reward (pool "
        f"{pool} units) can gain / lose when every recorded score moves by up to its tolerance "
        "(the target's one way, all others the other way), then the same under the old fixed "
        "0.005.",
        "",
        "| round | sum of positive | largest \\|score\\| | max diff | relative | quanta "
        "| exact zeros | tolerance | reward gain / loss | old 0.005: gain / loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r} | {p:.4g} | {m:.4g} | {a:.3g} | {rel:.3g} | {q} | {z} | {t:.3g} | "
            f"{ng} / {nl} | {og} / {ol} |"
            for r, p, m, a, rel, q, z, t, ng, nl, og, ol, _ in rows
        ),
        "",
        f"Largest difference between configurations: **{worst_abs:.3g}** score units, "
        f"**{worst_rel:.3g}** of its round's largest |score| (**{worst_rel_big:.3g}** in rounds "
        f"whose largest positive score exceeds 0.02, where the relative term applies); largest "
        f"quantised difference from the recorded scores: **{max(r[5] for r in rows)}** "
        f"quantum. Largest reward movement inside the new tolerance: gain "
        f"**{max(r[8] for r in rows)}**, loss **{max(r[9] for r in rows)}** pool units (of "
        f"{pool}); inside the old 0.005: gain {max(r[10] for r in rows)}, loss "
        f"{max(r[11] for r in rows)}.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "score_tolerance.md").write_text("\n".join(lines) + "\n")
    (args.out / "score_tolerance.json").write_text(
        json.dumps({"recorded": recorded, "configs": results}, indent=1) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
