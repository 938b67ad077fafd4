"""``fedchain verify`` and ``fedchain ledger show``: re-check and read a run's ledger.

Given a run directory, ``verify`` also checks the model files and the archived updates against
the verified ledger (:func:`fedchain.runs.registry.check_model_files`,
:func:`~fedchain.runs.archive.check_update_files`) and the files newer than its head
(:mod:`fedchain.runs.leftovers`); given a bare ledger file, it checks the ledger only. Each
``--checkpoint`` file (:mod:`fedchain.ledger.checkpoints`) must be extended by the ledger
(:func:`fedchain.ledger.verify.check_checkpoint`). With ``--anchors`` every anchor is checked
with its witness and against the ledger (:func:`fedchain.anchor.check.check_anchors`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from fedchain.cli.common import console, ledger_progress, make_app
from fedchain.config import load_config_file
from fedchain.crypto.identity import fingerprint
from fedchain.errors import ConfigError
from fedchain.ledger.checkpoints import load_checkpoint
from fedchain.ledger.codec import MAX_INT, decode
from fedchain.ledger.objects import DP_OFF, EMPTY_HASH, Block
from fedchain.ledger.show import as_markup_text, block_to_json, describe_transaction
from fedchain.ledger.signatures import CachingVerifier
from fedchain.ledger.store import LedgerStore, open_ledger_path
from fedchain.ledger.verify import VerifyReport, check_checkpoint, verify_ledger
from fedchain.report.inputs import describe_unfinished, read_run_plan
from fedchain.rounds.recheck import describe_score_tolerance, recheck_scores
from fedchain.runs.archive import check_update_files
from fedchain.runs.layout import CONFIG_FILENAME, LEDGER_FILENAME
from fedchain.runs.leftovers import find_leftovers
from fedchain.runs.registry import check_model_files, get_registered_hashes
from fedchain.runs.tensorfiles import read_regular_file

app = make_app("Read a ledger: list its blocks and transactions.")

PathArg = Annotated[
    Path, typer.Argument(help=f"A ledger file ({LEDGER_FILENAME}) or a run directory.")
]


@dataclass
class _FilesVerdict:
    """The run directory's part of ``verify``: summary rows, problems (fail) and warnings."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    checked: bool = False
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def verify(
    path: PathArg,
    scores: Annotated[
        bool,
        typer.Option(
            "--scores",
            help="Also recompute every round's contribution scores from the archived updates "
            "(run directories; takes model evaluations).",
        ),
    ] = False,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            help="A data holder's saved checkpoint file (repeatable): fail unless the ledger "
            "is its federation's, holds its block at its height and proves it final.",
        ),
    ] = None,
    anchors: Annotated[
        bool,
        typer.Option(
            "--anchors",
            help="Also check every anchor (in the ledger, in anchors/ or --receipts, and listed "
            "by the EVM witness) with its witness: fail if one is forged, or the ledger was "
            "shortened below or rewritten at an anchored height.",
        ),
    ] = False,
    evm_url: Annotated[
        str,
        typer.Option(
            help="--anchors: the EVM node's JSON-RPC URL (memory: this process's; a run "
            "anchored to `fedchain anchor serve-evm` is checked at its URL while it serves)."
        ),
    ] = "",
    evm_contract: Annotated[
        str, typer.Option(help="--anchors: the anchor contract to trust (default: the receipts').")
    ] = "",
    evm_sender: Annotated[
        list[str] | None,
        typer.Option(
            help="--anchors: the coordinator's EVM account (repeatable): its anchors count even "
            "if the ledger lost every receipt."
        ),
    ] = None,
    tsa_cert: Annotated[
        Path | None,
        typer.Option(help="--anchors: the PEM certificate RFC 3161 tokens must verify against."),
    ] = None,
    receipts: Annotated[
        Path | None,
        typer.Option(help="--anchors: a folder of kept receipt files (default: RUN/anchors)."),
    ] = None,
    base_weights: Annotated[
        Path | None,
        typer.Option(
            help="The base model file the genesis names (default: the run's own base-weights, "
            "where that file exists): check its hash and that the initial model is made from it."
        ),
    ] = None,
) -> None:
    """Re-check a ledger from genesis: hash chain, signatures, proposers, state, finality.

    Given a run directory, also check that every registered model's file and every archived
    update the ledger names are there and hold what their hashes say, that the model lineage
    is unbroken, and report files newer than the ledger's head (a warning for what a stopped
    round leaves; a failure for metrics of rounds the ledger lost). Say when the run is
    unfinished (its ledger stops before the rounds its config.toml or federation.toml set;
    still exit 0 when everything there verifies).
    """
    saved = [(p, *load_checkpoint(p)) for p in checkpoint or ()]  # a bad file: fail at once
    with ledger_progress() as (progress, on_block), CachingVerifier() as verifier:
        # a bare ledger file needs nothing per transaction: memory stays bounded by its largest
        # block; a run directory's file and score checks need the updates and rounds it names
        report = verify_ledger(path, on_block=on_block, verifier=verifier, details=path.is_dir())
        files = _check_files(path, report, progress)
    refused = [
        f"checkpoint {file} (height {point.height}): {reason}"
        for file, genesis_hash, point in saved
        if report.ok and (reason := check_checkpoint(report, genesis_hash, point)) is not None
    ]
    files.problems[:0] = refused
    _check_privacy(report, files)
    if saved and report.ok:
        highest = max(point.height for _, _, point in saved)
        files.rows.append(("checkpoints", f"{len(saved)} given, up to height {highest}"))
    _print_report(report, files)
    unfinished = describe_unfinished(report.rounds, read_run_plan(path)) if path.is_dir() else None
    if unfinished and report.blocks:
        console.print(f"[bold yellow]{as_markup_text(unfinished)}[/]")
    failed = not report.ok or bool(files.problems)
    if anchors and report.ok:  # whatever the files say: a shortened ledger fails both
        options = AnchorOptions(evm_url, evm_contract, tuple(evm_sender or ()), tsa_cert)
        failed = not _check_anchors(path, report, receipts, options) or failed
    if report.ok and path.is_dir() and not failed:
        failed = not _check_base(path, report, base_weights)
    if scores and not failed:
        failed = not _recheck_scores(path, report)
    if failed:
        raise typer.Exit(1)


