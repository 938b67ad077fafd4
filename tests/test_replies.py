"""What a client sends, against the one parser and the coordinator's admission.

Two kinds of test. In process, through the real ServerApp logic and ClientApp (as
tests/test_rounds.py): hostile clients that would once have stopped the federation
(``num-examples=inf`` raised OverflowError, an int for the commitment bytes MemoryError, a lying
``.npy`` header MemoryError) or smeared another participant (a replayed public commitment bound
the replaying node to the victim's key, so its refusals and its own error text went on the
ledger against the victim). And property tests (hypothesis): arbitrary records through
:func:`server.strategy.compute_client_reply` into a real Coordinator over a real Chain.
"""

from __future__ import annotations

import logging
import math
import struct
import tempfile
import types
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clients import client_app as real_client
from fedchain.aggregation.rules import RuleParams
from fedchain.config import RunConfig
from fedchain.crypto.hashing import compute_update_hash
from fedchain.crypto.identity import public_key_bytes
from fedchain.ledger.builder import sign_attestation, sign_commitment, sign_header
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.objects import (
    Attestation,
    Block,
    Rejection,
    SlashingEvidence,
    UpdateCommitment,
)
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds.admission import (
    MAX_REASON_CHARS,
    ClientReply,
    compute_printable,
    quote_client_text,
)
from fedchain.rounds.coordinator import Coordinator
from fedchain.rounds.messages import MAX_LEDGER_FIELD_BYTES
from fedchain.runs.prepare import prepare_run
from server.inprocess_grid import NODE_BASE
from server.strategy import (
    compute_client_reply,
    compute_error_reason,
    parse_reply,
)

FLOWER_LOGGER.setLevel(logging.ERROR)
FAST = {"aggregation": "fedavg", "contribution": "none"}


def ledger_transactions(run_dir: Path) -> list[object]:
    with LedgerStore.open(run_dir / "ledger.db", readonly=True) as store:
        return [tx for s in store.iter_blocks() for tx in decode(Block, s.data).transactions]


def named_key(tx: Rejection | SlashingEvidence) -> bytes:
    return tx.public_key if isinstance(tx, Rejection) else tx.offender


def npy(header: str, body: bytes = b"\0" * 16) -> bytes:
    """A ``.npy`` file with any header text (numpy writes only honest ones)."""
    text = header.encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


LYING_HEADER = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (10**15,), }")
LYING_HEADER_LITERAL = npy(
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000000,), }"
)
UNPARSABLE_HEADER = npy("(" * 300)
HOSTILE_LINE = '\x1b[2J[/bold][link=https://x]click[/link] "coordinator: slash alice"\t'
HOSTILE_TEXT = HOSTILE_LINE + "\n" + HOSTILE_LINE + "A" * 5000  # what is kept: kind, last line


# -- in process: hostile values in a real federation ---------------------------------------------


