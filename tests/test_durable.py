"""The one atomic write: content, modes, no clobbering, and nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from fedchain.durable import write_atomically


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_bytes_replace_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_a_writer_function_streams_into_the_file(tmp_path: Path) -> None:
    def writer(handle: BinaryIO) -> None:
        for part in (b"one ", b"two"):
            handle.write(part)

    write_atomically(tmp_path / "s.bin", writer)
    assert (tmp_path / "s.bin").read_bytes() == b"one two"


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomically(tmp_path / "key", b"secret", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


def test_without_mode_the_umask_decides(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomically(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640


def test_no_overwrite_keeps_the_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "k"
    target.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        write_atomically(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert _leftovers(tmp_path) == []


def test_a_failing_writer_leaves_the_old_file_and_no_scratch(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.write_bytes(b"old")

    def writer(handle: BinaryIO) -> None:
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomically(target, writer)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_a_missing_folder_is_the_callers_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "no" / "f", b"x")
