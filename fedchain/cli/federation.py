"""``fedchain federation`` (the coordinator's participant list) and ``fedchain register``.

A data holder signs a registration (``fedchain register``) and sends the file to the coordinator,
who checks and adds it (``fedchain federation add``). The participants become the genesis of the
ledger when the coordinator first starts (``fedchain coordinator start``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedchain import federation as fed
from fedchain import identity
from fedchain.cli.common import PASSPHRASE_ENV, console, make_app, read_passphrase
from fedchain.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

app = make_app("A federation's settings and registered participants (coordinator side).")

FedDirArg = Annotated[Path, typer.Argument(help="The federation folder (holds federation.toml).")]


def load_identity_interactive(path: Path, passphrase_env: str) -> Any:
    """An identity key, asking for its passphrase (``$passphrase_env`` or a prompt) if needed."""
    passphrase = None
    if identity.is_identity_encrypted(path):
        passphrase = read_passphrase(passphrase_env, confirm=False, what=f"the identity {path}")
    return identity.load_identity(path, passphrase)


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is read as a TOML value (``rounds=5``, ``model="mlp"``), and a
    bare word that is not one is taken as a string (``model=mlp``)."""
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        settings[key.strip()] = value
    return settings


@app.command()
def init(
    fed_dir: FedDirArg,
    name: Annotated[
        str | None, typer.Option(help="Federation name (the ledger's run id); default: folder.")
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds to train.")] = 10,
    dataset: Annotated[
        str,
        typer.Option(
            help="The coordinator's own data source: a validation split of its train split "
            "scores contributions, its test split measures accuracy (digits, mnist, npz, ...)."
        ),
    ] = "digits",
    data_root: Annotated[
        str, typer.Option(help="Where that source lives (folder, or the .npz file).")
    ] = "",
    model: Annotated[str, typer.Option(help="cnn or mlp.")] = "cnn",
    aggregation: Annotated[str, typer.Option(help="Aggregation rule.")] = "fedavg",
    contribution: Annotated[str, typer.Option(help="Contribution method.")] = "gtg-shapley",
    min_stake: Annotated[int, typer.Option(min=1, help="Minimum stake (base units).")] = 100_000,
    reward_per_round: Annotated[int, typer.Option(min=0, help="Reward pool per round.")] = 10_000,
    round_timeout: Annotated[
        float, typer.Option(help="Seconds a round waits for replies; late clients are dropped.")
    ] = 300.0,
    min_clients: Annotated[
        int, typer.Option(min=0, help="Connected clients a round needs (0: every participant).")
    ] = 0,
    join_timeout: Annotated[
        float, typer.Option(help="Seconds the coordinator waits for min-clients to connect.")
    ] = 3600.0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other run setting, KEY=VALUE (e.g. local-epochs=1)."),
    ] = None,
) -> None:
    """Create a federation: its settings and an empty participant list."""
    settings: dict[str, Any] = {
        "rounds": rounds,
        "dataset": dataset,
        "model": model,
        "aggregation": aggregation,
        "contribution": contribution,
        "min-stake": min_stake,
        "reward-per-round": reward_per_round,
        "round-timeout": round_timeout,
    }
    if data_root:
        settings["data-root"] = str(Path(data_root).resolve())
    settings.update(_parse_set(set_ or []))
    _check_names(settings)
    federation = fed.init_federation(
        fed_dir,
        name=name or fed_dir.resolve().name,
        settings=settings,
        min_clients=min_clients,
        join_timeout=join_timeout,
    )
    console.print(f"created {fed_dir / fed.FEDERATION_FILE} (federation {federation.name})")
    console.print(
        "next: participants run `fedchain register ...` and you add each file with "
        f"`fedchain federation add {fed_dir} FILE`"
    )


