"""The working copy of a ledger state for one block's transactions, and the checks every
transaction rule shares (its round, an active participant, a signature in this federation).

:class:`Working` is private and mutable; :mod:`fedchain.ledger.state` freezes it once per block,
and the rules of :mod:`fedchain.ledger.transactions` check and change it.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from fedchain.crypto import ed25519
from fedchain.crypto.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, compute_signing_root
from fedchain.errors import InvalidTransaction
from fedchain.ledger.checks import describe_key
from fedchain.ledger.containers import LedgerState, ParticipantState
from fedchain.ledger.derived import SIGNING_DOMAINS, signing_message
from fedchain.ledger.objects import PublicKey, SignedObject
from fedchain.ledger.signatures import Verifier

__all__ = ["Working", "check_round", "check_signature", "get_active", "with_stake"]


class Working:
    """A private mutable copy of a state, for applying one block's transactions."""

    __slots__ = (
        "carried_reward",
        "due",
        "evidence_seen",
        "last_attested",
        "model_head",
        "model_moved",
        "model_round",
        "participants",
        "pre",
        "preverified",
        "rewarded",
        "round",
        "round_commits",
        "round_refusals",
        "round_update_hashes",
        "scores",
        "scores_round",
        "verifier",
    )

    def __init__(self, state: LedgerState, block_round: int, verifier: Verifier) -> None:
        if type(block_round) is not int or block_round < state.round:
            raise InvalidTransaction(
                f"block round {block_round} is before the head's round {state.round}"
            )
        self.pre = state
        self.round = block_round
        self.verifier = verifier
        self.preverified: frozenset[int] = frozenset()  # ids of txs whose signature verified
        self.scores: tuple[tuple[PublicKey, int], ...] | None = None  # this block's record
        self.rewarded = False  # whether this block paid its record's rewards
        self.due: tuple[tuple[PublicKey, int], ...] = ()  # the rewards this block's record owes
        self.carried_reward = state.carried_reward
        self.model_moved = state.model_moved
        self.scores_round = state.scores_round
        self.participants = dict(state.participants)
        self.last_attested = dict(state.last_attested)
        self.evidence_seen = state.evidence_seen  # copied on write: rarely changes
        self.model_head = state.model_head
        self.model_round = state.model_round
        if block_round == state.round:
            self.round_commits = set(state.round_commits)
            self.round_update_hashes = set(state.round_update_hashes)
            self.round_refusals = set(state.round_refusals)
        else:
            self.round_commits, self.round_update_hashes = set(), set()
            self.round_refusals = set()

    def freeze(self) -> LedgerState:
        participants = self.participants  # no transaction adds a key, so still sorted
        return dataclasses.replace(
            self.pre,
            round=self.round,
            model_head=self.model_head,
            participants=MappingProxyType(participants),
            round_commits=frozenset(self.round_commits),
            last_attested=MappingProxyType(dict(sorted(self.last_attested.items()))),
            evidence_seen=self.evidence_seen,
            round_update_hashes=frozenset(self.round_update_hashes),
            scores_round=self.scores_round,
            model_round=self.model_round,
            carried_reward=self.carried_reward,
            model_moved=self.model_moved,
            round_refusals=frozenset(self.round_refusals),
        )


def check_signature(
    work: Working,
    obj: SignedObject,
    public_key: PublicKey,
    encoding: bytes | None = None,
    federation: bytes | None = None,
) -> None:
    """Verify ``obj``'s signature by ``public_key`` in this federation (``encoding``: encode(obj);
    ``federation``: what it signs as the federation, the genesis hash unless given).

    The same check as :func:`fedchain.crypto.identity.verify_signature`, by the working copy's
    verifier (which may cache: the ledger verifies every validator's signatures block after
    block), skipped for the transactions whose signature the block's batch already verified.
    """
    what = type(obj).__name__
    if len(public_key) != PUBLIC_KEY_SIZE or len(obj.signature) != SIGNATURE_SIZE:
        raise InvalidTransaction(
            f"bad signature on the {what}: key and signature must be {PUBLIC_KEY_SIZE} and "
            f"{SIGNATURE_SIZE} bytes, got {len(public_key)} and {len(obj.signature)}"
        )
    if id(obj) in work.preverified:
        return
    domain = SIGNING_DOMAINS[type(obj)]
    if federation is None:
        federation = work.pre.genesis_hash
    root = compute_signing_root(domain, signing_message(obj, encoding), federation)
    if not work.verifier.verify(public_key, obj.signature, root):
        reason = ed25519.explain_refusal(public_key, obj.signature)
        raise InvalidTransaction(
            f"bad signature on the {what}: it does not verify for key {describe_key(public_key)} "
            f"in this federation" + ("" if reason is None else f": {reason}")
        )


def check_round(work: Working, round: int, what: str) -> None:
    if round != work.round:
        raise InvalidTransaction(
            f"{what} is for round {round}, but the block is round {work.round}"
        )


def get_active(work: Working, key: PublicKey) -> ParticipantState:
    participant = work.participants.get(key)
    if participant is None:
        raise InvalidTransaction(f"participant {describe_key(key)} is not registered")
    if not participant.active:
        raise InvalidTransaction(f"participant {describe_key(key)} has been ejected")
    return participant


def with_stake(
    participant: ParticipantState, stake: int, reputation_bps: int, min_stake: int
) -> ParticipantState:
    """The participant with a new stake and reputation, ejected if below ``min_stake``."""
    return dataclasses.replace(
        participant,
        stake=stake,
        reputation_bps=reputation_bps,
        active=participant.active and stake >= min_stake,
    )
