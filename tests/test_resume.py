"""Crash safety: SIGKILL a real search process in the middle of a trial, rerun, lose nothing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO, small_mbv2_options
from fault_support import TRAINING, Watched, wait_until_stale

from automl_kd.results.leaderboard import trial_state


def _states(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as con:
            return [r[0] for r in con.execute("select state from trials order by number")]
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_keeps_every_completed_trial(tmp_path: Path) -> None:
    cfg = {
        "name": "crash",
        "run_dir": str(tmp_path / "run"),
        "data": {"train_size": 2000, "test_size": 500, "crop_padding": 0, "flip": False},
        "space": {"name": "mbv2", "options": small_mbv2_options()},
        "search": {"n_trials": 4, "proposer": {"name": "random"}},
        "evaluator": {"name": "train", "options": {"epochs": 3, "batch_size": 64, "latency": False}},
        "storage": {"heartbeat_interval": 1, "grace_period": 3},
    }
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump(cfg))
    db = tmp_path / "run" / "study.db"
    cmd = [sys.executable, "-m", "automl_kd.cli", "run", str(path), "--json"]

    w = Watched("-v", "run", str(path), "--json", cwd=REPO)
    try:
        w.wait_for(TRAINING, timeout=300, nth=3)  # the third trial is training
        assert _states(db).count("COMPLETE") == 2, _states(db)
    finally:
        w.proc.kill()  # SIGKILL
        w.proc.wait()
    storage = f"sqlite:///{db}"
    before = {
        t.number: t.user_attrs["val_acc"]
        for t in optuna.load_study(study_name="crash", storage=storage).get_trials()
        if t.state == optuna.trial.TrialState.COMPLETE
    }
    assert len(before) == 2
    killed = max(t.number for t in optuna.load_study(study_name="crash", storage=storage).get_trials())

    wait_until_stale(db, grace_period=3)  # the heartbeat lets the next run mark the trial failed
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr

    trials = optuna.load_study(study_name="crash", storage=storage).get_trials()
    states = {t.number: trial_state(t) for t in trials}
    assert states[killed] == "interrupted"  # failed by the heartbeat, not as a training error
    assert "fail_reason" not in trials[killed].user_attrs
    assert {n: trials[n].user_attrs["val_acc"] for n in before} == before  # nothing completed was lost
    assert sum(1 for s in states.values() if s == "complete") == 4
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].params == trials[killed].params  # same parameters, retried once
    assert retried[0].user_attrs["seed"] == trials[killed].user_attrs["seed"]  # and the same seed


@pytest.mark.slow
def test_sigterm_stops_gracefully_and_the_interrupted_trial_is_retried(tmp_path: Path) -> None:
    cfg = {
        "name": "term",
        "run_dir": str(tmp_path / "run"),
        "data": {"train_size": 1200, "test_size": 300, "crop_padding": 0, "flip": False},
        "space": {"name": "mbv2", "options": small_mbv2_options()},
        "search": {"n_trials": 3, "proposer": {"name": "random"}},
        "evaluator": {"name": "train", "options": {"epochs": 6, "batch_size": 64, "latency": False}},
    }
    path = tmp_path / "term.yaml"
    path.write_text(yaml.safe_dump(cfg))
    db = tmp_path / "run" / "study.db"
    cmd = [sys.executable, "-m", "automl_kd.cli", "run", str(path), "--json"]
    w = Watched("-v", "run", str(path), "--json", cwd=REPO)
    try:
        w.wait_for(TRAINING, timeout=300, nth=2)  # the second trial is training (about 6 epochs left)
        t_sig = w.signal(signal.SIGTERM)
        res = w.finish(timeout=120)
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
    assert t_sig and res.rc == 0, res
    assert "SIGTERM: stopping the running trial" in res.err

    storage = f"sqlite:///{db}"
    trials = optuna.load_study(study_name="term", storage=storage).get_trials()
    interrupted = [t for t in trials if trial_state(t) == "interrupted"]
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(interrupted) == 1 and len(waiting) == 1
    assert waiting[0].params == interrupted[0].params

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    trials = optuna.load_study(study_name="term", storage=storage).get_trials()
    assert sum(1 for t in trials if trial_state(t) == "complete") == 3
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted[0].number]
    assert trial_state(retried[0]) == "complete"
    assert retried[0].user_attrs["seed"] == interrupted[0].user_attrs["seed"]
