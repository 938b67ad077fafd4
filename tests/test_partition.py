"""Tests for fedchain.data.partition: coverage, sizes, determinism, skew and parameter
validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchain.data.partition import (
    PARTITIONERS,
    label_histogram,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
    partition_shards,
)
from fedchain.errors import PartitionError

NUM_CLASSES = 10
SEEDS = [0, 1, 7]


def _labels(per_class: int = 60, seed: int = 123) -> np.ndarray:
    """Balanced labels in shuffled order, so index order says nothing about the label."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class)).astype(np.int64)


def _skewed_labels() -> np.ndarray:
    """Unequal class sizes (10, 20, ..., 100) to catch bugs that only balanced data hides."""
    rng = np.random.default_rng(5)
    return rng.permutation(np.repeat(np.arange(NUM_CLASSES), np.arange(1, 11) * 10))


def _assert_exact_cover(parts: list[np.ndarray], num_examples: int) -> None:
    for p in parts:
        assert p.dtype == np.int64
        assert p.ndim == 1
        assert np.all(np.diff(p) > 0), "each client's indices must be sorted and unique"
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(num_examples))


def _class_shares(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """(clients, classes) fraction of each client's data in each class."""
    hists = np.stack([label_histogram(labels[p], NUM_CLASSES) for p in parts])
    return hists / hists.sum(axis=1, keepdims=True)


# --- properties every method shares ----------------------------------------------------------


@pytest.mark.parametrize("method", PARTITIONERS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("labels", [_labels(), _skewed_labels()], ids=["balanced", "skewed"])
def test_every_index_exactly_once(method: str, seed: int, labels: np.ndarray) -> None:
    parts = partition(labels, 10, method, seed=seed)
    assert len(parts) == 10
    _assert_exact_cover(parts, labels.shape[0])
    total = sum(label_histogram(labels[p], NUM_CLASSES) for p in parts)
    np.testing.assert_array_equal(total, label_histogram(labels, NUM_CLASSES))


@pytest.mark.parametrize("method", PARTITIONERS)
def test_deterministic_by_seed(method: str) -> None:
    labels = _labels()
    first = partition(labels, 8, method, seed=3)
    again = partition(labels, 8, method, seed=3)
    other = partition(labels, 8, method, seed=4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    num_examples=st.integers(1, 300),
    num_clients=st.integers(1, 20),
    method=st.sampled_from(PARTITIONERS),
    seed=st.integers(0, 2**32 - 1),
)
def test_exact_cover_property(num_examples: int, num_clients: int, method: str, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 4, size=num_examples)
    if num_clients > num_examples:
        with pytest.raises(PartitionError):
            partition(labels, num_clients, method, seed=seed, shards_per_client=1)
        return
    try:
        parts = partition(labels, num_clients, method, seed=seed, alpha=1.0, shards_per_client=1)
    except PartitionError as exc:  # dirichlet may legitimately fail to give everyone an example
        assert method == "dirichlet"
        assert "alpha" in str(exc)
        return
    assert len(parts) == num_clients
    _assert_exact_cover(parts, num_examples)


# --- iid --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_iid_near_equal_sizes(seed: int) -> None:
    parts = partition_iid(1003, 10, seed)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == 1003
    _assert_exact_cover(parts, 1003)


def test_iid_single_client_gets_everything() -> None:
    (only,) = partition_iid(17, 1, 0)
    np.testing.assert_array_equal(only, np.arange(17))


# --- dirichlet --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_dirichlet_small_alpha_is_skewed(seed: int) -> None:
    labels = _labels(per_class=500)
    parts = partition_dirichlet(labels, 10, alpha=0.1, seed=seed)
    shares = _class_shares(labels, parts)
    # IID would put ~0.1 of each client's data in its top class; alpha=0.1 concentrates it.
    assert shares.max(axis=1).mean() > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_dirichlet_large_alpha_is_near_iid(seed: int) -> None:
    labels = _labels(per_class=500)
    parts = partition_dirichlet(labels, 10, alpha=1000.0, seed=seed)
    shares = _class_shares(labels, parts)
    assert np.abs(shares - 1 / NUM_CLASSES).max() < 0.03
    sizes = np.array([p.size for p in parts])
    assert np.abs(sizes - 500).max() < 50


def test_dirichlet_respects_min_size() -> None:
    labels = _labels()
    for seed in SEEDS:
        parts = partition_dirichlet(labels, 10, alpha=0.3, seed=seed, min_size=20)
        assert min(p.size for p in parts) >= 20
        _assert_exact_cover(parts, labels.shape[0])


def test_dirichlet_gives_up_with_advice() -> None:
    labels = np.repeat(np.arange(NUM_CLASSES), 10)
    with pytest.raises(PartitionError, match="raise alpha"):
        partition_dirichlet(labels, 20, alpha=0.01, seed=0, min_size=4)


# --- shards -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shards_per_client", [1, 2, 3])
def test_shards_limit_labels_per_client(seed: int, shards_per_client: int) -> None:
    # 10 classes x 60 examples, 10 clients: shard sizes 60, 30, 20 all divide 60, so no shard
    # straddles a class boundary and each client holds at most shards_per_client labels.
    labels = _labels(per_class=60)
    parts = partition_shards(labels, 10, shards_per_client, seed)
    _assert_exact_cover(parts, labels.shape[0])
    for p in parts:
        assert p.size == 60
        assert np.unique(labels[p]).size <= shards_per_client


def test_shards_uneven_sizes_still_cover() -> None:
    labels = _skewed_labels()
    parts = partition_shards(labels, 7, 3, 0)  # 550 examples into 21 shards: sizes 26 or 27
    _assert_exact_cover(parts, labels.shape[0])
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 3


# --- quantity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_quantity_sizes_vary_and_respect_min_size(seed: int) -> None:
    parts = partition_quantity(1000, 10, alpha=0.5, seed=seed, min_size=5)
    sizes = np.array([p.size for p in parts])
    assert sizes.min() >= 5
    assert sizes.sum() == 1000
    assert sizes.max() - sizes.min() > 50  # clearly not the near-equal iid split
    _assert_exact_cover(parts, 1000)


def test_quantity_min_size_can_use_all_examples() -> None:
    parts = partition_quantity(40, 8, alpha=0.1, seed=0, min_size=5)
    assert [p.size for p in parts] == [5] * 8


# --- dispatcher and histogram -----------------------------------------------------------------


def test_dispatcher_matches_direct_calls() -> None:
    labels = _labels()
    n = labels.shape[0]
    cases = [
        (partition(labels, 6, "iid", seed=2), partition_iid(n, 6, 2)),
        (
            partition(labels, 6, "dirichlet", seed=2, alpha=0.7),
            partition_dirichlet(labels, 6, 0.7, 2),
        ),
        (
            partition(labels, 6, "shards", seed=2, shards_per_client=3),
            partition_shards(labels, 6, 3, 2),
        ),
        (
            partition(labels, 6, "quantity", seed=2, alpha=0.7),
            partition_quantity(n, 6, 0.7, 2),
        ),
    ]
    for via_dispatch, direct in cases:
        for a, b in zip(via_dispatch, direct, strict=True):
            np.testing.assert_array_equal(a, b)


def test_label_histogram() -> None:
    hist = label_histogram(np.array([0, 2, 2, 3]), 5)
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, [1, 0, 2, 1, 0])
    np.testing.assert_array_equal(label_histogram(np.array([], dtype=np.int64), 3), [0, 0, 0])


# --- invalid parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("method", PARTITIONERS)
@pytest.mark.parametrize("num_clients", [0, -1, 601])
def test_invalid_num_clients(method: str, num_clients: int) -> None:
    with pytest.raises(PartitionError, match="clients"):
        partition(_labels(), num_clients, method)


@pytest.mark.parametrize("method", ["dirichlet", "quantity"])
@pytest.mark.parametrize("alpha", [0.0, -0.5, float("nan"), float("inf")])
def test_invalid_alpha(method: str, alpha: float) -> None:
    with pytest.raises(PartitionError, match="alpha"):
        partition(_labels(), 5, method, alpha=alpha)


def test_invalid_shards_per_client() -> None:
    with pytest.raises(PartitionError, match="shards_per_client"):
        partition(_labels(), 5, "shards", shards_per_client=0)


def test_invalid_total_shards() -> None:
    with pytest.raises(PartitionError, match="shards"):
        partition_shards(np.zeros(10, dtype=np.int64), 4, 3, 0)  # 12 shards > 10 examples


def test_invalid_method_lists_partitioners() -> None:
    with pytest.raises(PartitionError) as info:
        partition(_labels(), 5, "pathological")
    for name in PARTITIONERS:
        assert name in str(info.value)


def test_invalid_labels() -> None:
    with pytest.raises(PartitionError, match="1-D"):
        partition(np.zeros((4, 2), dtype=np.int64), 2, "iid")
    with pytest.raises(PartitionError, match="integers"):
        partition(np.array([0.0, 1.0, 1.0]), 2, "dirichlet")


def test_invalid_seed() -> None:
    with pytest.raises(PartitionError, match="seed"):
        partition(_labels(), 5, "iid", seed=-1)


def test_invalid_min_size() -> None:
    with pytest.raises(PartitionError, match="min_size"):
        partition_quantity(40, 8, alpha=1.0, seed=0, min_size=6)  # needs 48 > 40
    with pytest.raises(PartitionError, match="min_size"):
        partition_dirichlet(_labels(), 5, alpha=1.0, seed=0, min_size=-1)


def test_invalid_label_histogram() -> None:
    with pytest.raises(PartitionError, match=r"0\.\.2"):
        label_histogram(np.array([0, 3]), 3)
    with pytest.raises(PartitionError, match="num_classes"):
        label_histogram(np.array([0]), 0)


def test_holdout_is_stratified_deterministic_and_disjoint():
    from fedchain.data.partition import holdout_indices

    labels = np.repeat(np.arange(5), [30, 20, 10, 5, 2])
    kept, held = holdout_indices(labels, 0.1, seed=3)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))
    assert [int((labels[held] == c).sum()) for c in range(5)] == [3, 2, 1, 1, 1]
    again = holdout_indices(labels, 0.1, seed=3)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(holdout_indices(labels, 0.1, seed=4)[1], held)
    assert len(holdout_indices(labels, 0.0, seed=3)[1]) == 0


