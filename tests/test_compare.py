"""The proposer comparison: a tiny run with every output field, the accounting, the statistics and the CLI."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.stats
from conftest import MACRO_JSON
from optuna.distributions import BaseDistribution, CategoricalDistribution

from automl_kd import compare as cmp
from automl_kd.compare import (
    BENCHMARKS,
    PROPOSERS,
    BenchmarkSpec,
    ProposerSpec,
    compare,
    write_outputs,
)
from automl_kd.compare.stats import holm, mann_whitney_u, random_best_of_k, summary_stats
from automl_kd.errors import InfeasibleCandidate
from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.hookspecs import hookimpl
from automl_kd.manager import get_plugin_manager
from automl_kd.space import Candidate, Cost, SearchSpace

try:
    from llm_server import ChatServer, Reply
except ImportError:  # tests/ is a package
    from tests.llm_server import ChatServer, Reply

ROOT = Path(__file__).resolve().parent.parent
MACRO = str(MACRO_JSON)
MACRO_BENCH = BenchmarkSpec("nasbench-macro", "nasbench-macro", "nasbench-macro", {}, {"path": MACRO})


# -- a 9-architecture table with one hole, to check the accounting exactly ----------------------------------
class TinySpace(SearchSpace):
    name = "tiny-table"
    buildable = False

    def distributions(self) -> dict[str, BaseDistribution]:
        return {"a": CategoricalDistribution([0, 1, 2]), "b": CategoricalDistribution([0, 1, 2])}

    def cost(self, params: Mapping[str, Any]) -> Cost:
        return Cost(1, 1)


class TinyEvaluator(Evaluator):
    name = "tiny-table"

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        p = candidate.params
        if p["a"] == 1 and p["b"] == 1:
            raise InfeasibleCandidate("hole in the table")
        return {"val_acc": float(10 * p["a"] + p["b"]), "accuracy_source": "made up"}

    def table_values(self, space: SearchSpace | None = None) -> np.ndarray:
        return np.array([10.0 * a + b for a in range(3) for b in range(3) if (a, b) != (1, 1)])


@hookimpl
def _spaces(register: Any) -> None:
    register("tiny-table", TinySpace)


@hookimpl
def _evaluators(register: Any) -> None:
    register("tiny-table", TinyEvaluator)


@pytest.fixture
def tiny_pm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    plugin = SimpleNamespace(register_search_spaces=_spaces, register_evaluators=_evaluators)
    monkeypatch.setitem(cmp._WORKER_CACHE, "pm", get_plugin_manager(extra_plugins=[("tiny", plugin)]))
    yield


def test_accounting_on_a_known_table(tiny_pm: None) -> None:
    bench = BenchmarkSpec("tiny", "tiny-table", "tiny-table")
    runs = [cmp.run_one(bench, PROPOSERS["random"], seed, 30) for seed in range(3)]
    res = compare([bench], [PROPOSERS["random"]], seeds=3, budget=30, checkpoints=(5,))
    row = res["benchmarks"]["tiny"]["proposers"]["random"]
    holes = sum(v is None for r in runs for v in r["values"])
    assert holes > 0 and row["invalid"]["total"] == holes
    # 9 architectures, 30 proposals: at least 21 repeats per run, and every repeat is counted
    assert row["duplicates"]["total"] >= 3 * 21
    assert row["at"]["30"]["median"] == 22.0 and row["at"]["30"]["regret_median"] == 0.0
    assert row["rank_percentile"]["median"] == 0.0
    first = [next(i + 1 for i, v in enumerate(r["values"]) if v == 22.0) for r in runs]
    assert row["evals_to_top1pct"]["per_seed"] == first
    assert res["benchmarks"]["tiny"]["info"]["optimum"] == 22.0


def test_tiny_compare_produces_every_output_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    props = [PROPOSERS["random"], PROPOSERS["evolution"], PROPOSERS["llm"]]
    res = compare([MACRO_BENCH], props, seeds=3, budget=20, checkpoints=(10,))
    entry = res["benchmarks"]["nasbench-macro"]
    assert entry["info"]["table_size"] == 6561
    assert entry["info"]["accuracy_source"].startswith("test accuracy")
    assert entry["proposers"]["llm"]["status"] == "not run" and entry["proposers"]["llm"]["reason"]
    for label in ("random", "evolution"):
        row = entry["proposers"][label]
        assert row["status"] == "ok" and row["seeds"] == [0, 1, 2]
        assert len(row["curve"]["median"]) == len(row["regret_curve"]["ci_hi"]) == 20
        assert set(row["at"]) == {"10", "20"} and row["at"]["20"]["ci_lo"] <= row["at"]["20"]["median"]
        for key in (
            "rank_percentile",
            "evals_to_top1pct",
            "duplicates",
            "invalid",
            "seconds_per_proposal",
            "usage",
            "run_seconds_total",
            "per_seed_best",
            "errors",
        ):
            assert key in row
        # best-so-far never falls
        assert all(np.diff([v for v in row["curve"]["median"] if v is not None]) >= 0)
    tests = entry["tests"]
    assert {(t["at"], t["a"], t["b"]) for t in tests} == {
        (10, "random", "evolution"),
        (20, "random", "evolution"),
    }
    assert all(0 <= t["p"] <= t["p_holm"] <= 1 and 0 <= t["a12"] <= 1 for t in tests)
    paths = write_outputs(res, tmp_path, "tiny")
    assert {p.name for p in paths} == {"tiny.json", "tiny.md", "tiny_nasbench-macro.png"}
    assert json.loads((tmp_path / "tiny.json").read_text())["settings"]["budget"] == 20
    md = (tmp_path / "tiny.md").read_text()
    assert "| llm | not run: " in md and "Mann-Whitney" in md and "![nasbench-macro]" in md
    assert MACRO not in (tmp_path / "tiny.json").read_text()  # a local path is not part of the result


def test_skip_reasons(tmp_path: Path) -> None:
    pm = SimpleNamespace(proposers={"llm", "optuna"}, spaces=get_plugin_manager().spaces)
    llm = PROPOSERS["llm"]
    assert "no LLM endpoint" in (cmp.skip_reason(llm, MACRO_BENCH, pm, env={}) or "")
    assert cmp.skip_reason(llm, MACRO_BENCH, pm, env={"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}) is None
    replay = ProposerSpec("llm", "llm", {"cache": "replay", "cache_dir": str(tmp_path)}, needs_llm=True)
    assert cmp.skip_reason(replay, MACRO_BENCH, pm, env={}) is None
    assert "numeric" in (cmp.skip_reason(PROPOSERS["cmaes"], MACRO_BENCH, pm, env={}) or "")
    assert "not registered" in (
        cmp.skip_reason(
            llm, MACRO_BENCH, get_plugin_manager(disable=["automl_kd.plugins.proposers.llm"]), env={}
        )
        or ""
    )


def test_llm_row_runs_against_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenAI-compatible endpoint (a local fake) makes the LLM row run; tokens and re-asks are counted."""
    rng = random.Random(0)
    answers = iter(range(10_000))

    def responder(body: dict[str, Any]) -> Reply:
        # every third answer holds an op id out of range, which the proposer must re-ask for
        bad = next(answers) % 3 == 2
        params = {f"layer{i}": (7 if bad and i == 1 else rng.randrange(3)) for i in range(1, 9)}
        return Reply(json.dumps({"candidates": [{"params": params, "rationale": "scripted"}]}), 100, 20)

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    with ChatServer(responder=responder) as server:
        llm = ProposerSpec(
            "llm",
            "llm",
            {
                "base_url": server.base_url,
                "model": "test-model",
                "cache": "off",
                "candidates_per_call": 1,
                "fallback": "error",
            },
            needs_llm=True,
        )
        res = compare([MACRO_BENCH], [PROPOSERS["random"], llm], seeds=2, budget=6, checkpoints=(5,))
    row = res["benchmarks"]["nasbench-macro"]["proposers"]["llm"]
    assert row["status"] == "ok" and not row["errors"]
    assert row["usage"]["requests"] >= 12 and row["usage"]["prompt_tokens"] >= 1200
    assert row["llm_answers"]["reasks_per_run"] >= 2 and row["llm_answers"]["fallbacks_total"] == 0
    assert len(row["per_seed_best"]["6"]) == 2


