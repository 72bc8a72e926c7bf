"""Turning an LLM's answer into candidates: structured JSON, else a tolerant reader; never ``eval``.

Accepted answers, in the order they are tried:

1. the whole answer as JSON (what structured output returns), e.g. ``{"candidates": [{"params": {...},
   "rationale": "..."}]}``, a bare parameter mapping, or a list of either;
2. JSON-like values anywhere in the text (in code fences or in prose), read by a small tokenizer that
   also accepts single quotes, Python's ``True``/``False``/``None``, bare words (``[ir_k3_e4, skip]``) and
   trailing commas;
3. lists in prose: one list with a value per parameter, or consecutive lists that together give one value per
   parameter (GENIUS's ``Stage 1 (Layers 2-7): [1, 0, 1, 0, 1, 0]`` lines), skipping unrelated lists such as
   ``[270, 330]``;
4. designs in the space's text form (``SearchSpace.text_form``: ``22212220`` for NAS-Bench-Macro, an arch
   string for NAS-Bench-201) anywhere in the text, also as the string value of ``architecture`` in JSON;
5. ``name: value`` lines naming the space's parameters.

Each candidate object goes through the space: ``space.params_from_answer(obj)`` when the space defines it,
else a generic reading (mapping of parameters, or values in parameter order, a categorical value given by its
index).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from automl_kd.errors import InvalidCandidate
from automl_kd.space import Candidate, SearchSpace

from .bounds import SCAN_BUDGET, unreadable

_WRAPPERS = ("candidates", "architectures", "designs", "proposals", "answers", "results")
_PARAM_KEYS = (
    "params",
    "parameters",
    "architecture",
    "arch",
    "design",
    "candidate",
    "config",
    "op_list",
    "ops",
)
_RATIONALE_KEYS = ("rationale", "reason", "reasoning", "explanation", "why")


@dataclass(frozen=True)
class ParsedCandidate:
    """One candidate read from an answer: validated ``params``, or the ``error`` that says why it is not
    valid."""

    raw: Any
    params: dict[str, Any] | None = None
    error: str | None = None
    rationale: str = ""


@dataclass
class ParseResult:
    """Everything read from one answer. ``error`` is set when no candidate could be recognised at all."""

    candidates: list[ParsedCandidate] = field(default_factory=list)
    error: str | None = None

    @property
    def valid(self) -> list[ParsedCandidate]:
        return [c for c in self.candidates if c.params is not None]


# -- a tolerant JSON reader ----------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"""
    r"""|(?P<word>[A-Za-z_][\w.\-]*)|(?P<punct>[\[\]{}:,]))""",
    re.DOTALL,
)


def loads_tolerant(text: str) -> Any:
    """``json.loads`` that also reads single quotes, True/False/None, bare words and trailing commas.

    Raises ``ValueError`` for anything else. Nothing is evaluated: the text is re-tokenised into strict JSON.
    """
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unexpected character {text[pos : pos + 10]!r}")
        pos = m.end()
        if m.group("str") is not None:
            s = m.group("str")
            if s[0] == "'":
                s = json.dumps(s[1:-1].replace("\\'", "'").replace('\\"', '"'))
            out.append(s)
        elif m.group("num") is not None:
            out.append(m.group("num"))
        elif m.group("word") is not None:
            w = m.group("word")
            lit = {"true": "true", "false": "false", "null": "null", "none": "null"}.get(w.lower())
            out.append(
                lit if lit and w in ("true", "false", "null", "True", "False", "None") else json.dumps(w)
            )
        else:
            p = m.group("punct")
            if p in "]}" and out and out[-1] == ",":
                out.pop()  # trailing comma
            out.append(p)
    try:
        return json.loads("".join(out))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _blocks(text: str) -> list[tuple[int, int, Any]]:
    """Top-level balanced ``{...}``/``[...]`` spans of ``text`` that read as JSON-like values, in order.

    A span that does not read is searched inside for smaller spans. The search scans at most four times the
    answer's length, and :data:`~automl_kd.llm.bounds.SCAN_BUDGET`, characters in all (unbalanced brackets
    would make it quadratic).
    """
    found: list[tuple[int, int, Any]] = []
    budget = min(SCAN_BUDGET, 4 * len(text) + 4096)  # reading a valid answer costs twice its length
    opener = _OPENER.search(text)
    while opener is not None and budget > 0:
        i = opener.start()
        stop = min(len(text), i + budget)
        end = _match(text, i, stop)
        budget -= (end or stop) - i
        if end is not None:
            budget -= end - i  # what reading it costs
            try:
                found.append((i, end, loads_tolerant(text[i:end])))
                opener = _OPENER.search(text, end)
                continue
            except ValueError:
                pass  # look inside
        opener = _OPENER.search(text, i + 1)
    return found


