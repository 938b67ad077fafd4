"""A validator never signs two different blocks at one height: the re-attempt attack.

The coordinator shows honest clients the pending block, then (its drawn proposer "did not seal")
re-prepares it for the next draw (:meth:`Coordinator.reattempt`): a different header at the same
height. A client that attested or sealed the first header and then signed the second would hand
the coordinator an AttestationPair or HeaderPair, and so let it slash an honest client at will.
Here the attacker plays that against the real client duties
(:func:`clients.client_app.ledger_duties`), in simulation (``context.state``) and as a deployed
holder restarted between the two headers (its record on disk), and the chain still finalises.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from clients.client_app import ledger_duties
from fedchain.aggregation.rules import RuleParams
from fedchain.crypto.hashing import compute_update_hash
from fedchain.crypto.identity import public_key_bytes
from fedchain.ledger.chain import Chain
from fedchain.ledger.codec import decode
from fedchain.ledger.consensus import detect_double_sign
from fedchain.ledger.lightclient import Checkpoint
from fedchain.ledger.objects import Attestation, BlockHeader, SignedHeader
from fedchain.ledger.synthetic import SyntheticFederation
from fedchain.rounds import messages as m
from fedchain.rounds import replica_files
from fedchain.rounds.admission import ClientReply
from fedchain.rounds.coordinator import Coordinator
from fedchain.rounds.participant import compute_duties, plan_signing
from tests.test_coordinator import MODEL, NODE, reply_with

CLIENTS = 3
ATTEMPTS = 12
Signed = list[tuple[BlockHeader, m.Duties]]
"""What one client signed: each header it was shown, and its duties for it."""


class Federation:
    """A coordinator over a real ledger and three honest clients, each with its own state."""

    def __init__(self, run_dir: Path, holders: Path | None = None) -> None:
        self.fed = SyntheticFederation(
            CLIENTS, initial_model_hash=compute_update_hash(MODEL), run_id="no-double-sign"
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        chain = Chain.create(run_dir / "ledger.db", self.fed.genesis)
        self.coordinator = Coordinator(run_dir, chain, MODEL, rule="fedavg", params=RuleParams())
        self.holders = holders
        self.restart()

    def restart(self) -> None:
        """Every client's SuperNode restarts: its ``context.state`` is empty."""
        self.contexts = [Context(1, NODE + i, {}, RecordDict(), {}) for i in range(CLIENTS)]

    def duties(self, i: int) -> m.Duties:
        config = ConfigRecord(self.coordinator.ledger_view(NODE + i))  # type: ignore[arg-type]
        folder = None if self.holders is None else self.holders / f"holder-{i}"
        return ledger_duties(self.contexts[i], self.fed.keys[i], config, folder)

    def index(self, public_key: bytes) -> int:
        return [public_key_bytes(k) for k in self.fed.keys].index(public_key)

    def train_reply(self, i: int, round_: int) -> ClientReply:
        return reply_with(self.coordinator, self.fed.keys[i], i, round_, self.duties(i))

    def close(self) -> None:
        self.coordinator.chain.close()


def signed_votes(collected: Signed, genesis_hash: bytes) -> list[Attestation | SignedHeader]:
    votes: list[Attestation | SignedHeader] = []
    for header, duties in collected:
        if duties.attestation:
            votes.append(decode(Attestation, duties.attestation))
        if duties.seal:
            votes.append(SignedHeader(header, duties.seal))
    return votes


def play_reattempts(federation: Federation, *, restart: bool) -> dict[int, Signed]:
    """Round 1's block waits for its seal; every client is shown attempt 0, the coordinator
    keeps the seal, then re-attempts ATTEMPTS times and shows every client each new header
    (restarting them all first when ``restart``). What each client signed, by client."""
    coordinator = federation.coordinator
    coordinator.run_round(1, [federation.train_reply(i, 1) for i in range(CLIENTS)])
    assert coordinator.pending is not None
    collected: dict[int, Signed] = {i: [] for i in range(CLIENTS)}
    for attempt in range(ATTEMPTS + 1):
        header = coordinator.reattempt(attempt) if attempt else coordinator.pending.header
        if attempt and restart:
            federation.restart()
        for i in range(CLIENTS):
            collected[i].append((header, federation.duties(i)))
    return collected


