"""Prompt strategies and their templates.

Templates are text files in ``automl_kd/prompts`` with ``$name`` placeholders (:class:`string.Template`: no
code, no expressions). Any of them can be replaced from the config with ``templates: {name: path}``; a
replacement may use only the placeholders its original uses, which is checked when the proposer is built.

Strategies:

- ``default``: structured JSON answers, k candidates per call, a bounded history (the best k and the most
recent m)
  with the exact params/MACs of every past candidate and the reason each rejected one was rejected.
- ``genius-benchmark``: GENIUS's benchmark mode: stateless, one candidate per call, the whole history in every
  prompt as "<architecture> gives a <metric> of <value>".
- ``genius-imagenet``: GENIUS's ImageNet mode: a fresh conversation per round; round 1 asks analytical
questions
  and its answer becomes the "design principles" of later rounds, which list every past experiment (per-stage
  op lists, cost, metric). Re-asks (constraints, duplicates, unreadable answers) stay in the round's
  conversation.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from automl_kd.errors import ConfigError
from automl_kd.proposer import HistoryEntry
from automl_kd.space import Cost, SearchSpace

#: every template and the placeholders it may use
TEMPLATES: dict[str, frozenset[str]] = {
    "default_system": frozenset(),
    "default_user": frozenset(
        {"space_description", "objective", "constraints", "history", "history_note", "n", "answer_format"}
    ),
    "default_reask": frozenset({"reasons", "n", "answer_format"}),
    "mutation_user": frozenset(
        {"space_description", "objective", "constraints", "best", "parent", "parent_result", "answer_format"}
    ),
    "mutation_reask": frozenset({"reasons", "parent", "answer_format"}),
    "genius_benchmark_system": frozenset(),
    "genius_benchmark_user": frozenset(
        {"space_description", "objective", "constraints", "answer_example", "experiments"}
    ),
    "genius_benchmark_experiments": frozenset({"experiments", "metric"}),
    "genius_reask": frozenset({"reasons", "answer_example"}),
    "genius_imagenet_system": frozenset(),
    "genius_imagenet_first": frozenset({"space_description", "objective", "constraints", "answer_example"}),
    "genius_imagenet_next": frozenset(
        {"space_description", "objective", "constraints", "answer_example", "principles", "experiments"}
    ),
}


class Templates:
    """The packaged templates, with user replacements (``{name: path}``) checked against :data:`TEMPLATES`."""

    def __init__(self, overrides: Mapping[str, str] | None = None) -> None:
        self.text: dict[str, str] = {}
        for name in TEMPLATES:
            self.text[name] = (resources.files("automl_kd") / "prompts" / f"{name}.md").read_text("utf-8")
        for name, path in (overrides or {}).items():
            if name not in TEMPLATES:
                raise ConfigError(
                    f"templates: unknown template {name!r}; templates are: {', '.join(TEMPLATES)}"
                )
            p = Path(path).expanduser()
            if not p.is_file():
                raise ConfigError(f"templates.{name}: no such file {str(p)!r}")
            self.text[name] = p.read_text(encoding="utf-8")
        for name, text in self.text.items():
            try:
                used = {
                    m.group("named") or m.group("braced")
                    for m in string.Template.pattern.finditer(text)
                    if m.group("named") or m.group("braced")
                }
            except ValueError as exc:
                raise ConfigError(f"templates.{name}: {exc}") from None
            unknown = sorted(used - TEMPLATES[name])
            if unknown:
                allowed = ", ".join(f"${v}" for v in sorted(TEMPLATES[name])) or "none"
                raise ConfigError(f"templates.{name}: unknown placeholder ${unknown[0]}; allowed: {allowed}")

    def render(self, name: str, **values: Any) -> str:
        return (
            string.Template(self.text[name]).safe_substitute({k: str(v) for k, v in values.items()}).strip()
        )


@dataclass
class RoundContext:
    """What a strategy needs to write the prompts of one round."""

    space: SearchSpace
    history: Sequence[HistoryEntry]
    n: int
    directions: Sequence[str]
    constraints: Any
    metric: str
    history_mode: str
    history_best: int
    history_recent: int
    cost_of: Callable[[Mapping[str, Any]], Cost | None]

    @property
    def maximize(self) -> bool:
        return not self.directions or str(self.directions[0]).lower().endswith("maximize")

    def objective(self) -> str:
        word = "maximize" if self.maximize else "minimize"
        return f"{word} the {self.metric} ({'higher' if self.maximize else 'lower'} is better)"


# -- shared rendering ----------------------------------------------------------------------------------------
def describe_constraints(constraints: Any) -> str:
    """Plain words for a constraints object (``describe()``, or ``macs``/``max_params`` attributes), or
    'none'."""
    if constraints is None:
        return "none."
    if callable(getattr(constraints, "describe", None)):
        return str(constraints.describe())
    parts = []
    macs = getattr(constraints, "macs", None)
    if macs:
        parts.append(f"MACs must lie in [{macs[0] / 1e6:.1f}M, {macs[1] / 1e6:.1f}M]")
    max_params = getattr(constraints, "max_params", None)
    if max_params:
        parts.append(f"at most {max_params / 1e6:.3f}M parameters")
    return ("; ".join(parts) + ".") if parts else "none."


def format_cost(cost: Cost | None) -> str:
    if cost is None:
        return "cost unknown"
    return f"{cost.params / 1e6:.3f}M params, {cost.macs / 1e6:.1f}M MACs"


def format_values(entry: HistoryEntry, metric: str) -> str:
    if not entry.values:
        return f"no {metric}"
    if len(entry.values) == 1:
        return f"{metric} of {entry.values[0]:.6g}"
    return "objectives (" + ", ".join(f"{v:.6g}" for v in entry.values) + ")"


def select_history(ctx: RoundContext) -> tuple[list[HistoryEntry], str]:
    """The entries to show and a note saying which (``full``, or the best k plus the most recent m)."""
    entries = list(ctx.history)
    if ctx.history_mode == "full" or len(entries) <= ctx.history_best + ctx.history_recent:
        return entries, f"all {len(entries)}"
    sign = 1.0 if ctx.maximize else -1.0
    scored = [e for e in entries if e.state == "complete" and e.value is not None]
    best = sorted(scored, key=lambda e: -sign * float(e.value or 0.0))[: ctx.history_best]
    recent = entries[-ctx.history_recent :] if ctx.history_recent else []
    keep = {e.number for e in best} | {e.number for e in recent}
    shown = [e for e in entries if e.number in keep]
    return shown, (
        f"the best {len(best)} and the {len(recent)} most recent of {len(entries)} trials, {len(shown)} shown"
    )


def stage_form(space: SearchSpace, params: Mapping[str, Any]) -> str:
    """GENIUS's per-stage op-id lines for spaces that have ``stage_ids``, else the space's text form."""
    stage_ids = getattr(space, "stage_ids", None)
    if callable(stage_ids):
        return "\n".join(f"Stage {i + 1}: {json.dumps(ids)}" for i, ids in enumerate(stage_ids(params)))
    return space.encode(params)


def answer_example(space: SearchSpace) -> str:
    """The answer form to show: per-stage lines of placeholders (not a design the LLM could copy), else an
    example in the space's text form."""
    stage_ids = getattr(space, "stage_ids", None)
    if callable(stage_ids):
        example = space.sample(random.Random(0))
        return "\n".join(
            f"Stage {i + 1}: [" + ", ".join(["<op id>"] * len(ids)) + "]"
            for i, ids in enumerate(stage_ids(example))
        )
    return space.encode(space.sample(random.Random(0)))


