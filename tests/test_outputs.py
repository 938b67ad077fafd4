"""What fedchain prints and reads when the run directory is hostile, broken or unfinished.

Issue 16's output cases, each played against the real commands (``ledger show``, ``verify``,
``report``, ``models``) on real ledgers: out-of-range arguments, client-written text that is
rich markup or terminal escapes, model files that are FIFOs or links out of the run directory,
metrics that hold NaN or are garbled, a run in which every client failed, an 80-column
terminal, a deployed federation's participant names, and a run killed before its last round.
"""

# ruff: noqa: F811 - test_report's scored_run fixture is imported and then named as an argument

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner, Result

from fedchain.cli import app
from fedchain.cli.join import SupernodeProgress
from fedchain.crypto.identity import fingerprint, public_key_bytes
from fedchain.deploy import processes
from fedchain.deploy.app import app_digest
from fedchain.deploy.logs import parse_flower_log_line, strip_ansi
from fedchain.errors import ConfigError, FedchainError
from fedchain.ledger.builder import build_block, make_genesis, sign_genesis_participant
from fedchain.ledger.chain import Chain
from fedchain.ledger.consensus import get_proposer
from fedchain.ledger.objects import Rejection
from fedchain.ledger.show import printable
from fedchain.ledger.synthetic import derive_key
from fedchain.runs.federation import (
    add_participant,
    compute_run_config,
    init_federation,
    load_federation,
    make_federation_rules,
)
from fedchain.runs.layout import FEDERATION_FILENAME, RUN_DIRNAME
from fedchain.runs.registration import ParticipantEntry
from fedchain.runs.registry import save_model
from fedchain.runs.tensorfiles import read_regular_file
from tests.test_report import scored_run  # noqa: F401 - scored_run is a fixture

if TYPE_CHECKING:
    from tests.conftest import MakeFederation

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()
HOSTILE_REASON = "bad [/bold] update [link=https://evil.example]click[/link] \x1b[2J\x1b]8;;x\x07"
STAKE = 1_010_512_345  # wide enough that a cut number shows
NAMES = ("alice", "bob", "carol")


def invoke(*args: object, columns: int = 200) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


def assert_one_clean_failure(result: Result, code: int) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------------------
# A deployed federation: FED_DIR/federation.toml beside FED_DIR/run, one round of rejections


@pytest.fixture(scope="module")
def fed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice, bob and carol registered (carol's federation.toml entry then forged to name her
    "mallory" under a broken signature); 4 rounds planned, the ledger killed after round 1, in
    which every client's update was rejected with text a client wrote."""
    fed = tmp_path_factory.mktemp("deployed") / "fed"
    fed_id = init_federation(
        fed, name="fed", settings={"rounds": 4, "min-stake": 1_000}
    ).federation_id
    keys = [derive_key(16, i) for i in range(3)]
    entries = []
    for i, (name, key) in enumerate(zip(NAMES, keys, strict=True)):
        participant = sign_genesis_participant(
            key,
            fed_id,
            stake=STAKE,
            dataset_hash=bytes([i + 1]) * 32,
            num_examples=100 + i,
            name=name,
            app_digest=app_digest(),
        )
        entries.append(ParticipantEntry(participant, fed_id))
        add_participant(fed, entries[-1])
    doc = tomllib.loads((fed / FEDERATION_FILENAME).read_text())
    doc["participants"][2]["name"] = "mallory"
    doc["participants"][2]["signature"] = "00" * 64  # not carol's: her name must not show
    (fed / FEDERATION_FILENAME).write_text(tomli_w.dumps(doc))
    run_dir = fed / RUN_DIRNAME
    initial = save_model(run_dir, {"w": np.zeros(4, np.float32)})
    config = compute_run_config(load_federation(fed), check_participants=False)
    genesis = make_genesis(
        config.run_id,  # the federation's salted run id, which its registrations are signed for
        [e.participant for e in entries],  # the registrations as signed, names included
        initial_model_hash=initial,
        rules=make_federation_rules(config),
    )
    by_public = {public_key_bytes(k): k for k in keys}
    with Chain.create(run_dir / "ledger.db", genesis) as chain:
        state = chain.state
        txs = [Rejection(1, public_key_bytes(k), HOSTILE_REASON) for k in keys]
        chain.append(*build_block(state, txs, by_public[get_proposer(state)], round=1))
    return fed


