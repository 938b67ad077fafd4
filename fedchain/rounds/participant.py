"""A data holder's ledger duties in a round: check the view, attest, seal, commit to the update.

Each message a client gets shows it the ledger from its last final block to the head and the
block waiting for its seal. The client checks that view with the light client (it must extend
the last final block the client saw), signs an attestation to the pending block, seals it when
the stake draw chose this client as its proposer, and signs the commitment to its update. Pure
given the key: no Flower, no disk.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedchain.crypto.hashing import compute_update_hash
from fedchain.ledger.builder import sign_attestation, sign_commitment, sign_header
from fedchain.ledger.codec import encode
from fedchain.ledger.lightclient import Checkpoint, check_head
from fedchain.ledger.objects import compute_block_hash
from fedchain.rounds.messages import Duties, LedgerView


def check_view(saved: Checkpoint | None, view: LedgerView) -> Checkpoint:
    """The client's new checkpoint once ``view`` extends ``saved`` (raises InvalidBlock if not)."""
    return check_head(saved, view.headers, view.final_height, view.pending, view.genesis_hash)


def compute_duties(
    key: Ed25519PrivateKey, public_key: bytes, view: LedgerView, checkpoint: Checkpoint
) -> Duties:
    """The attestation to the pending block and, from its drawn proposer, its seal."""
    pending = view.pending
    if pending is None:
        return Duties(checkpoint.height)
    attestation = sign_attestation(
        key, view.genesis_hash, height=pending.height, block_hash=compute_block_hash(pending)
    )
    seal = b""
    if pending.proposer == public_key:
        seal = sign_header(key, view.genesis_hash, pending).signature
    return Duties(checkpoint.height, encode(attestation), seal)


def sign_update_commitment(
    key: Ed25519PrivateKey,
    view: LedgerView,
    *,
    round_: int,
    base_model_hash: bytes,
    update: Mapping[str, np.ndarray],
    num_examples: int,
) -> bytes:
    """The encoded, signed commitment to ``update`` (its canonical hash) and the example count
    claimed for it, on the round's base model."""
    commitment = sign_commitment(
        key,
        view.genesis_hash,
        run_id=view.run_id,
        round=round_,
        base_model_hash=base_model_hash,
        update_hash=compute_update_hash(update),
        num_examples=num_examples,
    )
    return encode(commitment)