RATIONALE_MAX_CHARS = 200  # a structured answer's rationale: one sentence, so that the answer is bounded


def params_schema(space: SearchSpace) -> dict[str, Any]:
    """JSON schema of one parameter mapping of ``space`` (enums for categorical parameters, bounds for
    numbers)."""
    props: dict[str, Any] = {}
    for name, d in space.distributions().items():
        if isinstance(d, CategoricalDistribution):
            props[name] = {"enum": list(d.choices)}
        elif isinstance(d, IntDistribution):
            props[name] = {"type": "integer", "minimum": d.low, "maximum": d.high}
        elif isinstance(d, FloatDistribution):
            props[name] = {"type": "number", "minimum": d.low, "maximum": d.high}
        else:
            props[name] = {}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


#: the field of a structured answer that holds a design in the space's text form
ANSWER_FIELD = "architecture"
#: the longest ``pattern`` sent: beyond it the tried designs are no longer excluded from the grammar
MAX_PATTERN_CHARS = 65536


def text_schema(space: SearchSpace, exclude: Collection[str] = ()) -> dict[str, Any] | None:
    """JSON schema of one design in the space's text form (a string with the form's ``pattern`` and
    ``maxLength``), without the texts in ``exclude`` when the pattern stays under :data:`MAX_PATTERN_CHARS`;
    None when the space has no text form."""
    form = space.text_form()
    if form is None:
        return None
    pattern = form.pattern()
    if exclude and len(exclude) < form.size():
        narrower = form.pattern(exclude)
        if len(narrower) <= MAX_PATTERN_CHARS:
            pattern = narrower
    return {"type": "string", "pattern": pattern, "maxLength": form.max_length()}


