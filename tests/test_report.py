"""``fedchain report``: the terminal summary, report.json and report.html, checked in a browser.

Two run directories: a real federation run in process (no Ray: the real ServerApp logic and
ClientApp), and a synthetic ledger that carries everything a report must show (contribution
scores, an update the rule left out, a slashing with its evidence, an ejection, a rejected
update) with real model
files, so that every part of the report is exercised whatever the server records today.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from flwr.common.logger import FLOWER_LOGGER
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.crypto.identity import fingerprint, public_key_bytes
from fedchain.ledger.builder import build_block, make_rules, sign_attestation, sign_commitment
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode
from fedchain.ledger.consensus import detect_double_sign, get_proposer
from fedchain.ledger.objects import (
    DOUBLE_SIGN,
    SCORE_SCALE,
    Block,
    ContributionRecord,
    ModelVersion,
    Rejection,
    RewardDeltas,
    Transaction,
)
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.ledger.verify import verify_ledger
from fedchain.report.decisions import compute_pool_decision, compute_round_decision
from fedchain.rounds.rewards import compute_round_payout
from fedchain.runs.registry import save_model

if TYPE_CHECKING:
    from tests.conftest import MakeFederation

FLOWER_LOGGER.setLevel(logging.ERROR)
runner = CliRunner()

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]
PLOTS = ("plot-accuracy", "plot-contributions", "plot-rewards", "plot-stake")


# --------------------------------------------------------------------------------------------------
# Run directories


@pytest.fixture(scope="module")
def clean_run(
    tmp_path_factory: pytest.TempPathFactory, inprocess_federation: MakeFederation
) -> Path:
    """3 honest clients x 3 rounds through the real ServerApp logic and ClientApp, in process."""
    out = tmp_path_factory.mktemp("clean")
    federation = inprocess_federation(out, run_id="clean", clients=3, rounds=3)
    setup = federation.setup
    metrics: list[dict[str, object]] = []

    def on_round(round_, outcome, accuracy, seconds):  # type: ignore[no-untyped-def]
        metrics.append({"round": round_, "accuracy": accuracy, "seconds": seconds})

    federation.run(report=on_round)
    metrics_file = setup.run_dir / "metrics.json"
    if not metrics_file.exists():  # a coordinator that does not write it yet: as it would
        metrics_file.write_text(json.dumps({"rounds": metrics}))
    return setup.run_dir


# Quantised scores per round, by client index (client 3 is the free rider, later slashed).
SCORES = {
    1: [0.50, 0.30, 0.20, -0.05],
    2: [0.40, 0.35, 0.25],
    3: [0.60, 0.40],
}
REJECTION_REASON = "bad signature [red]on[/] the <b>update</b>"  # markup is shown, not obeyed
RULE_NOTE = "averaged the helpful updates <i>(gain +0.1)</i>"  # shown as text, never as markup
LEFT_OUT_KEY: list[bytes] = []  # set by scored_run: client 3's key
DOUBLE_SIGN_BPS = 5_000


def _digest(*parts: object) -> bytes:
    import hashlib

    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid signed ledger of 4 clients x 3 rounds with scores, a slashing for double signing
    (which ejects client 3), and a rejection (client 2 in round 3); clients 0..2 have .pub
    files."""
    run_dir = tmp_path_factory.mktemp("scored") / "scored"
    initial = save_model(run_dir, {"w": np.zeros(4, np.float32)})
    rules = make_rules(
        min_stake=600,
        reward_per_round=1_000,
        slash_bps={DOUBLE_SIGN: DOUBLE_SIGN_BPS},
        contribution_method="shapley",
        score_debt_decay_bps=0,  # client 3's -0.05 of round 1 stays owed: none forgiven
    )
    fed = SyntheticFederation(
        4, stake=1_000, rules=rules, run_id="scored", initial_model_hash=initial
    )
    keys = fed.keys
    LEFT_OUT_KEY[:] = [public_key_bytes(keys[3])]
    (run_dir / "clients").mkdir()
    for i, key in enumerate(keys[:3]):
        (run_dir / "clients" / f"client-{i:03d}.pub").write_text(public_key_bytes(key).hex())
    with Chain.create(run_dir / "ledger.db", fed.genesis) as chain:
        for round_ in (1, 2, 3):
            state = chain.state
            gh = state.genesis_hash
            active = [k for k in keys if state.participants[public_key_bytes(k)].active]
            txs: list[Transaction] = []
            if state.height >= 1:
                txs += [
                    sign_attestation(k, gh, height=state.height, block_hash=state.head_hash)
                    for k in active
                ]
            committers = [k for k in active if not (round_ == 3 and k is keys[2])]
            if round_ == 2:
                committers.remove(keys[3])
            commits = [
                sign_commitment(
                    k,
                    gh,
                    run_id="scored",
                    round=round_,
                    base_model_hash=state.model_head,
                    update_hash=_digest("update", round_, i),
                    num_examples=100,
                )
                for i, k in enumerate(committers)
            ]
            txs += commits
            if round_ == 2:  # client 3 also attested to a fork of block 1
                fork = sign_attestation(keys[3], gh, height=1, block_hash=_digest("fork"))
                real = sign_attestation(keys[3], gh, height=1, block_hash=state.head_hash)
                evidence = detect_double_sign(fork, real, 2)
                assert evidence is not None
                txs.append(evidence)
            if round_ == 3:
                txs.append(Rejection(3, public_key_bytes(keys[2]), REJECTION_REASON))
            model = save_model(run_dir, {"w": np.full(4, round_, np.float32)})
            # round 1: the rule left out client 3's update (it scored -0.05: harmful)
            used = [c for c in commits if not (round_ == 1 and c.public_key == LEFT_OUT_KEY[0])]
            hashes = tuple(sorted(c.update_hash for c in used))
            txs.append(ModelVersion(round_, model, state.model_head, hashes, "fedavg"))
            scores = tuple(
                sorted(
                    (c.public_key, round(s * SCORE_SCALE))
                    for c, s in zip(commits, SCORES[round_], strict=True)
                )
            )
            txs.append(ContributionRecord(round_, scores))
            payout = compute_round_payout(
                state.carried_reward,
                pool=rules.reward_per_round,
                scores=scores,
                moved=True,
                min_score=rules.payout_min_score,
                debts={key: state.participants[key].score_debt for key, _ in scores},
            )
            txs.append(RewardDeltas(round_, payout.rewards))
            proposer = fed.by_public[get_proposer(state)]
            chain.append(*build_block(state, txs, proposer, round=round_))
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "rounds": [
                    {"round": 0, "accuracy": 0.1, "loss": 2.3, "accepted": 0, "rejected": 0},
                    {
                        "round": 1,
                        "accuracy": 0.62,
                        "loss": 1.1,
                        "accepted": 3,
                        "rejected": 0,
                        "moved": True,
                        "averaged": [],
                        "left_out": {public_key_bytes(keys[3]).hex(): "harmful"},
                        "note": RULE_NOTE,
                    },
                    {"round": 2, "accuracy": 0.78, "loss": 0.7, "accepted": 3, "rejected": 0},
                    {"round": 3, "accuracy": 0.84, "loss": 0.5, "accepted": 2, "rejected": 1},
                ]
            }
        )
    )
    return run_dir


