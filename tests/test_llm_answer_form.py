"""One answer form, asked for and allowed: a space's text form (``SearchSpace.text_form``) is what the prompt's
example shows, what the JSON schema's ``pattern`` allows (without the designs already tried), and what the parser
finds in free text; re-asks sample with a temperature and seed schedule; the transcripts keep the grammar sent.
Requests go to a real local HTTP server (tests/llm_server.py)."""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from automl_kd_nasbench.macro import NASBenchMacroSpace
from automl_kd_nasbench.nb201 import NASBench201Space
from automl_kd_nasbench.permuted import PermutedMacroSpace, PermutedNB201Space

from automl_kd.llm import LLMProposer
from automl_kd.llm.forms import BY_NAME
from automl_kd.llm.parser import parse_answer
from automl_kd.llm.prompts import STRATEGIES, RoundContext, Templates
from automl_kd.plugins.spaces.genius_imagenet import GeniusImageNetSpace
from automl_kd.proposer import HistoryEntry
from automl_kd.space import SearchSpace, TextForm

try:
    from llm_server import ChatServer, Reply
except ImportError:  # tests/ is a package
    from tests.llm_server import ChatServer, Reply

SPACES = {
    "macro": NASBenchMacroSpace,
    "macro-permuted": PermutedMacroSpace,
    "nb201": NASBench201Space,
    "nb201-permuted": PermutedNB201Space,
    "genius-imagenet": GeniusImageNetSpace,
}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-form")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as s:
        yield s


def ctx(space: SearchSpace, history: list[HistoryEntry]) -> RoundContext:
    return RoundContext(
        space=space,
        history=history,
        n=1,
        directions=["maximize"],
        constraints=None,
        metric="validation accuracy",
        history_mode="full",
        history_best=10,
        history_recent=10,
        cost_of=lambda p: None,
    )


def design_pattern(schema: dict[str, Any]) -> str:
    """The ``pattern`` of the one design field of a structured answer's schema."""
    found = re.findall(r'"pattern": ("(?:[^"\\]|\\.)*")', json.dumps(schema))
    assert len(found) == 1, schema
    return str(json.loads(found[0]))


def test_a_text_form_excludes_exactly_the_texts_it_is_told() -> None:
    form = TextForm(("",) * 9, (("0", "1", "2"),) * 8)
    assert form.pattern() == "^[012]{8}$" and form.size() == 6561 and form.max_length() == 8
    every = ["".join(t) for t in itertools.product("012", repeat=8)]
    excluded = [*random.Random(0).sample(every, 40), "00000000", "22222222"]
    pattern = form.pattern(excluded)
    assert {t for t in every if not re.fullmatch(pattern, t)} == set(excluded)
    assert form.split("01201120") == tuple("01201120") and form.split("0120112") is None


@pytest.mark.parametrize("name", list(SPACES))
def test_each_space_states_its_text_form_and_reads_it_back(name: str) -> None:
    space = SPACES[name]()
    form = space.text_form()
    assert form is not None
    rng = random.Random(1)
    for _ in range(30):
        params = space.sample(rng)
        text = space.encode(params)
        assert re.fullmatch(form.pattern(), text) and len(text) <= form.max_length()
        assert space.decode(text) == params
        # the parser finds the form in free text, with no schema and no JSON around it
        (cand,) = parse_answer(f"I propose {text} because it looks strong.", space).candidates
        assert cand.params == params


@pytest.mark.parametrize("name", ["macro", "nb201", "genius-imagenet"])
@pytest.mark.parametrize("strategy", ["default", "genius-benchmark"])
def test_the_prompt_asks_for_the_form_the_schema_allows(name: str, strategy: str) -> None:
    space = SPACES[name]()
    s = STRATEGIES[strategy](Templates())
    messages = s.start(ctx(space, []))
    schema = s.schema(space, 1)
    assert schema is not None
    pattern = design_pattern(schema)
    example = space.encode(space.sample(random.Random(0)))
    assert re.fullmatch(pattern, example)
    # the example the prompt shows is an answer the grammar allows, field name included
    assert f'"architecture": "{example}"' in messages[-1]["content"]
    assert f'"architecture": "{example}"' in s.reask(ctx(space, []), ["x"], 1)


def test_without_structured_output_genius_benchmark_asks_for_the_bare_form(tmp_path: Path) -> None:
    space = NASBenchMacroSpace()
    proposer = LLMProposer(
        space, seed=0, run_dir=tmp_path, prompt="genius-benchmark", structured_output="off"
    )
    text = proposer.strategy.start(ctx(space, []))[-1]["content"]
    example = space.encode(space.sample(random.Random(0)))
    assert f"for example:\n{example}\n" in text and 'architecture":' not in text


@pytest.mark.parametrize("form", [f for f in BY_NAME if f != "json_object"])
def test_every_structured_form_carries_the_pattern_without_the_tried_designs(
    form: str, server: ChatServer, tmp_path: Path
) -> None:
    space = NASBenchMacroSpace()
    tried = ["00000000", "01222222"]
    history = [HistoryEntry(i, space.decode(t), "complete", (90.0,)) for i, t in enumerate(tried)]
    proposer = LLMProposer(
        space, seed=0, run_dir=tmp_path, base_url=server.base_url, prompt="genius-benchmark",
        structured_output=form, max_retries=0,
    )  # fmt: skip
    server.push(Reply('{"architecture": "01222221"}'))
    (cand,) = proposer.propose(space, history, 1)
    assert space.encode(cand.params) == "01222221"
    body = server.chat_requests[0].body
    sent = body.get("response_format") or body.get("guided_json") or body.get("format")
    pattern = design_pattern(sent)
    assert not any(re.fullmatch(pattern, t) for t in tried) and re.fullmatch(pattern, "01222221")
    assert ("maxLength" in json.dumps(sent)) == (form != "json_schema")  # OpenAI's strict mode drops it
    # the transcript shows the grammar that was sent
    call = proposer.proposal_meta(cand)["transcript"]["calls"][0]
    assert call["structured_form"] == form and design_pattern(call["schema"]) == pattern