def design_schema(space: SearchSpace, exclude: Collection[str] = ()) -> tuple[str, dict[str, Any]]:
    """The field and the schema of one design in a structured answer: ``architecture``, one string of the
    space's text form, where the space has one; else ``params``, an object of its parameters."""
    text = text_schema(space, exclude)
    return (ANSWER_FIELD, text) if text is not None else ("params", params_schema(space))


def answer_schema(space: SearchSpace, n: int | None = None, exclude: Collection[str] = ()) -> dict[str, Any]:
    """JSON schema of the default strategy's answer: ``{"candidates": [{"architecture": "...", "rationale":
    "..."}]}`` (``params: {...}`` for a space without a text form); with ``n``, exactly ``n`` candidates
    (``minItems``/``maxItems``, which bound the answer's length on grammar-based servers and are dropped for
    OpenAI's strict mode)."""
    field, design = design_schema(space, exclude)
    item = {
        "type": "object",
        "properties": {
            field: design,
            "rationale": {"type": "string", "maxLength": RATIONALE_MAX_CHARS},
        },
        "required": [field, "rationale"],
        "additionalProperties": False,
    }
    items: dict[str, Any] = {"type": "array", "items": item}
    if n is not None:
        items.update(minItems=n, maxItems=n)
    return {
        "type": "object",
        "properties": {"candidates": items},
        "required": ["candidates"],
        "additionalProperties": False,
    }


def schema_max_chars(schema: Mapping[str, Any]) -> int | None:
    """The longest compact JSON text ``schema`` admits, in characters; None when it has no bound (a string
    without ``maxLength``, an array without ``maxItems``, a number without bounds)."""
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "integer" and "minimum" in schema and "maximum" in schema:
        return max(len(str(int(schema["minimum"]))), len(str(int(schema["maximum"]))))
    if kind == "number":
        return 24  # repr of a double
    if kind == "boolean":
        return 5
    if kind == "string":
        limit = schema.get("maxLength")
        return None if limit is None else 2 * int(limit) + 2  # every character may need an escape
    if kind == "array":
        limit = schema.get("maxItems")
        inner = schema_max_chars(schema.get("items", {}))
        return None if limit is None or inner is None else int(limit) * (inner + 1) + 2
    if kind == "object":
        total = 2
        for key, sub in schema.get("properties", {}).items():
            inner = schema_max_chars(sub)
            if inner is None:
                return None
            total += len(json.dumps(key)) + 2 + inner
        return total
    return None


