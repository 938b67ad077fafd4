"""``fedchain data``: encrypt a source into per-client files, inspect a file, make a key file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from fedchain.cli.common import PASSPHRASE_ENV, console, make_app, read_passphrase
from fedchain.data import datafile, keys
from fedchain.data.header import MAX_CHUNK_SIZE
from fedchain.data.labelled_text import DEFAULT_MAX_LENGTH, TextOptions
from fedchain.data.partition import label_histogram, partition
from fedchain.data.sources import load_source
from fedchain.errors import ConfigError
from fedchain.runs.layout import client_data_name

app = make_app(
    "Encrypted client datasets: split a source into per-client .fcd files, inspect them."
)

KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        "-k",
        help="Data key file (64 hex digits, mode 0600), created if missing. "
        "Without it a passphrase is used.",
    ),
]
ReadKeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        "-k",
        help="The data key file the dataset was encrypted with (it must exist): decrypt the "
        "file and count its labels.",
    ),
]
PassEnvOpt = Annotated[
    str,
    typer.Option(
        "--passphrase-env",
        help="Environment variable holding the passphrase; if unset you are asked at the terminal.",
    ),
]


def _unlock_for_writing(key_file: Path | None, passphrase_env: str) -> keys.Unlock:
    if key_file is None:
        secret = read_passphrase(passphrase_env, confirm=True, what="the new dataset files")
        return keys.Passphrase(secret)
    if key_file.exists():
        return keys.load_key_file(key_file)
    key = keys.create_key_file(key_file)
    console.print(
        f"created key file [bold]{key_file}[/] (mode 0600, key id {key.key_id}); keep it secret"
    )
    return key


def unlock_for_reading(path: Path, key_file: Path | None, passphrase_env: str) -> keys.Unlock:
    """What opens the dataset at ``path``: ``key_file`` if given, else its passphrase
    (``$passphrase_env`` or a prompt)."""
    if key_file is not None:
        return keys.load_key_file(key_file)
    return keys.Passphrase(read_passphrase(passphrase_env, confirm=False, what=str(path)))


def _client_path(out: Path, index: int) -> Path:
    return out / client_data_name(index)


@app.command()
def encrypt(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the encrypted files.")
    ] = Path("data"),
    source: Annotated[
        str,
        typer.Option(
            "--source",
            "-s",
            help="digits (embedded), fashion-mnist (Debian's dataset-fashion-mnist, or "
            "--root), mnist, cifar10 (from --root), imagefolder (--root is the folder), npz "
            "(--root is the .npz file), text (--root is a .csv/.jsonl file or a folder of "
            "train and test files; needs --tokenizer).",
        ),
    ] = "digits",
    root: Annotated[
        Path | None, typer.Option(help="Where the source lives (folder or file, see --source).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, test or all.")] = "train",
    download: Annotated[
        bool, typer.Option("--download", help="Let torchvision download mnist/cifar10 into --root.")
    ] = False,
    image_size: Annotated[int, typer.Option(help="imagefolder: resize images to this size.")] = 32,
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="text: a local tokenizer directory (as save_pretrained writes one)."),
    ] = None,
    text_column: Annotated[str, typer.Option(help="text: the column with the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="text: the column with the label.")] = "label",
    max_length: Annotated[
        int, typer.Option(help="text: tokens per example (cut or padded to it).")
    ] = DEFAULT_MAX_LENGTH,
    classes: Annotated[
        str | None,
        typer.Option(
            help="text: the class names in order, comma-separated (default: every label in the "
            "files, sorted); give them when a holder's file may lack some labels."
        ),
    ] = None,
    clients: Annotated[int, typer.Option("--clients", "-n", min=1, help="Number of clients.")] = 10,
    client: Annotated[
        int | None, typer.Option(min=0, help="Write only this client's file (0-based index).")
    ] = None,
    partitioner: Annotated[
        str, typer.Option("--partitioner", "-p", help="iid, dirichlet, shards or quantity.")
    ] = "iid",
    alpha: Annotated[
        float, typer.Option(help="Dirichlet concentration (dirichlet: labels, quantity: sizes).")
    ] = 0.5,
    shards_per_client: Annotated[int, typer.Option(min=1, help="shards: shards per client.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the partition (same seed, same split).")] = 0,
    key_file: KeyFileOpt = None,
    passphrase_env: PassEnvOpt = PASSPHRASE_ENV,
    chunk_size: Annotated[
        int,
        typer.Option(min=1, max=MAX_CHUNK_SIZE, help="Plaintext bytes per encrypted chunk."),
    ] = datafile.DEFAULT_CHUNK_SIZE,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Split a data source among clients and write one encrypted .fcd file per client."""

    if client is not None and client >= clients:
        raise ConfigError(f"--client {client} is out of range for --clients {clients}")
    targets = range(clients) if client is None else [client]
    existing = [str(_client_path(out, i)) for i in targets if _client_path(out, i).exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]}: already exists; use --force to overwrite")

    with console.status(f"loading {source} ({split})…"):
        text = TextOptions(
            tokenizer,
            text_column,
            label_column,
            max_length,
            None if classes is None else tuple(c.strip() for c in classes.split(",")),
        )
        dataset = load_source(
            source, root=root, split=split, download=download, image_size=image_size, text=text
        )
    parts = partition(
        dataset.y, clients, partitioner, seed=seed, alpha=alpha, shards_per_client=shards_per_client
    )
    # Only now, with the data loaded and split, may a new key file be created.
    unlock = _unlock_for_writing(key_file, passphrase_env)
    info: dict[str, Any] = {
        "method": partitioner,
        "num_clients": clients,
        "seed": seed,
        "source_split": split,
    }
    if partitioner in ("dirichlet", "quantity"):
        info["alpha"] = alpha
    if partitioner == "shards":
        info["shards_per_client"] = shards_per_client

    table = Table(title=f"{source} → {out} ({partitioner}, {clients} clients, seed {seed})")
    for col in ("client", "file", "examples", "labels", "commitment (sha256)"):
        table.add_column(col, justify="right" if col == "examples" else "left", no_wrap=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("encrypting", total=len(targets))
        for i in targets:
            path = _client_path(out, i)
            header = datafile.write_dataset(
                path,
                dataset.subset(parts[i]),
                unlock,
                partition={**info, "client": i},
                chunk_size=chunk_size,
                overwrite=force,
            )
            commitment = datafile.compute_dataset_commitment(path)
            table.add_row(
                str(i),
                path.name,
                str(header.meta.num_examples),
                f"{len(header.meta.labels_present)} of {len(header.meta.classes)}",
                commitment.file_hash.hex()[:16],
            )
            progress.advance(task)
    console.print(table)


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="An encrypted .fcd dataset file.")],
    key_file: ReadKeyFileOpt = None,
    unlock: Annotated[
        bool,
        typer.Option(
            "--unlock", help="Decrypt with a passphrase ($FEDCHAIN_PASSPHRASE or prompt)."
        ),
    ] = False,
    passphrase_env: PassEnvOpt = PASSPHRASE_ENV,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a dataset file's header (no key needed); with a key, decrypt it and count labels."""

    header = datafile.read_header(file)  # sizes checked against the file's length
    commitment = datafile.compute_dataset_commitment(file)
    report: dict[str, Any] = {
        "file": str(file),
        "sha256": commitment.file_hash.hex(),
        "file_size": header.file_size,
        **header.to_json(),
    }
    if key_file is not None or unlock:
        dataset = datafile.load_dataset(file, unlock_for_reading(file, key_file, passphrase_env))
        counts = label_histogram(dataset.y, len(dataset.classes))
        report["decrypted"] = {
            "num_examples": len(dataset),
            "x_shape": list(dataset.x.shape),
            "x_dtype": dataset.x.dtype.name,
            "y_shape": list(dataset.y.shape),
            "label_histogram": {c: int(n) for c, n in zip(dataset.classes, counts, strict=True)},
        }
    if as_json:
        console.print_json(json.dumps(report))
        return
    _print_inspection(report)


