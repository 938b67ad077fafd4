"""Stake-weighted aggregation of client updates (DESIGN.md section 3.4).

Two pure steps, both deterministic and free of I/O:

1. :func:`compute_weights` turns plain per-client numbers read from the ledger state at the start
   of the round (examples, stake, reputation) into one float64 weight per client, summing to 1,
   optionally capped by :func:`apply_weight_cap`.
2. :func:`aggregate` combines the clients' updates (named tensors) with those weights under one
   of :data:`RULES` and returns an :class:`AggregationResult`: the new tensors plus which clients
   entered the estimate, so the caller can record who was excluded.

Weight formulas (``e`` examples, ``s`` stake, ``r`` reputation in basis points, ``b`` = beta):

=================  ======================================  =====================================
rule               weight proportional to                  estimator
=================  ======================================  =====================================
fedavg             ``e`` (stake is ignored: the baseline)  weighted average
stake              ``s``                                   weighted average
examples-stake     ``e * s**b``                            weighted average
reputation         ``e * s**b * r / 10_000``               weighted average
median             ``e * s**b``                            coordinate-wise weighted median
trimmed-mean       ``e * s**b``                            coordinate-wise weighted trimmed mean
multi-krum         ``e * s**b``                            Multi-Krum selection, then average
screened           ``e * s**b * r / 10_000``               norm and contribution screens, then
                                                           average (:func:`aggregate_screened`)
=================  ======================================  =====================================

``s**b`` is taken as 0 when ``s == 0`` for every ``b`` (also ``b == 0``), so a client without stake
carries no weight under any rule but ``fedavg``. For integral ``b`` up to 16 (the usual 0, 1, 2)
the weights are computed with exact integer arithmetic and one correctly rounded division each,
so they are the same bits on every platform; any other ``b`` goes through float64 ``pow`` on
values scaled by the largest (same bits on one platform; no overflow for huge stakes).

Updates with weight 0 are ignored by every rule: they are not read, they do not enter Multi-Krum
distances, and they are never listed in :attr:`AggregationResult.selected`.

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

BLAS's thread count is process-wide state: while :func:`aggregate` runs, BLAS calls made by other
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

Robust rules stack a bounded block of each tensor at a time (at most ``_ROBUST_BLOCK`` values),
never whole updates:

* median: the weighted median per coordinate: the smallest value whose cumulative weight (values
  sorted ascending) reaches one half; where the cumulative weight hits exactly one half, the mean
  of that value and the next (so equal weights give the ordinary median, ``np.median``).
* trimmed-mean: per coordinate, values sorted, weight mass ``trim`` removed from each tail
  (fractionally where a client straddles the cut), the rest averaged with their weights. With
  equal weights and ``trim * n`` an integer this is ``scipy.stats.trim_mean``.
* multi-krum: scores from squared Euclidean distances between the flattened updates (all tensors,
  in float64); a client's score is the sum of its ``n - f - 2`` smallest distances to the others;
  the ``m`` lowest scores are selected (ties by client index) and averaged with their weights,
  renormalised. Weights do not enter the scores, only which updates are candidates (weight > 0).

Median and trimmed mean cut weight at exact integer boundaries: the normalised weights are first
quantised to integers in units of ``2**-40`` (a client below ``2**-41`` counts as weight 0 there),
so cumulative sums are exact and do not depend on the order values happen to sort in. (A trimmed
mean with ``trim=0`` therefore equals the weighted average to about 1e-11 relative, not exactly.)

The robust rules are not memory-speed: they sort ``n`` values per coordinate. On the project's
2-core machine, ResNet-18-sized updates: 10 clients, median 3-5 s, trimmed mean 4 s, Multi-Krum
0.4 s (Flower's unweighted counterparts: 3.8, 3.4 and 3.5 s); 100 clients, 29 s, 39 s and 6.3 s
(Multi-Krum's distances come from one float64 ``dsyrk`` Gram matrix, not n^2 vector passes).

The caller must reject non-finite updates before aggregating (DESIGN.md section 3: "finite
values" is an admission check); these functions do not scan for NaN or infinity, which would cost
a second pass over all the data.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import scipy.linalg.blas as _blas
import threadpoolctl

from fedchain.errors import ConfigError

__all__ = [
    "LINEAR_RULES",
    "REPUTATION_SCALE",
    "ROBUST_RULES",
    "RULES",
    "SCREENED_RULES",
    "AggregationResult",
    "RuleParams",
    "aggregate",
    "aggregate_round",
    "aggregate_screened",
    "apply_weight_cap",
    "compute_krum_scores",
    "compute_weights",
]

RULES = (
    "fedavg",
    "stake",
    "examples-stake",
    "reputation",
    "median",
    "trimmed-mean",
    "multi-krum",
    "screened",
)
"""Every rule name :func:`compute_weights` and :func:`aggregate` accept."""

LINEAR_RULES = frozenset({"fedavg", "stake", "examples-stake", "reputation"})
"""Rules whose estimator is the weighted average (they differ only in the weights)."""

ROBUST_RULES = frozenset({"median", "trimmed-mean", "multi-krum"})
"""Byzantine-robust rules; all weight clients by examples x stake**beta."""

SCREENED_RULES = frozenset({"screened"})
"""Rules that need the round's contribution scores to decide whom to average (see
:func:`aggregate_screened`)."""

NORM_SCREEN = 3.0
"""``screened`` leaves out updates longer than this many times the round's median update norm."""

