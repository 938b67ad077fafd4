"""The configuration of a federated run: defaults, a TOML file, then command-line flags.

Keys are kebab-case in TOML and in Flower's ``run_config`` (``local-epochs = 2``) and snake_case
in Python. The resolved configuration is written to ``runs/<run-id>/config.toml``, so a run
directory always says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedchain.errors import ConfigError
from fedchain.ledger.codec import MAX_INT
from fedchain.ledger.objects import FINETUNE_MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


FLOWER_RULES = ("flwr-fedavg", "flwr-krum", "flwr-multikrum", "flwr-trimmed-mean", "flwr-median")
"""Flower's own strategies, unmodified (server.server_app.flower_strategy): baselines that know
nothing of stake, so they run only with the ledger off."""
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A run id is a directory *name* inside ``out``, never a path: no ``/``, no ``.`` or ``..``,
nothing absolute, so set-up and clean-up can only ever touch ``out/<run-id>``
(fedchain.runs.prepare)."""
ANCHOR_CHOICES = ("off", "evm", "rfc3161")
DP_CHOICES = ("off", "client", "example")
"""Differential privacy a run can apply (fedchain.privacy): none, client level (each update
clipped and noised before it is committed) or example level (DP-SGD through Opacus)."""
CONTRIBUTION_NEEDS_VALIDATION = frozenset({"shapley", "mc-shapley", "gtg-shapley", "leave-one-out"})
"""Contribution methods that evaluate coalition models on the coordinator's validation split
(the others need none): with ``validation-fraction = 0`` that split is empty and the first
round's scoring would fail, after the run directory was made."""
EXACT_SHAPLEY_MAX_CLIENTS = 16
"""Exact Shapley evaluates ``2**n`` coalitions; beyond 16 clients (65,536) use mc-shapley."""
MAX_ROUND_EVALUATIONS = 100_000
"""Most coalition models a round's scoring may evaluate (one validation pass each): about 5
minutes a round at the 3 ms a pass measured for the default ``cnn`` on digits (hours on a
larger model or validation split); the defaults (``10 n``) stay under it up to 8,000 clients a
round. A configuration above it is refused with the cheaper options named."""
BPS_DENOMINATOR = 10_000  # basis points: 10_000 = 100 % (fedchain.ledger.state checks the same)
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
RETIRED_SETTINGS = {
    "slash_bad_commitment_bps": (
        "slash-bad-commitment-bps is no longer a setting: an update that does not match its "
        "signed commitment is rejected, not slashed (only the coordinator saw it, so it cannot "
        "be proven to anyone else); remove it"
    ),
}
"""Settings that once existed, each with the one line that says why it is refused now."""
_FLOWER_RULES_NEED_OFF = (
    "the flwr-* aggregation rules are Flower's own strategies and have no stake: run them with "
    "the ledger off (--ledger off)"
)


_ARCHIVE_CHOICES = (
    "archive-updates must be all, none, or a number of rounds K >= 1 (keep the last K rounds' "
    "updates)"
)


def _is_archive_choice(text: str) -> bool:
    return text in {"all", "none"} or (
        text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_INT
    )


