"""Run directories: a run id is a name, set-up touches only what it made, a run is never removed.

Each path trick of issue 16 is played against the real command and the real set-up, in a folder
that holds a user's files and a finished run; the whole tree is compared before and after.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import clients.client_app
import fedchain.runs.prepare
from fedchain.cli import app
from fedchain.cli.resume import resumable_run
from fedchain.config import RUN_ID_PATTERN, RunConfig
from fedchain.errors import ConfigError, FedchainError, PartitionError
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.admission import brief_reason
from fedchain.runs.prepare import prepare_run

if TYPE_CHECKING:
    from tests.conftest import MakeFederation

runner = CliRunner()
SMALL = {"clients": 2, "rounds": 1, "model": "mlp"}


def said(output: str) -> str:
    """The CLI's error as one line of words (rich draws it in a wrapped box)."""
    return " ".join(output.replace("│", " ").split())


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root``: kind and content hash (files), target (links)."""
    entries: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[key] = ("dir", "")
            else:
                entries[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder: some files, and ``runs/baseline``, a finished run (its files stand in)."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("my project\n")
    (root / "src" / "main.py").write_text("print('hi')\n")
    baseline = root / "runs" / "baseline"
    (baseline / "models").mkdir(parents=True)
    (baseline / "ledger.db").write_bytes(b"ledger")
    (baseline / "models" / "ab.safetensors").write_bytes(b"model")
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize(
    "args",
    [
        ["--run-id", "x/../..", "--clients", "100000", "--rounds", "1"],
        ["--out", "runs/new", "--run-id", "../baseline"],
        ["--run-id", "../../escape"],
        ["--run-id", "/tmp/fedchain-absolute-run"],
        ["--run-id", ".."],
        ["--run-id", "."],
        ["--run-id", "a/b"],
        ["--run-id", "-"],
    ],
)
def test_invalid_run_id_paths_are_refused_and_nothing_changes(project: Path, args: list[str]):
    before = snapshot(project.parent)
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code == 1, result.output
    assert "must be a name, not a path" in said(result.output)
    assert snapshot(project.parent) == before
    assert not Path("/tmp/fedchain-absolute-run").exists()


def test_invalid_run_id_empty_is_refused_by_prepare_run(tmp_path: Path):
    with pytest.raises(ConfigError, match="must be a name"):
        prepare_run(RunConfig(out=str(tmp_path), **SMALL))  # run_id "" (the CLI derives one)
    assert list(tmp_path.iterdir()) == []


@given(st.text(max_size=12))
@settings(max_examples=300, deadline=None)
def test_an_accepted_run_id_always_names_a_folder_directly_inside_out(run_id: str):
    out = Path("/srv/runs")
    try:
        RunConfig(run_id=run_id)
    except ConfigError:
        assert run_id and not RUN_ID_PATTERN.fullmatch(run_id)
        return
    if run_id:
        target = Path(os.path.normpath(out / run_id))
        assert target.parent == out and target.name == run_id


def test_an_existing_run_is_never_removed_or_overwritten(project: Path):
    before = snapshot(project)
    with pytest.raises(ConfigError, match="already exists"):
        prepare_run(RunConfig(run_id="baseline", out="runs", **SMALL))
    assert snapshot(project) == before


def test_a_failing_set_up_removes_only_what_it_made(project: Path):
    """The issue's first case with a valid name: 100000 clients cannot be split (set-up fails
    after writing), in a folder holding files and a finished run: only the new run is gone."""
    before = snapshot(project)
    with pytest.raises(PartitionError):
        prepare_run(
            RunConfig(
                run_id="new",
                out="runs",
                clients=100_000,
                clients_per_round=10,
                rounds=1,
                model="mlp",
            )
        )
    assert snapshot(project) == before
    with pytest.raises(PartitionError):  # an --out that did not exist is made and unmade
        prepare_run(
            RunConfig(
                run_id="new", out="more/runs", clients=100_000, clients_per_round=10, model="mlp"
            )
        )
    assert snapshot(project) == before


def test_a_run_that_appears_during_set_up_is_kept_and_ours_discarded(
    project: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two set-ups racing for one run id: the rename refuses to replace the other's run."""
    real = fedchain.runs.prepare._populate

    def racing(run_dir: Path, config: RunConfig) -> fedchain.runs.prepare.RunSetup:
        setup = real(run_dir, config)
        (project / "runs" / "race").mkdir()
        (project / "runs" / "race" / "theirs.txt").write_text("the other run\n")
        return setup

    monkeypatch.setattr(fedchain.runs.prepare, "_populate", racing)
    with pytest.raises(ConfigError, match="already exists"):
        prepare_run(RunConfig(run_id="race", out="runs", **SMALL))
    assert sorted(p.name for p in (project / "runs").iterdir()) == ["baseline", "race"]
    assert [p.name for p in (project / "runs" / "race").iterdir()] == ["theirs.txt"]


def test_a_new_run_appears_whole_and_nothing_else_changes(project: Path):
    before = snapshot(project)
    (project / "runs" / "empty").mkdir()  # an empty folder of that name is fine (as before)
    setup = prepare_run(RunConfig(run_id="empty", out="runs", **SMALL))
    assert setup.run_dir == Path("runs") / "empty"
    after = snapshot(project)
    new = {k for k in after if k.startswith(os.path.join("runs", "empty"))}
    assert {k: v for k, v in after.items() if k not in new} == before
    assert {"config.toml", "ledger.db", "models", "clients"} <= {
        p.name for p in setup.run_dir.iterdir()
    }
    assert [p.name for p in (project / "runs").iterdir() if ".partial-" in p.name] == []


