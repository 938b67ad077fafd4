"""Attacks (fedchain.learning.attacks): each transformation's maths, who attacks, and short
federations through the real ServerApp logic and ClientApp in process, with the ledger on and off,
and Flower's own strategies as baselines."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common.logger import FLOWER_LOGGER
from typer.testing import CliRunner

from clients.client_app import configured_attack
from fedchain.config import FLOWER_RULES, RunConfig, merge_config
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError
from fedchain.learning.attacks import (
    ATTACKS,
    DEFAULT_SCALES,
    Attack,
    attacker_indices,
    compute_attacked_update,
    compute_claimed_examples,
    compute_flipped_labels,
    flip_labels,
    parse_attackers,
    select_attackers,
)
from fedchain.ledger.objects import Rejection, SlashingEvidence, UpdateCommitment
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.admission import MISMATCH_REASON
from fedchain.runs.prepare import prepare_run
from server.federate import flower_strategy, train_settings
from tests.test_rounds import ledger_transactions

if TYPE_CHECKING:
    from tests.conftest import MakeFederation

FLOWER_LOGGER.setLevel(logging.ERROR)

DELTA = {
    "w": np.array([[1.0, -2.0], [0.5, 0.0]], dtype=np.float32),
    "b": np.array([3.0, -1.0], dtype=np.float32),
    "steps": np.array([7], dtype=np.int64),  # not floating point: passed through
}


def attacked(name: str, scale: float = 0.0, **kw: int) -> dict[str, np.ndarray]:
    where = {"seed": 1, "round": 2, "client": 3, **kw}
    return compute_attacked_update(Attack(name, scale), DELTA, **where)


# -- the transformations -----------------------------------------------------------------------


def test_every_attack_has_a_documented_default_and_keeps_names_shapes_dtypes():
    assert set(ATTACKS) == set(DEFAULT_SCALES) and len(ATTACKS) == 8
    for name in ATTACKS:
        out = attacked(name)
        assert list(out) == list(DELTA)
        for key, array in out.items():
            assert array.shape == DELTA[key].shape and array.dtype == DELTA[key].dtype
        assert np.array_equal(out["steps"], DELTA["steps"])


def test_sign_flip_scaled_and_commit_mismatch_multiply_the_update():
    np.testing.assert_array_equal(attacked("sign-flip")["w"], -DELTA["w"])
    np.testing.assert_array_equal(attacked("sign-flip", 3)["w"], -3 * DELTA["w"])
    np.testing.assert_array_equal(attacked("scaled")["b"], 10 * DELTA["b"])
    np.testing.assert_array_equal(attacked("scaled", 2.5)["b"], 2.5 * DELTA["b"])
    np.testing.assert_array_equal(attacked("commit-mismatch")["w"], -4 * DELTA["w"])


def test_label_flip_and_inflated_send_the_honest_update():
    for name in ("label-flip", "inflated"):
        np.testing.assert_array_equal(attacked(name)["w"], DELTA["w"])


def test_free_rider_sends_zeros_and_its_noisy_twin_small_noise():
    assert not attacked("free-rider")["w"].any()
    noisy = compute_attacked_update(
        Attack("free-rider-noise"), {"x": np.zeros(20_000, np.float32)}, seed=0, round=1, client=0
    )["x"]
    assert 0.9e-3 < noisy.std() < 1.1e-3 and abs(noisy.mean()) < 1e-4


def test_gaussian_noise_is_seeded_by_run_round_and_client_and_ignores_the_update():
    big = {"x": np.zeros(20_000, np.float32)}
    noise = compute_attacked_update(Attack("gaussian"), big, seed=5, round=1, client=2)["x"]
    assert 0.97 < noise.std() < 1.03
    again = compute_attacked_update(Attack("gaussian"), big, seed=5, round=1, client=2)["x"]
    np.testing.assert_array_equal(noise, again)
    for other in ({"seed": 6}, {"round": 2}, {"client": 3}):
        where = {"seed": 5, "round": 1, "client": 2, **other}
        assert not np.array_equal(
            noise, compute_attacked_update(Attack("gaussian"), big, **where)["x"]
        )
    wide = compute_attacked_update(Attack("gaussian", 3.0), big, seed=5, round=1, client=2)["x"]
    assert 2.9 < wide.std() < 3.1


def test_claimed_examples_are_inflated_only_by_the_inflated_attack():
    assert compute_claimed_examples(Attack("inflated"), 144) == 1440
    assert compute_claimed_examples(Attack("inflated", 2), 144) == 288
    for name in ATTACKS:
        if name != "inflated":
            assert compute_claimed_examples(Attack(name), 144) == 144


def test_labels_are_mirrored():
    np.testing.assert_array_equal(compute_flipped_labels(np.arange(10), 10), np.arange(9, -1, -1))
    data = ArrayDataset("d", np.zeros((3, 2)), np.array([0, 1, 2]), ("a", "b", "c"), None)
    assert flip_labels(data).y.tolist() == [2, 1, 0] and flip_labels(data).x is data.x


def test_which_attacks_train():
    assert {n for n in ATTACKS if not Attack(n).trains} == {
        "gaussian",
        "free-rider",
        "free-rider-noise",
    }


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_invalid_attack_scale(scale):
    with pytest.raises(ConfigError, match="attack-scale"):
        Attack("scaled", scale)


def test_invalid_attack_name():
    with pytest.raises(ConfigError, match="unknown attack 'teleport'"):
        Attack("teleport")


# -- who attacks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "clients", "count"),
    [
        ("3", 10, 3),
        ("0", 10, 0),
        ("10", 10, 10),
        ("30%", 10, 3),
        (" 40 % ", 10, 4),
        ("0.3", 10, 3),
        ("0.25", 10, 3),  # halves round up
        ("25%", 10, 3),
        ("0.24", 10, 2),
        ("1.0", 7, 7),
        ("100%", 7, 7),
        ("0.5", 5, 3),
        (4, 10, 4),
    ],
)
def test_attackers_by_count_percentage_or_fraction(text, clients, count):
    assert parse_attackers(text, clients) == count


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("11", "need 0..10"),
        ("-1", "need 0..10"),
        ("abc", "not a number"),
        ("150%", "0..1"),
        ("1.5", "0..1"),
        ("-10%", "0..1"),
        ("", "not a number"),
        ("nan", "not a number"),
        ("3 clients", "not a number"),
    ],
)
def test_invalid_attackers(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_attackers(text, 10)


def test_attacker_selection_is_deterministic_nested_and_seeded():
    first = select_attackers(10, 3, seed=0)
    assert first == select_attackers(10, 3, seed=0) == sorted(first) and len(set(first)) == 3
    assert all(0 <= i < 10 for i in first)
    assert set(first) <= set(select_attackers(10, 4, seed=0))  # 30 % within 40 %
    assert select_attackers(10, 0, seed=0) == [] and select_attackers(10, 10, 0) == list(range(10))
    assert len({tuple(select_attackers(10, 3, seed=s)) for s in range(10)}) > 1
    with pytest.raises(ConfigError):
        select_attackers(10, 11, seed=0)


def test_attacker_indices_follow_the_config():
    config = RunConfig(clients=10, attack="sign-flip", attackers=3, seed=4)
    assert attacker_indices(config) == select_attackers(10, 3, seed=4)
    assert attacker_indices(RunConfig()) == []
    assert attacker_indices(RunConfig(attack="sign-flip", attackers=0)) == []  # a clean run


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"attackers": 11}, "attackers must be 0..clients"),
        ({"attackers": -1}, "attackers must be 0..clients"),
        ({"attackers": 2}, "attackers need an attack"),
        ({"attack": "scaled", "attackers": 1, "attack-scale": -2.0}, "attack-scale"),
        ({"aggregation": "flwr-krum"}, "ledger off"),
        ({"ledger": False, "aggregation": "median"}, "no stake"),
    ],
)
def test_invalid_attack_and_baseline_settings(settings, match):
    with pytest.raises(ConfigError, match=match):
        merge_config(RunConfig(clients=10), settings)


def test_invalid_attack_name_is_refused_before_a_run_directory_exists(tmp_path):
    config = RunConfig(run_id="r", out=str(tmp_path), attack="teleport", attackers=1)
    with pytest.raises(ConfigError, match="unknown attack 'teleport'"):
        prepare_run(config)
    assert not (tmp_path / "r").exists()


def test_invalid_attackers_on_the_command_line_is_explained():
    from fedchain.cli import app

    result = CliRunner().invoke(app, ["simulate", "-n", "10", "--attack", "sign-flip",
                                      "--attackers", "11"])  # fmt: skip
    assert result.exit_code != 0 and "need 0..10" in result.output


# -- how a client learns it attacks ----------------------------------------------------------


def context(node_config: dict[str, object]) -> Context:
    return Context(1, 1, node_config, RecordDict(), {})  # type: ignore[arg-type]


def test_simulated_clients_attack_when_the_train_settings_name_their_partition(tmp_path):
    config = RunConfig(clients=5, attack="scaled", attackers=2, seed=3)
    settings = train_settings(config, tmp_path)
    chosen = attacker_indices(config)
    assert list(settings["attackers"]) == chosen and settings["attack-scale"] == 10.0
    for i in range(5):
        attack = configured_attack(context({"partition-id": i}), settings, i)
        assert (attack == Attack("scaled", 10.0)) == (i in chosen)
    clean = train_settings(RunConfig(clients=5), tmp_path)
    assert "attack" not in clean and "attackers" not in clean
    assert configured_attack(context({"partition-id": 0}), clean, 0) is None


def test_a_deployed_supernode_attacks_when_its_node_config_says_so():
    settings = ConfigRecord({"seed": 0})
    assert configured_attack(context({"data-path": "/x"}), settings, 0) is None
    assert configured_attack(context({"attack": "commit-mismatch"}), settings, 0) == Attack(
        "commit-mismatch", 4.0
    )
    node = context({"attack": "gaussian", "attack-scale": 0.5})
    assert configured_attack(node, settings, 0) == Attack("gaussian", 0.5)
    assert configured_attack(context({"attack": "none"}), settings, 0) is None
    with pytest.raises(ConfigError, match="unknown attack"):
        configured_attack(context({"attack": "teleport"}), settings, 0)


# -- short federations, in process ------------------------------------------------------------


@pytest.fixture(scope="module")
def federate(inprocess_federation: MakeFederation):  # type: ignore[no-untyped-def]
    """``federate(out, **settings)``: an in-process run of the real ClientApp with the small
    model; returns (setup, outcomes, accuracy)."""

    def run(out: Path, **settings: object):  # type: ignore[no-untyped-def]
        fed = inprocess_federation(out, model="mlp", **settings).run()
        return fed.setup, fed.outcomes, fed.accuracy

    return run


def reward_share(report, keys: list[bytes], start: int) -> float:  # type: ignore[no-untyped-def]
    stakes = {p.public_key: p.stake for p in report.state.participants.values()}
    gained = {k: max(0, s - start) for k, s in stakes.items()}
    return sum(gained[k] for k in keys) / max(1, sum(gained.values()))


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_runs_with_the_ledger_and_the_ledger_verifies(federate, tmp_path, attack):
    """5 clients, 2 of them attackers, 2 rounds: what the ledger makes of each attack."""
    setup, outcomes, accuracy = federate(
        tmp_path, clients=5, rounds=2, attack=attack, attackers=2, seed=1
    )
    report = verify_ledger(setup.run_dir)
    assert report.ok, report.failure
    assert accuracy is not None and len(outcomes) == 2
    bad = attacker_indices(setup.config)
    keys = [setup.public_keys[i] for i in bad]
    doc = json.loads((setup.run_dir / "attackers.json").read_text())
    assert doc["clients"] == bad and doc["public_keys"] == [k.hex() for k in keys]
    metrics = json.loads((setup.run_dir / "metrics.json").read_text())
    assert metrics["attack"]["attack"] == attack and metrics["attack"]["attackers"] == bad
    txs = ledger_transactions(setup.run_dir)
    committed = {tx.public_key for tx in txs if isinstance(tx, UpdateCommitment)}
    stakes = {p.public_key: p.stake for p in report.state.participants.values()}
    if attack == "commit-mismatch":
        # Rejected, not slashed: only the coordinator saw the mismatching bytes, so the ledger
        # holds a rejection per round and the attackers keep their stake (they earn nothing).
        assert not any(isinstance(tx, SlashingEvidence) for tx in txs)
        rejected = {
            (tx.public_key, tx.round)
            for tx in txs
            if isinstance(tx, Rejection) and tx.reason == MISMATCH_REASON
        }
        assert rejected == {(k, r) for k in keys for r in (1, 2)}
        assert all(stakes[k] == setup.config.stake for k in keys) and not committed & set(keys)
        assert all(report.state.participants[k].active for k in keys)
    elif attack == "inflated":
        reasons = [tx.reason for tx in txs if isinstance(tx, Rejection) and tx.public_key in keys]
        assert len(reasons) == 4 and all("examples" in r for r in reasons)
        assert not committed & set(keys) and reward_share(report, keys, setup.config.stake) == 0
    else:
        assert set(keys) <= committed  # accepted on the record; scores decide their pay
    if attack in ("free-rider", "free-rider-noise"):
        assert reward_share(report, keys, setup.config.stake) < 0.01


def test_attacker_keys_come_from_the_run_setup(federate, tmp_path):
    setup, _, _ = federate(tmp_path, clients=4, rounds=1, attack="sign-flip", attackers=1)
    (index,) = attacker_indices(setup.config)
    txs = ledger_transactions(setup.run_dir)
    signed = {tx.public_key for tx in txs if isinstance(tx, UpdateCommitment)}
    assert setup.public_keys[index] in signed and len(signed) == 4


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_runs_with_the_ledger_off(federate, tmp_path, attack):
    _, outcomes, accuracy = federate(
        tmp_path,
        clients=4,
        rounds=1,
        attack=attack,
        attackers=1,
        ledger=False,
        aggregation="fedavg",
    )
    assert outcomes == [] and accuracy is not None and 0 <= accuracy["accuracy"] <= 1


def test_a_scaled_attacker_wrecks_plain_fedavg_without_the_ledger(federate, tmp_path):
    clean = federate(tmp_path / "a", clients=4, rounds=2, ledger=False, aggregation="fedavg")[2]
    attacked_ = federate(
        tmp_path / "b",
        clients=4,
        rounds=2,
        ledger=False,
        aggregation="fedavg",
        attack="scaled",
        attackers=1,
    )[2]
    assert attacked_["accuracy"] < clean["accuracy"] - 0.2


# -- Flower's own strategies as baselines ---------------------------------------------------------


def test_flower_strategies_are_flowers_own_classes_with_fedchains_assumptions():
    from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    def make(rule: str, clients: int = 10):  # type: ignore[no-untyped-def]
        return flower_strategy(RunConfig(clients=clients, ledger=False, aggregation=rule))

    assert type(make("fedavg")) is FedAvg and type(make("flwr-fedavg")) is FedAvg
    assert type(make("flwr-median")) is FedMedian
    trimmed = make("flwr-trimmed-mean")
    assert type(trimmed) is FedTrimmedAvg and trimmed.beta == 0.2
    krum = make("flwr-krum")
    assert type(krum) is Krum and krum.num_malicious_nodes == 3 and krum.num_nodes_to_select == 1
    multi = make("flwr-multikrum")
    assert type(multi) is MultiKrum and multi.num_malicious_nodes == 3
    assert multi.num_nodes_to_select == 7
    assert make("flwr-multikrum", 3).num_malicious_nodes == 0


@pytest.mark.parametrize("rule", FLOWER_RULES)
def test_each_flower_baseline_runs_in_the_same_harness(federate, tmp_path, rule):
    setup, outcomes, accuracy = federate(
        tmp_path, clients=5, rounds=2, ledger=False, aggregation=rule, attack="sign-flip",
        attackers=1,
    )  # fmt: skip
    assert not (setup.run_dir / "ledger.db").exists() and outcomes == []
    assert accuracy is not None and accuracy["accuracy"] > 0.5


@pytest.mark.parametrize("attack", ["sign-flip", "scaled", "free-rider"])
def test_screened_keeps_attackers_out_of_the_model_and_the_rewards(federate, tmp_path, attack):
    """The default rule: 2 of 5 clients attack for 3 rounds. No attacker's update enters a model
    version, attackers earn nothing, and the scores on the ledger recompute from the archive."""
    from fedchain.learning.attacks import attacker_indices
    from fedchain.rounds.recheck import recheck_scores

    setup, outcomes, _ = federate(
        tmp_path, clients=5, rounds=3, attack=attack, attackers=2, seed=1, aggregation="screened"
    )
    report = verify_ledger(setup.run_dir)
    assert report.ok, report.failure
    attackers = [setup.public_keys[i] for i in attacker_indices(setup.config)]
    for outcome in outcomes:
        assert all(outcome.weights[k] == 0 for k in attackers), outcome.weights
        assert sum(outcome.weights.values()) == pytest.approx(1.0) or not any(
            outcome.weights.values()
        )
    assert reward_share(report, attackers, setup.config.stake) == 0
    check = recheck_scores(setup.run_dir, report, setup.config)
    assert not check.problems and check.rounds == 3
