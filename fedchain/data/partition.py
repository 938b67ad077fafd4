"""Partitioners: split example indices among federated clients.

Every partitioner is a pure function of its arguments: all randomness comes from
``numpy.random.default_rng(seed)``, so the same call gives the same split on every machine, and
each step draws from the generator in a fixed order.

Every partitioner returns one ``int64`` index array per client, sorted ascending (so a client's
examples keep the data set's order); together the arrays cover each index ``0..N-1`` exactly once.

Methods (:data:`PARTITIONERS`):

* ``iid``: uniform random split into near-equal parts.
* ``dirichlet``: label skew; each class is spread over clients by Dir(alpha) proportions
  (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"). Small alpha
  means each client sees few classes; large alpha approaches ``iid``.
* ``shards``: pathological label skew of McMahan et al. 2017: sort by label, cut into equal
  shards, give each client ``shards_per_client`` random shards.
* ``quantity``: quantity skew; client sizes follow Dir(alpha) proportions, examples are IID.
"""

from __future__ import annotations

import math

import numpy as np

from fedchain.errors import PartitionError

__all__ = [
    "PARTITIONERS",
    "label_histogram",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity",
    "partition_shards",
    "subsample_indices",
]

PARTITIONERS: tuple[str, ...] = ("iid", "dirichlet", "shards", "quantity")

# Redraws allowed before dirichlet gives up on min_size. Each redraw continues the same generator,
# so the outcome (success on draw k, or failure) is still a pure function of the seed.
_DIRICHLET_MAX_TRIES = 100


# --- validation -------------------------------------------------------------------------------


def _check_clients(num_examples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise PartitionError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > num_examples:
        raise PartitionError(
            f"cannot give {num_clients} clients at least one example each from only "
            f"{num_examples} examples; use fewer clients or more data"
        )


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise PartitionError(f"seed must be a non-negative integer, got {seed}")


def _check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and alpha > 0):
        raise PartitionError(
            f"alpha must be a finite number > 0, got {alpha} "
            "(small alpha = strong skew, large alpha = close to IID)"
        )


def _check_min_size(num_examples: int, num_clients: int, min_size: int) -> None:
    if min_size < 0:
        raise PartitionError(f"min_size must be >= 0, got {min_size}")
    if min_size * num_clients > num_examples:
        raise PartitionError(
            f"min_size={min_size} for {num_clients} clients needs {min_size * num_clients} "
            f"examples, but there are only {num_examples}; lower min_size or the client count"
        )


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as a 1-D integer array (any integer values; classes need not be contiguous)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise PartitionError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise PartitionError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    """The common output form: one sorted int64 array per client."""
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --- iid --------------------------------------------------------------------------------------


