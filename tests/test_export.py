"""``fedchain models export`` and the model card: a registered model leaves fedchain as a plain
torch state dict (LoRA merged) with its card, and ``fedchain report`` writes the card beside its
page.

Real runs (the real ServerApp logic and ClientApp, in process), real torch and peft models, real
files; the exported files are loaded with plain torch and safetensors into the architecture the
task module builds. Negative cases are ``test_invalid_*``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common.logger import FLOWER_LOGGER
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.crypto import identity
from fedchain.errors import ConfigError
from fedchain.learning.architectures import build_model, trainable_names
from fedchain.learning.base import read_base, save_base
from fedchain.learning.task import build_task_model, load_task
from fedchain.ledger.objects import ModelRecord
from fedchain.ledger.verify import verify_ledger
from fedchain.report.build import build_report
from fedchain.report.card import compute_card, render_card_markdown
from fedchain.runs.export import (
    build_version_model,
    check_export_base,
    compute_export_tensors,
    make_export_folder,
    write_export_file,
)
from fedchain.runs.registry import list_models, load_model
from tests.test_report import alter_block

if TYPE_CHECKING:
    from tests.conftest import MakeFederation

FLOWER_LOGGER.setLevel(logging.ERROR)
runner = CliRunner()
DIGITS = (1, 8, 8)
CLASSES = 10


@pytest.fixture(scope="module")
def base_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' cnn base for 5 classes (the digits have 10: the head starts fresh)."""
    path = tmp_path_factory.mktemp("base") / "cnn-base.safetensors"
    save_base(build_model("cnn", DIGITS, 5, seed=11), path)
    return path


@pytest.fixture(scope="module")
def lora_run(
    tmp_path_factory: pytest.TempPathFactory, inprocess_federation: MakeFederation, base_file: Path
) -> Path:
    """2 clients x 1 round fine-tuning the base with LoRA of rank 2."""
    out = tmp_path_factory.mktemp("lora")
    federation = inprocess_federation(
        out,
        run_id="lora",
        clients=2,
        rounds=1,
        finetune="lora",
        lora_rank=2,
        base_weights=str(base_file),
        base_source="cnn-base (test)",
        base_licence="CC0-1.0",
    )
    return federation.run().setup.run_dir


@pytest.fixture(scope="module")
def full_run(
    tmp_path_factory: pytest.TempPathFactory, inprocess_federation: MakeFederation
) -> Path:
    """2 clients x 1 round training the cnn in full from its seeded initialisation; its
    contract lets one key besides the participants be given its models."""
    out = tmp_path_factory.mktemp("full")
    federation = inprocess_federation(
        out, run_id="full", clients=2, rounds=1, model_access=LISTED.hex()
    )
    return federation.run().setup.run_dir


LISTED = identity.public_key_bytes(Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32))
OUTSIDER = identity.public_key_bytes(Ed25519PrivateKey.from_private_bytes(bytes([6]) * 32))


def export(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["models", "export", *args])
    return result.exit_code, " ".join(result.output.replace("\u2502", " ").split())  # no box


def fedchain_logits(run_dir: Path, round_: int, base: Path | None, x: torch.Tensor) -> torch.Tensor:
    """The logits of fedchain's own model of that round's version (built from the record)."""
    report = verify_ledger(run_dir)
    assert report.state is not None
    record = report.state.genesis.rules.model
    (entry,) = [e for e in list_models(report) if e.round == round_]
    arrays = load_model(run_dir, entry.model_hash)
    model = build_version_model(record, arrays, DIGITS, CLASSES, base, seed=0)
    with torch.no_grad():
        return model(x)


def plain_logits(architecture: str, state_file: Path, x: torch.Tensor) -> torch.Tensor:
    """The logits of the plain architecture (no peft) with the exported state dict loaded
    strictly by plain torch and safetensors."""
    model = build_task_model(load_task(architecture), DIGITS, CLASSES, seed=123)
    model.load_state_dict(load_file(str(state_file)), strict=True)
    with torch.no_grad():
        return model.eval()(x)


# -- the exported model ----------------------------------------------------------------------