UNBLOCKER = """
import os, sys, time
fifo, marker, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(delay)
while True:  # open and close the write end whenever someone waits to read it
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        open(marker, "w").close()
    except OSError:
        pass
    time.sleep(0.1)
"""


def run_unblocked(call: Callable[[], Result], fifo: Path, seconds: float = 20.0) -> Result:
    """``call()``, with a separate process that unblocks any read of ``fifo`` still waiting
    after ``seconds`` (the old code's open of a FIFO held the GIL, so no thread of ours
    could); fails if it had to: the old code hung there."""
    marker = fifo.with_name(fifo.name + ".unblocked")
    watchdog = subprocess.Popen([sys.executable, "-c", UNBLOCKER, fifo, marker, str(seconds)])
    try:
        result = call()
    finally:
        watchdog.kill()
        watchdog.wait()
    assert not marker.exists(), f"blocked reading the FIFO {fifo}"
    return result


# --------------------------------------------------------------------------------------------------
# 1. ledger show: out-of-range heights


@pytest.mark.parametrize("value", ["1e20", str(10**30), "-1", "abc"])
def test_invalid_ledger_show_height_is_a_usage_error(fed_dir, value):
    result = invoke("ledger", "show", fed_dir / RUN_DIRNAME, "--from", value)
    assert_one_clean_failure(result, 2)
    assert "--from" in result.output
    result = invoke("ledger", "show", fed_dir / RUN_DIRNAME, "--to", value)
    assert_one_clean_failure(result, 2)


def test_invalid_ledger_show_from_past_the_head(fed_dir):
    result = invoke("ledger", "show", fed_dir / RUN_DIRNAME, "--from", "7")
    assert_one_clean_failure(result, 1)
    assert "past the ledger's head (heights 0..1" in result.output


# --------------------------------------------------------------------------------------------------
# 2. Client-written text is text


def test_printable_escapes_control_characters():
    assert printable("plain [b]x[/b]") == "plain [b]x[/b]"
    assert printable("a\x1b[2Jb\nc\u202ed") == "a\\x1b[2Jb\\nc\\u202ed"


def assert_shown_as_text(output: str) -> None:
    assert "\x1b" not in output and "\x07" not in output
    assert "bad [/bold] update [link=https://evil.example]click[/link]" in output
    assert "\\x1b[2J" in output


def test_ledger_show_prints_client_text_as_text(fed_dir):
    result = invoke("ledger", "show", fed_dir / RUN_DIRNAME)
    assert result.exit_code == 0, result.output
    assert_shown_as_text(result.output)
    as_json = invoke("ledger", "show", fed_dir / RUN_DIRNAME, "--json")
    reasons = [
        tx["reason"]
        for line in as_json.output.splitlines()
        for tx in json.loads(line)["transactions"]
        if tx["type"] == "Rejection"
    ]
    assert reasons == [HOSTILE_REASON] * 3  # JSON keeps the exact text


