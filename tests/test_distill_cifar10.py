"""benchmarks/distill_cifar10.py's grid at a tiny scale: real CIFAR-10 (JPEG) images, real student training through
the search engine. What is tested is how a cell survives a stop: every run reaches the JSON as soon as it ends,
and a study lost with its machine is started again where the JSON stopped, with the seeds the lost study would
have used (the headline experiment spans several sessions, and a session's machine does not outlive it)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest
from conftest import REPO, SHARED_DATA

from automl_kd.data import unpack_imagefolder
from automl_kd.engine.trial import trial_seed
from automl_kd.storage.heartbeat import ATTR_BEAT

ARCHIVE = SHARED_DATA / "cifar-10-jpeg" / "cifar-10-jpeg.tar.gz"
pytestmark = pytest.mark.skipif(
    not ARCHIVE.is_file(), reason="needs the CIFAR-10 (JPEG) archive beside the checkout"
)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "distill_cifar10", REPO / "benchmarks" / "distill_cifar10.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["distill_cifar10"] = mod
    spec.loader.exec_module(mod)
    mod.SMOKE.update(data={"train_size": 150, "test_size": 60}, student={"max_steps_per_epoch": 2})
    return mod


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_imagefolder(ARCHIVE, tmp_path_factory.mktemp("cifar-jpeg"), {"train": 20, "test": 6})


def cell(bench: ModuleType, root: Path, work: Path, recorded: list[dict[str, Any]], saved: list[Any]) -> Any:
    return bench.run_cell(
        root, work, "truncated", {"removed": 15}, "ce", 2, 1, 0, 2, recorded, lambda runs: saved.append(runs)
    )


def test_a_cell_saves_each_run_and_continues_a_lost_study_with_the_same_seeds(
    bench: ModuleType, root: Path, tmp_path: Path
) -> None:
    saved: list[Any] = []
    runs = cell(bench, root, tmp_path, [], saved)
    assert len(runs) == 2 and runs[0]["seed"] != runs[1]["seed"]
    assert [len(s) for s in saved] == [1, 2]  # the JSON gets the first run before the second starts
    assert all(0 <= r["test_acc"] <= 100 and r["macs"] == 14_926_064 for r in runs)

    # the machine is gone: the study with it; the JSON kept the first run only (stopped during the second)
    shutil.rmtree(tmp_path / "studies")
    saved.clear()
    again = cell(bench, root, tmp_path, runs[:1], saved)
    assert again[0] == runs[0]
    assert again[1]["seed"] == runs[1]["seed"]  # not a repeat of the first seed
    assert again[1]["val_acc"] == runs[1]["val_acc"] and again[1]["test_acc"] == runs[1]["test_acc"]

    # a surviving study and the JSON hold the same runs: none is counted twice
    saved.clear()
    assert cell(bench, root, tmp_path, again[:1], saved) == again


def test_a_recorded_cell_runs_nothing_and_a_partial_cell_is_tabled(
    bench: ModuleType, root: Path, tmp_path: Path
) -> None:
    done = [{"seed": s, "val_acc": 50.0 + s, "test_acc": 49.0 + s} for s in (1, 2)]
    assert cell(bench, root, tmp_path, done, []) == done
    assert not (tmp_path / "studies").exists()
    distilled = [{**done[0], "teacher_fingerprint": "abcdef0123456789"}, done[1]]
    logged = [{**done[0], "teacher_fingerprint": "123456abcdef", "teacher_fingerprint_from": "session log"}]
    block = {"runs": {"ce": done, "kd+ig+at": distilled[:1], "kd": distilled, "kd+ig": logged}}
    block["summary"] = bench.summarise(block["runs"])
    assert block["summary"]["kd+ig+at"]["n"] == 1
    table = bench.markdown({"epochs": 1, "seeds": 2, "grid": {"truncated": block}})
    assert "| truncated | ce | 2 | 50.50 ± 0.71" in table and table.count("| none (CE) |") == 1
    assert "| truncated | kd+ig+at | 1 | 50.00 (one run: no spread yet) | — | abcdef |" in table
    assert "| abcdef, not recorded |" in table  # each KD run names its teacher; one without the field says so
    assert "| 123456 (from the log) |" in table
    assert "| truncated | kd+at | 0 | not run yet |" in table


def test_the_students_are_compared_per_method_with_holm(bench: ModuleType) -> None:
    def runs(*accs: float) -> list[dict[str, float]]:
        return [{"test_acc": a, "val_acc": a} for a in accs]

    grid = {
        "nas": {"runs": {"ce": runs(62.0, 61.0, 62.5), "kd+ig+at": runs(66.0, 65.5, 66.4)}},
        "truncated": {"runs": {"ce": runs(58.0, 57.5, 58.4), "kd+ig+at": runs(60.1)}},
    }
    vs = bench.compare_students(grid)
    assert set(vs) == {"ce", "kd+ig+at"}
    assert vs["ce"]["diff"] == pytest.approx(61.833333 - 57.966667) and vs["ce"]["t"] > 0
    assert vs["ce"]["p_holm"] == pytest.approx(
        vs["ce"]["p"]
    )  # the one method with 2+ runs each: no correction
    assert vs["kd+ig+at"]["n"] == [3, 1] and "p_holm" not in vs["kd+ig+at"]
    table = bench.markdown({"epochs": 1, "seeds": 3, "grid": grid})
    assert (
        "| ce | 3, 3 | +3.87 |" in table and "| kd+ig+at | 3, 1 | +5.87 | — (needs 2 runs of each) |" in table
    )


def test_the_pick_is_compared_with_random_students_with_welchs_interval(bench: ModuleType) -> None:
    from scipy import stats

    pick = [62.28, 61.05, 62.07]
    rand = [59.1, 61.9, 57.4]
    r = {
        "grid": {"nas": {"runs": {"ce": [{"test_acc": a} for a in pick], "kd": [{"test_acc": 65.0}] * 2}}},
        "random_students": {
            "students": [{"runs": {"ce": [{"test_acc": a}]}} for a in rand]  # no KD run yet: no kd row
        },
    }
    vs = bench.search_vs_random(r)
    assert set(vs) == {"ce"} and vs["ce"]["n"] == [3, 3]
    ref = stats.ttest_ind(pick, rand, equal_var=False)
    lo, hi = ref.confidence_interval(0.95)
    assert vs["ce"]["diff"] == pytest.approx(sum(pick) / 3 - sum(rand) / 3)
    assert vs["ce"]["ci95"] == pytest.approx([lo, hi]) and vs["ce"]["p"] == pytest.approx(ref.pvalue)
    assert "| ce | 3, 3 | +2.33 |" in bench.markdown({"epochs": 1, "seeds": 3, **r, "search_vs_random": vs})


def test_a_run_left_running_by_a_killed_process_is_run_again_once(
    bench: ModuleType, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(work: Path, seeds: int) -> list[dict[str, Any]]:
        saved: list[Any] = []
        runs = bench.run_cell(
            root, work, "truncated", {"removed": 15}, "ce", seeds, 1, 0, 2, [], lambda r: saved.append(r)
        )
        assert saved[-1] == runs  # the JSON gets every run
        return runs

    first = run(tmp_path / "a", 1)
    done = bench.Search(bench.load_config(bench.base_config(root, tmp_path / "a", "truncated-ce-e1", 0, 1)))
    trial = done.study.get_trials()[0]
    # another machine's process was killed during the cell's first run: the trial stays RUNNING, its heartbeat
    # an hour old
    work = tmp_path / "b"
    study = bench.Search(bench.load_config(bench.base_config(root, work, "truncated-ce-e1", 0, 1))).study
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={ATTR_BEAT: time.time() - 3600},
        )
    )
    capsys.readouterr()
    runs = run(work, 3)
    # the rerun takes the killed run's seed and the cell the same seeds as one never interrupted
    assert [r["seed"] for r in runs] == [trial_seed(0, k) for k in range(3)]
    assert runs[0]["seed"] == first[0]["seed"]
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3  # the killed run is run again once, not twice
    assert states.count(optuna.trial.TrialState.RUNNING) == 0
    # the log counts the runs that each call finished, also when one call finishes two
    out = capsys.readouterr().out
    counted = re.findall(r"truncated-ce-e1: (?:run (\d+)|(\d+) runs, to (\d+))/3 in", out)
    assert sum(1 if single else int(n) for single, n, _ in counted) == 3, out
    assert counted[-1][0] == "3" or counted[-1][2] == "3", out
