"""The CE-alone baseline (``search.ce_baseline``) and ``automl-kd demo`` end to end, on real Fashion-MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import REPO
from distill_support import STUDENT_SPACE, TEACHER_SPACE
from fault_support import assert_one_error, cli

from automl_kd import Search, load_config
from automl_kd.cli import demo_config_path
from automl_kd.data import load_data
from automl_kd.distill.teacher import teacher_data
from automl_kd.errors import ConfigError
from automl_kd.results.baseline import run_ce_baseline
from automl_kd.results.html import write_report
from automl_kd.results.leaderboard import ATTR_CE_BASELINE, ATTR_TEACHER, leaderboard, summary

DEMO = [sys.executable, "-m", "automl_kd.cli", "demo"]
TINY_TRAIN = {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 4, "latency": False}


def tiny_config(run_dir: Path, augmenters: bool, n_trials: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "ce-baseline-test",
        "run_dir": str(run_dir),
        "data": {"train_size": 600, "test_size": 200, "val_fraction": 0.2, "crop_padding": 0, "flip": False},
        "space": {"name": "mbv2", "options": {**STUDENT_SPACE, "widths": [0.5, 1.0]}},
        "search": {"n_trials": n_trials, "proposer": {"name": "random"}, "ce_baseline": "all"},
        "evaluator": {"name": "train", "options": TINY_TRAIN},
    }
    if augmenters:
        cfg["teacher"] = {
            "space": "mbv2",
            "space_options": TEACHER_SPACE,
            "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 4, "crop_padding": 0},
        }
        cfg["augmenters"] = [{"name": "kd", "options": {"alpha": 0.5, "temperature": 4.0}}]
    return cfg


def test_ce_baseline_is_stored_and_shown_beside_each_distilled_student(tmp_path: Path) -> None:
    cfg = load_config(tiny_config(tmp_path / "kd", augmenters=True, n_trials=2))
    study = Search(cfg).run()
    stored = run_ce_baseline(study, "all")
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and sorted(stored) == sorted(t.number for t in done)
    # stored in the study itself (finished trials cannot be edited), readable by any later process
    again = optuna.load_study(
        study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'kd' / 'study.db'}"
    )
    raw = again.user_attrs[ATTR_CE_BASELINE]
    for t in done:
        rec = raw[str(t.number)]
        assert 0 <= rec["val_acc"] <= 100 and 0 <= rec["test_acc"] <= 100
        assert rec["seed"] == t.user_attrs["seed"] and rec["epochs"] == 1
        assert rec["kd_gain"] == pytest.approx(t.user_attrs["val_acc"] - rec["val_acc"], abs=1e-3)
    teacher = again.user_attrs[ATTR_TEACHER]
    assert teacher["params"] > 0 and 0 <= teacher["val_acc"] <= 100

    rows = leaderboard(again)
    assert all(r["ce_val_acc"] == raw[str(r["trial"])]["val_acc"] for r in rows)
    assert summary(again, "x")["best"]["kd_gain"] == rows[0]["kd_gain"]
    page = write_report(again, tmp_path / "kd").read_text()
    assert "CE alone val %" in page and "KD gain" in page and "The teacher scores" in page

    # a second call retrains nothing: every chosen trial already has its baseline
    t0 = time.perf_counter()
    assert run_ce_baseline(again, "all") == stored
    assert time.perf_counter() - t0 < 2


def test_ce_baseline_of_a_student_trained_without_augmenters_reproduces_it(tmp_path: Path) -> None:
    # same seed, data and settings: without augmenters the retraining is the trial itself, to the last digit
    cfg = load_config(tiny_config(tmp_path / "ce", augmenters=False, n_trials=1))
    study = Search(cfg).run()
    (rec,) = run_ce_baseline(study, "best").values()
    assert rec["val_acc"] == pytest.approx(study.best_trial.user_attrs["val_acc"], abs=1e-3)
    assert rec["kd_gain"] == pytest.approx(0.0, abs=1e-3)


def test_a_bad_ce_baseline_value_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ce_baseline"):
        load_config(tiny_config(tmp_path, augmenters=False, n_trials=1), ["search.ce_baseline=maybe"])
    res = cli(
        "demo", "--run-dir", str(tmp_path / "d"), "--set", "search.ce_baseline=maybe", cwd=REPO, timeout=120
    )
    assert_one_error(
        res, 2, r"^error: config key 'search\.ce_baseline': .*'none', 'best' or 'all' \(got 'maybe'\)"
    )
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_the_demo_teacher_learns_from_more_images_than_its_students_but_none_they_are_scored_on() -> None:
    # a teacher from the students' own space and data barely beats its best student, and then KD has nothing to
    # pass on: the demo's teacher trains on six times their images, never on one of their validation split
    cfg = load_config(demo_config_path())
    assert cfg.teacher is not None
    data = load_data(cfg.data)
    seen = teacher_data(cfg.teacher, data)
    assert len(seen.train) >= 6 * len(data.train)
    assert not set(seen.train.index.tolist()) & set(data.val.index.tolist())
    assert seen.val is data.val


@pytest.mark.slow
def test_demo_runs_end_to_end_and_prints_the_report_and_onnx_paths(tmp_path: Path) -> None:
    tiny = [
        "data.train_size=600",
        "data.test_size=100",
        "search.n_trials=1",
        "evaluator.options.epochs=1",
        "evaluator.options.max_steps_per_epoch=3",
        "evaluator.options.latency=false",
        "teacher.train.epochs=1",
        "teacher.train.max_steps_per_epoch=3",
    ]
    args = [*DEMO, "--run-dir", str(tmp_path / "demo")]  # the final training: twice the search's 1 epoch
    args += [a for s in tiny for a in ("--set", s)]
    t0 = time.perf_counter()
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CE-alone baseline of trial" in out.stderr
    lines = out.stdout.splitlines()
    report = next(line.removeprefix("report: ") for line in lines if line.startswith("report: "))
    onnx = next(line.removeprefix("onnx: ") for line in lines if line.startswith("onnx: "))
    assert Path(report).is_file() and Path(onnx).is_file() and onnx.endswith(".onnx")
    assert any(line.startswith("teacher: val ") for line in lines)
    assert any(line.startswith("finalized (2 epochs): val ") for line in lines), out.stdout
    assert any("with cross-entropy alone: KD gain" in line and "noise band" in line for line in lines), (
        out.stdout
    )
    page = Path(report).read_text()
    assert "CE alone val %" in page
    card = json.loads((Path(onnx).parent / "model_card.json").read_text())
    assert card["checks"]["onnx"]["max_abs_diff"] <= 1e-4
    # about 55 CPU-seconds (about a minute on an idle 2-core machine); the timeouts bound it on a loaded one
    print(f"the tiny demo took {seconds:.0f} s")

    # a rerun finds the study complete and reuses the baseline, the finalized student and its ONNX file
    onnx_mtime = Path(onnx).stat().st_mtime
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"onnx: {onnx}" in again.stdout.splitlines() and Path(onnx).stat().st_mtime == onnx_mtime
    assert "CE-alone baseline of trial" not in again.stderr
