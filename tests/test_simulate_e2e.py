"""One real run on Flower's simulation engine (Ray), through the command a user types."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_fedchain_simulate_on_ray_produces_a_run_directory_that_verifies(tmp_path):
    env = {**os.environ, "COLUMNS": "200", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    command = [sys.executable, "-m", "fedchain", "simulate", "--clients", "3", "--rounds", "2"]
    result = subprocess.run(
        [*command, "--out", str(tmp_path), "--run-id", "ray"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round   2/2  acc" in result.stdout and "accepted 3" in result.stdout
    run_dir = tmp_path / "ray"
    assert f"run directory: {run_dir}" in result.stdout
    verify = subprocess.run(
        [sys.executable, "-m", "fedchain", "verify", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "model files match" in verify.stdout
    assert (run_dir / "log.txt").stat().st_size > 0 and (run_dir / "config.toml").exists()
