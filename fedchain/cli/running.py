"""A prepared simulation on the console: its first lines, a line per round, Ctrl-C, the last
lines (what ``fedchain simulate`` prints once the run directory is written)."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

from rich.markup import escape

from fedchain.cli.common import console
from fedchain.cli.launch import Launcher
from fedchain.cli.resume import leave_interrupted, leaving_on_ctrl_c
from fedchain.cli.round_lines import format_round
from fedchain.config import RunConfig
from fedchain.errors import FedchainError
from fedchain.learning.attacks import Attack, attacker_indices
from fedchain.rounds.coordinator import RoundOutcome
from fedchain.runs.prepare import make_rules_for

__all__ = ["announce_run", "run_on_console"]


def announce_run(config: RunConfig) -> None:
    """The run's first lines: its size, rule and ledger, its attackers, its privacy."""
    mode = "ledger on" if config.ledger else "ledger off (Flower's own strategy)"
    console.print(
        f"run {config.run_id}: {config.clients} clients, {config.rounds} rounds, "
        f"{config.dataset}/{config.partitioner}, rule {config.aggregation}, {mode}",
        highlight=False,
        markup=False,
    )
    chosen = attacker_indices(config)
    if chosen:
        scale = Attack(config.attack, config.attack_scale).scale
        console.print(
            f"attack {config.attack} (scale {scale:g}) by {len(chosen)} of {config.clients} "
            f"clients: {', '.join(map(str, chosen))}",
            highlight=False,
        )
    if config.dp != "off":
        cap = make_rules_for(config).dp_max_participations
        clipped = "updates" if config.dp == "client" else "example gradients"
        steps = (
            ""
            if config.dp == "client"
            else f", {config.dp_steps_per_round} steps a round at rate {config.dp_sample_rate:g}"
        )
        console.print(
            f"differential privacy ({config.dp} level): {clipped} clipped to "
            f"{config.dp_clip:g}, noise multiplier {config.dp_noise:g}{steps}; each client may "
            f"take part in {cap} rounds (epsilon <= {config.dp_max_epsilon:g} at delta "
            f"{config.dp_delta:g})",
            highlight=False,
        )


def run_on_console(
    config: RunConfig, run_dir: Path, launcher: EntryPoint, ray_address: str | None = None
) -> None:
    """Run the prepared ``run_dir`` with ``launcher``, a line per round; Ctrl-C leaves at once
    with the command that resumes (:func:`~fedchain.cli.resume.leaving_on_ctrl_c`)."""
    run_simulated: Launcher = launcher.load()
    final: dict[str, float] = {}

    def report(round_: int, outcome: RoundOutcome | None, accuracy: float, seconds: float) -> None:
        final["accuracy"] = accuracy
        line = format_round(round_, config.rounds, outcome, accuracy, seconds)
        console.print(line, highlight=False, markup=False)

    try:
        with leaving_on_ctrl_c(config, run_dir):
            run_simulated(config, run_dir, report, ray_address=ray_address)
    except KeyboardInterrupt:  # one raised before the handler was in place
        leave_interrupted(config, run_dir)
    except FedchainError as e:
        raise FedchainError(f"{e} (run directory {run_dir})") from None
    if "accuracy" in final:
        console.print(f"final accuracy {final['accuracy']:.2%}")
    console.print(f"run directory: [bold]{escape(str(run_dir))}[/]", highlight=False)
    if config.ledger:
        console.print(f"check it:      fedchain verify {run_dir}", markup=False)
