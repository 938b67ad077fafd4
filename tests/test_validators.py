"""Validators check what they sign (DESIGN.md §7.2): fedchain.rounds.replica and the real ClientApp.

Pre -> op -> post, with the coordinator as the attacker:

* pure: a synthetic federation's replica (blocks 0..2) and its next block as the pending one;
  the coordinator changes its body or header; :func:`compute_pending_post_state` and
  :func:`extend_replica` must refuse, naming what does not re-derive;
* in process: a prepared run, a real coordinator and strategy, the real ClientApp; after round 1
  the coordinator presents block 1 with other contents than its header commits to: no honest
  client attests or seals, each says why, and the block is never appended;
* deployment: clients whose node config names a folder for their replica run a federation, then
  restart (a fresh context, a fresh process memo) and are shown a history that rewrites or cuts
  their final block: refused from what their disk holds.

Negative cases are named ``test_invalid_*``.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

import fedchain.ledger.genesis as genesis_module
import fedchain.rounds.replica as replica_module
from clients import client_app, replica_store
from fedchain.config import RunConfig
from fedchain.crypto.identity import load_identity, public_key_bytes
from fedchain.errors import FedchainError, InvalidBlock
from fedchain.ledger.builder import build_block
from fedchain.ledger.checkpoints import load_checkpoint
from fedchain.ledger.codec import compute_hash, decode, encode
from fedchain.ledger.consensus import get_proposer
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_block_hash, compute_federation_id, compute_tx_root
from fedchain.ledger.genesis import compute_genesis_block, compute_genesis_state
from fedchain.ledger.objects import (
    Block,
    BlockHeader,
    ContributionRecord,
    Genesis,
    RewardDeltas,
    Transaction,
)
from fedchain.ledger.state import process_block
from fedchain.ledger.store import LedgerStore
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds import messages as m
from fedchain.rounds.coordinator import Coordinator
from fedchain.rounds.replica import (
    KnownBlock,
    Replica,
    compute_genesis_replica,
    compute_pending_post_state,
    extend_replica,
    replay_replica,
)
from fedchain.runs.layout import (
    HOLDER_CHECKPOINT_FILENAME,
    LEDGER_FILENAME,
    client_data_path,
    client_key_path,
    data_key_path,
)
from fedchain.runs.prepare import RunSetup, prepare_run
from fedchain.runs.session import open_session
from server.inprocess_grid import NODE_BASE, InProcessGrid
from server.strategy import FedchainStrategy, parse_reply, to_array_record

Txs = tuple[Transaction, ...]
Forgery = Callable[[BlockHeader, Txs], tuple[BlockHeader, Txs]]


# -- the forgeries: (header, transactions) -> what the coordinator presents instead -------------


def _replace_tx(txs: tuple[Transaction, ...], kind: type, change: Callable[[Any], Any]) -> tuple:
    return tuple(change(tx) if isinstance(tx, kind) else tx for tx in txs)


def extra_reward(header, txs):  # type: ignore[no-untyped-def]
    """One more base unit to the first key paid."""

    def pay(tx: RewardDeltas) -> RewardDeltas:
        (key, amount), *rest = tx.deltas
        return RewardDeltas(tx.round, ((key, amount + 1), *rest))

    return header, _replace_tx(txs, RewardDeltas, pay)


def forged_penalty(header, txs):  # type: ignore[no-untyped-def]
    """A penalty with no evidence: the last key paid loses 500 instead."""

    def penalise(tx: RewardDeltas) -> RewardDeltas:
        *rest, (key, _) = tx.deltas
        return RewardDeltas(tx.round, (*rest, (key, -500)))

    return header, _replace_tx(txs, RewardDeltas, penalise)


def changed_score(header, txs):  # type: ignore[no-untyped-def]
    """The first recorded score doubled."""

    def double(tx: ContributionRecord) -> ContributionRecord:
        (key, score), *rest = tx.scores
        return ContributionRecord(tx.round, ((key, 2 * score + 1), *rest))

    return header, _replace_tx(txs, ContributionRecord, double)


def wrong_state_root(header, txs):  # type: ignore[no-untyped-def]
    """The honest transactions under a header that commits to another state."""
    return dataclasses.replace(header, state_root=bytes(32)), txs


def dropped_transaction(header, txs):  # type: ignore[no-untyped-def]
    """The header's transactions minus the first one (an attestation: the rest still applies;
    dropping the RewardDeltas instead fails earlier, a payment due left out)."""
    return header, txs[1:]


FORGERIES = [extra_reward, forged_penalty, changed_score, wrong_state_root, dropped_transaction]


# -- pure: the replica and the pending block --------------------------------------------------


@pytest.fixture(scope="module")
def chain(synthetic_federation: SyntheticFederation) -> list[tuple[Block, LedgerState]]:
    """Blocks 0..3 of the shared synthetic federation with the state after each."""
    genesis = synthetic_federation.genesis
    state = compute_genesis_state(genesis)
    blocks = [(compute_genesis_block(genesis), state)]
    for _ in range(3):
        block, state = synthetic_federation.make_round(state)
        blocks.append((block, state))
    return blocks


def replica_at(chain: list[tuple[Block, LedgerState]], height: int) -> Replica:
    return replay_replica(tuple(encode(b) for b, _ in chain[: height + 1]))


def test_the_honest_pending_block_re_derives_to_the_state_its_seal_leads_to(chain) -> None:
    block, post = chain[3]
    pre = chain[2][1]
    derived = compute_pending_post_state(pre, block.header, block.transactions)
    assert derived == post == process_block(pre, block)


@pytest.mark.parametrize("forge", FORGERIES, ids=lambda f: f.__name__)
def test_invalid_a_pending_block_whose_body_differs_from_its_header(chain, forge) -> None:
    block = chain[3][0]
    header, txs = forge(block.header, block.transactions)
    with pytest.raises(InvalidBlock, match="pending block 3"):
        compute_pending_post_state(chain[2][1], header, txs)


def test_invalid_the_pending_block_names_the_root_that_does_not_re_derive(chain) -> None:
    block = chain[3][0]
    with pytest.raises(InvalidBlock, match="state_root"):
        compute_pending_post_state(chain[2][1], *wrong_state_root(block.header, block.transactions))
    with pytest.raises(InvalidBlock, match="tx_root"):
        compute_pending_post_state(
            chain[2][1], *dropped_transaction(block.header, block.transactions)
        )


def test_invalid_a_pending_block_that_does_not_extend_the_replicas_head(chain) -> None:
    block = chain[2][0]  # block 2, presented to a replica already at block 2
    with pytest.raises(InvalidBlock, match="height"):
        compute_pending_post_state(chain[2][1], block.header, block.transactions)


def test_a_first_view_replays_from_genesis_and_later_views_only_the_new_blocks(chain) -> None:
    genesis_hash = chain[0][1].genesis_hash
    first = extend_replica(None, [b for b, _ in chain[:2]], genesis_hash)
    assert first == replica_at(chain, 1)
    later = extend_replica(first, [b for b, _ in chain[1:]], genesis_hash)  # from its checkpoint
    assert later == replica_at(chain, 3)
    assert replay_replica(later.encodings) == later  # what a restarted client reads back


def test_invalid_a_first_view_that_does_not_start_at_the_federations_genesis(chain) -> None:
    genesis_hash = chain[0][1].genesis_hash
    with pytest.raises(InvalidBlock, match="must start at the genesis block"):
        extend_replica(None, [b for b, _ in chain[1:]], genesis_hash)
    with pytest.raises(InvalidBlock, match="federation"):
        compute_genesis_replica(chain[0][0], b"\x01" * 32)


def test_invalid_a_view_that_rewrites_a_block_the_replica_holds(
    chain, synthetic_federation: SyntheticFederation
) -> None:
    genesis_hash = chain[0][1].genesis_hash
    other, _ = synthetic_federation.make_round(chain[1][1], committers=1)  # another block 2
    with pytest.raises(InvalidBlock, match="not the block 2 this client replayed"):
        extend_replica(replica_at(chain, 2), [chain[1][0], other], genesis_hash)


def test_invalid_a_view_that_cuts_the_replica_short_or_skips_blocks(chain) -> None:
    genesis_hash = chain[0][1].genesis_hash
    with pytest.raises(InvalidBlock, match="cut short"):
        extend_replica(replica_at(chain, 3), [chain[1][0], chain[2][0]], genesis_hash)
    with pytest.raises(InvalidBlock, match="skips from block 1 to block 3"):
        extend_replica(replica_at(chain, 1), [chain[3][0]], genesis_hash)


def test_invalid_a_block_the_ledger_refuses_is_not_replayed(chain) -> None:
    block = chain[2][0]
    unsigned = Block(
        dataclasses.replace(block.signed_header, signature=bytes(64)), block.transactions
    )
    with pytest.raises(InvalidBlock, match="block 2"):
        extend_replica(replica_at(chain, 1), [unsigned], chain[0][1].genesis_hash)


def test_blocks_the_replica_holds_may_come_without_their_bodies(chain) -> None:
    """What a coordinator sends a node that has attested past them: the header decides."""
    genesis_hash = chain[0][1].genesis_hash
    stubs = [Block(b.signed_header, ()) for b, _ in chain[:3]]
    assert extend_replica(replica_at(chain, 2), [*stubs, chain[3][0]], genesis_hash) == (
        replica_at(chain, 3)
    )


def test_invalid_a_block_without_its_body_that_the_replica_does_not_hold(chain) -> None:
    stub = Block(chain[2][0].signed_header, ())
    with pytest.raises(InvalidBlock, match="tx_root"):
        extend_replica(replica_at(chain, 1), [stub], chain[0][1].genesis_hash)


def test_known_states_skip_re_execution_but_never_a_check(chain) -> None:
    """The speed-up clients of one process share: a state known by (genesis, block hash) is
    reused only for a block of that hash, with a body of its root and a valid seal."""
    genesis_hash = chain[0][1].genesis_hash
    block = chain[3][0]
    known: dict[tuple[bytes, bytes], KnownBlock] = {}
    post = compute_pending_post_state(chain[2][1], block.header, block.transactions, known=known)
    key = (genesis_hash, compute_block_hash(block))
    assert known == {key: KnownBlock(post, block.transactions)}
    assert (
        compute_pending_post_state(chain[2][1], block.header, block.transactions, known=known)
        is post
    )
    for header, txs in (f(block.header, block.transactions) for f in FORGERIES):
        with pytest.raises(InvalidBlock, match="pending block 3"):
            compute_pending_post_state(chain[2][1], header, txs, known=known)
    sealed = extend_replica(replica_at(chain, 2), [block], genesis_hash, known=known)
    assert sealed == replica_at(chain, 3) and sealed.state is post
    unsealed = Block(
        dataclasses.replace(block.signed_header, signature=bytes(64)), block.transactions
    )
    other_body = Block(
        block.signed_header, dropped_transaction(block.header, block.transactions)[1]
    )
    for bad in (unsealed, other_body):
        with pytest.raises(InvalidBlock, match="block 3"):
            extend_replica(replica_at(chain, 2), [bad], genesis_hash, known=known)
    # the sealed block's signature checked once: kept with the entry, which still refuses both
    assert known[key] == KnownBlock(post, block.transactions, block.signed_header)
    assert extend_replica(replica_at(chain, 2), [block], genesis_hash, known=known) == sealed
    # an entry kept without its body (a stored replica's head) checks the body by its root
    known[key] = KnownBlock(post)
    for bad in (unsealed, other_body):
        with pytest.raises(InvalidBlock, match="block 3"):
            extend_replica(replica_at(chain, 2), [bad], genesis_hash, known=known)
    assert extend_replica(replica_at(chain, 2), [block], genesis_hash, known=known) == sealed


def test_known_bodies_compare_by_value_not_only_by_identity(chain) -> None:
    """A body decoded afresh from the same bytes is the known body; one transaction changed
    in a single field is not, and the block is then checked in full (and refused)."""
    genesis_hash = chain[0][1].genesis_hash
    block = chain[3][0]
    known: dict[tuple[bytes, bytes], KnownBlock] = {}
    extend_replica(replica_at(chain, 2), [block], genesis_hash, known=known)
    again = decode(Block, encode(block))
    assert again.transactions is not block.transactions
    assert extend_replica(replica_at(chain, 2), [again], genesis_hash, known=known).state is (
        known[(genesis_hash, compute_block_hash(block))].state
    )
    _, txs = changed_score(block.header, block.transactions)
    changed = Block(block.signed_header, txs)
    with pytest.raises(InvalidBlock, match="block 3"):
        extend_replica(replica_at(chain, 2), [changed], genesis_hash, known=known)


def with_bad_registration(block: Block) -> Block:
    """Block 0 of the same genesis with one registration's signature changed (one bit), and the
    header re-derived for it, so that only the signature check can refuse it."""
    genesis = block.transactions[0]
    assert isinstance(genesis, Genesis)
    entry = genesis.participants[1]
    forged = dataclasses.replace(
        entry, signature=bytes([entry.signature[0] ^ 1]) + entry.signature[1:]
    )
    participants = (genesis.participants[0], forged, *genesis.participants[2:])
    bad = dataclasses.replace(genesis, participants=participants)
    header = dataclasses.replace(block.header, tx_root=compute_tx_root((bad,)))
    return Block(dataclasses.replace(block.signed_header, header=header), (bad,))


def test_a_genesis_block_is_checked_once(chain, monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[object] = []
    real = genesis_module._check_genesis
    monkeypatch.setattr(genesis_module, "_check_genesis", lambda g: checks.append(g) or real(g))
    state = genesis_module.process_genesis_block(chain[0][0])
    assert state == chain[0][1] and len(checks) == 1


def test_genesis_states_skip_the_registration_checks_only_for_the_same_bytes(
    chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first-view speed-up clients of one process share: a genesis state is reused only for
    block 0 of exactly the bytes that were checked; one changed signature is checked, refused."""
    good = chain[0][0]
    genesis_hash = chain[0][1].genesis_hash
    processed: list[Block] = []
    real = replica_module.process_genesis_block
    monkeypatch.setattr(
        replica_module, "process_genesis_block", lambda b: processed.append(b) or real(b)
    )
    geneses: dict[bytes, LedgerState] = {}
    first = extend_replica(None, [b for b, _ in chain[:2]], genesis_hash, geneses=geneses)
    second = extend_replica(None, [b for b, _ in chain[:2]], genesis_hash, geneses=geneses)
    assert first == second == extend_replica(None, [b for b, _ in chain[:2]], genesis_hash)
    assert processed == [good, good]  # the first two views with the mapping: one check
    assert len(geneses) == 1 and second.state is not None
    bad = with_bad_registration(good)
    for cached in ({}, geneses):  # refused with nothing cached, and after the good one was
        with pytest.raises(InvalidBlock, match="registration is not signed"):
            compute_genesis_replica(bad, compute_hash(bad.transactions[0]), geneses=cached)
        with pytest.raises(InvalidBlock, match="registration is not signed"):
            replay_replica([encode(bad)], geneses=cached)
    assert len(geneses) == 1  # nothing refused is remembered
    resealed = Block(
        dataclasses.replace(good.signed_header, signature=bytes(64)), good.transactions
    )
    with pytest.raises(InvalidBlock, match="not the canonical genesis block"):
        compute_genesis_replica(resealed, genesis_hash, geneses=geneses)
    assert replay_replica([encode(good)], geneses=geneses).state is geneses[next(iter(geneses))]


