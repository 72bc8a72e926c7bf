"""The ``llm-evolution`` proposer: regularised evolution with an LLM as its mutation operator.

Over real HTTP against a scripted server (a model that mutates the parent it is shown, and one that answers
nothing usable), on the real NAS-Bench-Macro table; and against the real local model (SmolLM2-135M in llama.cpp's
server) in a short search.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import MACRO_JSON

from automl_kd.config import load_config
from automl_kd.engine.search import Search
from automl_kd.errors import ConfigError
from automl_kd.manager import get_plugin_manager
from automl_kd.proposer import ATTR_META

try:
    from llm_local import MODEL_ALIAS, LlamaServer
    from llm_server import Action, ChatServer, Reply
except ImportError:  # tests/ is a package
    from tests.llm_local import MODEL_ALIAS, LlamaServer
    from tests.llm_server import Action, ChatServer, Reply

POPULATION = 4


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def config(run_dir: Path, proposer: dict[str, Any], n_trials: int) -> dict[str, Any]:
    return {
        "name": "llm-evolution",
        "seed": 3,
        "device": "cpu",
        "run_dir": str(run_dir),
        "space": {"name": "nasbench-macro"},
        "search": {"proposer": proposer, "n_trials": n_trials},
        "evaluator": {"name": "nasbench-macro", "options": {"path": str(MACRO_JSON)}},
    }


def hybrid(base_url: str, **llm: Any) -> dict[str, Any]:
    opts = {"model": "test-model", "base_url": base_url, "max_retries": 0, "timeout_s": 30.0, **llm}
    return {"name": "llm-evolution", "options": {"population": POPULATION, "sample_size": 2, "llm": opts}}


def run(cfg: dict[str, Any]) -> list[optuna.trial.FrozenTrial]:
    study = Search(load_config(cfg)).run()
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def design(t: optuna.trial.FrozenTrial) -> str:
    return (
        "".join(str(t.params[f"layer{i}"]) for i in range(8))
        if "layer0" in t.params
        else json.dumps(t.params)
    )


def parent_mutator(body: dict[str, Any]) -> Action:
    """A model that changes the parent it is shown in one place: the k-th digit on the k-th ask of a round."""
    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    parent = re.search(r"Parent: ([012]{8})", prompt)
    assert parent is not None, prompt
    k = sum(m["role"] == "assistant" for m in body["messages"]) % 8
    digits = list(parent.group(1))
    digits[k] = str((int(digits[k]) + 1) % 3)
    answer = {"candidates": [{"architecture": "".join(digits), "rationale": "one step from the parent"}]}
    return Reply(json.dumps(answer), prompt_tokens=100, completion_tokens=20)


def test_the_model_mutates_the_tournament_parent(tmp_path: Path) -> None:
    with ChatServer(responder=parent_mutator) as server:
        trials = run(config(tmp_path / "h", hybrid(server.base_url), 10))
        prompts = [r.body["messages"] for r in server.requests]
    plain = run(
        config(
            tmp_path / "e",
            {"name": "evolution", "options": {"population": POPULATION, "sample_size": 2}},
            POPULATION,
        )
    )
    metas = [t.system_attrs[ATTR_META] for t in trials]
    # the initial population is evolution's own, draw for draw
    assert [m["operator"] for m in metas[:POPULATION]] == ["initial"] * POPULATION
    assert [design(t) for t in trials[:POPULATION]] == [design(t) for t in plain]
    children = metas[POPULATION:]
    assert len(children) == 10 - POPULATION
    assert all(m["operator"] == "llm" for m in children), children
    assert all(m["changed"] == 1 for m in children)
    by_number = {t.number: design(t) for t in trials}
    for t, m in zip(trials[POPULATION:], children, strict=True):
        assert m["parent"] < t.number
        # one digit apart from its parent, as the scripted model made it
        assert sum(a != b for a, b in zip(by_number[m["parent"]], design(t), strict=True)) == 1
    assert len({design(t) for t in trials}) == len(trials)  # never a repeat
    # the prompt shows the parent and the best designs so far in the space's text form
    first = next(m["content"] for m in prompts[0] if m["role"] == "user")
    assert re.search(r"^Parent: [012]{8} \(validation accuracy of [0-9.]+\)$", first, re.M), first
    assert len(re.findall(r"^- [012]{8}: validation accuracy of", first, re.M)) == POPULATION


def test_the_classical_mutation_fills_in_where_the_model_fails(tmp_path: Path) -> None:
    with ChatServer(responder=lambda body: Reply("I cannot help with that.")) as server:
        trials = run(config(tmp_path / "h", hybrid(server.base_url, max_reasks=1), 8))
        asked = len(server.requests)
    metas = [t.system_attrs[ATTR_META] for t in trials]
    children = metas[POPULATION:]
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 8
    assert [m["operator"] for m in children] == ["classical"] * 4
    assert all(m["changed"] == 1 and "NoValidCandidate" in m["llm_failure"] for m in children)
    assert asked == 4 * 2  # each child: the ask and its one re-ask, then the classical operator


def test_options_that_are_the_hybrids_own_are_refused() -> None:
    pm = get_plugin_manager()
    space = pm.spaces.create("nasbench-macro", {})
    with pytest.raises(ConfigError, match=r"llm\.fallback: set by llm-evolution"):
        pm.proposers.create("llm-evolution", {"llm": {"fallback": "random"}}, space=space, seed=0)
    with pytest.raises(ConfigError, match=r"llm: .*unexpected keyword argument 'no_such'"):
        pm.proposers.create("llm-evolution", {"llm": {"no_such": 1}}, space=space, seed=0)


@pytest.mark.slow
def test_a_short_search_with_the_real_model(llama_server: LlamaServer, tmp_path: Path) -> None:
    proposer = hybrid(llama_server.base_url, model=MODEL_ALIAS, timeout_s=120.0, max_reasks=1)
    proposer["options"]["population"] = 3
    trials = run(config(tmp_path, proposer, 6))
    metas = [t.system_attrs[ATTR_META] for t in trials]
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 6
    assert len({design(t) for t in trials}) == 6
    children = metas[3:]
    assert {m["operator"] for m in children} <= {"llm", "classical"}
    for m in children:
        assert m["changed"] >= 1 and m["parent"] in {t.number for t in trials}
    transcript = (tmp_path / "llm_transcripts.jsonl").read_text().splitlines()
    assert len(transcript) == 3  # one round per child, whatever the operator that made it
    first = json.loads(transcript[0])
    assert first["strategy"] == "mutation" and "Parent: " in first["messages"][1]["content"]