def _print_inspection(report: dict[str, Any]) -> None:
    ds, key = report["dataset"], report["key"]
    table = Table(title=report["file"], show_header=False)
    table.add_column(style="bold")
    table.add_column()
    kdf = (
        f"passphrase, scrypt n={key['n']} r={key['r']} p={key['p']}"
        if key["kind"] == "passphrase"
        else f"key file, key id {key['key_id']}"
    )
    part = ds["partition"]
    rows = [
        ("format", f"fedchain dataset v{report['format_version']}, {report['cipher']}"),
        ("chunks", f"{report['num_chunks']} x ≤{report['chunk_size']} bytes"),
        ("key", kdf),
        ("sha256", report["sha256"]),
        ("size", f"{report['file_size']} bytes"),
        ("source", ds["name"]),
        ("examples", str(ds["num_examples"])),
        ("features", f"{tuple(ds['x_shape'])} {ds['x_dtype']} per example"),
        ("classes", ", ".join(ds["classes"])),
        ("labels present", ", ".join(map(str, ds["labels_present"]))),
        ("partition", ", ".join(f"{k}={v}" for k, v in sorted(part.items())) or "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if "decrypted" in report:
        dec = report["decrypted"]
        console.print(f"decrypted: {dec['num_examples']} examples, x {tuple(dec['x_shape'])}")
        hist = Table(title="label histogram")
        hist.add_column("class")
        hist.add_column("examples", justify="right")
        for name, n in dec["label_histogram"].items():
            hist.add_row(name, str(n))
        console.print(hist)
    else:
        console.print("header only; pass --key-file or --unlock to decrypt and count labels")


@app.command()
def keygen(
    path: Annotated[Path, typer.Argument(help="Where to write the new key file (mode 0600).")],
) -> None:
    """Create a random data key file for `data encrypt --key-file`; never overwrites."""
    key = keys.create_key_file(path)
    console.print(
        f"created key file [bold]{path}[/] (mode 0600, key id {key.key_id}); keep it secret"
    )
