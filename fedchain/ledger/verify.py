"""Re-check a stored ledger from genesis: what ``fedchain verify`` runs.

Trust nothing in the file: every row is decoded, its indexed columns (height, hash, parent,
round, proposer) must equal what the decoded block says, the genesis hash in the file's metadata
must be the hash of the stored Genesis, and every block is replayed through the same pure state
transition that built it (:func:`fedchain.ledger.state.process_block`: hash chain, proposer
choice, header and transaction signatures, every transaction's checks, transaction and state
roots). Finality is then recomputed from the attestations on the chain. The first failure stops
the replay and is reported with its height, since nothing after a bad block can be trusted.
The replay itself is :func:`iter_replay`, public so that every reader of a chain (the run
report too) walks it with the same transition and the same stop-at-first-failure rule.

The same pass collects the registered model versions (with the heights of the blocks that carry
them), the genesis initial model hash and the updates the ledger names, so the model registry
(:mod:`fedchain.runs.registry`) can check a run's model and update files without reading the
ledger a second time, and every block's hash, so that a data holder's saved checkpoint can be
checked against the ledger (:func:`check_checkpoint`).

Memory. The replay holds one block at a time (the store reads a bounded number of bytes ahead),
the state (the participant table) and, per block, only what the protocol keeps for good: the
block hashes (attestations, evidence and anchors name any past height) and each model version's
model hash (anchors state the model head at their height), about 100 bytes a block. Finality
keeps the validators of the heights not yet final only
(:class:`~fedchain.ledger.consensus.FinalityTracker`). What grows with the transactions (the
model versions with their update lists, the updates named, the round records:
:attr:`VerifyReport.model_versions`, ``update_hashes``, ``round_records``) is collected only
with ``details=True``, for the checks of a run directory's files and scores.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedchain.errors import LedgerError
from fedchain.ledger.checkpoints import check_extends
from fedchain.ledger.codec import compute_hash, decode
from fedchain.ledger.consensus import FinalityTracker, compute_finalized_height, get_validators
from fedchain.ledger.containers import LedgerState, ParticipantState
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.genesis import process_genesis_block
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import (
    AnchorReceipt,
    Attestation,
    Block,
    ContributionRecord,
    Genesis,
    ModelVersion,
    PublicKey,
    SlashingEvidence,
    UpdateCommitment,
)
from fedchain.ledger.signatures import PLAIN, Verifier
from fedchain.ledger.state import process_block
from fedchain.ledger.store import LedgerStore, StoredBlock, open_ledger_path

# Signatures each transaction kind carries (double-sign evidence carries two).
_SIGNED_KINDS = frozenset({"Registration", "UpdateCommitment", "Attestation"})


@dataclass(frozen=True)
class VerifyFailure:
    """Where verification stopped: ``height`` is None for a file-level problem."""

    height: int | None
    reason: str

    def __str__(self) -> str:
        return self.reason if self.height is None else f"block {self.height}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_ledger`. Counts cover the blocks that verified."""

    path: Path
    failure: VerifyFailure | None
    genesis_hash: bytes = b""
    run_id: str = ""
    blocks: int = 0  # verified blocks, genesis included
    head_hash: bytes = b""
    final_height: int = 0
    model_head: bytes = b""
    initial_model_hash: bytes = b""  # the genesis model (round 0)
    model_heads: tuple[tuple[int, bytes], ...] = ()
    """``(height, model hash)`` of every verified block's ModelVersion, in chain order: the
    global model after each height (always collected)."""
    model_versions: tuple[tuple[int, ModelVersion], ...] = ()
    """``(height, model version)`` of every verified block's ModelVersion, in chain order
    (``details`` only)."""
    update_hashes: tuple[tuple[int, bytes], ...] = ()
    """``(height, update hash)`` of every update a verified block names (its UpdateCommitments
    and its ModelVersion's ``update_hashes``), each hash once, where first named: the updates
    the run directory must archive (``updates/``; ``details`` only)."""
    block_hashes: tuple[bytes, ...] = field(default=(), repr=False)
    """Every verified block's hash, by height."""
    rounds: int = 0
    tx_counts: Mapping[str, int] = field(default_factory=dict)
    signatures: int = 0
    participants: int = 0
    active: int = 0
    total_stake: int = 0
    retried_proposals: int = 0  # blocks whose proposer is not the first choice (attempt > 0)
    seconds: float = 0.0
    state: LedgerState | None = field(default=None, repr=False, compare=False)
    """The state after the last verified block (what a resuming coordinator continues from)."""
    round_records: tuple[RoundRecord, ...] = field(default=(), repr=False, compare=False)
    """What each round's scores are recomputed from (``details`` only)."""
    validators_by_height: Mapping[int, Mapping[PublicKey, int]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """The pre-state validators and stakes of each verified block above ``final_height`` (a
    resuming coordinator's input to
    :func:`~fedchain.ledger.consensus.compute_finalized_height`, which never looks at a height
    at or below one already final)."""
    anchor_receipts: tuple[tuple[int, AnchorReceipt], ...] = field(default=(), repr=False)
    """``(height, receipt)`` of every verified block's AnchorReceipt, in chain order (checked
    against their witnesses by :mod:`fedchain.anchor.check`)."""

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def head_height(self) -> int:
        return self.blocks - 1


@dataclass(frozen=True, slots=True)
class ReplayStep:
    """One block replayed: the state before it (None for the genesis block) and after it."""

    block: Block
    pre: LedgerState | None
    post: LedgerState


def iter_replay(blocks: Iterable[Block], *, verifier: Verifier = PLAIN) -> Iterator[ReplayStep]:
    """Replay ``blocks`` (genesis first, in height order) through the ledger's state transition.

    This is the one replay: :func:`verify_ledger` and the run report both walk a chain with it.
    Each step is yielded once its block has passed every check of
    :func:`~fedchain.ledger.state.process_block` (the genesis block:
    :func:`~fedchain.ledger.genesis.process_genesis_block`). The first block that fails raises
    its :class:`~fedchain.errors.LedgerError` and ends the replay: nothing after a bad block can
    be trusted. The failing block's height is the number of steps yielded before it.
    ``verifier`` checks the signatures (:mod:`fedchain.ledger.signatures`).
    """
    pre: LedgerState | None = None
    for block in blocks:
        if pre is None:
            post = process_genesis_block(block)
        else:
            post = process_block(pre, block, verifier=verifier)
        yield ReplayStep(block, pre, post)
        pre = post


class _CheckedRows:
    """The store's rows as decoded blocks whose indexed columns match their contents.

    ``height`` is the height of the row in hand (None between rows, so a failure of the store's
    own iteration is reported for the file rather than for a block).
    """

    def __init__(self, rows: Iterator[StoredBlock]) -> None:
        self._rows = rows
        self.height: int | None = None

    def __iter__(self) -> Iterator[Block]:
        return self

    def __next__(self) -> Block:
        self.height = None
        stored = next(self._rows)
        self.height = stored.height
        block = decode(Block, stored.data)
        _check_columns(stored, block)
        return block


class _Tally:
    """The statistics collected while blocks are replayed in order (the per-transaction ones,
    growing with the ledger, only with ``details``)."""

    def __init__(self, details: bool) -> None:
        self.details = details
        self.state: LedgerState | None = None
        self.finality = FinalityTracker()
        self.tx_counts: Counter[str] = Counter()
        self.signatures = 0
        self.retried = 0
        self.blocks = 0
        self.model_heads: list[tuple[int, bytes]] = []
        self.model_versions: list[tuple[int, ModelVersion]] = []
        self.update_hashes: dict[bytes, int] = {}
        self.rounds: list[RoundRecord] = []
        self.anchor_receipts: list[tuple[int, AnchorReceipt]] = []

    def add(self, step: ReplayStep, genesis_hash: bytes) -> None:
        block, pre = step.block, step.pre
        height = block.header.height
        self.state = step.post
        if pre is None:
            genesis = block.transactions[0]
            if not isinstance(genesis, Genesis) or compute_hash(genesis) != genesis_hash:
                raise LedgerError(
                    "the genesis hash in the file's metadata is not the stored genesis"
                )
        else:
            self.finality.add_block(height, dict(get_validators(pre)))
            if self.details:
                self._record_round(pre, block)
            self.signatures += 1
            self.retried += block.header.attempt > 0
        details = self.details
        for tx in block.transactions:  # the block is valid: record what it carries
            kind = type(tx).__name__
            self.tx_counts[kind] += 1
            self.signatures += _count_signatures(tx)
            if isinstance(tx, Attestation):
                self.finality.attest(tx.validator, tx.height)
            elif isinstance(tx, ModelVersion):
                self.model_heads.append((height, tx.model_hash))
                if details:
                    self.model_versions.append((height, tx))
                    for update_hash in tx.update_hashes:
                        self.update_hashes.setdefault(update_hash, height)
            elif isinstance(tx, UpdateCommitment):
                if details:
                    self.update_hashes.setdefault(tx.update_hash, height)
            elif isinstance(tx, AnchorReceipt):
                self.anchor_receipts.append((height, tx))
        self.blocks += 1

    def _record_round(self, pre: LedgerState, block: Block) -> None:
        txs = block.transactions
        version = next((tx for tx in txs if isinstance(tx, ModelVersion)), None)
        if version is None:
            return
        record = next((tx for tx in txs if isinstance(tx, ContributionRecord)), None)
        commitments = tuple(tx for tx in txs if isinstance(tx, UpdateCommitment))
        committers = {c.public_key: pre.participants[c.public_key] for c in commitments}
        self.rounds.append(RoundRecord(committers, commitments, version, record))


@dataclass(frozen=True)
class RoundRecord:
    """What a round's scores can be recomputed from: the committers' participant states as the
    round began (not the whole table: a round keeps what its weights need), the accepted
    commitments in block order (the order the coordinator scored them in), the model version
    (its parent is the round's starting model) and the recorded scores."""

    participants: Mapping[PublicKey, ParticipantState]
    commitments: tuple[UpdateCommitment, ...]
    model_version: ModelVersion
    contribution: ContributionRecord | None


def _check_columns(stored: StoredBlock, block: Block) -> None:
    header = block.header
    checks = (
        ("height", stored.height, header.height),
        ("hash", stored.block_hash, compute_block_hash(header)),
        ("parent", stored.parent_hash, header.parent_hash),
        ("round", stored.round, header.round),
        ("proposer", stored.proposer, header.proposer),
    )
    for column, stored_value, actual in checks:
        if stored_value != actual:
            raise LedgerError(f"the stored {column} column does not match the block's contents")


def _count_signatures(tx: object) -> int:
    if isinstance(tx, SlashingEvidence):
        return 2  # a HeaderPair or an AttestationPair: the only provable offence
    return 1 if type(tx).__name__ in _SIGNED_KINDS else 0


def verify_ledger(
    path: Path,
    *,
    on_block: Callable[[int, int], None] | None = None,
    verifier: Verifier = PLAIN,
    details: bool = True,
) -> VerifyReport:
    """Verify the ledger at ``path`` (a ledger file or a run directory) from genesis.

    Never raises for a bad ledger: the report's ``failure`` says what is wrong and where.
    ``on_block(height, head_height)`` is called after each verified block (progress display).
    ``verifier`` checks the signatures: pass a
    :class:`~fedchain.ledger.signatures.CachingVerifier` for speed on a long chain.
    ``details=False`` leaves out what grows with the transactions (``model_versions``,
    ``update_hashes``, ``round_records``): memory then stays bounded by the largest block, the
    state and about 100 bytes a block (see the module docstring).
    """
    started = time.perf_counter()
    path = Path(path)
    tally = _Tally(details)
    failure: VerifyFailure | None = None
    genesis_hash = b""
    rows: _CheckedRows | None = None
    try:
        with LedgerStore.open(open_ledger_path(path), readonly=True) as store:
            genesis_hash = store.genesis_hash
            head = store.head().height
            rows = _CheckedRows(store.iter_blocks())
            for step in iter_replay(rows, verifier=verifier):
                tally.add(step, genesis_hash)
                if on_block is not None:
                    on_block(step.block.header.height, head)
                rows.height = None
    except LedgerError as e:
        failure = VerifyFailure(None if rows is None else rows.height, str(e))
    return _report(path, tally, failure, genesis_hash, time.perf_counter() - started)


def _report(
    path: Path,
    tally: _Tally,
    failure: VerifyFailure | None,
    genesis_hash: bytes,
    seconds: float,
) -> VerifyReport:
    state = tally.state
    if state is None:
        return VerifyReport(path, failure or VerifyFailure(None, "no blocks"), seconds=seconds)
    finality = tally.finality
    final = compute_finalized_height(
        finality.validators_by_height, state.last_attested.items(), finality.final_height
    )
    participants = state.participants.values()
    return VerifyReport(
        path=path,
        failure=failure,
        genesis_hash=genesis_hash,
        run_id=state.genesis.run_id,
        blocks=tally.blocks,
        head_hash=state.head_hash,
        final_height=final,
        model_head=state.model_head,
        initial_model_hash=state.genesis.initial_model_hash,
        model_heads=tuple(tally.model_heads),
        model_versions=tuple(tally.model_versions),
        update_hashes=tuple((height, h) for h, height in tally.update_hashes.items()),
        block_hashes=tuple(state.block_hashes),
        rounds=state.round,
        tx_counts=dict(sorted(tally.tx_counts.items())),
        signatures=tally.signatures,
        participants=len(state.participants),
        active=sum(p.active for p in participants),
        total_stake=sum(p.stake for p in participants),
        retried_proposals=tally.retried,
        seconds=seconds,
        state=state,
        round_records=tuple(tally.rounds),
        validators_by_height={h: v for h, v in finality.validators_by_height.items() if h > final},
        anchor_receipts=tuple(tally.anchor_receipts),
    )


def check_checkpoint(
    report: VerifyReport, genesis_hash: bytes, checkpoint: Checkpoint
) -> str | None:
    """Why the verified ledger of ``report`` does not extend a data holder's saved checkpoint
    (:mod:`fedchain.ledger.checkpoints`), or None if it does.

    Only verified blocks count (a block past the first failure is not trusted). Besides holding
    the checkpoint's block (:func:`~fedchain.ledger.checkpoints.check_extends`), the ledger must
    prove it final: a coordinator tells a client a height is final only once the attestations on
    its stored chain make it so (:func:`~fedchain.ledger.consensus.compute_finalized_height`), so
    an honest ledger's final height is never below a checkpoint its clients saved; a lower one
    means the blocks carrying those attestations are gone.
    """
    hashes = report.block_hashes

    def block_hash_at(height: int) -> bytes | None:
        return hashes[height] if 0 <= height < len(hashes) else None

    reason = check_extends(
        genesis_hash, checkpoint, block_hash_at, ledger_genesis_hash=report.genesis_hash
    )
    if reason is None and report.final_height < checkpoint.height:
        reason = (
            f"the ledger proves blocks final only up to height {report.final_height}, below the "
            f"checkpoint's height {checkpoint.height}: the blocks whose attestations made it "
            "final were deleted"
        )
    return reason
