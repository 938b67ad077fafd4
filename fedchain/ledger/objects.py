"""The ledger's objects: the genesis "contract", transactions, headers and blocks.

All are frozen dataclasses with a unique ``TAG`` and no behaviour; their one byte form is
:func:`fedchain.ledger.codec.encode`. Derived values (hashes, roots, signing messages, signature
domains) are in :mod:`fedchain.ledger.derived`.

Units: stakes, rewards and slashed amounts are integers in base units; fractions are basis points
(``_bps``, 10_000 = 100 %); contribution scores are integers at :data:`SCORE_SCALE`.
Sizes: public keys and hashes are 32 bytes, signatures 64 (checked by the state transition, not
by the codec).

Signatures: a signed object's *signing message* is its encoding with the ``signature`` field
emptied (``b""``), signed under its :class:`~fedchain.crypto.identity.Domain` with the genesis hash
as the federation (:func:`~fedchain.ledger.derived.signing_message`,
:data:`~fedchain.ledger.derived.SIGNING_DOMAINS`); a genesis participant's
registration, made before the genesis exists, with the federation id
(:func:`~fedchain.ledger.derived.compute_federation_id`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeAlias

__all__ = [
    "ANCHOR_WITNESSES",
    "ARCHIVE_ALL_ROUNDS",
    "DOUBLE_SIGN",
    "DP_MODES",
    "DP_OFF",
    "EMPTY_HASH",
    "FINETUNE_MODES",
    "HASH_SIZE",
    "MAX_ANCHOR_PROOF_SIZE",
    "MAX_REFUSAL_DETAIL_CHARS",
    "REFUSAL_CODES",
    "REFUSE_APP",
    "REFUSE_EPOCHS",
    "REFUSE_PRIVACY",
    "REFUSE_ROUNDS",
    "SCORE_SCALE",
    "SLASHING_KINDS",
    "AnchorReceipt",
    "AnchorStatement",
    "AppApproval",
    "Attestation",
    "AttestationPair",
    "Block",
    "BlockHeader",
    "BlockTransaction",
    "ContributionRecord",
    "Evidence",
    "Genesis",
    "GenesisParticipant",
    "Hash32",
    "HeaderPair",
    "ModelRecord",
    "ModelVersion",
    "PublicKey",
    "Refusal",
    "Registration",
    "Rejection",
    "RewardDeltas",
    "Rules",
    "SignedHeader",
    "SignedObject",
    "SlashingEvidence",
    "Transaction",
    "UpdateCommitment",
]

PublicKey: TypeAlias = bytes
"""A raw 32-byte Ed25519 public key: a participant's ledger identity."""
Hash32: TypeAlias = bytes
"""A 32-byte SHA-256 digest."""

HASH_SIZE = 32
EMPTY_HASH = bytes(HASH_SIZE)
"""32 zero bytes: the genesis block's parent and proposer."""

SCORE_SCALE = 10**6
"""Contribution scores are recorded as ``round(score * SCORE_SCALE)``."""

ARCHIVE_ALL_ROUNDS = -1
"""``Rules.update_archive_rounds`` for an archive that keeps every round's updates."""

DP_OFF = "off"
DP_MODES = frozenset({DP_OFF, "client", "example"})
"""Differential privacy: none, client level (clip and noise the update), example level
(DP-SGD)."""

DOUBLE_SIGN = "double_sign"
SLASHING_KINDS = frozenset({DOUBLE_SIGN})
"""The offences that cost stake: only those a third party can re-check from the ledger alone.

Double signing is two signatures by one key, so it is provable. An update that does not match
its signed commitment is not: only the coordinator saw the bytes that arrived (the client signs
the hash it commits to, not what it sends), so such an update is a :class:`Rejection`, never a
penalty."""


# --------------------------------------------------------------------------------------------------
# Genesis: the federation's contract