_OPENER = re.compile(r"[\[{]")


def _match(text: str, start: int, stop: int) -> int | None:
    """Index after the bracket closing the one at ``start`` (quotes respected) before ``stop``, or None."""
    stack: list[str] = []
    quote: str | None = None
    i = start
    while i < stop:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote or (c == "\n" and quote == "'"):
                quote = None
        elif c == '"' or (c == "'" and not text[i - 1].isalnum()):
            quote = c
        elif c in "[{":
            stack.append("]" if c == "[" else "}")
        elif c in "]}":
            if not stack or stack.pop() != c:
                return None
            if not stack:
                return i + 1
        i += 1
    return None


# -- from values to candidate objects ------------------------------------------------------------------------
def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


Item = tuple[Any, str, bool]  # (candidate object, rationale, explicit: surely meant as one candidate)


def _items(value: Any, names: set[str], total: int, explicit: bool = False) -> list[Item]:
    """Candidate-like objects inside one decoded JSON value. Objects inside a mapping (``{"candidates":
    ...}``, ``{"params": ...}``) and the answer's whole JSON are explicit; a bare list found in prose is not,
    and may be one stage of a per-stage answer."""
    if isinstance(value, Mapping):
        for w in _WRAPPERS:
            if isinstance(value.get(w), list):
                return [it for v in value[w] for it in _items(v, names, total, True)] or [
                    (value[w], "", True)
                ]
        rationale = next((str(value[k]) for k in _RATIONALE_KEYS if isinstance(value.get(k), str)), "")
        for k in _PARAM_KEYS:
            if k in value and (not _is_scalar(value[k]) or isinstance(value[k], str)):
                return [(value[k], rationale, True)]  # a string: the design in the space's text form
        keys = {str(k).strip() for k in value}
        if keys & names or any(re.fullmatch(r"(?i)(stage|s)[\s_-]*\d", k) for k in keys):
            obj = {k: v for k, v in value.items() if str(k).strip() not in _RATIONALE_KEYS}
            return [(obj, rationale, True)]
        return []
    if isinstance(value, list) and value:
        if all(isinstance(v, Mapping) for v in value):
            return [it for v in value for it in _items(v, names, total, True)]
        if all(isinstance(v, list) for v in value) and (
            all(isinstance(x, list) for v in value for x in v)  # candidates in per-stage form
            or (len(value) > 1 and all(len(v) == total for v in value))  # candidates as flat lists
        ):
            return [(v, "", explicit) for v in value]
        return [(value, "", explicit)]
    return []


def _plausible(value: Any, dists: Mapping[str, BaseDistribution]) -> bool:
    """Whether ``value`` could be some parameter's value (or a choice index): filters unrelated prose
    lists."""
    for d in dists.values():
        if isinstance(d, CategoricalDistribution):
            if value in d.choices or (
                isinstance(value, str) and value.strip().lower() in {str(c).lower() for c in d.choices}
            ):
                return True
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(d.choices):
                return True
            if isinstance(value, str) and value.strip().isdigit() and int(value) < len(d.choices):
                return True
        elif (
            isinstance(d, IntDistribution | FloatDistribution)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and d.low <= value <= d.high
        ):
            return True
    # a space may read its own aliases (e.g. "id" for "skip"): any short word passes, numbers do not
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z_][\w.\-]{0,31}", value.strip()) is not None


def _mostly_plausible(values: list[Any], dists: Mapping[str, BaseDistribution]) -> bool:
    """At least half the values could be parameter values: a design with a typo stays (and gets a precise
    reason), an unrelated list such as a FLOPs window ``[270, 330]`` or a cost table does not."""
    return sum(_plausible(v, dists) for v in values) * 2 >= len(values)