def ledger_transactions(run_dir: Path) -> list[object]:
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        return [tx for s in store.iter_blocks() for tx in decode(Block, s.data).transactions]


def report_of(run_dir: Path, *args: str) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    result = runner.invoke(app, ["report", str(run_dir), *args], env={"COLUMNS": "160"})
    out_dir = Path(args[args.index("--out") + 1]) if "--out" in args else run_dir
    data = json.loads((out_dir / "report.json").read_text()) if result.exit_code in (0, 1) else {}
    return result.exit_code, result.output, data


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page


# --------------------------------------------------------------------------------------------------
# A real run


def test_report_of_a_real_run(clean_run):
    code, output, data = report_of(clean_run)
    assert code == 0, output
    verified = verify_ledger(clean_run)
    assert verified.ok and verified.state is not None
    assert data["verification"]["ok"] and data["verification"]["verdict"] == "verified"
    assert [r["round"] for r in data["rounds"]] == [1, 2, 3] and data["timeline"] == [0, 1, 2, 3]
    for r in data["rounds"]:  # admitted by the ledger = averaged + left out by the rule
        assert r["admitted"] == 3 and r["refused"] == 0
        assert r["accepted"] + r["left_out"] == 3 == r["accepted"] + len(r["left_out_updates"])
        assert r["model_moved"] == (r["accepted"] > 0)
        pool = r["pool"]  # the default payout rule: paid, paid in part or carried, and why
        assert pool["decision"] in ("paid", "paid in part", "carried") and pool["reason"]
        assert pool["paid"] == r["rewards_paid"] == pool["available"] - pool["carried"]
    stakes = {p.public_key.hex(): p.stake for p in verified.state.participants.values()}
    assert {p["public_key"]: p["stake"] for p in data["participants"]} == stakes
    assert [p["name"] for p in data["participants"]] == ["client 0", "client 1", "client 2"]
    for p in data["participants"]:
        assert p["fingerprint"] == fingerprint(bytes.fromhex(p["public_key"]))
        assert p["stake_by_round"][0] == 1_000_000 and p["stake_by_round"][-1] == p["stake"]
        assert p["rewards_by_round"][-1] == p["rewards"]
        assert p["stake"] - 1_000_000 == p["rewards"] - p["slashed"]  # rewards are never < 0
        assert "penalties" not in p
    paid = [r["rewards_paid"] for r in data["rounds"]]
    assert sum(p["rewards"] for p in data["participants"]) == sum(paid) > 0
    assert all(0 <= r <= 10_000 for r in paid)
    assert all(r["accuracy"] is not None and 0 < r["accuracy"] <= 1 for r in data["rounds"])
    assert [m["round"] for m in data["lineage"]] == [0, 1, 2, 3]
    assert all(m["file_present"] for m in data["lineage"])
    packs = sorted((clean_run / "updates").iterdir())
    assert data["archive"] == {
        "update_archive_rounds": -1,
        "policy": "all rounds",
        "files": 3,
        "bytes": sum(p.stat().st_size for p in packs),
    }
    assert data["run"]["rules"]["update_archive_rounds"] == -1
    assert "update archive: 3 files, " in output and "keeps the updates of all rounds" in output
    records = [tx for tx in ledger_transactions(clean_run) if isinstance(tx, ContributionRecord)]
    assert data["contributions_recorded"] == bool(records)
    for record in records:  # each recorded score, unquantised, in its round's column
        for key, score in record.scores:
            (p,) = [p for p in data["participants"] if p["public_key"] == key.hex()]
            assert p["contribution_by_round"][record.round] == score / SCORE_SCALE
    page = (clean_run / "report.html").read_text()
    assert_self_contained(page)
    assert 'id="verdict"' in page and "VERIFIED" in page
    for plot in ("plot-accuracy", "plot-rewards", "plot-stake"):
        assert f'<figure class="plot" id="{plot}"' in page
    assert "verified" in output and "participants" in output and "client 2" in output
    assert str(clean_run / "report.json") in output and str(clean_run / "report.html") in output
    if records:
        assert '<figure class="plot" id="plot-contributions"' in page
    else:
        assert "no contribution scores recorded" in output
        assert "no contribution scores recorded" in page