def partition_iid(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Uniform random split; sizes differ by at most one (the first clients get the extras)."""
    _check_clients(num_examples, num_clients)
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_examples)
    return _finish(np.array_split(perm, num_clients))


# --- dirichlet --------------------------------------------------------------------------------


def partition_dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients by Dir(alpha) proportions.

    For each class (in ascending label order) its indices are shuffled, proportions
    ``p ~ Dir(alpha * 1)`` are drawn, and the class is cut at ``floor(cumsum(p) * n_class)``.
    If any client ends with fewer than ``min_size`` examples the whole draw is repeated, up to
    100 times, continuing the same generator (so still deterministic); then
    :class:`PartitionError` is raised.
    """
    y = _as_labels(labels)
    _check_clients(y.shape[0], num_clients)
    _check_alpha(alpha)
    _check_seed(seed)
    _check_min_size(y.shape[0], num_clients, min_size)
    rng = np.random.default_rng(seed)
    by_class = _indices_by_class(y)
    smallest = 0
    for _ in range(_DIRICHLET_MAX_TRIES):
        parts = _dirichlet_draw(by_class, num_clients, alpha, rng)
        smallest = min(p.shape[0] for p in parts)
        if smallest >= min_size:
            return _finish(parts)
    raise PartitionError(
        f"dirichlet partition: after {_DIRICHLET_MAX_TRIES} draws some client still had fewer "
        f"than {min_size} examples (smallest: {smallest}) with alpha={alpha}, "
        f"{num_clients} clients and {y.shape[0]} examples; raise alpha (less skew), "
        "use fewer clients, or lower min_size"
    )


def _indices_by_class(y: np.ndarray) -> list[np.ndarray]:
    """Index arrays per distinct label, in ascending label order, each ascending."""
    order = np.argsort(y, kind="stable")
    _, starts = np.unique(y[order], return_index=True)
    return np.split(order, starts[1:])


def _dirichlet_draw(
    by_class: list[np.ndarray], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One draw of the dirichlet split (no min_size check)."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    concentration = np.full(num_clients, alpha, dtype=np.float64)
    for class_idx in by_class:
        shuffled = rng.permutation(class_idx)
        proportions = rng.dirichlet(concentration)
        # The last cut is implied (= class size), so float round-off in cumsum cannot drop or
        # duplicate examples; clip guards the same for the interior cuts.
        cuts = np.floor(np.cumsum(proportions)[:-1] * shuffled.shape[0]).astype(np.int64)
        cuts = np.clip(cuts, 0, shuffled.shape[0])
        for client, piece in enumerate(np.split(shuffled, cuts)):
            pieces[client].append(piece)
    return [np.concatenate(p) for p in pieces]


# --- shards -----------------------------------------------------------------------------------


def partition_shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """McMahan et al. (2017) shards: label-sorted data cut into equal shards, dealt at random.

    Examples are shuffled first and then stable-sorted by label, so which examples of a class
    share a shard is random but shards never interleave classes. Shard sizes differ by at most
    one. A client holds at most ``shards_per_client`` labels when every class size is a multiple
    of the shard size; otherwise a shard may straddle a class boundary and add one more label.
    """
    y = _as_labels(labels)
    _check_clients(y.shape[0], num_clients)
    _check_seed(seed)
    if shards_per_client < 1:
        raise PartitionError(f"shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    if num_shards > y.shape[0]:
        raise PartitionError(
            f"{num_clients} clients x {shards_per_client} shards = {num_shards} shards, more than "
            f"the {y.shape[0]} examples; lower shards_per_client or the client count"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(y.shape[0])
    by_label = perm[np.argsort(y[perm], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owner_order = rng.permutation(num_shards)  # client c owns entries c*per .. (c+1)*per-1
    per = shards_per_client
    return _finish(
        [
            np.concatenate([shards[s] for s in owner_order[c * per : (c + 1) * per]])
            for c in range(num_clients)
        ]
    )


# --- quantity ---------------------------------------------------------------------------------


def partition_quantity(
    num_examples: int, num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Quantity skew: client sizes from Dir(alpha) proportions, examples assigned IID.

    Each client first gets ``min_size`` examples; the remaining ``R`` are shared by the drawn
    proportions with the largest-remainder method (floors first, then one extra each to the
    largest fractional parts, ties to the lower client index), so sizes sum exactly to
    ``num_examples`` without a retry loop.
    """
    _check_clients(num_examples, num_clients)
    _check_alpha(alpha)
    _check_seed(seed)
    _check_min_size(num_examples, num_clients, min_size)
    rng = np.random.default_rng(seed)
    proportions = rng.dirichlet(np.full(num_clients, alpha, dtype=np.float64))
    sizes = min_size + _largest_remainder(proportions, num_examples - min_size * num_clients)
    perm = rng.permutation(num_examples)
    return _finish(np.split(perm, np.cumsum(sizes)[:-1]))


def _largest_remainder(proportions: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``proportions`` summing exactly to ``total``."""
    exact: np.ndarray = proportions / proportions.sum() * total
    base: np.ndarray = np.floor(exact).astype(np.int64)
    leftover = total - int(base.sum())
    # Stable sort on negated remainders: largest first, ties to the lower index.
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:leftover]] += 1
    return base


# --- dispatcher and helpers -------------------------------------------------------------------


def partition(
    labels: np.ndarray,
    num_clients: int,
    method: str = "iid",
    *,
    seed: int = 0,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Split ``labels``' indices among ``num_clients`` with ``method`` (see :data:`PARTITIONERS`).

    ``alpha`` is used by ``dirichlet`` and ``quantity``, ``shards_per_client`` by ``shards``;
    ``iid`` and ``quantity`` use only the number of labels.
    """
    y = _as_labels(labels)
    if method == "iid":
        return partition_iid(y.shape[0], num_clients, seed)
    if method == "dirichlet":
        return partition_dirichlet(y, num_clients, alpha, seed)
    if method == "shards":
        return partition_shards(y, num_clients, shards_per_client, seed)
    if method == "quantity":
        return partition_quantity(y.shape[0], num_clients, alpha, seed)
    raise PartitionError(
        f"unknown partition method {method!r}; choose one of: {', '.join(PARTITIONERS)}"
    )


def label_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Examples per class ``0..num_classes-1`` as int64 (classes with no examples count 0)."""
    y = _as_labels(labels)
    if num_classes < 1:
        raise PartitionError(f"num_classes must be >= 1, got {num_classes}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise PartitionError(
            f"labels must lie in 0..{num_classes - 1} for {num_classes} classes; "
            f"got {int(y.min())}..{int(y.max())}"
        )
    return np.bincount(y, minlength=num_classes).astype(np.int64)


def holdout_indices(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out): ``fraction`` of each class held out, at least one
    example of every class with two or more, chosen by ``seed``. Both sorted; together they are
    every index once. The coordinator's validation split comes from here, before clients split
    the rest, so no client ever holds a validation example."""
    if not 0 <= fraction < 1:
        raise PartitionError(f"holdout fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = 0 if fraction == 0 or len(members) < 2 else max(1, round(fraction * len(members)))
        held.append(rng.permutation(members)[:count])
    holdout = np.sort(np.concatenate(held)).astype(np.int64) if held else np.array([], np.int64)
    kept = np.setdiff1d(np.arange(len(labels), dtype=np.int64), holdout)
    return kept, holdout


def subsample_indices(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` indices, sorted, drawn by ``seed`` with each class kept in proportion (largest
    remainder). A run's ``train-examples``/``test-examples`` take a split's subsample from here
    before anything else sees it, so the run stays a pure function of its configuration. The
    generator is ``(seed, 1)``'s, not ``seed``'s, so the draw is independent of the holdout's."""
    labels = _as_labels(labels)
    _check_seed(seed)
    if not 1 <= count <= len(labels):
        raise PartitionError(f"a subsample must have 1..{len(labels)} examples, got {count}")
    classes, sizes = np.unique(labels, return_counts=True)
    counts = _largest_remainder(sizes.astype(np.float64), count)
    rng = np.random.default_rng((seed, 1))
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:k]
        for label, k in zip(classes, counts, strict=True)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
