"""How fast harm may be forgiven: the attackers' share of rewards by score-debt decays (issue 19).

    python experiments/harm_decay.py --work /tmp/harm-decay --seeds 0 1 2 3 4 5 6 7 8

Set-up. The Fashion-MNIST subsample of ``dp_tradeoff.py``'s ε = ∞ row (``screened``, 10
clients, 20 rounds, two local epochs, ``--train-examples 1000 --test-examples 500``: 100
validation examples), 30 % sign flippers, one run per seed and per ``--made-at`` pair of
``score-debt-decay`` ``d`` and ``harm-debt-decay`` ``h`` (default: 0.3 / 0.3, format 6's rule,
0.3 / 0.2, and 0.3 / 0, the defaults), made in ``--work`` unless already there (about 35 s
each on a quiet machine). The figure is the sign flippers' share of what the run paid (its
ledger's reward deltas): the real rule, stake feedback included (payouts move stakes, and
stakes weight aggregation, so each pair's runs differ from the others' after the first
payout).

Second table, indicative only: the runs made at the first ``--made-at`` pair, their payouts
replayed under other pairs (:func:`fedchain.rounds.rewards.compute_round_payout` and
:func:`~fedchain.rounds.rewards.compute_score_debts` on the recorded scores, stakes not fed
back). Comparing it with the first table shows how much the feedback moves the figure.

Why this split: a validation split of 100 examples is noisy enough that a sign flipper's
update scores above zero in some late rounds; its early rounds, where it is clearly harmful
(-0.3 in round 1), are the evidence against it, and forgiving that harm as fast as honest
noise (``h = d``) forgets it in time for those lucky rounds. The fidelity side of the choice
(how close each honest client's run share stays to exact Shapley's) is in
``reward_shares.py``, columns ``debt d=... h=...``.

Writes ``harm_decay.md`` into ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import robustness  # this folder's grid runner

from fedchain.ledger.codec import decode
from fedchain.ledger.objects import Block, ContributionRecord, ModelVersion, RewardDeltas
from fedchain.ledger.store import LEDGER_FILENAME, LedgerStore
from fedchain.rounds.rewards import compute_round_payout, compute_score_debts, has_model_moved

BASE = {
    "dataset": "fashion-mnist",
    "train-examples": 1000,
    "test-examples": 500,
    "rounds": 20,
    "local-epochs": 2,
}
DECAYS_BPS = [(3_000, 3_000), (3_000, 2_500), (3_000, 2_000), (3_000, 1_500), (3_000, 0)]
DECAYS_BPS += [(5_000, 2_000), (0, 0)]
POOL, MIN_SCORE = 10_000, 10_000

Round = tuple[tuple[tuple[bytes, int], ...], bool]


def make_run(work: Path, seed: int, decay: int, harm: int) -> Path:
    """The run directory of ``seed`` at decays ``(decay, harm)`` (basis points), made if it is
    not in ``work`` yet."""
    keep = work / f"d{decay}-h{harm}" / f"s{seed}"
    if not (keep / "run" / LEDGER_FILENAME).is_file():
        keep.mkdir(parents=True, exist_ok=True)
        cell = robustness.Cell("screened", "iid", (("partitioner", "iid"),), seed, "sign-flip", 0.3)
        settings = {**BASE, "score-debt-decay": decay / 10_000, "harm-debt-decay": harm / 10_000}
        robustness.run_cell(cell, settings, keep)
    return keep / "run"


def paid_share(run: Path, attackers: set[bytes]) -> float:
    """The attackers' share of everything the run's ledger paid."""
    paid: dict[bytes, int] = {}
    with LedgerStore.open(run / LEDGER_FILENAME, readonly=True) as store:
        for stored in store.iter_blocks(1):
            for tx in decode(Block, stored.data).transactions:
                if isinstance(tx, RewardDeltas):
                    for key, amount in tx.deltas:
                        paid[key] = paid.get(key, 0) + amount
    total = sum(paid.values())
    return sum(paid.get(key, 0) for key in attackers) / total if total else 0.0


def _attackers(run: Path) -> set[bytes]:
    listed = json.loads((run / "attackers.json").read_text())["public_keys"]
    return {bytes.fromhex(key) for key in listed}


def _pair(text: str) -> tuple[int, int]:
    decay, harm = (round(float(x) * 10_000) for x in text.split(","))
    return decay, harm


def read_rounds(run: Path) -> list[Round]:
    """Each contribution record's scores and whether its round's model moved."""
    rounds, moved = [], False
    with LedgerStore.open(run / LEDGER_FILENAME, readonly=True) as store:
        for stored in store.iter_blocks(1):
            for tx in decode(Block, stored.data).transactions:
                if isinstance(tx, ModelVersion):
                    moved = has_model_moved(tx.update_hashes, tx.model_hash, tx.parent_hash)
                elif isinstance(tx, ContributionRecord):
                    rounds.append((tx.scores, moved))
    return rounds


def attackers_share(rounds: list[Round], attackers: set[bytes], decay: int, harm: int) -> float:
    paid: dict[bytes, int] = {}
    carried = 0
    debts: dict[bytes, tuple[int, int]] = {}
    for scores, moved in rounds:
        owed = {key: debt for key, (debt, _) in debts.items()}
        payout = compute_round_payout(
            carried, pool=POOL, scores=scores, moved=moved, min_score=MIN_SCORE, debts=owed
        )
        debts.update(compute_score_debts(debts, scores, decay, harm))
        carried = payout.carried
        for key, amount in payout.rewards:
            paid[key] = paid.get(key, 0) + amount
    total = sum(paid.values())
    return sum(paid.get(key, 0) for key in attackers) / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the runs are (made)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(9)))
    parser.add_argument(
        "--made-at",
        type=_pair,
        nargs="+",
        default=[(3_000, 3_000), (3_000, 2_000), (3_000, 0)],
        help="score-debt-decay,harm-debt-decay pairs to make runs at (default 0.3,0.3 "
        "0.3,0.2 0.3,0)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    robustness._init_worker()
    made: dict[tuple[int, int], list[float]] = {pair: [] for pair in args.made_at}
    replayed: dict[tuple[int, int], list[float]] = {pair: [] for pair in DECAYS_BPS}
    for pair in args.made_at:
        for seed in args.seeds:
            run = make_run(args.work, seed, *pair)
            attackers = _attackers(run)
            made[pair].append(paid_share(run, attackers))
            if pair == args.made_at[0]:
                rounds = read_rounds(run)
                for decay, harm in DECAYS_BPS:
                    replayed[decay, harm].append(attackers_share(rounds, attackers, decay, harm))
            print(f"d={pair[0] / 10_000:g} h={pair[1] / 10_000:g} seed {seed}: done", flush=True)
    command = "python experiments/harm_decay.py " + shlex.join(sys.argv[1:])
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    rule = "|--:|--:|" + "--:|" * (len(args.seeds) + 1)
    lines = [
        "# Attackers' share by score-debt decays (issue 19)",
        "",
        f"Command: `{command}`. Generated by `experiments/harm_decay.py`; its docstring "
        "describes the set-up (Fashion-MNIST subsample, 100 validation examples, 30 % sign "
        "flippers, `screened`, 20 rounds).",
        "",
        "Runs made at each pair: the sign flippers' share of what each run paid.",
        "",
        f"| score-debt-decay d | harm-debt-decay h | {seeds} | mean |",
        rule,
        *_rows(made),
        "",
        f"Indicative: the runs made at d = {args.made_at[0][0] / 10_000:g}, h = "
        f"{args.made_at[0][1] / 10_000:g}, their payouts replayed under other pairs (stakes not "
        "fed back).",
        "",
        f"| score-debt-decay d | harm-debt-decay h | {seeds} | mean |",
        rule,
        *_rows(replayed),
    ]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "harm_decay.md").write_text(text)
    print(text)


def _rows(shares: dict[tuple[int, int], list[float]]) -> list[str]:
    rows = []
    for (decay, harm), values in shares.items():
        cells = " | ".join(f"{v:.1%}" for v in values)
        mean = sum(values) / len(values)
        rows.append(f"| {decay / 10_000:g} | {harm / 10_000:g} | {cells} | {mean:.1%} |")
    return rows


if __name__ == "__main__":
    main()
