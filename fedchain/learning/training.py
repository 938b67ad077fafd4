"""Local training and evaluation on in-memory data, and model updates as numpy arrays.

Data sets are small enough to hold as two tensors, so batches are taken by indexing those tensors
with a shuffled permutation: no ``DataLoader``, no worker processes (on two cores, workers and
per-item collation cost far more than the model itself).

Determinism: shuffling draws from a local ``torch.Generator`` seeded with ``TrainConfig.seed``
and nothing else is random (no dropout, no augmentation), so the same model, data and config
give bit-identical weights on the same machine with the same torch version and thread count.
CPU kernels may sum in a different order with another thread count or CPU, so results across
machines agree only to rounding. In federated runs give every client and round its own seed,
e.g. ``derive_seed(run_seed, server_round, client_index)``.

Threads: this module never calls ``torch.set_num_threads`` on its own; a process that wants a
fixed count calls :func:`configure_threads` once.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.sgd import sgd

from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError

__all__ = [
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "compute_update",
    "configure_threads",
    "derive_seed",
    "evaluate",
    "set_train_mode",
    "to_tensors",
    "train_local",
]


@dataclass(frozen=True)
class TrainConfig:
    """Local SGD settings for one round of client training.

    The defaults were chosen with ``experiments/bench_training.py --grid``: with the ``cnn`` on
    digits, 10 clients (about 144 examples each) and plain FedAvg they reach >= 95 % test
    accuracy in 4-7 rounds for IID clients and for Dirichlet(0.5) label skew (three seeds each),
    well inside the 20-round target. One local epoch of batch 32 gives each client only five
    steps per round and missed the target on some seeds (15-20 rounds or never); batch 16 and
    two local epochs give 18 steps. lr 0.05 rather than 0.1 leaves headroom for data sets whose
    clients take many more steps, where momentum 0.9 builds up fully. Momentum restarts from
    zero at every :func:`train_local` call, as in FedAvg with a fresh client optimizer per round.
    """

    epochs: int = 2
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in 0 .. 2**63 - 1, got {self.seed}")


@dataclass(frozen=True)
class TrainResult:
    """``loss``: mean cross-entropy over the examples of the last epoch, measured while training."""

    num_examples: int
    loss: float
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy and fraction of correct top-1 predictions over ``num_examples``."""

    loss: float
    accuracy: float
    num_examples: int


def configure_threads(num_threads: int) -> None:
    """Set torch's intra-op thread count for this process (call once, before training).

    Where several processes share the cores (simulated clients, one per core), use 1: with more
    threads than free cores, OpenMP's spin-waiting makes small-batch training up to ~70x slower
    (measured on two cores: a 144-example epoch took 2.5 s with 2 threads next to one busy
    process, 35 ms with 1 thread; ``OMP_WAIT_POLICY=passive`` also avoids it).
    """
    if num_threads < 1:
        raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)


def derive_seed(*parts: int) -> int:
    """A seed in ``0 .. 2**63 - 1`` derived from non-negative integers (e.g. run, round, client).

    SHA-256 over the parts as 8-byte little-endian words, so seeds for neighbouring rounds or
    clients are unrelated and the result is the same on every machine.
    """
    if any(p < 0 or p >= 2**64 for p in parts):
        raise ConfigError(f"seed parts must be integers in 0 .. 2**64 - 1, got {parts}")
    data = b"".join(int(p).to_bytes(8, "little") for p in parts)
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1


