"""A stopped simulated run: find what to resume (``fedchain simulate --resume``), and leave an
interrupted one at once with the command that resumes it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from fedchain.cli.common import console
from fedchain.config import RunConfig, load_config_file
from fedchain.errors import ConfigError
from fedchain.ledger.chain import Chain
from fedchain.runs.federation import remove_unregistered_models
from fedchain.runs.layout import CONFIG_FILENAME, LEDGER_FILENAME

__all__ = ["leave_interrupted", "leaving_on_ctrl_c", "resumable_run"]


def resumable_run(run_dir: Path) -> tuple[RunConfig, Path]:
    """The configuration of an unfinished run in ``run_dir``, its lost round's leftovers gone.

    The ledger head's round ``k`` is what was done: a round in progress when the run was killed
    never reached the ledger and runs again. Its model files are removed
    (:func:`fedchain.runs.federation.remove_unregistered_models`, as a resumed deployment does);
    the round's update pack is named by its round, so the repeated round replaces it, and
    ``metrics.json`` keeps only the rows of rounds on the ledger (fedchain.runs.session).
    """
    if not (run_dir / CONFIG_FILENAME).is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG_FILENAME})")
    config = load_config_file(run_dir / CONFIG_FILENAME)
    if not config.ledger:
        raise ConfigError(
            f"{run_dir}: a run with the ledger off cannot resume: nothing records which rounds "
            "were done; start a new run"
        )
    if not (run_dir / LEDGER_FILENAME).is_file():
        raise ConfigError(f"{run_dir}: no {LEDGER_FILENAME}; not a fedchain run directory")
    with Chain.open(run_dir / LEDGER_FILENAME) as chain:
        done = chain.state.round
    if done >= config.rounds:
        raise ConfigError(
            f"{run_dir}: all {config.rounds} rounds are on the ledger; nothing to resume"
        )
    for path in remove_unregistered_models(run_dir):
        console.print(f"removed {path.name} (saved by round {done + 1}, never on the ledger)")
    console.print(
        f"resuming run {config.run_id}: ledger at round {done} of {config.rounds}", highlight=False
    )
    return config, run_dir


def leave_interrupted(config: RunConfig, run_dir: Path) -> NoReturn:
    """Ctrl-C: say how to go on and leave at once, as a crash would. Flower's ServerApp thread
    cannot be stopped (it waits for replies up to the round timeout, and the interpreter would
    wait for it at exit: a first Ctrl-C used to leave the command hanging). Leaving now loses
    nothing: every block the ledger appended is whole (one SQLite transaction each), model and
    update files are written atomically, and a killed run resumes (tests/test_simulate_e2e.py);
    the watchdog of :mod:`server.simulation` stops Ray's processes once this one is gone."""
    if config.ledger:
        message = (
            "interrupted: the ledger keeps every block it appended; continue with\n"
            f"  fedchain simulate --resume {run_dir}"
        )
    else:
        message = f"interrupted (ledger off: this run cannot resume); its files are in {run_dir}"
    console.print(message, markup=False, highlight=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


@contextlib.contextmanager
def leaving_on_ctrl_c(config: RunConfig, run_dir: Path) -> Iterator[None]:
    """Inside the block, Ctrl-C calls :func:`leave_interrupted` from the signal handler itself,
    instead of raising ``KeyboardInterrupt`` through Flower's and Ray's clean-up: on a loaded
    machine that clean-up shut Ray down while another thread still used it, and Ray's core
    worker then ended the process with status 1 before the message was printed (seen once in
    tests/test_simulate_e2e.py's Ctrl-C test). The previous handler is restored on leaving."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # Ctrl-C is ignored here (a background job): keep it so
        return
    previous = signal.signal(signal.SIGINT, lambda *_: leave_interrupted(config, run_dir))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