def max_tokens_for(schema: Mapping[str, Any] | None) -> int | None:
    """An upper bound on the tokens of an answer that follows ``schema`` (None: no bound known).

    JSON of short keys, digits and enum words runs at 2-4 characters a token in the tokenizers of common
    chat models; a bound of 0.75 tokens a character over the longest compact text, plus room for the
    whitespace a grammar allows between items, never cuts a valid answer and stops a runaway one early.
    """
    chars = None if schema is None else schema_max_chars(schema)
    if chars is None:
        return None
    return int(chars * 0.75) + 64


# -- strategies ----------------------------------------------------------------------------------------------
class PromptStrategy:
    """Writes the messages of a round and its re-asks. Subclasses set the class attributes."""

    name: ClassVar[str] = ""
    one_per_call: ClassVar[bool] = False  # GENIUS asks for one candidate per call
    structured: ClassVar[bool] = False  # ask for JSON-schema structured output
    default_history: ClassVar[str] = "full"

    def __init__(self, templates: Templates) -> None:
        self.t = templates
        #: whether the answer is constrained by the schema (the proposer sets it from ``structured_output``)
        self.structured_output = True

    def start(self, ctx: RoundContext) -> list[dict[str, str]]:
        raise NotImplementedError

    def reask(self, ctx: RoundContext, reasons: Sequence[str], missing: int) -> str:
        raise NotImplementedError

    def schema(
        self, space: SearchSpace, n: int | None = None, exclude: Collection[str] = ()
    ) -> dict[str, Any] | None:
        """The answer's JSON schema for ``n`` candidates, without the designs whose texts are in ``exclude``
        where the space's text form allows (None: the strategy asks for prose)."""
        return answer_schema(space, n, exclude) if self.structured else None

    def end_round(self, round_index: int, first_answer: str) -> None:
        """Called after each round with the text of its first answer."""

    def state(self) -> dict[str, Any]:
        return {}


class DefaultStrategy(PromptStrategy):
    """Structured JSON answers, k candidates per call, exact costs in a bounded history."""

    name = "default"
    structured = True
    default_history = "best-recent"

    def answer_format(self, space: SearchSpace) -> str:
        """The answer's form, in the words of the schema: one string of the space's text form, else an object
        of its parameters."""
        if space.text_form() is not None:
            design: Any = space.encode(space.sample(random.Random(0)))
            field = ANSWER_FIELD
        else:
            design, field = dict.fromkeys(space.distributions(), "<value>"), "params"
        return json.dumps({"candidates": [{field: design, "rationale": "one sentence: why this design"}]})

    def start(self, ctx: RoundContext) -> list[dict[str, str]]:
        shown, note = select_history(ctx)
        lines = []
        for e in shown:
            reason = e.reason.removeprefix(f"{e.state}: ")
            state = f"{e.state}: {reason}" if reason else e.state
            lines.append(
                f"- trial {e.number} ({state}): {json.dumps(e.params, separators=(',', ':'))} | "
                f"{format_cost(ctx.cost_of(e.params))} | {format_values(e, ctx.metric)}"
            )
        user = self.t.render(
            "default_user",
            space_description=ctx.space.describe(),
            objective=ctx.objective(),
            constraints=describe_constraints(ctx.constraints),
            history="\n".join(lines) or "(none yet)",
            history_note=note,
            n=ctx.n,
            answer_format=self.answer_format(ctx.space),
        )
        return [
            {"role": "system", "content": self.t.render("default_system")},
            {"role": "user", "content": user},
        ]

    def reask(self, ctx: RoundContext, reasons: Sequence[str], missing: int) -> str:
        return self.t.render(
            "default_reask",
            reasons="\n".join(f"- {r}" for r in reasons),
            n=missing,
            answer_format=self.answer_format(ctx.space),
        )


