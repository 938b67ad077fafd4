"""Differential privacy (fedchain.privacy, the ledger's budget rule, the client, the journey).

- The mechanism: the clipped update's norm is at most C before noise; the noise has the
  Gaussian mechanism's scale; an OS-seeded draw differs every time.
- The accountant against Opacus's own ``RDPAccountant.get_epsilon`` for known parameters, and
  the integer participation cap it derives.
- The ledger (pre -> op -> post): a commitment claiming another mechanism than the rules is
  refused; a client at its cap is refused with a clear reason; the count is in the state and
  replays through ``verify_ledger``.
- The client: its reply's update is the privatised one, and its commitment hashes exactly that.
- The journey: a DP federation whose budget runs out mid-run keeps going, every client refused
  with the reason, and the ledger verifies.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from clients import client_app
from fedchain.cli import app
from fedchain.config import RunConfig
from fedchain.crypto.hashing import compute_update_hash
from fedchain.crypto.identity import public_key_bytes
from fedchain.data.sources import ArrayDataset
from fedchain.errors import ConfigError, InvalidBlock, InvalidTransaction, PrivacyBudgetSpent
from fedchain.learning.architectures import build_model, state_to_numpy
from fedchain.learning.training import compute_update
from fedchain.ledger.builder import (
    build_block,
    make_genesis,
    make_rules,
    prepare_block,
    sign_commitment,
    sign_genesis_participant,
)
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_dp_mechanism, compute_federation_id
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.objects import Attestation, Genesis, Rejection, Rules, UpdateCommitment
from fedchain.ledger.state import process_transaction
from fedchain.ledger.verify import verify_ledger
from fedchain.privacy.accountant import (
    check_cap,
    compute_dp_rules,
    compute_epsilon,
    compute_max_participations,
    privacy_of,
)
from fedchain.privacy.dpsgd import train_dpsgd
from fedchain.privacy.mechanism import (
    clip_update,
    compute_norm,
    privatise_update,
    privatise_update_with,
)
from fedchain.privacy.tally import TALLY_FILENAME, read_released, record_released
from fedchain.report.build import build_report
from fedchain.rounds import messages as m
from fedchain.rounds.admission import compute_reason
from fedchain.rounds.participant import check_privacy_budget
from fedchain.runs.prepare import RunSetup, prepare_run
from fedchain.runs.registry import load_model
from server.inprocess_grid import NODE_BASE, InProcessGrid
from server.strategy import compute_client_reply, parse_reply, to_array_record
from tests.conftest import MakeFederation

runner = CliRunner()


def opacus_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    """Opacus's own figure: its accountant stepped ``steps`` times."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=rate)
    return float(accountant.get_epsilon(delta))


def update(seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a.weight": (rng.standard_normal((20, 30)) * scale).astype(np.float32),
        "b.bias": (rng.standard_normal(7) * scale).astype(np.float32),
    }


# --------------------------------------------------------------------------------------------------
# The mechanism


@pytest.mark.parametrize("clip", [1e-3, 0.5, 1.0, 3.0])
def test_a_clipped_update_has_norm_at_most_the_clip(clip: float) -> None:
    big = update(scale=10.0)
    clipped = clip_update(big, clip)
    assert compute_norm(big) > clip
    assert compute_norm(clipped) <= clip
    assert compute_norm(clipped) == pytest.approx(clip, rel=1e-5)
    for name, array in clipped.items():  # the same direction, dtype and shape
        assert array.dtype == big[name].dtype and array.shape == big[name].shape
        np.testing.assert_allclose(
            array * compute_norm(big) / compute_norm(clipped), big[name], rtol=1e-4
        )


def test_an_update_within_the_clip_is_unchanged() -> None:
    small = update(scale=1e-3)
    clipped = clip_update(small, 10.0)
    for name in small:
        np.testing.assert_array_equal(clipped[name], small[name])


def test_the_noise_is_the_gaussian_mechanism_s() -> None:
    zero = {"w": np.zeros(200_000, dtype=np.float32)}
    noised = privatise_update_with(
        zero, clip=0.5, noise_multiplier=2.0, generator=np.random.default_rng(1)
    )
    assert noised["w"].dtype == np.float32
    assert float(noised["w"].std()) == pytest.approx(1.0, rel=0.01)  # std = 2.0 x 0.5
    assert abs(float(noised["w"].mean())) < 0.01


