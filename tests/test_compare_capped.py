"""The cost-capped comparison on the real NAS-Bench-Macro table: the cap as the proposers' hard constraint, the
optimum and top 1 % inside it, the largest-first baseline, and a screened row with its proxy work counted."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from conftest import MACRO_JSON

from automl_kd.compare import BENCHMARKS, PROPOSERS, ProposerSpec, compare, plugin_manager, write_outputs
from automl_kd.compare.runner import MAX_REJECTED, bench_info, macs_cap, run_one, table_rows
from automl_kd.space import Candidate, SearchSpace

CAPPED = dataclasses.replace(BENCHMARKS["nasbench-macro-capped"], evaluator_options={"path": str(MACRO_JSON)})


def test_the_cap_is_the_median_macs_and_the_optimum_is_inside_it() -> None:
    pm = plugin_manager()
    rows = table_rows(CAPPED, pm)
    assert len(rows) == 6561
    cap = macs_cap(CAPPED, pm)
    assert cap == np.median([m for _, _, m in rows])
    inside = sorted((v for _, v, m in rows if m <= cap), reverse=True)
    info = bench_info(CAPPED, pm)
    assert (
        info["macs_cap"] == cap and info["table_size"] == len(inside) and info["table_size_uncapped"] == 6561
    )
    assert (
        info["optimum"] == inside[0] < max(v for _, v, _ in rows)
    )  # the uncapped optimum is a bigger network
    assert info["top1pct_threshold"] == inside[int(np.ceil(len(inside) / 100)) - 1]


@pytest.mark.parametrize("label", ["random", "tpe", "largest-first"])
def test_every_evaluation_is_inside_the_cap_and_rejections_cost_none(label: str) -> None:
    pm = plugin_manager()
    cap = macs_cap(CAPPED, pm)
    space = pm.spaces.create("nasbench-macro")
    run = run_one(CAPPED, PROPOSERS[label], seed=1, budget=25)
    assert len(run["values"]) == 25 and run["invalid"] == 0  # 25 evaluations, whatever was rejected
    rows = table_rows(CAPPED, pm)
    assert set(run["values"]) <= {v for _, v, m in rows if m <= cap}
    if label == "random":  # uniform draws: about half the space is over the cap
        assert run["rejected"] > 5
    if label == "largest-first":  # no proposal over the cap, in descending MACs order
        assert run["rejected"] == 0
        inside = sorted(((m, space.candidate(p).key(), v) for p, v, m in rows if m <= cap), reverse=True)
        # the four largest networks inside the cap share their MACs (and, equivalent, their accuracy); then less
        assert inside[3][0] > inside[4][0]
        assert sorted(run["values"][:4]) == sorted(v for _, _, v in inside[:4])
        assert run["duplicates"] == 0


def naswot_free_scorer(bench: Any, space: SearchSpace) -> Any:
    """A scorer the comparison imports by path: the table's own value (an oracle), one CPU second a call."""
    values = {space.candidate(p).key(): v for p, v, _ in table_rows(bench, plugin_manager())}

    def score(candidate: Candidate) -> tuple[float, float]:
        return values[candidate.key()], 1.0

    return score


def test_a_screened_row_counts_its_proxy_work_and_tables_it(tmp_path: Path) -> None:
    screened = ProposerSpec(
        "screen-random",
        "screen",
        {"proposer": {"name": "random"}, "k": 20},
        scorer="test_compare_capped:naswot_free_scorer",
    )
    res = compare([CAPPED], [PROPOSERS["random"], screened], seeds=3, budget=10, checkpoints=(5,))
    rows = res["benchmarks"]["nasbench-macro-capped"]["proposers"]
    row = rows["screen-random"]
    assert row["status"] == "ok"
    # ten evaluations per run, each the best of the candidates of 20 that are inside the cap (about half); one
    # CPU second per score, charged once per architecture and run
    screening = row["screening"]
    assert 50 <= screening["screened_per_run"] <= 200
    assert (
        0.8 * screening["screened_per_run"]
        <= screening["proxy_cpu_s_per_run"]
        <= screening["screened_per_run"]
    )
    assert rows["random"]["screening"] is None and rows["random"]["rejected_over_cap"]["total"] > 0
    # an oracle scorer beats random search at every seed
    assert min(row["per_seed_best"]["10"]) > max(rows["random"]["per_seed_best"]["10"])
    md = write_outputs(res, tmp_path, "capped", plots=False)[1].read_text()
    assert "Capped at 55.4 M MACs: 3,282 of the 6,561 architectures" in md
    assert "| screen-random | 0.0 | " in md and "rejected over the cap/run" in md


class AlwaysLargest(optuna.samplers.BaseSampler):
    """A sampler blind to the cap: the last choice of every layer (the largest network) every time."""

    def __init__(self, seed: int | None = None) -> None:
        pass

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return distribution.choices[-1]


def test_a_proposer_stuck_over_the_cap_spends_its_evaluations_as_invalid() -> None:
    stuck = ProposerSpec("stuck", "optuna", {"sampler": "test_compare_capped:AlwaysLargest"})
    run = run_one(CAPPED, stuck, seed=0, budget=3)
    assert run["error"] is None and run["values"] == [None, None, None] and run["invalid"] == 3
    assert run["rejected"] == 3 * MAX_REJECTED
