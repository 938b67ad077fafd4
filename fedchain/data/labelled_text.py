"""Labelled text from a local CSV or JSONL file, tokenized into fixed-length token ids.

What a sequence classifier (BERT and its kin) takes, as one integer array per data set, so that
partitioning, the encrypted ``.fcd`` files and the ledger's data commitments handle text exactly
as they handle images: ``x`` is ``int64`` of shape ``(N, 2, max_length)``, where
``x[:, TEXT_INPUT_IDS]`` holds the token ids and ``x[:, TEXT_ATTENTION_MASK]`` the attention
mask (1 for a token, 0 for padding). The mask travels with the ids because the padding id alone
does not say where a text ends for every tokenizer (some pad with their end-of-text token).

The tokenizer comes from a local directory only (``AutoTokenizer.from_pretrained(dir,
local_files_only=True)``): nothing is downloaded. ``transformers`` is the optional extra
``fedchain[nlp]`` and is imported only here, only when text is loaded.

Files: CSV with a header row (UTF-8, an Excel byte-order mark is fine) or JSON Lines (one object
per line, blank lines skipped), chosen by the suffix ``.csv`` or ``.jsonl``. Labels are names:
strings, or integers in JSONL, both kept as their text (``1`` and ``"1"`` are one class). The
class list is every label name found, sorted (numerically when every name is an integer, so
``"10"`` follows ``"9"``), and a label's value is its place in that list.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedchain.errors import DataSourceError

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "TEXT_ATTENTION_MASK",
    "TEXT_INPUT_IDS",
    "TEXT_SUFFIXES",
    "TextOptions",
    "compute_classes",
    "compute_label_values",
    "read_labelled_text",
    "read_text_source",
    "tokenize",
]

TEXT_INPUT_IDS = 0
TEXT_ATTENTION_MASK = 1
DEFAULT_MAX_LENGTH = 128
TEXT_SUFFIXES = (".csv", ".jsonl")

_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class TextOptions:
    """How to read and tokenize a text source.

    ``tokenizer`` is the local tokenizer directory. ``classes``, when given, fixes the class
    list (and so every label's value) instead of taking it from the files: what a federation
    needs when each holder's file may lack some labels. A label outside it is refused.
    """

    tokenizer: Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = DEFAULT_MAX_LENGTH
    classes: tuple[str, ...] | None = None


def read_labelled_text(
    path: Path, text_column: str, label_column: str
) -> tuple[list[str], list[str]]:
    """The texts and label names of a CSV or JSONL file, in file order.

    Raises :class:`DataSourceError`, naming the file and the row or line, for a missing file or
    column, an empty file, a text that is not a string, and a label that is empty or not a
    string or integer.
    """
    if path.suffix not in TEXT_SUFFIXES:
        raise DataSourceError(
            f"{path}: a text data file must end in {' or '.join(TEXT_SUFFIXES)} (CSV with a header "
            "row, or JSON Lines)"
        )
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file")
    try:
        if path.suffix == ".csv":
            rows = _read_csv(path, text_column, label_column)
        else:
            rows = _read_jsonl(path, text_column, label_column)
    except UnicodeDecodeError as exc:
        raise DataSourceError(f"{path}: not UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise DataSourceError(f"{path}: cannot read: {exc}") from exc
    if not rows[0]:
        raise DataSourceError(f"{path}: the file holds no examples")
    return rows


def _read_csv(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    labels: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            columns = reader.fieldnames
            if not columns:
                raise DataSourceError(f"{path}: the file is empty (a CSV needs a header row)")
            for column in (text_column, label_column):
                if column not in columns:
                    raise DataSourceError(
                        f"{path}: no column {column!r}; the header has: {', '.join(columns)} "
                        "(choose the columns with the text and label column options)"
                    )
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                text, label = row[text_column], row[label_column]
                if text is None or label is None:
                    raise DataSourceError(f"{where}: fewer fields than the header names")
                texts.append(text)
                labels.append(_label_name(where, label))
        except csv.Error as exc:
            raise DataSourceError(f"{path}, line {reader.line_num}: not valid CSV: {exc}") from exc
    return texts, labels


def _read_jsonl(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    labels: list[str] = []
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise DataSourceError(f"{where}: not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise DataSourceError(f"{where}: each line must be a JSON object")
            for column in (text_column, label_column):
                if column not in row:
                    raise DataSourceError(
                        f"{where}: no key {column!r}; the object has: {', '.join(sorted(row))} "
                        "(choose the keys with the text and label column options)"
                    )
            text = row[text_column]
            if not isinstance(text, str):
                raise DataSourceError(f"{where}: the text must be a string, got {_kind(text)}")
            texts.append(text)
            labels.append(_label_name(where, row[label_column]))
    return texts, labels


def _label_name(where: str, label: Any) -> str:
    """A label as its class name: a non-empty string, or an integer (not a bool or a float,
    whose text would not be one name: ``1.0`` and ``1``)."""
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataSourceError(
            f"{where}: a label must be a string or an integer, got {_kind(label)}"
        )
    name = str(label)
    if not name.strip():
        raise DataSourceError(f"{where}: empty label")
    return name


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def compute_classes(label_names: Iterable[str]) -> tuple[str, ...]:
    """Every distinct label name, sorted: as integers when all are integers, else as strings."""
    names = set(label_names)
    if names and all(_INTEGER.fullmatch(n) for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def compute_label_values(
    where: Path, label_names: Sequence[str], classes: Sequence[str]
) -> np.ndarray:
    """Each label name's place in ``classes`` as ``int64``; a name not there is refused."""
    index = {name: i for i, name in enumerate(classes)}
    values = np.empty(len(label_names), dtype=np.int64)
    for row, name in enumerate(label_names):
        value = index.get(name)
        if value is None:
            shown = ", ".join(classes) if len(classes) <= 20 else f"{len(classes)} classes"
            raise DataSourceError(
                f"{where}: example {row + 1} has label {name!r}, which is not one of the "
                f"classes ({shown})"
            )
        values[row] = value
    return values


def tokenize(texts: Sequence[str], tokenizer_dir: Path, max_length: int) -> np.ndarray:
    """``texts`` as ``int64`` ``(N, 2, max_length)``: token ids and attention mask, each text
    cut or padded (on the tokenizer's side) to ``max_length`` tokens, special tokens included."""
    if max_length < 2:
        raise DataSourceError(f"text: max_length must be at least 2 tokens, got {max_length}")
    tokenizer = _load_tokenizer(tokenizer_dir)
    if tokenizer.pad_token is None:
        raise DataSourceError(
            f"{tokenizer_dir}: the tokenizer has no padding token, so texts cannot be padded to "
            "one length (set pad_token in its tokenizer_config.json)"
        )
    encoded = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_attention_mask=True,
        return_tensors="np",
    )
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    mask = np.asarray(encoded["attention_mask"], dtype=np.int64)
    return np.ascontiguousarray(np.stack([ids, mask], axis=1))


