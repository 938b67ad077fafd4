"""``fedchain federation`` (the coordinator's participant list) and ``fedchain register``.

A data holder signs a registration (``fedchain register``) and sends the file to the coordinator,
who checks and adds it (``fedchain federation add``). The participants become the genesis of the
ledger when the coordinator first starts (``fedchain coordinator start``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fedchain.aggregation.rules import RULES
from fedchain.cli.common import PASSPHRASE_ENV, console, make_app, read_passphrase
from fedchain.cli.data import unlock_for_reading
from fedchain.config import RunConfig
from fedchain.crypto import identity
from fedchain.data.sources import SOURCES
from fedchain.errors import ConfigError
from fedchain.learning.catalog import check_model_name
from fedchain.ledger.show import as_markup_text, describe_contract
from fedchain.rounds.contribution import METHODS
from fedchain.runs import federation as fed
from fedchain.runs.layout import FEDERATION_FILENAME
from fedchain.runs.registration import (
    ParticipantEntry,
    create_registration,
    decode_registration_file,
    encode_registration_file,
    parse_federation_id,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

app = make_app("A federation's settings and registered participants (coordinator side).")

FedDirArg = Annotated[
    Path, typer.Argument(help=f"The federation folder (holds {FEDERATION_FILENAME}).")
]


IDENTITY_PASSPHRASE_ENV = "FEDCHAIN_IDENTITY_PASSPHRASE"  # noqa: S105 - a variable's name
MAX_SUPERNODE_KEY_FILE = 16 * 1024  # an OpenSSH EC P-384 public key line is ~250 bytes


def load_identity_interactive(path: Path, passphrase_env: str) -> Any:
    """An identity key, asking for its passphrase (``$passphrase_env`` or a prompt) if needed."""
    passphrase = None
    if identity.is_identity_encrypted(path):
        passphrase = read_passphrase(passphrase_env, confirm=False, what=f"the identity {path}")
    return identity.load_identity(path, passphrase)


def identity_passphrase_env_for(
    identity_env: str, data_passphrase_env: str, *, data_key_given: bool
) -> str:
    """Where an identity's passphrase comes from, as ``fedchain join`` decides it: its own
    variable, or, when the data set is opened with a key file (so the data passphrase
    variable is free) and only that variable is set, the data passphrase variable."""
    if identity_env not in os.environ and data_key_given and data_passphrase_env in os.environ:
        return data_passphrase_env
    return identity_env


def read_supernode_key(path: Path) -> str:
    """The text of a SuperNode public key file; one clear error for a binary or huge file."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SUPERNODE_KEY_FILE + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the SuperNode public key ({e.strerror})") from None
    try:
        if len(raw) > MAX_SUPERNODE_KEY_FILE:
            raise ValueError
        text = raw.decode("ascii")
    except (UnicodeDecodeError, ValueError):
        text = ""
    if not text.strip():
        raise ConfigError(
            f"{path}: not an OpenSSH public key (expected one line of text, as "
            "`fedchain keygen NAME.key --supernode` writes to NAME.pub)"
        )
    return text


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
    model: Annotated[
        str,
        typer.Option(
            help="cnn or mlp; resnet18, mobilenet_v3_small, efficientnet_b0, vgg11; or your own "
            "task module's import path (fine-tuning: --set finetune=head --set "
            "base-weights=FILE)."
        ),
    ] = "cnn",
    aggregation: Annotated[
        str,
        typer.Option(
            help="Aggregation rule (the same default as `fedchain simulate`: screened, scored "
            "on the coordinator's validation split)."
        ),
    ] = RunConfig.aggregation,
    contribution: Annotated[
        str, typer.Option(help="Contribution method.")
    ] = RunConfig.contribution,
    min_stake: Annotated[
        int, typer.Option(min=1, help="Minimum stake (base units).")
    ] = RunConfig.min_stake,
    reward_per_round: Annotated[
        int, typer.Option(min=0, help="Reward pool per round.")
    ] = RunConfig.reward_per_round,
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
    if settings.get("base-weights"):
        settings["base-weights"] = str(Path(str(settings["base-weights"])).resolve())
    _check_names(settings)
    federation = fed.init_federation(
        fed_dir,
        name=name or fed_dir.resolve().name,
        settings=settings,
        min_clients=min_clients,
        join_timeout=join_timeout,
    )
    console.print(
        f"created {fed_dir / FEDERATION_FILENAME} (federation {federation.name}, run id "
        f"{federation.run_id}: the name and a random salt, so the id below is this "
        "federation's alone)"
    )
    # soft_wrap: the id must stay one line, whole, to be copied
    console.print(f"federation id: {federation.federation_id.hex()}", soft_wrap=True)
    console.print(
        f"next: give participants the federation id and {fed_dir / FEDERATION_FILENAME}; they "
        "run `fedchain register --federation-id ID --federation federation.toml ...` (which "
        "shows them the contract they sign) and you add each file with "
        f"`fedchain federation add {fed_dir} FILE`"
    )


