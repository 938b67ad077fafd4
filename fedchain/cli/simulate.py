"""``fedchain simulate``: a federation of simulated data holders on this machine.

Every setting of :class:`fedchain.config.RunConfig` has a flag. Flags default to None (unset), so
that a ``--config`` TOML file can set what the command line leaves out; their help says the real
default, read from :data:`fedchain.config.DEFAULTS`, so ``--help`` cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedchain.cli.common import console
from fedchain.cli.launch import check_ray_address, find_launcher
from fedchain.cli.resume import resumable_run
from fedchain.cli.running import announce_run, run_on_console
from fedchain.config import (
    DEFAULTS,
    LEDGER_OFF_RULES,
    RunConfig,
    check_attack_has_attackers,
    load_config_file,
    merge_config,
)
from fedchain.data.partition import PARTITIONERS
from fedchain.data.sources import SOURCES
from fedchain.errors import ConfigError
from fedchain.learning.attacks import ATTACKS, parse_attackers
from fedchain.runs.layout import CONFIG_FILENAME
from fedchain.runs.prepare import new_run_id, prepare_run


def shown_default(name: str) -> str:
    """The default of setting ``name`` as its flag takes it (``on``/``off`` for switches)."""
    value = getattr(DEFAULTS, name)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value) if value != "" else "none"


def _help(name: str, text: str) -> str:
    """``text`` and the setting's real default: ``Local batch size (default 16).``"""
    return f"{text.rstrip('.')} (default {shown_default(name)})."


