"""The ``llm-evolution`` proposer: regularised evolution whose mutation operator is an LLM.

LLM-guided evolution in the manner of EvoPrompting (Chen et al. 2023, "EvoPrompting: Language Models for
Code-Level Neural Architecture Search") and LLMatic (Nasir et al. 2023, "LLMatic: Neural Architecture Search via
Large Language Models and Quality Diversity Optimization"): a classical evolutionary search keeps its population,
its tournament selection and its aging, and the language model takes the place of the random mutation. Each child
is asked of the model: the parent chosen by the tournament and the best designs so far are shown in the space's
own text form, and the model proposes one new design that changes the parent in one or two places. Where the model
gives nothing usable (an invalid or repeated design after its re-asks, an unreachable endpoint, a spent budget),
the classical operator fills in: a random one-parameter mutation of the same parent. The initial population is
the classical one (random designs), so with the same seed the first ``population`` proposals are those of
``evolution`` and a comparison of the two isolates what the model's mutations add.

Every trial records which operator made it (``llm`` or ``classical``), its parent and how many parameters the
child changes; the model's rounds are in the transcript log as for the ``llm`` proposer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from automl_kd.errors import AutomlKdError, BudgetExhausted, ConfigError
from automl_kd.hookspecs import hookimpl
from automl_kd.llm.client import LLMUnavailable
from automl_kd.llm.prompts import DefaultStrategy, RoundContext, describe_constraints, format_values
from automl_kd.llm.proposer import LLMProposer, NoValidCandidate
from automl_kd.proposer import HistoryEntry, Proposer
from automl_kd.space import Candidate, SearchSpace

from .evolution import RegularizedEvolution

log = logging.getLogger("automl_kd.llm")


class MutationStrategy(DefaultStrategy):
    """One child of a given parent per call: the parent and the best designs so far, in the space's text form."""

    name = "mutation"
    one_per_call = True

    def __init__(self, templates: Any, best: int = 5) -> None:
        super().__init__(templates)
        self.best = best
        #: set by :class:`LLMEvolution` before each round
        self.parent: HistoryEntry | None = None

    def _design(self, space: SearchSpace, entry: HistoryEntry) -> str:
        return space.encode(space.validate(entry.params))

    def start(self, ctx: RoundContext) -> list[dict[str, str]]:
        if self.parent is None:
            raise AutomlKdError("the mutation strategy needs a parent (it is used by llm-evolution)")
        sign = 1.0 if ctx.maximize else -1.0
        scored = [e for e in ctx.history if e.state == "complete" and e.value is not None]
        top = sorted(scored, key=lambda e: -sign * float(e.value or 0.0))[: self.best]
        lines = [f"- {self._design(ctx.space, e)}: {format_values(e, ctx.metric)}" for e in top]
        user = self.t.render(
            "mutation_user",
            space_description=ctx.space.describe(),
            objective=ctx.objective(),
            constraints=describe_constraints(ctx.constraints),
            best="\n".join(lines) or "(none yet)",
            parent=self._design(ctx.space, self.parent),
            parent_result=format_values(self.parent, ctx.metric),
            answer_format=self.answer_format(ctx.space),
        )
        return [
            {"role": "system", "content": self.t.render("default_system")},
            {"role": "user", "content": user},
        ]

    def reask(self, ctx: RoundContext, reasons: Sequence[str], missing: int) -> str:
        assert self.parent is not None
        return self.t.render(
            "mutation_reask",
            reasons="\n".join(f"- {r}" for r in reasons),
            parent=self._design(ctx.space, self.parent),
            answer_format=self.answer_format(ctx.space),
        )


def changed(parent: dict[str, Any], child: dict[str, Any]) -> int:
    """How many parameters ``child`` changes of ``parent``."""
    return sum(1 for k in set(parent) | set(child) if parent.get(k) != child.get(k))


