"""A data holder's resources: its decrypted dataset and identity key, loaded once per process.

In simulation a client finds its files in the run directory by its partition id; in deployment
the SuperNode's node config names them (``data-path``, ``identity-path``). The secrets that
unlock them come from :func:`provide_secrets` when the process was given them (``fedchain join``
hands them over a pipe to the approved ClientApp process only: :mod:`fedchain.deploy.gate`);
else from ``data-key-path`` or a passphrase in the environment variable ``passphrase-env``
names, default ``FEDCHAIN_PASSPHRASE``. Decryption happens only in memory. A deployed holder
also keeps its own copy of the ledger in the folder ``replica-dir`` names (``fedchain join``
sets it beside the dataset); a simulated one keeps it in its Flower context only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.config import load_config_file
from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError, KeyFileError
from fedchain.runs.layout import CONFIG_FILENAME, client_data_path, client_key_path, data_key_path


@dataclass(frozen=True)
class DataHolder:
    index: int
    dataset: ArrayDataset
    key: Ed25519PrivateKey
    replica_dir: Path | None = None
    """Where this holder keeps its replica of the ledger on disk (None: in memory only)."""
    base_weights: str = ""
    """This holder's copy of the federation's base model weights file ("": none)."""

    @property
    def public_key(self) -> bytes:
        return identity.public_key_bytes(self.key)


_CACHE: dict[tuple[str, ...], DataHolder] = {}
_SECRETS: list[tuple[keys.Unlock, bytes | None]] = []  # at most one: what provide_secrets got


def provide_secrets(unlock: keys.Unlock, identity_passphrase: bytes | None) -> None:
    """The deployed holder's secrets, handed to this process by ``fedchain join``: they take
    the place of ``data-key-path`` and the passphrase variables of the node config."""
    _SECRETS[:] = [(unlock, identity_passphrase)]


def load_simulated_holder(run_dir: Path, index: int) -> DataHolder:
    """Client ``index`` of a simulated federation (files made by ``prepare_run``)."""
    cache_key = ("sim", str(run_dir), str(index))
    if cache_key not in _CACHE:
        unlock = keys.load_key_file(data_key_path(run_dir))
        dataset = datafile.load_dataset(client_data_path(run_dir, index), unlock)
        key = identity.load_identity(client_key_path(run_dir, index), None)
        base = load_config_file(run_dir / CONFIG_FILENAME).base_weights
        _CACHE[cache_key] = DataHolder(index, dataset, key, base_weights=base)
    return _CACHE[cache_key]


def load_configured_holder(node_config: Mapping[str, object]) -> DataHolder:
    """The data holder a deployed SuperNode's ``--node-config`` describes."""
    try:
        data_path = Path(str(node_config["data-path"]))
        identity_path = Path(str(node_config["identity-path"]))
    except KeyError as e:
        raise ConfigError(f"node config lacks {e.args[0]!r} (see `fedchain join --help`)") from None
    replica = node_config.get("replica-dir")
    cache_key = ("node", str(data_path), str(identity_path), str(replica or ""))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    if _SECRETS:  # given by `fedchain join` (fedchain.deploy.gate): nothing else is read
        return _cache(cache_key, node_config, data_path, identity_path, *_SECRETS[0])
    env = str(node_config.get("passphrase-env", "FEDCHAIN_PASSPHRASE"))
    passphrase = os.environ.get(env)
    unlock: keys.Unlock
    if "data-key-path" in node_config:
        unlock = keys.load_key_file(Path(str(node_config["data-key-path"])))
    elif passphrase:
        unlock = keys.Passphrase(passphrase.encode())
    else:
        raise ConfigError(f"no data key: set data-key-path in the node config or ${env}")
    identity_passphrase = None
    if identity.is_identity_encrypted(identity_path):
        identity_env = str(node_config.get("identity-passphrase-env", env))
        identity_passphrase = os.environ.get(identity_env)
        if not identity_passphrase:
            raise KeyFileError(f"{identity_path}: is encrypted: set ${identity_env}")
    secret = identity_passphrase.encode() if identity_passphrase else None
    return _cache(cache_key, node_config, data_path, identity_path, unlock, secret)


def _cache(
    cache_key: tuple[str, ...],
    node_config: Mapping[str, object],
    data_path: Path,
    identity_path: Path,
    unlock: keys.Unlock,
    identity_passphrase: bytes | None,
) -> DataHolder:
    replica = node_config.get("replica-dir")
    key = identity.load_identity(identity_path, identity_passphrase)
    holder = DataHolder(
        _index(node_config),
        datafile.load_dataset(data_path, unlock),
        key,
        Path(str(replica)) if replica else None,
        base_weights=str(node_config.get("base-weights", "")),
    )
    _CACHE[cache_key] = holder
    return holder


def _index(node_config: Mapping[str, object]) -> int:
    """The holder's display index (``index`` in the node config, default 0)."""
    value = str(node_config.get("index", 0))
    if not value.isdigit():
        raise ConfigError(f"node config index must be a non-negative integer, got {value!r:.40}")
    return int(value)