def simulate(
    config_file: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file of settings (flags win).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the unfinished run in this run directory from its ledger head, with "
            f"its own {CONFIG_FILENAME} (no other settings; a run with the ledger off cannot "
            "resume).",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Run the clients on the Ray cluster whose head is at HOST:PORT (as `ray start "
            "--head` prints it) instead of a Ray started here. Every node needs this Python "
            "environment at the same path and the run directory at the same path (a shared file "
            "system). Also with --resume.",
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help=_help("dataset", "Data source: " + ", ".join(SOURCES)))
    ] = None,
    data_root: Annotated[
        str | None,
        typer.Option(help="Where mnist/cifar10/... live (default: the source's own place)."),
    ] = None,
    train_examples: Annotated[
        int | None,
        typer.Option(
            help=_help(
                "train_examples",
                "Use a seeded, class-stratified subsample of this many examples of the source's "
                "train split (the clients' data and the validation split come from it; 0: all)",
            )
        ),
    ] = None,
    test_examples: Annotated[
        int | None,
        typer.Option(
            help=_help(
                "test_examples",
                "The same for the test split the accuracy is measured on (0: all)",
            )
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "tokenizer", "--dataset text: the local tokenizer directory (save_pretrained's)"
            )
        ),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help=_help("text_column", "--dataset text: the text column"))
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help=_help("label_column", "--dataset text: the label column"))
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(help=_help("max_length", "--dataset text: tokens per example")),
    ] = None,
    clients: Annotated[
        int | None, typer.Option("--clients", "-n", help=_help("clients", "Clients."))
    ] = None,
    clients_per_round: Annotated[
        int | None,
        typer.Option(help=_help("clients_per_round", "Clients sampled per round (0 = all).")),
    ] = None,
    partitioner: Annotated[
        str | None,
        typer.Option(help=_help("partitioner", "How data is split: " + ", ".join(PARTITIONERS))),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(help=_help("alpha", "Dirichlet concentration (smaller: more skewed).")),
    ] = None,
    shards_per_client: Annotated[
        int | None,
        typer.Option(help=_help("shards_per_client", "Label shards per client (shards).")),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option("--rounds", "-r", help=_help("rounds", "Rounds."))
    ] = None,
    local_epochs: Annotated[
        int | None, typer.Option(help=_help("local_epochs", "Local epochs per round."))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_help("batch_size", "Local batch size."))
    ] = None,
    lr: Annotated[float | None, typer.Option(help=_help("lr", "Local learning rate."))] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "model",
                "cnn or mlp (built in); resnet18, mobilenet_v3_small, efficientnet_b0, vgg11 "
                "(torchvision, nothing downloaded); or your own task module's import path "
                "(package.module; contract: fedchain.learning.task)",
            )
        ),
    ] = None,
    finetune: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "finetune",
                "What trains: full (every parameter), head (the classifier head; backbone "
                "frozen at the base) or lora (low-rank adapters through peft, and the head); "
                "head and lora need --base-weights",
            )
        ),
    ] = None,
    lora_rank: Annotated[
        int | None, typer.Option(help=_help("lora_rank", "The LoRA adapters' rank."))
    ] = None,
    base_weights: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "base_weights",
                "A local .safetensors or .pth state dict the model starts from (a pretrained "
                "base; its hash goes on the genesis and every client checks its copy)",
            )
        ),
    ] = None,
    base_source: Annotated[
        str | None,
        typer.Option(
            help=_help("base_source", "Where the base came from, as the genesis records it")
        ),
    ] = None,
    base_licence: Annotated[
        str | None,
        typer.Option(help=_help("base_licence", "The base model's licence text (genesis)")),
    ] = None,
    model_access: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "model_access",
                "Who besides the participants may be given the models: comma-separated hex "
                "public keys, recorded in the genesis",
            )
        ),
    ] = None,
    aggregation: Annotated[
        str | None,
        typer.Option(
            help=f"Aggregation rule (default {shown_default('aggregation')}: averages only "
            "updates that pass a norm screen and measurably help; needs --contribution), fedavg, "
            "stake, examples-stake, reputation, "
            "median, trimmed-mean, multi-krum; with --ledger off (default then fedavg), Flower's "
            "own strategies: flwr-fedavg, flwr-krum, flwr-multikrum, flwr-trimmed-mean, "
            "flwr-median (f = max(0, (n-3)//2) for Krum; beta 0.2 trim)."
        ),
    ] = None,
    beta: Annotated[
        float | None,
        typer.Option(help=_help("beta", "Exponent on stake in examples x stake^beta weights.")),
    ] = None,
    weight_cap: Annotated[
        float | None,
        typer.Option(
            help=_help(
                "weight_cap", "Largest share of the weight one client can carry (1 = no cap)."
            )
        ),
    ] = None,
    contribution: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "contribution",
                "Contribution scores that split the rewards: none (= aggregation weights), "
                "gradient-similarity, leave-one-out, mc-shapley (sampled permutations), "
                "gtg-shapley, shapley (exact; small rounds).",
            )
        ),
    ] = None,
    contribution_budget: Annotated[
        int | None,
        typer.Option(
            help=_help(
                "contribution_budget",
                "Coalition evaluations per client for mc-shapley and gtg-shapley (exact "
                "Shapley needs 2^n for n clients), raised to reach --contribution-min-evaluations "
                "a round.",
            )
        ),
    ] = None,
    contribution_min_evaluations: Annotated[
        int | None,
        typer.Option(
            help=_help(
                "contribution_min_evaluations",
                "The fewest coalition evaluations a round of mc-shapley or gtg-shapley makes "
                "(a round of few clients: more per client).",
            )
        ),
    ] = None,
    payout_min_score: Annotated[
        float | None,
        typer.Option(
            help=_help(
                "payout_min_score",
                "A round whose positive scores sum to less than this validation-loss gain pays "
                "that fraction of its pool (carried pools included) and carries the rest; a "
                "round whose model did not move pays nothing (0: pay every moved round in full).",
            )
        ),
    ] = None,
    score_debt_decay: Annotated[
        float | None,
        typer.Option(
            help=_help(
                "score_debt_decay",
                "A client's negative scores are a debt its positive scores repay before they "
                "are paid (so a harmful client is not paid for a lucky round); this share of "
                "the debt is forgiven each round, its harm excepted (--harm-debt-decay; 1 and "
                "1: keep no debt).",
            )
        ),
    ] = None,
    harm_debt_decay: Annotated[
        float | None,
        typer.Option(
            help=_help(
                "harm_debt_decay",
                "The share of a client's harm (the part of its negative scores below -0.01) "
                "forgiven each round, at most --score-debt-decay (a larger value counts as it); "
                "0 never forgives it, so an attacker's early harm outlasts its late rounds, "
                "which on a small validation split look like honest noise.",
            )
        ),
    ] = None,
    validation_fraction: Annotated[
        float | None,
        typer.Option(
            help=_help(
                "validation_fraction",
                "Share of the training data the coordinator holds out to score contributions "
                "(0 only with gradient-similarity or none).",
            )
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=_help("seed", "Seed of split, model and training."))
    ] = None,
    ledger: Annotated[
        str | None,
        typer.Option(
            help=f"on or off (default {shown_default('ledger')}); off: Flower's own strategies "
            "(fedavg = Flower FedAvg, or a flwr-* rule), nothing signed, for comparison."
        ),
    ] = None,
    stake: Annotated[
        int | None, typer.Option(help=_help("stake", "Each client's deposit, in base units."))
    ] = None,
    min_stake: Annotated[
        int | None,
        typer.Option(
            help=_help("min_stake", "Stake below which a client is ejected (base units).")
        ),
    ] = None,
    reward_per_round: Annotated[
        int | None,
        typer.Option(help=_help("reward_per_round", "Reward pool split each round (base units).")),
    ] = None,
    slash_bad_commitment_bps: Annotated[
        int | None,
        typer.Option(
            hidden=True,  # retired: refused with its reason (fedchain.config.RETIRED_SETTINGS)
            help="Retired: an update that does not match its commitment is rejected, not slashed.",
        ),
    ] = None,
    slash_double_sign_bps: Annotated[
        int | None,
        typer.Option(
            help=_help(
                "slash_double_sign_bps",
                "Stake slashed for signing two blocks at one height (basis points).",
            )
        ),
    ] = None,
    reputation_penalty_bps: Annotated[
        int | None,
        typer.Option(
            help=_help(
                "reputation_penalty_bps",
                "Reputation lost per harmful contribution (basis points of 10,000).",
            )
        ),
    ] = None,
    archive_updates: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "archive_updates",
                "Which rounds' client updates the run keeps in updates/ (a rule on the genesis): "
                "all, none, or K (the last K rounds). verify --scores re-checks the kept rounds.",
            )
        ),
    ] = None,
    round_timeout: Annotated[
        float | None,
        typer.Option(help=_help("round_timeout", "Seconds a round waits for replies.")),
    ] = None,
    attack: Annotated[
        str | None,
        typer.Option(
            help=f"What attackers do (default {shown_default('attack')}): "
            + ", ".join(ATTACKS)
            + " (see fedchain.learning.attacks for each). Needs --attackers."
        ),
    ] = None,
    attackers: Annotated[
        str | None,
        typer.Option(
            help=f"How many clients attack (default {shown_default('attackers')}): a count (3), "
            "a percentage (30%) or a fraction (0.3) of --clients, rounded to the nearest (halves "
            "up). Which ones follows from --seed."
        ),
    ] = None,
    attack_scale: Annotated[
        float | None,
        typer.Option(
            help=f"The attack's strength (default {shown_default('attack_scale')}: the attack's "
            "own, sign-flip 1, scaled 10, gaussian sigma 1, free-rider-noise sigma 1e-3, "
            "inflated 10x examples, commit-mismatch 4)."
        ),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            help=_help("anchor", "Anchor final blocks to an outside witness: off, evm or rfc3161.")
        ),
    ] = None,
    anchor_every: Annotated[
        int | None,
        typer.Option(help=_help("anchor_every", "Anchor every this many final blocks.")),
    ] = None,
    anchor_url: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "anchor_url",
                "The EVM node's JSON-RPC URL (memory: an in-process test chain, gone with the "
                "process; `fedchain anchor serve-evm` serves one to try) or the TSA's URL.",
            )
        ),
    ] = None,
    anchor_contract: Annotated[
        str | None,
        typer.Option(help=_help("anchor_contract", "The EVM anchor contract (empty: deploy one).")),
    ] = None,
    anchor_tsa_cert: Annotated[
        str | None,
        typer.Option(
            help=_help("anchor_tsa_cert", "PEM certificate the TSA's tokens must verify against.")
        ),
    ] = None,
    anchor_key: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "anchor_key",
                "A file (mode 0600) with the EVM private key that signs the anchors, for a node "
                "that holds no unlocked account (empty: the node's first account sends them).",
            )
        ),
    ] = None,
    dp: Annotated[
        str | None,
        typer.Option(
            help=_help(
                "dp",
                "Differential privacy: off; client (each client clips its update to --dp-clip "
                "and adds Gaussian noise before hashing and signing it); or example (DP-SGD "
                "through Opacus: per-example clipping and noise in local training)",
            )
        ),
    ] = None,
    dp_noise: Annotated[
        float | None,
        typer.Option(help=_help("dp_noise", "Noise multiplier: noise std = this x --dp-clip.")),
    ] = None,
    dp_clip: Annotated[
        float | None,
        typer.Option(
            help=_help("dp_clip", "Clipping norm (L2) of each update (client) or example gradient.")
        ),
    ] = None,
    dp_delta: Annotated[
        float | None, typer.Option(help=_help("dp_delta", "The delta of (epsilon, delta)-DP."))
    ] = None,
    dp_sample_rate: Annotated[
        float | None,
        typer.Option(
            help=_help(
                "dp_sample_rate",
                "Example level: the chance each example is drawn into a DP-SGD step "
                "(local-epochs / this steps a round)",
            )
        ),
    ] = None,
    dp_max_epsilon: Annotated[
        float | None,
        typer.Option(
            help=_help(
                "dp_max_epsilon",
                "Each client's privacy budget: the ledger refuses a client's update once one "
                "more participation would spend more epsilon than this",
            )
        ),
    ] = None,
    out: Annotated[
        str | None, typer.Option(help=_help("out", "Folder for run directories."))
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            help="Name of the run directory inside --out: letters, digits, '.', '_', '-' "
            "(default: the time and seed, e.g. 20261130-142501-s0)."
        ),
    ] = None,
) -> None:
    """Run a simulated federation (Flower's simulation engine) and write a run directory."""
    flags: dict[str, Any] = {
        "dataset": dataset,
        "data_root": data_root,
        "train_examples": train_examples,
        "test_examples": test_examples,
        "tokenizer": str(Path(tokenizer).resolve()) if tokenizer else tokenizer,
        "text_column": text_column,
        "label_column": label_column,
        "max_length": max_length,
        "clients": clients,
        "clients_per_round": clients_per_round,
        "partitioner": partitioner,
        "alpha": alpha,
        "shards_per_client": shards_per_client,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "model": model,
        "finetune": finetune,
        "lora_rank": lora_rank,
        "base_weights": str(Path(base_weights).resolve()) if base_weights else base_weights,
        "base_source": base_source,
        "base_licence": base_licence,
        "model_access": model_access,
        "aggregation": aggregation,
        "beta": beta,
        "weight_cap": weight_cap,
        "contribution": contribution,
        "contribution_budget": contribution_budget,
        "contribution_min_evaluations": contribution_min_evaluations,
        "payout_min_score": payout_min_score,
        "score_debt_decay": score_debt_decay,
        "harm_debt_decay": harm_debt_decay,
        "validation_fraction": validation_fraction,
        "seed": seed,
        "stake": stake,
        "min_stake": min_stake,
        "reward_per_round": reward_per_round,
        "slash_bad_commitment_bps": slash_bad_commitment_bps,
        "slash_double_sign_bps": slash_double_sign_bps,
        "reputation_penalty_bps": reputation_penalty_bps,
        "archive_updates": archive_updates,
        "round_timeout": round_timeout,
        "out": out,
        "run_id": run_id,
        "attack": attack,
        "attack_scale": attack_scale,
        "anchor": anchor,
        "anchor_every": anchor_every,
        "anchor_url": anchor_url,
        "anchor_contract": anchor_contract,
        "anchor_tsa_cert": anchor_tsa_cert,
        "anchor_key": anchor_key,
        "dp": dp,
        "dp_noise": dp_noise,
        "dp_clip": dp_clip,
        "dp_delta": dp_delta,
        "dp_max_epsilon": dp_max_epsilon,
        "dp_sample_rate": dp_sample_rate,
    }
    if ray_address is not None:
        check_ray_address(ray_address)  # before anything is written
    if resume is not None:
        others = {**flags, "config": config_file, "ledger": ledger, "attackers": attackers}
        given = [k for k, v in others.items() if v is not None]
        if given:
            names = ", ".join(f"--{k.replace('_', '-')}" for k in given)
            raise ConfigError(
                f"--resume continues a run with its own {CONFIG_FILENAME}; drop {names}"
            )
        config, run_dir = resumable_run(resume)
        launcher = find_launcher()
    else:
        config = _configure(config_file, flags, ledger, attackers)
        launcher = find_launcher()  # before the run directory is written
        with console.status("preparing the run directory (data splits, keys, genesis)…"):
            run_dir = prepare_run(config).run_dir
    announce_run(config)
    run_on_console(config, run_dir, launcher, ray_address)


def _configure(
    config_file: Path | None, flags: dict[str, Any], ledger: str | None, attackers: str | None
) -> RunConfig:
    """Defaults, then the TOML file, then the flags; refused here, before anything is written."""
    config = load_config_file(config_file) if config_file else RunConfig()
    if ledger is not None:
        if ledger not in ("on", "off"):
            raise typer.BadParameter("--ledger must be on or off")
        flags["ledger"] = ledger == "on"
        unset = flags["aggregation"] is None and config.aggregation not in LEDGER_OFF_RULES
        if ledger == "off" and unset:
            flags["aggregation"] = "fedavg"  # no stake without a ledger: Flower's FedAvg
    config = merge_config(config, {k: v for k, v in flags.items() if v is not None})
    if attackers is not None:
        config = merge_config(config, {"attackers": parse_attackers(attackers, config.clients)})
    check_attack_has_attackers(config)
    if not config.run_id:
        config = merge_config(config, {"run_id": new_run_id(config)})
    return config