FINETUNE_MODES = ("full", "head", "lora")
"""Which of a model's parameters the federation trains (:class:`ModelRecord`): all of them, the
classifier head alone (the backbone frozen at the base's values), or low-rank adapters
(LoRA) plus the head."""


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """The model every participant trains and the base it starts from, fixed at genesis.

    ``architecture`` names it (a built-in, a torchvision architecture, or a task module's import
    path: :mod:`fedchain.learning.task`); ``finetune`` is one of :data:`FINETUNE_MODES`,
    ``lora_rank`` the adapters' rank (0 unless ``lora``). ``base_hash`` is the canonical hash
    (:func:`fedchain.crypto.hashing.compute_update_hash`) of every tensor in the base weights
    file, buffers included (:data:`EMPTY_HASH`: no base, the model starts from its seeded
    initialisation); ``base_source`` and ``base_licence`` are the coordinator's text about where
    the base came from and under which licence. ``trainable`` names, in the model's order, the
    tensors that travel: updates, their hashes, the scores and every global model version cover
    exactly these (the trainable parameters; never a buffer). ``update_bytes`` is the exact size
    of one update, the most a holder sends of its data's influence in a round: those tensors as
    float32, ``4 x`` their element count (0: not stated). A holder's client sends nothing else
    and no more (:func:`fedchain.rounds.participant.check_outgoing_update`).

    An empty ``architecture`` (the default) says nothing about the model: ledgers made without
    one (synthetic ledgers, tests of the protocol alone).
    """

    TAG: ClassVar[int] = 4
    architecture: str = ""
    finetune: str = "full"
    lora_rank: int = 0
    base_hash: Hash32 = EMPTY_HASH
    base_source: str = ""
    base_licence: str = ""
    trainable: tuple[str, ...] = ()
    update_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Rules:
    """The federation's rules, fixed at genesis.

    ``slash_bps`` is ``((kind, basis points), ...)`` sorted by kind (a kind left out slashes 0);
    ``aggregation_params`` is ``((name, value), ...)`` sorted by name. ``payout_min_score``
    (score quanta) is the sum of a round's positive scores at which the round pays all of the
    available pool, less paying in proportion (the payout rule, :mod:`fedchain.rounds.rewards`);
    ``score_debt_decay_bps`` the share of a participant's score debt (the negative score a
    positive one must first repay before it is paid) forgiven after each round, harm (the part
    of negative scores beyond 0.01) excepted, of which ``harm_debt_decay_bps`` is forgiven
    (both 10_000: no debt is kept, each round pays its own positive scores);
    ``contribution_budget`` the sampling contribution methods' coalition evaluations per scored
    client (0: the method's default), raised for a round of few clients so that it evaluates at
    least ``contribution_min_evaluations`` coalitions
    (:func:`fedchain.rounds.contribution.compute_evaluations_per_client`).
    ``update_archive_rounds`` is the update archive's retention: which rounds' accepted client
    updates the run directory must keep (:data:`ARCHIVE_ALL_ROUNDS`: every round; 0: none; K:
    the last K rounds; see :mod:`fedchain.runs.archive`).

    Differential privacy (``dp_*``, all 0 with ``dp_mode`` ``"off"``): ``dp_mode`` is
    ``"client"`` (each update clipped to ``dp_clip_micro`` and noised before it is hashed) or
    ``"example"`` (DP-SGD); real numbers are integers at a scale named by their suffix
    (``_micro``: x 10**6, ``_pico``: x 10**12). One participation is ``dp_steps_per_round``
    steps of the Gaussian mechanism with noise multiplier ``dp_noise_micro`` at sampling rate
    ``dp_sample_rate_micro`` (client level: one step at rate 1). ``dp_max_participations`` is
    the most participations whose RDP epsilon at ``dp_delta_pico`` stays within
    ``dp_max_epsilon_micro`` (:mod:`fedchain.privacy.accountant`, computed once when the genesis
    is made): the ledger enforces this integer, so its decisions replay bit-exactly.

    ``model`` is the model and base every participant trains (:class:`ModelRecord`): part of the
    rules, so the federation id, and with it every registration, binds it.

    The rules of data use every registration agrees to: ``max_rounds``, the last round any
    update may be committed for (the ledger refuses later commitments and model versions), and
    ``max_local_epochs``, the most local epochs a round may ask of a holder (each holder's client
    refuses more; the ledger cannot see epochs). 0: no limit (synthetic ledgers).

    ``model_access``: who may be given the federation's models besides its participants (who
    receive every round's model to train on it): these public keys, sorted, each once (empty:
    the participants alone). fedchain hands a model out only to them (``fedchain models export
    --recipient``, :func:`is_model_recipient`); a coordinator holding the files can still copy
    them, so the rule is a signed statement and a record, not a lock (spec §9.12).
    """

    TAG: ClassVar[int] = 1
    min_stake: int
    reward_per_round: int
    slash_bps: tuple[tuple[str, int], ...]
    aggregation_rule: str
    aggregation_params: tuple[tuple[str, str], ...]
    contribution_method: str
    weight_cap_bps: int
    reputation_penalty_bps: int
    payout_min_score: int = 0
    score_debt_decay_bps: int = 10_000
    harm_debt_decay_bps: int = 10_000
    contribution_budget: int = 0
    contribution_min_evaluations: int = 0
    update_archive_rounds: int = ARCHIVE_ALL_ROUNDS
    dp_mode: str = "off"
    dp_noise_micro: int = 0
    dp_clip_micro: int = 0
    dp_sample_rate_micro: int = 0
    dp_steps_per_round: int = 0
    dp_delta_pico: int = 0
    dp_max_epsilon_micro: int = 0
    dp_max_participations: int = 0
    model: ModelRecord = ModelRecord()
    max_rounds: int = 0
    max_local_epochs: int = 0
    model_access: tuple[PublicKey, ...] = ()