def test_the_noise_is_drawn_afresh_from_the_operating_system() -> None:
    first = privatise_update(update(), clip=1.0, noise_multiplier=1.0)
    second = privatise_update(update(), clip=1.0, noise_multiplier=1.0)
    assert not np.array_equal(first["a.weight"], second["a.weight"])


def test_invalid_clip_and_noise_are_refused() -> None:
    with pytest.raises(ConfigError, match="clipping norm"):
        clip_update(update(), 0.0)
    with pytest.raises(ConfigError, match="noise multiplier"):
        privatise_update(update(), clip=1.0, noise_multiplier=math.nan)


# --------------------------------------------------------------------------------------------------
# The accountant


@pytest.mark.parametrize(
    ("noise", "rate", "steps_per_round", "participations"),
    [(1.0, 1.0, 1, 1), (1.0, 1.0, 1, 5), (4.0, 1.0, 1, 20), (1.1, 0.01, 10, 30), (0.8, 0.1, 3, 7)],
)
def test_epsilon_is_opacus_s_own(
    noise: float, rate: float, steps_per_round: int, participations: int
) -> None:
    rules = Rules(
        0, 0, (), "", (), "", 0, 0,
        dp_mode="example", dp_noise_micro=round(noise * 10**6), dp_clip_micro=10**6,
        dp_sample_rate_micro=round(rate * 10**6), dp_steps_per_round=steps_per_round,
        dp_delta_pico=10**7, dp_max_epsilon_micro=8 * 10**6,
    )  # fmt: skip
    ours = compute_epsilon(privacy_of(rules), participations)
    theirs = opacus_epsilon(noise, rate, steps_per_round * participations, 1e-5)
    assert ours == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize(
    ("noise", "max_epsilon", "known_cap"),
    [(2.0, 8.0, 2), (4.0, 8.0, 9), (8.0, 8.0, 39), (1.0, 8.0, 0), (1.0, 1.0, 0)],
)
def test_the_participation_cap_is_the_most_opacus_allows(
    noise: float, max_epsilon: float, known_cap: int
) -> None:
    """Client level is local DP: sensitivity 2C, so Opacus's Gaussian mechanism at noise / 2."""
    fields = compute_dp_rules(
        "client", noise_multiplier=noise, clip_norm=1.0, delta=1e-5, max_epsilon=max_epsilon
    )
    cap = fields["dp_max_participations"]
    assert cap == known_cap
    if cap:
        assert opacus_epsilon(noise / 2, 1.0, cap, 1e-5) <= max_epsilon
    assert opacus_epsilon(noise / 2, 1.0, cap + 1, 1e-5) > max_epsilon


def test_the_cap_of_example_level_dp_counts_every_step() -> None:
    fields = compute_dp_rules(
        "example",
        noise_multiplier=1.1,
        clip_norm=1.0,
        delta=1e-5,
        max_epsilon=3.0,
        sample_rate=0.05,
        steps_per_round=20,
    )
    cap = int(fields["dp_max_participations"])
    assert cap >= 1
    assert (
        opacus_epsilon(1.1, 0.05, 20 * cap, 1e-5)
        <= 3.0
        < opacus_epsilon(1.1, 0.05, 20 * (cap + 1), 1e-5)
    )


def test_check_cap_flags_a_cap_above_the_maximum_epsilon() -> None:
    rules = make_rules(
        dp=compute_dp_rules(
            "client", noise_multiplier=2.0, clip_norm=1.0, delta=1e-5, max_epsilon=8
        )
    )
    assert check_cap(rules) == ""
    assert check_cap(dataclasses.replace(rules, dp_max_participations=1)) == ""  # stricter: fine
    generous = dataclasses.replace(rules, dp_max_participations=3)
    assert "above its maximum 8" in check_cap(generous)


def test_max_participations_grows_with_noise() -> None:
    caps = [
        compute_max_participations(
            privacy_of(
                make_rules(
                    dp=compute_dp_rules(
                        "client", noise_multiplier=s, clip_norm=1.0, delta=1e-5, max_epsilon=8
                    )
                )
            )
        )
        for s in (1.0, 2.0, 4.0, 8.0)
    ]
    assert caps == sorted(caps) and caps[0] < caps[-1]