HARMFUL_SHARE = 0.25
"""``screened`` leaves out updates scoring below ``-HARMFUL_SHARE`` times the round's mean
positive score: clearly harmful. Honest updates of skewed (non-IID) data score a little below
zero now and then; leaving those out too made accuracy swing by points from round to round."""

NEGLIGIBLE_SHARE = 0.05
"""... and updates whose score is within ``NEGLIGIBLE_SHARE`` of that mean of zero: a free
rider's zero update (score exactly 0) or noise; averaging them only shortens the step."""

EVIDENCE_SHARE = 1 / 3
"""``screened`` moves the model only when the updates it keeps carry at least this share of the
weight of those that passed the norm screen. Late in training a round's scores are small and
noisy (at the optimum almost any step raises the validation loss a little); a handful of
updates that happened to score above zero, one of them an attacker's, then made the whole
step. Without clear evidence the model stays."""

UpdateScorer: TypeAlias = Callable[[Sequence[Mapping[str, Any]], Any], Any]
"""``(updates, weights) -> one raw contribution score per update`` (higher is better; float64)."""

REPUTATION_SCALE = 10_000
"""Reputation is stored in basis points: 10_000 means full trust, 0 means none."""

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

_EXACT_BETA_MAX = 16
"""Integral beta up to this uses exact integer powers; beyond, float64 (integers would explode)."""

_QUANTUM_BITS = 40
"""Median and trimmed mean count weight in integer units of 2**-40 (see the module docstring)."""


@dataclass(frozen=True)
class RuleParams:
    """Parameters of the aggregation rules (genesis "contract" values, see DESIGN.md 3.3).

    beta:
        Exponent on stake in ``examples * stake**beta`` (>= 0; 0 ignores stake size, though a
        zero stake still gives zero weight).
    cap:
        Largest share of the total weight any one client may hold, in (0, 1], or ``None`` for
        no cap. The excess is redistributed by :func:`apply_weight_cap`.
    trim:
        Weight mass removed from each tail by ``trimmed-mean``, in [0, 0.5).
    krum_f:
        Number of attackers Multi-Krum assumes. ``None``: the most Krum tolerates,
        ``max(0, (n - 3) // 2)`` for ``n`` candidates (Krum needs ``n >= 2f + 3``).
    krum_m:
        Number of updates Multi-Krum selects. ``None``: ``n - f``. Values above ``n`` select all.
    """

    beta: float = 1.0
    cap: float | None = None
    trim: float = 0.2
    krum_f: int | None = None
    krum_m: int | None = None

    def __post_init__(self) -> None:
        if not _is_real(self.beta) or not math.isfinite(self.beta) or self.beta < 0:
            raise ConfigError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.cap is not None and (
            not _is_real(self.cap) or not math.isfinite(self.cap) or not 0 < self.cap <= 1
        ):
            raise ConfigError(f"cap must be in (0, 1] or None, got {self.cap!r}")
        if not _is_real(self.trim) or not 0 <= self.trim < 0.5:
            raise ConfigError(f"trim must be in [0, 0.5), got {self.trim!r}")
        if self.krum_f is not None and (not _is_int(self.krum_f) or self.krum_f < 0):
            raise ConfigError(f"krum_f must be an integer >= 0 or None, got {self.krum_f!r}")
        if self.krum_m is not None and (not _is_int(self.krum_m) or self.krum_m < 1):
            raise ConfigError(f"krum_m must be an integer >= 1 or None, got {self.krum_m!r}")


