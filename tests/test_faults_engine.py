"""Faults that end a trial, or a whole search, in the engine's trial loop: a full disk under the run directory, an
evaluator plugin that calls ``sys.exit``, a search in which no trial completed.

In the fault suite's style: the command as a user types it, the exit code, the one line the user sees, no
traceback, and what is on disk afterwards.
"""

from __future__ import annotations

import sqlite3
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from fault_support import (
    assert_no_traceback,
    assert_one_error,
    base_config,
    cli,
    cli_in_process,
    error_lines,
    small_space,
    synthetic_config,
    write_yaml,
)

import automl_kd.errors
from automl_kd import Search, TrialOutcome, load_config


def _trials(run: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{run / 'study.db'}")
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.remove_session()
        storage.engine.dispose()


# -- a full disk -------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: a disk that can really fill up. Skips where mounting is not permitted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave_kb: int) -> Path:
    """Fill ``disk`` up to ``leave_kb`` free kilobytes with one file; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):  # whole blocks, then what is left of the last one
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    with filler.open("r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave_kb * 1024))
    return filler


@pytest.mark.slow
def test_a_full_disk_stops_the_search_with_exit_6_and_the_study_resumes_once_space_is_freed(
    tmp_path: Path, small_disk: Path
) -> None:
    """A study on a disk with about 120 KB left, 400 synthetic trials planned: the disk fills up while trials run.
    Not "5 trials failed in a row; ... no reason recorded" (trials read as interrupted), but exit 6 naming the
    file and the OS's words; the study stays intact, and the same command continues it once space is freed."""
    config = write_yaml(tmp_path / "full.yaml", synthetic_config("full", 400, sleep=0.0))
    run = small_disk / "r"
    res = cli("run", str(config), "--run-dir", str(run), "--set", "search.n_trials=3", cwd=tmp_path)
    assert res.rc == 0, res
    filler = fill(small_disk, leave_kb=120)
    res = cli("run", str(config), "--run-dir", str(run), cwd=tmp_path)
    assert_one_error(res, 6, r"study\.db cannot be written: No space left on device")
    assert "failed in a row" not in res.err, res
    with sqlite3.connect(run / "study.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    before = _trials(run, "full")
    complete = [t.number for t in before if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) > 3, res  # the disk filled up during this run, not before it
    # the trial the disk filled up in is not counted as the candidate's failure: it reads as interrupted
    assert all(TrialOutcome.of(t) == "interrupted" for t in before if t.state == optuna.trial.TrialState.FAIL)

    filler.unlink()  # space freed: the same command continues the study
    target = len(complete) + 3
    res = cli("run", str(config), "--run-dir", str(run), "--set", f"search.n_trials={target}", cwd=tmp_path)
    assert_no_traceback(res)
    assert res.rc == 0, res
    after = _trials(run, "full")
    assert [t.number for t in after if t.state == optuna.trial.TrialState.COMPLETE][
        : len(complete)
    ] == complete
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in after) >= target, res
    assert not [t for t in after if t.state == optuna.trial.TrialState.RUNNING]


# -- an evaluator that calls sys.exit ----------------------------------------------------------------------------
EXITING_PLUGIN = """
from automl_kd import Evaluator, hookimpl


class Exiting(Evaluator):
    name = "exiting"

    def evaluate(self, candidate, context):
        if context.number == 0:
            raise SystemExit(7)
        return {"val_acc": 50.0 + context.number, "params": 1}


@hookimpl
def register_evaluators(register):
    register("exiting", Exiting)
"""


def install_plugin(root: Path, dist: str, module: str, source: str) -> None:
    """A third-party plugin as an installed distribution: a module and a dist-info with its entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[automl_kd]\n{module} = {module}\n")


def test_an_evaluator_that_raises_system_exit_fails_its_trial_with_the_reason_and_the_search_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A plugin's ``sys.exit(7)`` in trial 0: not exit 7 with the trial left RUNNING (the next run would wait for
    its heartbeat), but trial 0 failed with its reason and the other trials run."""
    plugins = tmp_path / "site"
    plugins.mkdir()
    install_plugin(plugins, "automl-kd-exiting", "exiting_plugin", EXITING_PLUGIN)
    monkeypatch.syspath_prepend(str(plugins))
    cfg = {
        "name": "exits",
        "space": small_space(),
        "search": {"n_trials": 3, "proposer": {"name": "random"}},
        "evaluator": {"name": "exiting"},
    }
    config = write_yaml(tmp_path / "exits.yaml", cfg)
    run = tmp_path / "run"
    res = cli_in_process("run", str(config), "--run-dir", str(run), cwd=tmp_path, capfd=capfd)
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert not error_lines(res.err), res
    trials = _trials(run, "exits")
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] + [
        optuna.trial.TrialState.COMPLETE
    ] * 2
    assert trials[0].user_attrs["outcome"] == "failed"
    assert "SystemExit" in trials[0].user_attrs["fail_reason"] and "7" in trials[0].user_attrs["fail_reason"]


