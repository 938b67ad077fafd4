"""Fine-tuning as a new user runs it, through the commands alone, each in its own process: a
tiny BERT saved with ``save_pretrained`` (randomly initialised here: never a download) and a
word-piece tokenizer in a folder, a JSONL text data set, then ``fedchain simulate --dataset text
--model fedchain.tasks.text --finetune lora --base-weights …`` and ``fedchain verify --scores``,
which re-checks the base, the initial model made from it and every round.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch

from fedchain.learning.base import compute_base_hash, read_base
from fedchain.ledger.verify import verify_ledger
from tests.test_anchor_serve import ENV, fedchain

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "bad", "awful", "film"]


def make_text_task(folder: Path) -> tuple[Path, Path, Path]:
    """(tokenizer dir, model dir, data dir): what a user brings."""
    import transformers

    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder / "tok"))
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,  # the base's head has another class count: it starts fresh
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder / "bert"))
    rng = random.Random(0)
    (folder / "data").mkdir()
    for split, n in (("train", 120), ("test", 40)):
        rows = []
        for _ in range(n):
            positive = rng.random() < 0.5
            words = [rng.choice(VOCAB[5:7] if positive else VOCAB[7:9]), "film"]
            rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
        (folder / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "tok", folder / "bert", folder / "data"


def test_a_text_federation_fine_tunes_a_local_bert_with_lora_and_verifies(tmp_path: Path) -> None:
    tokenizer, model_dir, data = make_text_task(tmp_path)
    base = model_dir / "model.safetensors"
    run = subprocess.run(
        fedchain(
            "simulate", "--dataset", "text", "--data-root", str(data), "--tokenizer",
            str(tokenizer), "--max-length", "8", "--model", "fedchain.tasks.text",
            "--finetune", "lora", "--lora-rank", "2", "--base-weights", str(base),
            "--base-licence", "Apache-2.0", "--clients", "2", "--rounds", "2",
            "--contribution-budget", "4", "--out", str(tmp_path / "runs"), "--run-id", "bert",
        ),
        env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = verify_ledger(tmp_path / "runs" / "bert")
    assert report.ok and report.rounds == 2
    assert report.state is not None
    record = report.state.genesis.rules.model
    assert record.architecture == "fedchain.tasks.text" and record.finetune == "lora"
    assert record.base_hash == compute_base_hash(read_base(base))
    assert record.base_licence == "Apache-2.0"
    assert any("lora_A" in name for name in record.trainable)
    assert not any("word_embeddings" in name for name in record.trainable)  # frozen: stays home
    verified = subprocess.run(
        fedchain("verify", str(tmp_path / "runs" / "bert"), "--scores"),
        env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    said = " ".join((verified.stdout + verified.stderr).split())
    assert verified.returncode == 0, said
    assert "round 0's model is made from it" in said and "2 rounds recomputed" in said
