"""Bring your own model and fine-tune a pretrained base (issue 14): the task contract, the base
file (read, hashed, refused), the fine-tuning modes and what travels, the BatchNorm policy, the
genesis's model record, a client that refuses a base the genesis does not name, and `verify`'s
base check.

Pre -> op -> post with real torch models, real peft adapters, real files and a real prepared run
delivered to the real ClientApp on an in-process grid. Negative cases are ``test_invalid_*``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from typer.testing import CliRunner

from clients import client_app
from fedchain.cli import app as cli_app
from fedchain.config import RunConfig
from fedchain.crypto.hashing import compute_update_hash
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError, InvalidBlock
from fedchain.learning.architectures import build_model, state_to_numpy, trainable_names
from fedchain.learning.base import compute_base_hash, read_base, read_checked_base, save_base
from fedchain.learning.record import model_from_record
from fedchain.learning.task import load_task
from fedchain.learning.training import TrainConfig, train_local
from fedchain.ledger.builder import make_rules
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.objects import EMPTY_HASH, Genesis, ModelRecord
from fedchain.rounds import messages as m
from fedchain.runs.prepare import RunSetup, prepare_run
from fedchain.runs.registry import load_model
from server.inprocess_grid import NODE_BASE, InProcessGrid
from server.strategy import to_array_record

DIGITS = (1, 8, 8)
runner = CliRunner()


@pytest.fixture(scope="module")
def base_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' cnn base for 5 classes (another class count than the digits' 10)."""
    path = tmp_path_factory.mktemp("base") / "cnn-base.safetensors"
    save_base(build_model("cnn", DIGITS, 5, seed=11), path)
    return path


# -- the task contract --------------------------------------------------------------------------