def test_the_exclusion_stops_where_the_pattern_would_grow_too_long(tmp_path: Path) -> None:
    from automl_kd.llm.prompts import MAX_PATTERN_CHARS, text_schema

    space = NASBench201Space()
    rng = random.Random(0)
    few = {space.encode(space.sample(rng)) for _ in range(20)}
    many = few | {space.encode(space.sample(rng)) for _ in range(400)}
    narrow, wide = text_schema(space, few), text_schema(space, many)
    assert narrow is not None and wide is not None
    assert not any(re.fullmatch(narrow["pattern"], t) for t in few)
    assert len(narrow["pattern"]) <= MAX_PATTERN_CHARS and wide["pattern"] == space.text_form().pattern()  # type: ignore[union-attr]


def test_reasks_follow_the_temperature_and_seed_schedule(server: ChatServer, tmp_path: Path) -> None:
    space = NASBenchMacroSpace()
    history = [HistoryEntry(0, space.decode("01222222"), "complete", (90.0,))]
    proposer = LLMProposer(
        space, seed=5, run_dir=tmp_path, base_url=server.base_url, prompt="genius-benchmark",
        structured_output="json_object_schema", exclude_tried=False, max_retries=0,
    )  # fmt: skip
    same = '{"architecture": "01222222"}'
    server.push(Reply(same), Reply(same), Reply(same), Reply('{"architecture": "11222222"}'))
    (cand,) = proposer.propose(space, history, 1)
    assert space.encode(cand.params) == "11222222"  # a word-for-word repeat no longer ends the re-asks
    sent = [(r.body["temperature"], r.body["seed"]) for r in server.chat_requests]
    assert sent == [(0.0, 5), (0.7, 6), (1.0, 7), (1.0, 8)]
    meta = proposer.proposal_meta(cand)
    assert [(c["temperature"], c["seed"]) for c in meta["transcript"]["calls"]] == sent
    assert meta["study_answers"] == {
        "rounds": 1,
        "first_new_valid": 0,
        "fallbacks": 0,
        "candidates": 4,
        "by_status": {"duplicate": 3, "accepted": 1},
        "duplicate_share": 0.75,
    }


def test_an_empty_schedule_keeps_reasks_at_the_temperature(server: ChatServer, tmp_path: Path) -> None:
    space = NASBenchMacroSpace()
    proposer = LLMProposer(
        space, seed=0, run_dir=tmp_path, base_url=server.base_url, prompt="genius-benchmark",
        structured_output="json_object_schema", reask_temperatures=[], temperature=0.2, max_retries=0,
    )  # fmt: skip
    server.push(Reply('{"architecture": "0122222"}'), Reply('{"architecture": "01222222"}'))
    proposer.propose(space, [], 1)
    assert [r.body["temperature"] for r in server.chat_requests] == [0.2, 0.2]


def test_a_design_sent_back_in_a_round_is_left_out_of_its_next_grammar(
    server: ChatServer, tmp_path: Path
) -> None:
    from automl_kd import Constraints

    space = NASBenchMacroSpace()
    small = space.cost(space.decode("10000000")).macs
    proposer = LLMProposer(
        space, seed=0, run_dir=tmp_path, base_url=server.base_url, prompt="genius-benchmark",
        structured_output="json_object_schema", constraints=Constraints(macs=(0, small)), max_retries=0,
    )  # fmt: skip
    server.push(Reply('{"architecture": "12012111"}'), Reply('{"architecture": "10000000"}'))
    (cand,) = proposer.propose(space, [], 1)
    assert space.encode(cand.params) == "10000000"
    first, second = (design_pattern(r.body["response_format"]) for r in server.chat_requests)
    assert re.fullmatch(first, "12012111") and not re.fullmatch(second, "12012111")
    assert re.fullmatch(second, "10000000")


def test_a_design_that_broke_a_constraint_stays_out_of_later_rounds(
    server: ChatServer, tmp_path: Path
) -> None:
    from automl_kd import Constraints

    space = NASBenchMacroSpace()
    small = space.cost(space.decode("10000000")).macs
    proposer = LLMProposer(
        space, seed=0, run_dir=tmp_path, base_url=server.base_url, prompt="genius-benchmark",
        structured_output="json_object_schema", constraints=Constraints(macs=(0, small)), max_retries=0,
    )  # fmt: skip
    server.push(Reply('{"architecture": "12012111"}'), Reply('{"architecture": "10000000"}'))
    proposer.propose(space, [], 1)
    server.push(Reply('{"architecture": "00000000"}'))
    proposer.propose(space, [], 1)  # a new round, with nothing in the history
    pattern = design_pattern(server.chat_requests[-1].body["response_format"])
    assert not re.fullmatch(pattern, "12012111") and not re.fullmatch(pattern, "10000000")
