"""A holder's checkpoint is the final height its own replica proves, not the coordinator's claim.

The coordinator plays the liar against the real ClientApp (deployed holders, with their replica
folders): a view claiming block 0 final cannot hold a holder's checkpoint back, and a view claiming
a block final that the attestations do not make final is refused, with no attestation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedchain.ledger.checkpoints import load_checkpoint
from fedchain.ledger.codec import decode
from fedchain.ledger.derived import compute_block_hash
from fedchain.ledger.objects import Block
from fedchain.ledger.verify import verify_ledger
from fedchain.rounds import messages as m
from fedchain.rounds import replica_files
from fedchain.rounds.replica import replay_replica
from fedchain.runs.layout import HOLDER_CHECKPOINT_FILENAME, LEDGER_FILENAME
from fedchain.runs.prepare import RunSetup
from tests.test_validators import CLIENTS, deployed_grid, query, stored_blocks


@pytest.fixture(scope="module")
def run(inprocess_federation, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A three-round federation of deployed holders; returns (setup, holders' folder)."""
    out = tmp_path_factory.mktemp("finality")
    fed = inprocess_federation(out, clients=CLIENTS, rounds=3, model="mlp")
    fed.grid = deployed_grid(fed.setup, out / "holders")
    fed.run()
    return fed.setup, out / "holders"


def whole_view(setup: RunSetup, claimed: int) -> dict[str, object]:
    genesis_hash = verify_ledger(setup.run_dir).genesis_hash
    return m.encode_ledger_view(
        genesis_hash, setup.config.run_id, stored_blocks(setup), claimed, None
    )


def test_the_honest_runs_checkpoints_are_the_final_heights_the_ledger_proves(
    run: tuple[RunSetup, Path],
) -> None:
    _, folder = run
    for index in range(CLIENTS):
        holder = folder / f"holder-{index}"
        report = verify_ledger(holder / LEDGER_FILENAME)
        _, checkpoint = load_checkpoint(holder / HOLDER_CHECKPOINT_FILENAME)
        stored = replica_files.load_replica(holder)
        assert stored is not None
        assert checkpoint.height == report.final_height >= 1
        assert checkpoint.height == replay_replica(stored.encodings).final_height


def test_invalid_a_claim_of_final_zero_does_not_hold_a_new_holder_back(
    run: tuple[RunSetup, Path], tmp_path: Path
) -> None:
    setup, _ = run
    proven = verify_ledger(setup.run_dir).final_height
    assert proven >= 1
    reply = query(deployed_grid(setup, tmp_path), setup, whole_view(setup, 0))
    assert not reply.has_error(), reply.error.reason
    _, checkpoint = load_checkpoint(tmp_path / "holder-0" / HOLDER_CHECKPOINT_FILENAME)
    blocks = stored_blocks(setup)
    assert checkpoint.height == proven
    assert checkpoint.block_hash == compute_block_hash(decode(Block, blocks[proven]).header)


def test_invalid_a_claim_above_what_the_attestations_prove_is_refused(
    run: tuple[RunSetup, Path], tmp_path: Path
) -> None:
    setup, _ = run
    report = verify_ledger(setup.run_dir)
    assert report.final_height < report.head_height  # the head is not final yet
    reply = query(deployed_grid(setup, tmp_path), setup, whole_view(setup, report.head_height))
    assert reply.has_error() and "makes only block" in str(reply.error.reason)
    assert not (tmp_path / "holder-0" / HOLDER_CHECKPOINT_FILENAME).exists()
