"""Coalition models and their cached utility: what Shapley-style methods evaluate.

Pure and deterministic: no torch, no I/O. The methods in :mod:`fedchain.rounds.contribution`
take the *utility* of a coalition of clients from the caller; this module builds that utility:

* a :data:`Utility` maps a coalition (a ``frozenset`` of client indices ``0 .. n - 1``) to a
  number: a score on the coordinator's validation split (accuracy, or minus the mean loss) of the
  *coalition model* that :func:`compute_coalition_model` builds, the round's base model plus the
  weighted average of the members' updates (``S = {}`` gives the base model, so ``U({})`` is the
  score before the round and ``U(all)`` the score after it);
* a :data:`BatchUtility` maps a sequence of coalitions to their utilities in one call, so a
  caller can build and score many coalition models at once (a batched pass on an accelerator);
* :class:`CachedUtility` memoises a utility (or a batch utility) and counts the distinct
  coalitions it evaluated, which is the cost that matters (one model evaluation each);
  :func:`make_coalition_utility` joins the two for a caller-supplied ``score_model``.

:func:`check_weights` and :func:`check_update_shapes` validate a round's weights and updates for
coalition models and for gradient similarity alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from fedchain.aggregation.rules import aggregate
from fedchain.errors import ConfigError

__all__ = [
    "BatchUtility",
    "CachedUtility",
    "Utility",
    "batch_utility_of",
    "check_update_shapes",
    "check_weights",
    "compute_coalition_model",
    "make_coalition_utility",
]

Utility: TypeAlias = Callable[[frozenset[int]], float]
"""Utility of a coalition of client indices, e.g. minus the validation loss of its model."""

BatchUtility: TypeAlias = Callable[[Sequence[frozenset[int]]], Sequence[float]]
"""Utilities of several coalitions in one call, in the order given (one value per coalition)."""

FloatArray: TypeAlias = npt.NDArray[np.float64]
AnyArray: TypeAlias = npt.NDArray[Any]


class CachedUtility:
    """A utility that evaluates each distinct coalition once and counts the evaluations.

    Wraps a per-coalition :data:`Utility` or, with ``batch=``, a :data:`BatchUtility`. Calling
    it (or :meth:`evaluate_many`) with a coalition seen before returns the stored value without
    calling the wrapped utility. :attr:`evaluations` is the number of distinct coalitions
    evaluated so far, i.e. the number of coalition models the caller built and scored. A
    non-finite utility value raises :class:`ConfigError` (it would poison every score it
    enters).
    """

    def __init__(self, utility: Utility | None = None, *, batch: BatchUtility | None = None):
        if (utility is None) == (batch is None):
            raise ConfigError("CachedUtility needs exactly one of a utility and a batch utility")
        self._utility = utility
        self._batch = batch
        self._values: dict[frozenset[int], float] = {}

    def __call__(self, coalition: frozenset[int]) -> float:
        return self.evaluate_many([coalition])[0]

    def evaluate_many(self, coalitions: Sequence[frozenset[int]]) -> list[float]:
        """The utilities of ``coalitions``, in order; the ones not seen before are evaluated
        once each, in order of first appearance (a batch utility gets them in one call)."""
        keys = [frozenset(c) for c in coalitions]
        missing = list(dict.fromkeys(k for k in keys if k not in self._values))
        if missing and self._batch is not None:
            fresh = [float(v) for v in self._batch(missing)]
            if len(fresh) != len(missing):
                raise ConfigError(
                    f"the batch utility returned {len(fresh)} values for {len(missing)} coalitions"
                )
            for key, value in zip(missing, fresh, strict=True):
                self._store(key, value)
        elif missing and self._utility is not None:
            for key in missing:
                self._store(key, float(self._utility(key)))
        return [self._values[k] for k in keys]

    def _store(self, key: frozenset[int], value: float) -> None:
        if not math.isfinite(value):
            raise ConfigError(
                f"the utility of coalition {sorted(key)} is {value}; it must be finite"
            )
        self._values[key] = value

    @property
    def evaluations(self) -> int:
        """Distinct coalitions evaluated so far."""
        return len(self._values)

    @property
    def values(self) -> Mapping[frozenset[int], float]:
        """The values computed so far, by coalition (a copy)."""
        return dict(self._values)


def batch_utility_of(utility: Utility) -> BatchUtility:
    """``utility`` as a :data:`BatchUtility`: a :class:`CachedUtility`'s own
    :meth:`~CachedUtility.evaluate_many` (so its cache and count see every coalition), else a
    fresh cache around ``utility`` (each distinct coalition evaluated once, in order, checked
    finite)."""
    cached = utility if isinstance(utility, CachedUtility) else CachedUtility(utility)
    return cached.evaluate_many


# --------------------------------------------------------------------------------------------------
# Coalition models


def compute_coalition_model(
    base: Mapping[str, AnyArray],
    updates: Sequence[Mapping[str, AnyArray]],
    weights: Sequence[float] | FloatArray,
    coalition: frozenset[int],
    *,
    renormalise: bool = True,
) -> dict[str, npt.NDArray[np.float32]]:
    """The model a coalition alone would have produced: ``base + sum w_i d_i / sum w_i``.

    ``updates[i]`` and ``weights[i]`` are client ``i``'s update and aggregation weight (from
    :func:`fedchain.aggregation.rules.compute_weights`); the sums run over ``i`` in ``coalition``.
    The average is :func:`fedchain.aggregation.rules.aggregate` with rule ``fedavg`` over the
    members, so it sums in client index order and the full coalition gives exactly the model a
    weighted-average round produces. The empty coalition, and a coalition whose members all have
    weight 0, give a copy of ``base``. The result is float32, in ``base``'s tensor order.

    ``renormalise=False`` divides by the sum of *all* clients' weights instead: each member moves
    the model by exactly its share of the real round (``base + sum over S of w_i d_i / sum w``,
    computed as the full round's average with non-members' updates replaced by zeros). Then a
    zero update (a free rider) is an exact dummy player and scores exactly 0 under Shapley,
    whereas with renormalised weights it shrinks the other members' step, which pays whenever
    the coalition's average step hurts (see ``experiments/contribution_quality.py``).

    For robust aggregation rules the coalition model is still the weighted average of the
    members: scores then measure the accepted updates, not the robust estimator.

    Raises :class:`ConfigError` for indices outside ``0 .. len(updates) - 1``, a weight count
    that differs from the update count, negative or non-finite weights, or updates whose tensor
    names or shapes differ from ``base``'s.
    """
    w = check_weights(weights, len(updates))
    members = _check_coalition(coalition, len(updates))
    check_update_shapes(base, updates)
    zeros = (
        {name: np.zeros_like(np.asarray(v)) for name, v in updates[0].items()} if updates else {}
    )
    return _coalition_model(base, updates, w, members, zeros, renormalise)


def _coalition_model(
    base: Mapping[str, AnyArray],
    updates: Sequence[Mapping[str, AnyArray]],
    w: FloatArray,
    members: list[int],
    zeros: Mapping[str, AnyArray],
    renormalise: bool,
) -> dict[str, npt.NDArray[np.float32]]:
    """:func:`compute_coalition_model` on checked inputs (``zeros``: a zero update, read only)."""
    active = [i for i in members if w[i] > 0]
    if not active:
        return {name: np.array(value, dtype=np.float32) for name, value in base.items()}
    if renormalise:
        average = aggregate([updates[i] for i in active], w[active], rule="fedavg").arrays
    else:
        # Non-members stand in as zero updates with their weight kept: every member's term is
        # then the very product it is in the full round, and adding a zero update (or a zero
        # term) leaves the sum bit for bit unchanged, so a free rider is an exact dummy.
        chosen = set(active)
        padded = [updates[i] if i in chosen else zeros for i in range(len(updates))]
        average = aggregate(padded, w, rule="fedavg").arrays
    return {
        name: np.add(np.asarray(value, dtype=np.float32), average[name], dtype=np.float32)
        for name, value in base.items()
    }


def make_coalition_utility(
    base: Mapping[str, AnyArray],
    updates: Sequence[Mapping[str, AnyArray]],
    weights: Sequence[float] | FloatArray,
    score_model: Callable[[dict[str, npt.NDArray[np.float32]]], float],
    *,
    renormalise: bool = True,
) -> CachedUtility:
    """A cached utility: ``score_model`` of each coalition's :func:`compute_coalition_model`.

    ``score_model`` is the caller's I/O side, e.g. load the arrays into a torch model and return
    minus its mean cross-entropy on the coordinator's validation split. The inputs are checked
    and the zero stand-in made once, not per coalition.
    """
    w = check_weights(weights, len(updates))
    check_update_shapes(base, updates)
    zeros = (
        {name: np.zeros_like(np.asarray(v)) for name, v in updates[0].items()} if updates else {}
    )
    n = len(updates)

    def utility(coalition: frozenset[int]) -> float:  # inputs checked once, above
        members = _check_coalition(coalition, n)
        return score_model(_coalition_model(base, updates, w, members, zeros, renormalise))

    return CachedUtility(utility)


# --------------------------------------------------------------------------------------------------
# Checks


def check_weights(weights: Sequence[float] | FloatArray, n: int) -> FloatArray:
    """``weights`` as float64, one per update, finite and >= 0; else :class:`ConfigError`."""
    try:
        w = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"weights must be numbers: {exc}") from exc
    if w.ndim != 1 or w.size != n:
        raise ConfigError(f"need one weight per update ({n}), got shape {w.shape}")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise ConfigError(f"weights must be finite and >= 0, got {w.tolist()}")
    return w


def check_update_shapes(
    reference: Mapping[str, AnyArray], updates: Sequence[Mapping[str, AnyArray]]
) -> None:
    """Every update has ``reference``'s tensor names and shapes; else :class:`ConfigError`."""
    names = set(reference)
    for index, update in enumerate(updates):
        if set(update) != names:
            raise ConfigError(
                f"update {index} has tensors {sorted(update)}, expected {sorted(names)}"
            )
        for name, value in update.items():
            if np.shape(value) != np.shape(reference[name]):
                raise ConfigError(
                    f"tensor {name!r} of update {index} has shape {np.shape(value)}, "
                    f"expected {np.shape(reference[name])}"
                )


def _check_coalition(coalition: frozenset[int], n: int) -> list[int]:
    members = sorted(coalition)
    for i in members:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < n:
            raise ConfigError(f"coalition member {i!r} is not a client index in 0..{n - 1}")
    return [int(i) for i in members]
