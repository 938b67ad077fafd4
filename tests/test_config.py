"""Run configuration: defaults, TOML files, flags, and clear errors."""

from __future__ import annotations

import dataclasses

import click
import pytest
import typer
from typer.testing import CliRunner

from fedchain.cli import app
from fedchain.cli.simulate import shown_default
from fedchain.config import (
    RunConfig,
    compute_evaluations_per_client,
    count_round_evaluations,
    load_config_file,
    merge_config,
    write_config,
)
from fedchain.errors import ConfigError
from fedchain.runs.prepare import prepare_run

runner = CliRunner()


def test_toml_file_then_overrides_and_round_trip(tmp_path):
    path = tmp_path / "fed.toml"
    path.write_text('[fedchain]\nclients = 5\nrounds = 3\naggregation = "median"\nlr = 1\n')
    config = load_config_file(path)
    assert (config.clients, config.rounds, config.aggregation, config.lr) == (5, 3, "median", 1.0)
    config = merge_config(config, {"local-epochs": 2})
    write_config(config, tmp_path / "resolved.toml")
    assert load_config_file(tmp_path / "resolved.toml") == config


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("clients = 0\n", "clients must be at least 1"),
        ("cliens = 3\n", "unknown setting 'cliens'"),
        ('rounds = "ten"\n', "rounds must be int"),
        ("ledger = 1\n", "ledger must be bool"),
        ("clients = 3\nclients-per-round = 4\n", "clients-per-round"),
        ("not toml [", "not a readable TOML file"),
    ],
)
def test_invalid_settings_are_explained(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as error:
        load_config_file(path)
    assert str(path) in str(error.value)


def test_invalid_retired_bad_commitment_setting_gets_one_clear_line(tmp_path):
    """slash-bad-commitment-bps is gone (a mismatching update is rejected, not slashed): a file
    or flag that still sets it is refused with the reason, in one line, before anything runs."""
    path = tmp_path / "old.toml"
    path.write_text("[fedchain]\nslash-bad-commitment-bps = 5000\n")
    with pytest.raises(ConfigError, match=r"no longer a setting.*rejected, not slashed") as error:
        load_config_file(path)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="slash-bad-commitment-bps is no longer a setting"):
        merge_config(RunConfig(), {"slash_bad_commitment_bps": 0})
    assert "slash-bad-commitment-bps" not in RunConfig().to_toml_dict()
    out = tmp_path / "runs"
    args = ["simulate", "--out", str(out), "--slash-bad-commitment-bps", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no longer a setting" in result.output and not out.exists()


def test_invalid_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "none.toml")


def test_defaults_are_the_documented_main_job():
    config = RunConfig()
    assert (config.dataset, config.clients, config.rounds, config.ledger) == (
        "digits",
        10,
        20,
        True,
    )


def test_invalid_names_are_refused_before_a_run_directory_exists(tmp_path):
    from fedchain.runs.prepare import prepare_run

    for bad in ({"aggregation": "foo"}, {"model": "resnet9000"}, {"dataset": "imagenet"}):
        with pytest.raises(ConfigError, match="unknown"):
            prepare_run(merge_config(RunConfig(run_id="r", out=str(tmp_path)), bad))
        assert not (tmp_path / "r").exists()


def test_a_setup_that_fails_part_way_leaves_nothing(tmp_path):
    from fedchain.errors import DataSourceError
    from fedchain.runs.prepare import prepare_run

    config = RunConfig(
        run_id="r", out=str(tmp_path), dataset="mnist", data_root=str(tmp_path / "x")
    )
    with pytest.raises(DataSourceError):
        prepare_run(config)
    assert not (tmp_path / "r").exists()


# -- refused before anything is written (issue 16) -----------------------------------------------

