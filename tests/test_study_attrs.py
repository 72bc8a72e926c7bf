"""What Optuna's own tools see in a study: the objectives' names (``study.metric_names``, so
``trials_dataframe()`` and optuna-dashboard name them) and a parameter count that does not read as a searched
parameter (``user_attrs_n_params``, not ``user_attrs_params`` beside the ``params_*`` columns); a study written
before, with the count under ``params`` and no metric names, still reads the same everywhere."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import small_mbv2_options

from automl_kd import Search, hookimpl, load_config
from automl_kd.proposer import history_from_trials
from automl_kd.results.leaderboard import cost_points, leaderboard, summary, trial_record
from automl_kd.storage.studies import load_study


def make_config(tmp_path: Path, n_trials: int) -> Any:
    return load_config(
        {
            "name": "attrs",
            "run_dir": str(tmp_path / "run"),
            "space": {"name": "mbv2", "options": small_mbv2_options()},
            "evaluator": {"name": "formula"},
            "search": {
                "n_trials": n_trials,
                "proposer": {"name": "random"},
                "objectives": ["val_acc", "params"],
            },
        }
    )


def test_a_new_study_names_its_objectives_and_stores_the_parameter_count_as_n_params(
    tmp_path: Path, pm: Any
) -> None:
    seen: list[dict[str, Any]] = []

    class Observer:
        @hookimpl
        def on_trial_end(self, attrs: dict[str, Any]) -> None:
            seen.append(attrs)

    pm.add(Observer(), "observer")
    study = Search(make_config(tmp_path, 3), pm=pm).run()
    assert study.metric_names == ["val_acc", "params"]
    t = study.trials[0]
    assert t.values == [t.user_attrs["val_acc"], t.user_attrs["n_params"]]
    # inside automl-kd the metric keeps its name: history, leaderboard, records, observers
    assert history_from_trials(study.trials)[0].metrics["params"] == t.user_attrs["n_params"]
    assert (
        leaderboard(study)[0]["params"] > 0
        and trial_record(t)["metrics"]["params"] == t.user_attrs["n_params"]
    )
    assert seen and all("params" in a and "n_params" not in a for a in seen)


def _as_written_before(db: Path) -> None:
    """Turn a study into one written before the rename: the count under ``params``, no metric names."""
    with sqlite3.connect(db) as con:
        assert con.execute("UPDATE trial_user_attributes SET key = 'params' WHERE key = 'n_params'").rowcount
        assert con.execute("DELETE FROM study_system_attributes WHERE key LIKE '%metric_names%'").rowcount


def test_a_study_written_before_reads_the_same_and_gets_its_metric_names_on_resume(
    tmp_path: Path, pm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    Search(make_config(tmp_path, 2), pm=pm).run()
    db = tmp_path / "run" / "study.db"
    _as_written_before(db)
    old = load_study(None, tmp_path / "run", None)
    assert old.metric_names is None and all("params" in t.user_attrs for t in old.trials)
    counts = [t.user_attrs["params"] for t in old.trials]
    assert [r["params"] for r in sorted(leaderboard(old), key=lambda r: r["trial"])] == counts
    assert [h.metrics["params"] for h in history_from_trials(old.trials)] == counts
    assert [c for _, _, c in sorted(cost_points(old, "params"))] == counts
    assert summary(old, "x")["best"]["params"] in counts

    from automl_kd.cli import main

    assert main(["show", "--run-dir", str(tmp_path / "run"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["best"]["params"] in counts

    # resuming it: the study gets its metric names, new trials write n_params, and both kinds read alike
    study = Search(make_config(tmp_path, 4), pm=pm).run()
    assert study.metric_names == ["val_acc", "params"]
    new = [t for t in study.trials if t.number >= 2]
    assert new and all("n_params" in t.user_attrs and "params" not in t.user_attrs for t in new)
    rows = {r["trial"]: r["params"] for r in leaderboard(study)}
    assert rows == {t.number: t.values[1] for t in study.trials}
    assert optuna.load_study(study_name="attrs", storage=f"sqlite:///{db}").metric_names == [
        "val_acc",
        "params",
    ]


def test_trials_dataframe_names_the_objectives_and_no_user_attribute_reads_as_a_parameter(
    tmp_path: Path, pm: Any
) -> None:
    pytest.importorskip("pandas", reason="trials_dataframe() needs pandas (in the dev extra)")
    study = Search(make_config(tmp_path, 2), pm=pm).run()
    df = study.trials_dataframe()
    assert {"values_val_acc", "values_params", "user_attrs_n_params"} <= set(df.columns)
    assert "user_attrs_params" not in df.columns
    searched = {f"params_{k}" for k in study.trials[0].params}
    assert {c for c in df.columns if "params" in c} == searched | {"values_params", "user_attrs_n_params"}