@dataclass(frozen=True, slots=True)
class GenesisParticipant:
    """A registration as the genesis holds it, signed by ``public_key`` under the registration
    domain with the federation id (:func:`~fedchain.ledger.derived.compute_federation_id`) as
    the federation: the genesis hash, which every later signature binds, is computed from these
    registrations.

    ``name`` is the participant's name (empty in a simulation), ``supernode_key`` the text of its
    SuperNode's authentication public key (one OpenSSH line; empty if none). ``app_digest`` is
    the SHA-256 of the Flower app bundle (FAB) the holder agrees to run on its data, the only
    app its node runs (:mod:`fedchain.deploy.app`, :mod:`fedchain.deploy.gate`; empty in a
    simulation, which runs no FAB), ``fedchain_version`` the fedchain release it runs.
    """

    TAG: ClassVar[int] = 2
    public_key: PublicKey
    stake: int
    dataset_hash: Hash32
    num_examples: int
    name: str
    supernode_key: str
    app_digest: bytes
    fedchain_version: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class Genesis:
    """The federation: ``compute_hash(genesis)`` is the genesis hash that every signature binds.

    ``participants`` are sorted by public key.
    """

    TAG: ClassVar[int] = 3
    run_id: str
    rules: Rules
    initial_model_hash: Hash32
    participants: tuple[GenesisParticipant, ...]


# --------------------------------------------------------------------------------------------------
# Transactions


@dataclass(frozen=True, slots=True)
class Registration:
    """A new participant joins with a stake and its dataset commitment; signed by itself."""

    TAG: ClassVar[int] = 10
    public_key: PublicKey
    stake: int
    dataset_hash: Hash32
    num_examples: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class UpdateCommitment:
    """A client's signed claim: "in this run and round, from this model, I sent this update".

    ``dp_noise_micro``, ``dp_sample_rate_micro`` and ``dp_steps`` are the privacy mechanism
    the client says it applied before hashing (what the accountant needs; 0, 0, 0 without DP):
    they must equal the genesis rules' (:class:`Rules`)."""

    TAG: ClassVar[int] = 11
    run_id: str
    round: int
    base_model_hash: Hash32
    update_hash: Hash32
    num_examples: int
    public_key: PublicKey
    dp_noise_micro: int
    dp_sample_rate_micro: int
    dp_steps: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """The round's new global model; covered by the block proposer's signature.

    ``update_hashes`` (sorted) are the committed updates it aggregates, ``rule`` the rule used.
    """

    TAG: ClassVar[int] = 12
    round: int
    model_hash: Hash32
    parent_hash: Hash32
    update_hashes: tuple[Hash32, ...]
    rule: str