NON_FINITE_FLOATS = ["lr", "beta", "alpha", "attack-scale", "weight-cap", "round-timeout"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"seed": -1}, "seed must be an integer in 0 .. 2\\*\\*63 - 1"),
        ({"seed": 2**63}, "seed must be an integer"),
        *[({name: v}, "must be a finite number") for name in NON_FINITE_FLOATS for v in (
            float("inf"), float("-inf"), float("nan"))],
        *[({"validation-fraction": 0, "contribution": m}, "validation-fraction must be above 0")
          for m in ("gtg-shapley", "shapley", "leave-one-out")],
        ({"stake": 2**63 - 1}, "must fit the ledger's integers"),
        ({"clients": 1, "stake": 2**63 - 1, "rounds": 1}, "must fit the ledger's integers"),
        ({"reward-per-round": 2**62, "rounds": 2}, "must fit the ledger's integers"),
        ({"slash-double-sign-bps": 10_001}, "basis points"),
        ({"reputation-penalty-bps": 20_000}, "basis points"),
        ({"weight-cap": 0.00001}, "weight-cap"),
        ({"run-id": "../baseline"}, "must be a name, not a path"),
        ({"run-id": "x/../.."}, "must be a name, not a path"),
        ({"run-id": "/abs"}, "must be a name, not a path"),
        ({"run-id": ".."}, "must be a name, not a path"),
        *[({"archive-updates": v}, "archive-updates must be all, none, or a number of rounds")
          for v in ("0", "-1", "last", "2.5", " 3", "1" + "0" * 19)],
    ],
)  # fmt: skip
def test_invalid_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        merge_config(RunConfig(), settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"contribution": "shapley", "clients": 17}, "2\\*\\*17 = 131,072 .* limited to 16: use "
         "mc-shapley \\(about 85 coalition evaluations a round here\\)"),
        ({"contribution": "shapley", "clients": 300, "clients-per-round": 30}, "limited to 16"),
        ({"contribution-budget": 2000, "clients": 100}, "up to 200,198 coalition models a round "
         "for 100 clients .* limit of 100,000: lower contribution-budget \\(at most 998 here\\)"),
        ({"contribution": "gtg-shapley", "contribution-budget": 500, "clients": 300},
         "use leave-one-out \\(301 evaluations\\) or gradient-similarity"),
    ],
)  # fmt: skip
def test_invalid_scoring_too_expensive_for_the_federation_names_the_cheaper_option(
    settings, message
):
    with pytest.raises(ConfigError, match=message):
        merge_config(RunConfig(), settings)


def test_scoring_costs_within_the_limit_are_accepted() -> None:
    for settings in (
        {"contribution": "shapley", "clients": 16},
        {"contribution": "shapley", "clients": 300, "clients-per-round": 16},
        {"clients": 8_000},  # the default budget: 2 evaluations a client
        {"contribution-budget": 998, "clients": 100},
        {"contribution": "leave-one-out", "clients": 10_000, "contribution-budget": 10_000},
        {"contribution": "gradient-similarity", "clients": 10_000, "contribution-budget": 10_000},
    ):
        merge_config(RunConfig(), settings)
    assert count_round_evaluations("mc-shapley", 5, 10) == 32  # the budget covers all: exact
    assert count_round_evaluations("mc-shapley", 100, 10) == 1_198
    assert count_round_evaluations("none", 100, 10) == 0


@pytest.mark.parametrize(
    ("budget", "floor", "n", "per_client"),
    [(2, 100, 10, 10), (2, 100, 30, 4), (2, 100, 50, 2), (2, 100, 100, 2), (10, 100, 100, 10),
     (2, 0, 10, 2), (0, 0, 10, 0), (1, 100, 7, 15), (2, 100, 0, 100)],
)  # fmt: skip
def test_the_evaluation_floor_raises_the_budget_of_a_small_round(
    budget: int, floor: int, n: int, per_client: int
) -> None:
    """max(budget, ceil(floor / n)) per client: at least ``floor`` a round, linear in n."""
    assert compute_evaluations_per_client(budget, floor, n) == per_client
    assert n == 0 or per_client * n >= floor


def test_the_default_scoring_budget_is_a_floor_of_80_and_2_a_client() -> None:
    """The defaults make 8 evaluations a client at 10 clients (the budget reward_shares.md
    measured against exact Shapley: at most 10 % of exact's) and one antithetic pair from 40
    clients on."""
    assert compute_evaluations_per_client(2, 80, 10) == 8
    assert compute_evaluations_per_client(2, 80, 40) == 2
    config = RunConfig()
    assert (config.contribution_budget, config.contribution_min_evaluations) == (2, 80)
    assert (
        count_round_evaluations("mc-shapley", 100, compute_evaluations_per_client(2, 100, 100))
        == 398
    )  # at most: 200 and a pair's overshoot


