"""Tests for fedchain.rounds.validation: the batched coalition evaluation (one matrix product for
the models, loop or vmap passes) against the per-coalition path, for the built-in models, a
torchvision model with BatchNorm, a LoRA model and a model vmap cannot run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedchain.rounds.validation as validation
from fedchain.config import RunConfig, merge_config
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError
from fedchain.learning.architectures import build_model, state_to_numpy
from fedchain.learning.training import derive_seed, evaluate
from fedchain.rounds.coalitions import make_coalition_utility
from fedchain.rounds.contribution import compute_scores, make_method_params
from fedchain.rounds.recheck import compute_score_tolerances
from fedchain.rounds.validation import RoundScorer, ValidationPasses
from fedchain.runs.prepare import load_split


def random_data(shape: tuple[int, ...], classes: int, n: int = 40, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape), dtype=np.float32)
    y = np.arange(n) % classes
    return ArrayDataset("random", x, y, tuple(str(c) for c in range(classes)), None)


def moved(net: nn.Module, count: int, scale: float = 0.05) -> torch.Tensor:
    """``count`` parameter vectors near the net's own (rows), as coalition models would be."""
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters() if p.requires_grad])
    generator = torch.Generator().manual_seed(1)
    return flat + scale * torch.randn(count, flat.numel(), generator=generator)


def load_row(net: nn.Module, passes: ValidationPasses, row: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in passes.names:
                p.copy_(row[offset : offset + p.numel()].view(p.shape))
                offset += p.numel()


def reference(net: nn.Module, passes: ValidationPasses, rows: torch.Tensor, data: ArrayDataset):  # type: ignore[no-untyped-def]
    out = []
    for row in rows:
        load_row(net, passes, row)
        out.append(-evaluate(net, data).loss)
    return out


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten()
        )
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]


class DataDependent(nn.Module):
    """A forward pass vmap cannot vectorise (a Python branch on a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(x)
        return out if float(out.sum()) > -1e9 else -out


def test_loop_passes_are_evaluate_bit_for_bit_and_leave_batchnorm_alone() -> None:
    torch.manual_seed(0)
    net = WithBatchNorm()
    norm = net.body[1]
    assert isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None
    with torch.no_grad():
        norm.running_mean.add_(0.3)
    data = random_data((1, 8, 8), 3)
    passes = ValidationPasses(net, data, "loop")
    rows = moved(net, 5)
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    net.train()
    got = passes.utilities(rows)
    assert net.training  # the mode is given back
    assert all(torch.equal(buffers[k], v) for k, v in net.named_buffers())
    assert got == reference(net, passes, rows, data)


def finetuned_net(
    name: str, shape: tuple[int, ...], finetune: str, rank: int
) -> tuple[torch.nn.Module, ArrayDataset]:
    """A 4-class net (over a seeded base unless fully trained) and 66 random examples: more
    than EVAL_BATCH // VMAP_MODELS, so two vmap batches."""
    base = None
    if finetune != "full":
        base = build_model(name, shape, 4, seed=5).state_dict()
    net = build_model(name, shape, 4, seed=0, finetune=finetune, lora_rank=rank, base=base)
    return net, random_data(shape, 4, n=66)


@pytest.mark.parametrize(
    ("name", "shape", "finetune", "rank"),
    [
        ("cnn", (1, 8, 8), "full", 0),
        ("mlp", (12,), "full", 0),
        ("mobilenet_v3_small", (3, 16, 16), "full", 0),  # BatchNorm, dropout, in-place ops
        ("cnn", (1, 8, 8), "lora", 2),  # peft: only the adapters and the head vary
    ],
)
def test_vmap_passes_match_the_loop(
    name: str, shape: tuple[int, ...], finetune: str, rank: int
) -> None:
    net, data = finetuned_net(name, shape, finetune, rank)
    vmapped = ValidationPasses(net, data, "vmap")
    assert vmapped.passes == "vmap"
    if finetune == "lora":
        assert len(vmapped.names) < len(list(net.parameters()))  # the backbone is shared
    rows = moved(net, 2 if name == "mobilenet_v3_small" else 10, scale=0.01)
    expected = ValidationPasses(net, data, "loop").utilities(rows)
    np.testing.assert_allclose(vmapped.utilities(rows), expected, rtol=2e-6, atol=1e-7)


