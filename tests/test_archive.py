"""The update archive's files and its retention rule, without a run (fedchain.runs.archive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import ConfigError, RegistryError
from fedchain.runs.archive import (
    UpdateArchive,
    compute_archive_floor,
    describe_archive_policy,
    drop_old_packs,
    get_archive_size,
    load_update,
    save_round_updates,
)
from fedchain.runs.layout import UPDATES_DIRNAME, update_pack_name


def update(value: float) -> tuple[bytes, dict[str, np.ndarray]]:
    arrays = {"w": np.full((2, 3), value, np.float32), "b": np.arange(3, dtype=np.float32)}
    return compute_update_hash(arrays), arrays


def test_a_round_pack_holds_its_updates_and_each_read_is_rehashed(tmp_path: Path) -> None:
    (h1, u1), (h2, u2) = update(1.0), update(2.0)
    path = save_round_updates(tmp_path, 7, {h1: u1, h2: u2})
    assert path == tmp_path / UPDATES_DIRNAME / "round-000007.safetensors"
    archive = UpdateArchive(tmp_path)
    assert list(archive.files) == [path] and set(archive.files[path]) == {h1, h2}
    assert archive.unreadable == {}
    second, first = archive.load_many([h2, h1])
    assert np.array_equal(first["w"], u1["w"]) and np.array_equal(second["w"], u2["w"])
    assert set(load_update(tmp_path, h1)) == {"w", "b"}
    with pytest.raises(RegistryError, match="no archived update"):
        archive.load_many([bytes(32)])


def test_invalid_pack_naming_an_update_over_other_weights(tmp_path: Path) -> None:
    (h1, _), (_, u2) = update(1.0), update(2.0)
    save_round_updates(tmp_path, 1, {h1: u2})  # the header claims h1, the tensors are u2
    with pytest.raises(RegistryError, match="the file was altered"):
        UpdateArchive(tmp_path).load_many([h1])


def test_invalid_files_in_the_archive_are_listed_not_trusted(tmp_path: Path) -> None:
    folder = tmp_path / UPDATES_DIRNAME
    folder.mkdir()
    (folder / update_pack_name(1)).write_bytes(b"\xff" * 8 + b"not safetensors")
    (folder / update_pack_name(2)).symlink_to("/etc/hostname")
    archive = UpdateArchive(tmp_path)
    assert archive.index == {}
    assert set(archive.unreadable) == {folder / update_pack_name(1), folder / update_pack_name(2)}
    assert "outside the run directory" in archive.unreadable[folder / update_pack_name(2)]
    assert get_archive_size(tmp_path) == (1, 23)  # regular files only: the link is not followed


def test_invalid_update_hash_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        save_round_updates(tmp_path, 1, {b"short": update(1.0)[1]})
    with pytest.raises(ConfigError, match="numpy"):
        save_round_updates(tmp_path, 1, {bytes(32): {"w": [1.0]}})  # type: ignore[dict-item]
    assert not (tmp_path / UPDATES_DIRNAME).exists()


@pytest.mark.parametrize(
    ("rule", "head", "floor", "policy"),
    [(-1, 20, 0, "all rounds"), (0, 20, 21, "none"), (1, 20, 20, "the last 1 round"),
     (5, 20, 16, "the last 5 rounds"), (50, 20, -29, "the last 50 rounds")],
)  # fmt: skip
def test_the_archive_floor(rule: int, head: int, floor: int, policy: str) -> None:
    assert compute_archive_floor(rule, head) == floor
    assert describe_archive_policy(rule) == policy


def test_old_packs_are_dropped_once_a_round_k_later_is_final(tmp_path: Path) -> None:
    for round_ in range(1, 6):
        save_round_updates(tmp_path, round_, dict([update(float(round_))]))
    other = tmp_path / UPDATES_DIRNAME / f"{'ab' * 32}.safetensors"  # an older run's layout
    other.write_bytes(b"x")
    assert drop_old_packs(tmp_path, -1, 5) == []
    dropped = drop_old_packs(tmp_path, 2, 4)  # round 4 final: rounds 3 and 4 are the last two
    assert [p.name for p in dropped] == [update_pack_name(1), update_pack_name(2)]
    left = sorted(p.name for p in (tmp_path / UPDATES_DIRNAME).iterdir())
    assert left == [other.name, update_pack_name(3), update_pack_name(4), update_pack_name(5)]
    assert drop_old_packs(tmp_path, 0, 5) and not any(
        p.name.startswith("round-") for p in (tmp_path / UPDATES_DIRNAME).iterdir()
    )