def _check_names(settings: dict[str, Any]) -> None:
    from fedchain.aggregation import RULES
    from fedchain.contribution import METHODS
    from fedchain.models import MODELS
    from fedchain.sources import SOURCES

    for key, known in (
        ("aggregation", RULES),
        ("contribution", METHODS),
        ("model", MODELS),
        ("dataset", SOURCES),
    ):
        if key in settings and settings[key] not in known:
            raise ConfigError(f"unknown {key} {settings[key]!r}; choose one of {', '.join(known)}")


@app.command()
def add(
    fed_dir: FedDirArg,
    registration: Annotated[
        list[Path], typer.Argument(help="Registration files from `fedchain register`.")
    ],
) -> None:
    """Check a registration's signature and add the participant (before the first start)."""
    for path in registration:
        entry = fed.decode_registration_file(path)
        fed.add_participant(fed_dir, entry)
        console.print(
            f"added {entry.name}: identity {identity.fingerprint(entry.public_key)}, stake "
            f"{entry.registration.stake}, {entry.registration.num_examples} examples"
            + ("" if entry.supernode_key else " (no SuperNode key: only for --insecure runs)")
        )


@app.command()
def show(fed_dir: FedDirArg) -> None:
    """Print the federation's settings and participants."""
    federation = fed.load_federation(fed_dir)
    state = "ledger created" if fed.has_ledger(fed_dir) else "no ledger yet (participants open)"
    console.print(f"federation [bold]{federation.name}[/] in {fed_dir}: {state}")
    min_clients = federation.min_clients or len(federation.participants)
    console.print(f"min clients per round: {min_clients}; join timeout {federation.join_timeout} s")
    settings = ", ".join(f"{k}={v}" for k, v in sorted(federation.settings.items()))
    console.print(f"settings: {settings or '(defaults)'}")
    table = Table(title=f"{len(federation.participants)} participants")
    for column in ("name", "identity", "stake", "examples", "dataset (sha256)", "SuperNode key"):
        table.add_column(column, no_wrap=True)
    for p in federation.participants:
        reg = p.registration
        table.add_row(
            p.name,
            identity.fingerprint(p.public_key),
            str(reg.stake),
            str(reg.num_examples),
            reg.dataset_hash.hex()[:16],
            "yes" if p.supernode_key else "no",
        )
    console.print(table)


def register(
    identity_path: Annotated[
        Path, typer.Option("--identity", "-i", help="Your identity key (`fedchain keygen`).")
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="Your encrypted dataset (.fcd).")],
    stake: Annotated[int, typer.Option(min=1, help="Stake deposit in base units.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Registration file to write.")],
    name: Annotated[
        str | None, typer.Option(help="Your participant name; default: the identity file's stem.")
    ] = None,
    supernode_key: Annotated[
        Path | None,
        typer.Option(
            "--supernode-key",
            help="Your SuperNode authentication public key (.pub, `fedchain join --new-auth-key`"
            " makes one); needed unless the coordinator runs --insecure.",
        ),
    ] = None,
    passphrase_env: Annotated[
        str,
        typer.Option(
            "--passphrase-env", help="Environment variable with the identity's passphrase."
        ),
    ] = PASSPHRASE_ENV,
) -> None:
    """Sign a registration (identity, stake, dataset commitment) for a coordinator to add."""
    if out.exists():
        raise ConfigError(f"{out}: already exists")
    key = load_identity_interactive(identity_path, passphrase_env)
    supernode_text = supernode_key.read_text() if supernode_key is not None else ""
    entry = fed.create_registration(
        key, data, stake=stake, name=name or identity_path.stem, supernode_key=supernode_text
    )
    out.write_text(fed.encode_registration_file(entry))
    reg = entry.registration
    console.print(f"wrote {out}: {entry.name}, identity {identity.fingerprint(reg.public_key)}")
    console.print(f"dataset {data}: {reg.num_examples} examples, sha256 {reg.dataset_hash.hex()}")
    console.print("send this file to the coordinator (it holds no secret)")
