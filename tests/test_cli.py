"""The command line end to end, in real subprocesses: quick.yaml, resume by n_trials, show, plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automl_kd.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def last_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_quick_config_runs_four_trials_and_a_rerun_adds_exactly_two(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "quick")
    first = cli("run", "examples/configs/quick.yaml", "--json", "--run-dir", run_dir)
    assert first.returncode == 0, first.stderr
    s1 = last_json(first.stdout)
    assert s1["study"] == "quick" and s1["counts"] == {"complete": 4}
    assert s1["storage"].startswith("sqlite:///") and s1["storage"].endswith("quick/study.db")
    for t in s1["trials"]:
        assert t["state"] == "complete"
        assert {"val_acc", "test_acc", "params", "macs", "latency_ms_b1", "seed"} <= set(t["metrics"])
    assert "trial 3: complete" in first.stderr  # plain progress lines when not on a terminal

    second = cli(
        "run", "examples/configs/quick.yaml", "--json", "--run-dir", run_dir, "--set", "search.n_trials=6"
    )
    assert second.returncode == 0, second.stderr
    s2 = last_json(second.stdout)
    assert s2["counts"] == {"complete": 6}
    before = {t["number"]: t["metrics"]["val_acc"] for t in s1["trials"]}
    after = {t["number"]: t["metrics"]["val_acc"] for t in s2["trials"]}
    assert {n: after[n] for n in before} == before and sorted(after) == [0, 1, 2, 3, 4, 5]

    show = cli("show", "--run-dir", run_dir, "--json")
    assert show.returncode == 0 and last_json(show.stdout)["counts"] == {"complete": 6}
    table = cli("show", "--run-dir", run_dir)
    assert "leaderboard: quick" in table.stdout and "val %" in table.stdout


def test_plugins_json_lists_the_builtins() -> None:
    out = cli("plugins", "--json")
    assert out.returncode == 0, out.stderr
    data = last_json(out.stdout)
    assert {"mbv2", "paper-truncated"} <= {s["name"] for s in data["spaces"]}
    assert {"random", "optuna"} <= {p["name"] for p in data["proposers"]}
    assert "train" in {e["name"] for e in data["evaluators"]}
    assert data["errors"] == []


def test_show_without_a_study_is_a_clear_error(tmp_path: Path) -> None:
    out = cli("show", "--run-dir", str(tmp_path))
    assert out.returncode == 2 and "no study database" in out.stderr and "Traceback" not in out.stderr


def test_llm_parse_prints_the_candidate_or_the_reason(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text(
        "My design, stage by stage:\n```json\n[[1, 2, 0, 0, 0, 0], [4, 4, 1, 0, 0, 0], "
        "[2, 5, 5, 0, 0, 0], [6, 6, 3, 3, 0, 0], [6, 6, 6, 0, 0, 0]]\n```\nThis balances depth."
    )
    out = cli("llm", "parse", "--space", "genius-imagenet", str(good), "--json")
    assert out.returncode == 0, out.stderr
    data = last_json(out.stdout)
    assert (
        len(data["candidates"]) == 1 and data["candidates"][0]["s1_b1"] == "ir_k3_e4" and data["errors"] == []
    )
    bad = tmp_path / "bad.txt"
    bad.write_text("I would use a transformer here.")
    out = cli("llm", "parse", "--space", "genius-imagenet", str(bad))
    assert out.returncode == 1 and "not usable:" in out.stderr


def test_init_writes_the_packaged_example_config_that_check_accepts(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import yaml
    from fault_support import assert_one_error, cli_in_process

    res = cli_in_process("init", cwd=tmp_path, capfd=capfd)
    assert res.rc == 0 and "wrote quick.yaml" in res.out, res
    written = yaml.safe_load((tmp_path / "quick.yaml").read_text())
    assert written == yaml.safe_load((REPO / "examples" / "configs" / "quick.yaml").read_text())
    res = cli_in_process("check", "quick.yaml", cwd=tmp_path, capfd=capfd)
    assert res.rc == 0 and "quick.yaml: ok" in res.out, res
    # an existing file is kept unless --force; a folder gets <example>.yaml
    (tmp_path / "quick.yaml").write_text("# mine\n")
    assert_one_error(cli_in_process("init", cwd=tmp_path, capfd=capfd), 1, r"quick.yaml exists; .*--force")
    assert (tmp_path / "quick.yaml").read_text() == "# mine\n"
    assert cli_in_process("init", "--force", cwd=tmp_path, capfd=capfd).rc == 0
    assert yaml.safe_load((tmp_path / "quick.yaml").read_text()) == written
    (tmp_path / "configs").mkdir()
    res = cli_in_process("init", "configs", "--example", "demo", cwd=tmp_path, capfd=capfd)
    assert (
        res.rc == 0
        and (tmp_path / "configs" / "demo.yaml").read_text()
        == (REPO / "src" / "automl_kd" / "configs" / "demo.yaml").read_text()
    )
