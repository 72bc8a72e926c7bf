"""Fault injection: each fault fails (at most) its own trial with a clear reason; the study stays intact and the
search goes on. (NaN loss: test_training.py; storage outages and SIGKILL: test_workers.py and test_resume.py;
plugins raising on import or in hooks: test_plugins.py; corrupt and failed cache writes: test_cache.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from conftest import small_mbv2_options

from automl_kd import Evaluator, Search, TrialContext, get_plugin_manager, hookimpl, load_config
from automl_kd.results.leaderboard import trial_state
from automl_kd.space import Candidate


class OOMOnce(Evaluator):
    """Runs out of memory on the first trial it sees, like a too-large candidate on a GPU."""

    name = "oom-once"
    seen = 0

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        OOMOnce.seen += 1
        if OOMOnce.seen == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"val_acc": 50.0 + context.number, "params": 1}


class Faults:
    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        register("oom-once", OOMOnce)

    @hookimpl
    def on_trial_end(self, study_name: str, trial_number: int, state: str, values: Any, attrs: Any) -> None:
        raise RuntimeError("observer bug")


def test_out_of_memory_and_a_raising_observer_fail_nothing_else(tmp_path: Path) -> None:
    OOMOnce.seen = 0
    cfg = load_config(
        {
            "name": "faults",
            "run_dir": str(tmp_path / "run"),
            "space": {"name": "mbv2", "options": small_mbv2_options()},
            "search": {"n_trials": 4, "proposer": {"name": "random"}},
            "evaluator": {"name": "oom-once"},
        }
    )
    study = Search(cfg, pm=get_plugin_manager(extra_plugins=[("faults", Faults())])).run()
    states = [trial_state(t) for t in study.get_trials()]
    assert states == ["failed", "complete", "complete", "complete"]
    assert study.get_trials()[0].user_attrs["fail_reason"].startswith("out of memory: CUDA out of memory")
    assert [t.user_attrs["val_acc"] for t in study.get_trials()[1:]] == [51.0, 52.0, 53.0]
