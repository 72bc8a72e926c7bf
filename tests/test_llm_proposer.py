"""The ``llm`` proposer's rounds over real HTTP: precise re-asks, strategies, fallback, budget."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from automl_kd import Constraints
from automl_kd.errors import BudgetExhausted, ConfigError
from automl_kd.llm import ContextOverflow, LLMProposer, NoValidCandidate
from automl_kd.manager import get_plugin_manager
from automl_kd.plugins.spaces.genius_imagenet import GeniusImageNetSpace
from automl_kd.proposer import HistoryEntry
from automl_kd.space import SearchSpace
from automl_kd.testing import ProposerContract, ToySpace

try:
    from llm_server import ChatServer, Reply, genius_designs, json_answer, prose_answer
except ImportError:  # tests/ is a package
    from tests.llm_server import ChatServer, Reply, genius_designs, json_answer, prose_answer

WINDOW = (250e6, 330e6)
BIG = [[6] * 6] * 5  # 831.9 M MACs


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-proposer")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def space() -> GeniusImageNetSpace:
    return GeniusImageNetSpace()


@pytest.fixture(scope="module")
def designs(space: GeniusImageNetSpace) -> list[list[list[int]]]:
    return genius_designs(space, 12, WINDOW, seed=1)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as s:
        yield s


def make(space: GeniusImageNetSpace, server: ChatServer, tmp_path: Path, **options: Any) -> LLMProposer:
    base: dict[str, Any] = {
        "model": "test-model",
        "base_url": server.base_url,
        "timeout_s": 5.0,
        "backoff_s": 0.01,
    }
    return LLMProposer(
        space,
        seed=0,
        directions=["maximize"],
        constraints=Constraints(macs=WINDOW),
        run_dir=tmp_path,
        **{**base, **options},
    )


def entry(space: GeniusImageNetSpace, number: int, design: list[list[int]], value: float) -> HistoryEntry:
    return HistoryEntry(number, space.params_from_answer(design), "complete", (value,))


def test_default_round_reasks_with_precise_reasons(
    space: GeniusImageNetSpace, designs: list, server: ChatServer, tmp_path: Path
) -> None:
    history = [entry(space, 4, designs[0], 71.5)]
    proposer = make(space, server, tmp_path, candidates_per_call=3)
    assert proposer.batch_size == 3
    server.push(
        Reply(json_answer(space, designs[1], BIG, designs[0]), prompt_tokens=1000, completion_tokens=100),
        Reply(
            "Sorry, here is one more:\n" + prose_answer(designs[2]), prompt_tokens=1200, completion_tokens=80
        ),
        Reply(json_answer(space, designs[3]), prompt_tokens=1300, completion_tokens=50),
    )
    out = proposer.propose(space, history, 3)
    assert [space.stage_ids(c.params) for c in out] == [designs[1], designs[2], designs[3]]

    first, second, third = server.chat_requests
    user = first.body["messages"][1]["content"]
    assert "trial 4 (complete)" in user and "M MACs" in user and "validation accuracy of 71.5" in user
    assert "MACs must lie in [250.0M, 330.0M]" in user
    assert first.body["response_format"]["type"] == "json_schema"  # structured output requested
    reask = second.body["messages"][-1]["content"]
    big_macs = space.cost(space.params_from_answer(BIG)).macs / 1e6
    assert (
        f"Candidate 2 fails a hard constraint: MACs {big_macs:.1f}M exceed the upper bound 330.0M by "
        f"{big_macs - 330:.1f}M." in reask
    )
    assert "Candidate 3 was already evaluated in trial 4." in reask
    assert "propose 2 more candidates" in reask
    assert len(third.body["messages"]) == 6  # system, user, answer, re-ask, answer, re-ask

    metas = [proposer.proposal_meta(c) for c in out]
    assert metas[0]["llm_requests"] == 3 and metas[0]["llm_reasks"] == 2
    assert metas[0]["llm_tokens_prompt"] == 3500 and metas[0]["llm_tokens_completion"] == 230
    assert all(m["llm_requests"] == 0 and m["llm_tokens_prompt"] == 0 for m in metas[1:])
    calls = metas[1]["transcript"]["calls"]
    assert [c["parsed"][i]["status"] for c, i in ((calls[0], 0), (calls[0], 1), (calls[0], 2))] == [
        "accepted",
        "rejected",
        "duplicate",
    ]
    assert calls[1]["sent_messages"] == 4 and len(metas[2]["transcript"]["messages"]) == 7
    log = (tmp_path / "llm_transcripts.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["outcome"] == "ok"


def test_fallback_after_reasks_and_error_mode(
    space: GeniusImageNetSpace, server: ChatServer, tmp_path: Path
) -> None:
    proposer = make(space, server, tmp_path, candidates_per_call=1, max_reasks=2)
    server.push(Reply("I cannot decide."), Reply("[[9, 9]]"), Reply(json.dumps({"candidates": []})))
    (cand,) = proposer.propose(space, [], 1)
    meta = proposer.proposal_meta(cand)
    assert meta["llm_fallback"] and meta["llm_reasks"] == 2 and meta["llm_requests"] == 3
    assert cand.rationale.startswith("fallback: random feasible candidate")
    assert WINDOW[0] <= space.cost(cand.params).macs <= WINDOW[1]  # found although random samples miss it
    strict = make(space, server, tmp_path, candidates_per_call=1, max_reasks=0, fallback="error")
    server.push(Reply("no idea"))
    with pytest.raises(NoValidCandidate, match="after 0 re-asks"):
        strict.propose(space, [], 1)
    lines = [json.loads(x) for x in (tmp_path / "llm_transcripts.jsonl").read_text().splitlines()]
    assert [x["outcome"] for x in lines] == ["no valid candidate", "no valid candidate"]


def test_budget_stops_cleanly(
    space: GeniusImageNetSpace, designs: list, server: ChatServer, tmp_path: Path
) -> None:
    proposer = make(space, server, tmp_path, candidates_per_call=1, max_requests=1)
    server.push(Reply(json_answer(space, designs[0])), Reply(json_answer(space, designs[1])))
    assert len(proposer.propose(space, [], 1)) == 1
    assert "request budget spent" in (proposer.budget_exhausted() or "")
    with pytest.raises(BudgetExhausted, match=r"1 requests made of max_requests=1.*the search stops here"):
        proposer.propose(space, [], 1)
    assert len(server.chat_requests) == 1


def test_genius_imagenet_strategy(
    space: GeniusImageNetSpace, designs: list, server: ChatServer, tmp_path: Path
) -> None:
    proposer = make(space, server, tmp_path, prompt="genius-imagenet")
    assert proposer.batch_size == 1
    principles = "1. Larger kernels are stronger.\n2. Deeper late stages."
    server.push(Reply(principles + "\n\n" + prose_answer(designs[0])))
    (first,) = proposer.propose(space, [], 4)
    assert space.stage_ids(first.params) == designs[0]
    round1 = server.chat_requests[0].body
    assert "Which operation is more powerful" in round1["messages"][1]["content"]
    assert "response_format" not in round1  # GENIUS answers in prose

    history = [HistoryEntry(0, first.params, "complete", (68.25,))]
    server.push(Reply(prose_answer(BIG)), Reply(prose_answer(designs[0])), Reply(prose_answer(designs[1])))
    (second,) = proposer.propose(space, history, 1)
    assert space.stage_ids(second.params) == designs[1]
    r2, r3, r4 = (r.body["messages"] for r in server.chat_requests[1:])
    assert len(r2) == 2  # a fresh conversation
    assert principles in r2[1]["content"] and "- Experiment1 (trial 0)" in r2[1]["content"]
    assert f"Stage 1: {json.dumps(designs[0][0])}" in r2[1]["content"] and "68.25" in r2[1]["content"]
    assert r3[-1]["content"].startswith(
        "The design fails a hard constraint: MACs 831.9M exceed the upper bound"
    )
    assert r4[-1]["content"].startswith("The design was already evaluated in trial 0.")
    assert len(r4) == 6


def test_genius_benchmark_strategy_is_stateless(
    space: GeniusImageNetSpace, designs: list, server: ChatServer, tmp_path: Path
) -> None:
    proposer = make(space, server, tmp_path, prompt="genius-benchmark")
    server.push(Reply(space.encode(space.params_from_answer(designs[0]))), Reply(str(designs[1])))
    (a,) = proposer.propose(space, [], 1)
    (b,) = proposer.propose(space, [HistoryEntry(0, a.params, "complete", (70.0,))], 1)
    assert space.stage_ids(b.params) == designs[1]
    second = server.chat_requests[1].body["messages"]
    assert (
        len(second) == 2
        and f"{space.encode(a.params)} gives a validation accuracy of 70" in second[1]["content"]
    )


def test_templates_override_and_check(
    space: GeniusImageNetSpace, designs: list, server: ChatServer, tmp_path: Path
) -> None:
    custom = tmp_path / "user.md"
    custom.write_text("CUSTOM PROMPT for $n candidates.\n$answer_format")
    proposer = make(space, server, tmp_path, candidates_per_call=1, templates={"default_user": str(custom)})
    server.push(Reply(json_answer(space, designs[0])))
    proposer.propose(space, [], 1)
    assert (
        server.chat_requests[0].body["messages"][1]["content"].startswith("CUSTOM PROMPT for 1 candidates.")
    )
    custom.write_text("Hello $nonsense")
    with pytest.raises(ConfigError, match=r"templates.default_user: unknown placeholder \$nonsense"):
        make(space, server, tmp_path, templates={"default_user": str(custom)})
    with pytest.raises(ConfigError, match="unknown template 'nope'"):
        make(space, server, tmp_path, templates={"nope": str(custom)})


def test_registered_and_options_validated(space: GeniusImageNetSpace, tmp_path: Path) -> None:
    pm = get_plugin_manager()
    assert "llm" in pm.proposers.names()
    made = pm.proposers.create(
        "llm",
        {"model": "x", "candidates_per_call": "2", "cache": "off"},
        space=space,
        seed=1,
        directions=["maximize"],
        constraints=None,
        run_dir=tmp_path,
    )
    assert isinstance(made, LLMProposer) and made.batch_size == 2 and made.cache is None
    with pytest.raises(ConfigError, match="prompt"):
        pm.proposers.create("llm", {"prompt": "genius"}, space=space)
    with pytest.raises(ConfigError, match="cache: replay needs cache_dir"):
        pm.proposers.create("llm", {"cache": "replay"}, space=space)


def test_plugin_listing_needs_no_openai() -> None:
    code = (
        "import sys; sys.modules['openai'] = None\nfrom automl_kd.manager import get_plugin_manager\npm = "
        "get_plugin_manager(entry_points=False)\nassert 'llm' in pm.proposers.names(), pm.errors\nassert "
        "not [e for e in pm.errors if 'llm' in e.name], pm.errors\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def toy_llm(body: dict[str, Any]) -> Reply:
    """A deterministic 'LLM' for ToySpace: the answer is a function of the conversation."""
    rng = random.Random(hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest())
    space = ToySpace()
    return Reply(
        json.dumps({"candidates": [{"params": space.sample(rng), "rationale": "toy"} for _ in range(4)]})
    )


class TestLLMProposerContract(ProposerContract):
    """The contract every proposer satisfies, run over real HTTP against a deterministic toy endpoint."""

    @pytest.fixture
    def proposer_factory(self) -> Iterator[Callable[[SearchSpace, int], Any]]:
        with ChatServer(responder=toy_llm) as server:
            yield lambda space, seed: LLMProposer(
                space, seed=seed, model="toy", base_url=server.base_url, cache="off"
            )


def test_max_tokens_is_bounded_by_the_answer_schema(
    space: GeniusImageNetSpace, designs: list, server: ChatServer, tmp_path: Path
) -> None:
    from automl_kd.llm.prompts import answer_schema, max_tokens_for, schema_max_chars

    one, three = max_tokens_for(answer_schema(space, 1)), max_tokens_for(answer_schema(space, 3))
    assert one is not None and three is not None and one < three < 4096
    assert schema_max_chars(answer_schema(space)) is None  # no candidate count: no bound
    text = json_answer(space, *designs[:3], rationale="x" * 200)
    assert len(text) <= schema_max_chars(answer_schema(space, 3))  # type: ignore[operator]
    proposer = make(space, server, tmp_path, candidates_per_call=3)
    server.push(Reply(json_answer(space, *designs[:3])))
    proposer.propose(space, [], 3)
    body = server.chat_requests[0].body
    assert body["max_tokens"] == three
    items = body["response_format"]["json_schema"]["schema"]["properties"]["candidates"]
    assert "maxItems" not in items  # dropped for OpenAI's strict mode (grammar servers get it)
    prose = make(space, server, tmp_path, prompt="genius-imagenet", max_tokens=None)
    server.push(Reply(prose_answer(designs[4])))
    prose.propose(space, [], 1)
    assert server.chat_requests[-1].body["max_tokens"] >= 1024  # prose: room for the reasoning


def test_a_repeated_answer_ends_the_reasks(
    space: GeniusImageNetSpace, designs: list, server: ChatServer, tmp_path: Path
) -> None:
    history = [entry(space, 0, designs[0], 70.0)]
    proposer = make(space, server, tmp_path, candidates_per_call=1, max_reasks=3, reask_temperatures=[])
    same = json_answer(space, designs[0])
    server.push(Reply(same), Reply(same), Reply(json_answer(space, designs[1])))
    (cand,) = proposer.propose(space, history, 1)
    meta = proposer.proposal_meta(cand)
    assert meta["llm_fallback"] and meta["llm_requests"] == 2  # not a third time at temperature 0
    log = json.loads((tmp_path / "llm_transcripts.jsonl").read_text().splitlines()[-1])
    assert "repeated its previous answer" in log["stopped"]


def test_a_reask_that_overflows_the_context_ends_the_round(
    space: GeniusImageNetSpace, designs: list, tmp_path: Path
) -> None:
    try:
        from llm_server import Status
    except ImportError:  # tests/ is a package
        from tests.llm_server import Status

    overflow = "This model's maximum context length is 2048 tokens. However, you requested 2300 tokens"
    with ChatServer([Reply(json_answer(space, designs[0])), Status(400, overflow)]) as server:
        proposer = make(space, server, tmp_path, candidates_per_call=2)
        out = proposer.propose(space, [], 2)
        assert [space.stage_ids(c.params) for c in out] == [designs[0]]  # what was accepted is kept
        log = json.loads((tmp_path / "llm_transcripts.jsonl").read_text().splitlines()[-1])
        assert "did not fit the model's context" in log["stopped"] and log["outcome"] == "ok"
        server.push(Status(400, overflow))
        with pytest.raises(ContextOverflow, match="the prompt alone is too long"):
            proposer.propose(space, [entry(space, 0, designs[5], 70.0)], 2)  # a new prompt: not cached