# --------------------------------------------------------------------------------------------------
# The ledger's rule

KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(3)]
RUN = "dp-ledger"
DP = compute_dp_rules("client", noise_multiplier=2.0, clip_norm=1.0, delta=1e-5, max_epsilon=8.0)


def dp_genesis(dp: dict[str, int | str] | None = DP) -> Genesis:
    rules = make_rules(min_stake=100, dp=dp)
    federation = compute_federation_id(RUN, rules)
    participants = [
        sign_genesis_participant(
            k, federation, stake=1_000, dataset_hash=bytes(32), num_examples=50
        )
        for k in KEYS
    ]
    return make_genesis(RUN, participants, initial_model_hash=bytes([9]) * 32, rules=rules)


def commit(
    state: LedgerState, i: int, round_: int, mechanism: tuple[int, int, int] | None = None
) -> UpdateCommitment:
    rules = state.genesis.rules
    return sign_commitment(
        KEYS[i],
        state.genesis_hash,
        run_id=RUN,
        round=round_,
        base_model_hash=state.model_head,
        update_hash=bytes([round_, i]) * 16,
        num_examples=10,
        dp_mechanism=compute_dp_mechanism(rules) if mechanism is None else mechanism,
    )


def test_a_commitment_spends_one_participation() -> None:
    pre = compute_genesis_state(dp_genesis())
    key = public_key_bytes(KEYS[0])
    post = process_transaction(pre, commit(pre, 0, 1), 1)
    assert pre.participants[key].dp_participations == 0
    assert post.participants[key].dp_participations == 1
    assert post.participants[public_key_bytes(KEYS[1])].dp_participations == 0


@pytest.mark.parametrize(
    ("claim", "why"),
    [
        ((4_000_000, 1_000_000, 1), "more noise"),
        ((1_000_000, 1_000_000, 1), "less noise"),
        ((2_000_000, 500_000, 1), "a smaller sampling rate"),
        ((2_000_000, 1_000_000, 0), "fewer steps"),
        ((0, 0, 0), "no privacy at all"),
    ],
)
def test_invalid_commitment_claiming_another_mechanism_than_the_rules(
    claim: tuple[int, int, int], why: str
) -> None:
    pre = compute_genesis_state(dp_genesis())
    with pytest.raises(InvalidTransaction, match=r"the genesis rules require \(2, 1, 1\)"):
        process_transaction(pre, commit(pre, 0, 1, claim), 1)


def test_invalid_commitment_claiming_privacy_in_a_federation_without_it() -> None:
    pre = compute_genesis_state(dp_genesis(None))
    with pytest.raises(InvalidTransaction, match=r"require \(0, 0, 0\)"):
        process_transaction(pre, commit(pre, 0, 1, (1_000_000, 1_000_000, 1)), 1)
    post = process_transaction(pre, commit(pre, 0, 1), 1)  # and none is counted without DP
    assert post.participants[public_key_bytes(KEYS[0])].dp_participations == 0


def test_invalid_commitment_past_the_budget_is_refused_with_the_reason() -> None:
    state = compute_genesis_state(dp_genesis())
    key = public_key_bytes(KEYS[0])
    at_cap = dataclasses.replace(state.participants[key], dp_participations=2)
    state = dataclasses.replace(state, participants={**state.participants, key: at_cap})
    with pytest.raises(
        InvalidTransaction,
        match=r"privacy budget spent: participant .* has 2 "
        r"participations, the most the genesis allows within epsilon 8 at delta 1e-05",
    ):
        process_transaction(state, commit(state, 0, 1), 1)
    with pytest.raises(PrivacyBudgetSpent, match=r"spent \(2 of 2 participations, epsilon 8\)"):
        check_privacy_budget(state, key)
    check_privacy_budget(state, public_key_bytes(KEYS[1]))  # another client still may


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dp_mode": "central"}, "unknown dp_mode"),
        ({"dp_noise_micro": 0}, "dp_noise_micro = 0 must be positive"),
        ({"dp_sample_rate_micro": 2_000_000}, "above 1"),
        ({"dp_delta_pico": 10**12}, "not below 1"),
        ({"dp_mode": "off"}, "with dp_mode off, dp_noise_micro must be 0"),
    ],
)
def test_invalid_genesis_privacy_rules(change: dict[str, object], message: str) -> None:
    genesis = dp_genesis()
    bad = dataclasses.replace(genesis, rules=dataclasses.replace(genesis.rules, **change))
    with pytest.raises(InvalidBlock, match=message):
        compute_genesis_state(bad)


