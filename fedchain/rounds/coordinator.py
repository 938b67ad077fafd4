"""The coordinator's side of a round: admit replies, aggregate, register the model, build blocks.

This is the I/O shell the Flower strategy calls (it holds the ledger file and the run directory);
every decision it makes comes from the pure protocol: admission from
:mod:`fedchain.rounds.admission` (a reply's commitment is admitted exactly when the ledger's
transition accepts it, so the coordinator can never admit what ``fedchain verify`` would refuse),
scores from :mod:`fedchain.rounds.scores`. It applies them: binds nodes to keys, writes the
accepted updates and the new model, and prepares, seals and finalises blocks.

Blocks are *pipelined* so that no round needs an extra message: block B(r), holding round r's
commitments, model version and rewards, is prepared unsigned at the end of round r. Round r+1's
train messages carry its header and transactions; every client re-executes it on its own replica
of the ledger (:mod:`fedchain.rounds.replica`), then the proposer drawn by stake signs it
("seal") and every client attests to it in its reply. B(r) is appended when its seal arrives,
and B(r+1) carries the attestations to B(r). After the last round one closing exchange seals
the last round's block and records the attestations that make it final.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedchain.aggregation.explain import AggregationExplanation, explain_aggregation
from fedchain.aggregation.rules import AggregationResult, RuleParams
from fedchain.anchor.receipts import Anchoring
from fedchain.crypto.hashing import compute_update_hash
from fedchain.errors import FedchainError, LedgerError
from fedchain.ledger.builder import prepare_block, seal_block
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode, encode
from fedchain.ledger.consensus import compute_finalized_height, get_validators
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.objects import (
    AnchorReceipt,
    Block,
    BlockHeader,
    ContributionRecord,
    ModelVersion,
    RewardDeltas,
    SignedHeader,
    Transaction,
    UpdateCommitment,
)
from fedchain.rounds.admission import (
    ClientReply,
    Decision,
    admit_app_approvals,
    admit_attestation,
    admit_update,
    compute_reply_order,
    compute_sender,
    decode_commitment,
)
from fedchain.rounds.messages import encode_ledger_view
from fedchain.rounds.rewards import Payout, compute_round_payout, has_model_moved
from fedchain.rounds.scores import (
    Scorer,
    compute_aggregation,
    compute_quantised_scores,
    compute_raw_scores,
)
from fedchain.runs.approval import read_inbox
from fedchain.runs.archive import drop_old_packs, save_round_updates
from fedchain.runs.registry import save_model

Arrays = dict[str, np.ndarray]
MAX_SEAL_ATTEMPTS = 8


@dataclass
class RoundOutcome:
    round: int
    decisions: list[Decision] = field(default_factory=list)
    model_hash: bytes = b""
    head_height: int = 0
    final_height: int = 0
    weights: dict[bytes, float] = field(default_factory=dict)
    scores: dict[bytes, int] = field(default_factory=dict)  # quantised, as recorded
    aggregation: AggregationExplanation | None = None  # what the rule did with the admitted
    payout: Payout | None = None  # the payout rule's decision on the round's pool (None: no record)

    @property
    def accepted(self) -> int:
        return sum(d.accepted for d in self.decisions)

    @property
    def rejected(self) -> list[Decision]:
        return [d for d in self.decisions if not d.accepted]


RoundReporter = Callable[[int, RoundOutcome | None, float, float], None]
"""(ledger round, its outcome (None with the ledger off), accuracy, seconds) after each round."""


@dataclass
class Pending:
    """A prepared block waiting for its proposer's signature."""

    header: BlockHeader
    transactions: tuple[Transaction, ...]
    post_state: LedgerState


