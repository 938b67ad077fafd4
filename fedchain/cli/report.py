"""``fedchain report RUN_DIR``: who contributed what, who was rewarded or slashed and why.

Prints a terminal summary (participants, rounds, rejections and slashing, the verification
verdict) and writes ``report.json`` and a self-contained ``report.html``
(:mod:`fedchain.report`). A run whose ledger or model files fail verification still gets its
report, which shows the failure, and the command then exits 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from fedchain.cli.common import console, ledger_progress
from fedchain.report import build_report, write_report_files

MAX_ROUND_ROWS = 30  # longer runs show their first and last rounds; report.html has them all
MAX_EVENT_ROWS = 20
WIDE_TERMINAL = 110  # columns from which full fingerprints and hashes fit
_COMPACT: dict[str, Any] = {"show_edge": False, "pad_edge": False, "collapse_padding": True}


def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory (holding ledger.db, models/, clients/).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for report.json and report.html (default RUN_DIR)."
        ),
    ] = None,
    json_only: Annotated[
        bool, typer.Option("--json-only", help="Write report.json only (no HTML, no plots).")
    ] = False,
) -> None:
    """Summarise a run: contributions, rewards, stake, slashing, model lineage, verification.

    Writes report.json and a self-contained report.html (plots inline, nothing fetched) into
    the run directory or --out. Exits 1 if the ledger or the model files fail verification.
    """
    with ledger_progress() as (_, on_block):
        data = build_report(run_dir, on_block=on_block)
    with console.status("writing the report"):
        paths = write_report_files(data, out or run_dir, html_page=not json_only)
    print_summary(data)
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
    if not data["verification"]["ok"]:
        raise typer.Exit(1)


def print_summary(data: Mapping[str, Any]) -> None:
    """The terminal half of the report, from the same dict as report.json."""
    run = data["run"]
    name = f"run {run['run_id']!r}" if run.get("run_id") else "a run whose ledger cannot be read"
    console.print(f"[bold]report of {name}[/] ({escape(run.get('run_dir', ''))})")
    if data["participants"]:
        console.print()
        console.print(_participants_table(data))
    if data["rounds"]:
        console.print()
        console.print(_rounds_table(data["rounds"]))
    console.print()
    if data["events"]:
        console.print(_events_table(data["events"]))
    elif data["participants"]:
        console.print("no rejected updates and no slashing")
    for note in data["notes"]:
        console.print(f"[yellow]note[/] {escape(note)}", highlight=False)
    _print_verdict(data["verification"])


def _key_chars() -> int:
    """Fingerprint characters to show: all 16 on a wide terminal, 8 on a narrow one."""
    return 16 if console.width >= WIDE_TERMINAL else 8


def _participants_table(data: Mapping[str, Any]) -> Table:
    table = Table(title="participants", title_justify="left", box=box.SIMPLE_HEAD, **_COMPACT)
    table.add_column("participant", no_wrap=True)
    table.add_column("key", no_wrap=True)
    for name in ("stake", "rewards", "penalty", "slashed", "score", "rep.", "ok/ref"):
        table.add_column(name, justify="right", no_wrap=True)
    chars = _key_chars()
    for p in data["participants"]:
        name = p["name"] if p["active"] else f"{p['name']} [red](ejected)[/]"
        table.add_row(
            name,
            p["fingerprint"][:chars],
            f"{p['stake']:,}",
            f"{p['rewards']:,}",
            f"{p['penalties']:,}",
            f"{p['slashed']:,}",
            "-" if p["contribution"] is None else f"{p['contribution']:+.4f}",
            f"{p['reputation'] * 100:.0f}%",
            f"{p['updates']}/{p['rejections'] + p['slashings']}",
        )
    table.caption = (
        "stake: final; penalty and slashed: stake lost; score: total contribution; "
        "rep.: reputation; ok/ref: updates accepted/refused"
    )
    table.caption_justify = "left"
    return table


def _pick_rows(rows: Sequence[Any], limit: int) -> tuple[list[Any], int]:
    """All rows, or the first few and the last ones with the count left out between them."""
    if len(rows) <= limit:
        return list(rows), 0
    head = limit // 3
    tail = limit - head
    return [*rows[:head], None, *rows[-tail:]], len(rows) - limit


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _rounds_table(rounds: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="rounds", title_justify="left", box=box.SIMPLE_HEAD, **_COMPACT)
    for name in ("round", "accuracy", "loss", "accepted", "refused", "slashed", "rewards"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("scores")
    table.add_column("model", no_wrap=True)
    chars = _key_chars()
    rows, skipped = _pick_rows(rounds, MAX_ROUND_ROWS)
    for r in rows:
        if r is None:
            table.add_row("…", f"{skipped} more rounds in report.html", *[""] * 7)
            continue
        table.add_row(
            str(r["round"]),
            "-" if r["accuracy"] is None else f"{r['accuracy'] * 100:.2f}%",
            "-" if r["loss"] is None else f"{r['loss']:.4f}",
            _count(r["accepted"]),
            _count(r["rejected"]),
            _count(r["slashing_events"]),
            _count(r["rewards_paid"]),
            "yes" if r["contributions_recorded"] else "-",
            "-" if r["model_hash"] is None else r["model_hash"][:chars],
        )
    return table


def _events_table(events: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(
        title="rejected updates, slashing and ejections",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        **_COMPACT,
    )
    table.add_column("round", justify="right")
    table.add_column("event")
    table.add_column("participant")
    table.add_column("evidence")
    table.add_column("reason")
    table.add_column("stake lost", justify="right")
    colour = {"rejected": "yellow", "slashed": "red", "ejected": "magenta"}
    rows, skipped = _pick_rows(events, MAX_EVENT_ROWS)
    for e in rows:
        if e is None:
            table.add_row("…", f"{skipped} more", "", "", "see report.html", "")
            continue
        evidence = (
            "-" if e["evidence_kind"] is None else f"{e['slashing_kind']} ({e['evidence_kind']})"
        )
        table.add_row(
            str(e["round"]),
            f"[{colour[e['kind']]}]{e['kind']}[/]",
            e["name"] if e["client"] is None else f"{e['name']} {e['fingerprint'][: _key_chars()]}",
            evidence,
            escape(e["reason"]),
            f"{e['stake_lost']:,}" if e["kind"] == "slashed" else "-",
        )
    return table


def _print_verdict(v: Mapping[str, Any]) -> None:
    if v["ok"]:
        console.print(
            f"[bold green]verified[/]: {v['blocks']:,} blocks, {v['signatures']:,} signatures and "
            "every state transition check out from genesis, and every model file matches",
            highlight=False,
        )
    else:
        console.print(f"[bold red]FAILED[/] {escape(v['first_failure'])}", highlight=False)
        for problem in v["model_problems"][1:]:
            console.print(f"  also: {escape(problem)}", highlight=False)
