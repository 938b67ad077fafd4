"""The configuration of a federated run: defaults, a TOML file, then command-line flags.

Keys are kebab-case in TOML and in Flower's ``run_config`` (``local-epochs = 2``) and snake_case
in Python. The resolved configuration is written to ``runs/<run-id>/config.toml``, so a run
directory always says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedchain.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


FLOWER_RULES = ("flwr-fedavg", "flwr-krum", "flwr-multikrum", "flwr-trimmed-mean", "flwr-median")
"""Flower's own strategies, unmodified (server.server_app.flower_strategy): baselines that know
nothing of stake, so they run only with the ledger off."""
_ATTACKERS_NEED_AN_ATTACK = (
    "attackers need an attack: name one with how many clients attack (--attack sign-flip "
    "--attackers 30%); an attack with 0 attackers is a clean run"
)
LEDGER_OFF_RULES = ("fedavg", *FLOWER_RULES)
"""The rules a run without a ledger can use: without stake, Flower's own strategies."""
_LEDGER_OFF_NEEDS_FLOWER_RULE = (
    "with the ledger off there is no stake: aggregation must be fedavg (Flower's FedAvg) or one "
    f"of Flower's own strategies {', '.join(FLOWER_RULES)}"
)
_FLOWER_RULES_NEED_OFF = (
    "the flwr-* aggregation rules are Flower's own strategies and have no stake: run them with "
    "the ledger off (--ledger off)"
)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a simulated federation. Stakes and rewards are base units."""

    run_id: str = ""  # empty: derived from the time and seed when the run starts
    out: str = "runs"
    dataset: str = "digits"
    data_root: str = ""
    partitioner: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    seed: int = 0
    clients: int = 10
    clients_per_round: int = 0  # 0: every client, every round
    rounds: int = 20
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 0.05
    model: str = "cnn"
    aggregation: str = "screened"  # chosen by experiments/robustness.py (README, Results)
    beta: float = 1.0
    weight_cap: float = 1.0  # largest share of one client's weight; 1.0 = no cap
    contribution: str = "gtg-shapley"  # or shapley, leave-one-out, gradient-similarity,
    #                                    none (scores = the aggregation weights)
    validation_fraction: float = 0.1  # of the training data, held out by the coordinator
    ledger: bool = True  # off: Flower's own strategies, nothing signed (aggregation flwr-* only)
    attack: str = "none"  # or one of fedchain.attacks.ATTACKS
    attackers: int = 0  # how many clients attack (fedchain.attacks.attacker_indices: which)
    attack_scale: float = 0.0  # 0: the attack's default (see fedchain.attacks)
    stake: int = 1_000_000
    min_stake: int = 100_000
    reward_per_round: int = 10_000
    slash_bad_commitment_bps: int = 5_000
    slash_double_sign_bps: int = 10_000
    reputation_penalty_bps: int = 2_000
    round_timeout: float = 300.0

    def __post_init__(self) -> None:
        checks = [
            (self.clients >= 1, "clients must be at least 1"),
            (0 <= self.clients_per_round <= self.clients, "clients-per-round must be 0..clients"),
            (self.rounds >= 1, "rounds must be at least 1"),
            (self.local_epochs >= 1, "local-epochs must be at least 1"),
            (self.batch_size >= 1, "batch-size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (0 < self.weight_cap <= 1, "weight-cap must be in (0, 1]"),
            (0 <= self.validation_fraction < 0.5, "validation-fraction must be in [0, 0.5)"),
            (self.stake >= self.min_stake >= 1, "stake must be >= min-stake >= 1"),
            (self.reward_per_round >= 0, "reward-per-round must be >= 0"),
            (self.round_timeout > 0, "round-timeout must be positive"),
            (0 <= self.attackers <= self.clients, "attackers must be 0..clients"),
            (self.attack != "none" or self.attackers == 0, _ATTACKERS_NEED_AN_ATTACK),
            (self.attack_scale >= 0, "attack-scale must be >= 0 (0: the attack's default)"),
            (
                self.ledger or self.aggregation in LEDGER_OFF_RULES,
                _LEDGER_OFF_NEEDS_FLOWER_RULE,
            ),
            (not self.ledger or self.aggregation not in FLOWER_RULES, _FLOWER_RULES_NEED_OFF),
            (
                self.aggregation != "screened" or self.contribution != "none",
                "aggregation screened averages the updates that score above zero: it needs a "
                "contribution method (gtg-shapley, shapley, leave-one-out, gradient-similarity)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def sampled_per_round(self) -> int:
        return self.clients_per_round or self.clients

    def to_toml_dict(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Type-check one value against the field's default type (ints accepted for floats)."""
    expected = type(_FIELDS[name].default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{name.replace('_', '-')} must be {expected.__name__}, got {value!r}")
    return value


def merge_config(base: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """``base`` with ``overrides`` (kebab- or snake-case keys) applied; unknown keys refused."""
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            known = ", ".join(sorted(k.replace("_", "-") for k in _FIELDS))
            raise ConfigError(f"unknown setting {key!r}; known settings: {known}")
        values[name] = _coerce(name, value)
    return dataclasses.replace(base, **values)


def load_config_file(path: Path, base: RunConfig | None = None) -> RunConfig:
    """Read a TOML file of settings (top level, or under a ``[fedchain]`` table)."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not a readable TOML file ({e})") from None
    table = doc.get("fedchain", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [fedchain] must be a table")
    try:
        return merge_config(base or RunConfig(), table)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def write_config(config: RunConfig, path: Path) -> None:
    import tomli_w

    header = "# The resolved configuration of this run (fedchain simulate --config can reuse it).\n"
    Path(path).write_text(header + tomli_w.dumps({"fedchain": config.to_toml_dict()}))
