"""The chat client over real HTTP: retries, Retry-After, 5xx, a hung request, refusals, the cache."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from automl_kd.errors import BudgetExhausted, CacheError, ConfigError
from automl_kd.llm import Accountant, ChatClient, LLMUnavailable, ReplayMiss, ResponseCache, price_for

try:
    from llm_server import ChatServer, Hang, Reply, Status
except ImportError:  # tests/ is a package
    from tests.llm_server import ChatServer, Hang, Reply, Status

SECRET = "sk-test-DO-NOT-LEAK-4f2a9c"
MESSAGES = [{"role": "user", "content": "Propose a design."}]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as s:
        yield s


def client_for(server: ChatServer, **kw: object) -> ChatClient:
    options: dict = {"timeout_s": 5.0, "backoff_s": 0.01, "backoff_max_s": 0.05, **kw}
    return ChatClient("test-model", base_url=server.base_url, **options)


def test_answer_usage_and_key_over_http(server: ChatServer) -> None:
    server.push(Reply("[1, 2, 3]", prompt_tokens=120, completion_tokens=7))
    result = client_for(server).complete(MESSAGES, temperature=0.0, seed=3)
    assert result.content == "[1, 2, 3]"
    assert (result.prompt_tokens, result.completion_tokens) == (120, 7)
    assert result.attempts == 1 and result.retries == 0 and not result.cached
    (req,) = server.chat_requests
    assert req.body["messages"] == MESSAGES and req.body["model"] == "test-model"
    assert req.body["temperature"] == 0.0 and req.body["seed"] == 3
    headers = {k.lower(): v for k, v in req.headers.items()}
    assert headers["authorization"] == f"Bearer {SECRET}"  # the key goes to the endpoint, and only there
    assert SECRET not in json.dumps(result.as_dict())


def test_429_with_retry_after_then_success(server: ChatServer) -> None:
    server.push(Status(429, "slow down", retry_after=0.3), Reply("ok"))
    start = time.monotonic()
    result = client_for(server, backoff_max_s=1.0).complete(MESSAGES)
    assert result.content == "ok" and result.retries == 1 and result.attempts == 2
    assert time.monotonic() - start >= 0.3  # the server's Retry-After was honoured
    assert "HTTP 429" in result.errors[0]


def test_500s_then_success_and_then_giving_up(server: ChatServer) -> None:
    server.push(Status(500), Status(502), Reply("fine"))
    result = client_for(server).complete(MESSAGES)
    assert result.content == "fine" and result.retries == 2
    server.push(*[Status(503)] * 3)
    with pytest.raises(LLMUnavailable, match=r"after 3 attempts \(2 retries\)"):
        client_for(server, max_retries=2).complete(MESSAGES)


def test_hung_request_times_out_and_is_retried(server: ChatServer) -> None:
    server.push(Hang(5.0), Reply("after the hang"))
    start = time.monotonic()
    result = client_for(server, timeout_s=1.0).complete(MESSAGES)
    elapsed = time.monotonic() - start
    assert result.content == "after the hang" and result.retries == 1
    assert "no answer within timeout_s=1" in result.errors[0]
    assert 1.0 <= elapsed < 4.0


def test_refusals_stop_with_a_hint_and_no_key(server: ChatServer) -> None:
    server.push(Status(401, f"Incorrect API key provided: {SECRET}"))
    with pytest.raises(LLMUnavailable, match="HTTP 401") as info:
        client_for(server).complete(MESSAGES)
    assert "check OPENAI_API_KEY" in str(info.value)
    assert SECRET not in str(info.value)  # scrubbed even when the server echoes it
    server.push(Status(404, "model not found"))
    with pytest.raises(LLMUnavailable, match="check the model name"):
        client_for(server).complete(MESSAGES)
    assert len(server.chat_requests) == 2  # no retries for 4xx


def test_structured_output_falls_back_when_unsupported() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    with ChatServer([Reply('{"x": 1}'), Reply('{"x": 2}')], reject_response_format=True) as server:
        client = client_for(server)
        result = client.complete(MESSAGES, schema=schema)
        assert result.content == '{"x": 1}' and not result.structured
        assert "response_format" in result.errors[0]
        first, second = server.chat_requests
        assert first.body["response_format"]["type"] == "json_schema" and "response_format" not in second.body
        client.complete([*MESSAGES, {"role": "user", "content": "again"}], schema=schema)
        assert "response_format" not in server.chat_requests[-1].body  # learnt once
    with ChatServer([Reply('{"x": 3}')]) as server:
        result = client_for(server).complete(MESSAGES, schema=schema)
        assert result.structured and server.chat_requests[0].body["response_format"]["json_schema"]["strict"]


def test_missing_usage_is_estimated(server: ChatServer) -> None:
    server.push(Reply("x" * 400, usage=False))
    result = client_for(server).complete(MESSAGES)
    assert result.usage_estimated and result.completion_tokens == 101


def test_record_then_replay_with_zero_http(server: ChatServer, tmp_path: Path) -> None:
    server.push(Reply("recorded answer", prompt_tokens=50, completion_tokens=5))
    recorder = client_for(server, cache=ResponseCache(tmp_path, "record"))
    first = recorder.complete(MESSAGES, temperature=0.7, seed=1)
    again = recorder.complete(MESSAGES, temperature=0.7, seed=1)  # identical request: served from the store
    assert again.cached and again.content == first.content and len(server.chat_requests) == 1
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and SECRET not in files[0].read_text()
    entry = json.loads(files[0].read_text())
    assert entry["key"] == first.key and entry["request"]["params"] == {"temperature": 0.7, "seed": 1}

    server.stop()  # replay needs no endpoint at all
    replayer = ChatClient(
        "test-model", base_url="http://127.0.0.1:9/v1", cache=ResponseCache(tmp_path, "replay")
    )
    replayed = replayer.complete(MESSAGES, temperature=0.7, seed=1)
    assert replayed.cached and replayed.content == "recorded answer" and replayed.prompt_tokens == 50
    assert replayer.http_requests == 0
    with pytest.raises(ReplayMiss, match="no recorded answer"):
        replayer.complete(MESSAGES, temperature=0.8, seed=1)  # other sampling parameters: another key


def test_corrupt_cache_entry_is_reported(server: ChatServer, tmp_path: Path) -> None:
    server.push(Reply("a"))
    cache = ResponseCache(tmp_path, "record")
    result = client_for(server, cache=cache).complete(MESSAGES)
    cache.path(result.key).write_text("{truncated")
    with pytest.raises(CacheError, match="corrupt"):
        client_for(server, cache=cache).complete(MESSAGES)


def test_openai_import_guard(monkeypatch: pytest.MonkeyPatch, server: ChatServer) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"pip install 'automl-kd\[llm\]'"):
        client_for(server).complete(MESSAGES)


def test_no_key_for_openai_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(LLMUnavailable, match="OPENAI_API_KEY is not set"):
        ChatClient("gpt-4o-mini").complete(MESSAGES)


def test_accounting_and_budget() -> None:
    assert price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.60)  # longest prefix
    assert price_for("my-local-model") is None
    acct = Accountant("gpt-4o", max_cost_usd=0.01)
    acct.charge(1000, 500)  # 0.0025 + 0.005
    acct.check()
    acct.charge(1000, 500)
    with pytest.raises(BudgetExhausted, match=r"cost budget spent: \$0.0150 used of max_cost_usd=\$0.0100"):
        acct.check()
    tokens = Accountant("local", prices={"local": (0.0, 0.0)}, max_total_tokens=100)
    tokens.charge(60, 50)
    assert "token budget spent: 110 tokens" in (tokens.exhausted() or "")
    with pytest.raises(ConfigError, match="no price is known for model 'mystery'"):
        Accountant("mystery", max_cost_usd=1.0)
