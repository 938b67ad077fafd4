"""``fedchain models list``, ``show`` and ``export``: a run's registered global models.

Each verifies the run's ledger first (the registry's index is the verified ledger, see
:mod:`fedchain.runs.registry`), so a ledger that fails verification is refused here too.
``export`` writes one model for plain torch (:mod:`fedchain.runs.export`) with its model card
(:mod:`fedchain.report.card`), made from the run's report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fedchain.cli.common import console, make_app
from fedchain.config import load_config_file
from fedchain.crypto import identity
from fedchain.errors import ConfigError
from fedchain.ledger.derived import is_model_recipient
from fedchain.ledger.objects import Genesis
from fedchain.ledger.show import as_markup_text
from fedchain.ledger.signatures import CachingVerifier
from fedchain.ledger.verify import verify_ledger
from fedchain.report.build import compute_report
from fedchain.report.card import compute_card
from fedchain.report.files import write_card_files
from fedchain.report.inputs import load_report_inputs
from fedchain.runs.layout import CONFIG_FILENAME, LEDGER_FILENAME, MODELS_DIRNAME
from fedchain.runs.registry import (
    ModelEntry,
    find_model,
    get_lineage,
    list_models,
    load_model,
    require_verified,
)
from fedchain.runs.tensorfiles import read_regular_file

app = make_app("Read a run's registered global models: list them, show one, export one.")

RunDirArg = Annotated[
    Path,
    typer.Argument(help=f"A run directory (holding {LEDGER_FILENAME} and {MODELS_DIRNAME}/)."),
]
HASH_PREFIX_CHARS = 16


def _short(model_hash: bytes | None) -> str:
    return "-" if model_hash is None else model_hash.hex()[:HASH_PREFIX_CHARS]


def _entry_to_json(entry: ModelEntry) -> dict[str, Any]:
    return {
        "round": entry.round,
        "height": entry.height,
        "model_hash": entry.model_hash.hex(),
        "parent_hash": None if entry.parent_hash is None else entry.parent_hash.hex(),
        "rule": entry.rule,
        "num_updates": entry.num_updates,
        "file": str(entry.path),
        "file_present": entry.file_present,
    }


def _load_entries(run_dir: Path, quiet: bool) -> list[ModelEntry]:
    if quiet:
        return _list_verified(run_dir)
    with console.status("verifying the ledger"):
        return _list_verified(run_dir)


def _list_verified(run_dir: Path) -> list[ModelEntry]:
    """:func:`list_models` of the run, its ledger verified with this command's own caching,
    threaded signature verifier (the speed-up :mod:`fedchain.ledger.signatures` offers)."""
    with CachingVerifier() as verifier:
        return list_models(verify_ledger(run_dir, verifier=verifier))


@app.command("list")
def list_(
    run_dir: RunDirArg,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array of models.")] = False,
) -> None:
    """List the registered models in round order, the initial model first.

    The file column says whether each model's file is there; `fedchain verify RUN_DIR` also
    checks that it holds the registered model.
    """
    entries = _load_entries(run_dir, quiet=as_json)
    if as_json:
        print(json.dumps([_entry_to_json(e) for e in entries], indent=2))
        return
    table = Table(
        title=f"models of {as_markup_text(run_dir)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    # Hashes and numbers are never cut (80 columns fit them); the rule's name gives way.
    for column in ("round", "height"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    table.add_column("hash", no_wrap=True, min_width=HASH_PREFIX_CHARS)
    table.add_column("parent", no_wrap=True, min_width=HASH_PREFIX_CHARS)
    table.add_column("rule", overflow="fold")
    table.add_column("updates", justify="right", no_wrap=True)
    table.add_column("file", no_wrap=True)
    for e in entries:
        table.add_row(
            str(e.round),
            str(e.height),
            _short(e.model_hash),
            _short(e.parent_hash),
            as_markup_text(e.rule) if e.rule else "(initial)",
            str(e.num_updates),
            "ok" if e.file_present else "[bold red]missing[/]",
        )
    console.print(table)


@app.command()
def show(
    run_dir: RunDirArg,
    model: Annotated[
        str, typer.Argument(help="A round number, or at least 4 hex characters of the hash.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Show one model: its lineage back to the initial model and its tensors.

    The file is loaded and hashed again, so what is shown is the registered model.
    """
    entries = _load_entries(run_dir, quiet=as_json)
    entry = find_model(entries, model)
    lineage = get_lineage(entries, entry)
    arrays = load_model(run_dir, entry.model_hash)  # RegistryError naming the file if bad
    tensors = [
        (name, tuple(a.shape), str(a.dtype), int(a.size)) for name, a in sorted(arrays.items())
    ]
    total = sum(size for *_, size in tensors)
    file_size = entry.path.stat().st_size
    if as_json:
        document = _entry_to_json(entry) | {
            "file_size": file_size,
            "parameters": total,
            "lineage": [e.model_hash.hex() for e in lineage],
            "tensors": [
                {"name": n, "shape": list(s), "dtype": d, "parameters": p} for n, s, d, p in tensors
            ],
        }
        print(json.dumps(document, indent=2))
        return
    _print_entry(entry, file_size)
    _print_lineage(lineage)
    table = Table(title=f"{len(tensors)} tensors, {total:,} parameters")
    table.add_column("name")
    table.add_column("shape")
    table.add_column("dtype")
    table.add_column("parameters", justify="right")
    for name, shape, dtype, size in tensors:
        table.add_row(
            as_markup_text(name), " x ".join(map(str, shape)) or "scalar", dtype, f"{size:,}"
        )
    console.print(table)