def _length(value: Any) -> int:
    if isinstance(value, list):
        return (
            sum(_length(v) for v in value)
            if value and all(isinstance(v, list) for v in value)
            else len(value)
        )
    return 0


def _group_lists(lists: list[list[Any]], total: int) -> list[list[list[Any]]]:
    """Runs of consecutive scalar lists whose lengths add up to ``total`` (per-stage answers), left to
    right."""
    groups: list[list[list[Any]]] = []
    i = 0
    while i < len(lists):
        s = 0
        for j in range(i, len(lists)):
            s += len(lists[j])
            if s == total:
                groups.append(lists[i : j + 1])
                i = j + 1
                break
            if s > total:
                i += 1
                break
        else:
            break
    return groups


_LINE = re.compile(
    r"^[ \t]*[-*]?[ \t]*`?(?P<key>[A-Za-z_][\w.\-]*)`?[ \t]*[:=][ \t]*(?P<val>[^,;\n]+?)[ \t]*[,;]?[ \t]*$",
    re.M,
)


def _line_mapping(text: str, names: Sequence[str]) -> dict[str, Any] | None:
    found: dict[str, Any] = {}
    short = "\n".join(
        line for line in text.splitlines() if len(line) <= 200
    )  # long lines: quadratic for _LINE
    for m in _LINE.finditer(short):
        if m.group("key") in names:
            raw = m.group("val").strip().strip("`")
            try:
                found[m.group("key")] = loads_tolerant(raw)
            except ValueError:
                found[m.group("key")] = raw.strip("'\"")
    return found if len(found) == len(names) else None


# -- from candidate objects to parameters --------------------------------------------------------------------
def params_from_object(space: SearchSpace, obj: Any) -> dict[str, Any]:
    """Validated parameters of ``space`` from one decoded candidate object, or :class:`InvalidCandidate`."""
    if isinstance(obj, str):  # the space's text form ("01201120", an arch string)
        return space.decode(obj.strip())
    hook = getattr(space, "params_from_answer", None)
    if callable(hook):
        params: dict[str, Any] = hook(obj)
        return params
    dists = space.distributions()
    if isinstance(obj, Mapping):
        return space.validate({str(k).strip(): v for k, v in obj.items()})
    if isinstance(obj, list):
        flat = [v for s in obj for v in s] if obj and all(isinstance(s, list) for s in obj) else list(obj)
        if len(flat) != len(dists):
            raise InvalidCandidate(
                f"expected {len(dists)} values, one per parameter ({', '.join(dists)}), got {len(flat)}"
            )
        values = {}
        for (name, dist), v in zip(dists.items(), flat, strict=True):
            if (
                isinstance(dist, CategoricalDistribution)
                and v not in dist.choices
                and isinstance(v, int)
                and not isinstance(v, bool)
                and all(isinstance(c, str) for c in dist.choices)
                and 0 <= v < len(dist.choices)
            ):
                v = dist.choices[v]  # an index into string choices
            values[name] = v
        return space.validate(values)
    raise InvalidCandidate(f"expected a mapping of parameters or a list of values, got {obj!r:.80}")


