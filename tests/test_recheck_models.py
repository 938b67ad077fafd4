"""``verify --scores`` re-aggregates each round: a model that is not its updates' aggregation fails.

A dishonest coordinator plays the attacker inside the real coordinator (its aggregation swapped
in round 2), so the ledger it writes is valid and every model file matches its hash: it registers
a model nudged away from the aggregation of the round's updates, or a ``ModelVersion`` that lists
no updates at all (a round that still pays). ``fedchain verify`` passes both (the ledger and its
files are consistent); ``--scores`` re-aggregates and refuses them, naming the round. A round whose
updates are not all archived says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import fedchain.rounds.coordinator as coordinator_module
import fedchain.rounds.scores as scores_module
from fedchain.cli import app
from fedchain.config import RunConfig, load_config_file
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.recheck import recheck_scores
from fedchain.rounds.scores import compute_aggregation
from fedchain.runs.archive import UpdateArchive, save_round_updates
from fedchain.runs.layout import CONFIG_FILENAME, UPDATES_DIRNAME

SMALL = {"clients": 3, "rounds": 2, "model": "mlp"}


def report_config(run_dir: Path) -> RunConfig:
    return load_config_file(run_dir / CONFIG_FILENAME)


def dishonest_in_round_2(change: Any) -> Any:
    """The coordinator's aggregation, with ``change`` applied to round 2's result."""

    def aggregation(*args: Any, **kwargs: Any) -> Any:
        result = compute_aggregation(*args, **kwargs)
        return change(result) if kwargs["round_"] == 2 else result

    return aggregation


def nudged(result: Any) -> Any:
    """One weight of the aggregated update moved by 1e-4: a model no aggregation gives."""
    arrays = dict(result.arrays)
    name = sorted(arrays)[0]
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] += np.float32(1e-4)
    return dataclasses.replace(result, arrays=arrays)


def without_updates(result: Any) -> Any:
    """No update used: the model stays the parent, and the ModelVersion lists none."""
    zeros = {n: np.zeros_like(a) for n, a in result.arrays.items()}
    return dataclasses.replace(
        result, arrays=zeros, selected=(), weights=np.zeros_like(result.weights)
    )


def run(inprocess_federation: Any, out: Path, monkeypatch: pytest.MonkeyPatch, change: Any) -> Path:
    if change is not None:
        monkeypatch.setattr(coordinator_module, "compute_aggregation", dishonest_in_round_2(change))
    fed = inprocess_federation(out, **SMALL).run()
    monkeypatch.undo()
    return fed.setup.run_dir


def test_the_honest_runs_models_are_their_rounds_aggregations(
    inprocess_federation: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = run(inprocess_federation, tmp_path, monkeypatch, None)
    report = verify_ledger(run_dir)
    check = recheck_scores(run_dir, report, report_config(run_dir))
    assert check.problems == () and check.models_matched == check.rounds == 2


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (nudged, "round 2: its model "),
        (without_updates, "round 2: its ModelVersion lists 0 updates, but the rule"),
    ],
    ids=["model nudged", "no updates listed"],
)
def test_invalid_a_model_that_is_not_its_rounds_aggregation(
    inprocess_federation: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Any,
    reason: str,
) -> None:
    run_dir = run(inprocess_federation, tmp_path, monkeypatch, change)
    report = verify_ledger(run_dir)
    assert report.ok, report.failure  # a valid ledger: only re-aggregating shows it
    check = recheck_scores(run_dir, report, report_config(run_dir))
    assert check.models_matched == 1 and check.problems[0].startswith(reason), check.problems
    if change is nudged:
        assert "is not the aggregation of its updates" in check.problems[0]
        assert "largest difference 0.0001" in check.problems[0]
    plain = CliRunner().invoke(app, ["verify", str(run_dir)], env={"COLUMNS": "300"})
    assert plain.exit_code == 0, plain.output
    scored = CliRunner().invoke(app, ["verify", str(run_dir), "--scores"], env={"COLUMNS": "300"})
    assert scored.exit_code == 1 and f"FAILED scores: {reason}" in scored.output


def test_a_round_whose_updates_are_not_all_archived_says_so(
    inprocess_federation: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = run(inprocess_federation, tmp_path, monkeypatch, None)
    report = verify_ledger(run_dir)
    lost = report.round_records[1].commitments[0].update_hash
    archive = UpdateArchive(run_dir)
    pack = archive.where(lost)
    assert pack is not None and pack.parent.name == UPDATES_DIRNAME
    held = archive.read_file(pack)
    del held[lost]
    save_round_updates(run_dir, 2, held)
    check = recheck_scores(run_dir, report, report_config(run_dir))
    assert check.models_matched == 1
    assert check.problems[0].startswith("round 2: not all its updates (or its base model) are")


def test_the_coordinator_and_verify_both_take_the_paired_step_test(
    inprocess_federation: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # screened (the default rule) with the run's validation scorer: both the coordinator and
    # ``verify --scores`` bind its per-example step tester, and reach the same models
    bound: list[bool] = []
    real = scores_module.bind_step_tester

    def spying(scorer: Any, base: Any) -> Any:
        tester = real(scorer, base)
        bound.append(tester is not None)
        return tester

    monkeypatch.setattr(scores_module, "bind_step_tester", spying)
    run_dir = inprocess_federation(tmp_path, **SMALL).run().setup.run_dir
    assert report_config(run_dir).aggregation == "screened"
    assert bound == [True, True]  # the coordinator, rounds 1 and 2
    report = verify_ledger(run_dir)
    check = recheck_scores(run_dir, report, report_config(run_dir))
    assert bound == [True] * 4  # and verify, the same rounds
    assert check.problems == () and check.models_matched == check.rounds == 2