def test_a_full_model_exports_as_a_plain_state_dict_with_the_same_logits(full_run, tmp_path):
    code, output = export(str(full_run), "1", "--out", str(tmp_path / "e"))
    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "card.json",
        "card.md",
        "model.safetensors",
    ]
    x = torch.rand(6, *DIGITS)
    exported = plain_logits("cnn", tmp_path / "e" / "model.safetensors", x)
    assert torch.allclose(exported, fedchain_logits(full_run, 1, None, x), atol=1e-6)
    card = json.loads((tmp_path / "e" / "card.json").read_text())
    assert card["model"]["base_hash"] is None and card["version"]["round"] == 1
    assert card["input"]["shape"] == list(DIGITS) and len(card["input"]["classes"]) == CLASSES
    assert card["input"]["value_max"] > 0
    assert (
        "- one example: 1 x 8 x 8; raw values divided by"
        in (tmp_path / "e" / "card.md").read_text()
    )
    assert card["verification"]["verdict"] == "verified"


def test_a_lora_model_exports_merged_into_the_plain_architecture(lora_run, base_file, tmp_path):
    out = tmp_path / "lora-export"
    code, output = export(str(lora_run), "--out", str(out))  # default: the latest version
    assert code == 0, output
    state = load_file(str(out / "model.safetensors"))
    assert not any("lora" in n or "base_layer" in n or "modules_to_save" in n for n in state)
    assert any("running_mean" in n for n in state) or "features.0.weight" in state
    x = torch.rand(6, *DIGITS)
    exported = plain_logits("cnn", out / "model.safetensors", x)
    assert torch.allclose(exported, fedchain_logits(lora_run, 1, base_file, x), atol=1e-5)
    # the version really moved away from the base: the merged weights are not the base's
    base = load_file(str(base_file))
    assert not torch.equal(state["features.0.weight"], base["features.0.weight"])
    # the adapters, apart: exactly the tensors the ledger's hash covers
    record = verify_ledger(lora_run).state.genesis.rules.model  # type: ignore[union-attr]
    adapters = load_file(str(out / "adapters.safetensors"))
    assert sorted(adapters) == sorted(record.trainable)
    latest = list_models(lora_run)[-1]
    registered = load_model(lora_run, latest.model_hash)
    assert all(torch.equal(adapters[n], torch.from_numpy(registered[n])) for n in registered)


