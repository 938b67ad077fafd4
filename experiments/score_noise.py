"""Is an attacker's positive late-round score sampling error? (issue 19, the payout's last gap)

The ablation cell of ``attacker_share_ablation.py`` (``screened``, IID, 30 % sign flippers,
digits, ``mlp``, 10 clients, 10 rounds, ``mc-shapley``), run in process with the sampler's walk
marginals kept (:func:`fedchain.rounds.contribution.sample_permutation_marginals` on the same
coalition values the run's scorer evaluated). Per round and client: the recorded score and the
sampler's standard error, from the antithetic pairs (a walk and its reverse are one
independent unit: ``SE = sd(pair means) / sqrt(pairs)``).

Then the payout is replayed offline on the run's recorded scores (the run itself used the
default rule; stake feedback is not replayed) under: no discount and no debt (the rule before
score debt), the sampler's confidence discount (pay ``max(0, s - k SE)``, judge the round's
evidence on the discounted scores; k = 1, 2, 3: the alternative tried), and score debt
(``--score-debt-decay`` 0, the rule taken). Prints and writes
``experiments/results/score_noise.md``.

    python experiments/score_noise.py [SEED ...]   # default: seeds 0-9
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import robustness  # this folder's grid runner

import fedchain.learning.attacks as attacks
import fedchain.rounds.coordinator as coordinator
import fedchain.rounds.validation as validation
import fedchain.runs.prepare as prepare
from fedchain.rounds.contribution import sample_permutation_marginals
from fedchain.rounds.rewards import compute_round_payout, compute_score_debts

BASE = {"dataset": "digits", "model": "mlp", "clients": 10, "rounds": 10}
CELL = ("screened", "iid", (("partitioner", "iid"),))
POOL, MIN_SCORE, DEBT_DECAY_BPS, HARM_DECAY_BPS = 10_000, 10_000, 0, 0
OUT = Path(__file__).parent / "results" / "score_noise.md"

LOG: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------------
# Logging the run (wrappers around the run's own functions: what they return is unchanged)


def _wrap_scores(real: Any) -> Any:
    def compute_scores(method: str, *, n: int, utility: Any = None, seed: int = 0, **kw: Any):  # type: ignore[no-untyped-def]
        table: dict[frozenset[int], float] = {}

        def memo(coalition: frozenset[int]) -> float:
            if coalition not in table:
                table[coalition] = utility(coalition)
            return table[coalition]

        scores = real(method, n=n, utility=None if utility is None else memo, seed=seed, **kw)
        budget = kw.get("evaluations_per_client", 10)
        if method == "mc-shapley" and n > 1 and budget * n < 1 << n:
            walks = sample_permutation_marginals(
                n, lambda cs: [memo(c) for c in cs], seed=seed, evaluations_per_client=budget
            )
            if not np.allclose(walks.mean(axis=0), scores, atol=1e-9):
                raise AssertionError("the walk marginals do not give the recorded scores")
            LOG["walks"] = walks
        return scores

    return compute_scores


def _wrap_payout(real: Any) -> Any:
    def payout(carried: int, **kw: Any):  # type: ignore[no-untyped-def]
        scores = tuple(kw.pop("scores"))
        LOG["rounds"].append({"scores": scores, "moved": kw["moved"], "walks": LOG.pop("walks")})
        return real(carried, scores=scores, **kw)

    return payout


def _wrap_prepare(real: Any) -> Any:
    def prepare_run(config: Any):  # type: ignore[no-untyped-def]
        setup = real(config)
        LOG["keys"] = setup.public_keys
        return setup

    return prepare_run


def _wrap_select(real: Any) -> Any:
    def select_attackers(clients: int, count: int, seed: int) -> list[int]:
        chosen = real(clients, count, seed)
        LOG["attackers"] = chosen
        return chosen

    return select_attackers


def run_logged(seed: int) -> dict[str, Any]:
    LOG.clear()
    LOG["rounds"] = []
    saved = (
        validation.compute_scores, coordinator.compute_round_payout, prepare.prepare_run,
        attacks.select_attackers,
    )  # fmt: skip
    validation.compute_scores = _wrap_scores(saved[0])
    coordinator.compute_round_payout = _wrap_payout(saved[1])
    prepare.prepare_run = _wrap_prepare(saved[2])
    attacks.select_attackers = _wrap_select(saved[3])
    try:
        cell = robustness.Cell(*CELL, seed, "sign-flip", 0.3)
        row = robustness.run_cell(cell, {**BASE, "contribution": "mc-shapley"})
    finally:
        (
            validation.compute_scores, coordinator.compute_round_payout, prepare.prepare_run,
            attacks.select_attackers,
        ) = saved  # fmt: skip
    attackers = {LOG["keys"][i] for i in LOG["attackers"]}
    return {"seed": seed, "rounds": LOG["rounds"], "attackers": attackers, "row": row}


# --------------------------------------------------------------------------------------------------
# The sampler's error, and the payouts replayed


def pair_standard_errors(walks: np.ndarray) -> np.ndarray:
    """Per client: sd of the antithetic pair means / sqrt(pairs) (quanta)."""
    pairs = (walks[0::2] + walks[1::2]) / 2
    if pairs.shape[0] < 2:
        return np.zeros(walks.shape[1])
    return 1e6 * pairs.std(axis=0, ddof=1) / math.sqrt(pairs.shape[0])


def errors_by_key(round_: dict[str, Any]) -> dict[bytes, float]:
    """The sampler's SE of each recorded score: the walk columns are the scored updates in
    commitment order; matched to the keys by their quantised means (unique in these runs)."""
    walks = round_["walks"]
    means = [round(float(x) * 1e6) for x in walks.mean(axis=0)]
    se = pair_standard_errors(walks)
    out = {}
    for key, score in round_["scores"]:
        hits = [j for j, q in enumerate(means) if q == score]
        out[key] = float(se[hits[0]]) if len(hits) == 1 else 0.0
    return out


def replay(run: dict[str, Any], k: float | None, debt: bool) -> float:
    """The attackers' share of what the rule pays over the run's recorded scores."""
    carried, paid = 0, {}
    debts: dict[bytes, tuple[int, int]] = {}  # key: (debt, of which harm)
    for r in run["rounds"]:
        scores = list(r["scores"])
        if k is not None:
            se = errors_by_key(r)
            scores = [(key, max(0, s - math.ceil(k * se[key]))) for key, s in scores]
        payout = compute_round_payout(
            carried, pool=POOL, scores=scores, moved=r["moved"], min_score=MIN_SCORE,
            debts={key: owed for key, (owed, _) in debts.items()} if debt else None,
        )  # fmt: skip
        if debt:
            debts.update(compute_score_debts(debts, r["scores"], DEBT_DECAY_BPS, HARM_DECAY_BPS))
        for key, amount in payout.rewards:
            paid[key] = paid.get(key, 0) + amount
        carried = payout.carried
    total = sum(paid.values())
    return sum(v for key, v in paid.items() if key in run["attackers"]) / total if total else 0.0


def markdown(runs: list[dict[str, Any]], command: str) -> str:
    late = [
        (abs(s), errors_by_key(r)[key], key in run["attackers"] and s > 0)
        for run in runs
        for r in run["rounds"][5:]
        if r["walks"] is not None
        for key, s in r["scores"]
    ]
    lucky = [(s, e) for s, e, is_lucky in late if is_lucky]
    variants = {
        "no discount, no debt (the rule before)": (None, False),
        "SE discount k=1": (1.0, False),
        "SE discount k=2": (2.0, False),
        "SE discount k=3": (3.0, False),
        "score debt, decay 0 (taken)": (None, True),
    }
    lines = [
        "# Is an attacker's positive late-round score sampling error? (issue 19)",
        "",
        f"Command: `{command}`. Generated by `experiments/score_noise.py`; its docstring "
        "describes the set-up.",
        "",
        f"Rounds 6-10, every scored client ({len(late)} scores): median |score| "
        f"{statistics.median(s for s, _, _ in late):.0f} quanta, median sampler SE "
        f"{statistics.median(e for _, e, _ in late):.1f} quanta. Attackers' positive scores "
        f"there: {len(lucky)}, largest {max((s for s, _ in lucky), default=0):.0f} quanta, "
        f"their SE at most {max((e for _, e in lucky), default=0):.1f} quanta.",
        "",
        "Attackers' share of the rewards, replayed on each run's recorded scores:",
        "",
        "| payout | " + " | ".join(f"seed {run['seed']}" for run in runs) + " | mean |",
        "|---|" + "--:|" * (len(runs) + 1),
    ]
    for name, (k, debt) in variants.items():
        shares = [replay(run, k, debt) for run in runs]
        cells = " | ".join(f"{x:.2%}" for x in shares)
        lines.append(f"| {name} | {cells} | {statistics.fmean(shares):.2%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    robustness._init_worker()
    seeds = [int(a) for a in sys.argv[1:]] or list(range(10))
    runs = [run_logged(seed) for seed in seeds]
    command = "python experiments/score_noise.py " + " ".join(sys.argv[1:])
    text = markdown(runs, command.strip())
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
