"""A data holder's own count of the privatised updates it has released, kept on disk.

The ledger counts each client's accepted participations, but a coordinator that takes an update
and keeps its commitment off the ledger keeps that count down while the privacy is spent. So a
client also counts what it releases itself, and refuses to train once the higher of the two
counts reaches the federation's cap (:func:`fedchain.rounds.participant.check_privacy_budget`).
A count held only in memory is lost when the holder's SuperNode restarts; this file keeps it
beside the holder's replica of the ledger, one count per federation (genesis hash), written
durably *before* the update leaves (a retry that never arrived counts too: the safe side).

File: ``privacy-tally.json``, ``{"format": "fedchain-privacy-tally/1", "counts": {genesis hash
hex: count}}``. A file that does not parse is an error, never a count of 0: a holder that lost
its tally must not silently start again from the coordinator's ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedchain.durable import write_atomically
from fedchain.errors import ConfigError

__all__ = ["TALLY_FILENAME", "read_released", "record_released"]

TALLY_FILENAME = "privacy-tally.json"
_FORMAT = "fedchain-privacy-tally/1"


def read_released(folder: Path, genesis_hash: bytes) -> int:
    """The count this holder recorded for the federation of ``genesis_hash`` (0: none yet)."""
    return _read(folder).get(genesis_hash.hex(), 0)


def record_released(folder: Path, genesis_hash: bytes, count: int) -> None:
    """Record ``count`` releases in that federation (never lowering what is recorded)."""
    counts = _read(folder)
    key = genesis_hash.hex()
    counts[key] = max(count, counts.get(key, 0))
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"format": _FORMAT, "counts": counts}
    write_atomically(folder / TALLY_FILENAME, (json.dumps(doc, indent=1) + "\n").encode())


def _read(folder: Path) -> dict[str, int]:
    path = folder / TALLY_FILENAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable privacy tally ({exc}); not training") from exc
    counts = doc.get("counts") if isinstance(doc, dict) and doc.get("format") == _FORMAT else None
    if not isinstance(counts, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in counts.items()
    ):
        raise ConfigError(f"{path}: not a {_FORMAT} file; not training")
    return dict(counts)
