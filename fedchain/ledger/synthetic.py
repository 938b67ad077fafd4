"""Synthetic federations: valid, fully signed ledgers of any size, for tests and benchmarks.

Keys and update hashes derive from a seed, so the same arguments give the same ledger bytes.
Model hashes derive from it too, unless real ones are given (``initial_model_hash``,
``make_round(model_hash=...)``): tests of the model registry register models saved on disk.
Each round every committing participant signs an update commitment, the round's model version
aggregates them, a contribution record gives them equal scores, the reward pool is paid by
the payout rule (:func:`~fedchain.rounds.rewards.compute_round_payout`; with the genesis
``payout_min_score`` 0, all of it, evenly, the remainder one unit each to the smallest keys),
and every active validator attests to the previous block (as clients do in their replies).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto.identity import public_key_bytes
from fedchain.errors import ConfigError
from fedchain.ledger.builder import (
    build_block,
    make_genesis,
    make_rules,
    sign_attestation,
    sign_commitment,
    sign_genesis_participant,
)
from fedchain.ledger.chain import Chain
from fedchain.ledger.consensus import get_proposer
from fedchain.ledger.containers import LedgerState
from fedchain.ledger.derived import compute_federation_id
from fedchain.ledger.objects import (
    SCORE_SCALE,
    Block,
    ContributionRecord,
    ModelVersion,
    RewardDeltas,
    Rules,
    Transaction,
)
from fedchain.ledger.signatures import PLAIN, Verifier
from fedchain.rounds.rewards import compute_round_payout, has_model_moved


def derive_key(seed: int, index: int) -> Ed25519PrivateKey:
    """A deterministic identity: never for real use, only for reproducible synthetic ledgers."""
    material = hashlib.sha256(f"fedchain/synthetic/{seed}/{index}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(material)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


class SyntheticFederation:
    """A federation of ``participants`` equal-stake clients and the blocks it produces."""

    def __init__(
        self,
        participants: int,
        *,
        seed: int = 0,
        stake: int = 10_000,
        num_examples: int = 100,
        run_id: str = "synthetic",
        rules: Rules | None = None,
        initial_model_hash: bytes | None = None,
    ) -> None:
        self.seed = seed
        self.keys = [derive_key(seed, i) for i in range(participants)]
        self.by_public = {public_key_bytes(k): k for k in self.keys}
        self.num_examples = num_examples
        rules = rules or make_rules()
        federation_id = compute_federation_id(run_id, rules)
        self.genesis = make_genesis(
            run_id,
            [
                sign_genesis_participant(
                    k,
                    federation_id,
                    stake=stake,
                    dataset_hash=_digest(seed, "data", i),
                    num_examples=num_examples,
                )
                for i, k in enumerate(self.keys)
            ],
            initial_model_hash=(
                _digest(seed, "model", 0) if initial_model_hash is None else initial_model_hash
            ),
            rules=rules,
        )

    def make_round(
        self,
        state: LedgerState,
        committers: int | None = None,
        attest: bool = True,
        *,
        model_hash: bytes | None = None,
        verifier: Verifier = PLAIN,
    ) -> tuple[Block, LedgerState]:
        """The next round's block on top of ``state`` (which it does not change).

        ``model_hash`` is the round's new global model (default: a digest of seed and round); a
        round without commitments registers no model, so it then must be None.
        """
        round_ = state.round + 1
        run_id, genesis_hash = self.genesis.run_id, state.genesis_hash
        active = [k for k in self.keys if state.participants[public_key_bytes(k)].active]
        chosen = active[: len(active) if committers is None else committers]
        txs: list[Transaction] = []
        if attest and state.height >= 1:
            txs += [
                sign_attestation(k, genesis_hash, height=state.height, block_hash=state.head_hash)
                for k in active
            ]
        commits = [
            sign_commitment(
                k,
                genesis_hash,
                run_id=run_id,
                round=round_,
                base_model_hash=state.model_head,
                update_hash=_digest(self.seed, "update", round_, i),
                num_examples=self.num_examples,
            )
            for i, k in enumerate(chosen)
        ]
        txs += commits
        if model_hash is not None and not commits:
            raise ConfigError(f"round {round_} has no commitments, so it registers no model")
        if commits:
            update_hashes = tuple(sorted(c.update_hash for c in commits))
            model = _digest(self.seed, "model", round_) if model_hash is None else model_hash
            rule = self.genesis.rules.aggregation_rule
            txs.append(ModelVersion(round_, model, state.model_head, update_hashes, rule))
            scores = tuple(sorted((c.public_key, SCORE_SCALE) for c in commits))
            txs.append(ContributionRecord(round_, scores))
            rules = self.genesis.rules
            payout = compute_round_payout(
                state.carried_reward,
                pool=rules.reward_per_round,
                scores=scores,
                moved=has_model_moved(update_hashes, model, state.model_head),
                min_score=rules.payout_min_score,
                debts={key: state.participants[key].score_debt for key, _ in scores},
            )
            if payout.rewards:
                txs.append(RewardDeltas(round_, payout.rewards))
        proposer = self.by_public[get_proposer(state)]
        return build_block(state, txs, proposer, round=round_, verifier=verifier)


def write_synthetic_ledger(
    path: Path, participants: int, rounds: int, *, committers: int | None = None, seed: int = 0
) -> SyntheticFederation:
    """Create a ledger file at ``path`` holding genesis plus ``rounds`` round blocks."""
    federation = SyntheticFederation(participants, seed=seed)
    with Chain.create(path, federation.genesis) as chain:
        for _ in range(rounds):
            chain.append(*federation.make_round(chain.state, committers))
    return federation
