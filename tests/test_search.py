"""The search engine on SQLite storage with an instant evaluator: resume, constraints, objectives, failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import FormulaPlugin, small_mbv2_options

from automl_kd import Search, hookimpl, load_config
from automl_kd.engine.constraints import Constraints
from automl_kd.engine.trial import trial_seed
from automl_kd.errors import ConfigError, TrainingDiverged
from automl_kd.proposer import history_from_trials
from automl_kd.results.leaderboard import leaderboard, summary, trial_state
from automl_kd.space import Cost


def make_config(tmp_path: Path, **search: Any) -> Any:
    raw = {
        "name": "t",
        "run_dir": str(tmp_path / "run"),
        "space": {"name": "mbv2", "options": small_mbv2_options()},
        "evaluator": {"name": "formula", "options": search.pop("evaluator_options", {})},
        "search": {"n_trials": 5, **search},
    }
    return load_config(raw)


@pytest.mark.parametrize(
    "proposer",
    [
        {"name": "random"},
        {"name": "optuna", "options": {"sampler": "tpe"}},
        {"name": "optuna", "options": {"sampler": "nsga2"}},
        {"name": "evolution", "options": {"population": 3, "sample_size": 2}},
    ],
)
def test_run_records_every_trial(tmp_path: Path, pm: Any, proposer: dict[str, Any]) -> None:
    cfg = make_config(tmp_path, proposer=proposer, n_trials=6)
    study = Search(cfg, pm=pm).run()
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        for key in (
            "val_acc",
            "test_acc",
            "n_params",
            "macs",
            "seed",
            "proposer",
            "wall_clock_s",
            "compression_factor",
        ):
            assert key in t.user_attrs, key
        assert t.user_attrs["seed"] == trial_seed(0, t.number)
        assert t.user_attrs["compression_factor"] >= 1.0  # the reference is the largest network of the space
    assert (tmp_path / "run" / "study.db").is_file()


def test_rerun_continues_the_study_up_to_n_trials(tmp_path: Path, pm: Any) -> None:
    Search(make_config(tmp_path, n_trials=3), pm=pm).run()
    study = Search(make_config(tmp_path, n_trials=5), pm=pm).run()
    assert len(study.get_trials()) == 5
    study = Search(make_config(tmp_path, n_trials=5), pm=pm).run()  # already there: nothing to do
    assert len(study.get_trials()) == 5


def test_constraints_reject_before_training(tmp_path: Path, pm: Any, formula_plugin: FormulaPlugin) -> None:
    cfg = make_config(tmp_path, proposer={"name": "random"}, n_trials=8, constraints={"max_params": 4_500})
    study = Search(cfg, pm=pm).run()
    rejected = [t for t in study.get_trials() if trial_state(t) == "rejected"]
    complete = [t for t in study.get_trials() if trial_state(t) == "complete"]
    assert rejected and complete
    assert all(t.user_attrs["n_params"] > 4_500 for t in rejected)
    assert all("exceed the limit 4,500 by" in t.user_attrs["fail_reason"] for t in rejected)
    assert all(t.user_attrs["n_params"] <= 4_500 for t in complete)
    assert sum(ev.calls for ev in formula_plugin.built) == len(
        complete
    )  # the evaluator never saw the rejected


def test_optuna_logs_our_errors_in_one_line_and_keeps_the_traceback_of_others(
    tmp_path: Path, pm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    optuna.logging.enable_propagation()  # Optuna's records reach caplog only when propagated
    try:
        cfg = make_config(
            tmp_path, proposer={"name": "random"}, n_trials=8, constraints={"max_params": 4_500}
        )
        cfg.evaluator.options["fail_on"] = "ir_k5_e3"
        with caplog.at_level("WARNING", logger="optuna"):
            study = Search(cfg, pm=pm).run()
    finally:
        optuna.logging.disable_propagation()
    failed = [
        r for r in caplog.records if r.name.startswith("optuna") and "failed with parameters" in r.message
    ]
    states = {trial_state(t) for t in study.get_trials()}
    assert {"rejected", "failed"} <= states, states
    rejected = [r for r in failed if "CandidateRejected" in r.message]
    others = [r for r in failed if "RuntimeError" in r.message]
    assert rejected and all(r.exc_info is None for r in rejected)  # our error: one line
    assert others and all(r.exc_info is not None for r in others)  # anything else: Optuna's traceback stays


def test_constraint_messages_give_the_margin() -> None:
    c = Constraints(macs=(270e6, 330e6))
    assert c.check(Cost(1, 347_000_000)) == "MACs 347.0M exceed the upper bound 330.0M by 17.0M"
    assert c.check(Cost(1, 250_000_000)) == "MACs 250.0M are below the lower bound 270.0M by 20.0M"
    assert c.check(Cost(1, 300_000_000)) is None


def test_multi_objective_gives_a_pareto_front(tmp_path: Path, pm: Any) -> None:
    cfg = make_config(
        tmp_path,
        proposer={"name": "optuna", "options": {"sampler": "nsga2"}},
        n_trials=8,
        objectives=["val_acc", "params"],
    )
    study = Search(cfg, pm=pm).run()
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = summary(study, "x")["pareto_front"]
    assert front
    for t in study.get_trials():
        assert t.values == [t.user_attrs["val_acc"], t.user_attrs["n_params"]]


def test_median_pruner_stops_weak_trials(tmp_path: Path, pm: Any) -> None:
    cfg = make_config(
        tmp_path, proposer={"name": "random"}, n_trials=14, pruner="median", evaluator_options={"epochs": 4}
    )
    study = Search(cfg, pm=pm).run()
    states = [trial_state(t) for t in study.get_trials()]
    assert "pruned" in states and "complete" in states
    pruned = [t for t in study.get_trials() if trial_state(t) == "pruned"]
    assert all(len(t.intermediate_values) < 4 for t in pruned)


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path: Path, pm: Any) -> None:
    cfg = make_config(
        tmp_path, proposer={"name": "random"}, n_trials=10, evaluator_options={"fail_on": "ir_k5_e3"}
    )
    study = Search(cfg, pm=pm).run()
    failed = [t for t in study.get_trials() if trial_state(t) == "failed"]
    assert failed and len(study.get_trials()) == 10
    assert all("RuntimeError: injected failure for ir_k5_e3" in t.user_attrs["fail_reason"] for t in failed)


def test_many_failures_in_a_row_stop_with_the_reason(tmp_path: Path, pm: Any) -> None:
    cfg = make_config(tmp_path, n_trials=10, evaluator_options={"fail_on": "stage0"})
    with pytest.raises(
        TrainingDiverged, match="5 trials failed in a row; the last failed with: RuntimeError"
    ):
        Search(cfg, pm=pm).run()


def test_history_never_shows_test_accuracy(tmp_path: Path, pm: Any) -> None:
    study = Search(make_config(tmp_path, n_trials=2), pm=pm).run()
    for entry in history_from_trials(study.get_trials()):
        assert "val_acc" in entry.metrics and "test_acc" not in entry.metrics


def test_observers_see_every_trial(tmp_path: Path, formula_plugin: FormulaPlugin) -> None:
    seen: list[tuple[int, str]] = []

    class Observer:
        @hookimpl
        def on_trial_end(
            self, study_name: str, trial_number: int, state: str, values: Any, attrs: Any
        ) -> None:
            seen.append((trial_number, state))

    from automl_kd import get_plugin_manager

    pm = get_plugin_manager(extra_plugins=[("formula", formula_plugin), ("observer", Observer())])
    Search(make_config(tmp_path, n_trials=3), pm=pm).run()
    assert seen == [(0, "complete"), (1, "complete"), (2, "complete")]


def test_leaderboard_ranks_by_validation(tmp_path: Path, pm: Any) -> None:
    study = Search(make_config(tmp_path, n_trials=4), pm=pm).run()
    rows = leaderboard(study)
    vals = [r["val_acc"] for r in rows]
    assert vals == sorted(vals, reverse=True) and rows[0]["rank"] == 1


def test_timeout_stops_starting_trials(tmp_path: Path, pm: Any) -> None:
    cfg = make_config(tmp_path, n_trials=50, timeout=1.0, evaluator_options={"sleep": 0.2, "epochs": 2})
    search = Search(cfg, pm=pm)
    study = search.run()
    assert search.stop_reason == "timeout"
    assert 1 <= len(study.get_trials()) < 50


def test_a_resumed_study_does_not_replay_the_first_proposals(tmp_path: Path, pm: Any) -> None:
    Search(make_config(tmp_path, proposer={"name": "random"}, n_trials=3), pm=pm).run()
    study = Search(make_config(tmp_path, proposer={"name": "random"}, n_trials=6), pm=pm).run()
    first, resumed = study.get_trials()[:3], study.get_trials()[3:]
    assert [t.params for t in first] != [t.params for t in resumed]


def test_enqueue_runs_a_fixed_student_with_the_seed_of_its_place(tmp_path: Path, pm: Any) -> None:
    search = Search(make_config(tmp_path, n_trials=1), pm=pm)
    search.run()
    fixed = search.study.get_trials()[0].params
    search.enqueue(fixed, seed_of=0)  # run 0 again, e.g. after its result was lost: the same seed
    search.enqueue(fixed, seed_of=5)
    search.run(n_trials=3)
    first, again, fifth = search.study.get_trials()
    assert again.params == fifth.params == fixed
    assert again.user_attrs["seed"] == first.user_attrs["seed"] == trial_seed(0, 0)
    assert fifth.user_attrs["seed"] == trial_seed(0, 5)
    with pytest.raises(ConfigError, match="not_a_param not among the search's parameters"):
        search.enqueue({**fixed, "not_a_param": 1}, seed_of=0)
    name, dist = next(iter(search.space.distributions().items()))
    assert isinstance(dist, optuna.distributions.CategoricalDistribution), (name, dist)
    with pytest.raises(ConfigError, match="enqueue:"):
        search.enqueue({**fixed, name: "no such choice"}, seed_of=0)
