"""The model registry: content-addressed model files in a run directory, checked against the
models the ledger registers (`fedchain verify RUN_DIR`, `fedchain models list|show`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import ConfigError, RegistryError
from fedchain.ledger.chain import Chain
from fedchain.ledger.store import LEDGER_FILENAME
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.ledger.verify import verify_ledger
from fedchain.runs.layout import MODELS_DIRNAME
from fedchain.runs.registry import (
    ModelEntry,
    check_model_files,
    find_model,
    find_unregistered_files,
    get_lineage,
    list_models,
    load_model,
    model_path,
    save_model,
)

runner = CliRunner()
ENV = {"COLUMNS": "250"}
ROUNDS = 3


def make_model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.standard_normal((8, 5)).astype(np.float32),
        "fc1.bias": rng.standard_normal(8).astype(np.float32),
        "fc2.weight": rng.standard_normal((3, 8)).astype(np.float32),
        "steps": np.array(seed, dtype=np.int64),  # a 0-d tensor
    }


@pytest.fixture(scope="module")
def pristine_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """A run directory: the initial model and 3 rounds' models saved, registered on a ledger."""
    run_dir = tmp_path_factory.mktemp("runs") / "run-1"
    hashes = [save_model(run_dir, make_model(seed)) for seed in range(ROUNDS + 1)]
    federation = SyntheticFederation(3, seed=7, run_id="run-1", initial_model_hash=hashes[0])
    with Chain.create(run_dir / LEDGER_FILENAME, federation.genesis) as chain:
        for model_hash in hashes[1:]:
            chain.append(*federation.make_round(chain.state, model_hash=model_hash))
    return run_dir, hashes


@pytest.fixture
def run(pristine_run, tmp_path) -> tuple[Path, list[bytes]]:
    """A private copy of the run, free to damage."""
    source, hashes = pristine_run
    run_dir = tmp_path / "run-1"
    shutil.copytree(source, run_dir)
    return run_dir, hashes


def verify_cli(path: Path):
    return runner.invoke(app, ["verify", str(path)], env=ENV)


# --------------------------------------------------------------------------------------------------
# save_model / load_model


def test_save_model_is_content_addressed_and_round_trips(tmp_path):
    model = make_model(1)
    model_hash = save_model(tmp_path, model)
    assert model_hash == compute_update_hash(model)
    path = tmp_path / MODELS_DIRNAME / f"{model_hash.hex()}.safetensors"
    assert path == model_path(tmp_path, model_hash) and path.is_file()
    loaded = load_model(tmp_path, model_hash)
    assert loaded.keys() == model.keys()
    for name, array in model.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)


def test_save_model_is_idempotent_and_leaves_no_temporary_files(tmp_path):
    model_hash = save_model(tmp_path, make_model(2))
    path = model_path(tmp_path, model_hash)
    before = path.stat()
    assert save_model(tmp_path, dict(reversed(make_model(2).items()))) == model_hash
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert [p.name for p in (tmp_path / MODELS_DIRNAME).iterdir()] == [path.name]


def test_save_model_stores_non_contiguous_arrays_by_value(tmp_path):
    """safetensors writes memory as is; a transposed view must still round-trip to its hash."""
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    model = {"t": base.T, "strided": base[:, ::2]}
    model_hash = save_model(tmp_path, model)
    loaded = load_model(tmp_path, model_hash)
    np.testing.assert_array_equal(loaded["t"], base.T)
    np.testing.assert_array_equal(loaded["strided"], base[:, ::2])


def test_save_model_replaces_a_damaged_file(tmp_path):
    model_hash = save_model(tmp_path, make_model(3))
    path = model_path(tmp_path, model_hash)
    path.write_bytes(path.read_bytes()[:-4])  # truncated
    assert save_model(tmp_path, make_model(3)) == model_hash
    load_model(tmp_path, model_hash)


def test_invalid_save_model_failure_leaves_neither_file_nor_temporary(tmp_path, monkeypatch):
    def fail_half_way(fd):  # the temporary file is written, not yet durable
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail_half_way)
    with pytest.raises(RegistryError, match="No space left"):
        save_model(tmp_path, make_model(4))
    assert list((tmp_path / MODELS_DIRNAME).iterdir()) == []


def test_invalid_save_model_refuses_what_the_hash_refuses(tmp_path):
    with pytest.raises(ConfigError, match="numpy"):
        save_model(tmp_path, {"w": [1.0, 2.0]})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="dtype"):
        save_model(tmp_path, {"w": np.zeros(2, dtype=np.uint32)})
    with pytest.raises(ConfigError, match="reserves"):
        save_model(tmp_path, {"__metadata__": np.zeros(2, dtype=np.float32)})
    assert not (tmp_path / MODELS_DIRNAME).exists() or not any(
        (tmp_path / MODELS_DIRNAME).iterdir()
    )


