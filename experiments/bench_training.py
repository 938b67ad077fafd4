"""Benchmark: local training speed and the accuracy the TrainConfig defaults reach on digits.

Two parts, both with the ``cnn`` on scikit-learn's 8x8 digits (1,437 train / 360 test images):

1. Centralised: train on the whole train split for ``--epochs`` epochs with the TrainConfig
   defaults, evaluating after each epoch. Reports train and eval throughput (samples/s; epoch 1,
   which includes torch's one-off kernel set-up, is left out of the train median), the first
   epoch (and cumulative training seconds) at which test accuracy reaches the target, and the
   accuracy after the last epoch.
2. FedAvg sanity simulation in plain Python (no Flower, no ledger): ``--clients`` clients from
   ``fedchain.data.partition.partition`` (IID, then Dirichlet ``--alpha``), each training
   ``TrainConfig.epochs`` local epochs per round from the global model, averaged by example count,
   for ``--rounds`` rounds. Reports test accuracy per round and the first round at target. Each
   client and round trains with its own seed, ``derive_seed(seed, round, client)``.

The product target (DESIGN.md): >= 95 % test accuracy within 20 rounds with 10 clients. The FedAvg
part is repeated for each of ``--seeds`` (model init, partition and shuffling all change), because
one lucky seed proves little. ``--grid`` instead sweeps batch size x learning rate x local epochs
and prints rounds-to-target per setting (used to pick the defaults).

    python experiments/bench_training.py [--threads 2] [--seeds 0 1 2] [--json out.json]
    python experiments/bench_training.py --grid
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedchain.data.partition import partition
from fedchain.data.sources import ArrayDataset, load_source
from fedchain.learning.architectures import build_model, load_numpy_state, state_to_numpy
from fedchain.learning.training import (
    TrainConfig,
    compute_update,
    configure_threads,
    derive_seed,
    evaluate,
    train_local,
)

TARGET = 0.95
MODEL = "cnn"


def first_at_target(accuracies: list[float]) -> int | None:
    """1-based index of the first accuracy >= TARGET, or None."""
    return next((i + 1 for i, a in enumerate(accuracies) if a >= TARGET), None)


def centralised(
    train: ArrayDataset, test: ArrayDataset, cfg: TrainConfig, epochs: int
) -> dict[str, Any]:
    model = build_model(MODEL, train.x.shape[1:], len(train.classes), seed=cfg.seed)
    accuracies: list[float] = []
    train_s: list[float] = []
    eval_s: list[float] = []
    for epoch in range(epochs):
        result = train_local(
            model, train, replace(cfg, epochs=1, seed=derive_seed(cfg.seed, epoch))
        )
        train_s.append(result.seconds)
        start = time.perf_counter()
        accuracies.append(evaluate(model, test).accuracy)
        eval_s.append(time.perf_counter() - start)
    at = first_at_target(accuracies)
    return {
        "epochs": epochs,
        "train_samples_per_s": len(train) / statistics.median(train_s[1:] or train_s),
        "eval_samples_per_s": len(test) / statistics.median(eval_s[1:] or eval_s),
        "first_epoch_s": train_s[0],
        "epochs_to_target": at,
        "train_seconds_to_target": sum(train_s[:at]) if at else None,
        "final_accuracy": accuracies[-1],
        "accuracy_per_epoch": accuracies,
    }


def fedavg(
    train: ArrayDataset,
    test: ArrayDataset,
    cfg: TrainConfig,
    *,
    method: str,
    alpha: float,
    clients: int,
    rounds: int,
    seed: int,
) -> dict[str, Any]:
    """Plain FedAvg: global += sum_k (n_k / n) * update_k; every client takes part every round."""
    parts = partition(train.y, clients, method, seed=seed, alpha=alpha)
    client_data = [train.subset(idx) for idx in parts]
    model = build_model(MODEL, train.x.shape[1:], len(train.classes), seed=seed)
    global_state = state_to_numpy(model)
    total = sum(len(d) for d in client_data)
    accuracies: list[float] = []
    start = time.perf_counter()
    for rnd in range(1, rounds + 1):
        new_state = {k: v.copy() for k, v in global_state.items()}
        for k, data in enumerate(client_data):
            load_numpy_state(model, global_state)
            result = train_local(model, data, replace(cfg, seed=derive_seed(seed, rnd, k)))
            update = compute_update(global_state, state_to_numpy(model))
            weight = np.float32(result.num_examples / total)
            for name, delta in update.items():
                new_state[name] += weight * delta
        global_state = new_state
        load_numpy_state(model, global_state)
        accuracies.append(evaluate(model, test).accuracy)
    return {
        "method": method,
        "alpha": alpha if method == "dirichlet" else None,
        "seed": seed,
        "client_sizes": [len(d) for d in client_data],
        "classes_per_client": [int(np.unique(d.y).size) for d in client_data],
        "round_to_target": first_at_target(accuracies),
        "final_accuracy": accuracies[-1],
        "seconds": time.perf_counter() - start,
        "accuracy_per_round": accuracies,
    }


def fmt_acc(values: list[float]) -> str:
    return " ".join(f"{100 * a:.1f}" for a in values)


def run_default(args: argparse.Namespace, train: ArrayDataset, test: ArrayDataset) -> None:
    cfg = TrainConfig()
    print(f"TrainConfig defaults: {asdict(cfg)}")
    c = centralised(train, test, cfg, args.epochs)
    print(f"\n[centralised] {MODEL} on digits, {len(train)} train / {len(test)} test")
    print(
        f"  train {c['train_samples_per_s']:,.0f} samples/s (median epoch 2..{args.epochs}; "
        f"epoch 1 took {c['first_epoch_s']:.2f} s incl. set-up)"
    )
    print(f"  eval  {c['eval_samples_per_s']:,.0f} samples/s")
    at = c["epochs_to_target"]
    secs = f"{c['train_seconds_to_target']:.2f} s" if at else "-"
    print(f"  >= {100 * TARGET:.0f} % after epoch {at} ({secs} training)")
    print(f"  accuracy after {args.epochs} epochs: {100 * c['final_accuracy']:.1f} %")
    print(f"  per epoch: {fmt_acc(c['accuracy_per_epoch'])}")
    runs = []
    for method in ("iid", "dirichlet"):
        label = "IID" if method == "iid" else f"Dirichlet alpha={args.alpha}"
        print(
            f"\n[fedavg] {args.clients} clients {label}, {cfg.epochs} local epoch(s)/round, "
            f"{args.rounds} rounds"
        )
        for seed in args.seeds:
            r = fedavg(
                train,
                test,
                cfg,
                method=method,
                alpha=args.alpha,
                clients=args.clients,
                rounds=args.rounds,
                seed=seed,
            )
            runs.append(r)
            print(
                f"  seed {seed}: >= {100 * TARGET:.0f} % at round {r['round_to_target']}, "
                f"final {100 * r['final_accuracy']:.1f} %, {r['seconds']:.1f} s; "
                f"classes/client {r['classes_per_client']}"
            )
            print(f"    per round: {fmt_acc(r['accuracy_per_round'])}")
    if args.json:
        payload = {"config": asdict(cfg), "centralised": c, "fedavg": runs, **environment()}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


def run_grid(args: argparse.Namespace, train: ArrayDataset, test: ArrayDataset) -> None:
    """Rounds to target for each (batch size, lr, local epochs), IID and Dirichlet, per seed."""
    print(
        f"grid: momentum {TrainConfig().momentum}, {args.clients} clients, {args.rounds} rounds; "
        f"cells: round at >= {100 * TARGET:.0f} % per seed ('-' = never), lowest final accuracy"
    )
    print(f"{'batch':>5} {'lr':>6} {'ep':>3}  {'IID':<28}{'Dirichlet ' + str(args.alpha):<28}")
    for bs, lr, ep in itertools.product(args.grid_batch, args.grid_lr, args.grid_epochs):
        cfg = TrainConfig(epochs=ep, batch_size=bs, lr=lr)
        cells = []
        for method in ("iid", "dirichlet"):
            rs = [
                fedavg(
                    train,
                    test,
                    cfg,
                    method=method,
                    alpha=args.alpha,
                    clients=args.clients,
                    rounds=args.rounds,
                    seed=seed,
                )
                for seed in args.seeds
            ]
            rounds = ",".join(str(r["round_to_target"] or "-") for r in rs)
            final = min(r["final_accuracy"] for r in rs)
            cells.append(f"{rounds} (min {100 * final:.1f})")
        print(f"{bs:>5} {lr:>6} {ep:>3}  {cells[0]:<28}{cells[1]:<28}", flush=True)


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--epochs", type=int, default=20, help="centralised epochs (default 20)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha (default 0.5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--grid", action="store_true", help="sweep settings instead")
    parser.add_argument("--grid-batch", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--grid-lr", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--grid-epochs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if args.epochs < 1 or args.rounds < 1 or args.clients < 1:
        parser.error("--epochs, --rounds and --clients must be >= 1")
    configure_threads(args.threads)
    train, test = load_source("digits", split="train"), load_source("digits", split="test")
    env = environment()
    print(
        f"torch {env['torch']}  numpy {env['numpy']}  python {env['python']}  "
        f"cpu_count {env['cpu_count']}  torch threads {env['torch_threads']}"
    )
    if args.grid:
        run_grid(args, train, test)
    else:
        run_default(args, train, test)


if __name__ == "__main__":
    main()
