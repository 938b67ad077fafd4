"""Tests for fedchain.data.sources: every loader on tiny data written into tmp_path (no
downloads)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedchain.data import sources
from fedchain.data.sources import SOURCES, ArrayDataset, load_source
from fedchain.errors import DataSourceError

# --- helpers ----------------------------------------------------------------------------------


def _write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 file: big-endian magic 0x00000803 (uint8, 3 dims), then the dims, then pixels."""
    n, h, w = images.shape
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, h, w))
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX1 file: big-endian magic 0x00000801 (uint8, 1 dim), then the count, then labels."""
    header = bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big")
    path.write_bytes(header + labels.astype(np.uint8).tobytes())


def _make_mnist_root(root: Path, folder: str, n_train: int, n_test: int) -> dict[str, tuple]:
    """Write the four raw files torchvision's _check_exists requires (train and t10k)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = (images, labels)
    return out


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# --- digits -----------------------------------------------------------------------------------


def test_digits_splits_sizes_and_disjoint() -> None:
    full = load_source("digits", split="all")
    train = load_source("digits", split="train")
    test = load_source("digits", split="test")
    assert len(full) == 1797
    assert len(train) + len(test) == 1797
    assert len(test) == 360  # ceil(0.2 * 1797), sklearn's rounding for the test side
    # Disjoint and covering: match each split example back to the full set by (pixels, label).
    keys = {(row.tobytes(), int(lab)) for row, lab in zip(full.x, full.y, strict=True)}
    train_keys = [(row.tobytes(), int(lab)) for row, lab in zip(train.x, train.y, strict=True)]
    test_keys = [(row.tobytes(), int(lab)) for row, lab in zip(test.x, test.y, strict=True)]
    assert set(train_keys) <= keys
    assert set(test_keys) <= keys
    full_counts: dict[tuple[bytes, int], int] = {}
    for k in [(row.tobytes(), int(lab)) for row, lab in zip(full.x, full.y, strict=True)]:
        full_counts[k] = full_counts.get(k, 0) + 1
    split_counts: dict[tuple[bytes, int], int] = {}
    for k in train_keys + test_keys:
        split_counts[k] = split_counts.get(k, 0) + 1
    assert split_counts == full_counts


