"""``fedchain simulate``: a federation of simulated data holders on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedchain.attacks import ATTACKS, Attack, attacker_indices, parse_attackers
from fedchain.cli.common import console
from fedchain.config import LEDGER_OFF_RULES, RunConfig, load_config_file, merge_config
from fedchain.coordinator import RoundOutcome
from fedchain.runs import new_run_id, prepare_run


def simulate(
    config_file: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file of settings (flags win).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Data source (default digits).")] = None,
    data_root: Annotated[str | None, typer.Option(help="Where mnist/cifar10/... live.")] = None,
    clients: Annotated[
        int | None, typer.Option("--clients", "-n", help="Clients (default 10).")
    ] = None,
    clients_per_round: Annotated[
        int | None, typer.Option(help="Sampled per round (0 = all).")
    ] = None,
    partitioner: Annotated[
        str | None, typer.Option(help="iid, dirichlet, shards, quantity.")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet concentration.")] = None,
    rounds: Annotated[
        int | None, typer.Option("--rounds", "-r", help="Rounds (default 20).")
    ] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Local learning rate.")] = None,
    model: Annotated[str | None, typer.Option(help="cnn or mlp.")] = None,
    aggregation: Annotated[
        str | None,
        typer.Option(
            help="screened (default: averages only updates that pass a norm screen and "
            "measurably help; needs --contribution), fedavg, stake, examples-stake, reputation, "
            "median, trimmed-mean, multi-krum; with --ledger off (default then fedavg), Flower's "
            "own strategies: flwr-fedavg, flwr-krum, flwr-multikrum, flwr-trimmed-mean, "
            "flwr-median (f = max(0, (n-3)//2) for Krum; beta 0.2 trim)."
        ),
    ] = None,
    contribution: Annotated[
        str | None,
        typer.Option(
            help="Contribution scores that split the rewards: none (= aggregation weights), "
            "gradient-similarity, leave-one-out, gtg-shapley, shapley (exact; small rounds)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of split, model and training.")] = None,
    ledger: Annotated[
        str | None,
        typer.Option(
            help="on (default) or off: Flower's own strategies (fedavg = Flower FedAvg, or a "
            "flwr-* rule), nothing signed, for comparison."
        ),
    ] = None,
    attack: Annotated[
        str | None,
        typer.Option(
            help="What attackers do: " + ", ".join(ATTACKS) + " (none: no attack; see "
            "fedchain.attacks for each). Needs --attackers."
        ),
    ] = None,
    attackers: Annotated[
        str | None,
        typer.Option(
            help="How many clients attack: a count (3), a percentage (30%) or a fraction (0.3) "
            "of --clients, rounded to the nearest (halves up). Which ones follows from --seed."
        ),
    ] = None,
    attack_scale: Annotated[
        float | None,
        typer.Option(
            help="The attack's strength (0 = its default): sign-flip 1, scaled 10, gaussian "
            "sigma 1, free-rider-noise sigma 1e-3, inflated 10x examples, commit-mismatch 4."
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="Folder for run directories (default runs).")
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="Name of the run directory.")] = None,
) -> None:
    """Run a simulated federation (Flower's simulation engine) and write a run directory."""
    config = load_config_file(config_file) if config_file else RunConfig()
    flags: dict[str, Any] = {
        "dataset": dataset,
        "data_root": data_root,
        "clients": clients,
        "clients_per_round": clients_per_round,
        "partitioner": partitioner,
        "alpha": alpha,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "model": model,
        "aggregation": aggregation,
        "contribution": contribution,
        "seed": seed,
        "out": out,
        "run_id": run_id,
        "attack": attack,
        "attack_scale": attack_scale,
    }
    if ledger is not None:
        if ledger not in ("on", "off"):
            raise typer.BadParameter("--ledger must be on or off")
        flags["ledger"] = ledger == "on"
        if ledger == "off" and aggregation is None and config.aggregation not in LEDGER_OFF_RULES:
            flags["aggregation"] = "fedavg"  # no stake without a ledger: Flower's FedAvg
    config = merge_config(config, {k: v for k, v in flags.items() if v is not None})
    if attackers is not None:
        config = merge_config(config, {"attackers": parse_attackers(attackers, config.clients)})
    if not config.run_id:
        config = merge_config(config, {"run_id": new_run_id(config)})
    with console.status("preparing the run directory (data splits, keys, genesis)…"):
        setup = prepare_run(config)
    mode = "ledger on" if config.ledger else "ledger off (Flower's own strategy)"
    console.print(
        f"run {config.run_id}: {config.clients} clients, {config.rounds} rounds, "
        f"{config.dataset}/{config.partitioner}, rule {config.aggregation}, {mode}",
        highlight=False,
    )
    chosen = attacker_indices(config)
    if chosen:
        scale = Attack(config.attack, config.attack_scale).scale
        console.print(
            f"attack {config.attack} (scale {scale:g}) by {len(chosen)} of {config.clients} "
            f"clients: {', '.join(map(str, chosen))}",
            highlight=False,
        )
    elif config.attack != "none":
        console.print(f"attack {config.attack} named but no attackers (--attackers): a clean run")
    final: dict[str, float] = {}

    def report(round_: int, outcome: RoundOutcome | None, accuracy: float, seconds: float) -> None:
        final["accuracy"] = accuracy
        line = f"round {round_:>3}/{config.rounds}  acc {accuracy:6.2%}  {seconds:5.1f} s"
        if outcome is not None:
            line += (
                f"  accepted {outcome.accepted}  rejected {len(outcome.rejected)}"
                f"  head {outcome.head_height}  final {outcome.final_height}"
            )
            for decision in outcome.rejected:
                line += f"\n      rejected node {decision.node_id}: {decision.reason}"
        console.print(line, highlight=False)

    from server.simulation import run_simulated

    run_simulated(config, setup.run_dir, report)
    console.print(f"final accuracy {final.get('accuracy', float('nan')):.2%}")
    console.print(f"run directory: [bold]{setup.run_dir}[/]")
    if config.ledger:
        console.print(f"check it:      fedchain verify {setup.run_dir}")
