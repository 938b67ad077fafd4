"""A data holder's ledger duties in a round: check the view, attest, seal, commit to the update.

Each message a client gets shows it the ledger's blocks (bodies included) from its last final
block to the head, and the block waiting for its seal with its transactions. The client checks
that view (:func:`check_view_replayed`): the light client's rules (it must extend the last final
block the client saw) and its own replica's (:mod:`fedchain.rounds.replica`: every new block
replayed with the ledger's state transition, nothing it holds rewritten, and the pending block's
header re-derived from its transactions). Only then does it sign an attestation to the pending
block, seal it when the stake draw chose this client as its proposer, and sign the commitment to
its update. A validator never signs two different blocks at one height (:func:`plan_signing`):
a re-attempted header at a height it already attested or sealed gets no second signature. Pure
given the key: no Flower, no disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import InvalidBlock, PrivacyBudgetSpent, UpdateNotAgreed, UseNotAgreed
from fedchain.ledger.builder import sign_attestation, sign_commitment, sign_header
from fedchain.ledger.codec import encode
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.lightclient import Checkpoint, check_head
from fedchain.ledger.objects import (
    DP_OFF,
    REFUSE_EPOCHS,
    REFUSE_PRIVACY,
    REFUSE_ROUNDS,
    ModelRecord,
    Rules,
)
from fedchain.ledger.signatures import PLAIN, Verifier
from fedchain.rounds.messages import Duties, LedgerView, SignedHeights
from fedchain.rounds.replica import (
    GenesisPin,
    GenesisStates,
    KnownStates,
    Replica,
    compute_pending_post_state,
    extend_replica,
)


@dataclass(frozen=True)
class CheckedView:
    """A view that passed every check: the client's new checkpoint and replica, and
    ``model_head``, the global model the ledger names once the pending block is sealed (the
    replica's head state's, with no pending block): the model this round trains on. ``state``:
    the ledger state it names (after the pending block, if any)."""

    checkpoint: Checkpoint
    replica: Replica
    model_head: bytes
    state: LedgerState


def check_view(saved: Checkpoint | None, view: LedgerView) -> Checkpoint:
    """The light client's check alone: the client's new checkpoint once ``view``'s headers
    extend ``saved`` (raises InvalidBlock if not). A client that signs calls
    :func:`check_view_replayed`."""
    return check_head(saved, view.headers, view.final_height, view.pending, view.genesis_hash)


def check_view_replayed(
    replica: Replica | None,
    saved: Checkpoint | None,
    view: LedgerView,
    *,
    verifier: Verifier = PLAIN,
    known: KnownStates | None = None,
    geneses: GenesisStates | None = None,
    pin: GenesisPin | None = None,
) -> CheckedView:
    """Everything a client checks before it signs: its blocks replay onto its ``replica``
    (None: a first view, from genesis), its headers extend its checkpoint ``saved`` (the light
    client's rules), and the pending block re-derives from its transactions. The new checkpoint
    is the replica's own final height (:mod:`fedchain.rounds.replica`, item 5), never the
    view's claim: a claim above it is refused (the coordinator lies upward), one below it is
    ignored. Raises InvalidBlock (a
    LedgerError) saying which check failed; then the client must not attest or seal.
    ``verifier``, ``known`` and ``geneses`` are speed-ups (:mod:`fedchain.rounds.replica`);
    ``pin``, a deployed holder's federation (:func:`fedchain.rounds.replica.check_genesis_pin`)."""
    genesis_hash = view.genesis_hash
    replica = extend_replica(
        replica, view.blocks, genesis_hash, verifier=verifier, known=known, geneses=geneses,
        pin=pin,
    )  # fmt: skip
    proven = replica.final_height
    if view.final_height > proven:
        raise InvalidBlock(
            f"the view claims block {view.final_height} final, but this client's replica makes "
            f"only block {proven} final"
        )
    checkpoint = check_head(
        saved, view.headers, proven, view.pending, genesis_hash, verifier=verifier
    )
    state = replica.state
    if view.pending is not None:
        state = compute_pending_post_state(
            state, view.pending, view.pending_transactions, verifier=verifier, known=known
        )
    return CheckedView(checkpoint, replica, state.model_head, state)


def check_privacy_budget(state: LedgerState, public_key: bytes, released: int = 0) -> None:
    """Refuse to train when the ledger's rules give this client no participation left: its
    accepted participations on the ledger, or the updates it has itself released in this
    federation (``released``), whichever is more, have reached ``dp_max_participations``.
    The update would leave the holder past its privacy budget (and the ledger would refuse its
    commitment anyway). The client's own count matters: a coordinator that receives an update
    but records a rejection, or nothing, instead of its commitment keeps the ledger's count
    down while the privacy is spent. Raises :class:`~fedchain.errors.PrivacyBudgetSpent`; DP
    off: never."""
    rules = state.genesis.rules
    participant = state.participants.get(public_key)
    if rules.dp_mode == DP_OFF or participant is None:
        return
    spent = max(participant.dp_participations, released)
    if spent >= rules.dp_max_participations:
        raise PrivacyBudgetSpent(
            f"privacy budget spent ({spent} of {rules.dp_max_participations} participations, "
            f"epsilon {rules.dp_max_epsilon_micro / 10**6:g}): not training",
            REFUSE_PRIVACY,
        )


def check_outgoing_update(update: Mapping[str, np.ndarray], record: ModelRecord) -> None:
    """Refuse to send an update that is not what the genesis says leaves a holder: exactly the
    tensors its model record lists (``trainable``), as float32, of ``update_bytes`` in all. The
    last check before the bytes leave; a record that names no tensors (a synthetic ledger, the
    ledger off) checks nothing. Raises :class:`~fedchain.errors.UpdateNotAgreed`."""
    if not record.trainable:
        return
    names = set(update)
    if names != set(record.trainable):
        extra = sorted(names - set(record.trainable))[:3]
        missing = sorted(set(record.trainable) - names)[:3]
        raise UpdateNotAgreed(
            f"not sending: the update holds other tensors than the contract lists (extra "
            f"{extra}, missing {missing})"
        )
    odd = [name for name, a in update.items() if a.dtype != np.float32]
    if odd:
        raise UpdateNotAgreed(
            f"not sending: tensor {odd[0]} is {update[odd[0]].dtype}, not float32"
        )
    size = sum(int(a.nbytes) for a in update.values())
    if record.update_bytes and size != record.update_bytes:
        raise UpdateNotAgreed(
            f"not sending: the update is {size} bytes, the contract's updates are "
            f"{record.update_bytes}"
        )


def check_agreed_training(rules: Rules, round_: int, local_epochs: int) -> None:
    """Refuse a train message that asks for more than the genesis's rules of data use: a round
    past ``max_rounds`` or more than ``max_local_epochs`` local epochs (0: no limit). Every
    participant signed those rules when it registered; the coordinator's message cannot widen
    them. Raises :class:`~fedchain.errors.UseNotAgreed`."""
    if rules.max_rounds and round_ > rules.max_rounds:
        raise UseNotAgreed(
            f"round {round_} is past the {rules.max_rounds} rounds this federation's contract "
            "allows: not training",
            REFUSE_ROUNDS,
        )
    if rules.max_local_epochs and local_epochs > rules.max_local_epochs:
        raise UseNotAgreed(
            f"{local_epochs} local epochs asked, the federation's contract allows "
            f"{rules.max_local_epochs}: not training",
            REFUSE_EPOCHS,
        )


def check_base_model(
    checked: CheckedView, claimed_hash: bytes, model: Mapping[str, np.ndarray]
) -> None:
    """Refuse to train on a model the ledger does not name: the model received must hash
    (:func:`~fedchain.crypto.hashing.compute_update_hash`, the canonical model hash) to the
    model head the client's replica derives (``checked.model_head``), and the hash the
    coordinator claims (the commitment signs it) must be that one too. Raises
    :class:`~fedchain.errors.InvalidBlock` saying which differs; the client then sends no
    update and signs no commitment."""
    expected = checked.model_head
    received = compute_update_hash(model)
    if received != expected:
        raise InvalidBlock(
            f"the model received (hash {received.hex()[:16]}) is not the model the ledger names "
            f"({expected.hex()[:16]}): not training on it"
        )
    if claimed_hash != expected:
        raise InvalidBlock(
            f"the coordinator's base-model-hash {claimed_hash.hex()[:16]} is not the model the "
            f"ledger names ({expected.hex()[:16]}): not training"
        )


@dataclass(frozen=True)
class SigningPlan:
    """What a validator may sign for a view's pending block: ``record`` (what it has signed
    once it does; saved before any signature leaves it), whether it attests and seals, and
    why it does not (one line each)."""

    record: SignedHeights
    attest: bool
    seal: bool
    refusals: tuple[str, ...] = ()


def _may_sign(last: tuple[int, bytes] | None, height: int, block_hash: bytes) -> str | None:
    """Why signing ``block_hash`` at ``height`` after signing ``last`` would double-sign, or
    None when it would not (a greater height, or the very block signed before)."""
    if last is None or last[0] < height or last == (height, block_hash):
        return None
    if last[0] == height:
        return f"already signed another block at height {height}"
    return f"already signed height {last[0]}, above {height}"


def plan_signing(signed: SignedHeights | None, public_key: bytes, view: LedgerView) -> SigningPlan:
    """Never two different attestations, nor two different headers, at one height: given what
    the validator last signed (``signed``; None or another federation's: nothing), what it
    may sign for ``view.pending``. Signing the same block again is allowed (the same bytes)."""
    genesis_hash = view.genesis_hash
    if signed is None or signed.genesis_hash != genesis_hash:
        signed = SignedHeights(genesis_hash)
    pending = view.pending
    if pending is None:
        return SigningPlan(signed, False, False)
    height, block_hash = pending.height, compute_block_hash(pending)
    refusals = []
    attested, sealed = signed.attested, signed.sealed
    attest = (why := _may_sign(attested, height, block_hash)) is None
    if attest:
        attested = (height, block_hash)
    else:
        refusals.append(f"no attestation: {why}")
    seal = pending.proposer == public_key
    if seal and (why := _may_sign(sealed, height, block_hash)) is not None:
        seal = False
        refusals.append(f"no seal: {why}")
    if seal:
        sealed = (height, block_hash)
    return SigningPlan(SignedHeights(genesis_hash, attested, sealed), attest, seal, tuple(refusals))


def compute_duties(
    key: Ed25519PrivateKey,
    public_key: bytes,
    view: LedgerView,
    checkpoint: Checkpoint,
    plan: SigningPlan | None = None,
) -> Duties:
    """The attestation to the pending block and, from its drawn proposer, its seal, as far as
    ``plan`` (:func:`plan_signing`) allows: a client saves ``plan.record`` first. None: a
    validator that has signed nothing yet in this federation."""
    pending = view.pending
    if pending is None:
        return Duties(checkpoint.height)
    if plan is None:
        plan = plan_signing(None, public_key, view)
    attestation = b""
    if plan.attest:
        block_hash = compute_block_hash(pending)
        signed = sign_attestation(
            key, view.genesis_hash, height=pending.height, block_hash=block_hash
        )
        attestation = encode(signed)
    seal = b""
    if plan.seal:
        seal = sign_header(key, view.genesis_hash, pending).signature
    return Duties(checkpoint.height, attestation, seal)


def sign_update_commitment(
    key: Ed25519PrivateKey,
    view: LedgerView,
    *,
    round_: int,
    base_model_hash: bytes,
    update: Mapping[str, np.ndarray],
    num_examples: int,
    dp_mechanism: tuple[int, int, int] = (0, 0, 0),
) -> bytes:
    """The encoded, signed commitment to ``update`` (its canonical hash) and the example count
    claimed for it, on the round's base model; ``dp_mechanism``: the privacy mechanism applied
    to it (:func:`~fedchain.ledger.derived.compute_dp_mechanism` of the rules)."""
    commitment = sign_commitment(
        key,
        view.genesis_hash,
        run_id=view.run_id,
        round=round_,
        base_model_hash=base_model_hash,
        update_hash=compute_update_hash(update),
        num_examples=num_examples,
        dp_mechanism=dp_mechanism,
    )
    return encode(commitment)
