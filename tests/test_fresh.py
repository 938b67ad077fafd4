"""A fresh machine as a newcomer meets it: nothing contacts anyone unasked, the licence is there.

The telemetry test runs the real entry points in a clean interpreter: Flower decides whether to
send once, when ``flwr`` is first imported, so only a new process without
``FLWR_TELEMETRY_ENABLED`` in its environment shows what a user's first ``fedchain simulate`` does.
The network calls are replaced by recorders in that process; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.utils import get_flwr_home
from typer.testing import CliRunner

import fedchain
from fedchain.cli import app
from fedchain.data.datafile import load_dataset
from fedchain.data.keys import load_key_file
from fedchain.data.sources import DEBIAN_FASHION_MNIST

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

# Runs in a clean interpreter: record every would-be request, import what `fedchain simulate`
# imports (flwr is first imported by server.simulation), then ask Flower to send the event
# `run_simulation` sends first and to run the update check its SuperLink/SuperNode/CLI run.
PROBE = r"""
import json, threading, urllib.error, urllib.request
import requests

sent = []

def urlopen(request, *args, **kwargs):
    sent.append(getattr(request, "full_url", str(request)))
    raise urllib.error.URLError("the test blocks the network")

def post(url, *args, **kwargs):
    sent.append(url)
    raise requests.ConnectionError("the test blocks the network")

urllib.request.urlopen = urlopen
requests.post = post

from fedchain.cli import main  # noqa: F401  (the `fedchain` console script's entry point)
import server.simulation  # noqa: F401  (what `fedchain simulate` runs: the first flwr import)
from flwr.supercore import telemetry, update_check
from ray._common.usage import usage_lib

telemetry.event(telemetry.EventType.PYTHON_API_RUN_SIMULATION_ENTER).result(timeout=60)
update_check.warn_if_flwr_update_available("flower-superlink")
for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
        thread.join(30)
print(json.dumps({"sent": sent, "ray_usage_stats": usage_lib.usage_stats_enabled()}))
"""


def run_probe(tmp_path: Path, extra_env: dict[str, str]) -> dict[str, object]:
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        **extra_env,
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fedchain_sends_no_telemetry_and_checks_no_updates_by_default(tmp_path):
    seen = run_probe(tmp_path, {})
    assert seen == {"sent": [], "ray_usage_stats": False}


def test_telemetry_is_sent_when_the_user_opts_in(tmp_path):
    """An explicit FLWR_TELEMETRY_ENABLED=1 is the user's choice, and fedchain keeps it."""
    seen = run_probe(tmp_path, {"FLWR_TELEMETRY_ENABLED": "1"})
    assert seen["sent"] == ["https://telemetry.flower.ai/api/v1/event"]


def test_environment_defaults_keep_a_value_the_user_set():
    assert fedchain.NO_PHONING_HOME == {
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def test_the_suite_runs_with_a_temporary_home(test_home):
    """Flower's state (connections, local SuperLink, telemetry id) never lands in ~/.flwr."""
    assert Path.home() == test_home
    assert get_flwr_home() == test_home / ".flwr"
    assert Path(os.environ["MPLCONFIGDIR"]).is_relative_to(test_home)
    assert test_home.name.startswith("fedchain-tests-home-")


def test_licence_is_apache_2_and_shipped():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


@pytest.mark.parametrize("marker", ["slow", "e2e", "browser", "fashion_mnist"])
def test_markers_are_registered(marker):
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    assert any(line.startswith(f"{marker}:") for line in options["ini_options"]["markers"])


def readme_commands(prefix: str) -> list[list[str]]:
    """The README's shell commands starting with ``prefix`` (continuations joined, no comments)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith(prefix)]


def test_readme_single_client_file_has_the_same_split(tmp_path, monkeypatch):
    """The README's "only client 3's file" line writes what the full split gave client 3."""
    monkeypatch.chdir(tmp_path)
    whole, single = readme_commands("fedchain data encrypt --source digits --clients 10")[:2]
    assert "--client" not in whole and "--client" in single
    for argv in (whole, single):
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, result.output
    key = load_key_file(Path(whole[whole.index("--key-file") + 1]))
    client = int(single[single.index("--client") + 1])
    full = load_dataset(Path(whole[whole.index("--out") + 1], f"client-{client:03d}.fcd"), key)
    alone = load_dataset(Path(single[single.index("--out") + 1], f"client-{client:03d}.fcd"), key)
    assert np.array_equal(full.x, alone.x) and np.array_equal(full.y, alone.y)


def make_on_an_empty_path(tmp_path: Path, *args: str) -> list[str]:
    """``make ARGS`` in the repository with nothing on PATH (no Chromium, no apt-get): it must
    fail; what it said on stderr, without make's own lines."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run(
        [make, "--no-print-directory", "-C", str(ROOT), *args],
        env={"PATH": str(empty), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    return [line for line in result.stderr.splitlines() if not line.startswith("make: ")]


def test_make_test_finds_or_installs_chromium_or_says_what_to_install(tmp_path):
    """On a machine without Chromium (and no apt-get to install it), `make test` stops at once
    with one line naming the package, instead of failing one test after a long run."""
    said = make_on_an_empty_path(tmp_path, "chromium")
    assert len(said) == 1 and "apt-get install chromium" in said[0], said
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bchromium\b", makefile, flags=re.M)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == "make test" and not any("apt-get" in line for line in ci)


def test_make_test_finds_or_installs_fashion_mnist_or_says_what_to_install(tmp_path):
    """Likewise for the real-data tests' Fashion-MNIST (Debian's dataset-fashion-mnist), and
    the Makefile looks where the fashion-mnist source does."""
    said = make_on_an_empty_path(tmp_path, "fashion-mnist", f"FASHION_MNIST={tmp_path / 'none'}")
    assert len(said) == 1 and "apt-get install dataset-fashion-mnist" in said[0], said
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\bfashion-mnist\b", makefile, flags=re.M)
    default = re.search(r"^FASHION_MNIST \?= (\S+)$", makefile, flags=re.M)
    assert default is not None and Path(default[1]) == DEBIAN_FASHION_MNIST