@dataclass(frozen=True, eq=False)
class AggregationResult:
    """What :func:`aggregate` returns.

    arrays:
        The aggregated tensors, same names (in the first update's order), shapes and dtypes as
        the inputs. Freshly allocated; they share no memory with the inputs.
    selected:
        Indices into the ``updates`` argument of the clients whose update entered the estimate
        (weight > 0, and for ``multi-krum`` chosen by Krum), ascending.
    weights:
        The weight each client finally carried, float64, summing to 1 over ``selected`` (0
        elsewhere). For median and trimmed mean these are the weights the estimator used.
    scores:
        ``multi-krum`` only: each client's Krum score (lower is more central; ``inf`` for a
        client that was not a candidate because its weight was 0). ``None`` for other rules.
    """

    arrays: dict[str, AnyArray]
    selected: tuple[int, ...]
    weights: FloatArray
    scores: tuple[float, ...] | None = field(default=None)
    contributions: FloatArray | None = field(default=None)
    """``screened`` only: each client's contribution score, measured to decide whom to average
    (0 for clients left out by the norm screen). The caller records these; it need not score
    the round again."""

    @property
    def excluded(self) -> tuple[int, ...]:
        """Indices of the clients whose update did not enter the estimate, ascending."""
        chosen = set(self.selected)
        return tuple(i for i in range(len(self.weights)) if i not in chosen)


# --------------------------------------------------------------------------------------------------
# Weights


def compute_weights(
    rule: str,
    *,
    examples: Sequence[int],
    stakes: Sequence[int],
    reputations: Sequence[int],
    params: RuleParams | None = None,
) -> FloatArray:
    """Return each client's aggregation weight under ``rule``: float64, >= 0, summing to 1.

    ``examples`` (claimed and registered example counts), ``stakes`` (base units) and
    ``reputations`` (basis points, 0..10_000) are the ledger values at the start of the round, one
    per client, in the order the updates will be passed to :func:`aggregate`. All three are
    validated whatever the rule. ``params.cap``, when set, is applied last.

    Raises :class:`ConfigError` for an unknown rule, mismatched lengths, no clients, negative or
    non-integer counts, reputations outside 0..10_000, or when every client's weight is 0.
    """
    params = RuleParams() if params is None else params
    _check_rule(rule)
    n = len(examples)
    if n == 0:
        raise ConfigError("cannot compute weights for zero clients")
    if len(stakes) != n or len(reputations) != n:
        raise ConfigError(
            f"examples, stakes and reputations must have one entry per client: got "
            f"{n}, {len(stakes)} and {len(reputations)}"
        )
    ex = _check_counts(examples, "examples")
    st = _check_counts(stakes, "stakes")
    rep = _check_counts(reputations, "reputations")
    if any(r > REPUTATION_SCALE for r in rep):
        raise ConfigError(f"reputations are basis points in 0..{REPUTATION_SCALE}, got {rep}")

    if rule == "fedavg":
        weights = _exact_proportions(ex)
    elif rule == "stake":
        weights = _exact_proportions(st)
    else:
        reps = rep if rule == "reputation" else None
        weights = _examples_stake_weights(ex, st, params.beta, reps)
    if weights is None:
        raise ConfigError(
            f"no client has positive weight under rule {rule!r} "
            f"(examples={ex}, stakes={st}, reputations={rep})"
        )
    if params.cap is not None:
        weights = apply_weight_cap(weights, params.cap)
    return weights