# -- a run in which every client fails ----------------------------------------------------------


def _training_fails(*args: object, **kwargs: object) -> object:
    raise RuntimeError("lr must be a finite number > 0, got inf")  # what --lr inf did


@pytest.mark.parametrize("ledger", [True, False])
def test_invalid_run_where_every_client_fails_is_an_error_naming_why(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inprocess_federation: MakeFederation,
    ledger: bool,
):
    """Every client's training raises (the clients still answer the ledger's queries): the run
    used to print a final accuracy and exit 0; now it fails with the first rejection."""
    rule = "screened" if ledger else "fedavg"
    federation = inprocess_federation(
        tmp_path, run_id="r", ledger=ledger, aggregation=rule, **SMALL
    )
    setup = federation.setup
    monkeypatch.setattr(clients.client_app, "_train", _training_fails)
    with pytest.raises(FedchainError, match="no client update was") as error:
        federation.run()
    message = str(error.value)
    assert "\n" not in message
    if ledger:
        assert "got inf" in message and verify_ledger(setup.run_dir).ok  # on record, verifiable


broken_app = ClientApp()  # every message fails: no update, and no seal for the round's block


@broken_app.train()
def _broken_train(msg: Message, context: Context) -> Message:
    raise RuntimeError("cannot open my data: wrong key")


def test_invalid_run_where_no_client_can_even_seal_names_the_first_rejection(
    tmp_path: Path, inprocess_federation: MakeFederation
):
    federation = inprocess_federation(tmp_path, broken_app, run_id="r", **{**SMALL, "rounds": 2})
    with pytest.raises(FedchainError) as error:
        federation.run()
    message = str(error.value)
    assert "no client update was accepted in round 1" in message and "wrong key" in message


def test_brief_reason_is_one_printable_line_of_a_ray_traceback():
    reason = (
        "client error: <class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::"
        'ClientAppActor.run()\x1b[39m (pid=8105)\n  File "x.py", line 1, in run\n    raise\n'
        "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. "
        "Message: lr must be a finite number > 0, got inf'>"
    )
    brief = brief_reason(reason)
    assert brief.startswith("client error: ") and brief.endswith("got inf'>")
    assert "\n" not in brief and "\x1b" not in brief and len(brief) <= 160
    assert brief_reason("x" * 500).endswith("…") and len(brief_reason("x" * 500)) == 160


# -- simulate --resume -----------------------------------------------------------------------------


def test_resume_removes_the_lost_rounds_model_and_keeps_the_runs_own_config(tmp_path: Path):
    setup = prepare_run(RunConfig(run_id="r", out=str(tmp_path), **SMALL))
    stray = setup.run_dir / "models" / f"{'ab' * 32}.safetensors"  # saved, never on the ledger
    stray.write_bytes(b"a model of a round the ledger never recorded")
    config, run_dir = resumable_run(setup.run_dir)
    assert config == setup.config and run_dir == setup.run_dir
    assert not stray.exists() and len(list((run_dir / "models").iterdir())) == 1


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ({"ledger": False, "aggregation": "fedavg"}, [], "ledger off cannot resume"),
        (None, [], "not a run directory"),
        ({}, ["--rounds", "5"], "drop --rounds"),
        ({}, ["--seed", "0"], "drop --seed"),
    ],
)
def test_invalid_resume_is_one_line(tmp_path: Path, make, args, message):
    run_dir = tmp_path / "r"
    if make is not None:
        run_dir = prepare_run(RunConfig(run_id="r", out=str(tmp_path), **{**SMALL, **make})).run_dir
    else:
        run_dir.mkdir()
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["simulate", "--resume", str(run_dir), *args])
    assert result.exit_code == 1 and message in said(result.output), result.output
    assert snapshot(tmp_path) == before


def test_invalid_resume_of_a_finished_run(tmp_path: Path, inprocess_federation: MakeFederation):
    setup = inprocess_federation(tmp_path, run_id="r", **SMALL).run().setup
    with pytest.raises(ConfigError, match="all 1 rounds are on the ledger; nothing to resume"):
        resumable_run(setup.run_dir)


def test_a_subsampled_run_is_its_configuration_and_its_scores_recheck(
    tmp_path: Path, inprocess_federation: MakeFederation
):
    """train-examples/test-examples: the clients split a seeded subsample of the train split
    (less the validation holdout), the test split is cut too, config.toml records both, and
    `verify --scores` re-derives the same validation split from it."""
    from fedchain.config import load_config_file
    from fedchain.rounds.recheck import recheck_scores
    from fedchain.runs.prepare import load_run_source, load_split

    fed = inprocess_federation(
        tmp_path, clients=3, rounds=2, model="mlp", train_examples=300, test_examples=120
    ).run()
    config = load_config_file(fed.setup.run_dir / "config.toml")
    assert (config.train_examples, config.test_examples) == (300, 120)
    kept, validation = load_split(config)
    assert len(kept) + len(validation) == 300 and sum(fed.setup.num_examples) == len(kept)
    assert len(load_run_source(config, "test")) == 120
    assert fed.accuracy is not None and round(fed.accuracy["accuracy"] * 120, 6) % 1 == 0
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    check = recheck_scores(fed.setup.run_dir, report, config)
    assert not check.problems and check.rounds == 2


def test_invalid_subsample_larger_than_the_split_is_refused_before_anything_is_written(
    tmp_path: Path,
):
    config = RunConfig(run_id="big", out=str(tmp_path / "runs"), test_examples=361)
    with pytest.raises(ConfigError, match="test-examples 361 is more than the 360 examples"):
        prepare_run(config)
    assert not (tmp_path / "runs" / "big").exists()