def test_digits_are_sklearns_and_the_frozen_split_is_train_test_split() -> None:
    """The run reads sklearn's digits file without importing sklearn, and its split is frozen:
    both must stay what sklearn's own loader and train_test_split give."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    full = load_source("digits", split="all")
    assert np.array_equal(full.x.reshape(len(full), -1), bunch.data.astype(np.uint8))
    assert np.array_equal(full.y, bunch.target)
    train_idx, test_idx = train_test_split(
        np.arange(1797), test_size=0.2, stratify=bunch.target, random_state=0
    )
    for split, idx in (("train", train_idx), ("test", test_idx)):
        ds = load_source("digits", split=split)
        assert np.array_equal(ds.x, full.x[np.sort(idx)]) and np.array_equal(
            ds.y, full.y[np.sort(idx)]
        )


def test_loading_digits_imports_no_sklearn() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from fedchain.data.sources import load_source; load_source('digits'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_digits_stratified() -> None:
    full = load_source("digits", split="all")
    test = load_source("digits", split="test")
    full_hist = np.bincount(full.y, minlength=10)
    test_hist = np.bincount(test.y, minlength=10)
    assert np.all(np.abs(test_hist - 0.2 * full_hist) <= 1)


def test_digits_shapes_dtypes_and_determinism() -> None:
    ds = load_source("digits")  # default split is "train"
    assert ds.name == "digits"
    assert ds.x.dtype == np.uint8
    assert ds.x.shape == (len(ds), 1, 8, 8)
    assert ds.x.flags["C_CONTIGUOUS"]
    assert ds.y.dtype == np.int64
    assert ds.y.shape == (len(ds),)
    assert ds.value_max == 16.0
    assert ds.classes == tuple(str(i) for i in range(10))
    assert int(ds.x.max()) == 16
    again = load_source("digits", split="train")
    np.testing.assert_array_equal(ds.x, again.x)
    np.testing.assert_array_equal(ds.y, again.y)


def test_digits_bad_split() -> None:
    with pytest.raises(DataSourceError, match="split"):
        load_source("digits", split="validation")


# --- MNIST / Fashion-MNIST --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_like_from_idx_files(tmp_path: Path, source: str, folder: str, split: str) -> None:
    written = _make_mnist_root(tmp_path, folder, n_train=7, n_test=5)
    images, labels = written["train" if split == "train" else "t10k"]
    ds = load_source(source, root=tmp_path, split=split)
    assert ds.name == source
    assert ds.x.shape == (len(labels), 1, 28, 28)
    assert ds.x.dtype == np.uint8
    assert ds.x.flags["C_CONTIGUOUS"]
    assert ds.y.dtype == np.int64
    assert ds.value_max == 255.0
    assert len(ds.classes) == 10
    np.testing.assert_array_equal(ds.x[:, 0], images)
    np.testing.assert_array_equal(ds.y, labels.astype(np.int64))


def test_fashion_mnist_class_names(tmp_path: Path) -> None:
    _make_mnist_root(tmp_path, "FashionMNIST", n_train=3, n_test=2)
    ds = load_source("fashion-mnist", root=tmp_path)
    assert ds.classes[0] == "T-shirt/top"
    assert ds.classes[9] == "Ankle boot"


@pytest.mark.parametrize("source", ["mnist", "cifar10"])
def test_missing_root_mentions_download(source: str) -> None:
    with pytest.raises(DataSourceError, match="--download"):
        load_source(source, root=None)


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_without_root_or_debian_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    with pytest.raises(DataSourceError) as info:
        load_source("fashion-mnist", split=split)
    said = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in said
    assert "--root" in said and "--download" in said
    assert str(tmp_path / "not-installed") in said


def _write_flat_idx(folder: Path, n_train: int, n_test: int, gzipped: bool) -> dict[str, tuple]:
    """The four IDX files directly in ``folder``, as their authors (and Debian) ship them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        image_path = folder / f"{prefix}-images-idx3-ubyte"
        label_path = folder / f"{prefix}-labels-idx1-ubyte"
        _write_idx_images(image_path, images)
        _write_idx_labels(label_path, labels)
        if gzipped:
            for path in (image_path, label_path):
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
                path.unlink()
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("source", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_like_from_idx_files_directly_in_root(
    tmp_path: Path, source: str, gzipped: bool, split: str
) -> None:
    """--root may name a folder holding the four files themselves (Debian's layout): read in
    place, with torchvision's class names, and without importing torchvision."""
    written = _write_flat_idx(tmp_path, n_train=6, n_test=4, gzipped=gzipped)
    images, labels = written["train" if split == "train" else "t10k"]
    ds = load_source(source, root=tmp_path, split=split)
    assert ds.name == source and ds.value_max == 255.0
    assert ds.x.shape == (len(labels), 1, 28, 28) and ds.x.dtype == np.uint8
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.x[:, 0], images)
    np.testing.assert_array_equal(ds.y, labels.astype(np.int64))
    from torchvision import datasets

    expected = datasets.MNIST.classes if source == "mnist" else datasets.FashionMNIST.classes
    assert ds.classes == tuple(expected)


def test_fashion_mnist_default_folder_is_read_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _write_flat_idx(tmp_path / "debian", n_train=5, n_test=3, gzipped=True)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    ds = load_source("fashion-mnist", split="test")
    np.testing.assert_array_equal(ds.x[:, 0], written["t10k"][0])
    assert sorted(p.name for p in (tmp_path / "debian").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]  # nothing copied or unpacked next to them


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate-images", "truncated"),
        ("labels-are-images", "expected uint8 labels of shape"),
        ("images-are-labels", "expected uint8 images of shape"),
        ("count-mismatch", "but 3 labels"),
        ("label-10", "labels must lie in 0..9"),
    ],
)
def test_invalid_idx_files_in_root_are_refused(tmp_path: Path, damage: str, message: str) -> None:
    _write_flat_idx(tmp_path, n_train=4, n_test=4, gzipped=False)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    if damage == "truncate-images":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "labels-are-images":
        labels.write_bytes(images.read_bytes())
    elif damage == "images-are-labels":
        images.write_bytes(labels.read_bytes())
    elif damage == "count-mismatch":
        _write_idx_labels(labels, np.array([1, 2, 3], dtype=np.uint8))
    else:
        _write_idx_labels(labels, np.array([1, 2, 3, 10], dtype=np.uint8))
    with pytest.raises(DataSourceError, match=message):
        load_source("fashion-mnist", root=tmp_path)


# The real data: Debian's dataset-fashion-mnist (make test installs it when run as root).


def _debian_fashion_mnist() -> Path:
    folder = sources.DEBIAN_FASHION_MNIST
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"Debian's Fashion-MNIST is not installed in {folder}: apt-get install -y "
            "dataset-fashion-mnist (make test installs it when run as root)"
        )
    return folder