def parse_answer(text: str, space: SearchSpace) -> ParseResult:
    """Every candidate in ``text`` (an LLM answer), each validated against ``space``.

    Example::

        result = parse_answer("Stage 1: [1,0,1,0,1,0] ...", space)
        for c in result.candidates:
            print(c.params or c.error)
    """
    if not text or not text.strip():
        return ParseResult(error="the answer is empty")
    why = unreadable(text)
    if why:
        return ParseResult(error=why)
    dists = space.distributions()
    names = set(dists)
    total = len(dists)
    blocks = _blocks(text)
    whole: Any = None
    with contextlib.suppress(ValueError):
        whole = loads_tolerant(text.strip())
    values = [whole] if whole is not None and not _is_scalar(whole) else [b[2] for b in blocks]

    objects: list[tuple[Any, str]] = []
    partial: list[list[Any]] = []
    for value in values:
        for obj, why, explicit in _items(value, names, total, explicit=value is whole):
            if explicit:
                objects.append((obj, why))
            elif isinstance(obj, list) and obj and all(_is_scalar(v) for v in obj) and len(obj) != total:
                if _mostly_plausible(obj, dists):
                    partial.append(obj)  # maybe one stage of a per-stage answer
            elif isinstance(obj, list) and _length(obj) != total and all(isinstance(v, list) for v in obj):
                partial.extend(
                    v for v in obj if all(_is_scalar(x) for x in v) and _mostly_plausible(v, dists)
                )
            else:
                objects.append((obj, why))
    if not objects:
        objects = [(t, "") for t in _text_forms(text, space)]
    if not objects and partial:
        objects = [(g, "") for g in _group_lists(partial, total)]
    if not objects:
        mapping = _line_mapping(text, list(dists))
        if mapping is not None:
            objects = [(mapping, "")]
    if not objects:
        sizes = ", ".join(str(len(p)) for p in partial[:12])
        found = f"; found lists of {sizes} values ({sum(len(p) for p in partial)} in all)" if partial else ""
        return ParseResult(
            error=f"no candidate found in the answer{found}; expected JSON with the {total} parameters "
            f"({', '.join(list(dists)[:4])}, ...) or {total} values in the space's list form"
        )
    prose = _prose(text, blocks)
    out: list[ParsedCandidate] = []
    seen: set[str] = set()
    for obj, why in objects:
        try:
            params = params_from_object(space, obj)
        except InvalidCandidate as exc:
            out.append(ParsedCandidate(raw=obj, error=str(exc), rationale=why))
            continue
        key = Candidate.from_params(space.name, params).key()
        if key in seen:
            continue  # the same design repeated within one answer
        seen.add(key)
        out.append(ParsedCandidate(raw=obj, params=params, rationale=why or prose))
    return ParseResult(candidates=out)


def _text_forms(text: str, space: SearchSpace) -> list[str]:
    """Every design in the space's text form (``SearchSpace.text_form``) written in ``text``, e.g. the
    ``22212220`` of "The best architecture is 22212220." (not inside a longer word or number)."""
    form = space.text_form()
    if form is None:
        return []
    core = form.pattern()[1:-1]  # unanchored
    return [m.group(0) for m in re.finditer(rf"(?<![\w|])(?:{core})(?![\w|])", text)]


def _prose(text: str, blocks: list[tuple[int, int, Any]], limit: int = 600) -> str:
    """The answer's words outside its lists and objects, shortened: the rationale of a prose answer."""
    parts, last = [], 0
    for start, end, _ in blocks:
        parts.append(text[last:start])
        last = end
    parts.append(text[last:])
    words = " ".join(" ".join(parts).split()).replace("```json", "").replace("```", "").strip()
    return words[:limit]


def answer_text(raw: str) -> str:
    """The answer inside a saved file: a chat-completion response, a message list, a message, or plain
    text."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):  # not JSON, or nested deeper than Python reads
        return raw
    if isinstance(obj, Mapping):
        if isinstance(obj.get("choices"), list) and obj["choices"]:
            msg = obj["choices"][0].get("message", {})
            return str(msg.get("content") or "")
        if isinstance(obj.get("content"), str) and "role" in obj:
            return obj["content"]
    if isinstance(obj, list) and obj and all(isinstance(m, Mapping) and "role" in m for m in obj):
        answers = [m for m in obj if m.get("role") == "assistant"]
        return str(answers[-1].get("content") or "") if answers else ""
    return raw


def parse_answer_file(space: SearchSpace, path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """``(candidates, errors)`` read from a saved answer (the ``automl-kd llm parse`` command).

    ``candidates`` are validated parameter mappings; ``errors`` say why each other candidate, or the whole
    answer, could not be used. The file holds an answer as plain text, a chat-completion response JSON, or a
    message list (the last assistant message is read).
    """
    text = answer_text(Path(path).read_text(encoding="utf-8"))
    result = parse_answer(text, space)
    errors = [result.error] if result.error else []
    errors += [f"candidate {i + 1}: {c.error}" for i, c in enumerate(result.candidates) if c.error]
    return [c.params for c in result.candidates if c.params is not None], errors
