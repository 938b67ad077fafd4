"""Text that others wrote (clients, ledger entries, files), made safe to print or record.

Reasons and names end up in logs, terminals and the ledger: nothing in them may move a cursor,
colour a terminal, reorder text or be invalid UTF-8 (a lone surrogate).
"""

from __future__ import annotations


def compute_printable(text: str, limit: int | None = None, *, quoting: bool = False) -> str:
    """``text`` with each non-printable character escaped (``\\n``, ``\\x1b``, ``\\u202e``),
    cut to at most ``limit`` characters (an escape is never split; ``…`` marks a cut; None: no
    cut). ``quoting`` also escapes ``"`` and backslashes, for text put between double quotes."""
    if limit is None and not quoting and text.isprintable():
        return text
    pieces: list[str] = []
    size = 0
    for char in text:
        if quoting and char in '"\\':
            piece = "\\" + char
        elif char.isprintable():
            piece = char
        else:
            piece = char.encode("unicode_escape").decode("ascii")
        if limit is not None and size + len(piece) > limit - 1:
            pieces.append("…")
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)
