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

**Batched.** The sampling methods hand over all their coalitions at once
(:data:`~fedchain.rounds.coalitions.BatchUtility`), and a round's coalition models are built as
one matrix product, ``base + K @ D`` (``K``: the coalitions' weight matrix, ``K[k, i] = w_i /
sum w`` for members, ``D``: the stacked flattened updates), in blocks of
:data:`MODEL_BLOCK_BYTES`; :class:`ValidationPasses` then scores them with every check,
conversion and allocation done once per scorer, not per model. Two ways to run the passes, the
same losses up to float32 rounding (``verify --scores``' tolerance covers the difference):

* ``loop`` (the default on the CPU): each model's parameters copied into the net, one forward
  pass per validation batch of 512 under ``torch.no_grad``; the same arithmetic as
  :func:`~fedchain.learning.training.evaluate` given the same parameters;
* ``vmap``: ``torch.func.functional_call`` vectorised by ``torch.func.vmap`` over
  :data:`VMAP_MODELS` models at a time, in validation batches of ``512 / VMAP_MODELS`` (the
  activation memory of one 512-example pass); buffers and frozen parameters (BatchNorm
  statistics, a LoRA model's backbone) are shared, the net is in eval mode. Where vmap cannot
  run the model (checked once on a probe), the loop is used.

Measured (``experiments/results/scaling.md``): on the CPU building a coalition model by the
matrix product costs about 0.1 ms against 9-23 ms by the per-coalition weighted average, while
vmap's grouped convolutions were slower than the loop for the ``cnn`` (3.5 against 2.5 ms a
model) and level for the ``mlp``; hence ``loop`` on the CPU, ``vmap`` for an accelerator.
The per-coalition path (:func:`~fedchain.rounds.coalitions.make_coalition_utility`) remains
where the stacked updates would exceed :data:`STACK_LIMIT_BYTES`.

**Per example.** :meth:`ValidationPasses.losses` gives each validation example's loss (the same
passes, ``reduction="none"``), and :meth:`RoundScorer.step_tester` a round's per-example loss
differences of a step: the ``screened`` rule's paired step test
(:func:`~fedchain.aggregation.screened.aggregate_screened`).

**Threads.** Where torch runs on fewer threads than the cores (``fedchain simulate``'s server
runs it on one, beside its clients), :class:`PassThreads` spreads the loop passes over the idle
cores, a copy of the net each: the same values bit for bit, since each model's passes are the
same kernels on the same torch thread count whichever thread runs them.

This module imports torch (~3 s): modules on the CLI's start-up path import it inside functions.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedchain.aggregation.screened import StepTester
from fedchain.config import CONTRIBUTION_NEEDS_VALIDATION, RunConfig
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError
from fedchain.learning.architectures import load_numpy_state, trainable_names
from fedchain.learning.record import model_for_run
from fedchain.learning.training import derive_seed, evaluate, to_tensors
from fedchain.ledger.objects import ModelRecord
from fedchain.rounds.coalitions import (
    BatchUtility,
    CachedUtility,
    check_update_shapes,
    check_weights,
    make_coalition_utility,
)
from fedchain.rounds.contribution import compute_scores, make_method_params

Arrays = dict[str, np.ndarray]
Passes = Literal["auto", "loop", "vmap"]

EVAL_BATCH = 512
"""Validation examples per forward pass (as :func:`~fedchain.learning.training.evaluate`)."""

VMAP_MODELS = 8
"""Models per vectorised pass; each sees ``EVAL_BATCH // VMAP_MODELS`` examples at a time."""

MODEL_BLOCK_BYTES = 64 << 20
"""Coalition models (float32 rows) built per matrix product: bounds that block's memory."""

STACK_LIMIT_BYTES = 1 << 30
"""Largest stacked copy of a round's updates (float32); beyond it, models are built one by one."""

MAX_PASS_THREADS = 4
"""Most threads :class:`PassThreads` spreads a round's loop passes over."""

REPLICA_LIMIT_BYTES = 256 << 20
"""Most memory :class:`PassThreads`' copies of the net (parameters and buffers) may take."""


