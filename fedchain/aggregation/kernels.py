"""Numeric kernels of the rules: weighted sums by BLAS axpy, order statistics, Krum distances.

Private numerics of :mod:`fedchain.aggregation.rules`: each kernel takes the validated updates
(``list[dict[str, ndarray]]``), the normalised weights and the indices of the clients to use, and
returns fresh arrays. No validation happens here. scipy's BLAS and ``threadpoolctl`` are imported
in this module only, when first used.

Speed (DESIGN.md section 6, LIMITS.md): the weighted average reads every client tensor exactly
once and writes one output. For each tensor it allocates the output and accumulates into it in
place, client by client in index order, with BLAS ``axpy`` (``y += a * x``, fused) on flat views
of the clients' own memory, in blocks of ``_AXPY_BLOCK`` elements so the block being summed stays
in cache while the inputs stream past. Nothing is stacked, and no per-client temporary is made
for a tensor above ``_SMALL_TENSOR`` elements (a C-contiguous float32/float64 input is never
copied); small tensors (biases, norms) are packed into one buffer per client of at most
``_PACK_LIMIT`` elements, so they cost one BLAS call per client instead of one per tensor.

BLAS is held to one thread for the call (``threadpoolctl``): on a busy machine OpenBLAS's
threads spin against other processes, and axpy with its default two threads was measured 40x
slower than with one; one thread already runs at the speed of numpy's ``w @ stacked``. Candidates
measured on the project's 2-core machine, ResNet-18-sized updates, alternating runs: scipy
``saxpy`` (chosen), torch ``add_(alpha=)`` (about 1.2x slower, and it too needs its threads
pinned), ``np.multiply`` + ``np.add`` through a cached scratch block (1.2-1.5x slower). See
``experiments/bench_aggregation.py`` for the comparison with Flower.

BLAS's thread count is process-wide state: while an aggregation runs, BLAS calls made by other
threads of the same process also run on one thread. Call it from one thread at a time.

Precision and determinism: float32 tensors are accumulated in float32, float64 in float64.
Against a float64 reference the largest float32 error measured was 1.1e-6 (10 clients) and
4.6e-6 (100 clients) of the tensor's largest magnitude, the same as Flower's own float32
arithmetic (1.3e-6 and 4.3e-6), far below the noise of SGD; a float64 accumulator would double
the output traffic for nothing. float16 tensors are accumulated in float32 and rounded back.
Integer and bool tensors (e.g. BatchNorm ``num_batches_tracked``) are averaged in float64 and
rounded half-to-even back to their dtype (for bool: true where the weight of true values is above
one half), so every output keeps its input dtype, unlike Flower's ``aggregate()``, which turns
integers into float64. Each element is summed in client index order, and the blocking and packing
depend only on names, shapes and dtypes, so the same inputs give bit-identical outputs on the same
machine and library build. They are not promised bit-identical across machines: BLAS kernels fuse
multiply-add in their vector body but may not in their scalar tail, and differ between CPUs.

Known wart, kept on purpose (changing it would change a run's model bits): the packing of small
tensors follows the *dict order of the first active update* (the reference), not sorted names.
Which tensors share a buffer, and each one's offset in it, decide which elements land in BLAS's
vector body or its scalar tail, and so whether their multiply-add is fused. A client whose reply
lists its tensors in another order therefore changes the floating-point sums (in their last
bits) when it is the first active update, though every value is the same; the output dict also
takes that order. The other updates' order never matters (they are read by name). In the default
run (digits, ``cnn``) the updates come in ``state_dict`` order, and packing by sorted names
instead would move other elements into the scalar tail: measured (scipy's OpenBLAS 0.3.30,
Haswell kernels), 2 of the 8 tensors differ in a few elements (last bits) in every aggregation,
so the model hashes and the ledger would change. Two float64 sums follow a dict order the same
way: Multi-Krum's Gram matrix adds the tensors in the first candidate's order
(:func:`squared_distances`), and ``screened``'s length of an update (``rules._update_norm``) in
that update's own order.

Robust rules stack a bounded block of each tensor at a time (at most ``_ROBUST_BLOCK`` values),
never whole updates. Median and trimmed mean cut weight at exact integer boundaries: the
normalised weights are first quantised to integers in units of ``2**-40`` (a client below
``2**-41`` counts as weight 0 there), so cumulative sums are exact and do not depend on the order
values happen to sort in. (A trimmed mean with ``trim=0`` therefore equals the weighted average
to about 1e-11 relative, not exactly.) Multi-Krum's distances come from one float64 ``dsyrk`` Gram
matrix, not n^2 vector passes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "AnyArray",
    "BlockEstimator",
    "FloatArray",
    "flat",
    "load_in_background",
    "median_of_block",
    "single_blas_thread",
    "squared_distances",
    "trimmed_mean_of_block",
    "weighted_average",
    "weighted_order_statistic",
]

FloatArray: TypeAlias = npt.NDArray[np.float64]
AnyArray: TypeAlias = npt.NDArray[Any]

_AXPY_BLOCK = 1 << 18
"""Elements summed per block (1 MiB of float32): the block stays in L2/L3 while clients stream."""

_SMALL_TENSOR = 1 << 13
"""Tensors up to this many elements are packed together before averaging (call overhead)."""

_PACK_LIMIT = 1 << 16
"""Most elements packed into one buffer per client (bounds the packing copies)."""

_ROBUST_BLOCK = 1 << 20
"""Values (clients x elements) stacked at a time by the robust rules: about 8 MiB as float64."""

_QUANTUM_BITS = 40
"""Median and trimmed mean count weight in integer units of 2**-40 (see the module docstring)."""


# --- weighted average --------------------------------------------------------------------------


def weighted_average(
    arrays: list[dict[str, AnyArray]], w: FloatArray, active: list[int]
) -> dict[str, AnyArray]:
    """Weighted average over ``active`` (weights renormalised over them), one tensor at a time.

    Small tensors (biases, norms, counters) are packed per dtype into one short buffer per client
    and averaged together: one BLAS call per client instead of one per tensor per client, which
    otherwise costs a tenth of the time on a ResNet. Each element still sees the same operations
    in the same client order; only where it falls relative to BLAS's vector body and scalar tail
    can move (one FMA rounding or two), and that depends only on names, shapes and dtypes (and
    the first active update's name order: see the module docstring's known wart).
    """
    total = math.fsum(float(w[i]) for i in active)
    coefs = [float(w[i]) / total for i in active]
    reference = arrays[active[0]]
    out: dict[str, AnyArray] = {}
    small: dict[np.dtype[Any], list[str]] = {}
    for name, first in reference.items():
        if first.size <= _SMALL_TENSOR:
            small.setdefault(first.dtype, []).append(name)
            continue
        flats = [flat(arrays[i][name]) for i in active]
        out[name] = _average_flat(flats, coefs, first.dtype).reshape(first.shape)
    for dtype, names in small.items():
        for group in _pack_groups(names, [reference[name].size for name in names]):
            packed = [np.concatenate([flat(arrays[i][name]) for name in group]) for i in active]
            result = _average_flat(packed, coefs, dtype)
            offset = 0
            for name in group:
                first = reference[name]
                out[name] = result[offset : offset + first.size].reshape(first.shape).copy()
                offset += first.size
    return {name: out[name] for name in reference}


def _pack_groups(names: list[str], sizes: list[int]) -> Iterator[list[str]]:
    """Consecutive runs of ``names`` holding at most ``_PACK_LIMIT`` elements each."""
    group: list[str] = []
    held = 0
    for name, size in zip(names, sizes, strict=True):
        if group and held + size > _PACK_LIMIT:
            yield group
            group, held = [], 0
        group.append(name)
        held += size
    if group:
        yield group


def _average_flat(flats: list[AnyArray], coefs: list[float], dtype: np.dtype[Any]) -> AnyArray:
    if dtype == np.float32:
        return _axpy_sum(flats, coefs, np.dtype(np.float32), _blas().saxpy)
    if dtype == np.float64:
        return _axpy_sum(flats, coefs, np.dtype(np.float64), _blas().daxpy)
    if dtype.kind == "f":  # float16 (and any other small float): accumulate in float32
        return _ufunc_sum(flats, coefs, np.dtype(np.float32)).astype(dtype)
    total = _ufunc_sum(flats, coefs, np.dtype(np.float64))  # integers and bool
    return np.rint(total, out=total).astype(dtype)


def _axpy_sum(
    flats: list[AnyArray],
    coefs: list[float],
    dtype: np.dtype[Any],
    axpy: Callable[..., AnyArray],
) -> AnyArray:
    """``sum_i coefs[i] * flats[i]`` accumulated in place by BLAS axpy, block by block.

    The first client is written with ``np.multiply`` (identical to ``0 + a * x``), the others are
    added in index order, so each element sees the same operations in the same order whatever the
    block size.
    """
    size = flats[0].size
    out = np.empty(size, dtype=dtype)
    scaled = [dtype.type(c) for c in coefs]
    first, rest = flats[0], list(zip(flats[1:], [float(c) for c in scaled[1:]], strict=True))
    for start in range(0, size, _AXPY_BLOCK):
        stop = min(size, start + _AXPY_BLOCK)
        np.multiply(first[start:stop], scaled[0], out=out[start:stop])
        for x, a in rest:
            axpy(x, out, n=stop - start, a=a, offx=start, offy=start)
    return out


def _ufunc_sum(flats: list[AnyArray], coefs: list[float], acc: np.dtype[Any]) -> AnyArray:
    """Same sum for dtypes BLAS lacks: multiply into a cached scratch block, then add in place."""
    size = flats[0].size
    out = np.empty(size, dtype=acc)
    scratch = np.empty(min(size, _AXPY_BLOCK), dtype=acc)
    scaled = [acc.type(c) for c in coefs]
    for start in range(0, size, _AXPY_BLOCK):
        stop = min(size, start + _AXPY_BLOCK)
        block, tmp = out[start:stop], scratch[: stop - start]
        np.multiply(flats[0][start:stop], scaled[0], out=block, casting="unsafe")
        for x, a in zip(flats[1:], scaled[1:], strict=True):
            np.multiply(x[start:stop], a, out=tmp, casting="unsafe")
            np.add(block, tmp, out=block)
    return out


# --- median and trimmed mean -------------------------------------------------------------------

BlockEstimator: TypeAlias = Callable[[AnyArray, npt.NDArray[np.int64], int], FloatArray]
"""``(values, quanta, total) -> one float64 estimate per row``: ``values`` is a block of
``(elements, clients)``, ``quanta`` the clients' weights in units of 2**-40, ``total`` their sum."""


