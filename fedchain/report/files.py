"""The report's files: ``report.json`` (strict JSON) and ``report.html``, written atomically."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedchain.errors import ConfigError
from fedchain.report.html import render_html

__all__ = ["REPORT_HTML", "REPORT_JSON", "render_json", "write_report_files"]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def render_json(report: Mapping[str, Any]) -> str:
    """``report.json``: strict JSON (``allow_nan=False``: the builder leaves no NaN)."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def write_report_files(
    report: Mapping[str, Any], out_dir: Path, *, html_page: bool = True
) -> list[Path]:
    """Write ``report.json`` (and ``report.html``) into ``out_dir``; return their paths.

    Each file is written to a temporary name and renamed, so a reader never sees half a report.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    files = [(out_dir / REPORT_JSON, render_json(report))]
    if html_page:
        files.append((out_dir / REPORT_HTML, render_html(report)))
    for path, text in files:
        _write_atomically(path, text)
    return [path for path, _ in files]


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    except OSError as e:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None
