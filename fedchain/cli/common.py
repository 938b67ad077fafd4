"""What every fedchain command shares: error reporting, consoles and where secrets come from.

Secrets never come from the command line (it leaks into shell history and ``ps``): a passphrase is
read from an environment variable when set, else asked for at the terminal, else refused.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from fedchain.errors import ConfigError, FedchainError

PASSPHRASE_ENV = "FEDCHAIN_PASSPHRASE"  # noqa: S105 - the name of a variable, not a secret

console = Console(highlight=False)


class UserError(click.ClickException):
    """A FedchainError on its way out: its message on stderr, exit code 1, no traceback."""

    exit_code = 1


class Group(typer.core.TyperGroup):
    """Turns the errors a user can cause into :class:`UserError` for every subcommand below it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FedchainError as e:
            raise UserError(str(e)) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise UserError(f"{where}{e.strerror or e}") from None


def make_app(help: str) -> typer.Typer:
    return typer.Typer(
        cls=Group,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,  # rich tracebacks would print locals, secrets included
        rich_markup_mode="rich",
    )


def read_passphrase(env_var: str, *, confirm: bool, what: str) -> bytes:
    """The passphrase from ``$env_var``, else from a hidden prompt; never from argv."""
    value = os.environ.get(env_var)
    if value is not None:
        if not value:
            raise ConfigError(f"${env_var} is set but empty")
        return value.encode()
    if not sys.stdin.isatty():
        raise ConfigError(
            f"no passphrase for {what}: set ${env_var}, run in a terminal to be asked, "
            "or use a key file"
        )
    first = getpass.getpass(f"Passphrase for {what}: ")
    if not first:
        raise ConfigError("the passphrase is empty")
    if confirm and getpass.getpass("Repeat the passphrase: ") != first:
        raise ConfigError("the passphrases do not match")
    return first.encode()


@contextmanager
def ledger_progress() -> Iterator[tuple[Progress, Callable[[int, int], None]]]:
    """A transient progress bar for replaying a ledger: ``(progress, on_block)`` for
    :func:`fedchain.ledger.verify.verify_ledger`; more tasks may be added to ``progress``."""
    columns = (TextColumn("verifying {task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("the ledger", total=None)

        def on_block(height: int, head: int) -> None:
            if height % 16 == 0 or height == head:
                progress.update(task, completed=height + 1, total=head + 1)

        yield progress, on_block