def _check_names(settings: dict[str, Any]) -> None:

    for key, known in (
        ("aggregation", RULES),
        ("contribution", METHODS),
        ("dataset", SOURCES),
    ):
        if key in settings and settings[key] not in known:
            raise ConfigError(f"unknown {key} {settings[key]!r}; choose one of {', '.join(known)}")
    check_model_name(str(settings.get("model", RunConfig.model)))


@app.command()
def add(
    fed_dir: FedDirArg,
    registration: Annotated[
        list[Path], typer.Argument(help="Registration files from `fedchain register`.")
    ],
) -> None:
    """Check a registration's signature and add the participant (before the first start)."""
    for path in registration:
        entry = decode_registration_file(path)
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
    console.print(f"federation id: {federation.federation_id.hex()}", soft_wrap=True)
    min_clients = federation.min_clients or len(federation.participants)
    console.print(f"min clients per round: {min_clients}; join timeout {federation.join_timeout} s")
    settings = ", ".join(f"{k}={v}" for k, v in sorted(federation.settings.items()))
    console.print(f"settings: {settings or '(defaults)'}")
    if federation.participants:
        console.print(_participants_table(federation.participants))
    else:
        console.print("no participants yet: add registrations with `fedchain federation add`")


def _federation_to_sign(federation_id: str | None, federation_file: Path | None) -> bytes:
    """The federation id a registration signs, from ``--federation-id``, from the coordinator's
    ``--federation`` file (whose contract is printed), or both when they agree."""
    if federation_file is None:
        if federation_id is None:
            raise ConfigError("give --federation-id, or the coordinator's --federation file")
        return parse_federation_id(federation_id, "--federation-id")
    folder = federation_file.parent if federation_file.is_file() else federation_file
    federation = fed.load_federation(folder)  # its id re-derived from its rules
    if federation_id is not None:
        given = parse_federation_id(federation_id, "--federation-id")
        if given != federation.federation_id:
            raise ConfigError(
                f"--federation-id {given.hex()[:16]}… is not the id of "
                f"{folder / FEDERATION_FILENAME} ({federation.federation_id.hex()[:16]}…): ask "
                "the coordinator which is meant"
            )
    rules = fed.compute_rules_of(folder, federation.run_id, federation.settings, federation.model)
    console.print(
        f"federation {as_markup_text(federation.name)}, id {federation.federation_id.hex()}: "
        "the contract you sign",
        soft_wrap=True,
    )
    for line in describe_contract(rules):
        console.print(f"  {as_markup_text(line)}", soft_wrap=True)
    return federation.federation_id