def weighted_order_statistic(
    arrays: list[dict[str, AnyArray]],
    w: FloatArray,
    active: list[int],
    estimator: BlockEstimator,
) -> dict[str, AnyArray]:
    """Apply a coordinate-wise estimator to blocks of ``(elements, clients)`` values."""
    quanta = _quantise(w[active])
    keep = [j for j in range(len(active)) if quanta[j] > 0]
    clients, quanta = [active[j] for j in keep], quanta[keep]
    total = int(quanta.sum())
    n = len(clients)
    out: dict[str, AnyArray] = {}
    for name, first in arrays[clients[0]].items():
        flats = [flat(arrays[i][name]) for i in clients]
        size = flats[0].size
        result = np.empty(size, dtype=np.float64)
        for start, stop in _blocks(size, max(1, _ROBUST_BLOCK // n)):
            values = np.empty((stop - start, n), dtype=first.dtype)
            for j, x in enumerate(flats):
                values[:, j] = x[start:stop]
            result[start:stop] = estimator(values, quanta, total)
        out[name] = _cast_back(result, first.dtype).reshape(first.shape)
    return out


def _sort_block(
    values: AnyArray, quanta: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Sort each row; return the sorting order, weights in that order and their running sum.

    numpy's default sort (introsort) is deterministic but not stable, and three times faster than
    the stable one here. The order of equal values cannot change a median, and changes a trimmed
    mean only in rounding (the kept weight of a run of equal values is fixed by the run's ends).
    """
    order = np.argsort(values, axis=1)
    weights = quanta[order]
    return order, weights, np.cumsum(weights, axis=1)


def median_of_block(values: AnyArray, quanta: npt.NDArray[np.int64], total: int) -> FloatArray:
    """Weighted median of each row (see ``rules``: the mean of the two middle values where the
    running weight hits exactly one half)."""
    order, _, cumulative = _sort_block(values, quanta)
    rows = np.arange(values.shape[0])
    # first position whose running weight reaches half the total, and first that passes it
    lower = np.argmax(cumulative >= (total + 1) // 2, axis=1)
    upper = np.argmax(cumulative >= total // 2 + 1, axis=1)
    low = values[rows, order[rows, lower]].astype(np.float64)
    high = values[rows, order[rows, upper]].astype(np.float64)
    median: FloatArray = np.where(low == high, low, low * 0.5 + high * 0.5)
    return median


def trimmed_mean_of_block(
    values: AnyArray, quanta: npt.NDArray[np.int64], total: int, *, trim: float
) -> FloatArray:
    """Weighted mean of each row after removing weight ``trim * total`` from each tail."""
    order, weights, cumulative = _sort_block(values, quanta)
    cut = min(round(trim * total), (total - 1) // 2)  # weight units dropped from each tail
    kept = np.minimum(cumulative, total - cut)
    kept -= np.maximum(cumulative - weights, cut)
    np.maximum(kept, 0, out=kept)
    ordered = np.take_along_axis(values, order, axis=1).astype(np.float64)
    mean: FloatArray = np.einsum("ij,ij->i", kept.astype(np.float64), ordered)
    mean /= float(total - 2 * cut)
    return mean


def _quantise(w: FloatArray) -> npt.NDArray[np.int64]:
    """Normalised weights as integers in units of 2**-40 (exact cumulative sums)."""
    scaled = np.rint(w / math.fsum(w.tolist()) * float(1 << _QUANTUM_BITS))
    return scaled.astype(np.int64)


def _cast_back(result: FloatArray, dtype: np.dtype[Any]) -> AnyArray:
    if dtype.kind == "f":
        return result.astype(dtype)
    return np.rint(result).astype(dtype)


# --- Multi-Krum distances ------------------------------------------------------------------------


def squared_distances(arrays: list[dict[str, AnyArray]], candidates: list[int]) -> FloatArray:
    """Pairwise squared distances of the flattened updates, from a float64 Gram matrix.

    Each block is centred on its per-coordinate mean first (distances do not change), so the
    Gram identity ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` does not cancel away the differences.
    """
    n = len(candidates)
    gram = np.zeros((n, n), dtype=np.float64, order="F")
    width = max(1, _ROBUST_BLOCK // n)
    buffer = np.empty(n * width, dtype=np.float64)
    for name in arrays[candidates[0]]:
        flats = [flat(arrays[i][name]) for i in candidates]
        for start, stop in _blocks(flats[0].size, width):
            block = buffer[: n * (stop - start)].reshape(n, stop - start)
            for j, x in enumerate(flats):
                block[j] = x[start:stop]
            block -= block.mean(axis=0)
            # block.T is Fortran-ordered (elements x clients): C += block @ block.T, upper half.
            gram = _blas().dsyrk(1.0, block.T, beta=1.0, c=gram, trans=1, overwrite_c=1)
    upper = np.triu(gram)
    gram = upper + np.triu(upper, 1).T
    norms = np.diag(gram)
    distances: FloatArray = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(distances, 0.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


# --- helpers -------------------------------------------------------------------------------------


def flat(array: AnyArray) -> AnyArray:
    """1-D view of a C-contiguous array (a copy only for strided or non-native-order input)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array.ravel()  # a view when C-contiguous


def _blocks(size: int, width: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, width):
        yield start, min(size, start + width)


@functools.cache
def _blas() -> Any:
    """scipy's BLAS, imported on the first aggregation: scipy.linalg takes about 0.4 s to import
    (more on a busy machine), which every ``fedchain`` command would otherwise pay at start."""
    import scipy.linalg.blas

    return scipy.linalg.blas


@functools.cache
def _blas_controller() -> Any:
    """A controller of the BLAS libraries loaded *now*: so scipy's is loaded first. (It used to
    be made before the first aggregation imported scipy, so the limit missed the very BLAS the
    kernels call: axpy then ran on two threads beside torch's spinning OpenMP workers, 30-170 ms
    a call instead of 0.5 ms after local training in the same process.)"""
    import threadpoolctl

    _blas()
    return threadpoolctl.ThreadpoolController()


def load_in_background() -> threading.Thread:
    """Import scipy's BLAS and make the thread controller on a daemon thread (the thread): a
    coordinator calls it before its first round, so the import (about 0.4 s) overlaps the
    round's training instead of delaying its aggregation. A kernel that runs before it is done
    waits on Python's import lock, as it would for its own import."""
    thread = threading.Thread(target=_blas_controller, name="fedchain-blas-import", daemon=True)
    thread.start()
    return thread


def single_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Hold BLAS to one thread (see the module docstring: speed on a busy machine)."""
    limiter: contextlib.AbstractContextManager[Any] = _blas_controller().limit(
        limits=1, user_api="blas"
    )
    return limiter