def hostile(kind: str) -> ClientApp:
    """The real client, then one hostile value put into its train reply."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context):  # type: ignore[no-untyped-def]
        if kind == "error-text" and int(msg.content["config"]["server-round"]) >= 2:
            raise RuntimeError(HOSTILE_TEXT)
        content = real_client.train(msg, context).content
        record, metrics = dict(content["fedchain"]), dict(content["metrics"])
        arrays = dict(content["arrays"])
        first = next(iter(arrays))
        if kind == "examples-inf":
            metrics["num-examples"] = math.inf
        elif kind == "checkpoint-inf":
            record["checkpoint"] = math.inf
        elif kind == "commitment-int":
            record["commitment"] = 10**12
        elif kind in ("lying-header", "unparsable-header"):
            data = LYING_HEADER_LITERAL if kind == "lying-header" else UNPARSABLE_HEADER
            real = arrays[first]
            arrays[first] = Array(real.dtype, tuple(real.shape), real.stype, data)
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(arrays),
                    "metrics": MetricRecord(metrics),
                    "fedchain": ConfigRecord(record),
                }
            ),
            reply_to=msg,
        )

    @app.query()
    def query(msg: Message, context):  # type: ignore[no-untyped-def]
        return real_client.seal_and_attest(msg, context)

    return app


KINDS = ["examples-inf", "checkpoint-inf", "commitment-int", "lying-header", "unparsable-header"]
EXPECTED = {
    "examples-inf": "num-examples is inf",
    "checkpoint-inf": "checkpoint is inf",
    "commitment-int": "commitment is 1000000000000",
    "lying-header": "not a .npy array",
    "unparsable-header": "not a .npy array",
}


def test_invalid_values_are_refused_on_record_and_the_rounds_go_on(inprocess_federation, tmp_path):
    """Each hostile client once stopped the round loop (OverflowError, MemoryError, TokenError)
    before round 1 was recorded; now each is one refusal and the honest clients carry on."""
    apps = lambda i: hostile(KINDS[i]) if i < len(KINDS) else real_client.app  # noqa: E731
    fed = inprocess_federation(tmp_path, apps, clients=len(KINDS) + 2, rounds=2, **FAST).run()
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    assert [o.accepted for o in fed.outcomes] == [2, 2]
    rejections = {
        (tx.public_key, tx.round): tx.reason
        for tx in ledger_transactions(fed.setup.run_dir)
        if isinstance(tx, Rejection)
    }
    for i, kind in enumerate(KINDS):
        key = fed.setup.public_keys[i]
        for outcome in fed.outcomes:
            (decision,) = [d for d in outcome.decisions if d.node_id == NODE_BASE + i]
            assert not decision.accepted and EXPECTED[kind] in decision.reason, decision
            if kind == "commitment-int":  # no readable commitment: it never showed a key
                assert decision.public_key is None and (key, outcome.round) not in rejections
            else:  # a fresh commitment names its sender: the refusal is on the record
                assert decision.public_key == key
                assert EXPECTED[kind] in rejections[(key, outcome.round)]


def test_invalid_error_text_is_quoted_escaped_and_capped(inprocess_federation, tmp_path):
    """Round 1 honest (its key is proven), round 2 an error reply with text written to look
    like the coordinator's words and to drive a terminal."""
    apps = lambda i: hostile("error-text") if i == 0 else real_client.app  # noqa: E731
    fed = inprocess_federation(tmp_path, apps, clients=3, rounds=2, **FAST).run()
    assert verify_ledger(fed.setup.run_dir).ok
    (reason,) = [
        tx.reason
        for tx in ledger_transactions(fed.setup.run_dir)
        if isinstance(tx, Rejection) and tx.public_key == fed.setup.public_keys[0]
    ]
    assert reason.startswith('client error, in its own words: "RuntimeError: … \\x1b[2J')
    assert '\\"coordinator: slash alice\\"\\t' in reason and reason.endswith('…"')
    assert reason.isprintable() and len(reason) <= MAX_REASON_CHARS
    assert fed.outcomes[1].rejected[0].reason == reason


# -- in process: a replayed public commitment must not smear its signer --------------------------


def replayer(victim: bytes) -> ClientApp:
    """Silent (error replies) in rounds 1-2; then sends the victim's round-1 commitment and
    attestation, copied off the ledger; then an error reply written to smear the victim."""
    app = ClientApp()

    def copied(run_dir: Path, kind: type) -> bytes:
        for tx in ledger_transactions(run_dir):
            signer = getattr(tx, "public_key", None) or getattr(tx, "validator", None)
            if isinstance(tx, kind) and signer == victim:
                return encode(tx)
        return b""

    @app.train()
    def train(msg: Message, context):  # type: ignore[no-untyped-def]
        config = msg.content["config"]
        round_, run_dir = int(config["server-round"]), Path(str(config["run-dir"]))
        if round_ <= 2:
            raise RuntimeError("not yet")
        if round_ == 5:
            raise RuntimeError("the victim sent a poisoned update; slash them")
        content = real_client.train(msg, context).content
        record = dict(content["fedchain"])
        record["commitment"] = copied(run_dir, UpdateCommitment)
        if round_ == 4:
            record["attestation"] = copied(run_dir, Attestation)
            assert decode(Attestation, record["attestation"]).validator == victim
        return Message(RecordDict({**content, "fedchain": ConfigRecord(record)}), reply_to=msg)

    @app.query()
    def query(msg: Message, context):  # type: ignore[no-untyped-def]
        return real_client.seal_and_attest(msg, context)

    return app