@dataclass(frozen=True)
class AnchorOptions:
    """``verify``'s witness options for ``--anchors``."""

    evm_url: str = ""
    evm_contract: str = ""
    evm_senders: tuple[str, ...] = ()
    tsa_cert: Path | None = None


def _check_anchors(
    path: Path, report: VerifyReport, folder: Path | None, options: AnchorOptions
) -> bool:
    # fedchain.anchor loads web3 / rfc3161-client (seconds): only for --anchors
    from fedchain.anchor.check import check_anchors
    from fedchain.anchor.connect import make_verify_witnesses
    from fedchain.anchor.receipts import load_receipt_files

    kept = load_receipt_files(folder if folder is not None else path)
    in_hand = [r for _, r in report.anchor_receipts] + [r for _, r in kept]
    witnesses, notes = make_verify_witnesses(
        in_hand,
        evm_url=options.evm_url,
        evm_contract=options.evm_contract,
        evm_senders=options.evm_senders,
        tsa_cert=options.tsa_cert,
    )
    for note in notes:
        console.print(f"anchors: {as_markup_text(note)}")
    with console.status("checking anchors with their witnesses…"):
        check = check_anchors(report, witnesses, kept)
    if check.failures:
        print_failed(check.failures, "anchors: ")
        return False
    if not check.findings:
        console.print(
            "[bold red]FAILED[/] anchors: none found (the run was not anchored, its receipts "
            "were removed, or no witness that lists anchors was given)"
        )
        return False
    latest = max(check.findings, key=lambda f: f.height)
    console.print(
        f"anchors: {len(check.findings)} checked ({', '.join(check.witnesses) or 'no witness'}); "
        f"last anchored height {check.anchored_height}, stamped by "
        f"{as_markup_text(latest.stamp.where)} at {latest.stamp.time}"
    )
    return True


def print_failed(problems: Sequence[str], what: str = "", also: str = "") -> None:
    """``FAILED`` and the first problem (after ``what``), then each other one indented (after
    ``also``); client-written text in them is shown as text, never as markup."""
    console.print(f"[bold red]FAILED[/] {what}{as_markup_text(problems[0])}")
    for problem in problems[1:]:
        console.print(f"  {also}{as_markup_text(problem)}")