def test_invalid_load_model_refuses_a_corrupted_file(tmp_path):
    model_hash = save_model(tmp_path, make_model(5))
    path = model_path(tmp_path, model_hash)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # a tensor byte: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="altered or renamed") as raised:
        load_model(tmp_path, model_hash)
    assert str(path) in str(raised.value)
    path.write_bytes(b"\xff" * 16)  # garbage header
    with pytest.raises(RegistryError, match="not a readable safetensors") as raised:
        load_model(tmp_path, model_hash)
    assert str(path) in str(raised.value)
    path.unlink()
    with pytest.raises(RegistryError, match="no such file"):
        load_model(tmp_path, model_hash)


# --------------------------------------------------------------------------------------------------
# A run: verify, list, show


def test_verify_api_collects_model_versions_and_files_check_out(pristine_run):
    run_dir, hashes = pristine_run
    report = verify_ledger(run_dir)
    assert report.ok, report.failure
    assert report.initial_model_hash == hashes[0]
    assert [(h, v.round, v.model_hash) for h, v in report.model_versions] == [
        (r, r, hashes[r]) for r in range(1, ROUNDS + 1)
    ]
    assert report.model_head == hashes[-1]
    assert check_model_files(run_dir, report) == []
    assert find_unregistered_files(run_dir, report) == []


def test_cli_verify_run_directory_checks_models(pristine_run):
    run_dir, _ = pristine_run
    result = verify_cli(run_dir)
    assert result.exit_code == 0, result.output
    assert "4 model files match their registered hashes and lineage" in result.output
    assert "and every model file" in result.output
    bare = verify_cli(run_dir / LEDGER_FILENAME)
    assert bare.exit_code == 0 and "not checked (ledger file only)" in bare.output


def test_list_models(pristine_run):
    run_dir, hashes = pristine_run
    entries = list_models(run_dir)
    assert [(e.round, e.height, e.model_hash) for e in entries] == [
        (r, r, hashes[r]) for r in range(ROUNDS + 1)
    ]
    assert entries[0].parent_hash is None and entries[0].rule is None and entries[0].is_initial
    assert [e.parent_hash for e in entries[1:]] == hashes[:-1]
    assert all(e.file_present and e.num_updates == 3 for e in entries[1:])
    assert list_models(verify_ledger(run_dir)) == entries  # from a report: no second replay

    table = runner.invoke(app, ["models", "list", str(run_dir)], env=ENV)
    assert table.exit_code == 0, table.output
    for model_hash in hashes:
        assert model_hash.hex()[:16] in table.output
    assert "missing" not in table.output
    as_json = runner.invoke(app, ["models", "list", str(run_dir), "--json"])
    listed = json.loads(as_json.output)
    assert [m["model_hash"] for m in listed] == [h.hex() for h in hashes]
    assert listed[0]["parent_hash"] is None and listed[2]["parent_hash"] == hashes[1].hex()


def test_show_model_by_round_and_by_prefix(pristine_run):
    run_dir, hashes = pristine_run
    by_round = runner.invoke(app, ["models", "show", str(run_dir), "2"], env=ENV)
    assert by_round.exit_code == 0, by_round.output
    out = by_round.output
    assert "model of round 2" in out and hashes[2].hex() in out and "hash verified" in out
    assert all(h.hex()[:16] in out for h in hashes[:3]) and hashes[3].hex()[:16] not in out
    assert "fc1.weight" in out and "8 x 5" in out and "float32" in out and "scalar" in out
    assert "4 tensors, 73 parameters" in out  # 40 + 8 + 24 + 1

    prefix = hashes[1].hex()[:6]
    shown = runner.invoke(app, ["models", "show", str(run_dir), prefix, "--json"])
    document = json.loads(shown.output)
    assert document["round"] == 1 and document["parameters"] == 73
    assert document["lineage"] == [hashes[1].hex(), hashes[0].hex()]
    assert document["file_size"] == model_path(run_dir, hashes[1]).stat().st_size
    initial = runner.invoke(app, ["models", "show", str(run_dir), "0"], env=ENV)
    assert initial.exit_code == 0 and "initial model" in initial.output