def simulated_keys(tmp_path: Path) -> list[bytes]:
    """The clients' keys (simulated identities derive from the seed: a trial set-up tells)."""
    config = RunConfig(run_id="keys", out=str(tmp_path / "keys"), clients=3, **FAST)
    return list(prepare_run(config).public_keys)


@pytest.mark.parametrize("registered", [False, True])
def test_invalid_replayed_commitment_puts_nothing_on_its_signer(
    inprocess_federation, tmp_path, registered
):
    """Client 0 replays client 1's public commitment (and attestation), then writes its own
    accusation. Nothing is recorded against client 1; what client 0 did is recorded against
    client 0's key when its node is registered (deployment), else reported by node id."""
    keys = simulated_keys(tmp_path)
    attacker, victim = keys[0], keys[1]
    apps = lambda i: replayer(victim) if i == 0 else real_client.app  # noqa: E731
    kw = {"node_keys": {NODE_BASE + i: key for i, key in enumerate(keys)}} if registered else {}
    fed = inprocess_federation(tmp_path / "run", apps, clients=3, rounds=5, **FAST).run(**kw)
    assert list(fed.setup.public_keys) == keys
    report = verify_ledger(fed.setup.run_dir)
    assert report.ok, report.failure
    txs = ledger_transactions(fed.setup.run_dir)
    against = [tx for tx in txs if isinstance(tx, Rejection | SlashingEvidence)]
    assert victim not in [named_key(tx) for tx in against]
    commits = [
        tx.round for tx in txs if isinstance(tx, UpdateCommitment) and tx.public_key == victim
    ]
    assert commits == [1, 2, 3, 4, 5]
    decisions = [d for o in fed.outcomes for d in o.decisions if d.node_id == NODE_BASE]
    assert len(decisions) == 5 and not any(d.accepted for d in decisions)
    assert all("commitment refused" in d.reason for d in decisions[2:4])
    assert "in its own words" in decisions[4].reason and "slash them" in decisions[4].reason
    rejected = sorted(tx.round for tx in against if isinstance(tx, Rejection))
    if registered:  # the sender is its registered key, whatever it copied
        assert {d.public_key for d in decisions} == {attacker} and rejected == [1, 2, 3, 4, 5]
    else:  # never proved a key: nothing on the ledger, the node id in the outcome
        assert {d.public_key for d in decisions} == {None} and rejected == []


# -- the parser and the coordinator, property-based ------------------------------------------------

MODEL = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
HONEST, MALLORY = (0, 1), 2  # participant indices of the synthetic federation
RUN_ID = "synthetic"


