"""A deployed data holder finds its files through the SuperNode's node config."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest

from fedchain.crypto import identity
from fedchain.data import datafile, keys
from fedchain.data.holder import load_configured_holder
from fedchain.data.sources import load_source
from fedchain.errors import ConfigError, DatasetFileError, KeyFileError


@pytest.fixture
def files(tmp_path):
    ds = load_source("digits", split="test").subset(np.arange(40))
    key = keys.create_key_file(tmp_path / "data.key")
    datafile.write_dataset(tmp_path / "key.fcd", ds, key)
    datafile.write_dataset(tmp_path / "pass.fcd", ds, keys.Passphrase(b"data pw"))
    identity.save_identity(identity.generate_identity(), tmp_path / "me.key", b"id pw")
    identity.save_identity(identity.generate_identity(), tmp_path / "bob.key", None)
    return tmp_path


def test_key_file_and_passphrase_from_environment(files, monkeypatch):
    monkeypatch.setenv("ID_PASS", "id pw")
    holder = load_configured_holder(
        {
            "data-path": str(files / "key.fcd"),
            "data-key-path": str(files / "data.key"),
            "identity-path": str(files / "me.key"),
            "identity-passphrase-env": "ID_PASS",
        }
    )
    assert len(holder.dataset) == 40
    assert holder.public_key == identity.load_public_key(files / "me.pub")
    monkeypatch.setenv("FEDCHAIN_PASSPHRASE", "data pw")
    monkeypatch.setenv("ID_PASS", "id pw")
    other = load_configured_holder(
        {
            "data-path": str(files / "pass.fcd"),
            "identity-path": str(files / "me.key"),
            "identity-passphrase-env": "ID_PASS",
        }
    )
    assert np.array_equal(other.dataset.x, holder.dataset.x)


def test_invalid_node_configs_are_explained(files, monkeypatch):
    monkeypatch.delenv("FEDCHAIN_PASSPHRASE", raising=False)
    with pytest.raises(ConfigError, match="data-path"):
        load_configured_holder({"identity-path": str(files / "me.key")})
    with pytest.raises(ConfigError, match="no data key"):
        load_configured_holder(
            {"data-path": str(files / "pass.fcd"), "identity-path": str(files / "me.key")}
        )
    with pytest.raises(KeyFileError, match="encrypted"):
        load_configured_holder(
            {
                "data-path": str(files / "key.fcd"),
                "data-key-path": str(files / "data.key"),
                "identity-path": str(files / "me.key"),
            }
        )


def test_invalid_node_config_index(files):
    with pytest.raises(ConfigError, match="index must be a non-negative integer"):
        load_configured_holder(
            {
                "data-path": str(files / "key.fcd"),
                "data-key-path": str(files / "data.key"),
                "identity-path": str(files / "bob.key"),
                "index": "1e3",
            }
        )


def test_invalid_forged_header_is_refused_before_allocation(files):
    """What a ClientApp loads on a SuperNode: a header claiming 4e7 examples used to allocate
    2.9 GB before chunk 0 was checked; now it is one error from the file's length."""
    path = files / "key.fcd"
    raw = path.read_bytes()
    end = 8 + struct.unpack("<I", raw[4:8])[0]
    doc = json.loads(raw[8:end])
    doc["dataset"]["num_examples"] = 40_000_000
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(raw[:4] + struct.pack("<I", len(body)) + body + raw[end:])
    config = {
        "data-path": str(path),
        "data-key-path": str(files / "data.key"),
        "identity-path": str(files / "bob.key"),
    }
    tracemalloc.start()
    try:
        with pytest.raises(DatasetFileError, match="40,000,000 examples"):
            load_configured_holder(config)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 16 << 20
