"""The clean-learning experiment: one real tiny run per rule, resumable JSON, the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
clean_learning = pytest.importorskip("experiments.clean_learning")

GRID = """
[grid]
rules = ["screened"]
attacks = []
fractions = []
partitions = [{ partitioner = "iid" }]
seeds = [0]

[run]
dataset = "digits"
model = "mlp"
clients = 3
rounds = 2
contribution = "gtg-shapley"
"""


@pytest.mark.slow
def test_tiny_comparison_runs_resumes_and_reports(tmp_path: Path) -> None:
    config = tmp_path / "grid.toml"
    config.write_text(GRID)
    args = ["--config", str(config), "--seeds", "0", "--rounds", "2", "--out", str(tmp_path)]
    clean_learning.main(args)
    runs = json.loads((tmp_path / "clean_learning.json").read_text())["runs"]
    assert sorted((r["rule"], r["partition"]) for r in runs) == [
        ("fedavg", "dirichlet-0.5"),
        ("fedavg", "iid"),
        ("screened", "dirichlet-0.5"),
        ("screened", "iid"),
    ]
    assert all(len(r["curve"]) == 2 for r in runs)
    assert all(r["frozen"] == [] for r in runs if r["rule"] == "fedavg")  # FedAvg always moves
    clean_learning.main(args)  # resumes: nothing runs again
    assert json.loads((tmp_path / "clean_learning.json").read_text())["runs"] == runs
    table = (tmp_path / "clean_learning.md").read_text()
    assert "| iid | 2 |" in table and "| dirichlet-0.5 | 2 |" in table


def test_table_compares_final_and_every_round() -> None:
    rows = [
        {"rule": rule, "partition": "iid", "seed": seed, "rounds": 3, "curve": curve, "frozen": []}
        for rule, seed, curve in (
            ("fedavg", 0, [0.5, 0.6, 0.7]),
            ("screened", 0, [0.5, 0.65, 0.7]),
            ("fedavg", 1, [0.5, 0.6, 0.8]),
            ("screened", 1, [0.5, 0.5, 0.79]),
        )
    ]
    table = clean_learning.report(rows, {"dataset": "digits"}, "python x")
    (line,) = [row for row in table.splitlines() if row.startswith("| iid | 3 |")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == "-0.50" and cells[5] == "+0.00, -1.00"  # final, then per seed
    assert cells[6] == "-1.00" and cells[7] == "1 / 2 / 3"  # (5 - 10 - 1) / 6 points
    assert cells[8] == "2, 3" and cells[9] == "0 of 6"