@cache
def world():  # type: ignore[no-untyped-def]
    """One synthetic federation after round 1 (deterministic, so built once): the genesis,
    block 1, the round-2 base model, and the byte strings a hostile client could copy."""
    base = {k: v + np.float32(0.5) for k, v in MODEL.items()}
    federation = SyntheticFederation(
        3, initial_model_hash=compute_update_hash(MODEL), run_id=RUN_ID
    )
    with (
        tempfile.TemporaryDirectory() as tmp,
        Chain.create(Path(tmp) / "l", federation.genesis) as c,
    ):
        block1, state1 = federation.make_round(c.state, model_hash=compute_update_hash(base))
    genesis_hash = state1.genesis_hash
    keys = federation.keys

    def update(i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(i)
        return {k: rng.normal(size=v.shape).astype(np.float32) for k, v in MODEL.items()}

    def commitment(i: int, round_: int = 2) -> bytes:
        return encode(
            sign_commitment(
                keys[i],
                genesis_hash,
                run_id=RUN_ID,
                round=round_,
                base_model_hash=state1.model_head,
                update_hash=compute_update_hash(update(i)),
                num_examples=50,
            )
        )

    def attestation(i: int) -> bytes:
        attested = sign_attestation(keys[i], genesis_hash, height=1, block_hash=state1.head_hash)
        return encode(attested)

    stale = [encode(tx) for tx in block1.transactions if isinstance(tx, UpdateCommitment)]
    copyable = [  # what Mallory may hold: its own fresh signatures, anything public
        commitment(MALLORY),
        commitment(MALLORY, round_=3),
        *stale,
        attestation(MALLORY),
        attestation(HONEST[0]),  # valid and never recorded: an attestation claims no node
        commitment(MALLORY)[:-1],
        bytes(64),
        b"",
        b"\0" * (MAX_LEDGER_FIELD_BYTES + 1),
    ]
    return types.SimpleNamespace(
        federation=federation,
        block1=block1,
        state1=state1,
        base=base,
        update=update,
        commitment=commitment,
        attestation=attestation,
        copyable=copyable,
        sniffed=[commitment(i) for i in HONEST],  # only a network eavesdropper has these
        keys=[public_key_bytes(k) for k in keys],
    )


def honest_content(w, i: int) -> RecordDict:  # type: ignore[no-untyped-def]
    """An honest train reply; its tensors in another order than the model's."""
    update = w.update(i)
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(update[k]) for k in reversed(update)}),
            "metrics": MetricRecord({"num-examples": 50, "train-loss": 0.1}),
            "fedchain": ConfigRecord(
                {
                    "commitment": w.commitment(i),
                    "attestation": w.attestation(i),
                    "seal": b"",
                    "checkpoint": 1,
                }
            ),
        }
    )


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**12, 2**63 - 1, 2**63, -1, 0, 10**5000, 1e300]),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(["\ud800", "\x1b[31m", "[/bold]", "\u202e", "x" * 10_000]),
    st.binary(max_size=80),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
KEYS = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=10), st.binary(max_size=4))


@st.composite
def arrays(draw, w) -> object:  # type: ignore[no-untyped-def]
    """An ArrayRecord-like mapping: the right tensors, wrong ones, lying ones, junk."""
    good = {k: Array(v) for k, v in w.update(MALLORY).items()}
    odd = st.one_of(
        st.sampled_from(list(good.values())),
        st.builds(
            lambda dtype, shape: Array(np.zeros(shape, dtype)),
            st.sampled_from([np.float32, np.float64, np.int64, ">f4", np.bool_]),
            st.sampled_from([(2, 3), (3,), (6,), (), (3, 2), (0,)]),
        ),
        st.builds(
            lambda data, shape: Array("float32", shape, "numpy.ndarray", data),
            st.sampled_from(
                [LYING_HEADER, LYING_HEADER_LITERAL, UNPARSABLE_HEADER, b"", b"\x93NUMPY"]
            ),
            st.sampled_from([(2, 3), (3,)]),
        ),
        st.just(Array(np.asfortranarray(w.update(MALLORY)["w"]))),
        st.builds(types.SimpleNamespace, dtype=JUNK, shape=JUNK, stype=JUNK, data=JUNK),
        JUNK,
    )
    names = st.one_of(st.sampled_from(["w", "b", "c"]), KEYS)
    return draw(
        st.one_of(
            st.just(good),
            st.dictionaries(names, odd, max_size=4),
            st.builds(lambda n, v: {**good, n: v}, st.sampled_from(["w", "b", "extra"]), odd),
            JUNK,
        )
    )