def test_report_prints_client_text_as_text(fed_dir, tmp_path):
    result = invoke("report", fed_dir / RUN_DIRNAME, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "[/bold] update [link=https://evil.example]click[/link]" in result.output
    page = (tmp_path / "report.html").read_text()
    assert "evil.example" in page and 'href="https://evil.example' not in page


# --------------------------------------------------------------------------------------------------
# 3. Model files that are not regular files of the run


def copy_run(source: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("report.*"))
    return target


def test_invalid_verify_refuses_a_fifo_model_file(scored_run, tmp_path):
    run_dir = copy_run(scored_run, tmp_path)
    victim = sorted((run_dir / "models").iterdir())[0]
    victim.unlink()
    os.mkfifo(victim)
    result = run_unblocked(lambda: invoke("verify", run_dir), victim)
    assert_one_clean_failure(result, 1)
    assert f"{victim.name}: a FIFO (named pipe), not a regular file" in result.output.replace(
        "\n", ""
    )
    shown = lambda: invoke("models", "show", run_dir, victim.name[:16])  # noqa: E731
    result = run_unblocked(shown, victim)
    assert_one_clean_failure(result, 1)


def test_invalid_verify_refuses_a_link_out_of_the_run(scored_run, tmp_path):
    run_dir = copy_run(scored_run, tmp_path)
    victim = sorted((run_dir / "models").iterdir())[0]
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(victim, outside)  # the right bytes, but not the run's own file
    victim.unlink()
    victim.symlink_to(outside)
    result = invoke("verify", run_dir, columns=300)
    assert_one_clean_failure(result, 1)
    assert "outside the run directory" in result.output


def test_verify_follows_a_link_inside_the_run(scored_run, tmp_path):
    run_dir = copy_run(scored_run, tmp_path)
    victim = sorted((run_dir / "models").iterdir())[0]
    (run_dir / "kept").mkdir()
    victim.rename(run_dir / "kept" / victim.name)
    victim.symlink_to(Path("..") / "kept" / victim.name)
    result = invoke("verify", run_dir)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------------------------------
# 4. metrics.json with NaN, Infinity, garbage


def strict_json(text: str) -> dict:  # type: ignore[type-arg]
    """JSON as the standard has it: NaN and Infinity are not JSON (Python would take them)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"report.json holds {constant}")

    return json.loads(text, parse_constant=refuse)  # type: ignore[no-any-return]


def report_json(run_dir: Path) -> dict:  # type: ignore[type-arg]
    return strict_json((run_dir / "report.json").read_text())


def test_report_marks_non_finite_metrics_missing(scored_run, tmp_path):
    run_dir = copy_run(scored_run, tmp_path)
    (run_dir / "metrics.json").write_text(
        '{"rounds": [{"round": 1, "accuracy": NaN, "loss": Infinity},'
        ' {"round": 2, "accuracy": 0.5, "loss": -Infinity, "seconds": 1e999},'
        ' {"round": 3, "accuracy": 0.75, "accepted": 2}]}'
    )
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    data = report_json(run_dir)
    assert [r["accuracy"] for r in data["rounds"]] == [None, 0.5, 0.75]
    (note,) = [n for n in data["notes"] if "not a finite number" in n]
    assert "round 1 accuracy, round 1 loss, round 2 loss, round 2 seconds" in note
    assert "round 1 accuracy" in result.output


@pytest.mark.parametrize(
    "content",
    [b'{"rounds": [{"round": 1, "accu', b"\xff\xfe\x00", b"[" * 100_000, b'{"rounds": 3}'],
)
def test_report_survives_garbled_metrics(scored_run, tmp_path, content):
    run_dir = copy_run(scored_run, tmp_path)
    (run_dir / "metrics.json").write_bytes(content)
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    data = report_json(run_dir)
    assert not data["metrics_available"]
    assert any("metrics.json is unreadable" in n for n in data["notes"])
    assert data["participants"] and data["verification"]["ok"]


def test_report_does_not_hang_on_fifo_inputs(scored_run, tmp_path):
    run_dir = copy_run(scored_run, tmp_path)
    for name in ("metrics.json", "clients/client-000.pub"):
        (run_dir / name).unlink()
        os.mkfifo(run_dir / name)
        result = run_unblocked(lambda: invoke("report", run_dir), run_dir / name)
        assert result.exit_code == 0, result.output
    assert any("FIFO" in n for n in report_json(run_dir)["notes"])


# --------------------------------------------------------------------------------------------------
# 5. A run in which every client failed


@pytest.fixture(scope="module")
def failed_run(
    tmp_path_factory: pytest.TempPathFactory, inprocess_federation: MakeFederation
) -> Path:
    """3 clients x 2 rounds through the real ServerApp logic and ClientApp, in process, with a
    learning rate that makes every update non-finite: every reply is rejected."""
    out = tmp_path_factory.mktemp("failed")
    federation = inprocess_federation(out, run_id="failed", clients=3, rounds=2, lr=1e30)
    with contextlib.suppress(FedchainError):  # the run fails; its directory is what we read
        federation.run()
    return federation.setup.run_dir


def test_report_of_a_run_in_which_every_client_failed(failed_run, tmp_path):
    run_dir = copy_run(failed_run, tmp_path)
    config = (run_dir / "config.toml").read_text()
    (run_dir / "config.toml").write_text(config.replace("lr = 1e+30", "lr = inf"))  # older runs
    result = invoke("report", run_dir, columns=80)
    assert result.exit_code == 0, result.output
    data = report_json(run_dir)
    totals = data["totals"]
    assert totals["accepted_updates"] == 0 and totals["refused_updates"] == 6
    assert totals["rewards_paid"] == 0 and not data["contributions_recorded"]
    assert all(p["contribution"] is None and p["rewards"] == 0 for p in data["participants"])
    assert data["progress"]["finished"] is True and data["progress"]["unfinished"] is None
    page = (run_dir / "report.html").read_text()
    assert 'id="verdict"' in page and "UNFINISHED" not in page


# --------------------------------------------------------------------------------------------------
# 6. 80 columns


def test_report_at_80_columns_shows_whole_numbers(scored_run, tmp_path):
    run_dir = copy_run(scored_run, tmp_path)
    result = invoke("report", run_dir, columns=80)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    tables = result.output.split("rejected updates")[0]  # reasons quote hashes with "…"
    assert "…" not in tables
    data = report_json(run_dir)
    for p in data["participants"]:
        assert f"{p['stake']:,}" in result.output and f"{p['rewards']:,}" in result.output
        assert f"{p['slashed']:,}" in result.output
        if p["contribution"] is not None:
            assert f"{p['contribution']:+.4f}" in result.output
    for r in data["rounds"]:
        assert f"{r['rewards_paid']:,}" in result.output


def test_report_at_80_columns_with_large_stakes(fed_dir, tmp_path):
    result = invoke("report", fed_dir / RUN_DIRNAME, "--out", tmp_path, columns=80)
    assert result.exit_code == 0, result.output
    assert f"{STAKE:,}" in result.output and "…" not in result.output


# --------------------------------------------------------------------------------------------------
# 7. A deployed run names its participants


def test_report_names_registered_participants(fed_dir, tmp_path):
    result = invoke("report", fed_dir / RUN_DIRNAME, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    data = report_json(tmp_path)
    names = {p["name"] for p in data["participants"]}
    carol = fingerprint(public_key_bytes(derive_key(16, 2)))
    assert names == {"alice", "bob", carol}  # the forged entry names nobody
    assert "mallory" not in result.output and "alice" in result.output
    assert {e["name"] for e in data["events"]} == names
    page = (tmp_path / "report.html").read_text()
    assert "alice" in page and "mallory" not in page


# --------------------------------------------------------------------------------------------------
# 8. An unfinished run


def test_verify_says_a_run_is_unfinished(fed_dir):
    result = invoke("verify", fed_dir / RUN_DIRNAME, columns=300)
    assert result.exit_code == 0, result.output
    assert (
        f"unfinished: ledger at round 1 of 4; resume with fedchain coordinator start {fed_dir}"
        in (result.output)
    )


def test_report_says_a_simulated_run_is_unfinished(scored_run, tmp_path):
    run_dir = copy_run(scored_run, tmp_path)
    (run_dir / "config.toml").write_text('[fedchain]\nrun-id = "scored"\nrounds = 10\n')
    line = f"unfinished: ledger at round 3 of 10; resume with fedchain simulate --resume {run_dir}"
    result = invoke("verify", run_dir, columns=300)
    assert result.exit_code == 0 and line in result.output, result.output
    result = invoke("report", run_dir, columns=300)
    assert result.exit_code == 0 and line in result.output, result.output
    progress = report_json(run_dir)["progress"]
    assert progress["ledger_round"] == 3 and progress["planned_rounds"] == 10
    assert not progress["finished"] and progress["unfinished"] == line
    page = (run_dir / "report.html").read_text()
    assert 'id="unfinished"' in page and "UNFINISHED" in page


def test_a_finished_run_is_not_called_unfinished(scored_run, tmp_path):
    run_dir = copy_run(scored_run, tmp_path)
    (run_dir / "config.toml").write_text('[fedchain]\nrun-id = "scored"\nrounds = 3\n')
    result = invoke("verify", run_dir)
    assert result.exit_code == 0 and "unfinished" not in result.output


# --------------------------------------------------------------------------------------------------
# 9. fedchain join: the SuperNode's log without colour codes, one line per round


FLOWER_LINES = [
    "\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode",
    "\x1b[92mINFO \x1b[0m:      SuperNode ID: 42",
    "\x1b[92mINFO \x1b[0m:      ",
    "\x1b[92mINFO \x1b[0m:      [RUN 7]",
    "\x1b[92mINFO \x1b[0m:      Receiving: train message (ID: a1)",
    "\x1b[92mINFO \x1b[0m:      [RUN 7]",
    "\x1b[92mINFO \x1b[0m:      Sending: train message (ID: b1)",
    "\x1b[92mINFO \x1b[0m:      [RUN 7]",
    "\x1b[92mINFO \x1b[0m:      Receiving: query message (ID: c1)",
    "\x1b[92mINFO \x1b[0m:      [RUN 9, ROUND 3]",
    "\x1b[92mINFO \x1b[0m:      Receiving: train message (ID: a2)",
    "\x1b[92mINFO \x1b[0m:      [RUN 9, ROUND 3]",
    "\x1b[92mINFO \x1b[0m:      Sending: train message (ID: b2)",
    "\x1b[93mWARNING \x1b[0m:   link [/bold] lost \x1b[2J\x07",
    "INFO:     Shutting down",
    "\x1b[91mERROR \x1b[0m:     Exit Code: 305",
    "[code: 2004] Failed to activate SuperNode.",
    "",
    "\x1b[92mINFO \x1b[0m:      FastAPI lifespan: shutdown",
    "not shown: no problem before it",
]


def test_join_prints_one_line_per_round():
    progress = SupernodeProgress()
    for line in FLOWER_LINES:
        progress.on_line(line)
    assert [line.split(" (")[0] for line in progress.printed] == [
        "connected to the coordinator",
        "round 1: trained on your data, signed update sent",
        "round 3: trained on your data, signed update sent",
        "warning: link [/bold] lost \\x07",
        "error: Exit Code: 305",
        "  [code: 2004] Failed to activate SuperNode.",
    ]
    assert progress.run_id == 9 and progress.rounds_done == 2


def test_start_process_writes_its_log_without_ansi_codes(tmp_path):
    script = "\n".join(f"print({line!r}, flush=True)" for line in FLOWER_LINES)
    seen: list[str] = []
    process = processes.start_process(
        [sys.executable, "-c", script],
        log_path=tmp_path / "node.log",
        pid_file=tmp_path / "node.pid",
        on_line=seen.append,
    )
    assert processes.wait_exit(process, 30) == 0
    deadline = time.monotonic() + 10
    while len(seen) < len(FLOWER_LINES) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = (tmp_path / "node.log").read_text()
    assert "\x1b" not in log and "\x1b" not in "".join(seen)
    assert log.splitlines() == seen == [strip_ansi(line) for line in FLOWER_LINES]
    assert seen[3] == "INFO :      [RUN 7]" and seen[-1] == FLOWER_LINES[-1]
    assert parse_flower_log_line(seen[4]) == ("INFO", "Receiving: train message (ID: a1)")


def test_verify_at_80_columns_shows_whole_hashes(fed_dir):
    result = invoke("verify", fed_dir / RUN_DIRNAME, columns=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    cells = "".join(
        line.split("│")[2].strip() for line in result.output.splitlines() if line.count("│") == 3
    )
    with Chain.open(fed_dir / RUN_DIRNAME / "ledger.db") as chain:
        assert chain.state.genesis_hash.hex() in cells and chain.state.head_hash.hex() in cells


def test_models_list_at_80_columns_shows_whole_hash_prefixes(scored_run):
    result = invoke("models", "list", scored_run, columns=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    listed = json.loads(invoke("models", "list", scored_run, "--json").output)
    for model in listed:
        assert model["model_hash"][:16] in result.output


def test_invalid_read_regular_file_refuses_what_is_not_a_file_of_the_run(tmp_path):
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    run_dir.mkdir()
    outside.write_bytes(b"x")
    (run_dir / "file").write_bytes(b"ok")
    (run_dir / "inside").symlink_to("file")
    (run_dir / "out").symlink_to(outside)
    (run_dir / "loop").symlink_to("loop")
    os.mkfifo(run_dir / "fifo")
    (run_dir / "dir").mkdir()
    assert read_regular_file(run_dir / "inside", run_dir) == b"ok"
    for name, says in [
        ("out", "outside the run directory"),
        ("loop", "a loop of symbolic links"),
        ("fifo", "a FIFO (named pipe), not a regular file"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            read_regular_file(run_dir / name, run_dir)
    with pytest.raises((ConfigError, IsADirectoryError)):
        read_regular_file(run_dir / "dir", run_dir)
    with pytest.raises(FileNotFoundError):
        read_regular_file(run_dir / "absent", run_dir)


def _people(slashed: int) -> list[dict]:  # type: ignore[type-arg]
    return [
        {
            "name": f"client {i}",
            "fingerprint": str(i) * 16,
            "active": True,
            "stake": 123_456,
            "rewards": 23_456,
            "slashed": slashed if i == 3 else 0,
            "contribution": 0.1234,
            "score_debt": 0.0123,
            "reputation": 1.0,
            "updates": 20,
            "rejections": 0,
            "slashings": 0,
            "epsilon": 3.07,
        }
        for i in range(10)
    ]


@pytest.mark.parametrize(("slashed", "dp"), [(0, True), (5_000, False)])
def test_participants_table_keeps_one_line_a_participant_at_80_columns(monkeypatch, slashed, dp):
    """A narrow terminal shows each name with 8 fingerprint characters on one line; the
    slashed column only when stake was slashed (its zeros folded every name with DP on)."""
    from rich.console import Console

    from fedchain.cli import report as report_cli

    console = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(report_cli, "console", console)
    data: dict = {"participants": _people(slashed)}  # type: ignore[type-arg]
    if dp:
        data["privacy"] = {"delta": 1e-5, "mode": "example", "noise_multiplier": 1.5}
        data["privacy"] |= {"clip_norm": 1.0, "max_epsilon": 8.0, "max_participations": 20}
    console.print(report_cli._participants_table(data))
    lines = console.export_text().splitlines()
    rows = [line for line in lines if line.startswith("client ")]
    assert [row.split()[:3] for row in rows] == [["client", str(i), str(i) * 8] for i in range(10)]
    assert ("slashed" in lines[1]) == bool(slashed) and ("epsilon" in lines[1]) == dp
    assert ("no stake was slashed" in "".join(lines)) == (not slashed)


def _round(i: int, slashed: int) -> dict:  # type: ignore[type-arg]
    return {
        "round": i,
        "accuracy": 0.9612,
        "loss": 0.1234,
        "model_moved": True,
        "accepted": 10,
        "left_out": 0,
        "refused": 0,
        "slashing_events": slashed if i == 2 else 0,
        "rewards_paid": 10_000,
        "pool": {"decision": "paid in part"},
        "left_out_updates": [{"reason": "harmful"}],
        "model_hash": "ab" * 32,
    }


@pytest.mark.parametrize(("width", "slashed"), [(80, 0), (80, 1), (120, 0)])
def test_rounds_table_fits_the_terminal(monkeypatch, width, slashed):
    """At 80 columns every shown column fits uncut: columns of zeros and the reasons and
    model hashes give way (named in the caption), never the numbers or the pool."""
    from rich.console import Console

    from fedchain.cli import report as report_cli

    console = Console(width=width, record=True, file=io.StringIO())
    monkeypatch.setattr(report_cli, "console", console)
    console.print(report_cli._rounds_table([_round(i, slashed) for i in range(1, 4)]))
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= width for line in lines)
    header, rows = lines[1], [line for line in lines if line.lstrip().startswith(("1 ", "2 "))]
    assert len(rows) == 2 and all("paid in" in row and "96.12%" in row for row in rows)
    assert "paid in part" in " ".join(lines) or all(  # wrapped at its space, never cut
        lines[lines.index(row) + 1].rstrip().endswith("part") for row in rows
    )
    assert ("slashed" in header) == bool(slashed) and "refused" not in header
    assert ("why left out" in header) == (width >= report_cli.WIDE_TERMINAL)
    caption = " ".join(lines)
    assert "not shown here: refused" in caption
