"""Data sources: load a whole labelled data set into memory as plain numpy arrays.

Every loader returns an :class:`ArrayDataset` with the same conventions, so partitioning,
encryption and training never need to know where the data came from:

* ``x`` is C-contiguous, one example per row: ``(N, C, H, W)`` for images, ``(N, D)`` for
  tabular ``npz`` data. Images stay in their stored integer form (``uint8``); training
  divides by ``value_max`` to get ``[0, 1]`` floats, which keeps files small and exact.
* Text (the ``text`` source) is ``int64`` ``(N, 2, L)``: token ids and attention mask, fixed
  length ``L`` (:mod:`fedchain.data.labelled_text`); ``value_max`` is None.
* ``y`` is ``int64`` with shape ``(N,)`` and values ``0 .. len(classes) - 1``.

``digits`` (scikit-learn's embedded 8x8 digits) needs no files and no network, which is why it
is the default. ``fashion-mnist`` needs no root either where Debian's ``dataset-fashion-mnist``
package is installed (:data:`DEBIAN_FASHION_MNIST`). The torchvision sources read a local
``root`` and only touch the network when the caller passes ``download=True`` (the CLI's
``--download``).

torchvision is imported lazily inside the loaders that need it: importing it takes seconds, and
``digits``/``npz`` users should not pay for that. ``digits`` does not import scikit-learn either
(about 1 s, more than all of a run's other work with the data): it reads the data file sklearn
ships, and its train/test split is frozen (:func:`_load_digits`).
"""

from __future__ import annotations

import importlib.util
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedchain.data.idx import read_idx
from fedchain.data.labelled_text import TextOptions, read_text_source
from fedchain.errors import DataSourceError

__all__ = ["DEBIAN_FASHION_MNIST", "SOURCES", "ArrayDataset", "load_source"]

SOURCES: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "imagefolder",
    "npz",
    "text",
)

_TRAIN_TEST = ("train", "test")
_NPZ_SPLITS = ("train", "test", "all")
_TEXT_SPLITS = ("train", "test", "all")
_DIGITS_SPLITS = ("train", "test", "all")
_NPZ_X_KEYS = ("x", "X", "features")
_NPZ_Y_KEYS = ("y", "labels")

# What torchvision raises for missing, truncated or malformed files. AssertionError is included
# because torchvision's IDX reader validates the header with bare asserts.
_TORCHVISION_READ_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    AssertionError,
    pickle.UnpicklingError,
)


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled data set held in memory.

    ``eq=False`` because field-wise ``==`` on numpy arrays is ambiguous (and would make the class
    unhashable); two data sets are compared by their arrays explicitly where that matters.
    Construction checks the invariants every consumer relies on and normalises ``y`` to
    ``int64`` and ``x`` to C-contiguous (no copy when they already are).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    value_max: float | None

    def __post_init__(self) -> None:
        x = np.ascontiguousarray(self.x)
        y = np.asarray(self.y)
        _check_labels(self.name, y, len(self.classes))
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise DataSourceError(
                f"{self.name}: features must have shape (N, ...) with N = {y.shape[0]} labels; "
                f"got shape {x.shape}"
            )
        if self.value_max is not None and not self.value_max > 0:
            raise DataSourceError(f"{self.name}: value_max must be positive or None")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", np.ascontiguousarray(y, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Examples at ``indices`` (in the given order), with name, classes and scale kept.

        Fancy indexing copies, so the subset never aliases the parent's memory.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise DataSourceError(
                f"{self.name}: subset indices must be a 1-D integer array; "
                f"got dtype {idx.dtype}, shape {idx.shape}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataSourceError(
                f"{self.name}: subset indices must lie in 0..{len(self) - 1}; "
                f"got {idx.min()}..{idx.max()}"
            )
        idx = idx.astype(np.int64, copy=False)
        return ArrayDataset(self.name, self.x[idx], self.y[idx], self.classes, self.value_max)