class GeniusBenchmarkStrategy(PromptStrategy):
    """GENIUS benchmark mode: stateless, the whole history in each prompt, one candidate per call."""

    name = "genius-benchmark"
    one_per_call = True
    structured = True  # the answer is one design: with structured output, a JSON object of its parameters

    def schema(
        self, space: SearchSpace, n: int | None = None, exclude: Collection[str] = ()
    ) -> dict[str, Any] | None:
        """One design: ``{"architecture": "<the space's text form>"}``, or a JSON object of the space's
        parameters for a space without a text form (GENIUS's prose with ``structured_output: off``)."""
        text = text_schema(space, exclude)
        if text is None:
            return params_schema(space)
        return {
            "type": "object",
            "properties": {ANSWER_FIELD: text},
            "required": [ANSWER_FIELD],
            "additionalProperties": False,
        }

    def example(self, space: SearchSpace) -> str:
        """The example answer of the prompt, in the form the schema allows: ``{"architecture": "01201120"}``
        under structured output, GENIUS's bare text form without it."""
        text = space.encode(space.sample(random.Random(0)))
        if self.structured_output and space.text_form() is not None:
            return json.dumps({ANSWER_FIELD: text})
        return text

    def start(self, ctx: RoundContext) -> list[dict[str, str]]:
        shown, _ = select_history(ctx)
        done = [e for e in shown if e.state == "complete" and e.values]
        experiments = ""
        if done:
            lines = "\n".join(
                f"{ctx.space.encode(e.params)} gives a {format_values(e, ctx.metric)}" for e in done
            )
            experiments = (
                "\n"
                + self.t.render("genius_benchmark_experiments", experiments=lines, metric=ctx.metric)
                + "\n"
            )
        user = self.t.render(
            "genius_benchmark_user",
            space_description=ctx.space.describe(),
            objective=ctx.objective(),
            constraints=describe_constraints(ctx.constraints),
            answer_example=self.example(ctx.space),
            experiments=experiments,
        )
        return [
            {"role": "system", "content": self.t.render("genius_benchmark_system")},
            {"role": "user", "content": user},
        ]

    def reask(self, ctx: RoundContext, reasons: Sequence[str], missing: int) -> str:
        return self.t.render(
            "genius_reask",
            reasons="\n".join(reasons),
            answer_example=self.example(ctx.space),
        )


class GeniusImageNetStrategy(PromptStrategy):
    """GENIUS ImageNet mode: design principles from round 1, every experiment listed, re-asks in the round."""

    name = "genius-imagenet"
    one_per_call = True

    def __init__(self, templates: Templates) -> None:
        super().__init__(templates)
        self.principles: str | None = None

    def start(self, ctx: RoundContext) -> list[dict[str, str]]:
        common = {
            "space_description": ctx.space.describe(),
            "objective": ctx.objective(),
            "constraints": describe_constraints(ctx.constraints),
            "answer_example": answer_example(ctx.space),
        }
        system = {"role": "system", "content": self.t.render("genius_imagenet_system")}
        if self.principles is None:
            return [system, {"role": "user", "content": self.t.render("genius_imagenet_first", **common)}]
        shown, _ = select_history(ctx)
        blocks = []
        for i, e in enumerate([e for e in shown if e.state == "complete" and e.values], start=1):
            blocks.append(
                f"- Experiment{i} (trial {e.number})\n{stage_form(ctx.space, e.params)}\nThis design has "
                f"{format_cost(ctx.cost_of(e.params))}; it achieved a {format_values(e, ctx.metric)}."
            )
        user = self.t.render(
            "genius_imagenet_next",
            principles=self.principles,
            experiments="\n\n".join(blocks) or "(none yet)",
            **common,
        )
        return [system, {"role": "user", "content": user}]

    def reask(self, ctx: RoundContext, reasons: Sequence[str], missing: int) -> str:
        return self.t.render(
            "genius_reask", reasons="\n".join(reasons), answer_example=answer_example(ctx.space)
        )

    def end_round(self, round_index: int, first_answer: str) -> None:
        if self.principles is None and first_answer.strip():
            self.principles = first_answer.strip()[:6000]

    def state(self) -> dict[str, Any]:
        return {"principles_from_round_1": self.principles is not None}


STRATEGIES: dict[str, type[PromptStrategy]] = {
    s.name: s for s in (DefaultStrategy, GeniusBenchmarkStrategy, GeniusImageNetStrategy)
}