def test_the_card_names_the_model_base_rules_data_contributors_and_verdict(lora_run, tmp_path):
    out = tmp_path / "card"
    assert export(str(lora_run), "--out", str(out))[0] == 0
    card = json.loads((out / "card.json").read_text())
    verified = verify_ledger(lora_run)
    genesis = verified.state.genesis  # type: ignore[union-attr]
    record = genesis.rules.model
    assert card["model"] == {
        "architecture": "cnn",
        "finetune": "lora",
        "lora_rank": 2,
        "base_hash": record.base_hash.hex(),
        "base_source": "cnn-base (test)",
        "base_licence": "CC0-1.0",
        "trainable": len(record.trainable),
    }
    assert card["version"]["model_hash"] == verified.model_head.hex() and card["version"]["latest"]
    assert card["rules"]["aggregation_rule"] == genesis.rules.aggregation_rule
    assert card["rules"]["differential_privacy"] is None
    assert {d["dataset_hash"] for d in card["datasets"]} == {
        p.dataset_hash.hex() for p in genesis.participants
    }
    assert card["examples"] == sum(p.num_examples for p in genesis.participants)
    shares = [c["reward_share"] for c in card["contributors"]]
    assert len(shares) == 2 and abs(sum(shares) - 1) < 1e-9
    assert card["ledger"] == {
        "head_height": verified.head_height,
        "head_hash": verified.head_hash.hex(),
    }
    assert card["verification"] == {"verdict": "verified", "first_failure": None}
    files = {f["name"]: f for f in card["files"]}
    assert set(files) == {"model.safetensors", "adapters.safetensors"}
    for name, f in files.items():
        assert f["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    text = (out / "card.md").read_text()
    assert record.base_hash.hex() in text and "base licence: CC0-1.0" in text
    assert "verification: verified" in text and "| client 0 | 6" in text
    assert card["rules"]["harm_debt_decay_bps"] == genesis.rules.harm_debt_decay_bps
    harm = genesis.rules.harm_debt_decay_bps
    said = "never forgiven" if harm == 0 else f"{harm / 100:g} % forgiven a round"
    assert f"harm (the part of a score below -0.01) is {said}" in text


def test_invalid_a_hostile_name_cannot_inject_markdown_or_html_into_the_card(lora_run):
    report = build_report(lora_run)
    report["participants"][0]["name"] = "<img src=x onerror=alert(1)>\n# [click](http://x) `a|b`"
    text = render_card_markdown(compute_card(report))
    rows = [line for line in text.splitlines() if "img" in line]
    safe = "| &lt;img src=x onerror=alert(1)&gt; # \\[click\\](http://x) \\`a\\|b\\` | "
    assert len(rows) == 2 and all(row.startswith(safe) for row in rows)  # data, contributors
    assert "<img" not in text and "\n# [" not in text


def test_report_writes_the_card_beside_its_page_and_links_it(lora_run, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(lora_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert '<a href="card.md">' in page and '<a href="card.json">' in page
    card = json.loads((out / "card.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert card["version"]["model_hash"] == report["lineage"][-1]["model_hash"]
    assert card["model"]["base_licence"] == "CC0-1.0" and "CC0" in page


# -- refusals --------------------------------------------------------------------------------


def test_a_model_is_exported_only_to_whom_the_contract_allows(full_run, tmp_path):
    """The genesis's model-access rule: a participant or a listed key may be given the model
    (the card records for whom); any other key is refused, and nothing is written."""
    participant = full_run / "clients" / "client-000.pub"
    cases = {
        "p": (str(participant), identity.load_public_key(participant)),
        "listed": (LISTED.hex(), LISTED),
    }
    for name, (recipient, key) in cases.items():
        code, output = export(
            str(full_run), "--out", str(tmp_path / name), "--recipient", recipient
        )
        assert code == 0, output
        assert f"for {identity.fingerprint(key)}" in output
        card = json.loads((tmp_path / name / "card.json").read_text())
        assert card["recipient"] == key.hex()
        assert card["rules"]["model_access"] == [LISTED.hex()]
        assert "and 1 other keys" in (tmp_path / name / "card.md").read_text()
    code, output = export(
        str(full_run), "--out", str(tmp_path / "x"), "--recipient", OUTSIDER.hex()
    )
    assert code != 0 and "may not be given this federation's models" in output
    assert "its 2 participants and 1 other key have them" in output
    assert not (tmp_path / "x").exists()


def test_invalid_a_missing_base_is_refused_and_nothing_is_written(lora_run, base_file, tmp_path):
    record = verify_ledger(lora_run).state.genesis.rules.model  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"give your copy of the base weights file \(--base"):
        check_export_base(record, None)
    moved = tmp_path / "moved.safetensors"
    base_file.rename(moved)  # the run's config names a base file that is not there
    try:
        code, output = export(str(lora_run), "--out", str(tmp_path / "e"))
    finally:
        moved.rename(base_file)
    assert code == 1 and "no such base weights file" in output, output
    assert not (tmp_path / "e").exists()


def test_invalid_a_base_of_another_hash_is_refused(lora_run, tmp_path):
    other = tmp_path / "other.safetensors"
    save_base(build_model("cnn", DIGITS, 5, seed=12), other)
    out = tmp_path / "e"
    code, output = export(str(lora_run), "--out", str(out), "--base-weights", str(other))
    assert code == 1 and "refusing to export the model joined to another base" in output
    assert not out.exists()


def test_invalid_out_that_is_a_file_a_link_or_not_empty_is_refused(full_run, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_text("keep me too")
    for out, match in (
        (victim, "exists and is not a folder"),
        (link, "is a symbolic link"),
        (full, "is not empty"),
    ):
        code, output = export(str(full_run), "--out", str(out))
        assert code == 1 and match in output, output
    assert victim.read_text() == "keep me"
    assert (full / "model.safetensors").read_text() == "keep me too"
    assert not any((tmp_path / "elsewhere").iterdir())


def test_invalid_a_link_planted_in_the_folder_is_never_written_through(tmp_path):
    """The race the folder check cannot close: a link takes a file's name after the check."""
    out = make_export_folder(tmp_path / "e")
    target = tmp_path / "target"
    target.write_text("keep me")
    os.symlink(target, out / "model.safetensors")
    with pytest.raises(ConfigError, match="exists; an export overwrites nothing"):
        write_export_file(out, "model.safetensors", b"data", "test")
    assert target.read_text() == "keep me"
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]  # no temporary file left


def test_the_initial_model_of_a_lora_run_is_the_base_with_a_fresh_head(
    lora_run, base_file, tmp_path
):
    out = tmp_path / "round0"
    assert export(str(lora_run), "0", "--out", str(out))[0] == 0
    x = torch.rand(6, *DIGITS)
    exported = plain_logits("cnn", out / "model.safetensors", x)
    assert torch.allclose(exported, fedchain_logits(lora_run, 0, base_file, x), atol=1e-5)
    state, base = load_file(str(out / "model.safetensors")), load_file(str(base_file))
    assert torch.equal(state["features.0.weight"], base["features.0.weight"])  # B starts at 0
    card = json.loads((out / "card.json").read_text())
    assert card["version"]["round"] == 0 and not card["version"]["latest"]


def test_invalid_an_altered_ledger_or_model_file_is_refused(full_run, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(full_run, altered)
    alter_block(altered, 1)
    code, output = export(str(altered), "--out", str(tmp_path / "a"))
    assert code == 1 and "the ledger does not verify" in output, output
    swapped = tmp_path / "swapped"
    shutil.copytree(full_run, swapped)
    initial, latest = (e.path.name for e in (list_models(full_run)[0], list_models(full_run)[-1]))
    (swapped / "models" / latest).write_bytes((swapped / "models" / initial).read_bytes())
    code, output = export(str(swapped), "--out", str(tmp_path / "s"))
    assert code == 1 and "the file was altered or renamed" in output, output
    assert not (tmp_path / "a").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize(("mode", "rank"), [("head", 0), ("lora", 2)])
def test_a_torchvision_model_with_batchnorm_exports_its_bases_statistics(tmp_path, mode, rank):
    """resnet18 fine-tuned from a base whose BatchNorm statistics are not the defaults: the
    export carries the frozen backbone and the statistics, so plain torch computes the logits
    fedchain's model does."""
    shape, classes = (1, 16, 16), 4
    pretrained = build_model("resnet18", shape, 5, seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buffer in pretrained.named_buffers():
            if "running_" in name:
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    base_path = tmp_path / "resnet-base.safetensors"
    base_hash = save_base(pretrained, base_path)
    model = build_model(
        "resnet18", shape, classes, seed=0, finetune=mode, lora_rank=rank, base=read_base(base_path)
    )
    with torch.no_grad():  # as if trained: every tensor that travels moves
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    record = ModelRecord("resnet18", mode, rank, base_hash, "", "", trainable_names(model))
    x = torch.rand(3, *shape, generator=generator)
    with torch.no_grad():
        expected = model.eval()(x)
    state = compute_export_tensors(model, record)["model.safetensors"]
    plain = build_task_model(load_task("resnet18"), shape, classes, seed=9)
    plain.load_state_dict(state, strict=True)
    assert torch.equal(state["bn1.running_mean"], read_base(base_path)["bn1.running_mean"])
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), expected, atol=1e-4)


def test_the_card_of_a_private_federation_states_its_privacy(
    tmp_path: Path, inprocess_federation: MakeFederation
) -> None:
    fed = inprocess_federation(
        tmp_path / "dp", run_id="dp", clients=2, rounds=1, model="mlp", aggregation="fedavg",
        contribution="none", dp="client", dp_noise=2.0, dp_clip=1.0, dp_delta=1e-5,
        dp_max_epsilon=8.0,
    ).run()  # fmt: skip
    out = tmp_path / "e"
    code, output = export(str(fed.setup.run_dir), "--out", str(out))
    assert code == 0, output
    card = json.loads((out / "card.json").read_text())
    dp = card["rules"]["differential_privacy"]
    assert dp["mode"] == "client" and dp["noise_multiplier"] == 2.0 and dp["max_epsilon"] == 8.0
    assert "clients" not in dp and all(c["epsilon"] > 0 for c in card["contributors"])
    text = (out / "card.md").read_text()
    assert "differential privacy: client level, noise multiplier 2.0" in text
    assert "| share | epsilon |" in text
    state = load_file(str(out / "model.safetensors"))
    plain = build_task_model(load_task("mlp"), (64,), CLASSES, seed=1)
    plain.load_state_dict(state, strict=True)  # a built-in task: the mlp, from plain torch
