"""Reading what a process printed: text without ANSI escapes, log tails, Flower's log lines."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["LOG_TAIL_LINES", "parse_flower_log_line", "strip_ansi", "tail"]

LOG_TAIL_LINES = 30
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_FLOWER_LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b[^:]*:\s*(.*)")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (colours, cursor moves, OSC links)."""
    return _ANSI_ESCAPE.sub("", text)


def parse_flower_log_line(line: str) -> tuple[str | None, str]:
    """``(level, message)`` of a line of Flower's console log (``INFO :      message``);
    ``(None, line)`` for anything else (a traceback, a child's own output)."""
    match = _FLOWER_LOG_LINE.fullmatch(strip_ansi(line).rstrip("\r\n"))
    if match is None:
        return None, strip_ansi(line).rstrip("\r\n")
    return match.group(1), match.group(2)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        data = Path(path).read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])