def apply_weight_cap(weights: Sequence[float] | FloatArray, cap: float) -> FloatArray:
    """Cap every client's share at ``cap`` and hand the excess to the others (water-filling).

    The weights are normalised first. Clients above the cap are set to exactly ``cap``; the
    remaining mass is shared among the others in proportion to their weights, repeating until no
    share exceeds the cap, so uncapped clients keep their ratios to each other. Clients with
    weight 0 stay at 0 (stake, not the cap, decides who takes part).

    If the cap is infeasible, i.e. ``cap * k < 1`` for ``k`` clients with positive weight, no
    assignment can respect it; the result is then the uniform split ``1/k`` over those clients,
    which is the smallest largest share there is. The same happens when capping everyone would be
    needed (``cap * k == 1`` up to rounding).

    Exact and deterministic: ties in size are broken by client index and sums use ``math.fsum``.
    Raises :class:`ConfigError` for a cap outside (0, 1] or invalid weights.
    """
    if not _is_real(cap) or not math.isfinite(cap) or not 0 < cap <= 1:
        raise ConfigError(f"cap must be in (0, 1], got {cap!r}")
    w = _check_weight_vector(weights, None)
    positive = [i for i in range(len(w)) if w[i] > 0]
    out = np.zeros(len(w), dtype=np.float64)
    if cap * len(positive) < 1:
        out[positive] = 1.0 / len(positive)
        return out
    order = sorted(positive, key=lambda i: (-w[i], i))
    for capped in range(len(order)):
        rest = order[capped:]
        rest_sum = math.fsum(float(w[i]) for i in rest)
        scale = (1.0 - capped * cap) / rest_sum
        if w[rest[0]] * scale <= cap:
            out[order[:capped]] = cap
            out[rest] = w[rest] * scale
            return out
    out[positive] = 1.0 / len(positive)
    return out


def _exact_proportions(values: Sequence[int]) -> FloatArray | None:
    """``v_i / sum(v)`` from Python integers: one correctly rounded division each."""
    total = sum(values)
    if total == 0:
        return None
    return np.array([v / total for v in values], dtype=np.float64)


