"""The robustness experiment's runner on a tiny grid: real runs, resumable CSV, tables, plots."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
robustness = pytest.importorskip("robustness")

GRID = """
[grid]
rules = ["screened", "flwr-median"]
attacks = ["sign-flip"]
fractions = [0.4]
partitions = [{ partitioner = "iid" }]
seeds = [0]

[run]
dataset = "digits"
model = "mlp"
clients = 5
rounds = 2
"""


def test_tiny_grid_runs_resumes_and_reports(tmp_path: Path) -> None:
    config = tmp_path / "grid.toml"
    config.write_text(GRID)
    out = tmp_path / "results"
    robustness.main(["--config", str(config), "--out", str(out), "--jobs", "1"])
    with (out / "robustness_runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["rule"], r["attack"], r["fraction"]) for r in rows) == [
        ("flwr-fedavg", "absent", "0.4"),  # the reference: honest clients alone
        ("flwr-median", "none", "0"),
        ("flwr-median", "sign-flip", "0.4"),
        ("screened", "none", "0"),
        ("screened", "sign-flip", "0.4"),
    ]
    attacked = {r["rule"]: r for r in rows if r["attack"] == "sign-flip"}
    assert attacked["screened"]["attackers"] == "2"  # 40 % of 5 clients
    assert attacked["screened"]["reward_share"] != ""  # ledger run: rewards are read
    assert attacked["flwr-median"]["reward_share"] == ""  # Flower's strategy: no ledger
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert len(attacked["screened"]["curve"].split()) == 2

    robustness.main(["--config", str(config), "--out", str(out), "--jobs", "1"])  # resumes
    with (out / "robustness_runs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 5

    text = (out / "robustness.md").read_text()
    assert "## Verdict per rule" in text and "| screened |" in text and "**sign-flip**" in text
    for name in ("robustness_iid.png", "robustness_rewards.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