def to_tensors(ds: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: features as float32 divided by ``ds.value_max`` (if set), labels as int64.

    Both are fresh tensors owned by torch (the data set's arrays may be read-only), converted
    once so training does not rescale every batch.
    """
    x = np.array(ds.x, dtype=np.float32, order="C")
    if ds.value_max is not None:
        np.divide(x, np.float32(ds.value_max), out=x)
    y = np.array(ds.y, dtype=np.int64, order="C")
    return torch.from_numpy(x), torch.from_numpy(y)


def train_local(model: nn.Module, ds: ArrayDataset, cfg: TrainConfig) -> TrainResult:
    """Train ``model`` in place with SGD on ``ds`` for ``cfg.epochs`` epochs.

    Every epoch visits each example once, in an order drawn from a generator seeded with
    ``cfg.seed``; the last batch of an epoch may be smaller (nothing is dropped, which matters for
    clients with few examples). Momentum starts from zero. Labels may be any subset of the
    model's classes. Raises :class:`ConfigError` for an empty data set or labels the model has no
    output for.
    """
    start = time.perf_counter()
    x, y = _checked_tensors(model, ds, "train on")
    n = int(y.shape[0])
    generator = torch.Generator().manual_seed(cfg.seed)
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    momentum_buffers: list[torch.Tensor | None] = [None] * len(params)
    set_train_mode(model)
    epoch_loss = torch.zeros((), dtype=torch.float64)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        epoch_loss = torch.zeros((), dtype=torch.float64)
        for begin in range(0, n, cfg.batch_size):
            idx = order[begin : begin + cfg.batch_size]
            for p in params:
                p.grad = None
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            _sgd_step(params, momentum_buffers, cfg)
            epoch_loss += loss.detach().double() * idx.shape[0]
    return TrainResult(n, float(epoch_loss) / n, time.perf_counter() - start)


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, but with every BatchNorm layer in eval mode: the federation's buffer
    policy keeps BatchNorm statistics frozen at the base's (see
    :mod:`fedchain.learning.architectures`), so local training normalises with them and never
    updates them."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.no_grad()
def _sgd_step(
    params: list[torch.Tensor], momentum_buffers: list[torch.Tensor | None], cfg: TrainConfig
) -> None:
    """One SGD step (momentum, L2 weight decay, no dampening, no Nesterov), in place.

    Calls torch's functional ``torch.optim.sgd.sgd``, the very computation ``torch.optim.SGD``
    runs, rather than building an optimizer object: constructing any ``torch.optim`` optimizer
    imports ``torch._dynamo``, about 3 s per process on two cores, paid again by every fresh
    client process. ``momentum_buffers`` carries the momentum state between steps.
    """
    active = [i for i, p in enumerate(params) if p.grad is not None]  # as torch.optim skips
    grads = [g for i in active if (g := params[i].grad) is not None]
    buffers = [momentum_buffers[i] for i in active]
    sgd(
        [params[i] for i in active],
        grads,
        buffers,
        foreach=False,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        lr=cfg.lr,
        dampening=0.0,
        nesterov=False,
        maximize=False,
    )
    for i, buf in zip(active, buffers, strict=True):
        momentum_buffers[i] = buf


@torch.no_grad()
def evaluate(model: nn.Module, ds: ArrayDataset, batch_size: int = 512) -> EvalResult:
    """Mean loss and accuracy of ``model`` on ``ds``, in batches of ``batch_size``.

    The model is put in eval mode for the pass and returned to the mode it was in. Raises
    :class:`ConfigError` for an empty data set, a bad batch size, or labels the model has no
    output for.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    x, y = _checked_tensors(model, ds, "evaluate on")
    was_training = model.training
    model.eval()
    try:
        total_loss = 0.0
        correct = 0
        for begin in range(0, int(y.shape[0]), batch_size):
            logits = model(x[begin : begin + batch_size])
            labels = y[begin : begin + batch_size]
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
    finally:
        model.train(was_training)
    n = int(y.shape[0])
    return EvalResult(total_loss / n, correct / n, n)


def _checked_tensors(
    model: nn.Module, ds: ArrayDataset, action: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors of ``ds`` after checking it is non-empty and fits the model's outputs."""
    if len(ds) == 0:
        raise ConfigError(f"cannot {action} the empty data set {ds.name!r}")
    x, y = to_tensors(ds)
    was_training = model.training
    model.eval()  # the probe must not move BatchNorm statistics (nor see a batch of one)
    with torch.no_grad():
        num_outputs = int(model(x[:1]).shape[1])
    model.train(was_training)
    max_label = int(y.max())
    if max_label >= num_outputs:
        raise ConfigError(
            f"data set {ds.name!r} has label {max_label} but the model has only {num_outputs} "
            "outputs; build the model with num_classes=len(ds.classes)"
        )
    return x, y


def compute_update(
    before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``after - before`` per tensor, in ``after``'s order, as new C-contiguous arrays.

    Both mappings must hold the same names with the same shapes (:class:`ConfigError` otherwise).
    The result dtype is numpy's for the subtraction: float32 for :func:`state_to_numpy` output.
    """
    missing = sorted(set(after) - set(before))
    unexpected = sorted(set(before) - set(after))
    if missing or unexpected:
        raise ConfigError(
            f"cannot compute an update between different models: names only after {missing}, "
            f"only before {unexpected}"
        )
    update: dict[str, np.ndarray] = {}
    for name, new in after.items():
        old = before[name]
        if np.shape(new) != np.shape(old):
            raise ConfigError(
                f"cannot compute an update for {name!r}: shape {np.shape(old)} before, "
                f"{np.shape(new)} after"
            )
        update[name] = np.ascontiguousarray(np.subtract(new, old))
    return update
