"""``Search.repeat``: one fixed candidate run N times, run k with the seed of trial k, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fault_support import synthetic_config
from optuna.trial import FrozenTrial, TrialState

from automl_kd import Search, load_config
from automl_kd.engine.trial import trial_seed
from automl_kd.errors import AutomlKdError, ConfigError
from automl_kd.storage.heartbeat import ATTR_BEAT


def raw_config(tmp_path: Path, name: str = "rep", sleep: float = 0.0) -> dict[str, Any]:
    raw = synthetic_config(name, 1, sleep=sleep)
    raw["run_dir"] = str(tmp_path / name)
    raw["seed"] = 7
    return raw


def search(tmp_path: Path, name: str = "rep") -> Search:
    return Search(load_config(raw_config(tmp_path, name)))


def fixed(s: Search) -> dict[str, Any]:
    """One candidate of the space: the first choice (or the low end) of every parameter."""
    return {
        n: getattr(d, "choices", [getattr(d, "low", None)])[0] for n, d in s.space.distributions().items()
    }


def test_n_runs_have_the_seeds_of_their_places_and_call_on_run_once_each(tmp_path: Path) -> None:
    s = search(tmp_path)
    params = fixed(s)
    seen: list[FrozenTrial] = []
    trials = s.repeat(params, 3, on_run=seen.append)
    assert [t.user_attrs["seed"] for t in trials] == [trial_seed(7, k) for k in range(3)]
    assert [t.number for t in seen] == [t.number for t in trials]
    assert all(t.params == params for t in trials)
    # run again: nothing to do, nothing run, the same trials back
    again = s.repeat(params, 3, on_run=seen.append)
    assert [t.number for t in again] == [t.number for t in trials] and len(seen) == 3
    assert len(s.study.get_trials()) == 3


def test_a_run_left_running_by_a_killed_process_is_retried_with_its_own_seed(tmp_path: Path) -> None:
    s = search(tmp_path)
    params = fixed(s)
    assert len(s.repeat(params, 1)) == 1
    # run 1 as a killed process leaves it: claimed, RUNNING, its heartbeat long silent
    s.enqueue(params, seed_of=1)
    dead = s.study.ask()
    assert dead.number == 1
    s.study._storage.set_trial_system_attr(dead._trial_id, ATTR_BEAT, time.time() - 3600)
    seen: list[FrozenTrial] = []
    trials = s.repeat(params, 3, on_run=seen.append)
    assert [t.user_attrs["seed"] for t in trials] == [trial_seed(7, k) for k in range(3)]
    assert [t.number for t in seen] == [t.number for t in trials[1:]]  # once per run this call completed
    states = {t.number: t.state for t in s.study.get_trials()}
    assert (
        states[1] == TrialState.FAIL
    )  # the dead run, failed by the heartbeat rule, counted once via its retry
    assert sum(st == TrialState.COMPLETE for st in states.values()) == 3


def test_runs_recorded_elsewhere_are_not_run_again(tmp_path: Path) -> None:
    s = search(tmp_path)
    trials = s.repeat(fixed(s), 4, first=2)
    assert [t.user_attrs["seed"] for t in trials] == [trial_seed(7, 2), trial_seed(7, 3)]
    assert len(s.study.get_trials()) == 2


def test_a_parameter_the_space_lacks_is_a_config_error(tmp_path: Path) -> None:
    s = search(tmp_path)
    with pytest.raises(ConfigError, match="not among"):
        s.repeat({**fixed(s), "nope": 1}, 2)


def test_a_run_that_fails_on_its_own_merits_stops_the_repetition(tmp_path: Path) -> None:
    s = search(tmp_path)
    params = fixed(s)
    assert len(s.repeat(params, 1)) == 1
    raw = synthetic_config("rep", 1, sleep=0.0)
    raw.update(run_dir=str(tmp_path / "rep"), seed=7)
    raw["search"]["constraints"] = {"max_params": 1}  # the same study, now every candidate is rejected
    strict = Search(load_config(raw))
    seen: list[FrozenTrial] = []
    with pytest.raises(AutomlKdError, match=r"run 1 of 'rep' \(trial 1\) ended rejected"):
        strict.repeat(params, 3, on_run=seen.append)
    assert not seen and len(strict.study.get_trials()) == 2  # not queued again: it would fail again


def test_a_run_whose_process_was_killed_mid_trial_is_run_again_with_its_seed_and_counted_once(
    tmp_path: Path,
) -> None:
    s = search(tmp_path)
    params = fixed(s)
    slow = tmp_path / "slow.json"  # the same study, trials that last long enough to be killed in
    slow.write_text(json.dumps({"raw": raw_config(tmp_path, sleep=60.0), "params": params}))
    code = (
        "import json, sys; from automl_kd import Search, load_config; a = json.load(open(sys.argv[1])); "
        "Search(load_config(a['raw'])).repeat(a['params'], 3)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(slow)], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not any(  # run 0 is training in the other process: claimed, its heartbeat written
            ATTR_BEAT in t.system_attrs for t in s.study.get_trials(states=(TrialState.RUNNING,))
        ):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    seen: list[FrozenTrial] = []
    trials = s.repeat(params, 3, on_run=seen.append)
    assert [t.user_attrs["seed"] for t in trials] == [trial_seed(7, k) for k in range(3)]
    assert sorted(t.number for t in seen) == sorted(t.number for t in trials)  # once per run
    states = [t.state for t in s.study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.RUNNING) == 0
    assert states.count(TrialState.FAIL) == 1  # the killed run, failed by the heartbeat rule