@st.composite
def contents(draw, w, copyable: list[bytes]) -> object:  # type: ignore[no-untyped-def]
    """What a hostile client may put in a reply: any mix of fields, values and records."""
    ledger_value = st.one_of(st.sampled_from(copyable), JUNK)
    names = st.sampled_from(["commitment", "attestation", "seal", "checkpoint"])
    fields = st.dictionaries(
        st.one_of(names, st.text(max_size=8)),
        ledger_value,
        max_size=5,
    )
    metrics = st.dictionaries(
        st.sampled_from(["num-examples", "train-loss", "other"]),
        st.one_of(st.just(50), JUNK),
        max_size=3,
    )
    records = st.fixed_dictionaries(
        {},
        optional={
            "fedchain": st.one_of(fields, JUNK),
            "metrics": st.one_of(metrics, JUNK),
            "arrays": arrays(w),
            "other": JUNK,
        },
    )
    valid = {name: dict(record) for name, record in honest_content(w, MALLORY).items()}
    field = st.one_of(ledger_value, JUNK)
    one_wrong = st.one_of(  # Mallory's own good reply with one record or one field replaced
        st.builds(lambda k, v: {**valid, k: v}, st.sampled_from(list(valid)), JUNK),
        st.builds(lambda k, v: {**valid, "fedchain": {**valid["fedchain"], k: v}}, names, field),
        st.builds(lambda v: {**valid, "metrics": {"num-examples": v}}, JUNK),
        st.builds(lambda v: {**valid, "arrays": v}, arrays(w)),
    )
    return draw(st.one_of(st.just(valid), one_wrong, records, JUNK))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_parser_is_total(data):
    w = world()
    content = data.draw(contents(w, w.copyable + w.sniffed))
    model = data.draw(st.sampled_from([w.base, None]))
    reply = compute_client_reply(7, content, model)
    assert isinstance(reply, ClientReply) and reply.node_id == 7
    assert reply.error.isprintable() and len(reply.error) < 1000
    for field in (reply.commitment, reply.attestation, reply.seal):
        assert type(field) is bytes and len(field) <= MAX_LEDGER_FIELD_BYTES
    assert type(reply.checkpoint) is int and 0 <= reply.checkpoint < 2**63
    assert type(reply.num_examples) is int and 0 <= reply.num_examples < 2**63
    if reply.update is not None:
        assert not reply.error and list(reply.update) in (["w", "b"], ["b", "w"])
        for name, array in reply.update.items():
            assert array.dtype == w.base[name].dtype and array.shape == w.base[name].shape


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_round_with_hostile_replies_goes_on_and_records_them(tmp_path_factory, data):
    """Mallory's replies (any records, or error replies with any text), beside two honest
    clients, in a real Coordinator round over a real Chain: the round completes, both honest
    updates are accepted, Mallory's replies each get a decision, nothing names an honest key,
    and the block seals. Mallory's node is registered (deployment) or not (simulation)."""
    w = world()
    chain, coordinator = open_round_2(tmp_path_factory.mktemp("round"))
    with chain:
        nodes = st.lists(st.sampled_from([0, 5, 99]), min_size=1, max_size=3, unique=True)
        mallory_nodes = data.draw(nodes)
        copyable = w.copyable
        if data.draw(st.booleans()):  # registered: then even a fresh copy is Mallory's doing
            coordinator.node_keys.update({n: w.keys[MALLORY] for n in mallory_nodes})
            copyable = copyable + w.sniffed
        replies = [compute_client_reply(10 + i, honest_content(w, i), w.base) for i in HONEST]
        for node in mallory_nodes:
            if data.draw(st.booleans()):
                content = data.draw(contents(w, copyable))
                replies.append(compute_client_reply(node, content, w.base))
            else:
                text = data.draw(st.one_of(st.text(), JUNK))
                replies.append(ClientReply(node, error=compute_error_reason(text)))
        replies = data.draw(st.permutations(replies))

        outcome = coordinator.run_round(2, replies)

        by_node = {d.node_id: d for d in outcome.decisions}
        assert len(outcome.decisions) == len(replies)
        assert all(by_node[10 + i].accepted for i in HONEST)
        honest = {w.keys[i] for i in HONEST}
        pending = coordinator.pending
        assert pending is not None
        against = [
            tx for tx in pending.transactions if isinstance(tx, Rejection | SlashingEvidence)
        ]
        assert not honest & {named_key(tx) for tx in against}
        for node in mallory_nodes:
            decision = by_node[node]
            shown = "shown" if decision.public_key else "unknown"
            event(f"Mallory {'accepted' if decision.accepted else 'refused'}, key {shown}")
            assert decision.public_key in (None, w.keys[MALLORY])
            assert coordinator.node_keys.get(node) in (None, w.keys[MALLORY])
        proposer = w.federation.by_public[pending.header.proposer]
        seal = sign_header(proposer, w.state1.genesis_hash, pending.header).signature
        assert coordinator.seal_from([ClientReply(1, seal=seal)])
        assert chain.state.height == 2


