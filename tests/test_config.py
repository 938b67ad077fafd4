"""Run configuration: defaults, TOML files, flags, and clear errors."""

from __future__ import annotations

import pytest

from fedchain.config import RunConfig, load_config_file, merge_config, write_config
from fedchain.errors import ConfigError


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
    from fedchain.runs import prepare_run

    for bad in ({"aggregation": "foo"}, {"model": "resnet9000"}, {"dataset": "imagenet"}):
        with pytest.raises(ConfigError, match="unknown"):
            prepare_run(merge_config(RunConfig(run_id="r", out=str(tmp_path)), bad))
        assert not (tmp_path / "r").exists()


def test_a_setup_that_fails_part_way_leaves_nothing(tmp_path):
    from fedchain.errors import DataSourceError
    from fedchain.runs import prepare_run

    config = RunConfig(
        run_id="r", out=str(tmp_path), dataset="mnist", data_root=str(tmp_path / "x")
    )
    with pytest.raises(DataSourceError):
        prepare_run(config)
    assert not (tmp_path / "r").exists()