def _check_labels(name: str, y: np.ndarray, num_classes: int) -> None:
    """Labels must be 1-D non-negative integers below the number of class names."""
    if y.ndim != 1:
        raise DataSourceError(f"{name}: labels must be 1-D, got shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        raise DataSourceError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataSourceError(
            f"{name}: labels must lie in 0..{num_classes - 1} ({num_classes} classes); "
            f"got {int(y.min())}..{int(y.max())}"
        )


def load_source(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    download: bool = False,
    image_size: int = 32,
    text: TextOptions | None = None,
) -> ArrayDataset:
    """Load data source ``name`` (one of :data:`SOURCES`) fully into memory.

    ``root`` is a directory for the torchvision sources and ``imagefolder``, and the ``.npz``
    file itself for ``npz``; ``digits`` ignores it, and ``fashion-mnist`` without one reads
    Debian's package (:data:`DEBIAN_FASHION_MNIST`). ``split`` is ``"train"``/``"test"`` (plus
    ``"all"`` for ``digits`` and ``npz``); ``imagefolder`` ignores it. ``download`` lets
    torchvision fetch MNIST/Fashion-MNIST/CIFAR-10 into ``root``. ``image_size`` is the side
    length in pixels that ``imagefolder`` resizes every image to. ``text`` says how the ``text``
    source reads and tokenizes its files (:class:`~fedchain.data.labelled_text.TextOptions`;
    its ``tokenizer`` directory is required).

    Raises :class:`DataSourceError` for every problem a user can fix (unknown name, missing or
    malformed files, bad split).
    """
    loaders: dict[str, Callable[[], ArrayDataset]] = {
        "digits": lambda: _load_digits(split),
        "mnist": lambda: _load_mnist_like("mnist", root, split, download),
        "fashion-mnist": lambda: _load_mnist_like("fashion-mnist", root, split, download),
        "cifar10": lambda: _load_cifar10(root, split, download),
        "imagefolder": lambda: _load_imagefolder(root, image_size),
        "npz": lambda: _load_npz(root, split),
        "text": lambda: _load_text(root, split, text or TextOptions()),
    }
    loader = loaders.get(name)
    if loader is None:
        raise DataSourceError(f"unknown data source {name!r}; choose one of: {', '.join(SOURCES)}")
    return loader()


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise DataSourceError(
            f"{name}: unknown split {split!r}; choose one of: {', '.join(allowed)}"
        )


# --- digits ---------------------------------------------------------------------------------


def _load_digits(split: str) -> ArrayDataset:
    """scikit-learn's 1797 8x8 digits, with a fixed stratified 80/20 train/test split.

    sklearn ships no official split, so ``random_state=0`` and stratification by label make one
    that keeps class proportions equal in both halves: ``train_test_split(arange(1797),
    test_size=0.2, stratify=y, random_state=0)``, frozen here as :data:`_DIGITS_TEST_MASK` so
    that it is identical on every machine and sklearn version (``tests/test_sources.py``
    recomputes it with sklearn). Examples keep sklearn's order within each split.
    """
    _check_split("digits", split, _DIGITS_SPLITS)
    images, labels = _read_digits()
    # Pixel values are integers 0..16 stored as float64; uint8 is exact and 8x smaller.
    x = np.asarray(images).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = np.asarray(labels, dtype=np.int64)
    if split != "all":
        test = np.unpackbits(np.frombuffer(_DIGITS_TEST_MASK, np.uint8), bitorder="little")
        keep = test[: y.shape[0]].astype(bool)
        x, y = (x[keep], y[keep]) if split == "test" else (x[~keep], y[~keep])
    classes = tuple(str(c) for c in range(10))
    return ArrayDataset("digits", x, y, classes, 16.0)


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits()``'s pixels and labels, read from the file scikit-learn ships
    (``sklearn/datasets/data/digits.csv.gz``: 64 pixels then the label per row) without
    importing sklearn, which takes longer than everything else a run's set-up does with the
    data (measured: ``experiments/results/startup.md``); sklearn's own loader where the file is
    not there."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1], data[:, -1]
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target


