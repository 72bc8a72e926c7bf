"""The ``llm`` proposer against a real language model: SmolLM2-135M-Instruct in llama.cpp's server.

A handful of calls, in bounded time (about a minute on one thread): a 5-trial NAS-Bench-Macro search with its
transcripts and the server's token counts; the structured-output form negotiated with the real server (it
answers HTTP 500 to ``json_schema``); a re-ask after a real answer that breaks a constraint; and the server
stopped mid-search, which ends the search with the real reason in one line. The server is started once per
session on a free loopback port (``llama_server``) and stopped by its PID.

Without the ``llm-local`` extra and the model (``make llm-local``) these tests are skipped, unless
``AUTOML_KD_REQUIRE_LLM_LOCAL=1`` (set by ``make test``), which makes a missing server a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import MACRO_JSON
from llm_local import MODEL_ALIAS, REQUIRE_ENV, LlamaServer, missing

from automl_kd.config import load_config
from automl_kd.engine.search import Search
from automl_kd.errors import ProposerFailed
from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.hookspecs import hookimpl
from automl_kd.llm import ChatClient
from automl_kd.manager import get_plugin_manager
from automl_kd.proposer import ATTR_META
from automl_kd.space import Candidate

ROOT = Path(__file__).resolve().parents[1]
MACRO = MACRO_JSON

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def macro_config(run_dir: Path, base_url: str, n_trials: int, **options: Any) -> Any:
    opts = {
        "model": MODEL_ALIAS,
        "base_url": base_url,
        "timeout_s": 120.0,
        "max_retries": 1,
        "backoff_s": 0.05,
        "backoff_max_s": 0.1,
        **options,
    }
    cfg: dict[str, Any] = {
        "name": "llm-local",
        "seed": 0,
        "device": "cpu",
        "run_dir": str(run_dir),
        "space": {"name": "nasbench-macro"},
        "search": {"proposer": {"name": "llm", "options": opts}, "n_trials": n_trials},
        "evaluator": {"name": "nasbench-macro", "options": {"path": str(MACRO)}},
        "storage": {"url": f"journal:{run_dir / 'study.journal'}"},
    }
    return cfg


def metas(study: optuna.Study) -> list[dict[str, Any]]:
    return [
        t.system_attrs[ATTR_META] for t in study.get_trials(deepcopy=False) if ATTR_META in t.system_attrs
    ]


def test_the_server_answers_with_usage_and_takes_its_structured_form(llama_server: LlamaServer) -> None:
    assert llama_server.pid and llama_server.ready()
    schema = {
        "type": "object",
        "properties": {"ops": {"type": "array", "items": {"enum": [0, 1, 2]}, "minItems": 8, "maxItems": 8}},
        "required": ["ops"],
        "additionalProperties": False,
    }
    client = ChatClient(MODEL_ALIAS, base_url=llama_server.base_url, timeout_s=60, max_retries=0)
    msgs = [{"role": "user", "content": "Give 8 numbers, each 0, 1 or 2, as JSON."}]
    result = client.complete(msgs, temperature=0.0, max_tokens=64, seed=0, schema=schema)
    # llama-cpp-python's server answers HTTP 500 to json_schema: recognised as a rejection of the form
    assert client.rejected_forms == ["json_schema"], result.errors
    assert "HTTP 500" in result.errors[0] and "trying json_object_schema" in result.errors[0]
    assert result.structured_form == "json_object_schema" and result.retries == 0
    ops = json.loads(result.content)["ops"]
    assert len(ops) == 8 and set(ops) <= {0, 1, 2}
    assert not result.usage_estimated and result.prompt_tokens > 10 and result.completion_tokens > 0


def test_five_trial_search_on_nasbench_macro(llama_server: LlamaServer, tmp_path: Path) -> None:
    cfg = load_config(macro_config(tmp_path, llama_server.base_url, 5, candidates_per_call=2))
    study = Search(cfg).run()
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 5
    ms = metas(study)
    assert len(ms) == 5 and all(m["transcript"]["messages"] and m["transcript"]["calls"] for m in ms)
    calls = [c for m in ms if m["llm_round_index"] == 0 for c in m["transcript"]["calls"]]
    # the tokens are the server's own usage counts, not estimates, and sum to the study's totals
    assert all(not c["usage_estimated"] and c["prompt_tokens"] > 100 for c in calls)
    assert sum(m["llm_tokens_prompt"] for m in ms) == ms[-1]["study_usage"]["prompt_tokens"]
    assert sum(m["llm_tokens_completion"] for m in ms) == ms[-1]["study_usage"]["completion_tokens"] > 0
    assert all(c["structured_form"] == "json_object_schema" for c in calls)
    log = [json.loads(line) for line in (tmp_path / "llm_transcripts.jsonl").read_text().splitlines()]
    assert len(log) == len({m["llm_round"] for m in ms})
    # a round whose answers were all unusable (the 135M model repeats itself) ends in the random fallback
    assert {r["outcome"] for r in log} <= {"ok", "no valid candidate"} and log[0]["outcome"] == "ok"
    assert sum(m["llm_fallback"] for m in ms) == sum(r["outcome"] != "ok" for r in log)
    assert list((tmp_path / "llm_cache").rglob("*.json"))  # every answer is in the response cache


def test_reask_after_a_real_answer_that_breaks_a_constraint(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    """A MACs window of +-0.1 M around one design holds about 1 % of NAS-Bench-Macro: the model's first answer
    falls outside it, and the re-ask carries the exact margin."""
    macs = 47_768_064  # the MACs of 10210012
    cfg = macro_config(tmp_path, llama_server.base_url, 1, candidates_per_call=1, max_reasks=1)
    cfg["search"]["constraints"] = {"macs": [macs - 1e5, macs + 1e5]}
    study = Search(load_config(cfg)).run()
    meta = metas(study)[0]
    first, second = meta["transcript"]["calls"][:2]
    assert [p["status"] for p in first["parsed"]] == ["rejected"]
    reason = first["parsed"][0]["reason"]
    assert "MACs" in reason and ("exceed the upper bound" in reason or "below the lower bound" in reason)
    reask = meta["transcript"]["messages"][3]
    assert reask["role"] == "user" and reason in reask["content"]
    assert second["sent_messages"] == 4 and meta["llm_reasks"] == 1
    # the re-ask samples (the schedule's first temperature, the next seed): a greedy answer can change
    assert (first["temperature"], first["seed"]) == (0.0, 0) and (second["temperature"], second["seed"]) == (
        0.7,
        1,
    )
    macs_of = Search(load_config(cfg)).space.cost(study.trials[0].params).macs
    assert abs(macs_of - macs) <= 1e5  # the trial itself is feasible: the model's second try or the fallback


def test_the_answer_form_on_the_real_server(llama_server: LlamaServer, tmp_path: Path) -> None:
    """genius-benchmark asks for 8 digits and the grammar allows exactly 8 digits, without the designs already
    tried: every first answer of the real model is then a new, valid design, and no round needs the fallback."""
    cfg = macro_config(tmp_path, llama_server.base_url, 4, prompt="genius-benchmark")
    study = Search(load_config(cfg)).run()
    ms = metas(study)
    texts = [
        "".join(str(t.params[f"layer{i}"]) for i in range(1, 9)) for t in study.get_trials(deepcopy=False)
    ]
    assert len(set(texts)) == 4 and not any(m["llm_fallback"] for m in ms)
    for i, m in enumerate(ms):
        first = m["transcript"]["calls"][0]
        answer = json.loads(m["transcript"]["messages"][2]["content"])
        assert set(answer) == {"architecture"} and answer["architecture"] == texts[i]
        assert [p["status"] for p in first["parsed"]] == ["accepted"]
        # the transcript holds the grammar sent: the pattern leaves out every design tried before
        pattern = first["schema"]["properties"]["architecture"]["pattern"]
        assert re.fullmatch(pattern, texts[i]) and not any(re.fullmatch(pattern, t) for t in texts[:i])
        assert 'for example:\n{"architecture": ' in m["transcript"]["messages"][1]["content"]
    assert ms[-1]["study_answers"]["first_new_valid"] == 4 and ms[-1]["study_answers"]["fallbacks"] == 0


class StopServerEvaluator(Evaluator):
    """Scores by the table and stops the LLM server once ``after`` trials are done (the endpoint goes away)."""

    name = "stop-server"
    trains = False
    server: LlamaServer | None = None

    def __init__(self, path: str, after: int = 2) -> None:
        self.table = get_plugin_manager().evaluators.create("nasbench-macro", {"path": path})
        self.after = after
        self.calls = 0

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.after and self.server is not None:
            self.server.stop()
        out: dict[str, Any] = self.table.evaluate(candidate, context)
        return out


class StopServerPlugin:
    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        register("stop-server", StopServerEvaluator)


def test_server_stopped_mid_search_ends_it_with_the_reason(tmp_path: Path) -> None:
    reason = missing()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the local LLM server cannot run: {reason}")
        pytest.skip(reason)
    server = LlamaServer(n_ctx=2048, n_threads=1, log_path=tmp_path / "server.log").start()
    try:
        StopServerEvaluator.server = server
        cfg = macro_config(tmp_path / "run", server.base_url, 5, candidates_per_call=1)
        cfg["evaluator"] = {"name": "stop-server", "options": {"path": str(MACRO)}}
        search = Search(
            load_config(cfg), pm=get_plugin_manager(extra_plugins=[("stop-server", StopServerPlugin())])
        )
        with pytest.raises(ProposerFailed) as info:
            search.run()
    finally:
        StopServerEvaluator.server = None
        server.stop()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "the proposer 'llm' failed at trial 2: LLMUnavailable" in message
    assert "Connection refused" in message and "None" not in message
    trials = search.study.get_trials(deepcopy=False)
    assert [t.state for t in trials[:2]] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[2].user_attrs["fail_reason"] in message


def test_the_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A process that leaves by ``os._exit`` (as a search does after SIGTERM) runs no ``finally``: the server
    must not outlive it."""
    reason = missing()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the local LLM server cannot run: {reason}")
        pytest.skip(reason)
    script = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); from llm_local import LlamaServer; "
        "s = LlamaServer(n_ctx=512, n_threads=1).start(); print(s.pid, flush=True); os._exit(0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":  # exited, not yet reaped
            break
        time.sleep(0.2)
    alive = Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the llama.cpp server outlived the process that started it"