def test_the_budget_replays_from_the_stored_ledger(tmp_path: Path) -> None:
    """Three rounds of three commitments against a cap of 2: round 3's are refused by the
    transition (as admission would), and verify_ledger re-derives the counts."""
    genesis = dp_genesis()
    state = compute_genesis_state(genesis)
    by_key = {public_key_bytes(k): k for k in KEYS}
    with Chain.create(tmp_path / "ledger.db", genesis) as chain:
        for round_ in (1, 2, 3):
            txs: list[UpdateCommitment | Rejection] = []
            working = state
            for i in range(3):
                tx = commit(state, i, round_)
                try:
                    working = process_transaction(working, tx, round_)
                    txs.append(tx)
                except InvalidTransaction as e:
                    txs.append(Rejection(round_, tx.public_key, compute_reason(e)))
            proposer = _proposer(state, by_key)
            block, state = build_block(state, txs, proposer, round=round_)
            chain.append(block)
    assert [type(tx).__name__ for tx in block.transactions] == ["Rejection"] * 3
    reasons = [tx.reason for tx in block.transactions]  # type: ignore[union-attr]
    assert all("privacy budget spent" in reason for reason in reasons), reasons
    report = verify_ledger(tmp_path / "ledger.db")
    assert report.ok, report.failure
    assert report.state is not None
    assert {p.dp_participations for p in report.state.participants.values()} == {2}


def _proposer(state: LedgerState, by_key: dict[bytes, Ed25519PrivateKey]) -> Ed25519PrivateKey:
    from fedchain.ledger.consensus import compute_proposer, get_validators

    return by_key[compute_proposer(state.head_hash, get_validators(state), 0)]


# --------------------------------------------------------------------------------------------------
# The client


def dp_client_run(tmp_path: Path) -> tuple[RunSetup, dict[str, np.ndarray], ConfigRecord]:
    """A prepared client-level DP run (noise 2, clip 0.1: a cap of 2) and round 1's message."""
    setup = prepare_run(
        RunConfig(run_id="dp", out=str(tmp_path), clients=2, rounds=1, model="mlp", dp="client",
                  dp_noise=2.0, dp_clip=0.1)
    )  # fmt: skip
    model = load_model(setup.run_dir, setup.genesis.initial_model_hash)
    state = compute_genesis_state(setup.genesis)
    view = m.encode_ledger_view(
        state.genesis_hash, setup.genesis.run_id, [compute_genesis_block(setup.genesis)], 0, None
    )
    record = {
        **m.encode_train_settings(setup.config, setup.run_dir),
        m.SERVER_ROUND: 1,
        m.BASE_MODEL_HASH: setup.genesis.initial_model_hash,
        **view,
    }
    return setup, model, ConfigRecord(record)


def send_train(grid: InProcessGrid, record: ConfigRecord, model: dict[str, np.ndarray]) -> Message:
    content = RecordDict({m.CONFIG: record, m.ARRAYS: to_array_record(model)})
    (reply,) = grid.send_and_receive([Message(content, NODE_BASE, MessageType.TRAIN)])
    return reply


def test_the_client_sends_and_commits_to_the_privatised_update(tmp_path: Path) -> None:
    setup, model, record = dp_client_run(tmp_path)
    state = compute_genesis_state(setup.genesis)
    read = parse_reply(send_train(InProcessGrid(client_app.app, 2), record, model), model=model)
    assert read.error == "" and read.update is not None
    commitment = decode(UpdateCommitment, read.commitment)
    assert (commitment.dp_noise_micro, commitment.dp_sample_rate_micro, commitment.dp_steps) == (
        2_000_000, 1_000_000, 1,
    )  # fmt: skip
    assert commitment.update_hash == compute_update_hash(read.update)  # the noised update
    size = sum(a.size for a in read.update.values())
    # clipped to 0.1, then noise of std 0.2 on each of `size` coordinates: norm ~ 0.2 sqrt(size)
    assert compute_norm(read.update) == pytest.approx(0.2 * math.sqrt(size), rel=0.05)
    post = process_transaction(state, commitment, 1)
    assert post.participants[commitment.public_key].dp_participations == 1