@dataclass(frozen=True, slots=True)
class ContributionRecord:
    """Quantised contribution scores ``((public key, score * SCORE_SCALE), ...)`` by key.

    One per round, after the round's :class:`ModelVersion`, scoring exactly the keys that
    committed in the round."""

    TAG: ClassVar[int] = 13
    round: int
    scores: tuple[tuple[PublicKey, int], ...]


@dataclass(frozen=True, slots=True)
class RewardDeltas:
    """The round's rewards ``((public key, amount), ...)`` sorted by key, in base units.

    Valid only right after the round's :class:`ContributionRecord` in the same block, when the
    payout rule (:func:`~fedchain.rounds.rewards.compute_round_payout`) pays the carried pool,
    and only as exactly its split: no amount is negative (stake is lost only to
    :class:`SlashingEvidence`), at most one per round."""

    TAG: ClassVar[int] = 14
    round: int
    deltas: tuple[tuple[PublicKey, int], ...]


@dataclass(frozen=True, slots=True)
class HeaderPair:
    """Double-sign evidence: two different headers of one height signed by one proposer,
    ordered by block hash (``compute_hash(first.header) < compute_hash(second.header)``)."""

    TAG: ClassVar[int] = 20
    first: SignedHeader
    second: SignedHeader


@dataclass(frozen=True, slots=True)
class AttestationPair:
    """Double-sign evidence: two attestations of one height to different blocks by one signer,
    ordered by ``block_hash`` (``first.block_hash < second.block_hash``)."""

    TAG: ClassVar[int] = 21
    first: Attestation
    second: Attestation


Evidence: TypeAlias = HeaderPair | AttestationPair


@dataclass(frozen=True, slots=True)
class SlashingEvidence:
    """Proof of a slashable offence by ``offender``, recorded in block round ``round``.

    ``kind`` is :data:`DOUBLE_SIGN`, with a :class:`HeaderPair` or :class:`AttestationPair` of
    heights on this chain's past. Anyone may submit it, and anyone can re-check it: the two
    signatures are the proof.
    """

    TAG: ClassVar[int] = 15
    kind: str
    offender: PublicKey
    round: int
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refusal on record (e.g. a bad signature "from" a key, or an update whose hash differs
    from its signed commitment): never a penalty, since nobody but the coordinator can check
    it (anyone can forge a bad signature in someone else's name; only the coordinator saw the
    bytes that arrived)."""

    TAG: ClassVar[int] = 16
    round: int
    public_key: PublicKey
    reason: str


REFUSE_ROUNDS = "round-past-agreed"
REFUSE_EPOCHS = "epochs-past-agreed"
REFUSE_PRIVACY = "privacy-budget-spent"
REFUSE_APP = "app-not-approved"
REFUSAL_CODES = frozenset({REFUSE_ROUNDS, REFUSE_EPOCHS, REFUSE_PRIVACY, REFUSE_APP})
"""Why a holder refuses a train message, in a :class:`Refusal`: its client, for a round past
the genesis's ``max_rounds``, more local epochs than its ``max_local_epochs``, or its privacy
budget spent; its node (:mod:`fedchain.deploy.gate`), for an app it did not approve."""
MAX_REFUSAL_DETAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class Refusal:
    """A holder's own signed refusal to train in ``round``: the train message asked for more
    than the federation's rules of data use allow. ``code`` is one of :data:`REFUSAL_CODES`,
    ``detail`` the holder's words (what was asked, what the contract allows; at most
    :data:`MAX_REFUSAL_DETAIL_CHARS` characters). Signed by ``public_key`` under the refusal
    domain with the genesis hash, so, unlike a :class:`Rejection`, it is the holder's word, not
    the coordinator's: nobody else can record a refusal in its name."""

    TAG: ClassVar[int] = 23
    public_key: PublicKey
    round: int
    code: str
    detail: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class Attestation:
    """A validator's signed vote for the block ``block_hash`` at ``height`` (and its ancestors)."""

    TAG: ClassVar[int] = 17
    validator: PublicKey
    height: int
    block_hash: Hash32
    signature: bytes


