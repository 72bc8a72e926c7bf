"""End to end: a search with the ``llm`` proposer against the local server, every kind of bad answer injected;
then an exact replay of the recorded run with zero HTTP requests; and ``LLMSampler`` in plain Optuna."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from automl_kd import Constraints, Search
from automl_kd.config import load_config
from automl_kd.errors import BudgetExhausted
from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.hookspecs import hookimpl
from automl_kd.llm import LLMSampler
from automl_kd.manager import get_plugin_manager
from automl_kd.plugins.spaces.genius_imagenet import GeniusImageNetSpace
from automl_kd.proposer import ATTR_META
from automl_kd.space import Candidate

try:
    from llm_server import Action, ChatServer, Hang, Reply, Status, genius_designs, json_answer, prose_answer
except ImportError:  # tests/ is a package
    from tests.llm_server import (
        Action,
        ChatServer,
        Hang,
        Reply,
        Status,
        genius_designs,
        json_answer,
        prose_answer,
    )

SECRET = "sk-test-e2e-SECRET-91c3"
WINDOW = (250e6, 330e6)
BIG = [[6] * 6] * 5


def formula(params: dict[str, Any]) -> float:
    """A deterministic stand-in for training: a smooth function of the op ids."""
    ids = GeniusImageNetSpace().stage_ids(params)
    return 60.0 + sum((i + 1) * (op % 4) for i, s in enumerate(ids) for op in s) / 10.0


class FormulaEvaluator(Evaluator):
    name = "formula"

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        return {"val_acc": formula(candidate.params)}


class FormulaPlugin:
    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        register("formula", FormulaEvaluator)


class ScriptedLLM:
    """Answers like a flaky LLM behind a flaky endpoint: every kind of bad answer, then good ones."""

    def __init__(self, space: GeniusImageNetSpace) -> None:
        self.space = space
        self.good = iter(genius_designs(space, 200, WINDOW, seed=5))
        self.given: list[list[list[int]]] = []
        self.plan = [
            "malformed",
            "429",
            "json2",
            "out_of_space",
            "500",
            "prose",
            "constraint",
            "json1",
            "hang",
            "duplicate",
            "json2",
            "fenced_python",
            "json2",
        ]
        self.n = 0

    def next_good(self) -> list[list[int]]:
        design = next(self.good)
        self.given.append(design)
        return design

    def __call__(self, body: dict[str, Any]) -> Action:
        kind = self.plan[self.n] if self.n < len(self.plan) else "json2"
        self.n += 1
        if kind == "429":
            return Status(429, "rate limited", retry_after=0.05)
        if kind == "500":
            return Status(500, "upstream exploded")
        if kind == "hang":
            return Hang(4.0)
        if kind == "malformed":
            return Reply("Let me think about it: deeper networks are better {unbalanced [")
        if kind == "out_of_space":
            return Reply(prose_answer([[9, 0, 1, 0, 1, 0], [1, 1, 0, 1, 1, 7], *BIG[2:]]))
        if kind == "constraint":
            return Reply(json_answer(self.space, BIG))
        if kind == "duplicate":
            return Reply(json_answer(self.space, self.given[0]))
        if kind == "prose":
            return Reply(prose_answer(self.next_good()))
        if kind == "fenced_python":
            names = [
                [
                    ["skip", "ir_k3_e4", "ir_k5_e4", "ir_k7_e4", "ir_k3_e6", "ir_k5_e6", "ir_k7_e6"][v]
                    for v in s
                ]
                for s in self.next_good()
            ]
            return Reply(f"Sure!\n```python\narch = {names}\n```\nThis should work well.")
        count = 1 if kind == "json1" else 2
        return Reply(json_answer(self.space, *[self.next_good() for _ in range(count)]))


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer(responder=ScriptedLLM(GeniusImageNetSpace())) as s:
        yield s


def config(run_dir: Path, base_url: str, n_trials: int, **options: Any) -> Any:
    opts = {
        "model": "gpt-4o-mini",
        "base_url": base_url,
        "candidates_per_call": 2,
        "timeout_s": 1.0,
        "backoff_s": 0.01,
        "backoff_max_s": 0.1,
        "max_reasks": 3,
        **options,
    }
    return load_config(
        {
            "name": "llm-e2e",
            "seed": 7,
            "device": "cpu",
            "run_dir": str(run_dir),
            "space": {
                "name": "genius-imagenet",
                "options": {"num_classes": 1000, "in_chans": 3, "input_size": 224},
            },
            "search": {
                "proposer": {"name": "llm", "options": opts},
                "n_trials": n_trials,
                "constraints": {"macs": list(WINDOW)},
            },
            "evaluator": {"name": "formula"},
            "storage": {
                "url": f"journal:{run_dir / 'study.journal'}"
            },  # fewer fsyncs than SQLite: a faster test
        }
    )


def run_search(cfg: Any) -> optuna.Study:
    return Search(cfg, pm=get_plugin_manager(extra_plugins=[("test-formula", FormulaPlugin())])).run()


def metas(study: optuna.Study) -> list[dict[str, Any]]:
    return [t.system_attrs[ATTR_META] for t in study.get_trials(deepcopy=False)]


def test_search_survives_every_bad_answer_and_replays_exactly(server: ChatServer, tmp_path: Path) -> None:
    study = run_search(config(tmp_path / "rec", server.base_url, 10))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 10 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    space = GeniusImageNetSpace()
    assert all(WINDOW[0] <= space.cost(t.params).macs <= WINDOW[1] for t in trials)  # nothing rejected
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 10  # no duplicates

    ms = metas(study)
    assert all(m["transcript"]["messages"] and m["transcript"]["calls"] for m in ms)  # no transcript lost
    assert not any(m["llm_fallback"] for m in ms)
    answered = sum(m["llm_requests"] for m in ms)
    reasks = sum(m["llm_reasks"] for m in ms)
    failed_attempts = 3  # the 429, the 500 and the hung request, retried by the client
    assert answered == len(server.chat_requests) - failed_attempts
    # malformed, out of space, prose (1 of 2), constraint, duplicate, fenced python (1 of 2)
    assert reasks == 6
    transcripts = {m["llm_round"]: m["transcript"] for m in ms}
    reask_messages = sum(
        len([x for x in t["messages"] if x["role"] == "user"]) - 1 for t in transcripts.values()
    )
    assert reask_messages == reasks
    errors = [e for t in transcripts.values() for c in t["calls"] for e in c["errors"]]
    assert any("HTTP 429" in e for e in errors) and any("HTTP 500" in e for e in errors)
    assert any("no answer within timeout_s=1" in e for e in errors)
    reasons = [r for t in transcripts.values() for c in t["calls"] for r in c["reasons"]]
    assert any("could not be read" in r for r in reasons)
    assert any("s1_b1=9 is not allowed" in r for r in reasons)
    assert any("MACs 831.9M exceed the upper bound 330.0M by 501.9M" in r for r in reasons)
    assert any("was already evaluated in trial 0" in r for r in reasons)
    assert sum(m["llm_tokens_prompt"] for m in ms) == ms[-1]["study_usage"]["prompt_tokens"] > 0
    assert sum(m["llm_cost_usd"] for m in ms) == pytest.approx(ms[-1]["study_usage"]["cost_usd"])
    log = (tmp_path / "rec" / "llm_transcripts.jsonl").read_text().splitlines()
    assert len(log) == len(transcripts)

    # the key went to the endpoint and nowhere else
    assert all(
        SECRET in r.headers.get("Authorization", r.headers.get("authorization", ""))
        for r in server.chat_requests
    )
    for f in (tmp_path / "rec").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f

    # replay: same candidates, same transcripts, zero HTTP requests
    before = len(server.requests)
    replay = run_search(
        config(
            tmp_path / "replay",
            server.base_url,
            10,
            cache="replay",
            cache_dir=str(tmp_path / "rec" / "llm_cache"),
        )
    )
    assert len(server.requests) == before
    assert [t.params for t in replay.get_trials()] == [t.params for t in trials]
    rms = metas(replay)
    assert all(c["cached"] and c["attempts"] == 0 for m in rms for c in m["transcript"]["calls"])
    assert [m["transcript"]["messages"] for m in rms] == [m["transcript"]["messages"] for m in ms]
    assert sum(m["llm_reasks"] for m in rms) == reasks


def test_budget_stops_the_search_cleanly(server: ChatServer, tmp_path: Path) -> None:
    cfg = config(tmp_path / "b", server.base_url, 20, max_requests=4)
    search = Search(cfg, pm=get_plugin_manager(extra_plugins=[("test-formula", FormulaPlugin())]))
    study = search.run()
    assert "proposer budget spent" in search.stop_reason and "max_requests=4" in search.stop_reason
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert 1 <= len(done) < 20
    assert len(server.chat_requests) - 2 <= 4  # answered requests within the budget (2 failed attempts)


def test_llm_sampler_in_plain_optuna(tmp_path: Path) -> None:
    space = GeniusImageNetSpace()
    good = genius_designs(space, 6, WINDOW, seed=11)
    with ChatServer(
        [
            Reply(json_answer(space, good[0], good[1])),
            Reply(json_answer(space, good[2], BIG)),
            Reply(json_answer(space, good[3])),
        ]
    ) as server:
        sampler = LLMSampler(
            space,
            model="gpt-4o-mini",
            base_url=server.base_url,
            seed=0,
            constraints=Constraints(macs=WINDOW),
            run_dir=tmp_path,
            candidates_per_call=2,
        )
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(lambda t: formula(sampler.suggest(t)), n_trials=4)
    got = [space.stage_ids(t.params) for t in study.trials]
    assert got == good[:4]
    assert sampler.llm.directions == ["maximize"]
    assert study.trials[2].system_attrs[ATTR_META]["llm_reasks"] == 1
    spent = LLMSampler(space, base_url="http://127.0.0.1:9/v1", max_requests=1, cache="off")
    spent.llm.accountant.charge(10, 10)
    with pytest.raises(BudgetExhausted, match="max_requests=1"):
        spent.llm.propose(space, [], 1)


def test_nasbench_macro_without_its_table_stops_before_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ``path``, no environment variable, nothing cached, no download: one line, and no trial is run."""
    from automl_kd.cli import main

    monkeypatch.delenv("AUTOML_KD_NASBENCH_MACRO", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tmp_path / "macro.yaml"
    cfg.write_text(
        "name: macro-no-table\n"
        f"run_dir: {tmp_path / 'run'}\n"
        "space: {name: nasbench-macro}\n"
        "search: {n_trials: 3, proposer: {name: random}}\n"
        "evaluator: {name: nasbench-macro, options: {download: false}}\n"
    )
    code = main(["run", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1, err
    assert err[0].startswith("error: NAS-Bench-Macro table not found: pass path=...")
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("*.db"))
