"""The report of a run as a plain JSON-ready dict, built from its inputs by replaying its blocks.

:func:`compute_report` (pure) replays the blocks that verified through the ledger's own state
transition (:func:`~fedchain.ledger.verify.iter_replay`, the replay ``fedchain verify`` runs),
so every stake, reward and slashing shown is what the protocol computes, never a
re-implementation of its rules, and returns a dict with bytes as hex and no NaN; the
participants and their events are :mod:`fedchain.report.participants`. :func:`build_report`
reads a run directory (:func:`~fedchain.report.inputs.load_report_inputs`) and builds its
report. Writing it is :mod:`fedchain.report.files`; the page, :mod:`fedchain.report.html`; the
terminal summary, :mod:`fedchain.cli.report`.

Time series are aligned with the report's ``timeline``: round 0 (the genesis) then every round,
each value taken at the end of the round (after its last block).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedchain import __version__
from fedchain.errors import LedgerError
from fedchain.ledger.objects import (
    DP_OFF,
    EMPTY_HASH,
    Block,
    ContributionRecord,
    Genesis,
    ModelRecord,
    ModelVersion,
    RewardDeltas,
)
from fedchain.ledger.signatures import PLAIN, Verifier
from fedchain.ledger.verify import ReplayStep, iter_replay
from fedchain.report.decisions import compute_round_decision
from fedchain.report.inputs import (
    ReportInputs,
    RoundMetrics,
    describe_unfinished,
    load_report_inputs,
)
from fedchain.report.participants import compute_events, compute_participants
from fedchain.runs.archive import describe_archive_policy

__all__ = ["REPORT_FORMAT", "build_report", "compute_report"]

REPORT_FORMAT = "fedchain-report/1"
NO_CONTRIBUTIONS = "no contribution scores recorded"


def _replay(blocks: Sequence[Block], verifier: Verifier) -> tuple[list[ReplayStep], str | None]:
    """The steps of :func:`~fedchain.ledger.verify.iter_replay` up to the first block that
    fails, and why the replay stopped there (None when every block passed)."""
    steps: list[ReplayStep] = []
    try:
        for step in iter_replay(blocks, verifier=verifier):
            steps.append(step)
    except LedgerError as e:
        return steps, f"block {len(steps)}: {e}"
    return steps, None


def compute_report(inputs: ReportInputs, *, verifier: Verifier = PLAIN) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring for what it holds).

    ``verifier`` checks the replay's signatures: the one that verified ``inputs`` answers from
    its cache (:class:`~fedchain.ledger.signatures.CachingVerifier`), so nothing is checked twice.
    """
    steps, stopped = _replay(inputs.blocks, verifier)
    first = steps[0].block.transactions[0] if steps else None
    genesis = first if isinstance(first, Genesis) else None
    verification = _verification_json(inputs, steps, stopped)
    progress = _progress_json(inputs)
    unfinished = [progress["unfinished"]] if progress["unfinished"] else []
    if genesis is None:
        return {
            "format": REPORT_FORMAT,
            "generator": f"fedchain {__version__}",
            "run": {"run_id": inputs.verification.run_id, "run_dir": str(inputs.run_dir)},
            "verification": verification,
            "timeline": [],
            "rounds": [],
            "participants": [],
            "events": [],
            "lineage": [],
            "totals": {},
            "contributions_recorded": False,
            "metrics_available": False,
            "initial_model": {"accuracy": None, "loss": None},
            "progress": progress,
            "notes": [*unfinished, *inputs.notes, "the ledger's genesis block could not be read"],
        }
    ledger_rounds = sorted({s.block.header.round for s in steps} - {0})
    metrics = {m.round: m for m in inputs.metrics or () if m.round > 0}
    initial = next((m for m in inputs.metrics or () if m.round == 0), None)
    rounds = sorted(set(ledger_rounds) | set(metrics))
    timeline = [0, *rounds]
    events = compute_events(inputs, steps, genesis)
    participants = compute_participants(inputs, steps, genesis, timeline, events)
    privacy = None
    if genesis.rules.dp_mode != DP_OFF:
        # Opacus (the dp extra, seconds to import): only for a ledger with differential privacy
        from fedchain.report.privacy import compute_privacy

        privacy = compute_privacy(steps, genesis, timeline)
        for entry in participants:
            entry.update(privacy["clients"].get(entry["public_key"], {}))
    rounds_json = _rounds_json(steps, timeline[1:], metrics, events, participants)
    contributions = any(
        isinstance(tx, ContributionRecord) for s in steps for tx in s.block.transactions
    )
    notes = [*unfinished, *inputs.notes]
    if not contributions:
        notes.append(
            f"{NO_CONTRIBUTIONS} on this ledger (contribution method "
            f"{genesis.rules.contribution_method!r}): rewards were not split by contribution"
        )
    if stopped is not None or not inputs.verification.ok:
        last = steps[-1].block.header
        notes.append(
            f"ledger data is shown up to block {last.height} (round {last.round}), the last "
            "block that verified"
        )
    return {
        "format": REPORT_FORMAT,
        "generator": f"fedchain {__version__}",
        "run": _run_json(inputs, genesis),
        "verification": verification,
        "timeline": timeline,
        "rounds": rounds_json,
        "participants": participants,
        "events": events,
        "lineage": _lineage_json(inputs, steps, genesis),
        "totals": _totals_json(participants, rounds_json, events, steps),
        "contributions_recorded": contributions,
        "metrics_available": bool(metrics),
        "initial_model": {
            "accuracy": None if initial is None else initial.accuracy,
            "loss": None if initial is None else initial.loss,
        },
        "progress": progress,
        "archive": _archive_json(inputs, genesis),
        "privacy": privacy,
        "notes": notes,
    }