def test_vmap_falls_back_to_the_loop_where_it_cannot_run() -> None:
    torch.manual_seed(0)
    net = DataDependent()
    data = random_data((6,), 3)
    passes = ValidationPasses(net, data, "vmap")
    assert passes.passes == "loop"
    rows = moved(net, 3)
    assert passes.utilities(rows) == reference(net, passes, rows, data)
    assert ValidationPasses(net, data).passes == "loop"  # auto on the CPU


def test_invalid_validation_passes() -> None:
    net = DataDependent()
    with pytest.raises(ConfigError, match="passes"):
        ValidationPasses(net, random_data((6,), 3), "gpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty"):
        ValidationPasses(net, random_data((6,), 3, n=0), "loop")
    with pytest.raises(ConfigError, match="label 4"):
        ValidationPasses(net, random_data((6,), 5), "loop")


# --------------------------------------------------------------------------------------------------
# The round scorer: batched against per-coalition, within verify --scores' tolerance


def round_inputs(scorer: RoundScorer, n: int, seed: int = 0):  # type: ignore[no-untyped-def]
    base = state_to_numpy(scorer.net)
    rng = np.random.default_rng(seed)
    updates = [
        {k: rng.normal(0, 0.02, v.shape).astype(np.float32) for k, v in base.items()}
        for _ in range(n)
    ]
    updates[3] = {k: np.zeros_like(v) for k, v in base.items()}  # a free rider
    weights = rng.integers(5, 20, n).astype(float)
    weights[5] = 0.0  # a member without weight
    return base, updates, weights


def per_coalition_scores(scorer: RoundScorer, method: str, base, updates, weights):  # type: ignore[no-untyped-def]
    utility = make_coalition_utility(base, updates, weights, scorer._utility, renormalise=False)
    n = len(updates)
    return compute_scores(
        method, n=n, utility=utility, seed=derive_seed(scorer.seed, 1),
        **make_method_params(method, scorer.budget, n, scorer.min_evaluations),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("method", "model", "n"),
    [("mc-shapley", "cnn", 10), ("mc-shapley", "mlp", 9), ("shapley", "cnn", 6),
     ("leave-one-out", "cnn", 8), ("gtg-shapley", "mlp", 7)],
)  # fmt: skip
def test_batched_scores_are_the_per_coalition_scores_within_the_tolerance(
    method: str, model: str, n: int
) -> None:
    config = merge_config(
        RunConfig(),
        {"dataset": "digits", "model": model, "contribution": method, "run-id": "x",
         "contribution-budget": 4},
    )  # fmt: skip
    held = load_split(config)[1]
    results = {}
    for passes in ("loop", "vmap"):
        scorer = RoundScorer(config, held, passes=passes)
        base, updates, weights = round_inputs(scorer, n)
        results[passes] = scorer(base, updates, weights, 1)
        assert scorer.evaluations > n
    scorer = RoundScorer(config, held)
    expected = per_coalition_scores(scorer, method, *round_inputs(scorer, n))
    assert expected[3] == 0.0 and results["loop"][3] == 0.0  # the free rider is a dummy
    tolerances = compute_score_tolerances({bytes([i]): float(s) for i, s in enumerate(expected)})
    for got in results.values():
        for i in range(n):
            assert abs(got[i] - expected[i]) <= tolerances[bytes([i])], (i, got[i], expected[i])


def test_the_scorer_builds_models_one_by_one_beyond_the_stack_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = merge_config(
        RunConfig(), {"dataset": "digits", "run-id": "x", "contribution-budget": 3}
    )
    held = load_split(config)[1]
    scorer = RoundScorer(config, held)
    base, updates, weights = round_inputs(scorer, 8)
    batched = scorer(base, updates, weights, 1)
    monkeypatch.setattr(validation, "STACK_LIMIT_BYTES", 0)
    assert scorer.batch_utility(base, updates, weights) is None
    np.testing.assert_allclose(scorer(base, updates, weights, 1), batched, rtol=0, atol=2e-6)


# --------------------------------------------------------------------------------------------------
# Per-example losses: the paired step test's measurement


