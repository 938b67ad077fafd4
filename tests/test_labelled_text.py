"""Tests for the ``text`` source (fedchain.data.labelled_text and its loader in sources): CSV and
JSONL files and a tiny BERT tokenizer, all written in tmp_path (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import transformers  # fedchain[nlp], part of the dev extra

from fedchain.data import datafile, keys
from fedchain.data.labelled_text import (
    TEXT_ATTENTION_MASK,
    TEXT_INPUT_IDS,
    TextOptions,
    compute_classes,
)
from fedchain.data.partition import partition
from fedchain.data.sources import load_source
from fedchain.errors import DataSourceError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "the", "is", "very"]
PAD, UNK, CLS, SEP = 0, 1, 2, 3


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT word-piece tokenizer over an 11-word vocabulary, saved as save_pretrained does."""
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(str(vocab)).save_pretrained(str(folder / "saved"))
    return folder / "saved"


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    lines = [header] + [f'"{text}",{label}' for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def load(root: Path, tokenizer_dir: Path, split: str = "train", **options: object):
    return load_source("text", root=root, split=split, text=TextOptions(tokenizer_dir, **options))


def test_csv_file_tokenized_to_fixed_length_ids_and_mask(tmp_path, tokenizer_dir):
    path = write_csv(
        tmp_path / "reviews.csv",
        [("the movie is good", "pos"), ("bad movie", "neg"), ("very very very very good", "pos")],
    )
    ds = load(path, tokenizer_dir, max_length=6)
    assert ds.name == f"text:{path}" and ds.value_max is None
    assert ds.x.shape == (3, 2, 6) and ds.x.dtype == np.int64 and ds.x.flags["C_CONTIGUOUS"]
    assert ds.classes == ("neg", "pos")
    np.testing.assert_array_equal(ds.y, [1, 0, 1])
    ids, mask = ds.x[:, TEXT_INPUT_IDS], ds.x[:, TEXT_ATTENTION_MASK]
    np.testing.assert_array_equal(ids[0], [CLS, 8, 7, 9, 5, SEP])  # exactly fits
    np.testing.assert_array_equal(ids[1], [CLS, 6, 7, SEP, PAD, PAD])  # padded
    np.testing.assert_array_equal(mask[1], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(ids[2], [CLS, 10, 10, 10, 10, SEP])  # cut, SEP kept
    np.testing.assert_array_equal(mask[2], [1] * 6)


def test_ids_are_what_the_tokenizer_itself_gives(tmp_path, tokenizer_dir):
    texts = ["the movie is good", "an unknown word", ""]
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t, "label": "a"} for t in texts])
    ds = load(path, tokenizer_dir, max_length=9)
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    want = tok(texts, padding="max_length", truncation=True, max_length=9)
    np.testing.assert_array_equal(ds.x[:, TEXT_INPUT_IDS], want["input_ids"])
    np.testing.assert_array_equal(ds.x[:, TEXT_ATTENTION_MASK], want["attention_mask"])
    assert UNK in ds.x[1, TEXT_INPUT_IDS]


def test_jsonl_labels_integers_and_strings_are_one_class_sorted_as_numbers(tmp_path, tokenizer_dir):
    rows = [{"text": "good", "label": v} for v in (10, "2", 9, 2, "10")]
    ds = load(write_jsonl(tmp_path / "n.jsonl", rows), tokenizer_dir, max_length=4)
    assert ds.classes == ("2", "9", "10")
    np.testing.assert_array_equal(ds.y, [2, 0, 1, 0, 2])
    assert compute_classes(["b", "10", "a", "9"]) == ("10", "9", "a", "b")  # not all integers


def test_other_column_names(tmp_path, tokenizer_dir):
    path = write_csv(tmp_path / "c.csv", [("good", "x"), ("bad", "y")], header="review,stars")
    ds = load(path, tokenizer_dir, text_column="review", label_column="stars", max_length=4)
    assert ds.classes == ("x", "y") and len(ds) == 2


def test_folder_splits_share_one_class_list(tmp_path, tokenizer_dir):
    """The test file has a label the train file lacks: both splits still number classes alike."""
    write_csv(tmp_path / "train.csv", [("good", "pos"), ("bad", "neg")])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "very bad", "label": "mixed"}])
    train = load(tmp_path, tokenizer_dir, "train", max_length=5)
    test = load(tmp_path, tokenizer_dir, "test", max_length=5)
    every = load(tmp_path, tokenizer_dir, "all", max_length=5)
    assert train.classes == test.classes == every.classes == ("mixed", "neg", "pos")
    np.testing.assert_array_equal(train.y, [2, 1])
    np.testing.assert_array_equal(test.y, [0])
    np.testing.assert_array_equal(every.x, np.concatenate([train.x, test.x]))


def test_fixed_classes_number_labels_and_refuse_others(tmp_path, tokenizer_dir):
    path = write_csv(tmp_path / "c.csv", [("good", "pos"), ("bad", "neg")])
    ds = load(path, tokenizer_dir, classes=("pos", "neutral", "neg"), max_length=4)
    assert ds.classes == ("pos", "neutral", "neg")
    np.testing.assert_array_equal(ds.y, [0, 2])
    with pytest.raises(DataSourceError, match=r"example 2 has label 'neg', which is not one of"):
        load(path, tokenizer_dir, classes=("pos", "neutral"), max_length=4)
    with pytest.raises(DataSourceError, match="distinct"):
        load(path, tokenizer_dir, classes=("pos", "pos", "neg"), max_length=4)