def _progress_json(inputs: ReportInputs) -> dict[str, Any]:
    """How far the run got: the verified ledger's round against the rounds it was started for
    (``planned_rounds`` None when nothing in or beside the run directory says)."""
    plan = inputs.plan
    done = inputs.verification.rounds
    return {
        "ledger_round": done,
        "planned_rounds": None if plan is None else plan.rounds,
        "planned_from": None if plan is None else plan.source,
        "finished": None if plan is None else done >= plan.rounds,
        "unfinished": describe_unfinished(done, plan),
        "resume": None if plan is None or done >= plan.rounds else plan.resume,
    }


def _run_json(inputs: ReportInputs, genesis: Genesis) -> dict[str, Any]:
    rules = genesis.rules
    return {
        "run_id": genesis.run_id,
        "run_dir": str(inputs.run_dir),
        "genesis_hash": inputs.verification.genesis_hash.hex(),
        "rules": {
            "min_stake": rules.min_stake,
            "reward_per_round": rules.reward_per_round,
            "slash_bps": dict(rules.slash_bps),
            "aggregation_rule": rules.aggregation_rule,
            "aggregation_params": dict(rules.aggregation_params),
            "contribution_method": rules.contribution_method,
            "weight_cap_bps": rules.weight_cap_bps,
            "reputation_penalty_bps": rules.reputation_penalty_bps,
            "payout_min_score": rules.payout_min_score,
            "score_debt_decay_bps": rules.score_debt_decay_bps,
            "harm_debt_decay_bps": rules.harm_debt_decay_bps,
            "contribution_budget": rules.contribution_budget,
            "contribution_min_evaluations": rules.contribution_min_evaluations,
            "update_archive_rounds": rules.update_archive_rounds,
            "model_access": [key.hex() for key in rules.model_access],
        },
        "model": _model_json(rules.model),
        "datasets": [
            {
                "public_key": p.public_key.hex(),
                "name": p.name,
                "dataset_hash": p.dataset_hash.hex(),
                "num_examples": p.num_examples,
            }
            for p in genesis.participants
        ],
        "config": None if inputs.config is None else dict(inputs.config),
    }