class ValidationPasses:
    """Minus the mean validation loss of many parameter vectors of one net, checks hoisted.

    A parameter vector is the net's trainable parameters (:func:`trainable_names`, in that order)
    flattened and concatenated, float32. ``passes``: ``loop``, ``vmap`` or ``auto`` (vmap where
    the net's parameters live on an accelerator, else the loop; see the module docstring).
    Raises :class:`ConfigError` for an empty validation split or labels the net has no output for.
    """

    def __init__(self, net: nn.Module, validation: ArrayDataset, passes: Passes = "auto") -> None:
        if passes not in ("auto", "loop", "vmap"):
            raise ConfigError(f"passes must be 'auto', 'loop' or 'vmap', got {passes!r}")
        if len(validation) == 0:
            raise ConfigError(f"cannot score on the empty data set {validation.name!r}")
        self.net = net
        self.names = trainable_names(net)
        named = dict(net.named_parameters())
        self._params = [named[name] for name in self.names]
        self.shapes = [tuple(p.shape) for p in self._params]
        self.sizes = [int(p.numel()) for p in self._params]
        self.size = sum(self.sizes)
        device = self._params[0].device if self._params else torch.device("cpu")
        x, y = to_tensors(validation)
        self.x, self.y = x.to(device), y.to(device)
        with torch.no_grad(), _eval_mode(net):
            outputs = int(net(self.x[:1]).shape[1])
        if int(self.y.max()) >= outputs:
            raise ConfigError(
                f"data set {validation.name!r} has label {int(self.y.max())} but the model has "
                f"only {outputs} outputs"
            )
        wanted = "vmap" if passes == "auto" and device.type != "cpu" else passes
        self.passes: Literal["loop", "vmap"] = "vmap" if wanted == "vmap" else "loop"
        if self.passes == "vmap" and not self._vmap_runs():
            self.passes = "loop"

    def flatten(self, arrays: Arrays) -> torch.Tensor:
        """``arrays`` (named as the net's trainable parameters) as one float32 vector."""
        return torch.from_numpy(
            np.concatenate([np.asarray(arrays[n], dtype=np.float32).ravel() for n in self.names])
        )

    def utilities(self, models: torch.Tensor) -> list[float]:
        """Minus the mean validation loss of each row of ``models`` (``(k, size)`` float32)."""
        models = models.to(self.x.device)
        with torch.no_grad(), _eval_mode(self.net):
            if self.passes == "vmap":
                sums = [
                    row
                    for start in range(0, len(models), VMAP_MODELS)
                    for row in self._vmap_pass(models[start : start + VMAP_MODELS], "sum").tolist()
                ]
            else:
                sums = [[float(t) for t in self._loop_pass(row, "sum")] for row in models]
        n = int(self.y.shape[0])
        return [-math.fsum(batches) / n for batches in sums]

    def losses(self, models: torch.Tensor) -> np.ndarray:
        """Each validation example's loss under each row of ``models`` (``(k, size)`` float32):
        ``(k, examples)`` float64 from float32 cross-entropies, in the split's order, by the
        same passes and batches as :meth:`utilities` (whose utility of a row is minus the
        mean of its losses, up to float32 rounding of the batch sums)."""
        models = models.to(self.x.device)
        with torch.no_grad(), _eval_mode(self.net):
            if self.passes == "vmap":
                rows = [
                    self._vmap_pass(models[start : start + VMAP_MODELS], "none")
                    for start in range(0, len(models), VMAP_MODELS)
                ]
                out = torch.cat(rows) if rows else torch.empty(0, int(self.y.shape[0]))
            else:
                out = torch.stack([torch.cat(self._loop_pass(row, "none")) for row in models])
        return out.to("cpu", torch.float64).numpy()

    def _load(self, row: torch.Tensor) -> None:
        offset = 0
        for param, shape, size in zip(self._params, self.shapes, self.sizes, strict=True):
            param.copy_(row[offset : offset + size].view(shape))
            offset += size

    def _loop_pass(self, row: torch.Tensor, reduction: str) -> list[torch.Tensor]:
        """Row ``row``'s cross-entropies, one tensor a batch: summed (``"sum"``) or per example
        (``"none"``)."""
        self._load(row)
        return [
            F.cross_entropy(self.net(self.x[b : b + EVAL_BATCH]), self.y[b : b + EVAL_BATCH],
                            reduction=reduction)
            for b in range(0, int(self.y.shape[0]), EVAL_BATCH)
        ]  # fmt: skip

    def _vmap_pass(self, rows: torch.Tensor, reduction: str) -> torch.Tensor:
        """``VMAP_MODELS`` models in one pass: ``(len(rows), batches)`` summed losses
        (``"sum"``) or ``(len(rows), examples)`` per-example ones (``"none"``)."""
        batch = max(1, EVAL_BATCH // VMAP_MODELS)
        starts = range(0, int(self.y.shape[0]), batch)
        join = torch.stack if reduction == "sum" else torch.cat

        def per_model(params: dict[str, torch.Tensor]) -> torch.Tensor:
            call = torch.func.functional_call
            return join([
                F.cross_entropy(call(self.net, params, (self.x[b : b + batch],)),
                                self.y[b : b + batch], reduction=reduction)
                for b in starts
            ])  # fmt: skip

        return torch.func.vmap(per_model)(self._split(rows))

    def _split(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes, strict=True):
            out[name] = rows[:, offset : offset + size].reshape(len(rows), *shape)
            offset += size
        return out

    def _vmap_runs(self) -> bool:
        """Whether vmap runs the net (two copies of its parameters, one example): some models
        (data-dependent control flow, in-place parameter use) cannot be vectorised."""
        flat = torch.cat([p.detach().reshape(-1).to(torch.float32) for p in self._params])
        try:
            with torch.no_grad(), _eval_mode(self.net):
                params = self._split(torch.stack([flat, flat]))
                torch.func.vmap(lambda p: torch.func.functional_call(self.net, p, (self.x[:1],)))(
                    params
                )
        except Exception:  # any failure of vmap means: use the loop
            return False
        return True


class RoundScorer:
    """``scorer(base, updates, weights, round) -> raw scores`` for one configured method."""

    def __init__(
        self,
        config: RunConfig,
        validation: ArrayDataset,
        record: ModelRecord | None = None,
        *,
        passes: Passes = "auto",
        threads: int = 1,
    ) -> None:
        self.method, self.seed = config.contribution, config.seed
        self.budget = config.contribution_budget
        self.min_evaluations = config.contribution_min_evaluations
        self.validation = validation
        shape, classes = tuple(validation.x.shape[1:]), len(validation.classes)
        self.net = model_for_run(config, record, shape, classes)
        self.passes = ValidationPasses(self.net, validation, passes)
        self.threads = PassThreads(self.passes, validation, threads)
        self.evaluations = 0

    def _utility(self, arrays: dict[str, np.ndarray]) -> float:
        """One coalition model's utility (the per-coalition path)."""
        load_numpy_state(self.net, arrays)
        self.evaluations += 1
        return -evaluate(self.net, self.validation).loss

    def batch_utility(
        self, base: Arrays, updates: list[Arrays], weights: Sequence[float] | np.ndarray
    ) -> BatchUtility | None:
        """All coalition models' utilities of one round as one call (see the module docstring),
        or None where the stacked updates would exceed :data:`STACK_LIMIT_BYTES`."""
        w = check_weights(weights, len(updates))
        check_update_shapes(base, updates)
        if set(base) != set(self.passes.names):
            raise ConfigError(f"the round's tensors {sorted(base)} are not the model's")
        active = [i for i in range(len(updates)) if w[i] > 0]
        if len(active) * self.passes.size * 4 > STACK_LIMIT_BYTES:
            return None
        total = math.fsum(w.tolist())
        coefs = np.zeros(len(updates), dtype=np.float32)
        if total > 0:
            coefs[active] = [np.float32(w[i] / total) for i in active]
        stacked = torch.stack([self.passes.flatten(updates[i]) for i in active])
        flat_base = self.passes.flatten(base)
        column = {client: position for position, client in enumerate(active)}
        rows = max(1, MODEL_BLOCK_BYTES // (4 * max(1, self.passes.size)))

        def batch(coalitions: Sequence[frozenset[int]]) -> list[float]:
            weights_matrix = np.zeros((len(coalitions), len(active)), dtype=np.float32)
            for k, coalition in enumerate(coalitions):
                for client in coalition:
                    if client in column:
                        weights_matrix[k, column[client]] = coefs[client]
            out: list[float] = []
            for start in range(0, len(coalitions), rows):
                block = torch.from_numpy(weights_matrix[start : start + rows])
                out += self.threads.utilities(_models(block, stacked, flat_base))
            self.evaluations += len(coalitions)
            return out

        return batch

    def step_tester(self, base: Arrays) -> StepTester:
        """The paired step test's measurement for a round over ``base``
        (:data:`~fedchain.aggregation.screened.StepTester`): a step's per-example validation-loss
        differences, the loss of each example under ``base + step`` (float32, as the
        coordinator adds it) minus under ``base``. ``base``'s losses are evaluated once, at
        the first step."""
        if set(base) != set(self.passes.names):
            raise ConfigError(f"the round's tensors {sorted(base)} are not the model's")
        flat_base = self.passes.flatten(base)
        before: list[np.ndarray] = []

        def test(step: Mapping[str, np.ndarray]) -> np.ndarray:
            if not before:
                before.append(self.passes.losses(flat_base[None])[0])
                self.evaluations += 1
            after = self.passes.losses((flat_base + self.passes.flatten(dict(step)))[None])[0]
            self.evaluations += 1
            return after - before[0]  # type: ignore[no-any-return]

        return test

    def __call__(
        self, base: Arrays, updates: list[Arrays], weights: Sequence[float], round_: int
    ) -> np.ndarray:
        utility = None
        if self.method in CONTRIBUTION_NEEDS_VALIDATION:
            batch = self.batch_utility(base, updates, weights)
            if batch is None:
                utility = make_coalition_utility(
                    base, updates, weights, self._utility, renormalise=False
                )
            else:
                utility = CachedUtility(batch=batch)
        return compute_scores(
            self.method,
            n=len(updates),
            utility=utility,
            updates=updates,
            weights=weights,
            seed=derive_seed(self.seed, round_),
            **make_method_params(self.method, self.budget, len(updates), self.min_evaluations),
        )


class PassThreads:
    """:meth:`ValidationPasses.utilities` spread over ``threads`` threads, each with its own copy
    of the net: the same values, since each model's passes run the same kernels, on the same
    number of torch threads, whichever thread runs them (``tests/test_validation.py`` pins it).

    Where torch runs on one thread and the other cores are idle (``fedchain simulate``'s server
    while its clients wait for the round's model), a round's loop passes take about
    ``1 / threads`` of the time. The caller chooses ``threads`` (:func:`count_pass_threads`);
    loop passes only (vmap runs many models at once already), at most
    :data:`REPLICA_LIMIT_BYTES` of copies. The rows go in contiguous chunks, the first to the
    calling thread.
    """

    def __init__(self, passes: ValidationPasses, validation: ArrayDataset, threads: int) -> None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.replicas = [passes]
        net_bytes = sum(t.numel() * t.element_size() for t in passes.net.state_dict().values())
        copies = min(threads - 1, REPLICA_LIMIT_BYTES // max(1, net_bytes))
        if passes.passes == "loop" and copies > 0:
            self.replicas += [
                ValidationPasses(copy.deepcopy(passes.net), validation, "loop")
                for _ in range(copies)
            ]
        self._pool = None
        if len(self.replicas) > 1:  # its threads run torch on as many threads as this one
            self._pool = ThreadPoolExecutor(
                len(self.replicas) - 1,
                thread_name_prefix="fedchain validation passes",
                initializer=torch.set_num_threads,
                initargs=(torch.get_num_threads(),),
            )

    def utilities(self, models: torch.Tensor) -> list[float]:
        """:meth:`ValidationPasses.utilities` of ``models``, the rows spread over the threads."""
        chunks = [c for c in torch.tensor_split(models, len(self.replicas)) if len(c)]
        if self._pool is None or len(chunks) < 2:
            return self.replicas[0].utilities(models)
        futures: list[Future[list[float]]] = [
            self._pool.submit(replica.utilities, chunk)
            for replica, chunk in zip(self.replicas[1:], chunks[1:], strict=False)
        ]
        try:
            out = self.replicas[0].utilities(chunks[0])
        finally:
            done = [f.result() for f in futures]  # every thread finished before anything else
        return out + [u for part in done for u in part]


def count_pass_threads() -> int:
    """Threads for :class:`PassThreads`: the cores this process may use that torch's own
    threads leave (one thread per core), at most :data:`MAX_PASS_THREADS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_PASS_THREADS, (cores or 1) // max(1, torch.get_num_threads())))


def _models(block: torch.Tensor, stacked: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``base + block @ stacked``: the average first, then the base, as the per-coalition path."""
    if stacked.shape[0] == 0:
        return base.expand(block.shape[0], -1).clone()
    out = block @ stacked
    out += base
    return out


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """The net in eval mode for the block (BatchNorm statistics, no dropout), then as it was."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)
