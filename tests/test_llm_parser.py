"""The tolerant answer parser: JSON, fences, prose and per-stage lists, commentary, bad values; no eval."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from automl_kd.llm import loads_tolerant, parse_answer, parse_answer_file
from automl_kd.llm.bounds import MAX_ANSWER_CHARS, MAX_DEPTH, nesting_depth
from automl_kd.plugins.spaces.genius_imagenet import OPS, GeniusImageNetSpace
from automl_kd.space import Cost, SearchSpace

ARCH = [[1, 0, 1, 0, 1, 0], [1, 1, 0, 1, 1, 0], [4, 4, 0, 4, 4, 0], [4, 5, 0, 5, 4, 0], [6, 6, 0, 6, 6, 0]]


class TinySpace(SearchSpace):
    """Three parameters with string choices, int choices and an int range: no space-specific reader."""

    name = "tiny"

    def distributions(self) -> dict[str, BaseDistribution]:
        return {
            "op": CategoricalDistribution(["conv", "pool", "skip"]),
            "width": CategoricalDistribution([16, 32, 64]),
            "depth": IntDistribution(1, 4),
        }

    def cost(self, params: Any) -> Cost:
        return Cost(params=params["width"] * params["depth"], macs=params["width"] * 100)


@pytest.fixture(scope="module")
def genius() -> GeniusImageNetSpace:
    return GeniusImageNetSpace()


def ids(space: GeniusImageNetSpace, text: str) -> list[list[list[int]]]:
    result = parse_answer(text, space)
    return [space.stage_ids(c.params) for c in result.candidates if c.params is not None]


def test_structured_json(genius: GeniusImageNetSpace) -> None:
    params = genius.params_from_answer(ARCH)
    text = json.dumps({"candidates": [{"params": params, "rationale": "deeper late stages"}]})
    result = parse_answer(text, genius)
    assert result.error is None
    assert [c.params for c in result.candidates] == [params]
    assert result.candidates[0].rationale == "deeper late stages"


def test_code_fence_with_commentary(genius: GeniusImageNetSpace) -> None:
    text = "Here you go:\n```json\n" + json.dumps({"architecture": ARCH, "reason": "x"}) + "\n```\nGood luck!"
    assert ids(genius, text) == [ARCH]


def test_genius_prose_per_stage_lists_with_window(genius: GeniusImageNetSpace) -> None:
    # the form GPT-4 used in GENIUS, with unrelated lists before and after (the FLOPs window)
    text = (
        "Keeping FLOPs in [270, 330], I propose:\n\n"
        + "\n".join(f"Stage {i + 1} (Layers {2 + 6 * i}-{7 + 6 * i}): {s}" for i, s in enumerate(ARCH))
        + "\n\nThe total FLOPS is approximately 404.5, within the desired range of [370, 430]."
    )
    result = parse_answer(text, genius)
    assert [genius.stage_ids(c.params) for c in result.valid] == [ARCH]
    assert "I propose" in result.candidates[0].rationale


def test_fenced_stage_lines(genius: GeniusImageNetSpace) -> None:
    text = "```\n" + "\n".join(f"Stage {i + 1}:  {s}" for i, s in enumerate(ARCH)) + "\n```"
    assert ids(genius, text) == [ARCH]


def test_flat_list_and_python_literals(genius: GeniusImageNetSpace) -> None:
    flat = [v for s in ARCH for v in s]
    assert ids(genius, f"op_list = {flat}") == [ARCH]
    names = [[OPS[v] for v in s] for s in ARCH]
    pythonish = str(names)  # single quotes
    assert ids(genius, pythonish) == [ARCH]
    bare = "[" + ", ".join("[" + ", ".join(s) + "]" for s in names) + ",]"  # bare words, trailing comma
    assert ids(genius, bare) == [ARCH]


def test_several_candidates_in_one_answer(genius: GeniusImageNetSpace) -> None:
    other = [[2] * 6, [0] * 6, [1] * 6, [0] * 6, [3] * 6]
    text = json.dumps(
        {
            "candidates": [
                {
                    "params": {
                        "stage1": s1[0],
                        "stage2": s1[1],
                        "stage3": s1[2],
                        "stage4": s1[3],
                        "stage5": s1[4],
                    },
                    "rationale": "r",
                }
                for s1 in (ARCH, other)
            ]
        }
    )
    assert ids(genius, text) == [ARCH, other]
    assert ids(genius, json.dumps([ARCH, other])) == [ARCH, other]


def test_out_of_space_values_give_reasons(genius: GeniusImageNetSpace) -> None:
    bad = [[9, 0, 1, 0, 1, 0], *ARCH[1:]]
    result = parse_answer("Stage lists:\n" + "\n".join(str(s) for s in bad), genius)
    assert result.valid == []
    assert "s1_b1=9 is not allowed" in (result.candidates[0].error or "")
    params = {**genius.params_from_answer(ARCH), "s3_b2": "conv9"}
    result = parse_answer(json.dumps({"candidates": [{"params": params, "rationale": ""}]}), genius)
    assert "s3_b2='conv9' is not allowed; choose one of 'skip', 'ir_k3_e4'" in (
        result.candidates[0].error or ""
    )
    del params["s3_b2"]
    result = parse_answer(json.dumps({"candidates": [{"params": params, "rationale": ""}]}), genius)
    assert "missing parameter 's3_b2'" in (result.candidates[0].error or "")


def test_wrong_length_and_malformed(genius: GeniusImageNetSpace) -> None:
    result = parse_answer(json.dumps({"architecture": [[1, 0, 1, 0, 1]] * 5}), genius)
    assert "stage 1 has 5 ops" in (result.candidates[0].error or "")
    for text in ("", "   ", "I would use more layers in the late stages.", "{not json at all", "[[[["):
        result = parse_answer(text, genius)
        assert result.candidates == [] and result.error, text
    assert "empty" in (parse_answer("", genius).error or "")


def test_repeated_design_counted_once(genius: GeniusImageNetSpace) -> None:
    text = f"Design: {ARCH}\nAgain, the design is {ARCH}."
    assert ids(genius, text) == [ARCH]


def test_generic_space_mapping_lists_and_lines() -> None:
    space = TinySpace()
    ok = {"op": "pool", "width": 32, "depth": 3}
    assert parse_answer(json.dumps(ok), space).valid[0].params == ok
    assert parse_answer('["pool", 32, 3]', space).valid[0].params == ok
    assert parse_answer("[1, 32, 3]", space).valid[0].params == ok  # index into string choices
    assert parse_answer("Proposal:\nop: pool\nwidth = 32\n- depth: 3\n", space).valid[0].params == ok
    bad = parse_answer('{"op": "pool", "width": 48, "depth": 3}', space)
    assert "width=48 is not allowed; choose one of 16, 32, 64" in (bad.candidates[0].error or "")
    bad = parse_answer('{"op": "pool", "width": 32, "depth": 7}', space)
    assert "depth=7 is outside [1, 4]" in (bad.candidates[0].error or "")


def test_never_evaluates_code(genius: GeniusImageNetSpace) -> None:
    text = "__import__('os').system('echo pwned') [1, 2] {'a': __import__('os')}"
    result = parse_answer(text, genius)
    assert result.valid == []
    with pytest.raises(ValueError):
        loads_tolerant("__import__('os').getcwd()")


def test_tolerant_loader() -> None:
    assert loads_tolerant("{'a': True, 'b': None, 'c': [1, 2,],}") == {"a": True, "b": None, "c": [1, 2]}
    assert loads_tolerant("[skip, ir_k3_e4]") == ["skip", "ir_k3_e4"]


def test_parse_answer_file_forms(tmp_path: Path, genius: GeniusImageNetSpace) -> None:
    text = "\n".join(f"Stage {i + 1}: {s}" for i, s in enumerate(ARCH))
    files = {
        "plain.txt": text,
        "completion.json": json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}),
        "messages.json": json.dumps(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]
        ),
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
        candidates, errors = parse_answer_file(genius, tmp_path / name)
        assert errors == [] and [genius.stage_ids(c) for c in candidates] == [ARCH], name
    (tmp_path / "bad.txt").write_text("Stage 1: [1, 0, 1]\nI am not sure about the rest.")
    candidates, errors = parse_answer_file(genius, tmp_path / "bad.txt")
    assert candidates == [] and errors and "no candidate found" in errors[0]


# -- bounds: nesting, length, work -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["[" * 1500 + "]" * 1500, "[" * 100_000 + "]" * 100_000, "{" * 200_000, '{"a": ' * 40 + "1" + "}" * 40],
    ids=["1500-levels", "100000-levels", "unclosed", "40-levels"],
)
def test_an_answer_nested_too_deep_is_unusable_at_once(text: str) -> None:
    start = time.perf_counter()
    result = parse_answer(text, TinySpace())
    assert time.perf_counter() - start < 0.5
    assert not result.candidates and "more than 32 levels deep" in (result.error or ""), result


def test_nesting_up_to_the_bound_is_read() -> None:
    params = {"op": "pool", "width": 32, "depth": 3}
    notes: Any = "deep"
    for _ in range(MAX_DEPTH - 3):
        notes = [notes]  # {"candidates": [{"notes": [[...]]}]}: 32 levels
    text = json.dumps({"candidates": [{"params": params, "notes": notes}]})
    assert nesting_depth(text) == MAX_DEPTH
    assert [c.params for c in parse_answer(text, TinySpace()).valid] == [params]


def test_an_answer_over_the_length_bound_is_unusable() -> None:
    result = parse_answer("op: pool\nwidth: 32\ndepth: 3\n" + "x" * MAX_ANSWER_CHARS, TinySpace())
    assert not result.candidates and f"at most {MAX_ANSWER_CHARS}" in (result.error or ""), result


@pytest.mark.parametrize(
    "unit",
    ["[']", "[ ' ]", "[x y] ", ("[" * 30 + "x y" + "]" * 30 + " "), "[1, 2] ", "{a: b c} "],
    ids=["quote", "spaced-quote", "invalid", "nested-invalid", "small-lists", "invalid-objects"],
)
def test_the_work_on_an_answer_at_the_length_bound_is_bounded(unit: str) -> None:
    """Unbalanced brackets and quotes made the search for lists quadratic: 2.5 s at depth 2,000, 10.9 s at 4,000.
    At the length bound the worst of these takes about 2 s on a busy core (docs/llm.md)."""
    text = (unit * (MAX_ANSWER_CHARS // len(unit) + 1))[:MAX_ANSWER_CHARS]
    start = time.perf_counter()
    parse_answer(text, TinySpace())
    assert time.perf_counter() - start < 10


def test_a_saved_answer_file_nested_too_deep_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    candidates, errors = parse_answer_file(TinySpace(), path)
    assert candidates == [] and len(errors) == 1 and "levels deep" in errors[0], errors
