"""Proof-of-stake consensus: validators, proposer choice, finality, double-sign detection.

Validators are the active participants holding at least the minimum stake. Each block's
proposer is drawn stake-weighted from its parent's hash, so anyone can recompute the draw; the
proposer signs the header. Validators attest to heads they have seen; an attestation counts for
the attested block and all its ancestors, and a block is final once distinct validators with at
least 2/3 of the active stake (as of that block's pre-state) have attested to it or a descendant.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence

from fedchain.crypto.identity import fingerprint
from fedchain.errors import InvalidBlock, LedgerError
from fedchain.ledger.codec import compute_hash
from fedchain.ledger.containers import LedgerState, ParticipantState
from fedchain.ledger.objects import (
    DOUBLE_SIGN,
    Attestation,
    AttestationPair,
    BlockHeader,
    Hash32,
    HeaderPair,
    PublicKey,
    Rules,
    SignedHeader,
    SlashingEvidence,
)

__all__ = [
    "FINALITY_DENOMINATOR",
    "FINALITY_NUMERATOR",
    "MAX_PROPOSER_ATTEMPT",
    "PROPOSER_SEED_DOMAIN",
    "FinalityTracker",
    "check_extends",
    "compute_finalized_height",
    "compute_proposer",
    "detect_double_sign",
    "get_proposer",
    "get_validators",
    "is_active_validator",
    "is_descendant",
]

PROPOSER_SEED_DOMAIN = b"fedchain/proposer/v1"
MAX_PROPOSER_ATTEMPT = 2**32 - 1
"""``attempt`` is hashed as a u32."""

FINALITY_NUMERATOR = 2
FINALITY_DENOMINATOR = 3
"""A block is final when 3 * attesting stake >= 2 * active stake (exactly 2/3 is enough)."""

_U32 = struct.Struct("<I")


# --------------------------------------------------------------------------------------------------
# Validators and proposers


def is_active_validator(participant: ParticipantState, rules: Rules) -> bool:
    """Active (not ejected) and holding at least the minimum stake."""
    return participant.active and participant.stake >= rules.min_stake


def get_validators(state: LedgerState) -> list[tuple[PublicKey, int]]:
    """``[(public key, stake), ...]`` of the state's validators, sorted by key."""
    rules = state.genesis.rules
    return [
        (key, participant.stake)
        for key, participant in state.participants.items()
        if is_active_validator(participant, rules)
    ]


def compute_proposer(
    parent_hash: Hash32, validators: Iterable[tuple[PublicKey, int]], attempt: int = 0
) -> PublicKey:
    """The validator chosen to propose the child of ``parent_hash`` at ``attempt``.

    ``seed = sha256(PROPOSER_SEED_DOMAIN | parent_hash | u32 attempt)``; ``r = int(seed, big
    endian) mod total stake``; the proposer is the first validator, in key order, whose
    cumulative stake exceeds ``r``. So each validator is chosen with probability stake / total,
    up to the modulo bias: at most total / 2**256, negligible for any real stake total.

    ``attempt`` > 0 exists for when the chosen proposer does not show up: the next attempt
    draws again. Whoever is chosen at a later attempt could also *skip* earlier proposers on
    purpose (grinding through attempts until it is chosen), so verification accepts any
    attempt but reports how many attempts each block used.
    """
    ordered = sorted(validators)
    total = 0
    previous: PublicKey | None = None
    for key, stake in ordered:
        if stake <= 0:
            raise LedgerError(f"validator {fingerprint(key)} has non-positive stake {stake}")
        if key == previous:
            raise LedgerError(f"validator {fingerprint(key)} is listed twice")
        previous = key
        total += stake
    if total == 0:
        raise LedgerError("there are no validators: no block can be proposed")
    if not 0 <= attempt <= MAX_PROPOSER_ATTEMPT:
        raise LedgerError(f"proposer attempt {attempt} is outside 0..{MAX_PROPOSER_ATTEMPT}")
    seed = hashlib.sha256(PROPOSER_SEED_DOMAIN + parent_hash + _U32.pack(attempt)).digest()
    target = int.from_bytes(seed, "big") % total
    cumulative = 0
    for key, stake in ordered:
        cumulative += stake
        if target < cumulative:
            return key
    raise AssertionError("unreachable: target < total")  # pragma: no cover


def get_proposer(state: LedgerState, attempt: int = 0) -> PublicKey:
    """The proposer of the block after ``state``'s head, at ``attempt``."""
    return compute_proposer(state.head_hash, get_validators(state), attempt)


# --------------------------------------------------------------------------------------------------
# Finality


def compute_finalized_height(
    validators_by_height: Mapping[int, Mapping[PublicKey, int]],
    attestations: Iterable[tuple[PublicKey, int]],
    finalized_height: int = 0,
) -> int:
    """The highest final block height (its ancestors are final too).

    ``validators_by_height[h]`` maps the validators of block ``h``'s *pre-state* (the state
    after block ``h - 1``, e.g. ``dict(get_validators(state))``) to their stakes; heights not in
    it are not considered. ``attestations`` are ``(validator, attested height)`` pairs, e.g.
    ``state.last_attested.items()``; they must be attestations to blocks of this chain (the
    ledger checks that for attestations it includes). A validator counts once per block, with
    its pre-state stake, whatever the number of its attestations; one that is not a validator in
    a block's pre-state (never was, or was ejected) does not count for that block.

    ``finalized_height`` is a height already known final: the result is never lower, and
    heights at or below it are not re-examined.
    """
    highest: dict[PublicKey, int] = {}
    for validator, height in attestations:
        if height > highest.get(validator, -1):
            highest[validator] = height
    if not highest:
        return finalized_height
    for height in range(max(highest.values()), finalized_height, -1):
        validators = validators_by_height.get(height)
        if validators and _is_supermajority(validators, highest, height):
            return height
    return finalized_height


