"""Example-level differential privacy: DP-SGD local training through Opacus.

Each step samples every example independently with probability ``sample_rate`` (Poisson
sampling, the sampled Gaussian mechanism the RDP accountant analyses), clips each example's
gradient to L2 norm ``clip`` and adds N(0, (noise_multiplier · clip)²) to their sum (Opacus's
``GradSampleModule`` and ``DPOptimizer``), divided by the expected batch size. A round is
exactly ``steps`` such steps, the number the genesis rules fix, so every participation is the
same mechanism (docs/ledger-spec.md §9.6). The update the client then sends is a function of
these noised steps only: it is committed as it is, with no further noise.

Sampling and noise must be secret to the client (the accountant's amplification by sampling
assumes nobody knows which examples a step used): both generators are seeded from the operating
system, unless a test pins ``seed``. The noise is drawn in Opacus's ``secure_mode``
(``DPOptimizer(secure_mode=True)``: each coordinate the sum of four Gaussians halved, against
the floating-point attack on Gaussian noise). The other half of Opacus's secure mode, its
``PrivacyEngine`` drawing from ``torchcsprng``'s cryptographically secure generator, is not
available: torchcsprng's last release (0.2.1, March 2021) was built for torch 1.8 and the
project is archived. Both generators here are therefore torch's Mersenne Twister, seeded with 63
bits from ``secrets``; no raw output of either leaves the client (only the clipped gradients'
noised sums, through the update). Imports Opacus.
"""

from __future__ import annotations

import secrets
import time
import warnings

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn import functional as F

from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError
from fedchain.learning.training import TrainResult, set_train_mode, to_tensors

__all__ = ["train_dpsgd"]


def train_dpsgd(
    model: nn.Module,
    ds: ArrayDataset,
    *,
    lr: float,
    noise_multiplier: float,
    clip: float,
    sample_rate: float,
    steps: int,
    momentum: float = 0.0,
    seed: int | None = None,
) -> TrainResult:
    """Train ``model`` in place with ``steps`` DP-SGD steps on ``ds``. ``loss``: the mean loss
    of the examples the steps drew (not private: the client keeps it; 0.0 if none drawn).
    ``seed``: pins both generators (tests only; None: the operating system's randomness)."""
    if len(ds) == 0:
        raise ConfigError(f"cannot train on the empty data set {ds.name!r}")
    if not (0 < sample_rate <= 1 and steps >= 1 and clip > 0 and noise_multiplier > 0):
        raise ConfigError("DP-SGD needs 0 < sample rate <= 1, steps >= 1, clip > 0, noise > 0")
    start = time.perf_counter()
    x, y = to_tensors(ds)
    n = int(y.shape[0])
    sampling = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    noise = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed + 1)
    private = GradSampleModule(model)
    optimizer = DPOptimizer(
        torch.optim.SGD(private.parameters(), lr=lr, momentum=momentum),
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip,
        expected_batch_size=max(1, round(sample_rate * n)),
        generator=noise,
        secure_mode=True,
    )
    set_train_mode(private)
    with warnings.catch_warnings():
        # Opacus's per-example hooks on a first layer whose input needs no gradient: expected
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        total, drawn = _steps(private, optimizer, x, y, sampling, sample_rate, steps)
    private.remove_hooks()
    return TrainResult(n, float(total) / drawn if drawn else 0.0, time.perf_counter() - start)


def _steps(
    private: GradSampleModule,
    optimizer: DPOptimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    sampling: torch.Generator,
    sample_rate: float,
    steps: int,
) -> tuple[torch.Tensor, int]:
    """``steps`` Poisson-sampled DP-SGD steps: (summed loss of the drawn examples, how many)."""
    n = int(y.shape[0])
    total, drawn = torch.zeros((), dtype=torch.float64), 0
    for _ in range(steps):
        idx = (torch.rand(n, generator=sampling) < sample_rate).nonzero().squeeze(1)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(private(x[idx]), y[idx], reduction="sum")
        (loss / max(1, int(idx.shape[0]))).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += loss.detach().double()
        drawn += int(idx.shape[0])
    return total, drawn