def test_report_is_deterministic(clean_run, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert report_of(clean_run, "--out", str(first))[0] == 0
    assert report_of(clean_run, "--out", str(second))[0] == 0
    for name in ("report.json", "report.html"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_report_json_only_into_another_folder(clean_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(clean_run, run_dir)
    for name in ("report.json", "report.html", "metrics.json"):
        (run_dir / name).unlink(missing_ok=True)
    out = tmp_path / "out"
    code, output, data = report_of(run_dir, "--out", str(out), "--json-only")
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert not (run_dir / "report.json").exists()
    assert not data["metrics_available"] and all(r["accuracy"] is None for r in data["rounds"])
    assert any("no metrics.json" in note for note in data["notes"])


# --------------------------------------------------------------------------------------------------
# Contributions, left-out updates, slashing, ejection, rejection


def test_report_shows_contributions_rewards_and_slashing(scored_run):
    code, output, data = report_of(scored_run)
    assert code == 0, output
    verified = verify_ledger(scored_run)
    assert verified.ok and verified.state is not None
    by_name = {p["name"]: p for p in data["participants"]}
    unmapped = fingerprint(bytes.fromhex(data["participants"][3]["public_key"]))
    assert list(by_name) == ["client 0", "client 1", "client 2", unmapped]  # no .pub: fingerprint
    stakes = {p.public_key.hex(): p.stake for p in verified.state.participants.values()}
    assert {p["public_key"]: p["stake"] for p in data["participants"]} == stakes
    # contributions: the quantised ledger scores, per round, by client
    assert data["contributions_recorded"]
    assert by_name["client 0"]["contribution_by_round"] == [None, 0.5, 0.4, 0.6]
    assert by_name["client 2"]["contribution_by_round"] == [None, 0.2, 0.25, None]
    assert by_name[unmapped]["contribution_by_round"] == [None, -0.05, None, None]
    assert by_name["client 1"]["contribution"] == pytest.approx(0.3 + 0.35 + 0.4)
    # rewards: the round pools split by positive score; the free rider earns nothing, and is
    # slashed for double signing (a penalty is only ever slashing evidence)
    assert sum(p["rewards"] for p in data["participants"]) == 3 * 1_000
    rider = by_name[unmapped]
    assert rider["rewards"] == 0 and "penalties" not in rider
    before = 1_000
    lost = before * DOUBLE_SIGN_BPS // 10_000  # 500: leaves 500, below the minimum of 600
    assert rider["stake_by_round"] == [1_000, before, before - lost, before - lost]
    assert rider["slashed"] == lost
    assert not rider["active"] and rider["reputation_bps"] < 10_000
    # score debt at the end: the rider's negative score of round 1, never repaid
    assert rider["score_debt_quanta"] == round(0.05 * SCORE_SCALE)
    assert rider["score_debt"] == pytest.approx(0.05)
    assert rider["harm_debt_quanta"] == round(0.04 * SCORE_SCALE)  # the part below -0.01
    assert [by_name[f"client {i}"]["score_debt"] for i in range(3)] == [0.0] * 3
    # events: the slashing with its evidence, the ejection it caused, the rejection
    kinds = [(e["round"], e["kind"], e["name"]) for e in data["events"]]
    assert kinds == [
        (2, "slashed", unmapped),
        (2, "ejected", unmapped),
        (3, "rejected", "client 2"),
    ]
    slash = data["events"][0]
    assert slash["slashing_kind"] == DOUBLE_SIGN and slash["evidence_kind"] == "AttestationPair"
    assert slash["stake_lost"] == rider["slashed"]
    assert _digest("fork").hex() in (
        slash["evidence"]["first_block_hash"],
        slash["evidence"]["second_block_hash"],
    )
    assert "attested to two different blocks at height 1" in slash["reason"]
    assert data["events"][2]["reason"] == REJECTION_REASON
    rounds = {r["round"]: r for r in data["rounds"]}
    assert (rounds[2]["accepted"], rounds[2]["refused"], rounds[2]["slashing_events"]) == (3, 0, 1)
    assert (rounds[3]["accepted"], rounds[3]["refused"]) == (2, 1)
    # round 1: four admitted, three averaged, client 3 left out by the rule, and why
    one = rounds[1]
    assert (one["admitted"], one["accepted"], one["left_out"], one["refused"]) == (4, 3, 1, 0)
    assert one["model_moved"] is True and one["rule_note"] == RULE_NOTE
    (out,) = one["left_out_updates"]
    assert (out["name"], out["reason"], out["score"]) == (unmapped, "harmful", -0.05)
    assert "below" in out["why"]
    assert [r["pool"]["decision"] for r in data["rounds"]] == ["paid"] * 3
    assert data["totals"]["accepted_updates"] == 3 + 3 + 2
    assert data["totals"]["left_out_updates"] == 1 and data["totals"]["refused_updates"] == 1
    assert data["totals"]["rounds_model_moved"] == 3 and "penalties" not in data["totals"]
    assert "harmful 1" in output and "left out" in output
    assert "-0.0500  0.0500" in output and "debt: score debt" in output  # score, debt
    assert data["initial_model"] == {"accuracy": 0.1, "loss": 2.3}  # round 0 of metrics.json
    assert [r["accuracy"] for r in data["rounds"]] == [0.62, 0.78, 0.84]
    assert data["totals"]["ejections"] == 1 and data["totals"]["stake_slashed"] == rider["slashed"]
    # the terminal and the page say the same
    assert "AttestationPair" in output and "ejected" in output
    assert "bad signature [red]on[/] the <b>update</b>" in output
    page = (scored_run / "report.html").read_text()
    assert_self_contained(page)
    for plot in PLOTS:
        assert f'<figure class="plot" id="{plot}"' in page
    assert "<b>update</b>" not in page and "&lt;b&gt;update&lt;/b&gt;" in page
    assert "<i>(gain" not in page and "&lt;i&gt;(gain +0.1)&lt;/i&gt;" in page
    assert '<span class="left-out" title="score below' in page
    assert f"<b>harmful</b>: {unmapped} (-0.05)" in page
    assert '<th class="num">score debt</th>' in page and '<td class="num">0.0500</td>' in page
    assert page.count('<span class="pool-decision">paid: positive scores sum to') == 3
    for text in ("AttestationPair", "double_sign", "ejected"):
        assert text in page


# --------------------------------------------------------------------------------------------------
# Failures


def alter_block(run_dir: Path, height: int) -> None:
    """Flip one byte in the middle of a stored block's encoding."""
    with sqlite3.connect(run_dir / "ledger.db") as conn:
        (data,) = conn.execute("SELECT data FROM blocks WHERE height = ?", (height,)).fetchone()
        altered = bytearray(data)
        altered[len(altered) // 2] ^= 0x01
        conn.execute("UPDATE blocks SET data = ? WHERE height = ?", (bytes(altered), height))
    conn.close()


def test_invalid_altered_ledger_shows_failed_verdict_everywhere(scored_run, tmp_path):
    run_dir = tmp_path / "altered"
    shutil.copytree(scored_run, run_dir)
    for name in ("report.json", "report.html"):
        (run_dir / name).unlink(missing_ok=True)
    alter_block(run_dir, 2)
    code, output, data = report_of(run_dir)
    assert code == 1
    assert "FAILED" in output and "block 2" in output
    v = data["verification"]
    assert not v["ok"] and v["verdict"] == "FAILED" and v["failure"]["height"] == 2
    assert v["first_failure"].startswith("block 2")
    assert data["timeline"] == [0, 1, 2, 3]  # metrics.json still names rounds 2 and 3 ...
    assert all(p["stake_by_round"][2:] == [None, None] for p in data["participants"])  # ... but
    assert [m["round"] for m in data["lineage"]] == [0, 1]  # nothing past block 1 is trusted
    assert [r["admitted"] for r in data["rounds"]] == [4, None, None]
    assert [r["accepted"] for r in data["rounds"]] == [3, None, None]
    assert any("up to block 1" in note for note in data["notes"])
    page = (run_dir / "report.html").read_text()
    assert 'class="verdict failed"' in page and "FAILED" in page and "block 2" in page
    assert_self_contained(page)


def test_invalid_altered_genesis_still_gives_a_report(scored_run, tmp_path):
    run_dir = tmp_path / "genesis"
    shutil.copytree(scored_run, run_dir)
    alter_block(run_dir, 0)
    code, output, data = report_of(run_dir)
    assert code == 1 and "FAILED" in output and "block 0" in output
    assert data["verification"]["failure"]["height"] == 0
    assert data["participants"] == [] and data["lineage"] == []
    page = (run_dir / "report.html").read_text()
    assert 'class="verdict failed"' in page
    assert_self_contained(page)


def test_invalid_model_file_fails_the_verdict(scored_run, tmp_path):
    run_dir = tmp_path / "model-missing"
    shutil.copytree(scored_run, run_dir)
    victim = next((run_dir / "models").glob("*.safetensors"))
    victim.unlink()
    code, output, data = report_of(run_dir, "--json-only")
    assert code == 1 and "FAILED" in output
    assert data["verification"]["ledger_ok"] and not data["verification"]["ok"]
    assert "missing" in data["verification"]["first_failure"]
    assert [m["file_present"] for m in data["lineage"]].count(False) == 1


def test_invalid_directory_without_a_ledger(tmp_path):
    wide = {"COLUMNS": "300"}
    result = runner.invoke(app, ["report", str(tmp_path)], env=wide)
    assert result.exit_code == 1
    assert "ledger.db" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")], env=wide)
    assert result.exit_code == 1 and "not a run directory" in result.output


# --------------------------------------------------------------------------------------------------
# The page in a real browser


def find_chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Chromium is needed to test report.html in a real browser and is not installed: "
            "apt-get install -y chromium (make test installs it when run as root)"
        )
    return found


def chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{name}"
    return subprocess.run(
        [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


@pytest.mark.browser
def test_report_page_renders_in_headless_chromium(scored_run, tmp_path):
    assert report_of(scored_run)[0] == 0
    page = (scored_run / "report.html").resolve()
    # The console check is live: a page that logs an error is caught by it.
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><script>console.error('control error')</script>")
    seen = chromium(tmp_path, "control", "--dump-dom", control.as_uri())
    assert any("control error" in m for m in console_messages(seen.stderr)), seen.stderr[-2000:]

    shot = tmp_path / "report.png"
    result = chromium(
        tmp_path, "shot", f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_messages(result.stderr) == []
    assert shot.is_file() and shot.stat().st_size > 20_000

    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (2400, 1280)
    non_white = (pixels < 235).any(axis=2).mean()
    coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 80).mean()
    assert non_white > 0.05, f"the page looks blank ({non_white:.1%} non-white pixels)"
    assert coloured > 0.005, f"no plots in sight ({coloured:.2%} coloured pixels)"
    assert pixels.reshape(-1, 3).std(axis=0).min() > 10

    dom = chromium(tmp_path, "dom", "--dump-dom", page.as_uri())
    assert dom.returncode == 0 and console_messages(dom.stderr) == []
    for plot in PLOTS:
        start = dom.stdout.index(f'id="{plot}"')
        assert dom.stdout.index("<svg", start) < dom.stdout.index("</figure>", start)
    assert dom.stdout.count("<svg") == len(PLOTS)
    assert "VERIFIED" in dom.stdout and "AttestationPair" in dom.stdout
    # the round decisions render: who was left out and why, the rule's note, the pool
    assert 'class="left-out"' in dom.stdout and "<b>harmful</b>" in dom.stdout
    assert 'class="rule-note"' in dom.stdout and 'class="pool-decision"' in dom.stdout
    assert "each round normalised on its own" in dom.stdout
    # the participants table shows each participant's score debt (the rider owes 0.05)
    table = dom.stdout[dom.stdout.index('id="participants"') :]
    table = table[: table.index("</table>")]
    assert "score debt" in table and "0.0500" in table


def test_heat_map_normalises_each_round_so_late_rounds_stay_readable():
    from fedchain.report.plots import compute_round_shares

    # round 1 scores are 1000x round 3's; unscored cells (NaN) stay unscored
    grid = np.array([[0.5, 0.04, 0.0006], [0.3, -0.01, -0.0002], [0.2, np.nan, 0.0002]])
    shares = compute_round_shares(grid)
    np.testing.assert_allclose(shares[:, 0], [0.5, 0.3, 0.2])
    np.testing.assert_allclose(shares[:2, 1], [0.8, -0.2])
    np.testing.assert_allclose(shares[:, 2], [0.6, -0.2, 0.2])
    assert np.isnan(shares[2, 1])
    assert compute_round_shares(np.zeros((2, 1))).tolist() == [[0.0], [0.0]]


def test_the_pool_decision_says_paid_in_part_or_carried_and_why() -> None:
    """The report re-runs the ledger's payout rule on the round's transactions, from the pool
    carried into the round: paid (everything available), paid in part (scores below the
    minimum), carried (the model did not move: a ModelVersion listing no updates)."""
    a, b, model, parent = (bytes([i]) * 32 for i in (1, 2, 3, 4))
    rules = make_rules(reward_per_round=10_000, payout_min_score=20_000)

    def round_txs(update_hashes: tuple[bytes, ...], scores: tuple[tuple[bytes, int], ...]) -> list:
        version = ModelVersion(5, model, parent, update_hashes, "fedavg")
        record = ContributionRecord(5, scores)
        payout = compute_round_payout(
            2_000, pool=10_000, scores=scores, moved=bool(update_hashes), min_score=20_000
        )
        return [version, record] + ([RewardDeltas(5, payout.rewards)] if payout.rewards else [])

    paid = compute_pool_decision(
        round_txs((a,), ((a, 30_000), (b, 10_000))), carried=2_000, rules=rules
    )
    assert (paid["decision"], paid["paid"], paid["available"], paid["carried"]) == (
        "paid", 12_000, 12_000, 0,
    )  # fmt: skip
    part = compute_pool_decision(round_txs((a,), ((a, 3_000), (b, -5))), carried=2_000, rules=rules)
    assert (part["decision"], part["paid"], part["carried"]) == ("paid in part", 1_800, 10_200)
    assert "below payout_min_score 20000" in part["reason"]
    none = compute_pool_decision(
        round_txs((), ((a, 30_000), (b, 10_000))), carried=2_000, rules=rules
    )
    assert (none["decision"], none["paid"], none["carried"]) == ("carried", 0, 12_000)
    assert "the model did not move" in none["reason"]
    assert compute_pool_decision([], carried=7, rules=rules)["decision"] == "no record"


def test_the_pool_decision_says_when_score_debt_withheld_payment() -> None:
    """A round whose only positive score is a client's that owes more than it scored (an
    attacker's lucky late round): the report replays the rule from the debts the round began
    with, says the pool was carried because no score is payable, and names who repaid debt."""
    a, b, model, parent = (bytes([i]) * 32 for i in (1, 2, 3, 4))
    rules = make_rules(reward_per_round=10_000, payout_min_score=10_000, score_debt_decay_bps=0)
    txs = [ModelVersion(5, model, parent, (a, b), "fedavg"), ContributionRecord(5, ((a, 3_400),))]
    who = {a.hex(): {"name": "node-a", "fingerprint": "fa"}}
    decision = compute_round_decision(txs, None, who, carried=0, rules=rules, debts={a: 12_000})
    pool = decision["pool"]
    assert (pool["decision"], pool["paid"], pool["carried"]) == ("carried", 0, 10_000)
    assert "no score is payable" in pool["reason"] and "score debt" in pool["reason"]
    assert pool["withheld_score"] == pytest.approx(0.0034)
    assert pool["repaying_debt"] == [{"public_key": a.hex(), "name": "node-a"}]
