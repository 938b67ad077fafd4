"""Contribution scores of a round, measured on the coordinator's validation split.

The pure methods live in :mod:`fedchain.contribution`; this module supplies their utility (a
coalition model's accuracy on the validation split, evaluated with torch). The coordinator uses
it to score each round, and ``fedchain verify --scores`` uses the same function on the archived
updates to re-check the scores on the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedchain.config import RunConfig
from fedchain.contribution import compute_scores, make_coalition_utility
from fedchain.sources import ArrayDataset

Arrays = dict[str, np.ndarray]
NEEDS_VALIDATION = frozenset({"shapley", "gtg-shapley", "leave-one-out"})


class RoundScorer:
    """``scorer(base, updates, weights, round) -> raw scores`` for one configured method."""

    def __init__(self, config: RunConfig, validation: ArrayDataset) -> None:
        from fedchain.models import build_model

        self.method, self.seed = config.contribution, config.seed
        self.validation = validation
        shape, classes = tuple(validation.x.shape[1:]), len(validation.classes)
        self.net = build_model(config.model, shape, classes, seed=0)
        self.evaluations = 0

    def _accuracy(self, arrays: dict[str, np.ndarray]) -> float:
        from fedchain.models import load_numpy_state
        from fedchain.training import evaluate

        load_numpy_state(self.net, arrays)
        self.evaluations += 1
        return evaluate(self.net, self.validation).accuracy

    def __call__(
        self, base: Arrays, updates: list[Arrays], weights: Sequence[float], round_: int
    ) -> np.ndarray:
        from fedchain.training import derive_seed

        utility = None
        if self.method in NEEDS_VALIDATION:
            utility = make_coalition_utility(base, updates, weights, self._accuracy)
        return compute_scores(
            self.method,
            n=len(updates),
            utility=utility,
            updates=updates,
            weights=weights,
            seed=derive_seed(self.seed, round_),
        )