def _is_supermajority(
    validators: Mapping[PublicKey, int], highest: Mapping[PublicKey, int], height: int
) -> bool:
    total = sum(validators.values())
    attesting = sum(stake for key, stake in validators.items() if highest.get(key, -1) >= height)
    return attesting * FINALITY_DENOMINATOR >= total * FINALITY_NUMERATOR


class FinalityTracker:
    """Finality followed block by block, keeping the validators of heights not yet final only.

    :func:`compute_finalized_height` needs each height's pre-state validators, but never looks
    at a height at or below one already known final; a replay (``fedchain verify``) thus need
    not keep them. Give each block's pre-state validators (:meth:`add_block`), then each
    attestation it carries, in block order (:meth:`attest`). Each kept height holds its
    attesting stake, raised as attestations move validators' highest heights up, and a height
    whose attesting stake reaches the supermajority becomes :attr:`final_height`, dropping the
    heights up to it. Attested heights only move up, so such a height stays final:
    ``compute_finalized_height(tracker.validators_by_height, last_attested, tracker.final_height)``
    equals the call over every height, for the same ``last_attested``.

    Work: each attestation adds its validator's stake to the kept heights it newly covers, so
    O(validators x heights) in all, like building the full map once. Memory: the validators of
    the heights above the final one (a few on a chain whose validators attest; every height on a
    chain that never becomes final, as the rule requires).
    """

    def __init__(self) -> None:
        self.final_height = 0
        self.validators_by_height: dict[int, dict[PublicKey, int]] = {}
        self._totals: dict[int, int] = {}
        self._attesting: dict[int, int] = {}
        self._highest: dict[PublicKey, int] = {}

    def add_block(self, height: int, validators: Mapping[PublicKey, int]) -> None:
        """Block ``height``'s pre-state validators and their stakes."""
        kept = dict(validators)
        self.validators_by_height[height] = kept
        self._totals[height] = sum(kept.values())
        self._attesting[height] = sum(
            stake for key, stake in kept.items() if self._highest.get(key, -1) >= height
        )

    def attest(self, validator: PublicKey, height: int) -> None:
        """``validator`` attested block ``height`` (its highest yet, as the ledger requires)."""
        previous = self._highest.get(validator, -1)
        if height <= previous:
            return
        self._highest[validator] = height
        final = self.final_height
        for covered in range(max(previous, final) + 1, height + 1):
            validators = self.validators_by_height.get(covered)
            stake = None if validators is None else validators.get(validator)
            if stake is None:
                continue
            attesting = self._attesting[covered] + stake
            self._attesting[covered] = attesting
            if attesting * FINALITY_DENOMINATOR >= self._totals[covered] * FINALITY_NUMERATOR:
                final = covered
        for dropped in range(self.final_height + 1, final + 1):
            self.validators_by_height.pop(dropped, None)
            self._totals.pop(dropped, None)
            self._attesting.pop(dropped, None)
        self.final_height = final


# --------------------------------------------------------------------------------------------------
# Double signing


def detect_double_sign(
    first: SignedHeader | Attestation, second: SignedHeader | Attestation, round: int
) -> SlashingEvidence | None:
    """Evidence if ``first`` and ``second`` are two different votes of one signer at one height.

    Two :class:`SignedHeader`\\ s by one proposer at one height with different block hashes, or
    two :class:`Attestation`\\ s by one validator at one height to different blocks. The pair is
    put in a canonical order, so the argument order does not matter. Signatures are *not*
    checked here (no federation is known); processing the evidence checks them. ``round`` is
    the round of the block the evidence will go into.
    """
    if isinstance(first, SignedHeader) and isinstance(second, SignedHeader):
        a, b = first.header, second.header
        if a.proposer != b.proposer or a.height != b.height:
            return None
        hash_a, hash_b = compute_hash(a), compute_hash(b)
        if hash_a == hash_b:
            return None
        pair = (first, second) if hash_a < hash_b else (second, first)
        return SlashingEvidence(DOUBLE_SIGN, a.proposer, round, HeaderPair(*pair))
    if isinstance(first, Attestation) and isinstance(second, Attestation):
        if first.validator != second.validator or first.height != second.height:
            return None
        if first.block_hash == second.block_hash:
            return None
        ordered = sorted((first, second), key=lambda attestation: attestation.block_hash)
        return SlashingEvidence(
            DOUBLE_SIGN, first.validator, round, AttestationPair(ordered[0], ordered[1])
        )
    return None


# --------------------------------------------------------------------------------------------------
# Client-side fork check


def is_descendant(ancestor: BlockHeader, headers: Sequence[BlockHeader]) -> bool:
    """True if ``headers`` link ``ancestor``'s child to a head, in height order.

    ``headers`` are the headers after ``ancestor`` up to the head (empty: the head *is*
    ``ancestor``). Only the hash links and heights are checked: a client keeps headers, not
    state, so it relies on attestations (finality) for the rest.
    """
    parent_hash, height = compute_hash(ancestor), ancestor.height
    for header in headers:
        if header.parent_hash != parent_hash or header.height != height + 1:
            return False
        parent_hash, height = compute_hash(header), header.height
    return True


def check_extends(final_header: BlockHeader, headers: Sequence[BlockHeader]) -> None:
    """Refuse a head that does not extend the last final header the client saw.

    Raises :class:`InvalidBlock` unless :func:`is_descendant` holds.
    """
    if not is_descendant(final_header, headers):
        head = headers[-1].height if headers else final_header.height
        raise InvalidBlock(
            f"the head at height {head} does not extend the final block at height "
            f"{final_header.height}: refusing a conflicting chain"
        )