_DIGITS_TEST_MASK = bytes.fromhex(
    "00002011ac24080200608200c942a000580010800024001460344800080029500009984820041f0540810805"
    "001050110422a824924202055000000002201b00008101040012a02300080210050800a00212000c08004070"
    "23900040242100c115803c04651950000000d0100210200518124040028283000120026221ec568140680022"
    "01000242052518500a0021d0a18663100801100032010304206071008010410081001c10c003109800000870"
    "80002108058400cc1494200322030116708040c1004100114465023424208410150601098105304041404248"
    "801c25a800"
)
"""Which of the 1797 digits are in the test split (bit ``i`` of byte ``i // 8``, least
significant first): ``train_test_split``'s 360 test indices (see :func:`_load_digits`)."""


# --- MNIST, Fashion-MNIST (IDX files), CIFAR-10 (torchvision) --------------------------------

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the original gzipped IDX files: the
``fashion-mnist`` source reads them in place when no root is given."""

_LAYOUTS = {
    "mnist": "ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, "
    "or the same files, gzipped or not, directly in ROOT",
    "fashion-mnist": "ROOT/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, "
    "or the same files, gzipped or not, directly in ROOT",
    "cifar10": "ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
}

# torchvision's class names (datasets.MNIST.classes, datasets.FashionMNIST.classes), written out
# so that reading the IDX files ourselves gives the same data set without importing torchvision.
_MNIST_CLASSES = (
    "0 - zero",
    "1 - one",
    "2 - two",
    "3 - three",
    "4 - four",
    "5 - five",
    "6 - six",
    "7 - seven",
    "8 - eight",
    "9 - nine",
)
_FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_PREFIXES = {"train": "train", "test": "t10k"}


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise DataSourceError(
            f"{name}: a data root directory is required (expected layout {_LAYOUTS[name]}); "
            "pass --root DIR, and add --download to fetch the files into it"
        )
    return Path(root)


def _open_torchvision(name: str, factory: Callable[[], Any], root: Path, download: bool) -> Any:
    """Run a torchvision dataset constructor, turning its errors into :class:`DataSourceError`."""
    try:
        return factory()
    except _TORCHVISION_READ_ERRORS as exc:
        hint = (
            "the download failed (is the network reachable?)"
            if download
            else "add --download to fetch them"
        )
        raise DataSourceError(
            f"{name}: cannot read data under {root} (expected layout {_LAYOUTS[name]}); "
            f"{hint}. torchvision said: {exc}"
        ) from exc


def _load_mnist_like(
    name: str, root: str | Path | None, split: str, download: bool
) -> ArrayDataset:
    """MNIST or Fashion-MNIST as uint8 (N, 1, 28, 28), from one of two layouts:

    * the IDX files directly in a folder, gzipped or not, as their authors publish them and as
      Debian's ``dataset-fashion-mnist`` installs them: read with :func:`read_idx`. This is
      ``fashion-mnist``'s default when no root is given (:data:`DEBIAN_FASHION_MNIST`);
    * torchvision's ``ROOT/<Name>/raw`` layout, which ``--download`` fills: read by torchvision.

    torchvision's path reads ``.data``/``.targets`` directly instead of iterating items, which
    would push every image through PIL and be orders of magnitude slower.
    """
    _check_split(name, split, _TRAIN_TEST)
    if root is None and name == "fashion-mnist" and not download:
        flat = _flat_idx_files(DEBIAN_FASHION_MNIST, split)
        if flat is None:
            raise DataSourceError(
                f"fashion-mnist: no --root given and Debian's Fashion-MNIST is not installed "
                f"(no {_IDX_PREFIXES[split]}-*-ubyte.gz in {DEBIAN_FASHION_MNIST}): install it "
                "with 'apt-get install dataset-fashion-mnist', or pass --root DIR (layout "
                f"{_LAYOUTS[name]}) and add --download to fetch the files into it"
            )
        return _idx_dataset(name, *flat)
    path = _require_root(name, root)
    flat = None if download else _flat_idx_files(path, split)
    if flat is not None:
        return _idx_dataset(name, *flat)
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    train = split == "train"
    ds = _open_torchvision(
        name, lambda: cls(str(path), train=train, download=download), path, download
    )
    data = ds.data.numpy()
    x = data.reshape(data.shape[0], 1, data.shape[1], data.shape[2])
    y = ds.targets.numpy().astype(np.int64)
    return ArrayDataset(name, x, y, tuple(str(c) for c in ds.classes), 255.0)


def _flat_idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The images and labels IDX files of ``split`` directly in ``folder`` (the gzipped name
    first), or None when either is missing."""
    prefix = _IDX_PREFIXES[split]
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = next(
            (p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()),
            None,
        )
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _idx_dataset(name: str, images_path: Path, labels_path: Path) -> ArrayDataset:
    """An MNIST-like data set from its images (N, H, W) and labels (N,) IDX files."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataSourceError(
            f"{images_path}: expected uint8 images of shape (N, H, W); "
            f"found {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataSourceError(
            f"{labels_path}: expected uint8 labels of shape (N,); "
            f"found {labels.dtype} {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataSourceError(
            f"{name}: {images.shape[0]} images in {images_path} but {labels.shape[0]} labels in "
            f"{labels_path}; they must match"
        )
    x = images.reshape(images.shape[0], 1, images.shape[1], images.shape[2])
    classes = _MNIST_CLASSES if name == "mnist" else _FASHION_MNIST_CLASSES
    return ArrayDataset(name, x, labels.astype(np.int64), classes, 255.0)


def _load_cifar10(root: str | Path | None, split: str, download: bool) -> ArrayDataset:
    """CIFAR-10 from torchvision's pickled batches, as uint8 (N, 3, 32, 32).

    torchvision keeps images channels-last (N, 32, 32, 3); we transpose to channels-first to
    match the other sources and copy so the result is C-contiguous.
    """
    _check_split("cifar10", split, _TRAIN_TEST)
    path = _require_root("cifar10", root)
    from torchvision import datasets

    train = split == "train"
    ds = _open_torchvision(
        "cifar10",
        lambda: datasets.CIFAR10(str(path), train=train, download=download),
        path,
        download,
    )
    x = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
    y = np.asarray(ds.targets, dtype=np.int64)
    return ArrayDataset("cifar10", x, y, tuple(str(c) for c in ds.classes), 255.0)


# --- imagefolder ------------------------------------------------------------------------------


def _load_imagefolder(root: str | Path | None, image_size: int) -> ArrayDataset:
    """Every image under ``root/<class>/`` as RGB uint8 (N, 3, image_size, image_size).

    Class names are the sub-folder names in sorted order (torchvision's rule), so label values
    are stable across machines. Images are resized with bilinear filtering, named explicitly so
    the result does not depend on Pillow's default.
    """
    if image_size < 1:
        raise DataSourceError(f"imagefolder: image_size must be >= 1 pixel, got {image_size}")
    if root is None:
        raise DataSourceError(
            "imagefolder: a root directory is required (layout ROOT/<class name>/<image>); "
            "pass --root DIR"
        )
    path = Path(root)
    if not path.is_dir():
        raise DataSourceError(
            f"imagefolder: {path} is not a directory (layout ROOT/<class name>/<image>)"
        )
    from torchvision import datasets

    try:
        folder = datasets.ImageFolder(str(path))
    except (FileNotFoundError, OSError) as exc:
        raise DataSourceError(
            f"imagefolder: no usable images under {path} (layout ROOT/<class name>/<image>, "
            f"every class folder non-empty): {exc}"
        ) from exc
    samples: list[tuple[str, int]] = list(folder.samples)
    if not samples:
        raise DataSourceError(f"imagefolder: no images found under {path}")
    x = np.stack([_read_image(p, image_size) for p, _ in samples])
    y = np.array([label for _, label in samples], dtype=np.int64)
    return ArrayDataset(f"imagefolder:{path}", x, y, tuple(folder.classes), 255.0)


def _read_image(path: str, image_size: int) -> np.ndarray:
    """One image as RGB uint8 (3, image_size, image_size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataSourceError(f"imagefolder: cannot read image {path}: {exc}") from exc
    pixels = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return np.transpose(pixels, (2, 0, 1))


# --- npz --------------------------------------------------------------------------------------


def _load_npz(root: str | Path | None, split: str) -> ArrayDataset:
    """Arrays from a ``.npz`` file: features ``x``/``X``/``features``, labels ``y``/``labels``.

    ``split="test"`` reads ``x_test``/``y_test``, which the file must then contain. Labels must
    already be integers ``0..K-1``; we do not remap them, because a silent remap would change
    what a label means between files. ``classes`` is ``"0" .. str(max label)``.
    """
    _check_split("npz", split, _NPZ_SPLITS)
    if root is None:
        raise DataSourceError("npz: pass the .npz file path as root (--root FILE.npz)")
    path = Path(root)
    name = f"npz:{path}"
    arrays = _read_npz(path)
    keys = sorted(arrays)
    if split == "test":
        x_key = "x_test" if "x_test" in arrays else None
        y_key = "y_test" if "y_test" in arrays else None
    else:
        x_key = next((k for k in _NPZ_X_KEYS if k in arrays), None)
        y_key = next((k for k in _NPZ_Y_KEYS if k in arrays), None)
    if x_key is None or y_key is None:
        wanted = (
            "x_test and y_test"
            if split == "test"
            else f"features ({'/'.join(_NPZ_X_KEYS)}) and labels ({'/'.join(_NPZ_Y_KEYS)})"
        )
        raise DataSourceError(f"{name}: needs arrays {wanted}; the file has: {keys}")
    return _npz_dataset(name, arrays[x_key], arrays[y_key])


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` archive, read eagerly so the file is closed on return."""
    if not path.is_file():
        raise DataSourceError(f"npz: file {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataSourceError(f"npz: cannot read {path} as an .npz archive: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataSourceError(f"npz: {path} is a single .npy array, not an .npz archive")
    with loaded as npz:
        try:
            return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataSourceError(f"npz: cannot read arrays from {path}: {exc}") from exc


def _npz_dataset(name: str, x: np.ndarray, y: np.ndarray) -> ArrayDataset:
    if y.ndim != 1:
        raise DataSourceError(f"{name}: labels must be 1-D, got shape {y.shape}")
    if x.ndim < 2:
        raise DataSourceError(
            f"{name}: features must be at least 2-D (N, D); got shape {x.shape} "
            "(reshape single features with x.reshape(-1, 1))"
        )
    if x.shape[0] != y.shape[0]:
        raise DataSourceError(
            f"{name}: {x.shape[0]} feature rows but {y.shape[0]} labels; they must match"
        )
    if y.size == 0:
        raise DataSourceError(f"{name}: the file holds no examples")
    if y.dtype.kind not in "iu":
        raise DataSourceError(
            f"{name}: labels must be integers 0..K-1, got dtype {y.dtype} "
            "(convert with y.astype(np.int64) if they are whole numbers)"
        )
    if int(y.min()) < 0:
        raise DataSourceError(f"{name}: labels must be non-negative, found {int(y.min())}")
    if x.dtype.kind not in "biuf":
        raise DataSourceError(f"{name}: features must be numeric, got dtype {x.dtype}")
    classes = tuple(str(c) for c in range(int(y.max()) + 1))
    return ArrayDataset(name, x, y, classes, None)


# --- text -------------------------------------------------------------------------------------


def _load_text(root: str | Path | None, split: str, options: TextOptions) -> ArrayDataset:
    """Labelled text, tokenized (:func:`fedchain.data.labelled_text.read_text_source`)."""
    _check_split("text", split, _TEXT_SPLITS)
    name, x, y, classes = read_text_source(root, split, options)
    return ArrayDataset(name, x, y, classes, None)