def _check_base(path: Path, report: VerifyReport, given: Path | None) -> bool:
    """The base model line: the genesis's base checked against a file (and the initial model
    rebuilt from it), or why it was not checked. False when the check fails."""
    record = report.state.genesis.rules.model if report.state is not None else None
    if record is None or record.base_hash == EMPTY_HASH:
        return True
    read_regular_file(path / CONFIG_FILENAME, path)
    config = load_config_file(path / CONFIG_FILENAME)
    base = given or (Path(config.base_weights) if config.base_weights else None)
    what = f"base: {record.architecture} {record.finetune} from {record.base_hash.hex()[:16]}…"
    if base is None or not base.is_file():
        console.print(f"{what} not checked (no base weights file here; give --base-weights)")
        return True
    # torch and the model code (seconds): only for a run that fine-tunes a base
    from fedchain.learning.record import check_initial_model
    from fedchain.runs.prepare import load_split

    validation = load_split(config)[1]
    with console.status("checking the base model and the initial model made from it…"):
        problem = check_initial_model(
            record,
            config,
            tuple(validation.x.shape[1:]),
            len(validation.classes),
            report.initial_model_hash,
            base,
        )
    if problem is not None:
        print_failed([problem], "base: ")
        return False
    console.print(
        f"{what}: {as_markup_text(str(base))} matches, and round 0's model is made from it"
    )
    return True


def _recheck_scores(path: Path, report: VerifyReport) -> bool:
    if not path.is_dir():
        console.print("scores: not checked (ledger file only)")
        return True
    read_regular_file(path / CONFIG_FILENAME, path)  # a FIFO or a link out: one line, not a hang
    config = load_config_file(path / CONFIG_FILENAME)
    with console.status("recomputing contribution scores from the archived updates…"):
        check = recheck_scores(path, report, config)
    if check.problems:
        print_failed(check.problems, "scores: ")
        return False
    console.print(
        f"scores: {check.rounds} rounds recomputed from the archived updates, "
        f"{check.models_matched} re-aggregated to their ModelVersion's model "
        f"({config.contribution}); largest difference {check.max_difference:.3g} score units, "
        f"{check.max_tolerance_used:.2g} of its round's tolerance "
        f"({describe_score_tolerance()})"
    )
    if check.not_archived:
        console.print(
            f"scores: {len(check.not_archived)} rounds not archived by policy (the federation "
            f"keeps the updates of {check.policy}): {describe_rounds(check.not_archived)}; "
            "not re-checked"
        )
    return True


def _check_files(path: Path, report: VerifyReport, progress: Progress) -> _FilesVerdict:
    if not path.is_dir():
        return _FilesVerdict([("models", "not checked (ledger file only)")])
    if not report.ok:
        return _FilesVerdict([("models", "not checked (the ledger did not verify)")])
    task = progress.add_task("files", total=None)
    counted = 0

    def on_file(done: int, total: int) -> None:
        progress.update(task, completed=counted + done, total=counted + total)

    models = check_model_files(path, report, on_file=on_file)
    counted = len(get_registered_hashes(report))
    archived = check_update_files(path, report, on_file=on_file)
    updates = list(archived.problems)
    leftovers = find_leftovers(path, report)
    verdict = _FilesVerdict(checked=True, warnings=[*archived.warnings, *leftovers.warnings])
    verdict.problems = [*models, *updates, *leftovers.problems]
    verdict.rows.append(
        ("models", f"{len(models)} problem(s) with {counted} registered model files")
        if models
        else ("models", f"{counted} model files match their registered hashes and lineage")
    )
    count = len(report.update_hashes)
    dropped = (
        f"; {archived.dropped} of rounds {describe_rounds(archived.dropped_rounds)} not "
        f"archived by policy (the federation keeps {archived.policy})"
        if archived.dropped
        else ""
    )
    verdict.rows.append(
        ("updates", f"{len(updates)} problem(s) with {count} archived updates{dropped}")
        if updates
        else (
            "updates",
            "not archived"
            if archived.warnings
            else f"{archived.checked} archived updates match their hashes{dropped}",
        )
    )
    return verdict