ANCHOR_WITNESSES = frozenset({"evm", "rfc3161"})
"""The witnesses an :class:`AnchorReceipt` may name: an EVM chain's anchor contract, or an
RFC 3161 timestamping authority (see :mod:`fedchain.anchor`)."""

MAX_ANCHOR_PROOF_SIZE = 65_536
"""The largest witness proof a receipt may carry, in bytes (an RFC 3161 response with its
certificate chain is a few KiB)."""


@dataclass(frozen=True, slots=True)
class AnchorStatement:
    """What an anchor publishes: "this federation's block ``height`` is ``block_hash``, and the
    global model after it is ``model_head``". Its witness digest is ``compute_hash(statement)``
    (32 bytes: the tag makes it a fedchain anchor, not any other SHA-256)."""

    TAG: ClassVar[int] = 19
    genesis_hash: Hash32
    height: int
    block_hash: Hash32
    model_head: Hash32


@dataclass(frozen=True, slots=True)
class AnchorReceipt:
    """A witness outside the coordinator has seen ``statement``'s digest: ``proof`` is the
    witness's evidence (``witness`` ``"evm"``: the contract call's chain, contract and
    transaction, as JSON; ``"rfc3161"``: the DER ``TimeStampResp``). The state transition checks
    that the statement names a block of this chain; the proof is checked against the witness
    itself by ``fedchain verify --anchors`` (the ledger cannot reach the witness)."""

    TAG: ClassVar[int] = 18
    witness: str
    statement: AnchorStatement
    proof: bytes


@dataclass(frozen=True, slots=True)
class AppApproval:
    """A data holder approves another app to run on its data (an upgrade): from now on its
    node runs the app bundle whose SHA-256 is ``app_digest`` instead of ``replaces`` (the digest
    it approved before: its registration's, or its previous approval's). ``sequence`` counts the
    holder's approvals (1 for its first), so an old approval can never be replayed, not even
    after the holder went back to an app it had left. Signed by ``public_key`` under the
    app-approval domain with the federation id as the federation, like its registration.

    The holder keeps it (``fedchain join --approve``); the coordinator records it as a
    transaction (``fedchain coordinator approve``), and from that block on the ledger's state
    names the new digest as the holder's approved app."""

    TAG: ClassVar[int] = 50
    public_key: PublicKey
    app_digest: Hash32
    replaces: Hash32
    sequence: int
    fedchain_version: str
    signature: bytes


Transaction: TypeAlias = (
    Registration
    | UpdateCommitment
    | ModelVersion
    | ContributionRecord
    | RewardDeltas
    | SlashingEvidence
    | Rejection
    | Attestation
    | AnchorReceipt
    | AppApproval
    | Refusal
)
BlockTransaction: TypeAlias = Transaction | Genesis
"""What a block may carry: transactions, or (block 0 only) the :class:`Genesis`."""


# --------------------------------------------------------------------------------------------------
# Blocks


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """``attempt`` > 0 means the proposers of the earlier attempts did not show up (see
    :func:`fedchain.ledger.consensus.compute_proposer`)."""

    TAG: ClassVar[int] = 30
    height: int
    round: int
    parent_hash: Hash32
    tx_root: Hash32
    state_root: Hash32
    proposer: PublicKey
    attempt: int


@dataclass(frozen=True, slots=True)
class SignedHeader:
    TAG: ClassVar[int] = 31
    header: BlockHeader
    signature: bytes


@dataclass(frozen=True, slots=True)
class Block:
    TAG: ClassVar[int] = 32
    signed_header: SignedHeader
    transactions: tuple[BlockTransaction, ...]

    @property
    def header(self) -> BlockHeader:
        return self.signed_header.header


SignedObject: TypeAlias = (
    GenesisParticipant
    | Registration
    | UpdateCommitment
    | Attestation
    | SignedHeader
    | AppApproval
    | Refusal
)
