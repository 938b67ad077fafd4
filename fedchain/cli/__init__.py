"""The ``fedchain`` command line."""

from __future__ import annotations

from typing import Annotated

import typer

from fedchain import __version__
from fedchain.cli import (
    anchor,
    coordinator,
    data,
    federation,
    join,
    keys,
    ledger,
    models,
    report,
    simulate,
)
from fedchain.cli.common import console, make_app

app = make_app(
    "fedchain: federated learning with encrypted client data, signed model updates and a "
    "proof-of-stake ledger of who contributed what."
)
app.add_typer(data.app, name="data")
app.command("keygen")(keys.keygen)
app.command("simulate")(simulate.simulate)
app.command("verify")(ledger.verify)
app.add_typer(ledger.app, name="ledger")
app.add_typer(models.app, name="models")
app.command("report")(report.report)
app.add_typer(federation.app, name="federation")
app.command("register")(federation.register)
app.add_typer(coordinator.app, name="coordinator")
app.command("join")(join.join)
app.add_typer(anchor.app, name="anchor")


def _version(value: bool) -> None:
    if value:
        console.print(f"fedchain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    pass


def main() -> None:
    app(prog_name="fedchain")