def test_a_users_task_module_is_built_under_the_seed(tmp_path, monkeypatch):
    (tmp_path / "mytasks").mkdir()
    (tmp_path / "mytasks" / "__init__.py").write_text("")
    (tmp_path / "mytasks" / "tiny.py").write_text(
        "import torch\nfrom torch import nn\nHEAD = 'out'\n"
        "class Tiny(nn.Module):\n"
        "    def __init__(self, d, k):\n"
        "        super().__init__(); self.body = nn.Linear(d, 8); self.out = nn.Linear(8, k)\n"
        "    def forward(self, x):\n"
        "        return self.out(torch.relu(self.body(x.flatten(1))))\n"
        "def build_model(input_shape, num_classes):\n"
        "    return Tiny(int(torch.tensor(input_shape).prod()), num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    a = state_to_numpy(build_model("mytasks.tiny", (6,), 3, seed=4))
    b = state_to_numpy(build_model("mytasks.tiny", (6,), 3, seed=4))
    c = state_to_numpy(build_model("mytasks.tiny", (6,), 3, seed=5))
    assert list(a) == ["body.weight", "body.bias", "out.weight", "out.bias"]
    assert compute_update_hash(a) == compute_update_hash(b) != compute_update_hash(c)
    head = build_model("mytasks.tiny", (6,), 3, seed=4, finetune="head", base=_state(a))
    assert trainable_names(head) == ("out.weight", "out.bias")


def test_invalid_task_modules_are_refused_with_the_reason(tmp_path, monkeypatch):
    (tmp_path / "badtasks").mkdir()
    (tmp_path / "badtasks" / "__init__.py").write_text("")
    (tmp_path / "badtasks" / "nohead.py").write_text("def build_model(s, k):\n    return None\n")
    (tmp_path / "badtasks" / "broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="must define build_model"):
        load_task("badtasks.nohead")
    with pytest.raises(ConfigError, match=r"cannot import task module badtasks\.broken: boom"):
        load_task("badtasks.broken")
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        load_task("resnet")


# -- the base file ------------------------------------------------------------------------------


def test_a_base_hashes_the_same_from_safetensors_and_pth(tmp_path, base_file):
    tensors = read_base(base_file)
    torch.save(tensors, tmp_path / "same.pth")
    assert compute_base_hash(read_base(tmp_path / "same.pth")) == compute_base_hash(tensors)
    assert read_checked_base(base_file, compute_base_hash(tensors)).keys() == tensors.keys()


def test_invalid_base_of_another_hash_is_refused(base_file):
    with pytest.raises(ConfigError, match="refusing to train from another base"):
        read_checked_base(base_file, bytes(range(32)))


def test_invalid_pickled_code_in_a_pth_base_is_refused_and_never_runs(tmp_path):
    """The attacker's base: a .pth whose unpickling would run a shell command."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.zeros(2), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="cannot read base weights"):
        read_base(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("w.bin", b"", "must be a .safetensors or .pth or .pt file"),
        ("w.safetensors", b"not safetensors", "cannot read base weights"),
        ("missing.pth", None, "no such base weights file"),
    ],
)
def test_invalid_base_files(tmp_path, name, content, match):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        read_base(tmp_path / name)


# -- fine-tuning modes: what trains and what travels -------------------------------------------


def test_modes_train_and_send_only_their_tensors(base_file):
    base = read_base(base_file)
    full = build_model("cnn", DIGITS, 10, seed=0, base=base)
    head = build_model("cnn", DIGITS, 10, seed=0, finetune="head", base=base)
    lora = build_model("cnn", DIGITS, 10, seed=0, finetune="lora", lora_rank=2, base=base)
    assert trainable_names(full) == tuple(full.state_dict())
    assert all(n.startswith("classifier.") for n in trainable_names(head))
    assert set(state_to_numpy(head)) == set(trainable_names(head))
    sent = trainable_names(lora)
    assert any("lora_A" in n for n in sent) and any("lora_B" in n for n in sent)
    assert any("classifier" in n for n in sent)  # the head trains in full beside the adapters
    assert not any("base_layer" in n for n in sent)  # the frozen base never travels
    # the backbone is the base's; the head (5 classes in the base, 10 here) starts fresh
    assert torch.equal(full.state_dict()["features.0.weight"], base["features.0.weight"])
    x = torch.rand(4, *DIGITS)
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    train_local(head, _images(16, DIGITS, 10, seed=1), TrainConfig(epochs=1))
    for n, p in head.named_parameters():  # only the head moved
        assert torch.equal(p, before[n]) == (not n.startswith("classifier."))
    # LoRA starts at the base: B is zero, so the adapted model computes what the base does
    plain = build_model("cnn", DIGITS, 10, seed=0, base=base)
    with torch.no_grad():
        lora.eval(), plain.eval()
        _copy_head(plain, lora)
        assert torch.allclose(lora(x), plain(x), atol=1e-6)


def test_batchnorm_statistics_stay_the_bases_and_never_travel():
    model = build_model("resnet18", (1, 16, 16), 4, seed=0)
    stats = {n: b.clone() for n, b in model.named_buffers()}
    train_local(model, _images(12, (1, 16, 16), 4, seed=2), TrainConfig(epochs=1))
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())
    sent = state_to_numpy(model)
    assert not any("running_" in n or "num_batches_tracked" in n for n in sent)
    assert all(a.dtype.name == "float32" for a in sent.values())


def test_invalid_modes_without_a_base_or_with_a_base_that_does_not_fit(base_file):
    with pytest.raises(ConfigError, match="trains part of a pretrained base"):
        build_model("cnn", DIGITS, 10, seed=0, finetune="head")
    with pytest.raises(ConfigError, match="lora-rank"):
        build_model("cnn", DIGITS, 10, seed=0, finetune="lora", base=read_base(base_file))
    with pytest.raises(ConfigError, match="do not fit the model"):
        build_model("mlp", (64,), 10, seed=0, base=read_base(base_file))


# -- the model record on the genesis -----------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (ModelRecord("cnn", "half", 0, EMPTY_HASH, "", "", ("a",)), "unknown fine-tuning mode"),
        (ModelRecord("cnn", "lora", 0, bytes(range(32)), "", "", ("a",)), "lora_rank"),
        (ModelRecord("cnn", "head", 0, EMPTY_HASH, "", "", ("a",)), "names no base"),
        (ModelRecord("cnn", "full", 0, EMPTY_HASH, "", "", ("a", "a")), "named once each"),
        (ModelRecord("cnn", "full", 0, EMPTY_HASH, "", "", ()), "names no trainable"),
        (ModelRecord("cnn", "full", 0, EMPTY_HASH, "", "", ("a",)), "update_bytes"),
        (ModelRecord("", "full", 0, EMPTY_HASH, "", "", (), 8), "update_bytes"),
        (ModelRecord("cnn", "full", 0, EMPTY_HASH, "", "", ("a",), -4), "update_bytes"),
    ],
)
def test_invalid_model_records_make_the_genesis_invalid(record, match):
    genesis = Genesis("r", make_rules(model=record), bytes(32), ())
    with pytest.raises(InvalidBlock, match=match):
        compute_genesis_state(genesis)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, base_file: Path) -> RunSetup:
    out = tmp_path_factory.mktemp("ft")
    base = tmp_path_factory.mktemp("holder") / "base.safetensors"
    base.write_bytes(base_file.read_bytes())
    config = RunConfig(
        run_id="ft",
        out=str(out),
        clients=2,
        rounds=1,
        finetune="lora",
        lora_rank=2,
        base_weights=str(base),
        base_licence="CC0-1.0",
    )
    return prepare_run(config)


def test_the_genesis_records_the_base_and_what_trains(run, base_file):
    record = run.genesis.rules.model
    assert record.architecture == "cnn" and record.finetune == "lora" and record.lora_rank == 2
    assert record.base_hash == compute_base_hash(read_base(base_file))
    assert (record.base_source, record.base_licence) == ("base.safetensors", "CC0-1.0")
    initial = load_model(run.run_dir, run.genesis.initial_model_hash)
    assert sorted(initial) == sorted(record.trainable)  # the initial model: what travels
    rebuilt = model_from_record(record, DIGITS, 10, run.config.base_weights, seed=run.config.seed)
    assert compute_update_hash(state_to_numpy(rebuilt)) == run.genesis.initial_model_hash


def test_invalid_a_model_built_with_other_trainable_tensors_is_refused(run):
    record = run.genesis.rules.model
    other = dataclasses.replace(record, trainable=record.trainable[:-1])
    with pytest.raises(ConfigError, match="trains other tensors than the genesis lists"):
        model_from_record(other, DIGITS, 10, run.config.base_weights)


def test_the_genesis_states_the_update_size_and_a_model_of_another_size_is_refused(run):
    """What leaves a holder is fixed by the contract: the LoRA adapters and head, as float32,
    ``update_bytes`` in all; a model whose tensors have other shapes here (a changed task
    module, say) is refused before it trains."""
    record = run.genesis.rules.model
    initial = load_model(run.run_dir, run.genesis.initial_model_hash)
    assert record.update_bytes == sum(a.nbytes for a in initial.values()) > 0
    other = dataclasses.replace(record, update_bytes=record.update_bytes + 4)
    with pytest.raises(ConfigError, match=r"makes updates of \d+ bytes, the genesis agreed to"):
        model_from_record(other, DIGITS, 10, run.config.base_weights)


def test_verify_checks_the_base_and_the_initial_model_made_from_it(run, tmp_path):
    ok = runner.invoke(cli_app, ["verify", str(run.run_dir)])
    assert ok.exit_code == 0, ok.output
    assert "matches, and round 0's model is made from it" in _flat(ok.output)
    other = tmp_path / "other.safetensors"
    save_base(build_model("cnn", DIGITS, 5, seed=12), other)
    bad = runner.invoke(cli_app, ["verify", str(run.run_dir), "--base-weights", str(other)])
    assert bad.exit_code == 1 and "refusing to train from another base" in _flat(bad.output)


def test_invalid_a_client_refuses_to_train_from_a_base_the_genesis_does_not_name(run):
    """The holder's base file is swapped for another: the client answers with an error, and
    nothing (no update, no commitment) leaves it."""
    state = compute_genesis_state(run.genesis)
    view = m.encode_ledger_view(
        state.genesis_hash, run.genesis.run_id, [compute_genesis_block(run.genesis)], 0, None
    )
    record = ConfigRecord(
        {
            **m.encode_train_settings(run.config, run.run_dir),
            m.SERVER_ROUND: 1,
            m.BASE_MODEL_HASH: run.genesis.initial_model_hash,
            **view,
        }
    )
    model = load_model(run.run_dir, run.genesis.initial_model_hash)
    grid = InProcessGrid(client_app.app, 2)
    content = RecordDict({m.CONFIG: record, m.ARRAYS: to_array_record(model)})
    honest = grid.send_and_receive([Message(content, NODE_BASE + 0, MessageType.TRAIN)])[0]
    assert not honest.has_error() and m.ARRAYS in honest.content
    base = Path(run.config.base_weights)
    kept = base.read_bytes()
    try:
        save_base(build_model("cnn", DIGITS, 5, seed=99), base)
        content = RecordDict({m.CONFIG: record, m.ARRAYS: to_array_record(model)})
        (reply,) = grid.send_and_receive([Message(content, NODE_BASE + 1, MessageType.TRAIN)])
    finally:
        base.write_bytes(kept)
    assert reply.has_error()
    assert "refusing to train from another base" in reply.error.reason


# -- helpers -----------------------------------------------------------------------------------


def _state(arrays: dict) -> dict[str, torch.Tensor]:  # type: ignore[type-arg]
    return {n: torch.from_numpy(a) for n, a in arrays.items()}


def _copy_head(plain: torch.nn.Module, lora: torch.nn.Module) -> None:
    """Give ``plain`` the LoRA model's (trainable copy of the) head."""
    for name, p in lora.named_parameters():
        if ".modules_to_save.default." in name:
            target = name.split("base_model.model.", 1)[1].replace(".modules_to_save.default", "")
            plain.state_dict()[target].copy_(p)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _images(n: int, shape: tuple[int, ...], classes: int, seed: int) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = rng.integers(0, classes, size=n).astype(np.int64)
    return ArrayDataset("random", x, y, tuple(str(c) for c in range(classes)), 255.0)
