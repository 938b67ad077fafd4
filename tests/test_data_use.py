"""The rules of data use on the genesis (issue 13, spec §9.8): how many rounds and how many
local epochs a round every registration agreed to. The ledger refuses a commitment or a model
version past ``max_rounds``; a holder's client refuses a train message asking for more epochs
or a later round, and still does its ledger duties.

Pre -> op -> post on real genesis states and the real ClientApp on an in-process grid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from clients import client_app
from fedchain.config import RunConfig
from fedchain.crypto.identity import Domain, public_key_bytes, sign
from fedchain.errors import (
    ConfigError,
    InvalidBlock,
    InvalidTransaction,
    UpdateNotAgreed,
    UseNotAgreed,
)
from fedchain.ledger.builder import (
    make_genesis,
    make_rules,
    sign_genesis_participant,
    sign_refusal,
)
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.derived import compute_federation_id, is_model_recipient, signing_message
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.objects import (
    REFUSE_EPOCHS,
    REFUSE_PRIVACY,
    REFUSE_ROUNDS,
    ModelRecord,
    ModelVersion,
    Refusal,
    Rejection,
)
from fedchain.ledger.state import process_transaction
from fedchain.rounds import messages as m
from fedchain.rounds.admission import ClientReply, admit_update
from fedchain.rounds.participant import check_agreed_training, check_outgoing_update
from fedchain.runs.prepare import parse_model_access, prepare_run
from fedchain.runs.registry import load_model
from server.inprocess_grid import NODE_BASE, InProcessGrid
from server.strategy import parse_reply, to_array_record
from tests.test_privacy import KEYS, RUN, commit


def genesis_state(max_rounds: int, max_local_epochs: int = 0):  # type: ignore[no-untyped-def]
    rules = make_rules(min_stake=100, max_rounds=max_rounds, max_local_epochs=max_local_epochs)
    federation = compute_federation_id(RUN, rules)
    participants = [
        sign_genesis_participant(
            k, federation, stake=1_000, dataset_hash=bytes(32), num_examples=50
        )
        for k in KEYS
    ]
    genesis = make_genesis(RUN, participants, initial_model_hash=bytes([9]) * 32, rules=rules)
    return compute_genesis_state(genesis)


def test_the_ledger_refuses_commitments_and_models_past_the_agreed_rounds() -> None:
    state = genesis_state(max_rounds=1)
    accepted = process_transaction(state, commit(state, 0, 1), 1)
    assert public_key_bytes(KEYS[0]) in accepted.round_commits
    with pytest.raises(InvalidTransaction, match="past the 1 rounds the genesis's participants"):
        process_transaction(state, commit(state, 0, 2), 2)
    version = ModelVersion(
        2, bytes([7]) * 32, state.model_head, (), state.genesis.rules.aggregation_rule
    )
    with pytest.raises(InvalidTransaction, match="a model version is for round 2, past the 1"):
        process_transaction(state, version, 2)
    unlimited = genesis_state(max_rounds=0)  # 0: no limit (synthetic ledgers)
    assert process_transaction(unlimited, commit(unlimited, 0, 5), 5).round_commits


def test_invalid_negative_limits_make_the_genesis_invalid() -> None:
    genesis = genesis_state(max_rounds=1).genesis
    bad = dataclasses.replace(genesis, rules=dataclasses.replace(genesis.rules, max_rounds=-1))
    with pytest.raises(InvalidBlock, match="max_rounds and max_local_epochs must be >= 0"):
        compute_genesis_state(bad)


def test_check_agreed_training_refuses_later_rounds_and_more_epochs() -> None:
    rules = genesis_state(max_rounds=3, max_local_epochs=2).genesis.rules
    check_agreed_training(rules, 3, 2)
    with pytest.raises(UseNotAgreed, match="round 4 is past the 3 rounds"):
        check_agreed_training(rules, 4, 1)
    with pytest.raises(
        UseNotAgreed, match="3 local epochs asked, the federation's contract allows 2"
    ):
        check_agreed_training(rules, 1, 3)


def test_a_simulated_federation_records_its_rounds_and_epochs(tmp_path: Path) -> None:
    setup = prepare_run(
        RunConfig(run_id="use", out=str(tmp_path), clients=2, rounds=3, local_epochs=1, model="mlp")
    )
    assert (setup.genesis.rules.max_rounds, setup.genesis.rules.max_local_epochs) == (3, 1)


def test_invalid_a_coordinator_asking_more_epochs_than_agreed_gets_a_refusal(
    tmp_path: Path,
) -> None:
    """The coordinator's message asks 5 local epochs where the genesis says 1: the client
    answers with its refusal and its duties, no update, no commitment."""
    setup = prepare_run(
        RunConfig(run_id="use", out=str(tmp_path), clients=2, rounds=2, local_epochs=1, model="mlp")
    )
    state = compute_genesis_state(setup.genesis)
    view = m.encode_ledger_view(
        state.genesis_hash, setup.genesis.run_id, [compute_genesis_block(setup.genesis)], 0, None
    )
    model = load_model(setup.run_dir, setup.genesis.initial_model_hash)
    record = {
        **m.encode_train_settings(setup.config, setup.run_dir),
        m.SERVER_ROUND: 1,
        m.BASE_MODEL_HASH: setup.genesis.initial_model_hash,
        **view,
    }
    grid = InProcessGrid(client_app.app, 2)

    def send(**changes: object) -> Message:
        content = RecordDict(
            {m.CONFIG: ConfigRecord({**record, **changes}), m.ARRAYS: to_array_record(model)}
        )
        (reply,) = grid.send_and_receive([Message(content, NODE_BASE, MessageType.TRAIN)])
        return reply

    refused = parse_reply(send(**{m.LOCAL_EPOCHS: 5}), model=model)
    assert refused.update is None and refused.commitment == b""
    assert "5 local epochs asked, the federation's contract allows 1" in refused.error
    sent = send()
    honest = parse_reply(sent, model=model)
    assert honest.error == "" and honest.update is not None
    # What left the holder: the update the contract lists, of its size, its metrics and duties.
    assert set(sent.content) == {m.ARRAYS, m.METRICS, m.DUTIES}
    record = setup.genesis.rules.model
    assert sorted(honest.update) == sorted(record.trainable)
    assert sum(a.nbytes for a in honest.update.values()) == record.update_bytes > 0
    # The refusal is the holder's own, signed: the coordinator records it as itself.
    signed = decode(Refusal, refused.refusal)
    assert (signed.round, signed.code) == (1, REFUSE_EPOCHS)
    assert signed.public_key in {p.public_key for p in setup.genesis.participants}
    admission = admit_update(state, refused, 1, None, model)
    assert admission.txs == (signed,) and not admission.decision.accepted
    assert "refused by the data holder (epochs-past-agreed), signed" in admission.decision.reason
    # A coordinator that puts other words in the holder's mouth has no signature for them.
    altered = dataclasses.replace(signed, detail="I refuse to work for you")
    reply = dataclasses.replace(refused, refusal=encode(altered))
    (fallback,) = admit_update(state, reply, 1, signed.public_key, model).txs
    assert isinstance(fallback, Rejection)  # the coordinator's word, not the holder's


COORDINATOR = Ed25519PrivateKey.from_private_bytes(bytes([77]) * 32)


def refusal(state, i: int, round_: int, code: str, *, key=None):  # type: ignore[no-untyped-def]
    """Holder ``i``'s refusal, signed by ``key`` (its own by default)."""
    unsigned = Refusal(public_key_bytes(KEYS[i]), round_, code, "asked too much", b"")
    signer = KEYS[i] if key is None else key
    signature = sign(signer, Domain.REFUSAL, signing_message(unsigned), state.genesis_hash)
    return dataclasses.replace(unsigned, signature=signature)