def _load_tokenizer(tokenizer_dir: Path) -> Any:
    """A tokenizer from a local directory (as ``save_pretrained`` writes one), never fetched."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise DataSourceError(
            "text: the tokenizer needs the transformers library: pip install 'fedchain[nlp]'"
        ) from exc
    if not tokenizer_dir.is_dir():
        raise DataSourceError(
            f"{tokenizer_dir}: not a directory; the tokenizer must be a local directory (one "
            "that a tokenizer's save_pretrained wrote: tokenizer.json or vocab.txt, "
            "tokenizer_config.json)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataSourceError(
            f"{tokenizer_dir}: cannot load a tokenizer from this directory: {exc}"
        ) from exc


def read_text_source(
    root: str | Path | None, split: str, options: TextOptions
) -> tuple[str, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Labelled text, tokenized (:mod:`fedchain.data.labelled_text`), from ``root``: one
    ``.csv``/``.jsonl`` file (splits ``train`` and ``all``), or a folder holding ``train`` and
    ``test`` files (``train.csv`` or ``train.jsonl``, ...; ``all`` is both).

    The class list is ``options.classes`` when given, else every label name in the folder's
    train and test files (or in the one file), sorted, so that both splits agree on it.
    Returns ``(name, token ids and masks, labels, classes)``; ``split`` is checked by the caller.
    """
    if root is None:
        raise DataSourceError(
            "text: pass the data as --root: a .csv or .jsonl file, or a folder holding "
            "train.csv and test.csv (or .jsonl)"
        )
    if options.tokenizer is None:
        raise DataSourceError("text: a local tokenizer directory is required (--tokenizer DIR)")
    path = Path(root)
    files = _text_files(path)
    if path.is_file() and split == "test":
        raise DataSourceError(
            f"text: {path} is one file, with no test split; put train and test files "
            "(train.csv and test.csv, or .jsonl) in a folder and pass the folder"
        )
    read = {
        name: read_labelled_text(file, options.text_column, options.label_column)
        for name, file in files.items()
    }
    classes = options.classes or compute_classes(
        label for _, labels in read.values() for label in labels
    )
    if len(set(classes)) != len(classes) or not classes:
        raise DataSourceError(f"text: the class list must be non-empty and distinct: {classes}")
    wanted = ("train", "test") if split == "all" or path.is_file() else (split,)
    texts: list[str] = []
    ys: list[np.ndarray] = []
    for name in wanted:
        if name in read:
            texts += read[name][0]
            ys.append(compute_label_values(files[name], read[name][1], classes))
    x = tokenize(texts, options.tokenizer, options.max_length)
    return f"text:{path}", x, np.concatenate(ys), tuple(classes)


def _text_files(path: Path) -> dict[str, Path]:
    """``{"train": file}`` for one file; ``{"train": ..., "test": ...}`` for a folder."""
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise DataSourceError(f"text: {path} must end in {' or '.join(TEXT_SUFFIXES)}")
        return {"train": path}
    if not path.is_dir():
        raise DataSourceError(f"text: {path} does not exist")
    files: dict[str, Path] = {}
    for name in ("train", "test"):
        found = [path / f"{name}{suffix}" for suffix in TEXT_SUFFIXES]
        present = [f for f in found if f.is_file()]
        if len(present) != 1:
            what = "both" if present else "neither"
            raise DataSourceError(
                f"text: {path} must hold one {name} file, {found[0].name} or {found[1].name}; "
                f"it has {what}"
            )
        files[name] = present[0]
    return files
