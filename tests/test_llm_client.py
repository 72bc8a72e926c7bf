"""The chat client over real HTTP: retries, Retry-After, 5xx, a hung request, refusals, the cache."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from automl_kd.errors import BudgetExhausted, CacheError, ConfigError, TrialInterrupted
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
    waits: list[float] = []  # the client's injected sleep: the wait it chose, without the real clock
    result = client_for(server, backoff_max_s=1.0, sleep=waits.append).complete(MESSAGES)
    assert result.content == "ok" and result.retries == 1 and result.attempts == 2
    assert len(waits) == 1 and waits[0] >= 0.3, waits  # the server's Retry-After was honoured
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


SCHEMA = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "xs": {"type": "array", "items": {"enum": [1]}, "maxItems": 2}},
    "required": ["x", "xs"],
}
# what llama-cpp-python's server answers to a json_schema response_format (an HTTP 500, not a 400)
LLAMA_CPP_500 = (
    "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input should be 'text' or "
    "'json_object' [type=literal_error, input_value='json_schema', input_type=str]"
)


def llama_cpp_rule(body: dict) -> Status | None:
    rf = body.get("response_format")
    if rf is not None and rf.get("type") not in ("text", "json_object"):
        return Status(500, LLAMA_CPP_500)
    return None


def form_of(body: dict) -> str | None:
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return "json_schema"
    if rf.get("type") == "json_object":
        return "json_object_schema" if "schema" in rf else "json_object"
    return "guided_json" if "guided_json" in body else "ollama_format" if "format" in body else None


def test_structured_output_negotiates_the_form_a_server_takes() -> None:
    """llama-cpp-python's 500 to json_schema is a rejection of the form (by its content), not an outage."""
    with ChatServer(
        [Reply('{"x": 1, "xs": []}'), Reply('{"x": 2, "xs": [1]}')], reject=llama_cpp_rule
    ) as server:
        client = client_for(server)
        result = client.complete(MESSAGES, schema=SCHEMA)
        assert result.structured and result.structured_form == "json_object_schema" and result.retries == 0
        assert "rejected structured output form json_schema; trying json_object_schema" in result.errors[0]
        first, second = server.chat_requests
        assert form_of(first.body) == "json_schema" and first.body["response_format"]["json_schema"]["strict"]
        assert "maxItems" not in json.dumps(first.body["response_format"])  # OpenAI's strict mode rejects it
        assert second.body["response_format"] == {"type": "json_object", "schema": SCHEMA}
        client.complete([*MESSAGES, {"role": "user", "content": "again"}], schema=SCHEMA)
        assert len(server.chat_requests) == 3  # remembered: no second negotiation
        assert form_of(server.chat_requests[-1].body) == "json_object_schema"


@pytest.mark.parametrize("status", [400, 422, 500])
def test_every_form_rejected_falls_back_to_the_tolerant_parser(status: int) -> None:
    def rule(body: dict) -> Status | None:
        if "response_format" in body:
            return Status(status, "response_format is not supported by this server")
        if "guided_json" in body or "format" in body:
            return Status(
                status,
                f"Unrecognized request argument supplied: {next(iter(body.keys() & {'guided_json', 'format'}))}",
            )
        return None

    with ChatServer([Reply('{"x": 1}'), Reply('{"x": 2}')], reject=rule) as server:
        client = client_for(server)
        result = client.complete(MESSAGES, schema=SCHEMA)
        assert result.content == '{"x": 1}' and not result.structured and result.structured_form is None
        assert [form_of(r.body) for r in server.chat_requests] == [
            "json_schema",
            "json_object_schema",
            "guided_json",
            "ollama_format",
            None,
        ]
        assert len(result.errors) == 4 and result.retries == 0
        assert client.rejected_forms == ["json_schema", "json_object_schema", "guided_json", "ollama_format"]
        client.complete([*MESSAGES, {"role": "user", "content": "again"}], schema=SCHEMA)
        assert form_of(server.chat_requests[-1].body) is None and len(server.chat_requests) == 6


def test_a_plain_500_is_retried_not_taken_for_a_rejection(server: ChatServer) -> None:
    server.push(Status(500, "internal server error"), Reply('{"x": 1}'))
    result = client_for(server).complete(MESSAGES, schema=SCHEMA)
    assert result.structured_form == "json_schema" and result.retries == 1


def test_a_forced_form_that_is_rejected_stops_with_its_name() -> None:
    with ChatServer(reject=llama_cpp_rule) as server:
        with pytest.raises(LLMUnavailable, match="rejected structured_output=json_schema") as info:
            client_for(server, structured_output="json_schema").complete(MESSAGES, schema=SCHEMA)
        assert "\n" not in str(info.value).strip() or "Input should be" in str(info.value)
        assert len(server.chat_requests) == 1
        server.push(Reply('{"x": 1}'))
        forced = client_for(server, structured_output="json_object_schema").complete(MESSAGES, schema=SCHEMA)
        assert forced.structured_form == "json_object_schema"
    with pytest.raises(ValueError, match="unknown mode 'json'"):
        ChatClient("m", structured_output="json")  # type: ignore[arg-type]


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


# -- bounds: the answer's size, the request's time, a stop request ---------------------------------------------
def test_an_answer_over_max_tokens_is_cut_before_the_cache_stores_it(
    server: ChatServer, tmp_path: Path
) -> None:
    server.push(Reply("x" * 1_000_000, completion_tokens=100))
    client = client_for(server, cache=ResponseCache(tmp_path, "record"))
    result = client.complete(MESSAGES, max_tokens=100)
    assert len(result.content) == 1600 and result.truncated == {"chars": 1_000_000, "kept": 1600}
    assert result.as_dict()["truncated"] == result.truncated
    (entry,) = tmp_path.rglob("*.json")
    assert entry.stat().st_size < 10_000
    again = client.complete(MESSAGES, max_tokens=100)
    assert again.cached and again.content == result.content and again.truncated == result.truncated


def test_an_answer_within_max_tokens_is_kept_whole(server: ChatServer) -> None:
    server.push(Reply("y" * 1600))
    result = client_for(server).complete(MESSAGES, max_tokens=100)
    assert len(result.content) == 1600 and result.truncated is None


def test_a_stop_request_abandons_a_request_under_way(server: ChatServer) -> None:
    server.push(Hang(60.0))
    client = client_for(server, timeout_s=60.0, should_stop=lambda: bool(server.chat_requests))
    start = time.monotonic()
    with pytest.raises(TrialInterrupted, match="during the LLM request"):
        client.complete(MESSAGES)
    assert time.monotonic() - start < 5.0
    assert len(server.chat_requests) == 1


def test_a_stop_request_ends_the_backoff_before_a_retry(server: ChatServer) -> None:
    server.push(Status(500, "busy"), Reply("never asked for"))
    stop = {"now": False}
    client = client_for(server, backoff_s=60.0, backoff_max_s=60.0, should_stop=lambda: stop["now"])
    timer = threading.Timer(0.3, lambda: stop.update(now=True))
    timer.start()
    start = time.monotonic()
    with pytest.raises(TrialInterrupted, match="waiting to retry"):
        client.complete(MESSAGES)
    timer.join()
    assert time.monotonic() - start < 5.0 and len(server.chat_requests) == 1


def test_a_refused_connection_is_said_in_plain_words() -> None:
    """The request runs on asyncio, whose error reads "Connect call failed (...)": the reason stays the OS's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ChatClient("test-model", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout_s=5.0)
    with pytest.raises(LLMUnavailable, match=r"\[Errno \d+\] Connection refused$"):
        client.complete(MESSAGES)