def test_valid_edge_settings_are_accepted():
    merge_config(RunConfig(), {"validation-fraction": 0, "contribution": "gradient-similarity"})
    merge_config(
        RunConfig(), {"validation-fraction": 0, "contribution": "none", "aggregation": "fedavg"}
    )
    most = merge_config(RunConfig(), {"clients": 1, "reward-per-round": 0, "stake": 2**63 - 1})
    assert most.stake == 2**63 - 1  # the ledger's largest integer, and nothing can add to it
    assert merge_config(RunConfig(), {"run-id": "a..b_c-1.2"}).run_id == "a..b_c-1.2"


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", "-1"],
        ["--lr", "inf"],
        ["--lr", "nan"],
        ["--beta", "nan"],
        ["--alpha", "inf"],
        ["--attack-scale", "nan"],
        ["--weight-cap", "nan"],
        ["--round-timeout", "inf"],
        ["--validation-fraction", "0"],
        ["--stake", str(2**63 - 1)],
        ["--attack", "sign-flip"],
        ["--attack", "sign-flip", "--attackers", "10%", "--clients", "3"],
    ],
)
def test_invalid_simulate_flags_leave_nothing_and_the_run_id_stays_free(tmp_path, args):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["simulate", "--out", str(out), "--run-id", "r", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # refused before anything was written
    setup = prepare_run(RunConfig(run_id="r", out=str(out), clients=2, rounds=1, model="mlp"))
    assert setup.run_dir == out / "r" and (out / "r" / "config.toml").is_file()


# -- simulate --help is true -----------------------------------------------------------------------


def _simulate_options() -> dict[str, click.Option]:
    command = typer.main.get_command(app)
    assert isinstance(command, click.Group)
    simulate = command.commands["simulate"]
    return {
        name.removeprefix("--"): param
        for param in simulate.params
        if isinstance(param, click.Option)
        for name in param.opts
        if name.startswith("--")
    }


def test_every_setting_has_a_flag_whose_help_says_its_real_default():
    options = _simulate_options()
    for field in dataclasses.fields(RunConfig):
        flag = field.name.replace("_", "-")
        assert flag in options, f"simulate has no --{flag}"
        help_text = " ".join((options[flag].help or "").split())
        if field.name in ("run_id", "data_root"):  # empty: derived or the source's own place
            assert "(default: " in help_text, flag
        else:
            assert f"(default {shown_default(field.name)}" in help_text, (flag, help_text)
        assert options[flag].default is None  # unset, so a --config file can set it


def test_shown_defaults_are_the_config_defaults():
    assert shown_default("clients") == str(RunConfig().clients) == "10"
    assert shown_default("ledger") == "on" and shown_default("aggregation") == "screened"
    assert shown_default("weight_cap") == "1.0"


def test_each_choice_the_code_knows_is_in_its_flags_help():
    from fedchain.aggregation.rules import RULES
    from fedchain.config import FLOWER_RULES
    from fedchain.data.partition import PARTITIONERS
    from fedchain.data.sources import SOURCES
    from fedchain.learning.attacks import ATTACKS
    from fedchain.learning.catalog import MODELS
    from fedchain.rounds.contribution import METHODS

    options = _simulate_options()
    for flag, names in [
        ("dataset", SOURCES),
        ("partitioner", PARTITIONERS),
        ("model", MODELS),
        ("aggregation", RULES + FLOWER_RULES),
        ("contribution", METHODS),
        ("attack", ATTACKS),
    ]:
        help_text = " ".join((options[flag].help or "").split())
        assert all(name in help_text for name in names), (flag, names, help_text)


def test_archive_updates_is_the_genesis_retention_rule(tmp_path):
    assert RunConfig().archive_updates == "all" and RunConfig().archive_rounds == -1
    assert merge_config(RunConfig(), {"archive-updates": "none"}).archive_rounds == 0
    assert merge_config(RunConfig(), {"archive-updates": 5}).archive_rounds == 5  # TOML: 5
    config = RunConfig(run_id="r", out=str(tmp_path), clients=2, rounds=1, archive_updates="3")
    assert prepare_run(config).genesis.rules.update_archive_rounds == 3


@pytest.mark.parametrize(
    ("score", "harm", "expected"),
    [(0.3, 0.3, (3_000, 3_000)), (0.3, 0.0, (3_000, 0)), (0.1, 0.3, (1_000, 1_000))],
)
def test_harm_debt_decay_reaches_the_rules_at_most_the_score_debt_decay(score, harm, expected):
    """The genesis requires harm_debt_decay_bps <= score_debt_decay_bps; a larger setting is
    taken as the score-debt decay rather than refused (lowering one flag alone still works)."""
    from fedchain.runs.prepare import make_rules_for

    config = dataclasses.replace(RunConfig(), score_debt_decay=score, harm_debt_decay=harm)
    rules = make_rules_for(config)
    assert (rules.score_debt_decay_bps, rules.harm_debt_decay_bps) == expected


def test_harm_debt_decay_out_of_range_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("harm-debt-decay = 1.5\n")
    with pytest.raises(ConfigError, match=r"harm-debt-decay must be in 0 \.\. 1"):
        load_config_file(path)