@pytest.mark.parametrize(
    ("name", "shape", "finetune", "rank"),
    [("cnn", (1, 8, 8), "full", 0), ("mlp", (12,), "full", 0), ("cnn", (1, 8, 8), "lora", 2)],
)
def test_per_example_losses_match_the_summed_utilities_in_both_passes(
    name: str, shape: tuple[int, ...], finetune: str, rank: int
) -> None:
    net, data = finetuned_net(name, shape, finetune, rank)
    rows = moved(net, 10, scale=0.01)  # more than VMAP_MODELS: two vectorised passes
    loop = ValidationPasses(net, data, "loop")
    vmapped = ValidationPasses(net, data, "vmap")
    assert vmapped.passes == "vmap"
    losses = loop.losses(rows)
    assert losses.shape == (10, 66) and losses.dtype == np.float64
    np.testing.assert_allclose(vmapped.losses(rows), losses, rtol=1e-5, atol=1e-6)
    mean = [-math.fsum(row) / 66 for row in losses.tolist()]  # the summed utilities' figure
    np.testing.assert_allclose(mean, loop.utilities(rows), rtol=2e-6, atol=1e-7)
    # the loop's losses are the net's own on each example (as evaluate computes them)
    load_row(net, loop, rows[3])
    net.eval()
    with torch.no_grad():
        x, y = torch.from_numpy(data.x), torch.from_numpy(data.y).long()
        own = F.cross_entropy(net(x), y, reduction="none").double().numpy()
    np.testing.assert_allclose(losses[3], own, rtol=1e-6, atol=1e-7)


def test_the_step_tester_measures_the_model_the_coordinator_registers() -> None:
    config = merge_config(RunConfig(), {"dataset": "digits", "run-id": "x"})
    held = load_split(config)[1]
    scorer = RoundScorer(config, held, passes="loop")
    base, updates, _ = round_inputs(scorer, 6)
    test = scorer.step_tester(base)
    differences = test(updates[0])
    assert differences.shape == (len(held),) and scorer.evaluations == 2  # base once, the step
    assert test(updates[3]).tolist() == [0.0] * len(held)  # a zero step changes nothing
    assert scorer.evaluations == 3
    registered = {k: (base[k] + updates[0][k]).astype(np.float32) for k in base}
    flat = scorer.passes.flatten
    after = scorer.passes.losses(flat(registered)[None])[0]
    before = scorer.passes.losses(flat(base)[None])[0]
    assert differences.tolist() == (after - before).tolist()
    gain = scorer.passes.utilities(flat(registered)[None])[0]
    gain -= scorer.passes.utilities(flat(base)[None])[0]
    assert -float(differences.mean()) == pytest.approx(gain, rel=1e-4, abs=1e-6)
    with pytest.raises(ConfigError, match="tensors"):
        scorer.step_tester({"other": np.zeros(1, dtype=np.float32)})


# --------------------------------------------------------------------------------------------------
# Passes spread over threads: the one-thread values, bit for bit


@pytest.fixture
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Torch on one thread, as in ``fedchain simulate``'s server (and put back after)."""
    kept = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(kept)


@pytest.mark.usefixtures("one_torch_thread")
def test_pass_threads_give_the_one_thread_scores_bit_for_bit() -> None:
    config = merge_config(
        RunConfig(), {"dataset": "digits", "run-id": "x", "contribution-budget": 4}
    )
    held = load_split(config)[1]
    alone, spread = RoundScorer(config, held, threads=1), RoundScorer(config, held, threads=3)
    assert len(alone.threads.replicas) == 1 and len(spread.threads.replicas) == 3
    inputs = round_inputs(alone, 10)
    expected = alone(*inputs, 1)
    got = spread(*inputs, 1)
    assert np.array_equal(got, expected) and spread.evaluations == alone.evaluations
    assert torch.get_num_threads() == 1  # the threads run torch as this one does


@pytest.mark.usefixtures("one_torch_thread")
def test_pass_threads_keep_each_copy_s_buffers_and_the_row_order() -> None:
    torch.manual_seed(0)
    net = WithBatchNorm()
    data = random_data((1, 8, 8), 3)
    passes = ValidationPasses(net, data, "loop")
    rows = moved(net, 7)
    threads = validation.PassThreads(passes, data, 3)
    assert threads.utilities(rows) == passes.utilities(rows)
    assert threads.utilities(rows[:1]) == passes.utilities(rows[:1])  # fewer rows than threads


def test_pass_threads_only_for_loop_passes_within_the_memory_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = build_model("mlp", (12,), 4, seed=0)
    data = random_data((12,), 4)
    assert len(validation.PassThreads(ValidationPasses(net, data, "vmap"), data, 4).replicas) == 1
    monkeypatch.setattr(validation, "REPLICA_LIMIT_BYTES", 1)
    assert len(validation.PassThreads(ValidationPasses(net, data, "loop"), data, 4).replicas) == 1
    with pytest.raises(ConfigError, match="threads"):
        validation.PassThreads(ValidationPasses(net, data, "loop"), data, 0)
    assert 1 <= validation.count_pass_threads() <= validation.MAX_PASS_THREADS
