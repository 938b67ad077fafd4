"""The coordinator's validation scorer: minus the validation loss of a coalition's model.

:class:`RoundScorer` supplies the utility of the pure contribution methods
(:mod:`fedchain.rounds.contribution`): minus a coalition model's loss on the coordinator's
validation split, evaluated with torch. Loss, not accuracy: accuracy on a few hundred examples
moves in steps, and GTG-Shapley tracks exact Shapley far better on the smooth loss. Coalitions
are not renormalised (each member moves the model by its real share), so a free rider's zero
update is an exact dummy and scores 0 (experiments/results/contribution_quality.md: Pearson
0.9987 at 8.1 % of exact's evaluations). The coordinator's session uses it to score each round,
and ``fedchain verify --scores`` (:mod:`fedchain.rounds.recheck`) uses the same scorer on the
archived updates to re-check the scores on the ledger.

This module imports torch (~3 s): modules on the CLI's start-up path import it inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedchain.config import CONTRIBUTION_NEEDS_VALIDATION, RunConfig
from fedchain.data.sources import ArrayDataset
from fedchain.learning.architectures import load_numpy_state
from fedchain.learning.record import model_for_run
from fedchain.learning.training import derive_seed, evaluate
from fedchain.ledger.objects import ModelRecord
from fedchain.rounds.coalitions import make_coalition_utility
from fedchain.rounds.contribution import compute_scores, make_method_params

Arrays = dict[str, np.ndarray]


class RoundScorer:
    """``scorer(base, updates, weights, round) -> raw scores`` for one configured method."""

    def __init__(
        self, config: RunConfig, validation: ArrayDataset, record: ModelRecord | None = None
    ) -> None:
        self.method, self.seed = config.contribution, config.seed
        self.budget = config.contribution_budget
        self.validation = validation
        shape, classes = tuple(validation.x.shape[1:]), len(validation.classes)
        self.net = model_for_run(config, record, shape, classes)
        self.evaluations = 0

    def _utility(self, arrays: dict[str, np.ndarray]) -> float:
        load_numpy_state(self.net, arrays)
        self.evaluations += 1
        return -evaluate(self.net, self.validation).loss

    def __call__(
        self, base: Arrays, updates: list[Arrays], weights: Sequence[float], round_: int
    ) -> np.ndarray:
        utility = None
        if self.method in CONTRIBUTION_NEEDS_VALIDATION:
            utility = make_coalition_utility(
                base, updates, weights, self._utility, renormalise=False
            )
        return compute_scores(
            self.method,
            n=len(updates),
            utility=utility,
            updates=updates,
            weights=weights,
            seed=derive_seed(self.seed, round_),
            **make_method_params(self.method, self.budget, len(updates)),
        )