class LLMEvolution(Proposer):
    """Regularised evolution (``population``, ``sample_size`` as for ``evolution``) with the LLM as its mutation
    operator, the classical mutation where the model fails. ``llm`` holds the options of the ``llm`` proposer
    (model, base_url, temperature, max_reasks, cache, budget, ...; its ``prompt`` and ``fallback`` are the
    hybrid's own); ``best`` is how many of the best designs the prompt shows beside the parent.

    Example (YAML)::

        search:
          proposer:
            name: llm-evolution
            options: {population: 10, sample_size: 3, llm: {model: smollm2, base_url: "http://127.0.0.1:8080/v1"}}
    """

    name = "llm-evolution"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = None,
        directions: Any = None,
        constraints: Any = None,
        run_dir: Any = None,
        should_stop: Callable[[], bool] | None = None,
        population: int = 20,
        sample_size: int = 5,
        best: int = 5,
        llm: dict[str, Any] | None = None,
    ) -> None:
        if best < 1:
            raise ConfigError(f"best must be >= 1, got {best}")
        options = dict(llm or {})
        for own in ("prompt", "fallback"):
            if own in options:
                raise ConfigError(
                    f"llm.{own}: set by llm-evolution (the mutation prompt, the classical operator)"
                )
        try:
            self.evo = RegularizedEvolution(space, seed, directions, population, sample_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            self.llm = LLMProposer(
                space,
                seed=seed,
                directions=directions,
                constraints=constraints,
                run_dir=run_dir,
                should_stop=should_stop,
                fallback="error",
                **options,
            )
        except TypeError as exc:
            raise ConfigError(f"llm: {exc}") from None
        strategy = MutationStrategy(self.llm.strategy.t, best=best)
        strategy.structured_output = self.llm.strategy.structured_output
        self.llm.strategy = strategy
        self.llm.batch_size = 1
        self.constraints = constraints
        self.should_stop = should_stop
        self._meta: dict[str, dict[str, Any]] = {}
        self.operators = {"llm": 0, "classical": 0, "initial": 0}

    @property
    def population(self) -> int:
        return self.evo.population

    def budget_exhausted(self) -> str | None:
        return None  # a spent LLM budget leaves the classical operator: the search goes on

    def proposal_meta(self, candidate: Candidate) -> dict[str, Any]:
        return self._meta.pop(candidate.key(), {})

    def propose(self, space: SearchSpace, history: Sequence[HistoryEntry], n: int) -> list[Candidate]:
        done = [h for h in history if h.state == "complete" and h.value is not None]
        if len(done) < self.evo.population:  # the classical initial population: random designs
            out = self.evo.propose(space, history, n)
            self.operators["initial"] += len(out)
            for c in out:
                self._meta[c.key()] = {"operator": "initial"}
            return out
        seen = {space.candidate(h.params).key() for h in history if h.state != "rejected"}
        out = []
        for _ in range(max(1, n)):
            parent = self.evo.select_parent(done)
            child, meta = self._child(space, history, parent, seen)
            seen.add(child.key())
            out.append(child)
            self._meta[child.key()] = meta
        return out

    def _child(
        self, space: SearchSpace, history: Sequence[HistoryEntry], parent: HistoryEntry, seen: set[str]
    ) -> tuple[Candidate, dict[str, Any]]:
        assert isinstance(self.llm.strategy, MutationStrategy)
        self.llm.strategy.parent = parent
        why = ""
        try:
            (cand,) = self.llm.propose(space, history, 1)
            if cand.key() not in seen:
                meta = self.llm.proposal_meta(cand)
                self.operators["llm"] += 1
                return cand, {
                    **meta,
                    "operator": "llm",
                    "parent": parent.number,
                    "changed": changed(parent.params, cand.params),
                }
            why = "the model's design was already taken"
        except BudgetExhausted as exc:
            why = f"LLM budget spent: {exc}"
        except (NoValidCandidate, LLMUnavailable) as exc:  # no usable design, or an endpoint that stays down
            if self.should_stop is not None and self.should_stop():
                raise  # the host is stopping: no classical child either
            why = f"{type(exc).__name__}: {exc}"
        finally:
            self.llm.strategy.parent = None
        params = self.evo.mutate(space, parent.params, seen)
        cand = space.candidate(params, rationale=f"classical mutation of trial {parent.number} ({why})")
        self.operators["classical"] += 1
        log.info("llm-evolution: classical mutation of trial %d (%s)", parent.number, why)
        return cand, {
            "operator": "classical",
            "parent": parent.number,
            "changed": changed(parent.params, params),
            "llm_failure": why,
        }


@hookimpl
def register_proposers(register: Any) -> None:
    register(
        "llm-evolution",
        LLMEvolution,
        description="regularised evolution with an LLM as its mutation operator (EvoPrompting, LLMatic)",
    )