def test_invalid_show_unknown_or_ambiguous_model(pristine_run):
    run_dir, hashes = pristine_run
    unknown_prefix = next(p for p in ("aaaa", "bbbb", "cccc") if not hashes_start(hashes, p))
    for spec, message in (
        (unknown_prefix, f"no registered model's hash starts with {unknown_prefix}"),
        ("9", "no model registered in round 9"),
        ("ab", "give a round number or at least 4 hex"),
        ("zzzzzz", "give a round number"),
    ):
        result = runner.invoke(app, ["models", "show", str(run_dir), spec], env=ENV)
        assert result.exit_code == 1 and message in result.output, (spec, result.output)
        assert "Traceback" not in result.output


def hashes_start(hashes: list[bytes], prefix: str) -> bool:
    return any(h.hex().startswith(prefix) for h in hashes)


def entry(round_: int, hex_hash: str) -> ModelEntry:
    model_hash = bytes.fromhex(hex_hash.ljust(64, "0"))
    return ModelEntry(round_, round_, model_hash, None, None, 0, Path("x"), True)


def test_find_model_prefixes_and_rounds():
    entries = [entry(0, "abcd01"), entry(1, "abcd02"), entry(2, "1234ff"), entry(3, "abcd01")]
    assert find_model(entries, "ABCD02") is entries[1]
    assert find_model(entries, "abcd01") is entries[0]  # one model, registered twice: first
    assert find_model(entries, "3") is entries[3]
    assert find_model(entries, "1234") is entries[2]  # no round 1234: the prefix
    with pytest.raises(RegistryError, match="abcd is ambiguous: it matches 2 models"):
        find_model(entries, "abcd")
    assert get_lineage(entries, entries[2]) == [entries[2], entries[1], entries[0]]


def test_invalid_find_model_round_and_prefix_disagree():
    entries = [entry(0, "00aa"), entry(1000, "ff"), entry(1001, "1000ab")]
    with pytest.raises(RegistryError, match="'1000' is ambiguous"):
        find_model(entries, "1000")


# --------------------------------------------------------------------------------------------------
# Damaged runs: `fedchain verify RUN_DIR` fails naming the problem


def test_invalid_verify_missing_model_file(run):
    run_dir, hashes = run
    path = model_path(run_dir, hashes[2])
    path.unlink()
    result = verify_cli(run_dir)
    assert result.exit_code == 1
    assert f"FAILED {path}: missing (round 2 model (block 2))" in " ".join(result.output.split())
    assert "1 problem(s) with 4 registered model files" in result.output
    assert not list_models(run_dir)[2].file_present


def test_invalid_verify_model_file_with_a_flipped_byte(run):
    run_dir, hashes = run
    path = model_path(run_dir, hashes[1])
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 20] ^= 0x40
    path.write_bytes(bytes(data))
    result = verify_cli(run_dir)
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and f"FAILED {path}" in output
    assert "round 1 model" in output


def test_invalid_verify_model_file_renamed_to_another_models_name(run):
    run_dir, hashes = run
    model_path(run_dir, hashes[3]).unlink()
    shutil.copyfile(model_path(run_dir, hashes[2]), model_path(run_dir, hashes[3]))
    result = verify_cli(run_dir)
    output = " ".join(result.output.split())
    assert result.exit_code == 1
    assert (
        f"FAILED {model_path(run_dir, hashes[3])}: holds the round 2 model (block 2), "
        "not the round 3 model (block 3) its name says"
    ) in output


def test_invalid_broken_lineage_is_a_problem(pristine_run):
    """The ledger's state transition refuses a broken lineage, so forge the report instead."""
    run_dir, hashes = pristine_run
    report = verify_ledger(run_dir)
    versions = list(report.model_versions)
    height, version = versions[1]
    versions[1] = (height, dataclasses.replace(version, parent_hash=hashes[0]))
    report = dataclasses.replace(report, model_versions=tuple(versions))
    problems = check_model_files(run_dir, report)
    assert len(problems) == 1 and "round 2 model (block 2): its parent" in problems[0]


def test_unregistered_model_file_is_a_warning_not_a_failure(run):
    run_dir, _ = run
    extra = save_model(run_dir, make_model(99))
    result = verify_cli(run_dir)
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and extra.hex() in result.output
    assert find_unregistered_files(run_dir, verify_ledger(run_dir)) == [model_path(run_dir, extra)]


def test_invalid_models_of_a_ledger_that_fails_verification(run):
    run_dir, _ = run
    with sqlite3.connect(run_dir / LEDGER_FILENAME) as db:
        db.execute("UPDATE blocks SET round=round+1 WHERE height=2")
    with pytest.raises(RegistryError, match="does not verify"):
        list_models(run_dir)
    result = verify_cli(run_dir)
    assert result.exit_code == 1 and "not checked (the ledger did not verify)" in result.output
    listed = runner.invoke(app, ["models", "list", str(run_dir)], env=ENV)
    assert listed.exit_code == 1 and "does not verify" in listed.output