def assert_no_double_sign(federation: Federation, collected: dict[int, Signed]) -> None:
    genesis_hash = federation.coordinator.state.genesis_hash
    seals = attestations = 0
    for i, signed in collected.items():
        votes = signed_votes(signed, genesis_hash)
        for a, b in itertools.combinations(votes, 2):
            assert detect_double_sign(a, b, 2) is None, f"client {i} double-signed"
        attestations += sum(isinstance(v, Attestation) for v in votes)
        seals += sum(isinstance(v, SignedHeader) for v in votes)
        assert signed[0][1].attestation  # it did attest the first header it saw
    assert attestations == CLIENTS  # one per client, at attempt 0
    # each client drawn at some attempt sealed once; the attack needed a repeated draw
    drawn = {federation.index(h.proposer) for h, _ in collected[0]}
    assert seals == len(drawn) and len(drawn) < ATTEMPTS + 1


def test_attack_a_reattempted_header_gets_no_second_attestation_or_seal(tmp_path: Path) -> None:
    federation = Federation(tmp_path / "run")
    try:
        assert_no_double_sign(federation, play_reattempts(federation, restart=False))
    finally:
        federation.close()


def test_attack_a_restarted_holder_remembers_what_it_signed_on_disk(tmp_path: Path) -> None:
    federation = Federation(tmp_path / "run", holders=tmp_path / "holders")
    try:
        collected = play_reattempts(federation, restart=True)
        assert_no_double_sign(federation, collected)
        record = replica_files.load_signed(tmp_path / "holders" / "holder-0")
        assert record is not None and record.attested is not None and record.attested[0] == 1
    finally:
        federation.close()


def test_the_pure_duties_without_a_record_would_double_sign(tmp_path: Path) -> None:
    """The control: without the record (a fresh plan each time) both headers get attested."""
    federation = Federation(tmp_path / "run")
    try:
        coordinator = federation.coordinator
        coordinator.run_round(1, [federation.train_reply(i, 1) for i in range(CLIENTS)])
        key = federation.fed.keys[0]
        atts = []
        for attempt in (0, 1):
            if attempt:
                coordinator.reattempt(attempt)
            view = m.decode_ledger_view(coordinator.ledger_view(NODE))
            plan = plan_signing(None, public_key_bytes(key), view)
            duties = compute_duties(key, public_key_bytes(key), view, Checkpoint(0, b""), plan)
            atts.append(decode(Attestation, duties.attestation))
        assert detect_double_sign(atts[0], atts[1], 2) is not None
    finally:
        federation.close()


def test_after_a_reattempt_the_chain_still_finalises(tmp_path: Path) -> None:
    """Attempt 0's proposer is offline; the others attest attempt 0, the next draw seals
    its own attempt, and a later round's attestations (to a descendant) finalise it. While
    the offline client keeps being drawn first, each such block is re-attempted and its
    attempt-0 attesters cannot attest the sealed one, so how many rounds that takes depends
    on the draws (on the genesis): up to 10 rounds are allowed."""
    federation = Federation(tmp_path / "run")
    coordinator = federation.coordinator
    try:
        coordinator.run_round(1, [federation.train_reply(i, 1) for i in range(CLIENTS)])
        assert coordinator.pending is not None
        offline = federation.index(coordinator.pending.header.proposer)
        online = [i for i in range(CLIENTS) if i != offline]
        sealed_at = coordinator.pending.header.height
        for round_ in range(2, 12):
            if coordinator.final_height >= sealed_at:
                break
            replies = [federation.train_reply(i, round_) for i in online]
            sealing, attempt = replies, 0
            while not coordinator.seal_from(sealing):
                attempt += 1
                assert attempt <= ATTEMPTS
                coordinator.reattempt(attempt)
                sealing = [federation.train_reply(i, round_) for i in online]
            coordinator.run_round(round_, replies)
        assert coordinator.final_height >= sealed_at
    finally:
        federation.close()


@pytest.mark.parametrize("damage", [b"{", b'{"genesis-hash": "zz"}'])
def test_invalid_a_damaged_record_on_disk_is_refused_not_ignored(
    tmp_path: Path, damage: bytes
) -> None:
    (tmp_path / replica_files.SIGNED_FILENAME).write_bytes(damage)
    with pytest.raises(Exception, match="signed heights"):
        replica_files.load_signed(tmp_path)
