"""Tests for fedchain.crypto.hashing: known answers, invariances, sensitivity, zero copy,
refusals."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from fedchain.crypto.hashing import (
    UPDATE_HASH_MAGIC,
    compute_update_hash,
    iter_canonical_chunks,
    tensor_bytes_view,
)
from fedchain.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Reference encoder: the slow, obvious reading of the layout in DESIGN.md 3.2.


def reference_bytes(tensors: Mapping[str, Any]) -> bytes:
    out = bytearray(b"FCUPD\x01")
    out += struct.pack("<I", len(tensors))
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        tensor = tensors[name]
        if isinstance(tensor, torch.Tensor):
            assert tensor.dtype == torch.bfloat16
            dtype_name = "bfloat16"
            shape = tuple(tensor.shape)
            data = tensor.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            array = np.asarray(tensor)
            dtype_name = array.dtype.name
            shape = array.shape
            data = array.astype(array.dtype.newbyteorder("<")).tobytes(order="C")
        encoded_name = name.encode("utf-8")
        out += struct.pack("<I", len(encoded_name)) + encoded_name
        out += struct.pack("<B", len(dtype_name)) + dtype_name.encode("ascii")
        out += struct.pack("<B", len(shape))
        for dim in shape:
            out += struct.pack("<Q", dim)
        out += struct.pack("<Q", len(data)) + data
    return bytes(out)


def reference_hash(tensors: Mapping[str, Any]) -> str:
    return hashlib.sha256(reference_bytes(tensors)).hexdigest()


def known_answer_vectors() -> dict[str, dict[str, Any]]:
    return {
        "two_float32": {
            "w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.array([1.5, -2.0], np.float32),
        },
        "float64": {"x": np.array([[0.1, -0.0], [1e300, np.pi]], np.float64)},
        "scalar": {"step": np.array(7, np.int64)},
        "int64": {"counts": np.array([-1, 0, 2**40], np.int64)},
        "empty": {},
        "mixed": {
            "f16": np.array([0.5, -1.0, 65504.0], np.float16),
            "i32": np.array([[1, -2]], np.int32),
            "i16": np.array([-300], np.int16),
            "i8": np.array([-128, 127], np.int8),
            "u8": np.array([0, 255], np.uint8),
            "mask": np.array([True, False, True]),
            "bf16": torch.tensor([1.0, -2.5, 3.0e38], dtype=torch.bfloat16),
            "empty_rows": np.zeros((0, 3), np.float32),
            "ünïcode/name": np.array([1.0], np.float32),
        },
    }


KNOWN_DIGESTS = {
    "two_float32": "a3b6e7a5faf169725ec9fb4513c4fc8e47ae09146424f4359df01131e804a794",
    "float64": "ba94b34695d139a74854285880c6c5282997666315e404730cf349bc827e0239",
    "scalar": "18bc95fe168e073dbc0876986cfc5e46c1fe396e316521b85ac692a0187de51a",
    "int64": "8044e24c4ed6e2a9b541f47e2e192bcb03f56678577e6ea33395cb08ab7b13f2",
    "empty": "a4fab04a9b0e0e8f00b0710c1e15802b1343feffbd6a7d0c1631d805b2be79d5",
    "mixed": "6042b72ad03d7b963af8d4e964348421742876170bd5f5a6adcf510dd5e30cc2",
}


@pytest.mark.parametrize("name", sorted(KNOWN_DIGESTS))
def test_known_answer_digest(name: str) -> None:
    tensors = known_answer_vectors()[name]
    digest = compute_update_hash(tensors).hex()
    assert digest == KNOWN_DIGESTS[name]
    assert digest == reference_hash(tensors)


@pytest.mark.parametrize("name", sorted(KNOWN_DIGESTS))
def test_chunks_are_the_reference_encoding(name: str) -> None:
    tensors = known_answer_vectors()[name]
    assert b"".join(bytes(chunk) for chunk in iter_canonical_chunks(tensors)) == reference_bytes(
        tensors
    )


def test_empty_update_is_magic_and_zero_count() -> None:
    assert reference_bytes({}) == UPDATE_HASH_MAGIC + bytes(4)
    assert compute_update_hash({}) == hashlib.sha256(b"FCUPD\x01\x00\x00\x00\x00").digest()


# --------------------------------------------------------------------------------------------------
# Invariances: the same content hashes the same whatever its container or memory layout.


def base_update() -> dict[str, Any]:
    return {
        "layer.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "layer.bias": np.array([0.25, -1.0, 3.0], np.float32),
    }


def test_insertion_order_does_not_matter() -> None:
    update = base_update()
    reversed_update = dict(reversed(list(update.items())))
    assert list(update) != list(reversed_update)
    assert compute_update_hash(update) == compute_update_hash(reversed_update)


def test_names_sort_by_utf8_bytes() -> None:
    # "Z" (0x5a) < "a" (0x61) < "é" (0xc3 0xa9): byte order, not locale or case-folded order.
    update = {name: np.array([i], np.int8) for i, name in enumerate(["é", "a", "Z"])}
    stream = b"".join(bytes(chunk) for chunk in iter_canonical_chunks(update))
    assert stream.index(b"Z") < stream.index(b"a") < stream.index("é".encode())


def test_torch_and_numpy_hash_identically() -> None:
    as_torch = {name: torch.from_numpy(array.copy()) for name, array in base_update().items()}
    assert compute_update_hash(as_torch) == compute_update_hash(base_update())


def test_torch_tensor_requiring_grad_hashes_like_its_data() -> None:
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4).requires_grad_()
    update = {"layer.weight": weight, "layer.bias": torch.tensor([0.25, -1.0, 3.0])}
    assert compute_update_hash(update) == compute_update_hash(base_update())


def test_non_contiguous_array_hashes_like_contiguous_copy() -> None:
    transposed = np.arange(12, dtype=np.float32).reshape(4, 3).T
    assert not transposed.flags.c_contiguous
    contiguous = np.ascontiguousarray(transposed)
    assert compute_update_hash({"t": transposed}) == compute_update_hash({"t": contiguous})


def test_non_contiguous_torch_tensor_hashes_like_contiguous_copy() -> None:
    transposed = torch.arange(12, dtype=torch.float32).reshape(4, 3).T
    assert not transposed.is_contiguous()
    expected = compute_update_hash({"t": np.ascontiguousarray(transposed.numpy())})
    assert compute_update_hash({"t": transposed}) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_hashes_like_cpu_copy() -> None:
    update = {name: torch.from_numpy(array.copy()) for name, array in base_update().items()}
    on_gpu = {name: tensor.to("cuda") for name, tensor in update.items()}
    assert compute_update_hash(on_gpu) == compute_update_hash(base_update())


def test_big_endian_array_hashes_like_little_endian_equal() -> None:
    little = np.array([[1.5, -2.0], [3.25, 1e-3]], dtype="<f8")
    big = little.astype(">f8")
    assert big.tobytes() != little.tobytes()
    assert compute_update_hash({"x": big}) == compute_update_hash({"x": little})


def test_numpy_scalar_hashes_as_zero_d_array() -> None:
    assert compute_update_hash({"s": np.float32(2.5)}) == compute_update_hash(
        {"s": np.array(2.5, np.float32)}
    )


def test_bfloat16_torch_tensor() -> None:
    values = torch.tensor([[1.0, -2.5], [0.0, 3.0e38]], dtype=torch.bfloat16)
    dtype_name, shape, view = tensor_bytes_view(values)
    assert (dtype_name, shape) == ("bfloat16", (2, 2))
    assert bytes(view) == values.view(torch.int16).numpy().astype("<i2").tobytes()
    # Same bits as float16 or int16 would be another update: the dtype name is hashed.
    as_int16 = {"v": values.view(torch.int16).numpy()}
    assert compute_update_hash({"v": values}) != compute_update_hash(as_int16)
    assert compute_update_hash({"v": values}) == compute_update_hash({"v": values.clone()})


def test_zero_d_tensor_has_ndim_zero() -> None:
    dtype_name, shape, view = tensor_bytes_view(np.array(3, np.int64))
    assert (dtype_name, shape, bytes(view)) == ("int64", (), (3).to_bytes(8, "little"))
    header = list(iter_canonical_chunks({"s": np.array(3, np.int64)}))[1]
    assert bytes(header).endswith(b"int64" + b"\x00" + struct.pack("<Q", 8))


# --------------------------------------------------------------------------------------------------
# Sensitivity: any change to names, values, dtype or shape changes the hash.


def test_changing_one_value_changes_hash() -> None:
    changed = base_update()
    changed["layer.bias"] = changed["layer.bias"].copy()
    changed["layer.bias"][1] = np.nextafter(np.float32(-1.0), np.float32(0.0))
    assert compute_update_hash(changed) != compute_update_hash(base_update())


def test_changing_dtype_with_same_bytes_changes_hash() -> None:
    update = base_update()
    same_bytes = dict(update, **{"layer.bias": update["layer.bias"].view(np.int32)})
    assert compute_update_hash(same_bytes) != compute_update_hash(update)


def test_reshaping_same_bytes_changes_hash() -> None:
    update = base_update()
    reshaped = dict(update, **{"layer.weight": update["layer.weight"].reshape(4, 3)})
    flat = dict(update, **{"layer.weight": update["layer.weight"].reshape(12)})
    digests = {compute_update_hash(u) for u in (update, reshaped, flat)}
    assert len(digests) == 3


def test_renaming_changes_hash() -> None:
    update = base_update()
    renamed = {"layer.weights": update["layer.weight"], "layer.bias": update["layer.bias"]}
    assert compute_update_hash(renamed) != compute_update_hash(update)


def test_moving_bytes_between_tensors_changes_hash() -> None:
    # Length prefixes stop two updates with the same concatenated bytes from colliding.
    data = np.arange(4, dtype=np.float32)
    assert compute_update_hash({"a": data[:1], "b": data[1:]}) != compute_update_hash(
        {"a": data[:2], "b": data[2:]}
    )


# --------------------------------------------------------------------------------------------------
# Zero copy.


def test_contiguous_array_view_shares_memory() -> None:
    array = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    dtype_name, shape, view = tensor_bytes_view(array)
    assert (dtype_name, shape) == ("float32", (1024, 1024))
    assert view.nbytes == array.nbytes and view.format == "B" and view.ndim == 1
    assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), array)


def test_contiguous_torch_tensor_view_shares_memory() -> None:
    tensor = torch.arange(1 << 20, dtype=torch.float32)
    _, _, view = tensor_bytes_view(tensor)
    assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), tensor.numpy())


def test_hash_stream_feeds_tensor_memory_itself() -> None:
    array = np.ones((256, 256), np.float32)
    data_chunks = [c for c in iter_canonical_chunks({"a": array}) if isinstance(c, memoryview)]
    assert len(data_chunks) == 1
    assert np.shares_memory(np.frombuffer(data_chunks[0], dtype=np.uint8), array)


def test_big_endian_view_is_a_little_endian_copy() -> None:
    big = np.arange(4, dtype=">i4")
    _, _, view = tensor_bytes_view(big)
    assert not np.shares_memory(np.frombuffer(view, dtype=np.uint8), big)
    assert bytes(view) == np.arange(4, dtype="<i4").tobytes()


# --------------------------------------------------------------------------------------------------
# Refusals.


@pytest.mark.parametrize(
    "value",
    [
        np.array(["a", "b"]),
        np.array([object()], dtype=object),
        np.zeros(2, np.complex64),
        np.zeros(2, np.uint16),
        np.zeros(2, "M8[s]"),
        torch.zeros(2, dtype=torch.complex64),
        torch.zeros(2, dtype=torch.uint16),
    ],
    ids=["str", "object", "complex64", "uint16", "datetime64", "torch-complex", "torch-uint16"],
)
def test_invalid_dtype_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match="cannot hash dtype"):
        compute_update_hash({"x": value})


def test_invalid_empty_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="empty"):
        compute_update_hash({"": np.zeros(1, np.float32)})


def test_invalid_non_str_name_is_refused() -> None:
    bad: dict[Any, Any] = {1: np.zeros(1, np.float32)}
    with pytest.raises(ConfigError, match="must be strings"):
        compute_update_hash(bad)


def test_invalid_unencodable_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="not valid Unicode"):
        compute_update_hash({"\ud800": np.zeros(1, np.float32)})


def test_invalid_non_tensor_is_refused() -> None:
    with pytest.raises(ConfigError, match="numpy arrays or torch tensors"):
        compute_update_hash({"x": [1.0, 2.0]})  # type: ignore[dict-item]


def test_invalid_sparse_torch_tensor_is_refused() -> None:
    with pytest.raises(ConfigError, match="dense"):
        compute_update_hash({"x": torch.zeros(3).to_sparse()})