def _model_json(record: ModelRecord) -> dict[str, Any] | None:
    """The genesis's model record (None when the ledger names no model: a synthetic ledger)."""
    if not record.architecture:
        return None
    return {
        "architecture": record.architecture,
        "finetune": record.finetune,
        "lora_rank": record.lora_rank,
        "base_hash": None if record.base_hash == EMPTY_HASH else record.base_hash.hex(),
        "base_source": record.base_source,
        "base_licence": record.base_licence,
        "trainable": len(record.trainable),
    }


def _archive_json(inputs: ReportInputs, genesis: Genesis) -> dict[str, Any]:
    """The update archive: its retention rule (the genesis's) and its size on disk."""
    files, size = inputs.archive_size
    rule = genesis.rules.update_archive_rounds
    return {
        "update_archive_rounds": rule,
        "policy": describe_archive_policy(rule),
        "files": files,
        "bytes": size,
    }


def _verification_json(
    inputs: ReportInputs, steps: Sequence[ReplayStep], stopped: str | None
) -> dict[str, Any]:
    v = inputs.verification
    failure = (
        None if v.failure is None else {"height": v.failure.height, "reason": v.failure.reason}
    )
    if v.failure is not None:
        where = f"block {v.failure.height}"
        # the state transition's messages often name the block already
        first_failure: str | None = (
            v.failure.reason if v.failure.reason.startswith(where) else str(v.failure)
        )
    elif inputs.model_problems:
        first_failure = f"model files: {inputs.model_problems[0]}"
    elif stopped is not None:  # verify accepted what the replay refused: never expected
        first_failure = f"replay: {stopped}"
    else:
        first_failure = None
    return {
        "ok": first_failure is None,
        "verdict": "verified" if first_failure is None else "FAILED",
        "first_failure": first_failure,
        "ledger_ok": v.ok,
        "failure": failure,
        "models_checked": v.ok,
        "model_problems": list(inputs.model_problems),
        "blocks": v.blocks,
        "head_height": v.head_height,
        "head_hash": v.head_hash.hex(),
        "final_height": v.final_height,
        "rounds": v.rounds,
        "signatures": v.signatures,
        "tx_counts": dict(v.tx_counts),
        "participants": v.participants,
        "active": v.active,
        "total_stake": v.total_stake,
        "report_blocks": len(steps),
    }