@pytest.mark.fashion_mnist
def test_fashion_mnist_from_the_debian_package() -> None:
    _debian_fashion_mnist()
    for split, n in (("train", 60000), ("test", 10000)):
        ds = load_source("fashion-mnist", split=split)
        assert ds.x.shape == (n, 1, 28, 28) and ds.x.dtype == np.uint8
        assert ds.y.shape == (n,) and ds.y.dtype == np.int64
        assert np.array_equal(np.bincount(ds.y, minlength=10), np.full(10, n // 10))
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
        assert ds.value_max == 255.0 and int(ds.x.max()) == 255 and int(ds.x.min()) == 0


@pytest.mark.fashion_mnist
def test_fashion_mnist_debian_files_read_as_torchvision_reads_them(tmp_path: Path) -> None:
    """Our IDX reader and torchvision's agree on the real test split (unpacked in torchvision's
    layout), down to the class names."""
    folder = _debian_fashion_mnist()
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte"
            if prefix == "train":  # torchvision checks all four exist; only t10k is compared
                (raw / name).write_bytes(b"")
            else:
                (raw / name).write_bytes(gzip.decompress((folder / f"{name}.gz").read_bytes()))
    ours = load_source("fashion-mnist", split="test")
    theirs = load_source("fashion-mnist", root=tmp_path, split="test")
    np.testing.assert_array_equal(ours.x, theirs.x)
    np.testing.assert_array_equal(ours.y, theirs.y)
    assert ours.classes == theirs.classes


@pytest.mark.parametrize("source", ["mnist", "fashion-mnist", "cifar10"])
def test_empty_root_mentions_download(tmp_path: Path, source: str) -> None:
    with pytest.raises(DataSourceError, match="--download"):
        load_source(source, root=tmp_path)


def test_mnist_bad_split(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="split"):
        load_source("mnist", root=tmp_path, split="all")


# --- CIFAR-10 ---------------------------------------------------------------------------------


def _make_cifar_root(root: Path, per_batch: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with (folder / name).open("wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        out[name] = (data, labels)
    names = [f"class{i}" for i in range(10)]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": names}, f)
    return out


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_from_pickled_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks the md5 of every batch (CIFAR10._check_integrity) and of batches.meta
    # (_load_meta); synthetic files can never match the real checksums. Both checks go through
    # the module-level check_integrity, so patching that one function covers them. The test
    # still exercises real pickle loading and our reshaping.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    written = _make_cifar_root(tmp_path, per_batch=3)
    ds = load_source("cifar10", root=tmp_path, split=split)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data = np.concatenate([written[n][0] for n in names])
    labels = [lab for n in names for lab in written[n][1]]
    assert ds.x.shape == (len(labels), 3, 32, 32)
    assert ds.x.dtype == np.uint8
    assert ds.x.flags["C_CONTIGUOUS"]
    assert ds.value_max == 255.0
    assert ds.classes == tuple(f"class{i}" for i in range(10))
    # CIFAR rows are stored channel-major, so (3, 32, 32) per row is the original layout.
    np.testing.assert_array_equal(ds.x, data.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.y, np.array(labels, dtype=np.int64))


def test_cifar10_corrupted_files_rejected(tmp_path: Path) -> None:
    _make_cifar_root(tmp_path, per_batch=1)  # real md5 check stays on: must fail cleanly
    with pytest.raises(DataSourceError, match="cifar10"):
        load_source("cifar10", root=tmp_path)


# --- imagefolder ------------------------------------------------------------------------------


def _make_image_folder(root: Path) -> None:
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
    for i, (cls, rgb) in enumerate(colours.items()):
        (root / cls).mkdir(parents=True)
        for j in range(2):
            size = (10 + i + j, 12)  # different sizes: the loader must resize
            Image.new("RGB", size, rgb).save(root / cls / f"img{j}.png")
    Image.new("L", (5, 5), 128).save(root / "emu" / "gray.png")  # a grayscale image too


def test_imagefolder_loads_resizes_and_labels(tmp_path: Path) -> None:
    _make_image_folder(tmp_path)
    ds = load_source("imagefolder", root=tmp_path, image_size=6)
    assert ds.classes == ("cat", "dog", "emu")
    assert ds.x.shape == (7, 3, 6, 6)
    assert ds.x.dtype == np.uint8
    assert ds.x.flags["C_CONTIGUOUS"]
    assert ds.value_max == 255.0
    np.testing.assert_array_equal(ds.y, [0, 0, 1, 1, 2, 2, 2])
    # Solid colours survive resizing exactly, channel-first.
    np.testing.assert_array_equal(ds.x[0, :, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(ds.x[2, :, 3, 3], [0, 255, 0])
    labels_emu = ds.x[ds.y == 2]
    assert any(np.all(img == 128) for img in labels_emu)  # grayscale converted to RGB


def test_imagefolder_missing_or_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="directory"):
        load_source("imagefolder", root=tmp_path / "nope")
    with pytest.raises(DataSourceError):
        load_source("imagefolder", root=tmp_path)  # exists but holds no class folders
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataSourceError):
        load_source("imagefolder", root=tmp_path)
    with pytest.raises(DataSourceError, match="root"):
        load_source("imagefolder", root=None)


def test_imagefolder_bad_image_size(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="image_size"):
        load_source("imagefolder", root=tmp_path, image_size=0)


# --- npz --------------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = np.asfortranarray(rng.normal(size=(20, 4)).astype(np.float32))
    y = rng.integers(0, 3, size=20)
    y[0] = 4  # class 3 absent: classes still run 0..max
    path = _write_npz(tmp_path / "d.npz", x=x, y=y)
    ds = load_source("npz", root=path)
    assert ds.name == f"npz:{path}"
    assert ds.value_max is None
    assert ds.classes == ("0", "1", "2", "3", "4")
    assert ds.x.flags["C_CONTIGUOUS"]
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    np.testing.assert_array_equal(load_source("npz", root=str(path), split="all").x, x)


def test_npz_alternative_keys_and_test_split(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    path = _write_npz(
        tmp_path / "d.npz",
        features=x,
        labels=np.array([0, 1, 0, 1, 0, 1], dtype=np.int32),
        x_test=x[:2] + 100,
        y_test=np.array([1, 0]),
    )
    train = load_source("npz", root=path, split="train")
    test = load_source("npz", root=path, split="test")
    assert len(train) == 6
    np.testing.assert_array_equal(test.x, x[:2] + 100)
    np.testing.assert_array_equal(test.y, [1, 0])
    upper = _write_npz(tmp_path / "u.npz", X=x, y=np.zeros(6, dtype=np.uint8))
    assert load_source("npz", root=upper).y.dtype == np.int64


def test_npz_missing_keys_lists_available(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", data=np.zeros((3, 2)), target=np.zeros(3, dtype=int))
    with pytest.raises(DataSourceError, match=r"\['data', 'target'\]"):
        load_source("npz", root=path)
    with pytest.raises(DataSourceError, match="x_test"):
        load_source(
            "npz",
            root=_write_npz(tmp_path / "e.npz", x=np.zeros((3, 2)), y=np.zeros(3, dtype=int)),
            split="test",
        )


def test_npz_length_mismatch(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.zeros(3, dtype=int))
    with pytest.raises(DataSourceError, match="must match"):
        load_source("npz", root=path)


def test_npz_float_labels(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.array([0.0, 1.0, 1.0]))
    with pytest.raises(DataSourceError, match="integers"):
        load_source("npz", root=path)


def test_npz_negative_labels_and_bad_shapes(tmp_path: Path) -> None:
    neg = _write_npz(tmp_path / "n.npz", x=np.zeros((3, 2)), y=np.array([0, -1, 1]))
    with pytest.raises(DataSourceError, match="non-negative"):
        load_source("npz", root=neg)
    flat = _write_npz(tmp_path / "f.npz", x=np.zeros(3), y=np.array([0, 1, 1]))
    with pytest.raises(DataSourceError, match="reshape"):
        load_source("npz", root=flat)


def test_npz_missing_or_not_npz(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="does not exist"):
        load_source("npz", root=tmp_path / "missing.npz")
    with pytest.raises(DataSourceError, match="root"):
        load_source("npz", root=None)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(DataSourceError):
        load_source("npz", root=junk)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DataSourceError, match=r"\.npz"):
        load_source("npz", root=single)


# --- general ----------------------------------------------------------------------------------


def test_unknown_source_lists_sources() -> None:
    with pytest.raises(DataSourceError) as info:
        load_source("imagenet")
    for name in SOURCES:
        assert name in str(info.value)


def test_array_dataset_subset_and_validation() -> None:
    x = np.arange(24, dtype=np.uint8).reshape(6, 1, 2, 2)
    ds = ArrayDataset("t", x, np.array([0, 1, 2, 0, 1, 2]), ("a", "b", "c"), 255.0)
    assert ds.y.dtype == np.int64
    sub = ds.subset(np.array([4, 1]))
    assert (sub.name, sub.classes, sub.value_max) == ("t", ("a", "b", "c"), 255.0)
    np.testing.assert_array_equal(sub.x, x[[4, 1]])
    np.testing.assert_array_equal(sub.y, [1, 1])
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(DataSourceError, match=r"0\.\.5"):
        ds.subset(np.array([6]))
    with pytest.raises(DataSourceError, match="integer"):
        ds.subset(np.array([0.5]))
    with pytest.raises(DataSourceError, match=r"0\.\.1"):
        ArrayDataset("t", x, np.array([0, 1, 2, 0, 1, 2]), ("a", "b"), None)
    with pytest.raises(DataSourceError, match="shape"):
        ArrayDataset("t", x[:5], np.array([0, 1, 2, 0, 1, 2]), ("a", "b", "c"), None)
