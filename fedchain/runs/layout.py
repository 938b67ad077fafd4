"""Run and federation folders: every file and folder name in them, spelled once, and path helpers.

A run directory (``OUT/<run-id>/`` from ``fedchain simulate``, ``FED_DIR/run/`` for a deployed
federation; DESIGN.md §4)::

    config.toml                  CONFIG_FILENAME     the resolved configuration
    ledger.db                    LEDGER_FILENAME     the proof-of-stake ledger (absent with
                                                     --ledger off; the store's own name)
    models/<hash>.safetensors    MODELS_DIRNAME      every global model version, the initial one
                                 MODEL_SUFFIX        included, named by its canonical hash
    updates/round-NNNNNN.safetensors  UPDATES_DIRNAME, update_pack_name  each round's accepted
                                                     client updates in one file, each tensor
                                                     named ``<update hash hex>/<name>``, for
                                                     the rounds the federation's retention rule
                                                     keeps (fedchain.runs.archive; runs before
                                                     packs: updates/<hash>.safetensors)
    metrics.json                 METRICS_FILENAME    central accuracy and loss per round
    log.txt                      LOG_FILENAME        Flower's (and Ray's) log of the run
    report.json, report.html     REPORT_JSON_FILENAME, REPORT_HTML_FILENAME (``fedchain report``;
                                                     ``--out`` may put them elsewhere)
    card.json, card.md           CARD_JSON_FILENAME, CARD_MD_FILENAME  the model card, beside
                                                     report.html (and in a model export)
    attackers.json               ATTACKERS_FILENAME  with an attack: its name, scale, and the
                                                     attackers' indices and public keys
    app-approvals.toml           APPROVAL_INBOX_FILENAME  holders' signed app approvals the
                                                     coordinator was given (``coordinator
                                                     approve``), for its next block
    anchors/NNNNNNNN.receipt     ANCHORS_DIRNAME     with anchoring on: each anchor receipt,
                                 anchor_receipt_path by anchored height (a copy an outsider can
                                                     keep: ``fedchain verify --anchors``)
    clients/                     CLIENTS_DIRNAME     a simulation's data holders, together:
        client-NNN.fcd           client_data_path    each one's encrypted split
        client-NNN.key, .pub     client_key_path     each one's identity (unencrypted, mode
                                                     0600: simulated); the .pub beside the key
        data.key                 DATA_KEY_FILENAME   the data key of their files (mode 0600)

A federation folder (``FED_DIR``), kept by its coordinator::

    federation.toml              FEDERATION_FILENAME settings and the registered participants
    coordinator.json             COORDINATOR_STATE_FILENAME  what ``coordinator start`` recorded:
                                                     PIDs, the connection, the SuperNode ids
    run/                         RUN_DIRNAME         the run directory above (run_dir_of)
    certs/                       CERTS_DIRNAME       TLS: CA_CERT_FILENAME (ca.crt, for every
                                                     participant), SERVER_CERT_FILENAME
                                                     (server.pem), SERVER_KEY_FILENAME (server.key)
    supernodes/<name>.pub        SUPERNODES_DIRNAME  each participant's SuperNode public key
                                                     (supernode_key_path)
    superlink/                   SUPERLINK_DIRNAME   the SuperLink's state: SUPERLINK_DB_FILENAME,
                                                     SUPERLINK_LOG_FILENAME, SUPERLINK_PID_FILENAME
    flwr-home/                   FLWR_HOME_DIRNAME   the ``flwr`` CLI's private FLWR_HOME
    app/                         APP_DIRNAME         the Flower app bundle ``flwr run`` submits

A deployed data holder's own copy of the ledger, beside its dataset ``NAME.fcd``::

    NAME.ledger/                 holder_ledger_dir   (HOLDER_LEDGER_SUFFIX)
        ledger.db                LEDGER_FILENAME     the blocks it replayed, in the store's format
        checkpoint.json          HOLDER_CHECKPOINT_FILENAME  the last final block it saw
        approved-app.toml        APPROVED_APP_FILENAME  its signed approval of a new app, if any

Names another program dictates stay with the code that speaks to it: ``config.toml`` inside
``flwr-home/`` (Flower's, not a run's configuration) and ``pyproject.toml`` inside ``app/``
(a Flower app's), SQLite's ``-wal``/``-shm`` side files, and the scratch names of
:func:`fedchain.durable.write_atomically`.
"""

from __future__ import annotations

import re
from pathlib import Path

# The ledger package must not import runs/, so the store keeps its file's name; it is re-exported
# here so that everything else finds every name of a run directory in this one module.
from fedchain.ledger.store import LEDGER_FILENAME as LEDGER_FILENAME