def test_a_holders_signed_refusal_is_recorded() -> None:
    state = genesis_state(max_rounds=1, max_local_epochs=2)
    for tx, round_ in (
        (refusal(state, 0, 2, REFUSE_ROUNDS), 2),
        (refusal(state, 1, 1, REFUSE_EPOCHS), 1),
    ):
        assert process_transaction(state, tx, round_).round == round_
    assert refusal(state, 0, 1, REFUSE_EPOCHS) == sign_refusal(
        KEYS[0], state.genesis_hash, round=1, code=REFUSE_EPOCHS, detail="asked too much"
    )


def test_invalid_a_refusal_recorded_twice_in_its_round() -> None:
    """The same signed refusal recorded again in its round (it would count as two): refused;
    the holder's refusal of the next round is its own record."""
    state = genesis_state(max_rounds=1, max_local_epochs=2)
    tx = refusal(state, 0, 1, REFUSE_EPOCHS)
    after = process_transaction(state, tx, 1)
    assert after.round_refusals == {tx.public_key}
    with pytest.raises(InvalidTransaction, match="already has a refusal in round 1"):
        process_transaction(after, tx, 1)
    assert process_transaction(after, refusal(state, 1, 1, REFUSE_EPOCHS), 1).round == 1
    later = process_transaction(after, refusal(state, 0, 2, REFUSE_ROUNDS), 2)
    assert later.round_refusals == {tx.public_key}  # round 2's, the set emptied for it


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        ("signed by the coordinator", "bad signature on the Refusal"),
        ("detail changed after signing", "bad signature on the Refusal"),
        ("another federation", "bad signature on the Refusal"),
        ("replayed in a later round", "refusal is for round 1, but the block is round 2"),
        ("a round within the contract", "not past the contract's max_rounds"),
        ("epochs with no epoch limit", "sets no max_local_epochs"),
        ("privacy without DP", "no privacy budget"),
        ("unknown code", "unknown refusal code"),
    ],
)
def test_invalid_refusal_forged_by_a_coordinator(forge: str, message: str) -> None:
    """A coordinator that makes up a holder's refusal (to explain away a round it did not send
    the holder, say), or reuses a real one, is refused by the transition."""
    state = genesis_state(max_rounds=1, max_local_epochs=2)
    tx, round_ = refusal(state, 0, 1, REFUSE_EPOCHS), 1
    if forge == "signed by the coordinator":
        tx = refusal(state, 0, 1, REFUSE_EPOCHS, key=COORDINATOR)
    elif forge == "detail changed after signing":
        tx = dataclasses.replace(tx, detail="the holder asked to be left out")
    elif forge == "another federation":
        other = genesis_state(max_rounds=1, max_local_epochs=3)
        tx = refusal(other, 0, 1, REFUSE_EPOCHS)
    elif forge == "replayed in a later round":
        round_ = 2
    elif forge == "a round within the contract":
        tx = refusal(state, 0, 1, REFUSE_ROUNDS)
    elif forge == "epochs with no epoch limit":
        state = genesis_state(max_rounds=1)
        tx = refusal(state, 0, 1, REFUSE_EPOCHS)
    elif forge == "privacy without DP":
        tx = refusal(state, 0, 1, REFUSE_PRIVACY)
    else:
        tx = refusal(state, 0, 1, "felt like it")
    with pytest.raises(InvalidTransaction, match=message):
        process_transaction(state, tx, round_)


