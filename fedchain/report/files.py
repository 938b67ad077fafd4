"""The report's files: ``report.json`` (strict JSON) and ``report.html``, written atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedchain.durable import write_atomically
from fedchain.errors import ConfigError
from fedchain.report.html import render_html
from fedchain.runs.layout import REPORT_HTML_FILENAME, REPORT_JSON_FILENAME

__all__ = ["render_json", "write_report_files"]


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
    files = [(out_dir / REPORT_JSON_FILENAME, render_json(report))]
    if html_page:
        files.append((out_dir / REPORT_HTML_FILENAME, render_html(report)))
    for path, text in files:
        try:
            write_atomically(path, text.encode("utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None
    return [path for path, _ in files]