def test_text_through_partition_and_the_encrypted_file(tmp_path, tokenizer_dir):
    """int64 (N, 2, L) x goes through partitioning and an .fcd file unchanged."""
    rows = [(f"{'very ' * (i % 4)}good", "pos" if i % 3 else "neg") for i in range(30)]
    ds = load(write_csv(tmp_path / "c.csv", rows), tokenizer_dir, max_length=7)
    parts = partition(ds.y, 3, "dirichlet", seed=1, alpha=0.5)
    key = keys.create_key_file(tmp_path / "data.key")
    part = ds.subset(parts[0])
    header = datafile.write_dataset(tmp_path / "c0.fcd", part, key)
    assert header.meta.x_dtype == "int64" and header.meta.x_shape == (2, 7)
    back = datafile.load_dataset(tmp_path / "c0.fcd", key)
    assert back.x.dtype == np.int64 and back.classes == ("neg", "pos") and back.value_max is None
    np.testing.assert_array_equal(back.x, part.x)
    np.testing.assert_array_equal(back.y, part.y)


# --- refused input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "", "the file is empty"),
        ("a.csv", "text,label\n", "holds no examples"),
        ("a.jsonl", "", "holds no examples"),
        ("a.jsonl", "\n  \n", "holds no examples"),
        ("a.csv", "words,label\ngood,pos\n", r"no column 'text'; the header has: words, label"),
        ("a.csv", "text,class\ngood,pos\n", r"no column 'label'"),
        ("a.jsonl", '{"text": "good"}\n', r"line 1: no key 'label'; the object has: text"),
        ("a.csv", "text,label\ngood,pos\nbad\n", "line 3: fewer fields"),
        ("a.csv", "text,label\ngood,\n", "line 2: empty label"),
        ("a.csv", "text,label\ngood,  \n", "empty label"),
        (
            "a.jsonl",
            '{"text": "good", "label": null}\n',
            "must be a string or an integer, got null",
        ),
        ("a.jsonl", '{"text": "good", "label": 1.0}\n', "got float"),
        ("a.jsonl", '{"text": "good", "label": true}\n', "got bool"),
        ("a.jsonl", '{"text": "good", "label": ["a"]}\n', "got list"),
        ("a.jsonl", '{"text": 3, "label": "a"}\n', "the text must be a string, got int"),
        ("a.jsonl", '{"text": "good", "label": "a"}\n{"text": \n', "line 2: not valid JSON"),
        ("a.jsonl", '["good", "a"]\n', "must be a JSON object"),
        ("a.txt", "good\tpos\n", r"must end in \.csv or \.jsonl"),
    ],
)
def test_invalid_files_are_refused_clearly(tmp_path, tokenizer_dir, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataSourceError, match=message):
        load(path, tokenizer_dir)


def test_invalid_encoding_and_missing_file(tmp_path, tokenizer_dir):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nmauvais film \xe9t\xe9,neg\n".encode("latin-1"))
    with pytest.raises(DataSourceError, match="not UTF-8"):
        load(path, tokenizer_dir)
    with pytest.raises(DataSourceError, match="does not exist"):
        load(tmp_path / "nowhere.csv", tokenizer_dir)


def test_invalid_folder_layouts(tmp_path, tokenizer_dir):
    write_csv(tmp_path / "train.csv", [("good", "pos")])
    with pytest.raises(
        DataSourceError, match=r"one test file, test\.csv or test\.jsonl; it has neither"
    ):
        load(tmp_path, tokenizer_dir)
    write_csv(tmp_path / "test.csv", [("bad", "neg")])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "bad", "label": "neg"}])
    with pytest.raises(DataSourceError, match="it has both"):
        load(tmp_path, tokenizer_dir)


def test_invalid_one_file_has_no_test_split(tmp_path, tokenizer_dir):
    path = write_csv(tmp_path / "c.csv", [("good", "pos")])
    with pytest.raises(DataSourceError, match="no test split"):
        load(path, tokenizer_dir, "test")
    with pytest.raises(DataSourceError, match="unknown split"):
        load(path, tokenizer_dir, "validation")


def test_invalid_options(tmp_path, tokenizer_dir):
    path = write_csv(tmp_path / "c.csv", [("good", "pos")])
    with pytest.raises(DataSourceError, match=r"--root"):
        load_source("text", text=TextOptions(tokenizer_dir))
    with pytest.raises(DataSourceError, match=r"tokenizer directory is required \(--tokenizer"):
        load_source("text", root=path)
    with pytest.raises(DataSourceError, match="at least 2 tokens"):
        load(path, tokenizer_dir, max_length=1)


def test_invalid_tokenizer_directories(tmp_path):
    path = write_csv(tmp_path / "c.csv", [("good", "pos")])
    with pytest.raises(DataSourceError, match="not a directory"):
        load(path, tmp_path / "no-tokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="cannot load a tokenizer"):
        load(path, tmp_path / "empty")


def test_invalid_tokenizer_without_padding_token(tmp_path, tokenizer_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path / "nopad"))
    path = write_csv(tmp_path / "c.csv", [("good", "pos")])
    with pytest.raises(DataSourceError, match="no padding token"):
        load(path, tmp_path / "nopad")
