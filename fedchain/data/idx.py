"""IDX files, the format MNIST and Fashion-MNIST ship in: read one into a numpy array.

torchvision reads IDX files only uncompressed and only in its own ``ROOT/<Name>/raw`` layout;
Debian's ``dataset-fashion-mnist`` package installs the original gzipped files side by side
(``/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz``), and copying 30 MB out of a
system package just to please a path rule would surprise more than this reader does.

The format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number of
dimensions ``d``; then ``d`` big-endian uint32 sizes; then the values, big-endian, row-major.
A file is gzipped or not, whatever its name says: the gzip magic bytes decide.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedchain.errors import DataSourceError

__all__ = ["read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

# The type codes of the format, each a big-endian numpy dtype.
_DTYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """The array stored in IDX file ``path`` (gzipped or not), in native byte order.

    Reads no more values than the header announces, plus one byte to tell trailing data, so a
    header's claim bounds the memory used. Raises :class:`DataSourceError`, naming the file,
    for a missing or unreadable file, a bad header, and a body shorter or longer than the
    header says.
    """
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if gzipped:
                with gzip.GzipFile(fileobj=raw) as unzipped:
                    return _read_idx_stream(path, unzipped.read)
            return _read_idx_stream(path, raw.read)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataSourceError(f"{path}: cannot read this IDX file: {exc}") from exc


def _read_idx_stream(path: Path, read: Callable[[int], bytes]) -> np.ndarray:
    magic = read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0":
        raise DataSourceError(
            f"{path}: not an IDX file (it must start with two zero bytes, a type code and the "
            f"number of dimensions; found {magic.hex() or 'nothing'})"
        )
    dtype = _DTYPES.get(magic[2])
    if dtype is None:
        raise DataSourceError(f"{path}: unknown IDX type code 0x{magic[2]:02x}")
    ndim = magic[3]
    if ndim == 0:
        raise DataSourceError(f"{path}: an IDX file must have at least one dimension")
    sizes = read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataSourceError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    shape = tuple(int(s) for s in np.frombuffer(sizes, dtype=">u4"))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = read(expected + 1)
    if len(body) != expected:
        what = "truncated" if len(body) < expected else "longer than its header says"
        raise DataSourceError(
            f"{path}: IDX file {what}: shape {shape} needs {expected} bytes of values, "
            f"found {len(body) if len(body) < expected else 'more'}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
