"""The ``screen`` proposer: k candidates of an inner proposer ranked by a zero-cost proxy, only the best evaluated.

Budget accounting (one trial per real evaluation whatever k), the pick (the best of a real proxy on NAS-Bench-Macro's
networks), no architecture sent twice, and a real ``automl-kd run`` from YAML."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from fault_support import assert_one_error, base_config, cli_in_process, write_yaml

from automl_kd.config import DataConfig
from automl_kd.data import load_data
from automl_kd.manager import get_plugin_manager
from automl_kd.plugins.evaluators.proxy import compute_proxies, minibatch
from automl_kd.plugins.proposers.screen import ProxyScorer, ScreeningSampler
from automl_kd.proposer import HistoryEntry, Proposer
from automl_kd.space import Candidate, SearchSpace, suggest
from automl_kd.testing import ToySpace

PM = get_plugin_manager()


def _ask_tell(sampler: Any, space: SearchSpace, n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(n):
        trial = study.ask()
        params = {k: suggest(trial, k, d) for k, d in space.distributions().items()}
        study.tell(trial, ToySpace().score(params))
    return study


class CountingScorer:
    """The toy space's own score as the proxy, one CPU second a call; remembers every candidate it scored."""

    def __init__(self) -> None:
        self.calls: list[Candidate] = []

    def __call__(self, candidate: Candidate) -> tuple[float, float]:
        self.calls.append(candidate)
        return ToySpace().score(dict(candidate.params)), 1.0


@pytest.mark.parametrize(
    "inner",
    [{"name": "random"}, {"name": "optuna", "options": {"sampler": "tpe"}}, {"name": "evolution"}],
    ids=["random", "tpe", "evolution"],
)
@pytest.mark.parametrize("k", [1, 5, 20])
def test_the_budget_counts_real_evaluations_whatever_k(inner: dict[str, Any], k: int) -> None:
    space, scorer = ToySpace(), CountingScorer()
    sampler = PM.proposers.create(
        "screen", {"proposer": inner, "k": k, "scorer": scorer}, space=space, seed=3, directions=["maximize"]
    )
    study = _ask_tell(sampler, space, 8)
    trials = study.get_trials()
    assert len(trials) == 8  # eight real evaluations, whatever k
    screened = [t.user_attrs["screened"] for t in trials]
    assert all(1 <= s <= k for s in screened)  # duplicates inside a draw are screened once
    assert sum(screened) > 8 or k == 1
    assert len(scorer.calls) == len({c.key() for c in scorer.calls})  # each architecture scored once per run
    # the CPU seconds charged are those of the scores computed for the trial (one second each here)
    assert sum(t.user_attrs["screen_proxy_cpu_s"] for t in trials) == pytest.approx(len(scorer.calls))
    assert all(t.system_attrs["automl_kd:proposer"] == f"screen({inner['name']})" for t in trials)
    # what was evaluated is the best of what was screened for it
    for t in trials:
        assert t.user_attrs["screen_score"] == pytest.approx(ToySpace().score(t.params))


class RecordingScorer:
    """The real proxy scorer; it keeps every (candidate, score) it computes, per trial."""

    def __init__(self, inner: ProxyScorer) -> None:
        self.inner = inner
        self.rounds: list[list[tuple[Candidate, float]]] = []

    def __call__(self, candidate: Candidate) -> tuple[float, float]:
        score, cpu_s = self.inner(candidate)
        self.rounds[-1].append((candidate, score))
        return score, cpu_s