@given(st.text(), st.integers(min_value=2, max_value=300))
def test_client_text_is_printable_and_capped(text, limit):
    quoted = quote_client_text(text, limit)
    assert quoted.isprintable() and quoted.startswith('"') and quoted.endswith('"')
    assert len(quoted) <= limit + 2
    quoted.encode("utf-8")  # a lone surrogate would fail here, and in the ledger's encoding
    assert compute_printable(compute_printable(text, 400), 400) == compute_printable(text, 400)


def test_parse_reply_reads_an_honest_flower_reply_as_before():
    """The same arrays, bit for bit and in the sender's order, as Flower's own decoder."""
    w = world()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # FLOWER.md
    content = honest_content(w, HONEST[0])
    reply = parse_reply(Message(content, 3, "train"), 3, w.base)
    assert not reply.error and reply.num_examples == 50 and reply.checkpoint == 1
    expected = {k: a.numpy() for k, a in content["arrays"].items()}
    assert list(reply.update) == list(expected)  # type: ignore[arg-type]
    for name, array in expected.items():
        assert reply.update[name].tobytes() == array.tobytes()  # type: ignore[index]
        assert reply.update[name].flags.c_contiguous and reply.update[name].flags.writeable  # type: ignore[index]


def open_round_2(run_dir: Path):  # type: ignore[no-untyped-def]
    """A real Coordinator over a real Chain holding the synthetic round 1, before round 2."""
    w = world()
    chain = Chain.create(run_dir / "ledger.db", w.federation.genesis)
    chain.append(w.block1, w.state1)
    return chain, Coordinator(run_dir, chain, w.base, rule="fedavg", params=RuleParams())


def test_invalid_attestation_does_not_claim_a_node(tmp_path):
    """A valid attestation that never reached the ledger (it names a block, not a round or a
    node, so whoever saw it could carry it) is recorded as its signer's vote, but the node that
    carried it is not taken for its signer: its refusal is on nobody's key."""
    w = world()
    victim = w.keys[HONEST[0]]
    stale = next(c for c in w.copyable if decode(UpdateCommitment, c).public_key == victim)
    chain, coordinator = open_round_2(tmp_path)
    with chain:
        carried = ClientReply(99, attestation=w.attestation(HONEST[0]), commitment=stale)
        outcome = coordinator.run_round(2, [carried])
        assert coordinator.pending is not None
        txs = coordinator.pending.transactions
        assert [tx.validator for tx in txs if isinstance(tx, Attestation)] == [victim]
        assert not [tx for tx in txs if isinstance(tx, Rejection)]
        (decision,) = outcome.decisions
        assert decision.public_key is None and "commitment refused" in decision.reason
        assert coordinator.node_for(victim) is None


def test_error_reason_keeps_the_exception_message_of_a_traceback():
    """A ClientApp failing under Ray replies with a whole traceback (colour codes included);
    the ledger keeps its kind and the exception's message, not the first 120 characters of
    the traceback's frames."""
    traceback = (
        "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1, ip=127.0.0.1)\n"
        + '  File "/x/y/z.py", line 10, in run\n    do()\n' * 20
        + "fedchain.errors.ConfigError: lr must be finite, got inf"
    )
    reason = compute_error_reason(traceback)
    assert "lr must be finite, got inf" in reason
    assert "\x1b" not in reason and "\n" not in reason