__all__ = [
    "ANCHORS_DIRNAME",
    "APPROVAL_INBOX_FILENAME",
    "APPROVED_APP_FILENAME",
    "APP_DIRNAME",
    "ATTACKERS_FILENAME",
    "CARD_JSON_FILENAME",
    "CARD_MD_FILENAME",
    "CA_CERT_FILENAME",
    "CERTS_DIRNAME",
    "CLIENTS_DIRNAME",
    "CLIENT_PUBLIC_KEY_GLOB",
    "CONFIG_FILENAME",
    "COORDINATOR_STATE_FILENAME",
    "DATA_KEY_FILENAME",
    "FEDERATION_FILENAME",
    "FLWR_HOME_DIRNAME",
    "HOLDER_CHECKPOINT_FILENAME",
    "HOLDER_LEDGER_SUFFIX",
    "LEDGER_FILENAME",
    "LOG_FILENAME",
    "METRICS_FILENAME",
    "MODELS_DIRNAME",
    "MODEL_SUFFIX",
    "REPORT_HTML_FILENAME",
    "REPORT_JSON_FILENAME",
    "RUN_DIRNAME",
    "SERVER_CERT_FILENAME",
    "SERVER_KEY_FILENAME",
    "SUPERLINK_DB_FILENAME",
    "SUPERLINK_DIRNAME",
    "SUPERLINK_LOG_FILENAME",
    "SUPERLINK_PID_FILENAME",
    "SUPERNODES_DIRNAME",
    "UPDATES_DIRNAME",
    "UPDATE_PACK_PREFIX",
    "anchor_receipt_path",
    "client_data_name",
    "client_data_path",
    "client_key_path",
    "data_key_path",
    "holder_ledger_dir",
    "parse_client_public_key_name",
    "run_dir_of",
    "supernode_key_path",
    "update_pack_name",
]

# A run directory
CONFIG_FILENAME = "config.toml"
MODELS_DIRNAME = "models"
UPDATES_DIRNAME = "updates"
MODEL_SUFFIX = ".safetensors"
UPDATE_PACK_PREFIX = "round-"  # updates/round-NNNNNN.safetensors: one round's accepted updates
METRICS_FILENAME = "metrics.json"
LOG_FILENAME = "log.txt"
REPORT_JSON_FILENAME = "report.json"
REPORT_HTML_FILENAME = "report.html"
CARD_JSON_FILENAME = "card.json"
CARD_MD_FILENAME = "card.md"
ATTACKERS_FILENAME = "attackers.json"
CLIENTS_DIRNAME = "clients"
DATA_KEY_FILENAME = "data.key"
CLIENT_PUBLIC_KEY_GLOB = "client-*.pub"
_CLIENT_PUBLIC_KEY = re.compile(r"client-(\d+)\.pub")
ANCHORS_DIRNAME = "anchors"

# A federation folder
FEDERATION_FILENAME = "federation.toml"
COORDINATOR_STATE_FILENAME = "coordinator.json"
RUN_DIRNAME = "run"
CERTS_DIRNAME = "certs"
CA_CERT_FILENAME = "ca.crt"
SERVER_CERT_FILENAME = "server.pem"
SERVER_KEY_FILENAME = "server.key"
SUPERNODES_DIRNAME = "supernodes"
SUPERLINK_DIRNAME = "superlink"
SUPERLINK_DB_FILENAME = "superlink.db"
SUPERLINK_LOG_FILENAME = "superlink.log"
SUPERLINK_PID_FILENAME = "superlink.pid"
FLWR_HOME_DIRNAME = "flwr-home"
APP_DIRNAME = "app"


def client_data_name(index: int) -> str:
    """``client-NNN.fcd``: a data holder's encrypted split (in ``clients/``, or any folder
    ``fedchain data encrypt`` writes)."""
    return f"client-{index:03d}.fcd"


def client_data_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / CLIENTS_DIRNAME / client_data_name(index)


def client_key_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / CLIENTS_DIRNAME / f"client-{index:03d}.key"


def anchor_receipt_path(run_dir: Path, height: int) -> Path:
    """The copy of the receipt anchoring block ``height`` (its canonical encoding)."""
    return run_dir / ANCHORS_DIRNAME / f"{height:08d}.receipt"


def data_key_path(run_dir: Path) -> Path:
    return Path(run_dir) / CLIENTS_DIRNAME / DATA_KEY_FILENAME


def parse_client_public_key_name(name: str) -> int | None:
    """The index NNN of a ``client-NNN.pub`` file name, or None for any other name."""
    match = _CLIENT_PUBLIC_KEY.fullmatch(name)
    return None if match is None else int(match.group(1))


HOLDER_LEDGER_SUFFIX = ".ledger"
HOLDER_CHECKPOINT_FILENAME = "checkpoint.json"
APPROVED_APP_FILENAME = "approved-app.toml"
APPROVAL_INBOX_FILENAME = "app-approvals.toml"


def holder_ledger_dir(data_path: Path) -> Path:
    """A deployed data holder's own copy of the ledger, beside its dataset (``client-003.fcd`` ->
    ``client-003.ledger/``): the blocks it replayed in LEDGER_FILENAME and the last final block
    it saw in HOLDER_CHECKPOINT_FILENAME (:mod:`fedchain.rounds.replica_files`)."""
    data_path = Path(data_path)
    return data_path.with_name(data_path.stem + HOLDER_LEDGER_SUFFIX)


def run_dir_of(fed_dir: Path) -> Path:
    """A federation's run directory."""
    return Path(fed_dir) / RUN_DIRNAME


def supernode_key_path(fed_dir: Path, name: str) -> Path:
    """Where the coordinator keeps participant ``name``'s SuperNode public key."""
    return Path(fed_dir) / SUPERNODES_DIRNAME / f"{name}.pub"


def update_pack_name(round_: int) -> str:
    """The file name of round ``round_``'s update pack in ``updates/``."""
    return f"{UPDATE_PACK_PREFIX}{round_:06d}{MODEL_SUFFIX}"
