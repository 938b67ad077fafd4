"""``fedchain report RUN_DIR``: who contributed what, who was rewarded or slashed and why.

Prints a terminal summary (participants, rounds, rejections and slashing, the verification
verdict) built by :mod:`fedchain.report.build`, and writes ``report.json`` and a self-contained
``report.html`` (:mod:`fedchain.report.files`). A run whose ledger or model files fail verification
still gets its report, which shows the failure, and the command then exits 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fedchain.cli.common import console, ledger_progress
from fedchain.ledger.show import as_markup_text
from fedchain.ledger.signatures import CachingVerifier
from fedchain.report.build import build_report
from fedchain.report.files import write_report_files
from fedchain.runs.layout import (
    CLIENTS_DIRNAME,
    LEDGER_FILENAME,
    MODELS_DIRNAME,
    REPORT_HTML_FILENAME,
    REPORT_JSON_FILENAME,
)

MAX_ROUND_ROWS = 30  # longer runs show their first and last rounds; report.html has them all
MAX_EVENT_ROWS = 20
WIDE_TERMINAL = 110  # columns from which full fingerprints and hashes fit
_COMPACT: dict[str, Any] = {"show_edge": False, "pad_edge": False, "collapse_padding": True}


def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help=f"A run directory (holding {LEDGER_FILENAME}, {MODELS_DIRNAME}/, "
            f"{CLIENTS_DIRNAME}/)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help=f"Folder for {REPORT_JSON_FILENAME} and {REPORT_HTML_FILENAME} (default RUN_DIR).",
        ),
    ] = None,
    json_only: Annotated[
        bool,
        typer.Option("--json-only", help=f"Write {REPORT_JSON_FILENAME} only (no HTML, no plots)."),
    ] = False,
) -> None:
    """Summarise a run: contributions, rewards, stake, slashing, model lineage, verification.

    Writes report.json and a self-contained report.html (plots inline, nothing fetched) into
    the run directory or --out. Exits 1 if the ledger or the model files fail verification.
    """
    with ledger_progress() as (_, on_block), CachingVerifier() as verifier:
        data = build_report(run_dir, on_block=on_block, verifier=verifier)
    with console.status("writing the report"):
        paths = write_report_files(data, out or run_dir, html_page=not json_only)
    print_summary(data)
    for path in paths:
        console.print(f"wrote {path}", markup=False, highlight=False)
    if not data["verification"]["ok"]:
        raise typer.Exit(1)


def print_summary(data: Mapping[str, Any]) -> None:
    """The terminal half of the report, from the same dict as report.json.

    Everything that comes from the run directory (names, reasons, the run id) is shown as
    text, never as rich markup; numbers are never cut: on a narrow terminal (below
    :data:`WIDE_TERMINAL` columns) the participants table folds the key into the name
    column.
    """
    run = data["run"]
    name = (
        f"run {as_markup_text(repr(run['run_id']))}"
        if run.get("run_id")
        else "a run whose ledger cannot be read"
    )
    console.print(f"[bold]report of {name}[/] ({as_markup_text(run.get('run_dir', ''))})")
    unfinished = (data.get("progress") or {}).get("unfinished")
    if unfinished:
        console.print(f"[bold yellow]{as_markup_text(unfinished)}[/]")
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
        if note != unfinished:
            console.print(f"[yellow]note[/] {as_markup_text(note)}", highlight=False)
    archive = data.get("archive")
    if archive:
        console.print(describe_archive(archive), highlight=False)
    _print_verdict(data["verification"])


def describe_archive(archive: Mapping[str, Any]) -> str:
    """``update archive: 20 files, 30.8 MB (the federation keeps the updates of all rounds)``."""
    files = archive["files"]
    return (
        f"update archive: {files} file{'s' if files != 1 else ''}, "
        f"{format_bytes(archive['bytes'])} (the federation keeps the updates of "
        f"{archive['policy']})"
    )


def format_bytes(size: int) -> str:
    """Decimal units: ``30.8 MB``."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _key_chars() -> int:
    """Fingerprint characters to show: all 16 on a wide terminal, 8 on a narrow one."""
    return 16 if console.width >= WIDE_TERMINAL else 8


def _number_column(table: Table, header: str, values: Sequence[str]) -> None:
    """A right-aligned column that is never wrapped or cut: as wide as its widest value."""
    width = max([len(header), *(len(v) for v in values)])
    table.add_column(header, justify="right", no_wrap=True, min_width=width)


