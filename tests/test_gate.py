"""The approving executor's pure parts (fedchain/deploy/gate.py): the secrets it hands an
approved ClientApp over a pipe, and the refusal (text and signed) a coordinator receives. Its
behaviour with a real SuperNode is in test_app_approval.py."""

from __future__ import annotations

import dataclasses
import os

from flwr.app import ConfigRecord, RecordDict

from fedchain.crypto.identity import public_key_bytes
from fedchain.data import keys
from fedchain.deploy import gate
from fedchain.ledger.builder import sign_refusal
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.objects import REFUSE_APP, Refusal, Rejection
from fedchain.rounds import messages as m
from fedchain.rounds.admission import MAX_CLIENT_TEXT_CHARS, ClientReply, admit_update
from tests.test_data_use import genesis_state
from tests.test_privacy import KEYS


def test_secrets_cross_the_pipe_intact() -> None:
    key = keys.DataKey(os.urandom(32))
    assert gate.decode_secrets(gate.encode_secrets(key, b"id pass")) == (key, b"id pass")
    phrase = keys.Passphrase("données 🔑".encode())
    assert gate.decode_secrets(gate.encode_secrets(phrase, None)) == (phrase, None)


def test_the_refusal_names_both_digests_within_what_a_ledger_keeps() -> None:
    refused, approved = "a" * 64, "b" * 64
    reason = gate.refusal_reason(refused, [approved], "0123456789abcdef")
    assert reason.startswith(gate.REFUSAL_PREFIX)
    assert reason.endswith(f"digests: {refused} vs {approved}")
    kept = reason[:MAX_CLIENT_TEXT_CHARS]  # what the coordinator's Rejection quotes
    assert f"app {'a' * 16}… is not the app it approved ({'b' * 16}…)" in kept


def _train_content(round_: int, genesis_hash: bytes) -> RecordDict:
    return RecordDict(
        {"config": ConfigRecord({m.SERVER_ROUND: round_, m.GENESIS_HASH: genesis_hash})}
    )


def test_the_gate_signs_its_refusal_and_the_coordinator_records_it_as_the_holders() -> None:
    """`join` signs the holder's refusal of an app it did not approve, for the round and
    federation the train message names; it travels in the error reply's text, and the
    coordinator records it as the holder's own `Refusal` (spec §9.10)."""
    state = genesis_state(max_rounds=3)
    holder = KEYS[0]

    def sign(round_: int, genesis_hash: bytes, detail: str) -> bytes:
        return encode(
            sign_refusal(holder, genesis_hash, round=round_, code=REFUSE_APP, detail=detail)
        )

    signed = gate.signed_refusal(sign, _train_content(2, state.genesis_hash), "app x is not y")
    refusal = decode(Refusal, signed)
    assert (refusal.round, refusal.code, refusal.detail) == (2, REFUSE_APP, "app x is not y")
    reason = m.append_signed_refusal(gate.refusal_reason("a" * 64, ["b" * 64], "h"), signed)
    text, carried = m.split_signed_refusal(reason)
    assert carried == signed and text.startswith(gate.REFUSAL_PREFIX)
    reply = ClientReply(1000, refusal=carried, error=text)
    admission = admit_update(state, reply, 2, public_key_bytes(holder), {})
    assert admission.txs == (refusal,)
    assert "refused by the data holder (app-not-approved), signed" in admission.decision.reason
    assert gate.signed_refusal(sign, RecordDict({}), "x") == b""  # not a fedchain message
    assert gate.signed_refusal(None, _train_content(2, state.genesis_hash), "x") == b""


def test_invalid_a_refusal_in_another_holders_name_is_the_coordinators_word() -> None:
    """A reply whose appended refusal is signed by someone else than the node's holder, or
    altered, is recorded as the coordinator's `Rejection`, never as that holder's refusal."""
    state = genesis_state(max_rounds=3)
    other = encode(
        sign_refusal(KEYS[1], state.genesis_hash, round=2, code=REFUSE_APP, detail="not mine")
    )
    own = sign_refusal(KEYS[0], state.genesis_hash, round=2, code=REFUSE_APP, detail="mine")
    altered = encode(dataclasses.replace(own, detail="the coordinator's words"))
    for carried in (other, altered, b"\x00garbage"):
        reply = ClientReply(1000, refusal=carried, error="client error")
        (tx,) = admit_update(state, reply, 2, public_key_bytes(KEYS[0]), {}).txs
        assert isinstance(tx, Rejection)
    assert m.split_signed_refusal("no mark here") == ("no mark here", b"")
    assert m.split_signed_refusal(f"x{m.SIGNED_REFUSAL_MARK}zz") == (
        f"x{m.SIGNED_REFUSAL_MARK}zz",
        b"",
    )
