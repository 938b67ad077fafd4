"""The report's files: ``report.json`` (strict JSON), ``report.html`` and the model card beside
it (``card.json``, ``card.md``), written atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedchain.durable import write_atomically
from fedchain.errors import ConfigError
from fedchain.report.card import compute_card, render_card_markdown
from fedchain.report.html import render_html
from fedchain.runs.layout import (
    CARD_JSON_FILENAME,
    CARD_MD_FILENAME,
    REPORT_HTML_FILENAME,
    REPORT_JSON_FILENAME,
)

__all__ = ["render_json", "write_card_files", "write_report_files"]


def render_json(report: Mapping[str, Any]) -> str:
    """``report.json``: strict JSON (``allow_nan=False``: the builder leaves no NaN)."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def write_report_files(
    report: Mapping[str, Any], out_dir: Path, *, html_page: bool = True
) -> list[Path]:
    """Write ``report.json`` (and ``report.html`` with the card of the latest model, which the
    page links to) into ``out_dir``; return their paths.

    Each file is written to a temporary name and renamed, so a reader never sees half a report.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    files = [(out_dir / REPORT_JSON_FILENAME, render_json(report))]
    if html_page:
        files.append((out_dir / REPORT_HTML_FILENAME, render_html(report)))
        files += card_files(compute_card(report), out_dir)
    for path, text in files:
        _write(path, text, overwrite=True)
    return [path for path, _ in files]


def card_files(card: Mapping[str, Any], out_dir: Path) -> list[tuple[Path, str]]:
    """The card's two files in ``out_dir`` and their text."""
    return [
        (out_dir / CARD_JSON_FILENAME, render_json(card)),
        (out_dir / CARD_MD_FILENAME, render_card_markdown(card)),
    ]


def write_card_files(card: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write the card into ``out_dir`` (an export's folder) over nothing: an existing
    ``card.json`` or ``card.md`` (a file, a link) is a :class:`ConfigError`."""
    files = card_files(card, Path(out_dir))
    for path, text in files:
        _write(path, text, overwrite=False)
    return [path for path, _ in files]


def _write(path: Path, text: str, *, overwrite: bool) -> None:
    try:
        write_atomically(path, text.encode("utf-8"), overwrite=overwrite)
    except FileExistsError:
        raise ConfigError(f"{path}: exists; nothing is written over it") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None