RECORD = ModelRecord(architecture="mlp", trainable=("w", "b"), update_bytes=4 * (6 + 2))


def honest_update() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}


def test_an_update_the_contract_lists_leaves() -> None:
    check_outgoing_update(honest_update(), RECORD)
    check_outgoing_update({"anything": np.zeros(9)}, ModelRecord())  # no record: no rule


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("an extra tensor", "other tensors than the contract lists"),
        ("a tensor left out", "other tensors than the contract lists"),
        ("a bigger tensor", "the update is 40 bytes, the contract's updates are 32"),
        ("float64", "not float32"),
    ],
)
def test_invalid_an_update_with_more_than_the_contract_lists_stays(
    tamper: str, message: str
) -> None:
    """The holder's client is the last check before the bytes leave: a tampered update (raw
    examples smuggled in an extra tensor, a tensor grown to carry more, a wider dtype) is not
    sent."""
    update = honest_update()
    if tamper == "an extra tensor":
        update["examples"] = np.arange(8, dtype=np.float32)
    elif tamper == "a tensor left out":
        del update["b"]
    elif tamper == "a bigger tensor":
        update["w"] = np.zeros((2, 4), np.float32)
    else:
        update["w"] = update["w"].astype(np.float64)
    with pytest.raises(UpdateNotAgreed, match=message):
        check_outgoing_update(update, RECORD)


def test_invalid_the_coordinator_refuses_an_update_of_another_size() -> None:
    """Admission checks the genesis's update size too (the ledger cannot: a commitment holds a
    hash), here against a coordinator model whose tensors are bigger than the contract's."""
    state = genesis_state(max_rounds=0)
    genesis = state.genesis
    rules = dataclasses.replace(genesis.rules, model=RECORD)
    state = dataclasses.replace(state, genesis=dataclasses.replace(genesis, rules=rules))
    model = {"w": np.zeros((2, 4), np.float32), "b": np.zeros(2, np.float32)}
    reply = ClientReply(1, update=model, commitment=encode(commit(state, 0, 1)), num_examples=50)
    admission = admit_update(state, reply, 1, public_key_bytes(KEYS[0]), model)
    assert not admission.decision.accepted
    assert "update is 40 bytes; the genesis's updates are 32" in admission.decision.reason


@pytest.mark.parametrize(
    "access",
    [(b"short",), (bytes([2]) * 32, bytes([1]) * 32), (bytes([1]) * 32, bytes([1]) * 32)],
    ids=["not-a-key", "unsorted", "twice"],
)
def test_invalid_model_access_makes_the_genesis_invalid(access: tuple[bytes, ...]) -> None:
    genesis = genesis_state(max_rounds=1).genesis
    bad = dataclasses.replace(
        genesis, rules=dataclasses.replace(genesis.rules, model_access=access)
    )
    with pytest.raises(InvalidBlock, match="model_access must list 32-byte public keys"):
        compute_genesis_state(bad)


def test_model_access_names_participants_and_the_listed_keys() -> None:
    genesis = genesis_state(max_rounds=1).genesis
    listed = dataclasses.replace(genesis.rules, model_access=(bytes([3]) * 32,))
    genesis = dataclasses.replace(genesis, rules=listed)
    assert is_model_recipient(genesis, public_key_bytes(KEYS[0]))
    assert is_model_recipient(genesis, bytes([3]) * 32)
    assert not is_model_recipient(genesis, bytes([4]) * 32)
    assert parse_model_access(f" {'ab' * 32}, {'01' * 32},{'ab' * 32}") == (
        bytes([1]) * 32,
        bytes([0xAB]) * 32,
    )
    with pytest.raises(ConfigError, match="is not a public key"):
        parse_model_access("abc")