def _participants_table(participants: tuple[ParticipantEntry, ...]) -> Table:
    """Every value whole at 80 columns: no box edges, numbers and ids never cut (no_wrap with
    their full width as minimum); only a long name folds onto a second line."""
    rows = [
        (
            p.name,
            identity.fingerprint(p.public_key),
            str(p.registration.stake),
            str(p.registration.num_examples),
            p.registration.dataset_hash.hex()[:8],
            "yes" if p.supernode_key else "no",
        )
        for p in participants
    ]
    table = Table(
        title=f"{len(participants)} participant{'' if len(participants) == 1 else 's'}",
        caption="node: a SuperNode key is registered; dataset: sha256 prefix",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("name", overflow="fold", min_width=8)
    # widest case: 16 + 19 (2^63 - 1) + 13 (2^40) + 8 + 4 and 10 of padding leave 10 for a name
    columns = ("identity", "stake", "examples", "dataset", "node")
    for i, column in enumerate(columns, start=1):
        width = max([len(column), *(len(row[i]) for row in rows)])
        right = column in ("stake", "examples")
        table.add_column(
            column, no_wrap=True, min_width=width, justify="right" if right else "left"
        )
    for row in rows:
        table.add_row(*row)
    return table


def register(
    identity_path: Annotated[
        Path, typer.Option("--identity", "-i", help="Your identity key (`fedchain keygen`).")
    ],
    data: Annotated[Path, typer.Option("--data", "-d", help="Your encrypted dataset (.fcd).")],
    stake: Annotated[int, typer.Option(min=1, help="Stake deposit in base units.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Registration file to write.")],
    federation_id: Annotated[
        str | None,
        typer.Option(
            "--federation-id",
            help="The federation's id (64 hex digits), from its coordinator (`fedchain "
            "federation init` and `show` print it): the registration is valid for it alone. "
            "Give it, --federation, or both (then they must agree).",
        ),
    ] = None,
    federation_file: Annotated[
        Path | None,
        typer.Option(
            "--federation",
            help=f"The coordinator's {FEDERATION_FILENAME} (or its folder): its id is checked "
            "against its rules, and the contract you sign (rounds, epochs, what leaves your "
            "machine, privacy, who may be given the models) is printed before you sign.",
        ),
    ] = None,
    data_key: Annotated[
        Path | None,
        typer.Option(
            "--data-key",
            help="The dataset's key file; without it, its passphrase. The dataset is decrypted "
            "to check it and count its examples (as `fedchain join` does).",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Your participant name; default: the identity file's stem.")
    ] = None,
    supernode_key: Annotated[
        Path | None,
        typer.Option(
            "--supernode-key",
            help="Your SuperNode authentication public key (NAME.pub from `fedchain keygen "
            "NAME.key --supernode`); needed unless the coordinator runs --insecure.",
        ),
    ] = None,
    passphrase_env: Annotated[
        str,
        typer.Option("--passphrase-env", help="Variable holding the dataset's passphrase."),
    ] = PASSPHRASE_ENV,
    identity_passphrase_env: Annotated[
        str,
        typer.Option(
            "--identity-passphrase-env",
            help="Variable holding the identity's passphrase (with --data-key, "
            "$FEDCHAIN_PASSPHRASE serves when this one is unset, as for `fedchain join`).",
        ),
    ] = IDENTITY_PASSPHRASE_ENV,
) -> None:
    """Sign a registration (identity, stake, dataset commitment, name, SuperNode key, and the
    app you approve to run on your data: your installed fedchain's) for one federation, for its
    coordinator to add.

    The dataset is decrypted (one chunk at a time) so that the example count you sign is the
    authenticated one, not what the file's plain header says."""
    if out.exists():
        raise ConfigError(f"{out}: already exists")
    federation = _federation_to_sign(federation_id, federation_file)
    supernode_text = read_supernode_key(supernode_key) if supernode_key is not None else ""
    unlock = unlock_for_reading(data, data_key, passphrase_env)
    identity_env = identity_passphrase_env_for(
        identity_passphrase_env, passphrase_env, data_key_given=data_key is not None
    )
    key = load_identity_interactive(identity_path, identity_env)
    with console.status(f"checking {data}…"):
        entry = create_registration(
            key,
            data,
            federation_id=federation,
            unlock=unlock,
            stake=stake,
            name=name or identity_path.stem,
            supernode_key=supernode_text,
        )
    out.write_text(encode_registration_file(entry))
    reg = entry.registration
    console.print(f"wrote {out}: {entry.name}, identity {identity.fingerprint(reg.public_key)}")
    console.print(f"dataset {data}: {reg.num_examples} examples, sha256 {reg.dataset_hash.hex()}")
    console.print(
        f"approved app {reg.app_digest.hex()} (fedchain {reg.fedchain_version}'s own ClientApp, "
        "no code shipped): `fedchain join` runs only this app on your data"
    )
    console.print("send this file to the coordinator (it holds no secret)")
