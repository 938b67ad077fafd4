"""fedchain.rounds.admission: pre-state -> admit a reply -> post-state, transactions, decision.

A synthetic federation of three after round 1 is the pre-state; each case admits one reply to
round 2. Negative cases are named ``test_invalid_*``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedchain.crypto.hashing import compute_update_hash
from fedchain.ledger.builder import sign_attestation, sign_commitment
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.objects import (
    Attestation,
    Rejection,
    UpdateCommitment,
)
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.rounds.admission import (
    MAX_REASON_CHARS,
    MISMATCH_REASON,
    ClientReply,
    admit_app_approvals,
    admit_attestation,
    admit_update,
    brief_reason,
    check_shapes,
    compute_gist,
    compute_printable,
    compute_reply_order,
    compute_sender,
    decode_commitment,
    is_fresh_commitment,
)
from tests.test_ledger_state import APP_V1, APP_V2, approve, make_holders_state

RUN_ID = "admission"
MODEL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
BASE = {k: v + np.float32(0.5) for k, v in MODEL.items()}
ROUND = 2


class World:
    def __init__(self, tmp: Path) -> None:
        self.federation = SyntheticFederation(
            3, initial_model_hash=compute_update_hash(MODEL), run_id=RUN_ID
        )
        with Chain.create(tmp / "ledger.db", self.federation.genesis) as chain:
            self.block1, self.state = self.federation.make_round(
                chain.state, model_hash=compute_update_hash(BASE)
            )
        self.keys = self.federation.keys
        self.public = [decode_commitment(self.commitment(i)).public_key for i in range(3)]  # type: ignore[union-attr]

    def update(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(i)
        return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in MODEL.items()}

    def commitment(
        self, i: int, *, round_: int = ROUND, update: dict | None = None, examples: int = 50
    ) -> bytes:
        committed = self.update(i) if update is None else update
        return encode(
            sign_commitment(
                self.keys[i],
                self.state.genesis_hash,
                run_id=RUN_ID,
                round=round_,
                base_model_hash=self.state.model_head,
                update_hash=compute_update_hash(committed),
                num_examples=examples,
            )
        )

    def reply(self, i: int, node: int = 10, **fields: object) -> ClientReply:
        values: dict = {"update": self.update(i), "num_examples": 50}
        values["commitment"] = self.commitment(i)
        values.update(fields)
        return ClientReply(node, **values)


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("admission"))


# -- attestations -----------------------------------------------------------------------------


def test_attestation_to_the_head_is_a_recorded_vote(w: World) -> None:
    pre: LedgerState = w.state
    signed = sign_attestation(w.keys[0], pre.genesis_hash, height=1, block_hash=pre.head_hash)
    post, attestation = admit_attestation(pre, ClientReply(10, attestation=encode(signed)), ROUND)
    assert attestation == signed
    assert post is not pre and post.last_attested[w.public[0]] == 1
    assert pre.last_attested.get(w.public[0]) != 1  # the pre-state is unchanged


def test_no_attestation_records_nothing(w: World) -> None:
    assert admit_attestation(w.state, ClientReply(10), ROUND) == (w.state, None)


@pytest.mark.parametrize("data", [b"junk", b"\x00" * 100])
def test_invalid_attestation_records_nothing(w: World, data: bytes) -> None:
    assert admit_attestation(w.state, ClientReply(10, attestation=data), ROUND) == (w.state, None)


def test_invalid_attestation_to_an_unknown_block(w: World) -> None:
    pre = w.state
    signed = sign_attestation(w.keys[0], pre.genesis_hash, height=1, block_hash=b"\x01" * 32)
    assert admit_attestation(pre, ClientReply(10, attestation=encode(signed)), ROUND) == (pre, None)


# -- updates ----------------------------------------------------------------------------------


def test_update_is_accepted_with_its_commitment(w: World) -> None:
    reply = w.reply(0)
    admission = admit_update(w.state, reply, ROUND, w.public[0], BASE)
    commitment = decode(UpdateCommitment, reply.commitment)
    assert admission.txs == (commitment,)
    assert admission.decision.accepted and admission.decision.public_key == w.public[0]
    assert admission.accepted == (commitment, reply.update)
    assert admission.state is not w.state


def test_invalid_error_reply_is_refused_against_its_sender(w: World) -> None:
    admission = admit_update(w.state, w.reply(0, error="client error"), ROUND, w.public[0], BASE)
    assert admission.state is w.state and admission.accepted is None
    assert admission.txs == (Rejection(ROUND, w.public[0], "client error"),)
    assert not admission.decision.accepted and admission.decision.reason == "client error"


def test_invalid_reply_of_an_unknown_sender_records_nothing(w: World) -> None:
    admission = admit_update(w.state, w.reply(0, error="client error"), ROUND, None, BASE)
    assert admission.txs == () and admission.decision.public_key is None


def test_invalid_reason_is_printable_and_capped(w: World) -> None:
    reply = w.reply(0, error="\x1b[31m" + "x" * 500)
    reason = admit_update(w.state, reply, ROUND, w.public[0], BASE).decision.reason
    assert reason.isprintable() and len(reason) <= MAX_REASON_CHARS and reason.endswith("…")


def test_invalid_unreadable_commitment(w: World) -> None:
    admission = admit_update(w.state, w.reply(0, commitment=b"junk"), ROUND, w.public[0], BASE)
    assert admission.decision.reason == "no readable update commitment"


def test_invalid_stale_commitment_is_refused_by_the_ledger(w: World) -> None:
    reply = w.reply(0, commitment=w.commitment(0, round_=1))
    admission = admit_update(w.state, reply, ROUND, w.public[0], BASE)
    assert admission.decision.reason.startswith("commitment refused: ")
    assert admission.txs == (Rejection(ROUND, w.public[0], admission.decision.reason),)


def test_invalid_commitment_signed_by_another_key(w: World) -> None:
    admission = admit_update(w.state, w.reply(0), ROUND, w.public[1], BASE)
    assert admission.decision.reason == "its commitment is signed by another participant's key"
    assert admission.txs == (Rejection(ROUND, w.public[1], admission.decision.reason),)


def test_invalid_no_update_arrays(w: World) -> None:
    admission = admit_update(w.state, w.reply(0, update=None), ROUND, w.public[0], BASE)
    assert admission.decision.reason == "no update arrays"


def test_invalid_update_shape(w: World) -> None:
    update = {**w.update(0), "b": np.zeros(4, dtype=np.float32)}
    reply = w.reply(0, update=update, commitment=w.commitment(0, update=update))
    reason = admit_update(w.state, reply, ROUND, w.public[0], BASE).decision.reason
    assert reason == "tensor b has shape (4,), the model's is (3,)"


def test_invalid_update_not_matching_its_commitment_is_a_rejection(w: World) -> None:
    """Only the coordinator saw the bytes that arrived, so the mismatch is a refusal on record,
    never slashing evidence: the state (stakes, reputations, commitments) is unchanged."""
    reply = w.reply(0, update=w.update(1))
    admission = admit_update(w.state, reply, ROUND, w.public[0], BASE)
    assert admission.decision.reason == MISMATCH_REASON
    assert admission.txs == (Rejection(ROUND, w.public[0], MISMATCH_REASON),)
    assert admission.state is w.state and admission.accepted is None


def test_invalid_example_count_differs_from_the_commitment(w: World) -> None:
    admission = admit_update(w.state, w.reply(0, num_examples=51), ROUND, w.public[0], BASE)
    assert admission.decision.reason == "claims 51 examples but committed to 50"


def test_invalid_non_finite_update(w: World) -> None:
    update = {**w.update(0), "b": np.array([0.0, np.nan, 0.0], dtype=np.float32)}
    reply = w.reply(0, update=update, commitment=w.commitment(0, update=update))
    reason = admit_update(w.state, reply, ROUND, w.public[0], BASE).decision.reason
    assert reason == "update has NaN or infinite values"


# -- senders, order, shapes and reasons ---------------------------------------------------------


def test_a_known_node_keeps_its_key(w: World) -> None:
    commitment = decode_commitment(w.commitment(1))
    assert compute_sender({10: w.public[0]}, w.state, 10, commitment, ROUND) == (w.public[0], False)


def test_a_fresh_commitment_binds_its_node(w: World) -> None:
    commitment = decode_commitment(w.commitment(1))
    assert commitment is not None and is_fresh_commitment(w.state, commitment, ROUND)
    assert compute_sender({}, w.state, 10, commitment, ROUND) == (w.public[1], True)


def test_invalid_stale_commitment_binds_no_node(w: World) -> None:
    stale = next(tx for tx in w.block1.transactions if isinstance(tx, UpdateCommitment))
    assert not is_fresh_commitment(w.state, stale, ROUND)
    assert compute_sender({}, w.state, 10, stale, ROUND) == (None, False)
    assert compute_sender({}, w.state, 10, None, ROUND) == (None, False)


def test_replies_are_ordered_by_committed_key_unreadable_first(w: World) -> None:
    replies = [w.reply(i, node=20 - i) for i in range(3)] + [ClientReply(5), ClientReply(3)]
    ordered = sorted(replies, key=compute_reply_order)
    assert [r.node_id for r in ordered[:2]] == [3, 5]
    keys = [decode(UpdateCommitment, r.commitment).public_key for r in ordered[2:]]
    assert keys == sorted(w.public)


def test_shapes_match_or_say_why() -> None:
    assert check_shapes(BASE, BASE) == ""
    assert check_shapes({"w": BASE["w"]}, BASE) == "update tensors do not match the model's names"
    wrong = {**BASE, "w": BASE["w"].astype(np.float64)}
    assert check_shapes(wrong, BASE) == "tensor w has dtype float64, the model's is float32"


def test_printable_text_and_brief_reasons() -> None:
    assert compute_printable("a\nb\x1b", 20) == "a\\nb\\x1b"
    assert compute_printable('say "hi"', 20, quoting=True) == 'say \\"hi\\"'
    assert compute_printable("abcdef", 4) == "abc…"
    traceback = "Error: start\n  frame\nValueError: \x1b[31mbad\x1b[0m"
    assert brief_reason(traceback) == "Error: … ValueError: bad"
    assert brief_reason("x" * 10, limit=5) == "xxxx…"


def test_the_gist_of_a_ray_client_error_is_the_client_s_own_message() -> None:
    """Ray wraps a ClientApp's exception in 60 characters of class names and Flower's
    "occurred. Message:" wording; a capped quotation must still show the client's words."""
    ray = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run()\n"
        '  File "x.py", line 1, in run\nflwr.clientapp.client_app.ClientAppException: \n'
        "Exception ClientAppException occurred. Message: privacy budget spent (2 of 2)"
    )
    assert compute_gist(ray) == "RayTaskError(ClientAppException): privacy budget spent (2 of 2)"


def test_attestations_decode_as_the_ledger_encodes_them(w: World) -> None:
    signed = sign_attestation(w.keys[2], w.state.genesis_hash, height=1, block_hash=b"\x00" * 32)
    assert decode(Attestation, encode(signed)) == signed


def test_admit_app_approvals_records_each_holders_next_approval_once() -> None:
    """An inbox may hold an approval twice, out of order, or an old one replayed after the
    holder went back to the app it left: only what the transition accepts is recorded."""
    state = make_holders_state()
    first, back = approve(1, APP_V2, APP_V1, 1), approve(1, APP_V1, APP_V2, 2)
    other = approve(2, APP_V2, APP_V1, 1)
    post, recorded = admit_app_approvals(state, [back, other, first, first], 1)
    assert recorded == (first, back, other) or recorded == (other, first, back)
    assert post.participants[first.public_key].app_approvals == 2
    again, none = admit_app_approvals(post, [first, back, other], 1)
    assert none == () and again == post
