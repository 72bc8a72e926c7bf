"""Replay of real model output: answers recorded from SmolLM2-135M-Instruct in llama.cpp's server (committed
under tests/data/llm_replay, re-recorded with ``python tests/llm_local.py record-replay MACRO_JSON``), played
back with ``cache: replay`` against an endpoint that does not exist, so no HTTP request can be made."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import MACRO_JSON
from llm_local import REPLAY_DIR, REPLAY_RUNS, REPLAY_TRIALS, free_port, replay_config

from automl_kd.config import load_config
from automl_kd.engine.search import Search
from automl_kd.proposer import ATTR_META

ROOT = Path(__file__).resolve().parents[1]
MACRO = MACRO_JSON


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a replay opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)  # any HTTP attempt fails the test


@pytest.mark.parametrize("name", list(REPLAY_RUNS))
def test_replay_of_real_answers_needs_no_http(name: str, tmp_path: Path) -> None:
    expected = json.loads((REPLAY_DIR / name / "expected.json").read_text())
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens on that port
    search = Search(load_config(replay_config(name, tmp_path, MACRO, "replay", url)))
    study = search.run()
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == REPLAY_TRIALS
    assert [t.params for t in trials] == expected["params"]
    assert [t.value for t in trials] == expected["values"]
    metas = [t.system_attrs[ATTR_META] for t in trials]
    calls = [c for m in metas if m["llm_round_index"] == 0 for c in m["transcript"]["calls"]]
    assert [c["request_key"] for c in calls] == expected["answers"]
    assert all(c["cached"] and c["attempts"] == 0 for c in calls)
    assert search.sampler.proposer.client.http_requests == 0  # type: ignore[attr-defined]
    # the server's own token counts come back from the cache, and are charged as when recorded
    assert metas[-1]["study_usage"] == expected["study_usage"]
    assert not any(c["usage_estimated"] for c in calls)
    assert [m["llm_fallback"] for m in metas] == expected["fallbacks"]
    assert [m["llm_reasks"] for m in metas] == expected["reasks"]
    # the real answers: JSON constrained by the schema, in the form llama-cpp-python's server takes; the
    # design is one string of the space's text form (8 digits), and the transcript keeps the grammar sent
    assert {c["structured_form"] for c in calls} == {"json_object_schema"}
    assert all('"pattern": "^' in json.dumps(c["schema"]) for c in calls)
    for m in metas:
        for call, answer in zip(m["transcript"]["calls"], m["transcript"]["messages"][2::2], strict=True):
            assert answer["role"] == "assistant"
            assert all(isinstance(p["raw"], str) and len(p["raw"]) == 8 for p in call["parsed"]), answer
    # re-asks go at the schedule's temperatures with the next seeds (the narrow MACs window forces them)
    sampling = {(c["temperature"], c["seed"]) for m in metas for c in m["transcript"]["calls"][1:]}
    assert sampling <= {(0.7, 1), (1.0, 2), (1.0, 3)}
    if name == "macro-reask":
        assert sampling and sum(expected["reasks"]) > 0