def describe_rounds(rounds: Sequence[int]) -> str:
    """``1-4, 7`` for ``(1, 2, 3, 4, 7)``."""
    spans: list[list[int]] = []
    for round_ in sorted(rounds):
        if spans and round_ == spans[-1][1] + 1:
            spans[-1][1] = round_
        else:
            spans.append([round_, round_])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _check_privacy(report: VerifyReport, files: _FilesVerdict) -> None:
    """With differential privacy in the genesis: the participation cap must not allow more
    than the maximum epsilon (recomputed with the accountant), and the row says what the most
    spent client has spent. The transition itself compared integers (docs/ledger-spec.md §9.6)."""
    state = report.state
    if state is None or state.genesis.rules.dp_mode == DP_OFF:
        return
    # Opacus (the dp extra, seconds to import): only for a ledger with differential privacy
    from fedchain.privacy.accountant import check_cap, compute_epsilon, privacy_of

    rules = state.genesis.rules
    problem = check_cap(rules)
    if problem:
        files.problems.append(f"privacy: {problem}")
        return
    privacy = privacy_of(rules)
    most = max((p.dp_participations for p in state.participants.values()), default=0)
    files.rows.append(
        (
            "privacy",
            f"{rules.dp_mode} level, noise {privacy.noise_multiplier:g}, clip "
            f"{privacy.clip_norm:g}: at most {rules.dp_max_participations} participations a "
            f"client (epsilon <= {privacy.max_epsilon:g} at delta {privacy.delta:g}); the most "
            f"any client took part in is {most} (epsilon {compute_epsilon(privacy, most):.3g})",
        )
    )


def _print_report(report: VerifyReport, files: _FilesVerdict) -> None:
    table = Table(show_header=False, title=f"ledger {report.path}")
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # whole hashes, folded on a narrow terminal
    if report.blocks:
        rate = report.signatures / report.seconds if report.seconds else 0.0
        rows = [
            (
                "federation",
                f"{report.genesis_hash.hex()} (run {as_markup_text(repr(report.run_id))})",
            ),
            (
                "blocks",
                f"{report.blocks} (head height {report.head_height}, round {report.rounds})",
            ),
            ("head", report.head_hash.hex()),
            ("final height", str(report.final_height)),
            ("model head", report.model_head.hex()),
            ("transactions", ", ".join(f"{k} {v}" for k, v in report.tx_counts.items())),
            (
                "participants",
                f"{report.participants} ({report.active} active), stake {report.total_stake}",
            ),
            (
                "signatures",
                f"{report.signatures} checked in {report.seconds:.2f} s ({rate:,.0f}/s)",
            ),
        ]
        if report.retried_proposals:
            rows.append(("proposer retries", f"{report.retried_proposals} blocks with attempt > 0"))
        rows += files.rows
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
    for warning in files.warnings:
        console.print(f"[bold yellow]warning[/] {as_markup_text(warning)}")
    if not report.ok:
        console.print(f"[bold red]FAILED[/] {as_markup_text(report.failure)}")
    elif files.problems:
        print_failed(files.problems, also="also: ")
    else:
        checked = ", and every model file and archived update" if files.checked else ""
        console.print(
            "[bold green]verified[/]: every block, signature and state transition checks out"
            + checked
        )


@app.command()
def show(
    path: PathArg,
    start: Annotated[
        int, typer.Option("--from", min=0, max=MAX_INT, help="First height to show.")
    ] = 0,
    end: Annotated[
        int | None, typer.Option("--to", min=0, max=MAX_INT, help="Last height to show.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document per block.")] = False,
) -> None:
    """List blocks with their transactions (one line each), or as JSON.

    What participants wrote (rejection reasons, run ids) is shown as text: markup and control
    characters in it are never interpreted.
    """
    with LedgerStore.open(open_ledger_path(path), readonly=True) as store:
        head = store.head().height
        if start > head:
            raise ConfigError(
                f"--from {start}: past the ledger's head (heights 0..{head} in {path})"
            )
        for stored in store.iter_blocks(start):
            if end is not None and stored.height > end:
                break
            block = decode(Block, stored.data)
            if as_json:
                print(json.dumps(block_to_json(block)))
                continue
            header = block.header
            kinds = Counter(type(tx).__name__ for tx in block.transactions)
            proposer = fingerprint(header.proposer) if any(header.proposer) else "-"
            console.print(
                f"[bold]#{header.height}[/] round {header.round} "
                f"{stored.block_hash.hex()[:16]} proposer {proposer} "
                + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            )
            for tx in block.transactions:
                console.print(f"    {describe_transaction(tx)}", markup=False, highlight=False)
