"""`fedchain verify` on a run directory: checkpoints, archived updates, files newer than the head.

The pre-state is one real in-process run (4 clients, 3 rounds, the real ClientApp and Chain:
blocks 0..4, block 4 the closing block, final height 3). Each attack works on a copy of it, as a
dishonest coordinator holding the run directory (and, in a simulation, the clients' keys) would:
it deletes the ledger's last blocks (SQLite rows, docs/ledger-spec.md), re-signs a different
last round, or alters an archived update. Negative cases are named ``test_invalid_*``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.crypto.identity import load_identity, public_key_bytes
from fedchain.ledger.builder import build_block, sign_attestation
from fedchain.ledger.chain import Chain
from fedchain.ledger.checkpoints import save_checkpoint
from fedchain.ledger.consensus import get_proposer
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.verify import VerifyReport, verify_ledger
from fedchain.runs.archive import UpdateArchive, save_round_updates
from fedchain.runs.layout import (
    LEDGER_FILENAME,
    METRICS_FILENAME,
    MODELS_DIRNAME,
    UPDATES_DIRNAME,
    client_key_path,
)
from fedchain.runs.leftovers import compute_leftover_verdict, find_leftovers
from fedchain.runs.tensorfiles import write_tensors

CLIENTS, ROUNDS = 4, 3
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, inprocess_federation) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("verify-files")
    fed = inprocess_federation(
        out, clients=CLIENTS, rounds=ROUNDS, aggregation="fedavg", contribution="none"
    ).run()
    return fed.setup.run_dir


@pytest.fixture(scope="module")
def honest(run: Path) -> VerifyReport:
    report = verify_ledger(run)
    assert report.ok, report.failure
    assert (report.head_height, report.final_height, report.rounds) == (4, 3, 3)
    return report


@pytest.fixture
def checkpoint(honest: VerifyReport, tmp_path: Path) -> Path:
    """What a data holder saved: the last final block it saw (the run's final height)."""
    path = tmp_path / "holder" / "checkpoint.json"
    path.parent.mkdir()
    final = honest.final_height
    save_checkpoint(path, honest.genesis_hash, Checkpoint(final, honest.block_hashes[final]))
    return path


def copy_run(run: Path, tmp_path: Path) -> Path:
    work = tmp_path / "copy"
    shutil.copytree(run, work)
    return work


def drop_archived_update(run_dir: Path, update_hash: bytes) -> Path:
    """Rewrite the pack holding ``update_hash`` without it (a withheld update); its path."""
    archive = UpdateArchive(run_dir)
    pack = archive.where(update_hash)
    assert pack is not None
    held = archive.read_file(pack)
    del held[update_hash]
    round_ = int(pack.name.removeprefix("round-").split(".")[0])
    return save_round_updates(run_dir, round_, held)


def delete_blocks_above(run_dir: Path, height: int) -> None:
    with closing(sqlite3.connect(run_dir / LEDGER_FILENAME)) as db, db:
        db.execute("DELETE FROM blocks WHERE height > ?", (height,))


def verify(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["verify", *args], env={"COLUMNS": "400"})
    return result.exit_code, result.output


# -- the honest run --------------------------------------------------------------------------------


def test_the_honest_run_verifies_against_its_checkpoint(run: Path, checkpoint: Path) -> None:
    code, output = verify(str(run), "--checkpoint", str(checkpoint))
    assert code == 0, output
    assert "checkpoints" in output and "1 given, up to height 3" in output
    assert f"{ROUNDS * CLIENTS} archived updates match" in output
    assert "warning" not in output


def test_the_verified_report_names_every_committed_update(run: Path, honest: VerifyReport) -> None:
    archived = set(UpdateArchive(run).index)
    assert {h for _, h in honest.update_hashes} == archived
    assert len(list((run / UPDATES_DIRNAME).iterdir())) == ROUNDS  # one file per round
    assert len(honest.block_hashes) == honest.blocks


# -- history shortened or rewritten under a checkpoint ---------------------------------------------


def test_invalid_ledger_truncated_below_the_checkpoint(
    run: Path, checkpoint: Path, tmp_path: Path
) -> None:
    work = copy_run(run, tmp_path)
    delete_blocks_above(work, 2)  # round 3's block and the closing block are gone
    assert verify_ledger(work).ok  # a valid prefix: only the checkpoint can tell
    code, output = verify(str(work), "--checkpoint", str(checkpoint))
    assert code == 1
    assert "no block at height 3" in output and str(checkpoint) in output


def test_invalid_closing_block_deleted_leaves_the_checkpoint_unproven(
    run: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """Block 3 is still there, but the attestations that made it final went with block 4."""
    work = copy_run(run, tmp_path)
    delete_blocks_above(work, 3)
    code, output = verify(str(work))
    assert code == 0, output
    code, output = verify(str(work), "--checkpoint", str(checkpoint))
    assert code == 1
    assert "final only up to height 2, below the checkpoint's height 3" in output


def test_invalid_last_round_rewritten_and_re_signed(
    run: Path, honest: VerifyReport, checkpoint: Path, tmp_path: Path
) -> None:
    """With the simulated clients' keys, a coordinator replaces round 3 (its commitments, model
    and rewards) by an empty block and re-attests it: a valid ledger, but not the history the
    data holder saw as final."""
    work = copy_run(run, tmp_path)
    delete_blocks_above(work, 2)
    keys = {public_key_bytes(k): k for k in (
        load_identity(client_key_path(work, i), None) for i in range(CLIENTS))}  # fmt: skip
    with Chain.open(work / LEDGER_FILENAME) as chain:
        state = chain.state
        forged, post = build_block(state, [], keys[get_proposer(state)], round=ROUNDS)
        chain.append(forged, post)
        votes = [
            sign_attestation(k, post.genesis_hash, height=post.height, block_hash=post.head_hash)
            for k in keys.values()
        ]
        chain.append(*build_block(post, votes, keys[get_proposer(post)], round=ROUNDS))
    report = verify_ledger(work)
    assert report.ok and report.final_height == 3 and report.rounds == ROUNDS
    assert report.block_hashes[3] != honest.block_hashes[3]
    code, output = verify(str(work), "--checkpoint", str(checkpoint))
    assert code == 1
    assert "another block at height 3" in output


def test_invalid_checkpoint_of_another_federation(
    run: Path, honest: VerifyReport, tmp_path: Path
) -> None:
    path = tmp_path / "other.json"
    save_checkpoint(path, bytes(32), Checkpoint(1, honest.block_hashes[1]))
    code, output = verify(str(run), "--checkpoint", str(path))
    assert code == 1 and "another federation" in output


def test_invalid_checkpoint_file_is_one_clear_line(run: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": "fedchain-checkpoint/1"}')
    code, output = verify(str(run), "--checkpoint", str(path))
    assert code != 0 and "not a fedchain checkpoint file" in output


def test_every_checkpoint_given_is_checked(
    run: Path, honest: VerifyReport, checkpoint: Path, tmp_path: Path
) -> None:
    other = tmp_path / "forked.json"
    save_checkpoint(other, honest.genesis_hash, Checkpoint(2, bytes(32)))
    code, output = verify(str(run), "--checkpoint", str(checkpoint), "--checkpoint", str(other))
    assert code == 1 and "another block at height 2" in output and str(other) in output


# -- archived updates are checked by default -------------------------------------------------------


def test_invalid_tampered_archived_update(run: Path, honest: VerifyReport, tmp_path: Path) -> None:
    work = copy_run(run, tmp_path)
    height, victim_hash = honest.update_hashes[0]
    archive = UpdateArchive(work)
    victim = archive.where(victim_hash)
    assert victim is not None
    held = archive.read_file(victim)
    name = next(iter(held[victim_hash]))
    held[victim_hash][name] = held[victim_hash][name].copy()
    held[victim_hash][name].flat[0] += 1  # one weight of one update, its pack rewritten whole
    save_round_updates(work, int(victim.name[6:12]), held)
    code, output = verify(str(work))
    assert code == 1
    assert victim.name in output and f"update named by block {height}" in output
    assert output.count("hashes to") == 1  # the others in its pack still match


def test_invalid_archive_pack_bit_flipped(run: Path, tmp_path: Path) -> None:
    work = copy_run(run, tmp_path)
    pack = sorted((work / UPDATES_DIRNAME).iterdir())[0]
    data = bytearray(pack.read_bytes())
    data[-1] ^= 1  # one bit of the last weight of one of its updates
    pack.write_bytes(bytes(data))
    code, output = verify(str(work))
    assert code == 1 and pack.name in output and "update named by block" in output


def test_invalid_pack_whose_header_claims_an_update_it_does_not_hold(
    run: Path, honest: VerifyReport, tmp_path: Path
) -> None:
    """A pack's header is only an index: a pack that names update X over update Y's tensors (X
    itself withheld) is refused, not trusted for naming X."""
    work = copy_run(run, tmp_path)
    archive = UpdateArchive(work)
    pack = sorted(archive.files)[0]
    held = archive.read_file(pack)
    victim, other = list(held)[:2]
    held[victim] = held[other]  # X's names, Y's weights
    save_round_updates(work, 1, held)
    code, output = verify(str(work))
    assert code == 1 and pack.name in output
    assert f"the update it names {victim.hex()[:16]}… hashes to {other.hex()[:16]}…" in output


def test_invalid_pack_claiming_another_rounds_update_it_does_not_hold(
    run: Path, honest: VerifyReport, tmp_path: Path
) -> None:
    """An update withheld from its round's pack and claimed, with other weights, by a pack of
    another round (the pack's name or round is not what makes an update archived)."""
    work = copy_run(run, tmp_path)
    archive = UpdateArchive(work)
    first, last = sorted(archive.files)[0], sorted(archive.files)[-1]
    victim = archive.files[first][0]
    drop_archived_update(work, victim)
    held = archive.read_file(last)
    held[victim] = next(iter(held.values()))
    save_round_updates(work, ROUNDS, held)
    code, output = verify(str(work))
    assert code == 1 and last.name in output and "hashes to" in output


def test_old_per_update_files_still_verify(run: Path, honest: VerifyReport, tmp_path: Path) -> None:
    """A run written before round packs: one updates/<hash>.safetensors per update."""
    work = copy_run(run, tmp_path)
    archive = UpdateArchive(work)
    for pack in sorted(archive.files):
        for update_hash, arrays in archive.read_file(pack).items():
            write_tensors(work / UPDATES_DIRNAME / f"{update_hash.hex()}.safetensors", arrays)
        pack.unlink()
    code, output = verify(str(work), "--scores")
    assert code == 0, output
    assert f"{ROUNDS * CLIENTS} archived updates match" in output and "warning" not in output
    assert f"scores: {ROUNDS} rounds recomputed" in output


def test_invalid_missing_archived_update(run: Path, honest: VerifyReport, tmp_path: Path) -> None:
    work = copy_run(run, tmp_path)
    _, victim_hash = honest.update_hashes[-1]
    drop_archived_update(work, victim_hash)
    code, output = verify(str(work))
    assert code == 1 and "missing (update named by block" in output


# -- files newer than the ledger's head ------------------------------------------------------------


def test_a_stopped_rounds_files_are_warnings(run: Path, tmp_path: Path) -> None:
    """Blocks 3 and 4 deleted: what is left looks like a run killed in round 3 (its block was
    never sealed), so its model, updates and metrics row are reported as warnings."""
    work = copy_run(run, tmp_path)
    delete_blocks_above(work, 2)
    report = verify_ledger(work)
    leftovers = find_leftovers(work, report)
    assert leftovers.problems == ()
    assert len(leftovers.models) == 1 and leftovers.models[0].parent.name == MODELS_DIRNAME
    assert [p.name for p in leftovers.updates] == ["round-000003.safetensors"]
    assert leftovers.metrics_rounds == (3,)
    code, output = verify(str(work))
    assert code == 0, output
    assert output.count("warning") == 3
    assert "no block registers" in output and "no block names" in output
    assert "round 3, which the ledger does not hold" in output


def test_invalid_metrics_of_rounds_the_ledger_lost(run: Path, tmp_path: Path) -> None:
    work = copy_run(run, tmp_path)
    delete_blocks_above(work, 1)  # rounds 2 and 3 gone; metrics.json still has them
    code, output = verify(str(work))
    assert code == 1
    assert "records rounds up to 3 but the ledger ends at round 1" in output


def test_leftover_verdict_rules() -> None:
    model = [Path("models/a.safetensors")]
    assert compute_leftover_verdict(5, [], [], []) == ((), ())
    problems, warnings = compute_leftover_verdict(5, model, model, [6])
    assert problems == () and len(warnings) == 3
    problems, warnings = compute_leftover_verdict(5, [], [], [6, 7])
    assert len(problems) == 1 and "round 5" in problems[0] and warnings == ()


def test_invalid_unreadable_metrics_is_a_warning_not_a_crash(run: Path, tmp_path: Path) -> None:
    work = copy_run(run, tmp_path)
    (work / METRICS_FILENAME).write_text(json.dumps({"rounds": [{"round": "x"}]}))
    code, output = verify(str(work))
    assert code == 0 and "not a metrics file" in output


def test_a_run_copied_without_its_updates_folder_is_a_warning(run: Path, tmp_path: Path) -> None:
    """Selective deletion fails (above); a run directory without any archive still verifies its
    ledger and models, with a warning that its scores cannot be re-checked."""
    work = copy_run(run, tmp_path)
    shutil.rmtree(work / UPDATES_DIRNAME)
    code, output = verify(str(work))
    assert code == 0, output
    assert "not archived here" in output and "not archived" in output


# -- the federation's retention rule ---------------------------------------------------------------


@pytest.fixture(scope="module")
def last_round_only(tmp_path_factory: pytest.TempPathFactory, inprocess_federation) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("archive-1")
    fed = inprocess_federation(
        out,
        clients=CLIENTS,
        rounds=ROUNDS,
        aggregation="fedavg",
        contribution="none",
        archive_updates="1",
    ).run()
    return fed.setup.run_dir


def test_a_federation_keeping_the_last_round_verifies_and_says_what_is_not_archived(
    last_round_only: Path,
) -> None:
    report = verify_ledger(last_round_only)
    assert report.state is not None and report.state.genesis.rules.update_archive_rounds == 1
    # round 3's block is final: rounds 1 and 2's packs were deleted by the coordinator
    assert [p.name for p in (last_round_only / UPDATES_DIRNAME).iterdir()] == [
        "round-000003.safetensors"
    ]
    code, output = verify(str(last_round_only), "--scores")
    assert code == 0, output
    assert f"{CLIENTS} archived updates match their hashes; {2 * CLIENTS} of rounds 1-2 not" in (
        output
    )
    assert "scores: 1 rounds recomputed" in output
    assert "scores: 2 rounds not archived by policy (the federation keeps the updates of the" in (
        output
    )


def test_invalid_a_kept_rounds_update_withheld_under_a_retention_rule(
    last_round_only: Path, tmp_path: Path
) -> None:
    """The rule excuses only the rounds it drops: the last round's update must be there."""
    work = copy_run(last_round_only, tmp_path)
    victim = UpdateArchive(work).files[work / UPDATES_DIRNAME / "round-000003.safetensors"][0]
    drop_archived_update(work, victim)
    code, output = verify(str(work))
    assert code == 1 and "of round 3 missing" in output and "the last 1 round" in output


def test_a_federation_archiving_no_updates_writes_none(
    tmp_path: Path,
    inprocess_federation,  # type: ignore[no-untyped-def]
) -> None:
    fed = inprocess_federation(
        tmp_path, clients=2, rounds=2, aggregation="fedavg", contribution="none",
        archive_updates="none",
    ).run()  # fmt: skip
    run_dir = fed.setup.run_dir
    assert not (run_dir / UPDATES_DIRNAME).exists()
    code, output = verify(str(run_dir), "--scores")
    assert code == 0, output
    assert "warning" not in output and "0 archived updates match" in output
    assert "scores: 2 rounds not archived by policy" in output