def test_invalid_holdout_fraction():
    from fedchain.data.partition import holdout_indices

    with pytest.raises(PartitionError):
        holdout_indices(np.zeros(10, dtype=np.int64), 1.0, seed=0)


def test_subsample_is_stratified_deterministic_and_seeded():
    from fedchain.data.partition import holdout_indices, subsample_indices

    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    chosen = subsample_indices(labels, 20, seed=3)
    assert len(chosen) == len(np.unique(chosen)) == 20
    assert np.array_equal(chosen, np.sort(chosen))
    assert [int((labels[chosen] == c).sum()) for c in range(4)] == [8, 6, 4, 2]
    assert np.array_equal(subsample_indices(labels, 20, seed=3), chosen)
    assert not np.array_equal(subsample_indices(labels, 20, seed=4), chosen)
    # its own generator: not the holdout's draw of the same seed
    assert np.array_equal(subsample_indices(labels, 100, seed=3), np.arange(100))
    assert not np.array_equal(holdout_indices(labels, 0.2, seed=3)[1], chosen)


@pytest.mark.parametrize("count", [0, 101, -1])
def test_invalid_subsample_size(count: int):
    from fedchain.data.partition import subsample_indices

    with pytest.raises(PartitionError, match=r"1\.\.100"):
        subsample_indices(np.zeros(100, dtype=np.int64), count, seed=0)