def test_invalid_coordinator_that_keeps_commitments_off_the_ledger_gets_no_more_updates(
    tmp_path: Path,
) -> None:
    """The attack: the coordinator takes each update but records nothing (or a rejection), so
    the ledger's count stays at 0, and asks again. The client counts what it released itself
    and refuses once that reaches the cap of 2, whatever the ledger says."""
    setup, model, record = dp_client_run(tmp_path)
    assert setup.genesis.rules.dp_max_participations == 2
    grid = InProcessGrid(client_app.app, 2)
    for _ in range(2):
        assert not send_train(grid, record, model).has_error()
    refused = send_train(grid, record, model)  # the same view: the ledger shows no participation
    read = parse_reply(refused, model=model)
    assert read.update is None and read.commitment == b"" and m.ARRAYS not in refused.content
    assert "client refused to train" in read.error
    assert "privacy budget spent (2 of 2 participations, epsilon 8)" in read.error


def test_a_client_past_its_budget_still_attests(tmp_path: Path) -> None:
    """Refusing to train is not refusing the ledger duties: the reply carries no update and no
    commitment, only the reason and the attestation to the pending block (finality goes on)."""
    setup, model, record = dp_client_run(tmp_path)
    grid = InProcessGrid(client_app.app, 2)
    for _ in range(2):
        assert not send_train(grid, record, model).has_error()
    state = compute_genesis_state(setup.genesis)
    pending, _ = prepare_block(state, [], round=1)
    view = m.encode_ledger_view(
        state.genesis_hash, setup.genesis.run_id, [compute_genesis_block(setup.genesis)], 0, pending
    )
    reply = send_train(grid, ConfigRecord({**dict(record), **view}), model)
    assert not reply.has_error() and set(reply.content) == {m.REFUSAL, m.DUTIES}
    read = parse_reply(reply, model=model)
    assert read.update is None and read.commitment == b""
    assert read.error.startswith("client refused to train, in its own words:")
    attestation = decode(Attestation, read.attestation)
    assert attestation.validator == setup.public_keys[0] and attestation.height == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({m.REFUSAL: ConfigRecord({"why": "x"})}, "refusal is not a record with one reason"),
        ({m.REFUSAL: ConfigRecord({m.REFUSAL_REASON: ""})}, "refusal reason is"),
        (
            {m.REFUSAL: ConfigRecord({m.REFUSAL_REASON: "x"}), "extra": ConfigRecord({})},
            "unexpected record",
        ),
    ],
)
def test_invalid_refusal_replies_are_malformed(content: dict, problem: str) -> None:  # type: ignore[type-arg]
    read = compute_client_reply(7, {**content}, {"w": np.zeros(2, np.float32)})
    assert read.error.startswith("malformed reply:") and problem in read.error
    assert read.update is None


# --------------------------------------------------------------------------------------------------
# The journey