def _rounds_json(
    steps: Sequence[ReplayStep],
    rounds: Sequence[int],
    metrics: Mapping[int, RoundMetrics],
    events: Sequence[Mapping[str, Any]],
    participants: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Per round: what the ledger recorded, and what the rule and the pool decided
    (:func:`~fedchain.report.decisions.compute_round_decision`). ``accepted`` counts the
    updates averaged into the model; ``refused`` those the ledger's admission refused;
    ``left_out`` those admitted that the rule did not use."""
    by_round: dict[int, list[Block]] = defaultdict(list)
    for block in (s.block for s in steps[1:]):
        by_round[block.header.round].append(block)
    who = {p["public_key"]: p for p in participants}
    rules = steps[0].post.genesis.rules if steps else None
    # the pool carried into each round: the state before the block holding its record
    carried_into = {
        tx.round: s.pre.carried_reward
        for s in steps[1:]
        if s.pre is not None
        for tx in s.block.transactions
        if isinstance(tx, ContributionRecord)
    }
    debts_into = {  # and each participant's score debt
        tx.round: {key: p.score_debt for key, p in s.pre.participants.items()}
        for s in steps[1:]
        if s.pre is not None
        for tx in s.block.transactions
        if isinstance(tx, ContributionRecord)
    }
    result = []
    for r in rounds:
        blocks = by_round.get(r, [])
        txs = [tx for b in blocks for tx in b.transactions]
        deltas = [d for tx in txs if isinstance(tx, RewardDeltas) for _, d in tx.deltas]
        models = [tx for tx in txs if isinstance(tx, ModelVersion)]
        round_events = [e for e in events if e["round"] == r]
        m = metrics.get(r)
        ledger: dict[str, Any] = {
            **compute_round_decision(
                txs, m, who, carried=carried_into.get(r), rules=rules, debts=debts_into.get(r)
            ),
            "refused": sum(e["kind"] in ("rejected", "holder-refused") for e in round_events),
            "slashing_events": sum(e["kind"] == "slashed" for e in round_events),
            "stake_slashed": sum(e["stake_lost"] for e in round_events),
            "rewards_paid": sum(d for d in deltas if d > 0),
        }
        if not blocks:  # a round only metrics.json names: the ledger says nothing of it
            ledger = dict.fromkeys(ledger)
        result.append(
            {
                "round": r,
                "on_ledger": bool(blocks),
                "heights": [b.header.height for b in blocks],
                **ledger,
                "contributions_recorded": any(isinstance(tx, ContributionRecord) for tx in txs),
                "model_hash": models[-1].model_hash.hex() if models else None,
                "accuracy": None if m is None else m.accuracy,
                "loss": None if m is None else m.loss,
                "seconds": None if m is None else m.seconds,
            }
        )
    return result


def _lineage_json(
    inputs: ReportInputs, steps: Sequence[ReplayStep], genesis: Genesis
) -> list[dict[str, Any]]:
    present = inputs.models_present
    lineage = [
        {
            "round": 0,
            "height": 0,
            "model_hash": genesis.initial_model_hash.hex(),
            "parent_hash": None,
            "rule": None,
            "updates": 0,
            "file_present": genesis.initial_model_hash in present,
        }
    ]
    for block in (s.block for s in steps[1:]):
        for tx in block.transactions:
            if isinstance(tx, ModelVersion):
                lineage.append(
                    {
                        "round": tx.round,
                        "height": block.header.height,
                        "model_hash": tx.model_hash.hex(),
                        "parent_hash": tx.parent_hash.hex(),
                        "rule": tx.rule,
                        "updates": len(tx.update_hashes),
                        "file_present": tx.model_hash in present,
                    }
                )
    return lineage


def _totals_json(
    participants: Sequence[Mapping[str, Any]],
    rounds: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    steps: Sequence[ReplayStep],
) -> dict[str, Any]:
    accuracies = [r["accuracy"] for r in rounds if r["accuracy"] is not None]
    return {
        "rounds": sum(r["on_ledger"] for r in rounds),
        "participants": len(participants),
        "active": sum(p["active"] for p in participants),
        "total_stake": sum(p["stake"] for p in participants),
        "rewards_paid": sum(p["rewards"] for p in participants),
        "reward_carried": steps[-1].post.carried_reward,  # not paid yet: the payout rule
        "stake_slashed": sum(p["slashed"] for p in participants),
        "admitted_updates": sum(r["admitted"] or 0 for r in rounds),
        "accepted_updates": sum(r["accepted"] or 0 for r in rounds),
        "left_out_updates": sum(r["left_out"] or 0 for r in rounds),
        "refused_updates": sum(r["refused"] or 0 for r in rounds),
        "rounds_model_moved": sum(bool(r["model_moved"]) for r in rounds),
        "slashing_events": sum(e["kind"] == "slashed" for e in events),
        "ejections": sum(e["kind"] == "ejected" for e in events),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "model_head": steps[-1].post.model_head.hex(),
    }


def build_report(
    run_dir: Path,
    *,
    on_block: Callable[[int, int], None] | None = None,
    verifier: Verifier = PLAIN,
) -> dict[str, Any]:
    """:func:`compute_report` of :func:`load_report_inputs`, both with ``verifier``."""
    inputs = load_report_inputs(run_dir, on_block=on_block, verifier=verifier)
    return compute_report(inputs, verifier=verifier)