# -- a search in which no trial completed ------------------------------------------------------------------------
def test_a_search_whose_every_trial_diverges_exits_7_naming_the_most_common_reason(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The quick config with ``lr: 1.0e+30``: every trial diverges. Not exit 0 and "target reached", but exit 7
    and one line with the most common failure reason."""
    cfg = base_config("diverges")
    cfg["search"]["n_trials"] = 2
    cfg["evaluator"]["options"]["lr"] = 1.0e30
    config = write_yaml(tmp_path / "diverges.yaml", cfg)
    run = tmp_path / "run"
    res = cli_in_process("run", str(config), "--run-dir", str(run), "--json", cwd=tmp_path, capfd=capfd)
    line = assert_one_error(
        res, 7, r"no trial completed: 2 of 2 failed; the most common reason \(2 trials\): "
    )
    assert "TrainingDiverged" in line or "diverged" in line.lower() or "nan" in line.lower(), line
    assert "target reached" not in res.err + res.out, res
    summary = res.out.strip().splitlines()[-1]
    assert "no trial completed" in summary, res  # the --json summary's stop_reason says it too
    assert [t.user_attrs["outcome"] for t in _trials(run, "diverges")] == ["failed", "failed"]


def test_a_search_whose_every_candidate_is_rejected_reports_it_in_the_python_api(tmp_path: Path) -> None:
    """The Python API says it the same way: ``Search.run`` raises :class:`NoTrialCompleted` (exit code 7), whose
    message is the CLI's line; the study is still there (``search.study``) and ``stop_reason`` says why."""
    cfg = synthetic_config("rejects", 3, sleep=0.0)
    cfg["run_dir"] = str(tmp_path / "run")
    cfg["search"]["constraints"] = {"max_params": 10}
    search = Search(load_config(cfg))
    with pytest.raises(automl_kd.errors.NoTrialCompleted) as info:
        search.run()
    assert info.value.exit_code == 7
    assert str(info.value).startswith(
        "no trial completed: 3 of 3 rejected; the most common reason (3 trials): "
    )
    assert "exceed the limit 10" in str(info.value)
    assert search.stop_reason == str(info.value)
    assert [str(t.user_attrs["outcome"]) for t in search.study.get_trials()] == ["rejected"] * 3


def test_a_search_with_one_completed_trial_still_exits_0(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = synthetic_config("fine", 2, sleep=0.0)
    config = write_yaml(tmp_path / "fine.yaml", cfg)
    res = cli_in_process("run", str(config), "--run-dir", str(tmp_path / "run"), cwd=tmp_path, capfd=capfd)
    assert_no_traceback(res)
    assert res.rc == 0 and not error_lines(res.err), res


# -- the one table -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raised", "outcome", "state", "then"),
    [
        (None, "complete", "COMPLETE", "go on"),
        (optuna.TrialPruned("epoch 1"), "pruned", "PRUNED", "go on"),
        (automl_kd.errors.CandidateRejected("params 9 exceed the limit 1 by 8"), "rejected", "FAIL", "go on"),
        (RuntimeError("CUDA error"), "failed", "FAIL", "go on"),
        (SystemExit(7), "failed", "FAIL", "go on"),
        (automl_kd.errors.TrialInterrupted("stopped by SIGTERM"), "interrupted", "FAIL", "go on"),
        (automl_kd.errors.BudgetExhausted("max_requests=4"), "budget", "FAIL", "stop"),
        (automl_kd.errors.ProposerFailed("the proposer 'llm' failed"), "proposer-failed", "FAIL", "error"),
        (automl_kd.errors.DataError("no such file"), "failed", "FAIL", "error"),
        (KeyboardInterrupt(), "interrupted", "FAIL", "error"),
        (sqlite3.OperationalError("database or disk is full"), None, "FAIL", "error"),
    ],
)
def test_every_way_a_trial_ends_is_one_row_of_the_table(
    raised: BaseException | None, outcome: str | None, state: str, then: str
) -> None:
    from automl_kd.engine.run_trial import ending

    end = ending(raised, "sqlite:////runs/x/study.db")
    assert end.outcome == outcome and end.state == optuna.trial.TrialState[state]
    assert then == ("error" if end.error is not None else "stop" if end.stop else "go on"), end
    assert end.requeue == (outcome == "interrupted")
    if outcome in ("failed", "rejected", "budget", "proposer-failed"):
        assert end.reason  # the fail_reason a user reads
    if isinstance(raised, sqlite3.Error):  # a full disk: exit 6 naming the file, not a failed candidate
        assert isinstance(end.error, automl_kd.errors.StorageError)
        assert "/runs/x/study.db cannot be written: No space left on device" in str(end.error)