class Coordinator:
    """Holds the chain, the global model and what each client was last shown."""

    def __init__(
        self,
        run_dir: Path,
        chain: Chain,
        model: Arrays,
        *,
        rule: str,
        params: RuleParams,
        scorer: Scorer | None = None,
        anchoring: Anchoring | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.anchoring = anchoring  # publishes final heights to a witness (fedchain.anchor)
        self.chain = chain
        self.model = {name: np.ascontiguousarray(a) for name, a in model.items()}
        self.model_hash = chain.state.model_head
        if compute_update_hash(self.model) != self.model_hash:
            raise FedchainError("the model given is not the ledger's current model")
        self.rule, self.params = rule, params
        self.scorer = scorer
        self.pending: Pending | None = None
        self.node_keys: dict[int, bytes] = {}
        self.checkpoints: dict[int, int] = {}
        self.replayed: dict[int, int] = {}  # node -> the highest block its attestation shows held
        # Every block as stored (its canonical encoding: what clients replay) and its header.
        self.blocks: list[bytes] = [stored.data for stored in chain.store.iter_blocks()]
        self.headers: list[SignedHeader] = [decode(Block, b).signed_header for b in self.blocks]
        # Resuming (Chain.open verified the ledger): finality continues from the stored blocks.
        verified = chain.verified
        self.validators_by_height: dict[int, dict[bytes, int]] = (
            {h: dict(v) for h, v in verified.validators_by_height.items()} if verified else {}
        )
        self.final_height = verified.final_height if verified else 0
        self._drop_old_updates()  # a coordinator stopped before it could

    # -- what clients are sent ------------------------------------------------------------------

    @property
    def state(self) -> LedgerState:
        return self.chain.state

    def ledger_view(self, node_id: int) -> dict[str, object]:
        """The ledger part of a message to ``node_id``: the blocks from its checkpoint to the
        head (whole: the client replays them), the final height, and the pending block (if any):
        its header, naming the key drawn to seal it, and its transactions, which every client
        re-executes before it attests or seals (:mod:`fedchain.rounds.replica`).

        A block the node has already replayed goes without its transactions: the client only
        compares its hash (the header's) with the block it holds, and a body left out of a block
        it does not hold fails its transactions root, so this saves bytes and trusts nothing.
        """
        start = min(self.checkpoints.get(node_id, 0), self.final_height)
        held = self.replayed.get(node_id, -1)
        pending = self.pending
        return encode_ledger_view(
            self.state.genesis_hash,
            self.state.genesis.run_id,
            [
                Block(self.headers[height], ()) if height <= held else self.blocks[height]
                for height in range(start, len(self.blocks))
            ],
            self.final_height,
            None if pending is None else pending.header,
            () if pending is None else pending.transactions,
        )

    def node_for(self, public_key: bytes) -> int | None:
        for node_id, key in self.node_keys.items():
            if key == public_key:
                return node_id
        return None

    # -- a round ----------------------------------------------------------------------------------

    def seal_from(self, replies: Sequence[ClientReply]) -> bool:
        """Append the pending block if one reply carries its proposer's valid seal."""
        if self.pending is None:
            return True
        return any(reply.seal and self._try_seal(reply.seal) for reply in replies)

    def _try_seal(self, signature: bytes) -> bool:
        pending = self.pending
        if pending is None:
            return True
        try:
            block = seal_block(
                pending.header, signature, pending.transactions, self.state.genesis_hash
            )
        except LedgerError:
            return False
        validators = dict(get_validators(self.state))
        self.chain.append(block, pending.post_state)
        self.validators_by_height[block.header.height] = validators
        self.blocks.append(encode(block))
        self.headers.append(block.signed_header)
        self.pending = None
        self._update_finality()
        return True

    def reattempt(self, attempt: int) -> BlockHeader:
        """Re-prepare the pending block for the proposer drawn at ``attempt`` (its first choice
        did not seal it). Attestations to the old header are void: it never entered the chain."""
        if self.pending is None:
            raise FedchainError("no block is pending")
        txs = self.pending.transactions
        header, post = prepare_block(
            self.state, txs, attempt, round=self.pending.header.round, verifier=self.chain.verifier
        )
        self.pending = Pending(header, txs, post)
        return header

    def run_round(self, round_: int, replies: Sequence[ClientReply]) -> RoundOutcome:
        """Admit round ``round_``'s replies, aggregate, register the model, prepare its block.

        The previous round's block must be sealed first (:meth:`seal_from`).
        """
        if self.pending is not None:
            raise FedchainError(f"block {self.pending.header.height} is still waiting for its seal")
        outcome = RoundOutcome(round_)
        txs: list[Transaction] = []
        work = self._admit_app_approvals(self.state, round_, txs)
        replies = sorted(
            replies, key=compute_reply_order
        )  # arrival order must not change the model
        for reply in replies:
            work = self._admit_attestation(work, reply, round_, txs)
        accepted: list[tuple[UpdateCommitment, Arrays]] = []
        for reply in replies:
            work = self._admit_update(work, reply, round_, txs, accepted, outcome)
        if accepted and self.state.genesis.rules.update_archive_rounds != 0:
            # archived before the block is prepared, so anyone can recompute the scores
            save_round_updates(self.run_dir, round_, {c.update_hash: u for c, u in accepted})
        if accepted:
            base = self.model
            result = self._aggregate(accepted, round_, txs, outcome)
            updates = [u for _, u in accepted]
            raw = compute_raw_scores(result, base, updates, self.scorer, round_)
            scores = compute_quantised_scores([c.public_key for c, _ in accepted], raw)
            txs.append(ContributionRecord(round_, scores))
            outcome.scores = dict(scores)
            version = next(tx for tx in reversed(txs) if isinstance(tx, ModelVersion))
            rules = self.state.genesis.rules
            outcome.payout = compute_round_payout(  # the ledger's payout rule
                self.state.carried_reward,
                pool=rules.reward_per_round,
                scores=scores,
                moved=has_model_moved(
                    version.update_hashes, version.model_hash, version.parent_hash
                ),
                min_score=rules.payout_min_score,
                debts={key: self.state.participants[key].score_debt for key, _ in scores},
            )
            if outcome.payout.rewards:
                txs.append(RewardDeltas(round_, outcome.payout.rewards))
        txs.extend(self._anchor_receipts())
        header, post = prepare_block(self.state, txs, round=round_, verifier=self.chain.verifier)
        self.pending = Pending(header, tuple(txs), post)
        self._update_finality()
        outcome.model_hash = self.model_hash
        outcome.head_height = self.state.height
        outcome.final_height = self.final_height
        return outcome

    def close(self, replies: Sequence[ClientReply]) -> Pending:
        """After the last round: a block of the attestations to the last round's block."""
        txs: list[Transaction] = []
        work = self._admit_app_approvals(self.state, self.state.round, txs)
        for reply in replies:
            work = self._admit_attestation(work, reply, self.state.round, txs)
        txs.extend(self._anchor_receipts())
        header, post = prepare_block(
            self.state, txs, round=self.state.round, verifier=self.chain.verifier
        )
        self.pending = Pending(header, tuple(txs), post)
        return self.pending

    # -- admission ----------------------------------------------------------------------------

    def _admit_app_approvals(
        self, work: LedgerState, round_: int, txs: list[Transaction]
    ) -> LedgerState:
        """The holders' app approvals in the run's inbox (``fedchain coordinator approve``) that
        the ledger accepts now; read at every block, so one given while the run goes on is
        recorded in its next block."""
        try:
            queued = [entry.approval for entry in read_inbox(self.run_dir)]
        except FedchainError:
            return work  # an unreadable inbox records nothing; `coordinator approve` says why
        work, approved = admit_app_approvals(work, queued, round_, verifier=self.chain.verifier)
        txs.extend(approved)
        return work

    def _admit_attestation(
        self, work: LedgerState, reply: ClientReply, round_: int, txs: list[Transaction]
    ) -> LedgerState:
        work, attestation = admit_attestation(work, reply, round_, verifier=self.chain.verifier)
        if attestation is not None:
            self.checkpoints[reply.node_id] = reply.checkpoint
            # it attested to the block after the head it had replayed
            self.replayed[reply.node_id] = attestation.height - 1
            txs.append(attestation)
        elif reply.error:  # it refused its view, or lost its replica: show it the whole chain
            self.checkpoints.pop(reply.node_id, None)
            self.replayed.pop(reply.node_id, None)
        return work

    def _admit_update(
        self,
        work: LedgerState,
        reply: ClientReply,
        round_: int,
        txs: list[Transaction],
        accepted: list[tuple[UpdateCommitment, Arrays]],
        outcome: RoundOutcome,
    ) -> LedgerState:
        commitment = decode_commitment(reply.commitment)
        verifier = self.chain.verifier
        sender, newly_bound = compute_sender(
            self.node_keys, work, reply.node_id, commitment, round_, verifier=verifier
        )
        if newly_bound and sender is not None:
            self.node_keys[reply.node_id] = sender
        admission = admit_update(work, reply, round_, sender, self.model, verifier=verifier)
        if admission.accepted is not None:
            accepted.append(admission.accepted)
        txs.extend(admission.txs)
        outcome.decisions.append(admission.decision)
        return admission.state

    # -- aggregation, contribution and registration ----------------------------------------------

    def _aggregate(
        self,
        accepted: list[tuple[UpdateCommitment, Arrays]],
        round_: int,
        txs: list[Transaction],
        outcome: RoundOutcome,
    ) -> AggregationResult:
        """Aggregate, register the new model; return the aggregation (its weights and, for
        rules that score the round to aggregate it, such as ``screened``, those scores)."""
        participants = self.state.participants
        keys = [c.public_key for c, _ in accepted]
        result = compute_aggregation(
            self.rule,
            self.params,
            self.model,
            [u for _, u in accepted],
            examples=[c.num_examples for c, _ in accepted],
            stakes=[participants[k].stake for k in keys],
            reputations=[participants[k].reputation_bps for k in keys],
            scorer=self.scorer,
            round_=round_,
        )
        new_model = {
            name: (self.model[name] + delta).astype(self.model[name].dtype, copy=False)
            for name, delta in result.arrays.items()
        }
        model_hash = save_model(self.run_dir, new_model)
        # a set: clients may send byte-identical updates (free riders sending zeros)
        used = tuple(sorted({accepted[i][0].update_hash for i in result.selected}))
        txs.append(ModelVersion(round_, model_hash, self.model_hash, used, self.rule))
        self.model, self.model_hash = new_model, model_hash
        shares = {keys[i]: float(result.weights[i]) for i in range(len(keys))}
        outcome.weights = shares
        outcome.aggregation = explain_aggregation(result, keys)
        return result

    def _anchor_receipts(self) -> list[AnchorReceipt]:
        """The receipt of an anchor published now, if the anchoring interval says one is due."""
        if self.anchoring is None:
            return []
        return self.anchoring.receipts_due(self._block_at, self.final_height)

    def _block_at(self, height: int) -> Block:
        return decode(Block, self.blocks[height])

    def _update_finality(self) -> None:
        final = compute_finalized_height(
            self.validators_by_height, self.state.last_attested.items(), self.final_height
        )
        if final != self.final_height:
            self.final_height = final
            self._drop_old_updates()

    def _drop_old_updates(self) -> None:
        """Delete the update packs the federation's retention rule no longer keeps, now that
        the final block's round is known (:func:`fedchain.runs.archive.drop_old_packs`)."""
        final_round = self.headers[self.final_height].header.round
        drop_old_packs(self.run_dir, self.state.genesis.rules.update_archive_rounds, final_round)
