"""What a data holder checks of the ledger it is shown, without holding the ledger.

A client keeps one checkpoint: the last block the coordinator told it was final (height and
hash). Each round the coordinator sends the signed headers from that checkpoint to the head, the
height it now claims final, and the header of the block being built. The client accepts only a
chain that starts at its checkpoint, links parent by parent, carries valid proposer signatures,
and ends where the pending block begins; then it moves its checkpoint forward. So a coordinator
can never make a client attest to a history that rewrites a block the client saw as final.

A light client cannot check proposer *choice* (that needs the stakes) or the transactions. A
client that signs does both before it attests or seals: it replays the blocks on its own replica
of the ledger and re-derives the pending block (``fedchain.rounds.replica``, which runs this check
first); anyone holding the ledger does the same with ``fedchain verify``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from fedchain.crypto import ed25519
from fedchain.errors import InvalidBlock
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.objects import BlockHeader, SignedHeader
from fedchain.ledger.signatures import PLAIN, Verifier, is_signed_by


@dataclass(frozen=True)
class Checkpoint:
    """The last final block a client saw."""

    height: int
    block_hash: bytes


def check_head(
    saved: Checkpoint | None,
    headers: Sequence[SignedHeader],
    final_height: int,
    pending: BlockHeader | None,
    genesis_hash: bytes,
    *,
    verifier: Verifier = PLAIN,
) -> Checkpoint:
    """Check the chain a coordinator shows; return the client's new checkpoint.

    ``final_height`` is the height the caller takes as final: a client holding a replica passes
    the one its replica proves (:func:`fedchain.rounds.participant.check_view_replayed`), never
    the coordinator's claim, which it only compares with it; the light check alone
    (:func:`fedchain.rounds.participant.check_view`) can do no better than the claim.
    ``headers`` must contain the client's checkpoint block and link from there to the head.
    Raises :class:`InvalidBlock` if they do not extend ``saved`` (or are malformed).
    With no checkpoint yet the first header is trusted (the client joined the federation
    ``genesis_hash``; its genesis block is unsigned by design). ``verifier``: how proposer
    signatures are checked (:mod:`fedchain.ledger.signatures`; a caching one remembers only
    triples that verified).
    """
    if not headers:
        raise InvalidBlock("the coordinator sent no headers")
    first = headers[0].header
    hashes = [compute_block_hash(first)]
    for previous, signed in itertools.pairwise(headers):
        header = signed.header
        if header.height != previous.header.height + 1 or header.parent_hash != hashes[-1]:
            raise InvalidBlock(f"header {header.height} does not link to its parent")
        if not is_signed_by(signed, header.proposer, genesis_hash, verifier=verifier):
            reason = ed25519.explain_refusal(header.proposer, signed.signature)
            raise InvalidBlock(
                f"header {header.height}: the proposer's signature does not verify for its key "
                "in this federation" + ("" if reason is None else f": {reason}")
            )
        hashes.append(compute_block_hash(header))
    if saved is not None:
        index = saved.height - first.height
        if not 0 <= index < len(hashes) or hashes[index] != saved.block_hash:
            raise InvalidBlock(
                f"the head does not extend the last final block this client saw "
                f"(height {saved.height}, {saved.block_hash.hex()[:16]})"
            )
    last = headers[-1].header
    if pending is not None and (
        pending.height != last.height + 1 or pending.parent_hash != hashes[-1]
    ):
        raise InvalidBlock("the pending block does not extend the head")
    if not first.height <= final_height <= last.height:
        raise InvalidBlock(f"claimed final height {final_height} is outside the headers sent")
    if saved is not None and final_height < saved.height:
        raise InvalidBlock(f"claimed final height {final_height} is below {saved.height}")
    return Checkpoint(final_height, hashes[final_height - first.height])