# -- in process: the real ClientApp, coordinator and strategy ------------------------------------

CLIENTS = 3


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> RunSetup:
    out = tmp_path_factory.mktemp("validators")
    config = RunConfig(run_id="v", out=str(out), clients=CLIENTS, rounds=2, model="mlp")
    return prepare_run(config)


@dataclasses.dataclass
class World:
    setup: RunSetup
    coordinator: Coordinator
    strategy: FedchainStrategy
    grid: InProcessGrid
    settings: ConfigRecord

    def configure(self, round_: int) -> list[Message]:
        model = to_array_record(self.coordinator.model)
        return list(self.strategy.configure_train(round_, model, self.settings, self.grid))

    def train(self, round_: int):  # type: ignore[no-untyped-def]
        return self.strategy.aggregate_train(
            round_, self.grid.send_and_receive(self.configure(round_))
        )


@pytest.fixture
def world(prepared: RunSetup, tmp_path: Path) -> Iterator[World]:
    """Round 1 trained by the three real clients; block 1 waits for its seal."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(prepared.run_dir, run_dir)
    setup = dataclasses.replace(prepared, run_dir=run_dir)
    config = setup.config
    with open_session(config, run_dir) as session:
        coordinator = session.make_coordinator(session.initial_model())
        strategy = FedchainStrategy(coordinator, fraction_train=1.0, min_nodes=CLIENTS, timeout=5)
        settings = ConfigRecord(m.encode_train_settings(config, run_dir))
        world = World(
            setup, coordinator, strategy, InProcessGrid(client_app.app, CLIENTS), settings
        )
        world.train(1)
        assert coordinator.pending is not None and coordinator.pending.header.height == 1
        yield world


def present(coordinator: Coordinator, forge: Forgery) -> None:
    """The attacker: every view the coordinator sends shows ``forge``'s pending block."""
    honest = coordinator.ledger_view

    def forged_view(node_id: int) -> dict[str, object]:
        view = honest(node_id)
        pending = coordinator.pending
        if pending is not None:
            header, txs = forge(pending.header, pending.transactions)
            view[m.PENDING] = encode(header)
            view[m.PENDING_TRANSACTIONS] = [encode(tx) for tx in txs]
        return view

    coordinator.ledger_view = forged_view  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "forge",
    [extra_reward, forged_penalty, changed_score, wrong_state_root],
    ids=lambda f: f.__name__,
)
def test_invalid_no_honest_client_attests_or_seals_a_block_with_other_contents(
    world: World, forge: Forgery, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = world.coordinator
    before = {node: dict(c.state[m.REPLICA]) for node, c in world.grid.contexts.items()}
    present(coordinator, forge)
    replies = world.grid.send_and_receive(world.configure(2))
    read = [parse_reply(reply, model=coordinator.model) for reply in replies]
    assert len(read) == CLIENTS
    for reply in read:  # no attestation, no seal: each client refused and said why
        assert reply.attestation == reply.seal == b"" and reply.commitment == b""
        assert "pending block 1" in reply.error, reply.error
    with (
        caplog.at_level(logging.WARNING, logger="flwr"),
        pytest.raises(FedchainError, match="no validator sealed block 1"),
    ):
        world.strategy.aggregate_train(2, replies)  # the proposers asked again refuse again
    assert coordinator.state.height == 0  # never appended
    assert "round 2: node" in caplog.text and "pending block 1" in caplog.text  # the round log
    for node, context in world.grid.contexts.items():  # nothing moved on the clients either
        assert dict(context.state[m.REPLICA]) == before[node]


def test_the_honest_block_is_replayed_attested_and_sealed(world: World) -> None:
    pending = world.coordinator.pending
    assert pending is not None
    world.train(2)
    assert world.coordinator.state.height == 1
    for context in world.grid.contexts.values():
        encodings = m.decode_replica(context.state[m.REPLICA])
        assert len(encodings) == 1  # block 1 was pending: replayed next time it is shown
    for msg in world.configure(3):  # each node attested to block 1, so it holds block 0
        genesis, block_1 = m.decode_ledger_view(msg.content[m.CONFIG]).blocks
        assert genesis.transactions == () and block_1.transactions != ()
    world.train(3)
    assert world.coordinator.state.height == 2


# -- deployment: the replica on the holder's disk survives a restart ----------------------------


def deployed_node_config(setup: RunSetup, index: int, folder: Path) -> dict[str, Any]:
    run_dir = setup.run_dir
    return {
        "data-path": str(client_data_path(run_dir, index)),
        "identity-path": str(client_key_path(run_dir, index)),
        "data-key-path": str(data_key_path(run_dir)),
        "index": index,
        "replica-dir": str(folder / f"holder-{index}"),
        "federation-id": compute_federation_id(setup.genesis.run_id, setup.genesis.rules).hex(),
    }


def deployed_grid(setup: RunSetup, folder: Path) -> InProcessGrid:
    """The real ClientApp as deployed SuperNodes: holders configured by their node config (no
    partition id), each with its own replica folder; a fresh grid is a restart of all of them."""
    replica_store.forget_all()  # a new process holds nothing in memory
    grid = InProcessGrid(client_app.app, setup.config.clients)
    for node, context in grid.contexts.items():
        context.node_config = deployed_node_config(setup, node - NODE_BASE, folder)
    return grid


@pytest.fixture(scope="module")
def deployed(inprocess_federation, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A three-round federation of deployed holders; returns (setup, holders' folder)."""
    out = tmp_path_factory.mktemp("deployed")
    fed = inprocess_federation(out, clients=CLIENTS, rounds=3, model="mlp")
    fed.grid = deployed_grid(fed.setup, out / "holders")
    fed.run()
    return fed.setup, out / "holders"


def query(grid: InProcessGrid, setup: RunSetup, view: dict[str, object]) -> Message:
    config = ConfigRecord({**m.encode_train_settings(setup.config, setup.run_dir), **view})
    (reply,) = grid.send_and_receive(
        [Message(RecordDict({m.CONFIG: config}), NODE_BASE, MessageType.QUERY)]
    )
    return reply


def stored_blocks(setup: RunSetup) -> list[bytes]:
    with LedgerStore.open(setup.run_dir / LEDGER_FILENAME, readonly=True) as store:
        return [stored.data for stored in store.iter_blocks()]


def test_a_deployed_holder_keeps_a_verifiable_replica_and_checkpoint_on_disk(deployed) -> None:
    setup, folder = deployed
    holder = folder / "holder-0"
    report = verify_ledger(holder / LEDGER_FILENAME)
    assert report.ok, report.failure
    coordinator = stored_blocks(setup)
    assert [encode(decode(Block, b)) for b in coordinator[: report.blocks]] == coordinator[
        : report.blocks
    ]
    assert report.head_height >= 3  # every round's block
    genesis_hash, checkpoint = load_checkpoint(holder / HOLDER_CHECKPOINT_FILENAME)
    assert genesis_hash == report.genesis_hash and 1 <= checkpoint.height <= report.head_height
    head = decode(Block, coordinator[checkpoint.height]).header
    assert checkpoint.block_hash == compute_block_hash(head)


def test_a_restarted_holder_resumes_from_its_disk(deployed, tmp_path: Path) -> None:
    setup, folder = deployed
    blocks = stored_blocks(setup)
    grid = deployed_grid(setup, folder)
    _, checkpoint = load_checkpoint(folder / "holder-0" / HOLDER_CHECKPOINT_FILENAME)
    view = m.encode_ledger_view(
        verify_ledger(setup.run_dir).genesis_hash,
        setup.config.run_id,
        blocks[checkpoint.height :],  # only from its checkpoint: it must hold the rest itself
        checkpoint.height,
        None,
    )
    reply = query(grid, setup, view)
    assert not reply.has_error(), reply.error.reason


def forged_history(setup: RunSetup) -> list[Block]:
    """Another block 1 (empty, round 1), signed by the key drawn for it: a coordinator holding
    a simulated run's keys can sign it, but it is not the block 1 the holders saw final."""
    genesis = compute_genesis_block(setup.genesis)
    state = compute_genesis_state(setup.genesis)
    keys = [load_identity(client_key_path(setup.run_dir, i), None) for i in range(CLIENTS)]
    proposer = next(k for k in keys if public_key_bytes(k) == get_proposer(state))
    block, _ = build_block(state, [], proposer, round=1)
    return [genesis, block]


def test_invalid_a_restarted_holder_refuses_a_view_that_rewrites_its_final_block(
    deployed, tmp_path: Path
) -> None:
    setup, folder = deployed
    genesis_hash = verify_ledger(setup.run_dir).genesis_hash
    view = m.encode_ledger_view(genesis_hash, setup.config.run_id, forged_history(setup), 0, None)
    reply = query(deployed_grid(setup, folder), setup, view)
    assert reply.has_error() and "history it holds cannot be rewritten" in reply.error.reason
    # the same view to a holder with nothing on disk is accepted: the disk is what refused it
    fresh = deployed_grid(setup, tmp_path / "empty")
    assert not query(fresh, setup, view).has_error()


def test_invalid_a_restarted_holder_refuses_a_view_cut_below_what_it_replayed(deployed) -> None:
    setup, folder = deployed
    genesis_hash = verify_ledger(setup.run_dir).genesis_hash
    _, checkpoint = load_checkpoint(folder / "holder-0" / HOLDER_CHECKPOINT_FILENAME)
    held = verify_ledger(folder / "holder-0" / LEDGER_FILENAME).head_height
    assert held > checkpoint.height
    blocks = stored_blocks(setup)[: checkpoint.height + 1]  # the ledger up to its final block
    view = m.encode_ledger_view(genesis_hash, setup.config.run_id, blocks, checkpoint.height, None)
    reply = query(deployed_grid(setup, folder), setup, view)
    assert reply.has_error() and "cut short" in reply.error.reason


RESTARTED_HOLDER = """
import pickle, sys
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from clients import client_app, replica_store
from server.inprocess_grid import NODE_BASE, InProcessGrid

node_config, config = pickle.loads(open(sys.argv[1], "rb").read())
grid = InProcessGrid(client_app.app, 1)
grid.contexts[NODE_BASE].node_config = node_config
message = Message(RecordDict({"config": ConfigRecord(config)}), NODE_BASE, MessageType.QUERY)
(reply,) = grid.send_and_receive([message])
print(reply.error.reason if reply.has_error() else "accepted")
"""


def test_invalid_a_holder_restarted_as_a_new_process_refuses_a_rewritten_history(
    deployed, tmp_path: Path
) -> None:
    """A new Python process: nothing in memory, the holder's folder is all it has."""
    setup, folder = deployed
    genesis_hash = verify_ledger(setup.run_dir).genesis_hash
    view = m.encode_ledger_view(genesis_hash, setup.config.run_id, forged_history(setup), 1, None)
    config = {**m.encode_train_settings(setup.config, setup.run_dir), **view}
    message = tmp_path / "message.pickle"
    message.write_bytes(pickle.dumps((deployed_node_config(setup, 0, folder), config)))
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", RESTARTED_HOLDER, str(message)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "history it holds cannot be rewritten" in result.stdout, result.stdout + result.stderr