def _check_recipient(genesis: Genesis, recipient: str | None) -> bytes | None:
    """The key an export is for; refused if the federation's contract does not let it have its
    models (:func:`~fedchain.ledger.derived.is_model_recipient`). A deployed federation's export
    must name its recipient (a simulation's participants are simulated: none needed)."""
    deployed = any(p.app_digest for p in genesis.participants)
    if recipient is None:
        if deployed:
            raise ConfigError(
                "name who the model is for with --recipient KEY: this federation's contract "
                f"lets {describe_model_access(genesis)} be given its models"
            )
        return None
    path = Path(recipient)
    key = identity.load_public_key(path) if path.is_file() else _hex_key(recipient)
    if not is_model_recipient(genesis, key):
        raise ConfigError(
            f"{identity.fingerprint(key)} may not be given this federation's models: its "
            f"contract lets {describe_model_access(genesis)} have them (rules: model-access)"
        )
    return key


def _hex_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"--recipient {text!r}: neither a .pub file nor 64 hex digits")
    return key


def describe_model_access(genesis: Genesis) -> str:
    """The contract's rule of model access in words."""
    extra = len(genesis.rules.model_access)
    people = f"its {len(genesis.participants)} participants"
    return people if not extra else f"{people} and {extra} other key{'s' * (extra != 1)}"


def _print_entry(entry: ModelEntry, file_size: int) -> None:
    kind = "initial model" if entry.is_initial else f"model of round {entry.round}"
    console.print(f"[bold]{kind}[/] (block {entry.height})")
    console.print(f"  hash     {entry.model_hash.hex()}")
    if entry.parent_hash is not None:
        console.print(f"  parent   {entry.parent_hash.hex()}")
        console.print(f"  rule     {as_markup_text(entry.rule)}, {entry.num_updates} updates")
    console.print(
        f"  file     {as_markup_text(entry.path)} ({file_size:,} bytes, hash verified)",
        soft_wrap=True,
    )


def _print_lineage(lineage: list[ModelEntry]) -> None:
    console.print("[bold]lineage[/] (newest first)")
    for e in lineage:
        what = (
            "initial model"
            if e.is_initial
            else f"{as_markup_text(e.rule)}, {e.num_updates} updates"
        )
        console.print(f"  round {e.round:>4}  block {e.height:>4}  {_short(e.model_hash)}  {what}")


@app.command()
def export(
    run_dir: RunDirArg,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="A new (or empty) folder for the model and its card."),
    ],
    model: Annotated[
        str | None,
        typer.Argument(
            help="A round number, or at least 4 hex characters of the hash (default: the "
            "latest model)."
        ),
    ] = None,
    base_weights: Annotated[
        Path | None,
        typer.Option(
            "--base-weights",
            help="Your copy of the federation's base weights (default: the run's config); "
            "checked against the genesis's hash.",
        ),
    ] = None,
    recipient: Annotated[
        str | None,
        typer.Option(
            "--recipient",
            help="Who the model is for: a public key (64 hex digits, or its .pub file). The "
            "federation's contract says who may be given its models (its participants, and "
            "the keys of its model-access rule); required for a deployed federation.",
        ),
    ] = None,
) -> None:
    """Export one model for plain torch, with its model card; overwrites nothing.

    model.safetensors: the full state dict (buffers included; LoRA merged).
    adapters.safetensors (LoRA): the trained tensors alone.
    card.json, card.md: model, base, rules, data, contributors, accuracy, verdict.
    """
    # torch and the model code (seconds): only for an export
    from fedchain.runs.export import export_version

    with CachingVerifier() as verifier, console.status("verifying the ledger"):
        inputs = load_report_inputs(run_dir, verifier=verifier)
        require_verified(inputs.verification)
        report = compute_report(inputs, verifier=verifier)
    entries = list_models(inputs.verification)
    entry = find_model(entries, model) if model is not None else entries[-1]
    state = inputs.verification.state
    record = state.genesis.rules.model if state is not None else None
    if state is None or record is None or not record.architecture:
        raise ConfigError(f"{run_dir}: its genesis names no model architecture to export")
    recipient_key = _check_recipient(state.genesis, recipient)
    read_regular_file(run_dir / CONFIG_FILENAME, run_dir)
    config = load_config_file(run_dir / CONFIG_FILENAME)
    base = base_weights or config.base_weights or None
    with console.status("building and writing the model"):
        done = export_version(run_dir, entry, record, config, out, base)
    (version,) = [
        m
        for m in report["lineage"]
        if m["height"] == entry.height and m["model_hash"] == entry.model_hash.hex()
    ]
    card = compute_card(report, version, [vars(f) for f in done.files], done.input_json())
    card["recipient"] = None if recipient_key is None else recipient_key.hex()
    paths = [out / f.name for f in done.files] + write_card_files(card, out)
    kind = "initial model" if entry.is_initial else f"model of round {entry.round}"
    verification = card["verification"]
    console.print(
        f"exported the {kind} {_short(entry.model_hash)}"
        + ("" if recipient_key is None else f" for {identity.fingerprint(recipient_key)}")
    )
    if verification["first_failure"]:  # the ledger verified; another model file did not
        console.print(f"[yellow]note[/] {as_markup_text(verification['first_failure'])}")
    for path in paths:
        console.print(f"wrote {path}", markup=False, highlight=False)