def _participants_table(data: Mapping[str, Any]) -> Table:
    wide = console.width >= WIDE_TERMINAL
    table = Table(title="participants", title_justify="left", box=box.SIMPLE_HEAD, **_COMPACT)
    chars = _key_chars()
    people = data["participants"]
    names = []
    for p in people:
        shown = as_markup_text(p["name"])
        if not wide and p["name"] != p["fingerprint"]:
            shown += f" {p['fingerprint'][:chars]}"
        names.append(shown if p["active"] else f"{shown} [red](ejected)[/]")
    columns: dict[str, list[str]] = {
        "stake": [f"{p['stake']:,}" for p in people],
        "rewards": [f"{p['rewards']:,}" for p in people],
    }
    slashed = any(p["slashed"] for p in people)
    if slashed:  # a column of zeros would push the names onto two lines at 80 columns
        columns["slashed"] = [f"{p['slashed']:,}" for p in people]
    columns["score"] = [
        "-" if p["contribution"] is None else f"{p['contribution']:+.4f}" for p in people
    ]
    columns["debt"] = [f"{p['score_debt']:.4f}" for p in people]
    columns["rep."] = [f"{p['reputation'] * 100:.0f}%" for p in people]
    columns["ok/ref"] = [f"{p['updates']}/{p['rejections'] + p['slashings']}" for p in people]
    privacy = data.get("privacy")
    if privacy:
        columns["epsilon"] = [f"{p.get('epsilon', 0.0):.3g}" for p in people]
    table.add_column("participant", overflow="fold")
    if wide:
        table.add_column("key", no_wrap=True)
    for header, values in columns.items():
        _number_column(table, header, values)
    for i, p in enumerate(people):
        key = [p["fingerprint"][:chars]] if wide else []
        table.add_row(names[i], *key, *(values[i] for values in columns.values()))
    table.caption = (
        "stake: final; "
        + ("slashed: stake lost to slashing; " if slashed else "no stake was slashed; ")
        + "score: total contribution; "
        "debt: score debt (negative scores its positive scores must repay before they are "
        "paid); rep.: reputation; ok/ref: updates admitted/refused by the ledger"
    )
    if privacy:
        table.caption += (
            f"; epsilon: privacy spent at delta {privacy['delta']:g} ({privacy['mode']}-level "
            f"DP, noise {privacy['noise_multiplier']:g}, clip {privacy['clip_norm']:g}; budget "
            f"{privacy['max_epsilon']:g}, at most {privacy['max_participations']} updates each)"
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
    chars = _key_chars()
    rows, skipped = _pick_rows(rounds, MAX_ROUND_ROWS)
    cells: list[list[str]] = []
    for r in rows:
        if r is None:
            cells.append(["…", f"{skipped} more rounds in {REPORT_HTML_FILENAME}", *[""] * 10])
            continue
        moved = r["model_moved"]
        cells.append(
            [
                str(r["round"]),
                "-" if r["accuracy"] is None else f"{r['accuracy'] * 100:.2f}%",
                "-" if r["loss"] is None else f"{r['loss']:.4f}",
                "-" if moved is None else "yes" if moved else "no",
                _count(r["accepted"]),
                _count(r["left_out"]),
                _count(r["refused"]),
                _count(r["slashing_events"]),
                _count(r["rewards_paid"]),
                "-" if r["pool"] is None else r["pool"]["decision"],
                as_markup_text(describe_left_out(r["left_out_updates"] or ())),
                "-" if r["model_hash"] is None else r["model_hash"][:chars],
            ]
        )
    headers = (
        "round", "accuracy", "loss", "moved", "accepted", "left out", "refused", "slashed",
        "rewards", "pool", "why left out", "model",
    )  # fmt: skip
    # What fits 80 columns: columns of zeros (refused, slashed) only when something happened,
    # and the reasons and model hashes only on a wide terminal (report.html has them all).
    happened = {
        "refused": any(r and r["refused"] for r in rows),
        "slashed": any(r and r["slashing_events"] for r in rows),
    }
    wide = console.width >= WIDE_TERMINAL
    shown = [
        i
        for i, header in enumerate(headers)
        if happened.get(header, True) and (wide or header not in ("why left out", "model"))
    ]
    for i in shown:
        if headers[i] == "pool":
            table.add_column("pool", min_width=4)  # wraps at its spaces rather than be cut
        elif headers[i] in ("why left out", "model"):  # these give way first, never numbers
            table.add_column(headers[i], overflow="fold")
        else:
            values = [row[i] for row, r in zip(cells, rows, strict=True) if r is not None]
            _number_column(table, headers[i], values)
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    hidden = [headers[i] for i in range(len(headers)) if i not in shown]
    table.caption = (
        "moved: the model changed; accepted: updates averaged into the model; left out: "
        "admitted but not used by the aggregation rule; refused: by the ledger's admission; "
        "pool: what the payout rule did with the round's reward pool (report.html says why)"
        + (f"; not shown here: {', '.join(hidden)} (report.html)" if hidden else "")
    )
    table.caption_justify = "left"
    return table


def describe_left_out(entries: Sequence[Mapping[str, Any]]) -> str:
    """``harmful 2, useless 1``: the reasons of a round's left-out updates, counted."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "-"


def _events_table(events: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(
        title="rejected updates, holders' refusals and app approvals, slashing and ejections",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        **_COMPACT,
    )
    colour = {
        "rejected": "yellow",
        "holder-refused": "yellow",
        "slashed": "red",
        "ejected": "magenta",
        "app-approved": "cyan",
    }
    rows, skipped = _pick_rows(events, MAX_EVENT_ROWS)
    shown = [e for e in rows if e is not None]
    _number_column(table, "round", [str(e["round"]) for e in shown])
    table.add_column("event", no_wrap=True)
    table.add_column("participant", overflow="fold")
    table.add_column("evidence", overflow="fold")
    table.add_column("reason", overflow="fold")
    _number_column(table, "stake lost", [f"{e['stake_lost']:,}" for e in shown])
    for e in rows:
        if e is None:
            table.add_row("…", f"{skipped} more", "", "", f"see {REPORT_HTML_FILENAME}", "")
            continue
        evidence = (
            "-" if e["evidence_kind"] is None else f"{e['slashing_kind']} ({e['evidence_kind']})"
        )
        table.add_row(
            str(e["round"]),
            f"[{colour[e['kind']]}]{e['kind']}[/]",
            as_markup_text(e["name"])
            if e["name"] == e["fingerprint"]
            else f"{as_markup_text(e['name'])} {e['fingerprint'][: _key_chars()]}",
            as_markup_text(evidence),
            as_markup_text(e["reason"]),
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
        console.print(f"[bold red]FAILED[/] {as_markup_text(v['first_failure'])}")
        for problem in v["model_problems"][1:]:
            console.print(f"  also: {as_markup_text(problem)}")