def test_a_federation_whose_budget_runs_out_goes_on_and_verifies(
    tmp_path: Path, inprocess_federation: MakeFederation
) -> None:
    fed = inprocess_federation(
        tmp_path, clients=3, rounds=3, model="mlp", aggregation="fedavg", contribution="none",
        dp="client", dp_noise=2.0, dp_clip=1.0, dp_delta=1e-5, dp_max_epsilon=8.0,
    ).run()  # fmt: skip
    assert [o.accepted for o in fed.outcomes] == [3, 3, 0]  # the cap is 2 participations
    refused = fed.outcomes[2].rejected
    assert len(refused) == 3 and all("privacy budget spent" in d.reason for d in refused)
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    assert report.state is not None
    assert {p.dp_participations for p in report.state.participants.values()} == {2}
    result = runner.invoke(app, ["verify", str(fed.setup.run_dir)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "at most 2 participations a client (epsilon <= 8 at delta 1e-05)" in text
    assert "the most any client took part in is 2 (epsilon 7.08)" in text

    data = build_report(fed.setup.run_dir)
    assert data["privacy"]["max_participations"] == 2 and data["privacy"]["max_epsilon"] == 8.0
    two = opacus_epsilon(1.0, 1.0, 2, 1e-5)  # noise 2 at sensitivity 2
    for person in data["participants"]:  # per client, per round (genesis, rounds 1-3)
        assert person["dp_participations"] == 2
        assert person["epsilon_by_round"] == [
            0.0,
            pytest.approx(opacus_epsilon(1.0, 1.0, 1, 1e-5)),
            pytest.approx(two),
            pytest.approx(two),
        ]
    result = runner.invoke(app, ["report", str(fed.setup.run_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "epsilon" in result.output and "7.08" in result.output
    page = (fed.setup.run_dir / "report.html").read_text()
    assert "epsilon spent" in page and 'id="plot-epsilon"' in page and "budget 8" in page


@pytest.mark.slow
@pytest.mark.e2e
def test_simulate_dp_on_flower_s_simulation_engine(tmp_path: Path) -> None:
    """The command a user types: ``fedchain simulate --dp client ...`` on Ray, then verify and
    report; 3 clients, 3 rounds, a budget of 2 participations."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "200", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    fedchain = [sys.executable, "-m", "fedchain"]
    args = ["--clients", "3", "--rounds", "3", "--model", "mlp", "--aggregation", "fedavg"]
    dp = ["--dp", "client", "--dp-noise", "2.0", "--dp-clip", "1.0", "--dp-delta", "1e-5"]
    run = subprocess.run(
        [*fedchain, "simulate", *args, *dp, "--dp-max-epsilon", "8", "--out", str(tmp_path),
         "--run-id", "dp"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    said = " ".join(run.stdout.split())
    assert "DEBUG" not in run.stdout + run.stderr  # Flower's log goes to log.txt, not the console
    assert "each client may take part in 2 rounds (epsilon <= 8 at delta 1e-05)" in said
    assert "privacy budget spent (2 of 2 participations, epsilon 8)" in said
    run_dir = tmp_path / "dp"
    verify = subprocess.run(
        [*fedchain, "verify", str(run_dir)], capture_output=True, text=True, env=env, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "the most any client took part in is 2 (epsilon 7.08)" in " ".join(verify.stdout.split())
    data = build_report(run_dir)
    assert [p["epsilon"] for p in data["participants"]] == [pytest.approx(7.0773, abs=1e-3)] * 3


# --------------------------------------------------------------------------------------------------
# Example level: DP-SGD through Opacus


def small_data(n: int = 40) -> ArrayDataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    labels = (np.arange(n) % 10).astype(np.int64)
    return ArrayDataset("tiny", x, labels, tuple(map(str, range(10))), None)


def test_dpsgd_clips_each_example_s_gradient() -> None:
    """One step over every example (rate 1) with next to no noise moves the weights by at most
    lr x clip: the mean of gradients each clipped to ``clip``."""
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    before = state_to_numpy(model)
    lr, clip = 10.0, 1e-3
    train_dpsgd(
        model, small_data(), lr=lr, noise_multiplier=1e-9, clip=clip, sample_rate=1.0, steps=1,
        seed=3,
    )  # fmt: skip
    moved = compute_norm(compute_update(before, state_to_numpy(model)))
    assert 0 < moved <= lr * clip * (1 + 1e-3)


def test_dpsgd_adds_noise_and_survives_empty_steps() -> None:
    runs = []
    for noise in (1e-9, 100.0):
        model = build_model("mlp", (1, 8, 8), 10, seed=0)
        before = state_to_numpy(model)
        result = train_dpsgd(
            model, small_data(5), lr=0.1, noise_multiplier=noise, clip=1.0, sample_rate=0.05,
            steps=10, seed=4,
        )  # fmt: skip
        assert result.num_examples == 5
        runs.append(compute_norm(compute_update(before, state_to_numpy(model))))
    assert runs[1] > 10 * runs[0]  # the same draws: only the noise differs


def test_dpsgd_draws_its_noise_in_opacus_s_secure_mode() -> None:
    """With gradients clipped to next to nothing, one full-batch step moves each weight by
    -lr x noise / batch: exactly the noise Opacus's secure mode draws from the noise generator
    (seed + 1): per parameter, one sample thrown away, then four Gaussians summed and halved."""
    from opacus.optimizers.optimizer import _generate_noise

    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    noise_multiplier, clip, n = 1e6, 1e-6, 40
    train_dpsgd(
        model, small_data(n), lr=1.0, noise_multiplier=noise_multiplier, clip=clip,
        sample_rate=1.0, steps=1, seed=5,
    )  # fmt: skip
    generator, insecure = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    for name, p in model.named_parameters():
        secure = _generate_noise(noise_multiplier * clip, p, generator, secure_mode=True)
        plain = _generate_noise(noise_multiplier * clip, p, insecure, secure_mode=False)
        moved = (before[name] - p.detach()) * n
        assert torch.allclose(moved, secure, atol=1e-4), name
        assert not torch.allclose(moved, plain, atol=1e-2), name


def test_client_level_noise_is_the_secure_sum_of_four_draws() -> None:
    from fedchain.privacy.mechanism import draw_noise

    zero = {"w": np.zeros(10_000, dtype=np.float32)}
    noised = privatise_update_with(
        zero, clip=0.5, noise_multiplier=2.0, generator=np.random.default_rng(7)
    )
    rng = np.random.default_rng(7)
    four = sum(rng.normal(0.0, 1.0, 10_000) for _ in range(4)) / 2
    assert np.array_equal(noised["w"], four.astype(np.float32))
    assert np.array_equal(draw_noise(np.random.default_rng(7), 1.0, (10_000,)), four)


def test_an_example_level_federation_spends_what_opacus_says(
    tmp_path: Path, inprocess_federation: MakeFederation
) -> None:
    fed = inprocess_federation(
        tmp_path, clients=3, rounds=2, model="mlp", aggregation="fedavg", contribution="none",
        dp="example", dp_noise=1.1, dp_clip=1.0, dp_sample_rate=0.1, dp_max_epsilon=20.0,
    ).run()  # fmt: skip
    assert [o.accepted for o in fed.outcomes] == [3, 3]
    rules = fed.setup.genesis.rules
    steps = 2 * round(2 / 0.1)  # two rounds of local-epochs / rate steps
    assert rules.dp_steps_per_round == 20 and rules.dp_sample_rate_micro == 100_000
    assert verify_ledger(fed.setup.run_dir).ok
    data = build_report(fed.setup.run_dir)
    expected = opacus_epsilon(1.1, 0.1, steps, 1e-5)
    assert [p["epsilon"] for p in data["participants"]] == [pytest.approx(expected)] * 3


def test_invalid_run_whose_budget_allows_no_round(tmp_path: Path) -> None:
    config = RunConfig(run_id="none", out=str(tmp_path), clients=2, dp="client", dp_noise=1.0)
    with pytest.raises(ConfigError, match="no client could ever take part"):
        prepare_run(config)
    assert not (tmp_path / "none").exists()


# --------------------------------------------------------------------------------------------------
# The holder's tally on disk


def test_the_tally_survives_a_restart_and_never_goes_down(tmp_path: Path) -> None:
    """A deployed holder's SuperNode restarts (a fresh context.state): its count of released
    updates comes back from its replica folder, so a coordinator that kept the commitments off
    the ledger still gets no update past the cap."""
    setup, _, _ = dp_client_run(tmp_path)
    state = compute_genesis_state(setup.genesis)
    folder = tmp_path / "replica"
    record_released(folder, state.genesis_hash, 2)
    record_released(folder, state.genesis_hash, 1)  # a lower count never replaces a higher one
    assert read_released(folder, state.genesis_hash) == 2
    assert read_released(folder, bytes(32)) == 0  # another federation: its own count
    restarted = Context(1, 1, {}, RecordDict(), {})
    released = client_app._released(restarted, state, folder)
    assert released == 2
    with pytest.raises(PrivacyBudgetSpent, match=r"spent \(2 of 2"):
        check_privacy_budget(state, setup.public_keys[0], released)


@pytest.mark.parametrize("text", ["{", '{"format": "other", "counts": {}}', '{"format": '
                                  '"fedchain-privacy-tally/1", "counts": {"ab": -1}}'])  # fmt: skip
def test_invalid_tally_files_stop_the_holder_rather_than_count_zero(
    tmp_path: Path, text: str
) -> None:
    (tmp_path / TALLY_FILENAME).write_text(text)
    with pytest.raises(ConfigError, match="not training"):
        read_released(tmp_path, bytes(32))