def test_it_evaluates_the_best_naswot_score_of_nasbench_macro_networks() -> None:
    data = load_data(DataConfig(train_size=200, test_size=100, val_fraction=0.25))
    resources = {"data": data, "cache": None}
    space = PM.spaces.create("nasbench-macro", {"in_chans": 1, "input_size": 28})
    real = ProxyScorer(space, "naswot", batch_size=16, seed=0, resource=resources.get)
    real.evaluator.use_cache = False
    scorer = RecordingScorer(real)
    sampler = PM.proposers.create(
        "screen",
        {"proposer": {"name": "optuna", "options": {"sampler": "tpe"}}, "k": 4, "scorer": scorer},
        space=space,
        seed=0,
        directions=["maximize"],
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    x, y = minibatch(data, 16, 0)
    for _ in range(3):
        scorer.rounds.append([])
        trial = study.ask()
        params = {k: suggest(trial, k, d) for k, d in space.distributions().items()}
        drawn = scorer.rounds[-1]
        assert len(drawn) == 4
        best, best_score = max(drawn, key=lambda cs: cs[1])
        assert space.candidate(params) == best
        # the score is the proxy's: the same network, seed and minibatch give the same value computed here
        torch.manual_seed(0)
        again = compute_proxies(space.build(params), ["naswot"], x, y)["naswot"].value
        assert again == pytest.approx(best_score, rel=1e-9)
        assert max(s for _, s in drawn) > min(s for _, s in drawn)  # the screen had a choice to make
        study.tell(trial, 50.0)
        assert study.trials[-1].user_attrs["screen_score"] == best_score


class Stubborn(Proposer):
    """Always proposes the same three candidates, whatever the history (a proposer stuck in one place)."""

    name = "stubborn"

    def propose(self, space: SearchSpace, history: Sequence[HistoryEntry], n: int) -> list[Candidate]:
        params = [{"a": "z", "b": 4, "c": "conv5", "d": d} for d in (7, 6, 5)]
        return [space.candidate(p) for p in params]


def test_an_evaluated_architecture_is_never_sent_again() -> None:
    space, scorer = ToySpace(), CountingScorer()
    sampler = ScreeningSampler(Stubborn(), space, scorer, k=3, seed=0)
    study = _ask_tell(sampler, space, 12)
    keys = [space.candidate(t.params).key() for t in study.get_trials()]
    assert len(set(keys)) == 12
    # the first three trials take the inner proposer's candidates, best first; then uniform draws take over
    assert [t.params["d"] for t in study.get_trials()[:3]] == [7, 6, 5]
    assert [t.user_attrs["screened"] for t in study.get_trials()[:3]] == [3, 2, 1]


def test_constraints_screen_out_candidates_that_would_be_rejected() -> None:
    from automl_kd.engine.constraints import Constraints

    space, scorer = ToySpace(), CountingScorer()
    sampler = ScreeningSampler(
        optuna.samplers.RandomSampler(seed=0), space, scorer, k=20, constraints=Constraints(max_params=205)
    )
    study = _ask_tell(sampler, space, 6)
    # the best score would be b=4 (params >= 400); inside the cap b <= 2
    assert all(space.cost(t.params).params <= 205 for t in study.get_trials())


def test_automl_kd_run_screens_with_a_real_proxy_from_yaml(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOML_KD_CACHE", str(tmp_path / "cache"))
    cfg = base_config("screen-run", evaluator={"name": "proxy", "options": {"proxy": "synflow"}})
    cfg["space"] = {"name": "nasbench-macro"}
    cfg["search"] = {
        "proposer": {
            "name": "screen",
            "options": {
                "proposer": {"name": "optuna", "options": {"sampler": "tpe"}},
                "proxy": "naswot",
                "k": 3,
                "batch_size": 16,
            },
        },
        "n_trials": 3,
    }
    write_yaml(tmp_path / "screen.yaml", cfg)
    res = cli_in_process("run", "screen.yaml", "--json", "--run-dir", "run", cwd=tmp_path, capfd=capfd)
    assert res.rc == 0, res
    out = json.loads(res.out.strip().splitlines()[-1])
    trials = out["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3  # three real evaluations
    metrics = [t["metrics"] for t in trials]
    assert [m["screened"] for m in metrics] == [3, 3, 3]
    assert all(m["screen_proxy_cpu_s"] > 0 and m["proposer"] == "screen(optuna)" for m in metrics)
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3
    assert out["screening"] == {
        "trials": 3,
        "screened": 9,
        "proxy_cpu_s": pytest.approx(sum(m["screen_proxy_cpu_s"] for m in metrics), abs=1e-3),
    }
    # the screening scores went to the proxy's artifact cache (nine naswot entries) beside the evaluator's synflow
    assert len(list((tmp_path / "cache" / "proxy-score").glob("*.art"))) == 9 + 3


@pytest.mark.parametrize(
    ("options", "needle"),
    [({"k": 0}, "k must be >= 1"), ({"proposer": {"name": "screen"}}, "cannot wrap itself")],
)
def test_bad_screen_options_are_one_config_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], options: dict[str, Any], needle: str
) -> None:
    cfg = base_config("bad-screen", evaluator={"name": "proxy", "options": {"proxy": "synflow"}})
    cfg["search"] = {"proposer": {"name": "screen", "options": options}, "n_trials": 1}
    write_yaml(tmp_path / "bad.yaml", cfg)
    res = cli_in_process("run", "bad.yaml", "--run-dir", "run", cwd=tmp_path, capfd=capfd)
    assert_one_error(res, 2, needle)