def test_compare_main_writes_the_outputs(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    cmp.add_compare_arguments(parser)
    args = parser.parse_args(
        [
            "--benchmarks",
            "nasbench-macro",
            "--proposers",
            "random,tpe",
            "--seeds",
            "2",
            "--budget",
            "12",
            "--checkpoints",
            "10",
            "--workers",
            "1",
            "--macro-path",
            MACRO,
            "--out",
            str(tmp_path),
            "--no-plots",
        ]
    )
    assert cmp.compare_main(args) == 0
    res = json.loads((tmp_path / "compare_proposers.json").read_text())
    assert res["benchmarks"]["nasbench-macro"]["proposers"]["tpe"]["status"] == "ok"
    assert not list(tmp_path.glob("*.png"))
    with pytest.raises(Exception, match="unknown 'nope'"):
        cmp.specs_from_args(parser.parse_args(["--benchmarks", "nope"]))
    assert set(BENCHMARKS) >= {"nasbench-macro", "nb201-cifar10", "nb201-cifar100", "nb201-imagenet16-120"}


# -- statistics ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_mann_whitney_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(0.3, 1, 30), 1)  # rounded: many ties, as best-so-far values on a table have
    y = np.round(rng.normal(0.0, 1, 25), 1)
    u, p, a12 = mann_whitney_u(x, y)
    ref = scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
    assert u == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=1e-9)
    assert a12 == pytest.approx(u / (len(x) * len(y)))
    assert mann_whitney_u([1.0, 1.0], [1.0, 1.0]) == (2.0, 1.0, 0.5)


def test_holm_and_summary() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    s = summary_stats([1.0, 2.0, 3.0, float("nan")])
    assert s["n"] == 3 and s["median"] == 2.0 and s["ci_lo"] <= 2.0 <= s["ci_hi"]


def test_random_best_of_10_on_nasbench_macro_reads_the_table_right() -> None:
    from automl_kd_nasbench import load_macro_table

    stats = random_best_of_k(load_macro_table(MACRO).mean_accs(), k=10, draws=3000, seed=1)
    # the GENIUS paper (Zheng et al. 2023): random search, best of 10 on NAS-Bench-Macro, 92.43 +- 0.33 %
    assert abs(stats["mean"] - 92.43) < 0.2
    assert stats["std"] == pytest.approx(0.33, abs=0.05)