def compute_evaluations_per_client(budget: int, min_evaluations: int, n: int) -> int:
    """The sampling methods' coalition evaluations per client in a round of ``n`` scored
    clients: the genesis rule ``contribution_budget`` (``budget``), raised so that the round
    evaluates at least ``contribution_min_evaluations`` coalitions: ``max(budget,
    ceil(min_evaluations / n))``. The round's total, about ``n`` times this, grows linearly in
    ``n``, and a round of few clients still evaluates enough coalitions for its scores to pay
    close to exact Shapley's shares. 0: the method's default (both rules 0)."""
    return max(budget, -(-min_evaluations // max(n, 1)))


def count_round_evaluations(method: str, n: int, budget: int) -> int:
    """The most coalition models ``method`` evaluates scoring ``n`` clients with a budget of
    ``budget`` evaluations per client (:mod:`fedchain.rounds.contribution`): ``2**n`` for exact
    Shapley, the budget's ``budget * n`` plus a started walk's overshoot for the sampling
    methods, ``n + 1`` for leave-one-out, none for the others."""
    if method == "shapley":
        return 1 << n
    if method == "mc-shapley":
        return min(1 << n, max(2, budget * n) + 2 * max(0, n - 1))
    if method == "gtg-shapley":
        return min(1 << n, max(2, budget * n) + max(0, n - 2))
    if method == "leave-one-out":
        return n + 1
    return 0


def _check_scoring_cost(
    method: str, n: int, budget: int, min_evaluations: int = 0
) -> tuple[bool, str]:
    """(ok, why not): a scoring method too expensive for ``n`` clients a round, and what to use."""
    budget = compute_evaluations_per_client(budget, min_evaluations, n)
    cost = count_round_evaluations(method, n, budget)
    cheaper = f"leave-one-out ({n + 1:,} evaluations) or gradient-similarity (no validation passes)"
    if method == "shapley" and n > EXACT_SHAPLEY_MAX_CLIENTS:
        return False, (
            f"contribution shapley evaluates 2**{n}{f' = {cost:,}' if n <= 30 else ''} coalition "
            f"models a round for {n} "
            f"clients a round; it is limited to {EXACT_SHAPLEY_MAX_CLIENTS}: use mc-shapley "
            f"(about {budget * n:,} coalition evaluations a round here), set "
            f"clients-per-round to at most {EXACT_SHAPLEY_MAX_CLIENTS}, or use {cheaper}"
        )
    if cost > MAX_ROUND_EVALUATIONS:
        return False, (
            f"contribution {method} with contribution-budget {budget} evaluates up to {cost:,} "
            f"coalition models a round for {n} clients a round (one validation pass each), above "
            f"the limit of {MAX_ROUND_EVALUATIONS:,}: lower contribution-budget (at most "
            f"{max(1, (MAX_ROUND_EVALUATIONS - 2 * n) // max(n, 1))} here), set clients-per-round, "
            f"or use {cheaper}"
        )
    return True, ""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a simulated federation. Stakes and rewards are base units."""

    run_id: str = ""  # empty: derived from the time and seed when the run starts
    out: str = "runs"
    dataset: str = "digits"
    data_root: str = ""
    # a seeded, class-stratified subsample of the source's train split (before the coordinator's
    # validation holdout) and of its test split; 0: all of it (fedchain.runs.prepare)
    train_examples: int = 0
    test_examples: int = 0
    # the text source (fedchain.data.labelled_text): a local tokenizer directory, the columns,
    # the token length (ids and mask per example)
    tokenizer: str = ""
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
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
    model: str = "cnn"  # a built-in, a torchvision architecture, or a task module's import path
    # Fine-tuning (fedchain.learning.architectures): full, head or lora; lora-rank: the adapters'
    # rank; base-weights: a local .safetensors/.pth file the model starts from (nothing is
    # downloaded); base-source and base-licence: what the genesis says about where it came from.
    finetune: str = "full"
    lora_rank: int = 8
    base_weights: str = ""
    base_source: str = ""
    base_licence: str = ""
    # Who may be given the resulting models besides the participants (the genesis's rule of
    # model access): comma-separated hex Ed25519 public keys; empty: the participants alone.
    model_access: str = ""
    aggregation: str = "screened"  # chosen by experiments/robustness.py (README, Results)
    beta: float = 1.0
    weight_cap: float = 1.0  # largest share of one client's weight; 1.0 = no cap
    contribution: str = "mc-shapley"  # or shapley, gtg-shapley, leave-one-out,
    #                        gradient-similarity, none (scores = the aggregation weights);
    #                        chosen by experiments/reward_shares.py
    contribution_budget: int = 2  # coalition evaluations per scored client (mc-, gtg-shapley),
    #   at least contribution_min_evaluations a round: 80 (8 a client: 80-84 distinct
    #   coalitions, at most 10 % of exact's 1,024) at 10 clients, 200 (one antithetic pair) at
    #   100 (experiments/results/scaling.md, reward_shares.md)
    contribution_min_evaluations: int = 80
    payout_min_score: float = 0.01  # the payout rule: a round whose positive scores sum to
    #   less pays that fraction of its pool (validation-loss gain; experiments/reward_shares.py)
    score_debt_decay: float = 0.3  # the share of a client's score debt (negative scores its
    #   positive ones must repay before they are paid) forgiven each round, harm (the part of a
    #   score below -0.01) excepted: harm_debt_decay of that is
    #   (experiments/attacker_share_ablation.py: 0, 0.1 and 0.3 pay attackers 0 %, 0.5 0.03 %
    #   at budgets 2-3; experiments/results/reward_shares.md, budget 10: a client's run share
    #   differs from exact Shapley's by at most 0.86 / 2.24 points, iid / dirichlet-0.5, at 0;
    #   2.51 / 1.62 at 0.1; 1.09 / 0.84 at 0.3; 0.32 / 0.58 at 0.5). 0.3: the least forgiveness
    #   within 2 points of exact Shapley on both; screened's robustness grid at 30 / 40 %
    #   (seeds 0-5) and clean learning vs FedAvg are within noise of 0, attackers paid <= 0.18 %
    harm_debt_decay: float = 0.0  # the share of a client's harm (the part of its scores below
    #   -0.01) forgiven each round (never, by default); a value above score_debt_decay counts as
    #   score_debt_decay. On the Fashion-MNIST subsample (100 validation examples, 30 % sign
    #   flippers, seeds 0-8; experiments/results/harm_decay.md) runs at 0 paid the attackers
    #   nothing in every seed, at 0.2 7.5 % on average (45 % in one seed), at 0.3 3.8 % (21.7 %):
    #   their early harm was forgotten before their late lucky rounds. On the default federation
    #   (reward_shares.md, guided walks) 0 keeps every client's run share within 1.09 / 0.74
    #   points of exact Shapley's (iid / dirichlet-0.5); unguided walks reached 3.09 / 0.89
    validation_fraction: float = 0.1  # of the training data, held out by the coordinator
    ledger: bool = True  # off: Flower's own strategies, nothing signed (aggregation flwr-* only)
    attack: str = "none"  # or one of fedchain.learning.attacks.ATTACKS
    # how many clients attack (fedchain.learning.attacks.attacker_indices: which)
    attackers: int = 0
    attack_scale: float = 0.0  # 0: the attack's default (see fedchain.learning.attacks)
    stake: int = 1_000_000
    min_stake: int = 100_000
    reward_per_round: int = 10_000
    slash_double_sign_bps: int = 10_000
    reputation_penalty_bps: int = 2_000
    # which rounds' accepted client updates the run keeps in updates/ (a rule of the federation,
    # on the genesis): all, none, or K (the last K rounds); fedchain.runs.archive
    archive_updates: str = "all"
    round_timeout: float = 300.0
    # Anchoring the ledger to an outside witness (fedchain.anchor): off, evm or rfc3161; every
    # anchor-every final blocks; anchor-url: the EVM node's JSON-RPC URL ("memory": an in-process
    # test chain) or the TSA's URL; anchor-contract: the EVM anchor contract (empty: deploy one);
    # anchor-tsa-cert: the PEM certificate the TSA's tokens must verify against; anchor-key: a
    # file (mode 0600) with the EVM private key to sign anchors with, for a node that holds no
    # unlocked account (empty: the node's first account sends them).
    anchor: str = "off"
    anchor_every: int = 10  # experiments/bench_anchor.py: keeps anchoring near 1 % of a run
    anchor_url: str = ""
    anchor_contract: str = ""
    anchor_tsa_cert: str = ""
    anchor_key: str = ""
    # Differential privacy (fedchain.privacy): off; client (clip each update to dp-clip, add
    # Gaussian noise of std dp-noise x dp-clip, before it is hashed and signed); or example
    # (DP-SGD: each step samples examples at dp-sample-rate, clips each one's gradient to dp-clip
    # and adds noise; local-epochs / dp-sample-rate steps a round). Each client may take part
    # until its RDP epsilon at dp-delta would pass dp-max-epsilon (the ledger's cap).
    dp: str = "off"
    dp_noise: float = 1.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    dp_max_epsilon: float = 8.0
    dp_sample_rate: float = 0.1

    def __post_init__(self) -> None:
        """Refuse a configuration that cannot run, before anything is written for it.

        Floats must be finite (``inf``/``nan`` reach training, the scorer or the ledger's rules
        otherwise, and fail mid-run); integers must fit the ledger's i64 encoding
        (fedchain.ledger.codec), and so must the most stake there can ever be: every client's
        deposit plus every round's reward pool.
        """
        fields = {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in fields.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
        checks = [
            (
                not self.run_id or RUN_ID_PATTERN.fullmatch(self.run_id) is not None,
                f"run-id {self.run_id!r} must be a name, not a path: 1-128 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit",
            ),
            (self.clients >= 1, "clients must be at least 1"),
            (0 <= self.clients_per_round <= self.clients, "clients-per-round must be 0..clients"),
            (self.rounds >= 1, "rounds must be at least 1"),
            (self.local_epochs >= 1, "local-epochs must be at least 1"),
            (self.batch_size >= 1, "batch-size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.alpha > 0, "alpha (the Dirichlet concentration) must be positive"),
            (self.beta >= 0, "beta (the stake exponent) must be >= 0"),
            (
                0 < self.weight_cap <= 1 and round(self.weight_cap * BPS_DENOMINATOR) >= 1,
                "weight-cap must be in [0.0001, 1] (it is recorded in basis points)",
            ),
            (0 <= self.validation_fraction < 0.5, "validation-fraction must be in [0, 0.5)"),
            (
                self.validation_fraction > 0
                or self.contribution not in CONTRIBUTION_NEEDS_VALIDATION,
                f"contribution {self.contribution} scores on the coordinator's validation split: "
                "validation-fraction must be above 0 (or use gradient-similarity or none)",
            ),
            (self.stake >= self.min_stake >= 1, "stake must be >= min-stake >= 1"),
            (
                self.clients * self.stake + self.rounds * self.reward_per_round <= MAX_INT,
                "stake x clients + reward-per-round x rounds (the most stake there can be) "
                "must fit the ledger's integers (at most 2**63 - 1)",
            ),
            (
                max(self.slash_double_sign_bps, self.reputation_penalty_bps) <= BPS_DENOMINATOR,
                "slash-double-sign-bps and reputation-penalty-bps are basis points: 0 .. 10000",
            ),
            (self.round_timeout > 0, "round-timeout must be positive"),
            (self.finetune in FINETUNE_MODES, f"finetune must be one of {FINETUNE_MODES}"),
            (self.lora_rank >= 1, "lora-rank must be at least 1"),
            (
                self.finetune == "full" or bool(self.base_weights),
                f"finetune {self.finetune} trains part of a pretrained base: give base-weights",
            ),
            (_is_archive_choice(self.archive_updates), _ARCHIVE_CHOICES),
            (self.anchor in ANCHOR_CHOICES, f"anchor must be one of {', '.join(ANCHOR_CHOICES)}"),
            (self.anchor_every >= 1, "anchor-every must be at least 1 (blocks)"),
            (
                self.anchor == "off" or self.ledger,
                "anchoring anchors the ledger: it needs the ledger on",
            ),
            (
                self.anchor == "off" or bool(self.anchor_url),
                "anchor needs anchor-url: the EVM node (or memory) or the TSA to publish to",
            ),
            (
                self.anchor != "rfc3161" or bool(self.anchor_tsa_cert),
                "anchor rfc3161 needs anchor-tsa-cert: the TSA certificate its tokens must "
                "verify against",
            ),
            (
                self.anchor == "evm" or not self.anchor_key,
                "anchor-key signs EVM anchors: it needs anchor evm",
            ),
            (self.contribution_budget >= 1, "contribution-budget must be at least 1"),
            (
                0 <= self.contribution_min_evaluations <= MAX_ROUND_EVALUATIONS,
                "contribution-min-evaluations must be in 0 .. "
                f"{MAX_ROUND_EVALUATIONS:,} (coalition evaluations a round)",
            ),
            (
                0 <= self.payout_min_score <= 1e6,
                "payout-min-score must be in 0 .. 1e6 (score units: validation loss)",
            ),
            (
                0 <= self.score_debt_decay <= 1,
                "score-debt-decay must be in 0 .. 1 (the share of a score debt forgiven a round)",
            ),
            (
                0 <= self.harm_debt_decay <= 1,
                "harm-debt-decay must be in 0 .. 1 (the share of a harm debt forgiven a round)",
            ),
            (self.dp in DP_CHOICES, f"dp must be one of {', '.join(DP_CHOICES)}"),
            (
                self.dp == "off" or self.ledger,
                "dp's budget is kept on the ledger: it needs the ledger on",
            ),
            (
                min(self.dp_noise, self.dp_clip, self.dp_max_epsilon) > 0,
                "dp-noise, dp-clip and dp-max-epsilon must be positive",
            ),
            (0 < self.dp_delta < 1, "dp-delta must lie in (0, 1)"),
            (0 < self.dp_sample_rate <= 1, "dp-sample-rate must lie in (0, 1]"),
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
        checks.append(_check_scoring_cost(self.contribution, self.sampled_per_round,
                                          self.contribution_budget,
                                          self.contribution_min_evaluations))  # fmt: skip
        checks += [  # after the specific checks above, whose messages say more
            (0 <= value <= MAX_INT, f"{name} must be an integer in 0 .. 2**63 - 1, got {value}")
            for name, value in fields.items()
            if type(value) is int
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def dp_steps_per_round(self) -> int:
        """DP-SGD steps in a round (example level): ``local-epochs / dp-sample-rate``, so that
        each example is drawn ``local-epochs`` times in expectation."""
        return max(1, round(self.local_epochs / self.dp_sample_rate))

    @property
    def sampled_per_round(self) -> int:
        return self.clients_per_round or self.clients

    @property
    def archive_rounds(self) -> int:
        """``archive_updates`` as the genesis rule ``update_archive_rounds`` (-1: every round)."""
        named = {"all": -1, "none": 0}
        text = self.archive_updates
        return named[text] if text in named else int(text)

    def to_toml_dict(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
DEFAULTS = RunConfig()
"""The defaults, for help texts: command-line flags default to None (unset, so a TOML file can
set them) and say the real default from here."""


def check_attack_has_attackers(config: RunConfig) -> None:
    """Refuse a run that names an attack but has no attacker (``--attack`` without
    ``--attackers``, or ``--attackers 10%`` of 3 clients): the user asked for an attacked run
    and would get a clean one. Not a :class:`RunConfig` invariant: programs (the robustness
    grid, tests) build an attack with 0 attackers on purpose as its clean reference."""
    if config.attack != "none" and config.attackers == 0:
        raise ConfigError(
            f"attack {config.attack} needs attackers: say how many clients attack "
            "(--attackers 3, 30% or 0.3); with 0 attackers it would be a clean run"
        )


def _coerce(name: str, value: Any) -> Any:
    """Type-check one value against the field's default type (ints accepted for floats)."""
    expected = type(_FIELDS[name].default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if name == "archive_updates" and type(value) is int:  # archive-updates = 5 in a TOML file
        return str(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{name.replace('_', '-')} must be {expected.__name__}, got {value!r}")
    return value


def merge_config(base: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """``base`` with ``overrides`` (kebab- or snake-case keys) applied; unknown keys refused,
    retired ones (:data:`RETIRED_SETTINGS`) with the reason."""
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name in RETIRED_SETTINGS:
            raise ConfigError(RETIRED_SETTINGS[name])
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
