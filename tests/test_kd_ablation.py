"""benchmarks/kd_ablation.py end to end at a tiny scale: real Fashion-MNIST, real teacher and student training
through the search engine, every part, the JSON files it regenerates and the tables rendered from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")
def test_kd_ablation_script_writes_every_part_and_its_tables(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "kd_ablation.py"),
        *("--scale", "fmnist", "--train-size", "300", "--epochs", "1", "--teacher-epochs", "1"),
        *("--seeds", "2", "--recipes", "paper", "--methods", "student,kd+ig+at"),
        *("--parts", "ablation,monte-carlo,sweep", "--sweep-seeds", "2", "--sweep-depths", "15,17"),
        *("--threads", "1", "--out", str(tmp_path)),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ablation = json.loads((tmp_path / "kd_ablation_fmnist.json").read_text())
    runs = ablation["ablation"]["paper"]["runs"]
    assert [len(runs[m]) for m in ("student", "kd+ig+at")] == [2, 2]
    assert len({r["seed"] for r in runs["student"]}) == 2  # different seeds, not repeats
    assert set(runs["kd+ig+at"][0]["loss_terms"]) >= {"ce", "kd", "at"}
    row = ablation["ablation"]["paper"]["summary"]["kd+ig+at"]
    assert row["n"] == 2 and row["test_ci95"][0] <= row["test_mean"] <= row["test_ci95"][1]
    assert {"t", "p", "p_holm"} <= set(row["welch_vs_student"])
    assert ablation["teacher"]["params"] == 2236106 and 0 <= ablation["teacher"]["test_acc"] <= 100
    assert ablation["latency"]["student"]["params"] < ablation["latency"]["teacher"]["params"]
    mc = json.loads((tmp_path / "kd_ablation_fmnist_montecarlo.json").read_text())
    assert mc["train_fraction"] == 0.8 and len(mc["monte_carlo"]["runs"]["student"]) == 2
    sweep = json.loads((tmp_path / "kd_ablation_fmnist_sweep.json").read_text())
    assert sweep["sweep"]["17"]["student"]["params"] < sweep["sweep"]["15"]["student"]["params"]
    assert sweep["sweep"]["17"]["student"]["cf"] > 1000  # the IG-KD paper: compression factor 1122 for k = 17
    assert sweep["sweep"]["15"]["kd"]["n"] == 2
    # a recipe added later keeps the runs already there
    merge = [*cmd[: cmd.index("--recipes")], "--recipes", "ours", *cmd[cmd.index("--methods") :]]
    merge[merge.index("ablation,monte-carlo,sweep")] = "ablation"
    out = subprocess.run([*merge, "--merge"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    merged = json.loads((tmp_path / "kd_ablation_fmnist.json").read_text())
    assert set(merged["ablation"]) == {"paper", "ours"}
    assert merged["ablation"]["paper"]["runs"] == ablation["ablation"]["paper"]["runs"]
    tables = subprocess.run(
        [*cmd[:2], "--scale", "fmnist", "--markdown", "--out", str(tmp_path)], capture_output=True, text=True
    ).stdout
    assert "| kd+ig+at |" in tables and "Monte Carlo" in tables and "Compression sweep" in tables
    assert "paper recipe" in tables and "ours recipe" in tables