def _examples_stake_weights(
    examples: list[int], stakes: list[int], beta: float, reputations: list[int] | None
) -> FloatArray | None:
    """Weights proportional to ``examples * stake**beta`` (times reputation when given)."""
    reps = reputations if reputations is not None else [1] * len(examples)
    if float(beta).is_integer() and beta <= _EXACT_BETA_MAX:
        power = int(beta)
        raw = [
            e * s**power * r if s > 0 else 0 for e, s, r in zip(examples, stakes, reps, strict=True)
        ]
        return _exact_proportions(raw)
    # Fractional beta: scale by the largest values first so huge stakes cannot overflow float64.
    max_e, max_s, max_r = max(examples), max(stakes), max(reps)
    if max_e == 0 or max_s == 0 or max_r == 0:
        return None
    terms = [
        (e / max_e) * (s / max_s) ** beta * (r / max_r) if s > 0 else 0.0
        for e, s, r in zip(examples, stakes, reps, strict=True)
    ]
    total = math.fsum(terms)
    if total == 0:
        return None
    return np.array([t / total for t in terms], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Aggregation


def aggregate(
    updates: Sequence[Mapping[str, AnyArray]],
    weights: Sequence[float] | FloatArray,
    *,
    rule: str = "fedavg",
    params: RuleParams | None = None,
) -> AggregationResult:
    """Aggregate ``updates`` (one mapping of named tensors per client) under ``rule``.

    ``weights`` holds one non-negative finite number per update, normally from
    :func:`compute_weights`; they are normalised here, so any positive scale works. Every update
    must have the same tensor names, and each name the same shape and dtype in every update
    (float16/32/64, signed or unsigned integers, or bool). Inputs are never modified.

    Raises :class:`ConfigError` for no updates, an unknown rule, mismatched names, shapes or
    dtypes, an unsupported dtype, or weights that are not finite, negative, of the wrong length
    or all zero.
    """
    params = RuleParams() if params is None else params
    _check_rule(rule)
    if rule in SCREENED_RULES:
        raise ConfigError(f"rule {rule!r} needs contribution scores: use aggregate_screened")
    if len(updates) == 0:
        raise ConfigError("cannot aggregate an empty list of updates")
    w = _check_weight_vector(weights, len(updates))
    arrays = _check_updates(updates)
    active = [i for i in range(len(updates)) if w[i] > 0]

    with _single_blas_thread():
        if rule == "multi-krum":
            return _aggregate_multi_krum(arrays, w, active, params)
        used = np.zeros_like(w)
        used[active] = w[active]
        if rule == "median":
            out = _weighted_order_statistic(arrays, w, active, _median_of_block)
        elif rule == "trimmed-mean":
            out = _weighted_order_statistic(
                arrays, w, active, functools.partial(_trimmed_mean_of_block, trim=params.trim)
            )
        else:
            out = _weighted_average(arrays, w, active)
    return AggregationResult(arrays=out, selected=tuple(active), weights=used)


def compute_krum_scores(
    updates: Sequence[Mapping[str, AnyArray]], num_attackers: int | None = None
) -> FloatArray:
    """Return the Krum score of each update (float64; lower means closer to the others).

    A score is the sum of the squared Euclidean distances from the update (all tensors flattened,
    in float64) to its ``n - f - 2`` nearest other updates, ``f`` = ``num_attackers`` (default
    ``max(0, (n - 3) // 2)``), with at least 1 and at most ``n - 1`` neighbours.
    """
    if len(updates) == 0:
        raise ConfigError("cannot score an empty list of updates")
    if num_attackers is not None and (not _is_int(num_attackers) or num_attackers < 0):
        raise ConfigError(f"num_attackers must be an integer >= 0, got {num_attackers!r}")
    arrays = _check_updates(updates)
    with _single_blas_thread():
        return _krum_scores(arrays, list(range(len(arrays))), num_attackers)


def _aggregate_multi_krum(
    arrays: list[dict[str, AnyArray]], w: FloatArray, active: list[int], params: RuleParams
) -> AggregationResult:
    n = len(active)
    f = _default_krum_f(n) if params.krum_f is None else params.krum_f
    m = max(1, n - f) if params.krum_m is None else params.krum_m
    m = min(m, n)
    scores = _krum_scores(arrays, active, f)
    ranked = sorted(range(n), key=lambda j: (float(scores[j]), j))
    selected = sorted(active[j] for j in ranked[:m])
    used = np.zeros_like(w)
    used[selected] = w[selected] / math.fsum(float(w[i]) for i in selected)
    all_scores = [math.inf] * len(w)
    for j, i in enumerate(active):
        all_scores[i] = float(scores[j])
    out = _weighted_average(arrays, used, selected)
    return AggregationResult(
        arrays=out, selected=tuple(selected), weights=used, scores=tuple(all_scores)
    )


def _default_krum_f(n: int) -> int:
    return max(0, (n - 3) // 2)


# --- weighted average --------------------------------------------------------------------------


def _weighted_average(
    arrays: list[dict[str, AnyArray]], w: FloatArray, active: list[int]
) -> dict[str, AnyArray]:
    """Weighted average over ``active`` (weights renormalised over them), one tensor at a time.

    Small tensors (biases, norms, counters) are packed per dtype into one short buffer per client
    and averaged together: one BLAS call per client instead of one per tensor per client, which
    otherwise costs a tenth of the time on a ResNet. Each element still sees the same operations
    in the same client order; only where it falls relative to BLAS's vector body and scalar tail
    can move (one FMA rounding or two), and that depends only on names, shapes and dtypes.
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
        flats = [_flat(arrays[i][name]) for i in active]
        out[name] = _average_flat(flats, coefs, first.dtype).reshape(first.shape)
    for dtype, names in small.items():
        for group in _pack_groups(names, [reference[name].size for name in names]):
            packed = [np.concatenate([_flat(arrays[i][name]) for name in group]) for i in active]
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
        return _axpy_sum(flats, coefs, np.dtype(np.float32), _blas.saxpy)
    if dtype == np.float64:
        return _axpy_sum(flats, coefs, np.dtype(np.float64), _blas.daxpy)
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

_BlockEstimator: TypeAlias = Callable[[AnyArray, npt.NDArray[np.int64], int], FloatArray]


def _weighted_order_statistic(
    arrays: list[dict[str, AnyArray]],
    w: FloatArray,
    active: list[int],
    estimator: _BlockEstimator,
) -> dict[str, AnyArray]:
    """Apply a coordinate-wise estimator to blocks of ``(elements, clients)`` values."""
    quanta = _quantise(w[active])
    keep = [j for j in range(len(active)) if quanta[j] > 0]
    clients, quanta = [active[j] for j in keep], quanta[keep]
    total = int(quanta.sum())
    n = len(clients)
    out: dict[str, AnyArray] = {}
    for name, first in arrays[clients[0]].items():
        flats = [_flat(arrays[i][name]) for i in clients]
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


def _median_of_block(values: AnyArray, quanta: npt.NDArray[np.int64], total: int) -> FloatArray:
    order, _, cumulative = _sort_block(values, quanta)
    rows = np.arange(values.shape[0])
    # first position whose running weight reaches half the total, and first that passes it
    lower = np.argmax(cumulative >= (total + 1) // 2, axis=1)
    upper = np.argmax(cumulative >= total // 2 + 1, axis=1)
    low = values[rows, order[rows, lower]].astype(np.float64)
    high = values[rows, order[rows, upper]].astype(np.float64)
    median: FloatArray = np.where(low == high, low, low * 0.5 + high * 0.5)
    return median


def _trimmed_mean_of_block(
    values: AnyArray, quanta: npt.NDArray[np.int64], total: int, *, trim: float
) -> FloatArray:
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


# --- Multi-Krum ----------------------------------------------------------------------------------


def _krum_scores(
    arrays: list[dict[str, AnyArray]], candidates: list[int], f: int | None
) -> FloatArray:
    n = len(candidates)
    if n == 1:
        return np.zeros(1, dtype=np.float64)
    f = _default_krum_f(n) if f is None else f
    neighbours = min(n - 1, max(1, n - f - 2))
    distances = _squared_distances(arrays, candidates)
    scores = np.empty(n, dtype=np.float64)
    for j in range(n):
        others = np.sort(np.delete(distances[j], j))
        scores[j] = math.fsum(others[:neighbours].tolist())
    return scores


def _squared_distances(arrays: list[dict[str, AnyArray]], candidates: list[int]) -> FloatArray:
    """Pairwise squared distances of the flattened updates, from a float64 Gram matrix.

    Each block is centred on its per-coordinate mean first (distances do not change), so the
    Gram identity ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` does not cancel away the differences.
    """
    n = len(candidates)
    gram = np.zeros((n, n), dtype=np.float64, order="F")
    width = max(1, _ROBUST_BLOCK // n)
    buffer = np.empty(n * width, dtype=np.float64)
    for name in arrays[candidates[0]]:
        flats = [_flat(arrays[i][name]) for i in candidates]
        for start, stop in _blocks(flats[0].size, width):
            block = buffer[: n * (stop - start)].reshape(n, stop - start)
            for j, x in enumerate(flats):
                block[j] = x[start:stop]
            block -= block.mean(axis=0)
            # block.T is Fortran-ordered (elements x clients): C += block @ block.T, upper half.
            gram = _blas.dsyrk(1.0, block.T, beta=1.0, c=gram, trans=1, overwrite_c=1)
    upper = np.triu(gram)
    gram = upper + np.triu(upper, 1).T
    norms = np.diag(gram)
    distances: FloatArray = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(distances, 0.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


# --------------------------------------------------------------------------------------------------
# Validation and helpers


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown aggregation rule {rule!r}; choose one of {', '.join(RULES)}")


def _check_counts(values: Sequence[int], what: str) -> list[int]:
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool | np.bool_) or not _is_int(value):
            raise ConfigError(f"{what}[{i}] must be an integer, got {value!r}")
        number = operator.index(value)
        if number < 0:
            raise ConfigError(f"{what}[{i}] must be >= 0, got {number}")
        out.append(number)
    return out


def _check_weight_vector(weights: Sequence[float] | FloatArray, n: int | None) -> FloatArray:
    try:
        w = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"weights must be numbers: {exc}") from exc
    if w.ndim != 1 or w.size == 0:
        raise ConfigError(f"weights must be a non-empty 1-D sequence, got shape {w.shape}")
    if n is not None and w.size != n:
        raise ConfigError(f"got {w.size} weights for {n} updates")
    if not np.all(np.isfinite(w)):
        raise ConfigError(f"weights must be finite, got {w.tolist()}")
    if np.any(w < 0):
        raise ConfigError(f"weights must be >= 0, got {w.tolist()}")
    total = math.fsum(w.tolist())
    if total <= 0:
        raise ConfigError("at least one weight must be positive")
    return w / total


def _check_updates(updates: Sequence[Mapping[str, AnyArray]]) -> list[dict[str, AnyArray]]:
    """Same names, shapes and supported dtypes in every update; values as numpy arrays."""
    arrays = [
        {name: v if type(v) is np.ndarray else np.asarray(v) for name, v in u.items()}
        for u in updates
    ]
    reference = arrays[0]
    if not reference:
        raise ConfigError("update 0 has no tensors")
    for name, value in reference.items():
        if value.dtype.kind not in "fiub":
            raise ConfigError(f"tensor {name!r} has unsupported dtype {value.dtype}")
    names = set(reference)
    for index, update in enumerate(arrays[1:], start=1):
        if update.keys() != names:
            missing = sorted(names - update.keys())
            extra = sorted(update.keys() - names)
            raise ConfigError(
                f"update {index} has different tensor names than update 0 "
                f"(missing {missing}, unexpected {extra})"
            )
        for name, value in update.items():
            expected = reference[name]
            if value.shape != expected.shape or value.dtype != expected.dtype:
                raise ConfigError(
                    f"tensor {name!r} of update {index} is {value.dtype}{list(value.shape)}, "
                    f"update 0 has {expected.dtype}{list(expected.shape)}"
                )
    return arrays


def _flat(array: AnyArray) -> AnyArray:
    """1-D view of a C-contiguous array (a copy only for strided or non-native-order input)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array.ravel()  # a view when C-contiguous


def _blocks(size: int, width: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, width):
        yield start, min(size, start + width)


@functools.cache
def _blas_controller() -> Any:
    return threadpoolctl.ThreadpoolController()


def _single_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Hold BLAS to one thread (see the module docstring: speed on a busy machine)."""
    limiter: contextlib.AbstractContextManager[Any] = _blas_controller().limit(
        limits=1, user_api="blas"
    )
    return limiter


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def aggregate_round(
    rule: str,
    params: RuleParams | None,
    updates: Sequence[Mapping[str, AnyArray]],
    *,
    examples: Sequence[int],
    stakes: Sequence[int],
    reputations: Sequence[int],
    scorer: UpdateScorer | None = None,
) -> AggregationResult:
    """A round's aggregation from the ledger values of its accepted clients (in their order).

    Linear rules weigh by their own formula; robust rules estimate with examples x stake^beta
    weights; ``screened`` weighs like ``reputation`` and needs ``scorer`` (the round's
    contribution scores). The coordinator calls this, and so does anyone re-checking a round
    from its archived updates, so both get the same weights and the same model.
    """
    if rule in SCREENED_RULES:
        if scorer is None:
            raise ConfigError(
                f"rule {rule!r} needs contribution scores: choose a contribution method"
            )
        weights = compute_weights(
            "reputation", examples=examples, stakes=stakes, reputations=reputations, params=params
        )
        return aggregate_screened(updates, weights, scorer)
    weight_rule = rule if rule in LINEAR_RULES else "examples-stake"
    weights = compute_weights(
        weight_rule, examples=examples, stakes=stakes, reputations=reputations, params=params
    )
    return aggregate(updates, weights, rule=rule, params=params)


def aggregate_screened(
    updates: Sequence[Mapping[str, AnyArray]],
    weights: Sequence[float] | FloatArray,
    scorer: UpdateScorer,
    *,
    norm_screen: float = NORM_SCREEN,
) -> AggregationResult:
    """Average only the updates that measurably help: a norm screen, then a contribution screen.

    1. Norm screen: updates longer (L2, all tensors) than ``norm_screen`` times the median norm
       of the round's positive-weight updates are left out. A boosted or noise update cannot
       hide its length, and the median is the honest majority's as long as it is one.
    2. Contribution screen: ``scorer`` scores the remaining updates with their weights
       (renormalised over them). Updates scoring clearly below zero (harmful) or about zero
       (useless: a free rider's zero update) are left out (:data:`HARMFUL_SHARE`,
       :data:`NEGLIGIBLE_SHARE`); the rest are averaged with their weights, renormalised. So
       neither kind moves the model, whatever their number or stake.
    3. Evidence: if no update scores above zero (a round whose total gain is within the
       scorer's tolerance, late in training) or the kept updates carry less than
       :data:`EVIDENCE_SHARE` of the screened weight, the round changes nothing (zero arrays,
       no client selected).

    Unlike median or Krum this needs no honest majority among the updates, only a validation
    set the attackers cannot choose. The scores are returned (``contributions``) so the round
    is scored once; clients the norm screen left out score 0.
    """
    n = len(updates)
    if n == 0:
        raise ConfigError("cannot aggregate an empty list of updates")
    w = _check_weight_vector(weights, n)
    arrays = _check_updates(updates)
    active = [i for i in range(n) if w[i] > 0]
    norms = {i: _update_norm(arrays[i]) for i in active}
    limit = norm_screen * float(np.median([norms[i] for i in active]))
    screened = [i for i in active if norms[i] <= limit]
    if not screened:  # every update has the median's norm only when it is 0: nothing to add
        screened = active
    sw = np.zeros_like(w)
    sw[screened] = w[screened] / math.fsum(float(w[i]) for i in screened)
    measured = np.asarray(
        scorer([arrays[i] for i in screened], sw[screened]), dtype=np.float64
    ).reshape(-1)
    if measured.shape != (len(screened),):
        raise ConfigError(f"the scorer returned {measured.shape[0]} scores for {len(screened)}")
    contributions = np.zeros(n, dtype=np.float64)
    contributions[screened] = measured
    kept = _helpful(screened, contributions)
    used = np.zeros_like(w)
    kept_share = math.fsum(float(sw[i]) for i in kept)  # sw: normalised over the screened
    if not kept or kept_share < EVIDENCE_SHARE:
        # no clear evidence this round: the model stays as it is
        zeros = {name: np.zeros_like(a) for name, a in arrays[0].items()}
        return AggregationResult(
            arrays=zeros, selected=(), weights=used, contributions=contributions
        )
    used[kept] = w[kept] / math.fsum(float(w[i]) for i in kept)
    with _single_blas_thread():
        out = _weighted_average(arrays, used, kept)
    return AggregationResult(
        arrays=out, selected=tuple(kept), weights=used, contributions=contributions
    )


def _helpful(screened: list[int], contributions: FloatArray) -> list[int]:
    """The screened clients whose score is neither clearly harmful nor negligible, measured
    against the round's mean positive score ``m``: kept when ``score > -HARMFUL_SHARE * m`` and
    ``|score| > NEGLIGIBLE_SHARE * m``. None when no score is positive."""
    positive = [float(contributions[i]) for i in screened if contributions[i] > 0]
    if not positive:
        return []
    m = math.fsum(positive) / len(positive)
    return [
        i
        for i in screened
        if contributions[i] > -HARMFUL_SHARE * m and abs(contributions[i]) > NEGLIGIBLE_SHARE * m
    ]


def _update_norm(update: Mapping[str, AnyArray]) -> float:
    """L2 norm of all tensors of one update together, accumulated in float64."""
    total = 0.0
    for array in update.values():
        flat = _flat(array).astype(np.float64, copy=False)
        total += float(np.dot(flat, flat))
    return math.sqrt(total)
