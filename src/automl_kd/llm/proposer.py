"""The ``llm`` proposer: GENIUS-style architecture search with any OpenAI-compatible chat endpoint.

One *round* answers one ``propose()`` call: the prompt strategy writes a conversation, the LLM answers, every
candidate in the answer is decoded by the space, validated, costed, checked against the hard constraints and
the history, and whatever is wrong is sent back in the same conversation with the precise reason ("MACs 347.0M
exceed the upper bound 330.0M by 17.0M", "already evaluated in trial 12") until enough candidates are good or
the re-asks are used up. The whole conversation, with each call's parsed result, reasons, tokens, latency and
retries, is the ``proposal_meta`` stored with each trial, and one JSON line per round goes to
``<run_dir>/llm_transcripts.jsonl`` even when the round fails.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from automl_kd.errors import AutomlKdError, ConfigError, InvalidCandidate
from automl_kd.proposer import HistoryEntry, Proposer
from automl_kd.space import Candidate, Cost, SearchSpace, sample_value

from .accounting import Accountant, Usage
from .cache import ResponseCache
from .client import ChatClient, ContextOverflow
from .forms import StructuredMode
from .parser import ParseResult, parse_answer
from .prompts import STRATEGIES, RoundContext, Templates, max_tokens_for, params_schema

log = logging.getLogger("automl_kd.llm")
PROSE_MIN_TOKENS = 1024  # the least max_tokens of a prose answer


class NoValidCandidate(AutomlKdError):
    """The LLM gave no usable candidate within the re-asks, and ``fallback`` is ``error``."""


@dataclass
class AnswerStats:
    """What the model's answers in one search held: rounds, first answers with a new valid candidate, the
    candidates of every answer by status, and the rounds that ended in the fallback. The duplicate share is
    ``duplicate / candidates``."""

    rounds: int = 0
    first_new_valid: int = 0
    fallbacks: int = 0
    candidates: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def count(self, screened: Sequence[Mapping[str, Any]], first: bool) -> None:
        for entry in screened:
            status = str(entry.get("status", "?"))
            self.candidates += 1
            self.by_status[status] = self.by_status.get(status, 0) + 1
        if first and any(e.get("status") == "accepted" for e in screened):
            self.first_new_valid += 1

    def as_dict(self) -> dict[str, Any]:
        dup = self.by_status.get("duplicate", 0)
        return {
            "rounds": self.rounds,
            "first_new_valid": self.first_new_valid,
            "fallbacks": self.fallbacks,
            "candidates": self.candidates,
            "by_status": dict(self.by_status),
            "duplicate_share": round(dup / self.candidates, 4) if self.candidates else None,
        }


class LLMProposer(Proposer):
    """Candidates from an LLM (GENIUS, Zheng et al. 2023), with validation, re-asks, caching and a budget.

    Host arguments: ``space``, ``seed``, ``directions``, ``constraints`` (an object whose ``check(cost)``
    returns a reason or None), ``run_dir`` (default home of the response cache and the transcript log) and
    ``should_stop`` (true once the host is asked to stop: a request under way is abandoned).
    Every other argument is a user option (``search.proposer.options``); docs/llm.md lists them.

    Example::

        proposer = LLMProposer(space, model="gpt-4o-mini", base_url="http://127.0.0.1:8000/v1",
        run_dir="runs/r1") candidates = proposer.propose(space, history=[], n=proposer.batch_size)
    """

    name = "llm"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = None,
        directions: Any = None,
        constraints: Any = None,
        run_dir: Any = None,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        prompt: Literal["default", "genius-benchmark", "genius-imagenet"] = "default",
        candidates_per_call: int = 4,
        temperature: float | None = 0.0,
        top_p: float | None = None,
        max_tokens: int | None = 4096,
        send_seed: bool = True,
        history: Literal["auto", "full", "best-recent"] = "auto",
        history_best: int = 10,
        history_recent: int = 10,
        metric: str = "validation accuracy",
        templates: dict[str, str] | None = None,
        max_reasks: int = 3,
        reask_temperatures: tuple[float, ...] = (0.7, 1.0),
        exclude_tried: bool = True,
        structured_output: StructuredMode = "auto",
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_total_tokens: int | None = None,
        max_cost_usd: float | None = None,
        max_requests: int | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
        cache: Literal["off", "record", "replay"] = "record",
        cache_dir: str | None = None,
        transcript_log: str | None = None,
        fallback: Literal["random", "error"] = "random",
        extra_body: dict[str, Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if prompt not in STRATEGIES:
            raise ConfigError(f"prompt: unknown strategy {prompt!r}; use one of {', '.join(STRATEGIES)}")
        for key, value, low in (
            ("candidates_per_call", candidates_per_call, 1),
            ("max_reasks", max_reasks, 0),
            ("history_best", history_best, 0),
            ("history_recent", history_recent, 0),
        ):
            if value < low:
                raise ConfigError(f"{key} must be >= {low}, got {value}")
        if temperature is not None and temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        if any(t < 0 for t in reask_temperatures):
            raise ConfigError(f"reask_temperatures must be >= 0, got {list(reask_temperatures)}")
        self.space = space
        self.seed = seed
        self.directions = list(directions) if directions else None
        self.constraints = constraints
        self.model = model
        self.strategy = STRATEGIES[prompt](Templates(templates))
        self.strategy.structured_output = structured_output != "off"
        self.reask_temperatures = tuple(float(t) for t in reask_temperatures)
        self.exclude_tried = exclude_tried
        self.batch_size = 1 if self.strategy.one_per_call else candidates_per_call
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.request_seed = seed if send_seed else None
        self.history_mode = self.strategy.default_history if history == "auto" else history
        self.history_best, self.history_recent = history_best, history_recent
        self.metric = metric
        self.max_reasks = max_reasks
        self.fallback = fallback
        run = Path(run_dir) if run_dir else None
        cache_path = Path(cache_dir) if cache_dir else (run / "llm_cache" if run else None)
        if cache == "replay" and cache_path is None:
            raise ConfigError("cache: replay needs cache_dir (or a run directory holding llm_cache)")
        self.cache = ResponseCache(cache_path, cache) if cache != "off" and cache_path is not None else None
        self.transcript_log = (
            Path(transcript_log) if transcript_log else (run / "llm_transcripts.jsonl" if run else None)
        )
        self.accountant = Accountant(model, prices or {}, max_total_tokens, max_cost_usd, max_requests)
        self.client = ChatClient(
            model,
            base_url=base_url,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            backoff_max_s=backoff_max_s,
            structured_output=structured_output,
            cache=self.cache,
            extra_body=extra_body,
            jitter_seed=seed,
            should_stop=should_stop,  # the host's stop flag (SIGTERM, Ctrl-C) ends a request at once
        )
        self._rng = random.Random(seed)
        self._round = 0
        self._proposed: set[str] = set()
        self._proposed_text: set[str] = set()  # their text forms, excluded from the grammar
        self._infeasible_text: set[str] = set()  # designs an answer gave that broke a hard constraint
        self.answers = AnswerStats()
        self._meta: dict[str, dict[str, Any]] = {}
        self._costs: dict[str, Cost | None] = {}

    # -- public helpers --------------------------------------------------------------------------------------
    def budget_exhausted(self) -> str | None:
        """Why the budget is spent, or None: a host may check this before asking for a trial."""
        return self.accountant.exhausted()

    def proposal_meta(self, candidate: Candidate) -> dict[str, Any]:
        return self._meta.pop(candidate.key(), {})

    def cost_of(self, params: Mapping[str, Any]) -> Cost | None:
        """The space's cost of ``params`` (cached), or None when the space cannot say."""
        try:
            key = Candidate.from_params(self.space.name, params).key()
        except TypeError:
            return None
        if key not in self._costs:
            try:
                self._costs[key] = self.space.cost(params)
            except (NotImplementedError, InvalidCandidate, KeyError, ValueError):
                self._costs[key] = None
        return self._costs[key]

    # -- the round -------------------------------------------------------------------------------------------
    def propose(self, space: SearchSpace, history: Sequence[HistoryEntry], n: int) -> list[Candidate]:
        self.space = space
        self.accountant.check()
        n = 1 if self.strategy.one_per_call else max(1, n)
        self._round += 1
        ctx = RoundContext(
            space=space,
            history=history,
            n=n,
            directions=self.directions or ["maximize"],
            constraints=self.constraints,
            metric=self.metric,
            history_mode=self.history_mode,
            history_best=self.history_best,
            history_recent=self.history_recent,
            cost_of=self.cost_of,
        )
        known = self._known(space, history)
        messages = self.strategy.start(ctx)
        record: dict[str, Any] = {
            "round": self._round,
            "time": time.time(),
            "strategy": self.strategy.name,
            "model": self.model,
            "endpoint": self.client.endpoint,
            "messages": messages,
            "calls": [],
            "outcome": "running",
        }
        accepted: list[Candidate] = []
        usage = Usage()
        reasks = 0
        refused: set[str] = set()  # texts of this round's duplicates: not allowed again in the round
        try:
            while True:
                if self.accountant.exhausted() and accepted:
                    record["stopped"] = "budget spent; returning the candidates accepted so far"
                    break
                self.accountant.check()
                attempt = len(record["calls"])  # 0: the round's first ask; k: its k-th re-ask
                tried = (
                    self._tried(space, history, accepted) | refused | self._infeasible_text
                    if self._excludes(space)
                    else set()
                )
                schema = self.strategy.schema(space, n - len(accepted), tried)
                temperature, seed = self._sampling(attempt)
                try:
                    result = self.client.complete(
                        list(messages),
                        temperature=temperature,
                        top_p=self.top_p,
                        max_tokens=self._max_tokens(schema),
                        seed=seed,
                        schema=schema,
                    )
                except ContextOverflow as exc:
                    if not record["calls"]:  # the first prompt alone is too long: nothing a re-ask can fix
                        raise ContextOverflow(
                            f"{exc}; the prompt alone is too long: use history: best-recent with smaller "
                            "history_best/history_recent, or a model with a longer context"
                        ) from None
                    messages.pop()  # the re-ask that did not fit
                    record["stopped"] = f"the re-ask did not fit the model's context: {exc}"
                    break
                call_usage = self.accountant.charge(result.prompt_tokens, result.completion_tokens)
                usage = usage + call_usage
                messages.append({"role": "assistant", "content": result.content})
                parsed = parse_answer(result.content, space)
                finish = "length" if result.truncated else result.finish_reason
                reasons, screened = self._screen(space, parsed, known, accepted, n, finish)
                self.answers.count(screened, first=attempt == 0)
                for e in screened:
                    if e["params"] is not None and e.get("status") == "duplicate":
                        refused.add(space.encode(e["params"]))
                    elif e["params"] is not None and e.get("status") == "rejected":
                        self._infeasible_text.add(space.encode(e["params"]))  # its cost never changes
                record["calls"].append(
                    {
                        **result.as_dict(),
                        "temperature": temperature,
                        "seed": seed,
                        # the grammar sent (in the form structured_form names), or None for prose
                        "schema": schema if result.structured else None,
                        "sent_messages": len(messages) - 1,
                        "cost_usd": round(call_usage.cost_usd, 8),
                        "parsed": screened,
                        "reasons": reasons,
                    }
                )
                if len(accepted) >= n or reasks >= self.max_reasks * n:
                    break
                previous = [m["content"] for m in messages[:-1] if m["role"] == "assistant"]
                if (
                    previous
                    and previous[-1] == result.content
                    and temperature == 0.0
                    and (self._sampling(attempt + 1)[0] == 0.0)
                ):
                    # the same answer again at temperature 0: a further re-ask would get it a third time
                    record["stopped"] = (
                        "the model repeated its previous answer word for word; no more re-asks"
                    )
                    break
                if not reasons:  # e.g. an empty candidate list: still say what is missing
                    reasons.append(f"The answer gave {len(accepted)} usable candidates of the {n} asked for.")
                messages.append(
                    {"role": "user", "content": self.strategy.reask(ctx, reasons, n - len(accepted))}
                )
                reasks += 1
            record["outcome"] = "ok" if accepted else "no valid candidate"
        except BaseException as exc:
            record["outcome"] = f"error: {type(exc).__name__}: {exc}"
            raise
        finally:
            record.update(reasks=reasks, usage=usage.as_dict(), http_requests=self.client.http_requests)
            self._log(record)
        first = next((m["content"] for m in messages if m["role"] == "assistant"), "")
        self.strategy.end_round(self._round, first)
        fallback = False
        if not accepted:
            accepted = [self._fallback(space, known, reasks)]
            fallback = True
        self.answers.rounds += 1
        self.answers.fallbacks += fallback
        self._remember(accepted, record, usage, reasks, fallback)
        return accepted

    def _sampling(self, attempt: int) -> tuple[float | None, int | None]:
        """Temperature and seed of a round's ``attempt``-th call: the options for the first ask; for re-ask
        ``k``, the ``k``-th entry of ``reask_temperatures`` (the last one for later re-asks; never below
        ``temperature``) and the request seed plus ``k``, so that a re-ask can change a greedy answer while a
        replay sends the same requests."""
        if attempt == 0:
            return self.temperature, self.request_seed
        temperature = self.temperature
        if temperature is not None and self.reask_temperatures:
            temperature = max(
                temperature, self.reask_temperatures[min(attempt, len(self.reask_temperatures)) - 1]
            )
        return temperature, None if self.request_seed is None else self.request_seed + attempt

    def _excludes(self, space: SearchSpace) -> bool:
        return self.exclude_tried and space.text_form() is not None

    def _tried(
        self, space: SearchSpace, history: Sequence[HistoryEntry], accepted: list[Candidate]
    ) -> set[str]:
        """The text forms of every design tried or proposed so far (``exclude_tried``: they are left out of the
        answer's grammar where the space has a text form and the pattern stays small, with the duplicates of the
        round's earlier answers and every design an answer gave that broke a hard constraint)."""
        if not self._excludes(space):
            return set()
        texts = set(self._proposed_text)
        for params in [h.params for h in history] + [c.params for c in accepted]:
            try:
                texts.add(space.encode(space.validate(params)))
            except (InvalidCandidate, TypeError, KeyError, ValueError):
                continue  # a trial of another space, or one that failed before sampling
        return texts

    def _max_tokens(self, schema: dict[str, Any] | None) -> int | None:
        """``max_tokens``, bounded by the size of the answer asked for: the longest text the answer's schema
        admits when structured output is on; for prose (the GENIUS strategies, ``structured_output: off``)
        twice that of the schema (or of one candidate), at least :data:`PROSE_MIN_TOKENS`, leaving room for
        the reasoning around the design. The bound does not depend on what the endpoint negotiated, so a
        replay sends the same requests as its recording."""
        structured = schema is not None and self.client.structured_output != "off"
        bound = max_tokens_for(schema if schema is not None else params_schema(self.space))
        if bound is not None and not structured:
            bound = max(PROSE_MIN_TOKENS, 2 * bound)
        if bound is None:
            return self.max_tokens
        return bound if self.max_tokens is None else min(self.max_tokens, bound)

    def _known(self, space: SearchSpace, history: Sequence[HistoryEntry]) -> dict[str, str]:
        """Canonical key -> how it was already tried, for every past trial of this space."""
        known: dict[str, str] = {}
        for h in history:
            try:
                key = space.candidate(h.params).key()
            except (InvalidCandidate, TypeError):
                continue  # a trial of another space, or one that failed before sampling
            if h.state in ("rejected", "failed") and h.reason:
                known[key] = f"was already tried in trial {h.number} ({h.state}: {h.reason})"
            else:
                known[key] = f"was already evaluated in trial {h.number}"
        return known

    def _screen(
        self,
        space: SearchSpace,
        parsed: ParseResult,
        known: Mapping[str, str],
        accepted: list[Candidate],
        n: int,
        finish_reason: str | None,
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Accept the good candidates of one answer; return the re-ask reasons and a record per candidate."""
        reasons: list[str] = []
        screened: list[dict[str, Any]] = []
        cut = " (the answer was cut off at max_tokens)" if finish_reason == "length" else ""
        if parsed.error:
            reasons.append(f"Your answer could not be read: {parsed.error}{cut}.")
        single = self.strategy.one_per_call
        for i, pc in enumerate(parsed.candidates, start=1):
            label = "The design" if single else f"Candidate {i}"
            entry: dict[str, Any] = {"raw": pc.raw, "params": pc.params}
            screened.append(entry)
            if pc.params is None:
                entry["status"] = "invalid"
                reasons.append(f"{label} is not valid: {pc.error}{cut}.")
                continue
            if len(accepted) >= n:
                entry["status"] = "surplus"
                continue
            cand = space.candidate(pc.params, rationale=pc.rationale)
            key = cand.key()
            accepted_keys = {c.key() for c in accepted}
            if key in known:
                entry["status"] = "duplicate"
                reasons.append(f"{label} {known[key]}.")
                continue
            if key in accepted_keys or key in self._proposed:
                entry["status"] = "duplicate"
                reasons.append(f"{label} was already proposed earlier in this search.")
                continue
            cost = self.cost_of(cand.params)
            if cost is not None:
                entry["cost"] = cost.as_dict()
            why = self.constraints.check(cost) if self.constraints is not None and cost is not None else None
            if why:
                entry["status"] = "rejected"
                entry["reason"] = why
                reasons.append(f"{label} fails a hard constraint: {why}.")
                continue
            entry["status"] = "accepted"
            accepted.append(cand)
        return reasons, screened

    def _fallback(self, space: SearchSpace, known: Mapping[str, str], reasks: int) -> Candidate:
        message = f"the LLM gave no usable candidate in round {self._round} after {reasks} re-asks"
        if self.fallback == "error":
            raise NoValidCandidate(message + "; see the transcript log for its answers")
        log.warning("%s; using a random feasible candidate instead (fallback: random)", message)
        # Random restarts + one-parameter moves that never increase the constraint violation: plain rejection
        # sampling almost never lands in a narrow MACs window (GENIUS's [270, 330] M holds ~0 % of the space).
        dists = space.distributions()
        for _ in range(20):
            params = space.sample(self._rng)
            score = self._violation(params)
            for _ in range(400):
                key = Candidate.from_params(space.name, params).key()
                if score == 0 and key not in known and key not in self._proposed:
                    return space.candidate(
                        params, rationale=f"fallback: random feasible candidate ({message})"
                    )
                name = self._rng.choice(list(dists))
                trial = {**params, name: sample_value(dists[name], self._rng)}
                try:
                    trial = space.validate(trial)
                except InvalidCandidate:
                    continue
                new = self._violation(trial)
                if new <= score:
                    params, score = trial, new
        raise NoValidCandidate(message + "; and no random candidate meets the constraints either")

    def _violation(self, params: Mapping[str, Any]) -> float:
        """How far ``params`` is from meeting the constraints (0 = feasible), relative to the limits."""
        cost = self.cost_of(params)
        c = self.constraints
        if c is None or cost is None:
            return 0.0
        v = 0.0
        macs = getattr(c, "macs", None)
        if macs:
            v += max(0.0, cost.macs - macs[1], macs[0] - cost.macs) / max(macs[1], 1.0)
        max_params = getattr(c, "max_params", None)
        if max_params:
            v += max(0.0, cost.params - max_params) / max_params
        if v == 0.0 and c.check(cost):
            v = 1.0  # a constraint of another kind: feasible or not, nothing in between
        return v

    def _remember(
        self, accepted: list[Candidate], record: dict[str, Any], usage: Usage, reasks: int, fallback: bool
    ) -> None:
        # The round's usage is attributed to its first candidate, so that sums over trials are study totals.
        for i, cand in enumerate(accepted):
            self._proposed.add(cand.key())
            self._proposed_text.add(self.space.encode(cand.params))
            mine = usage if i == 0 else Usage()
            self._meta[cand.key()] = {
                "llm_tokens_prompt": mine.prompt_tokens,
                "llm_tokens_completion": mine.completion_tokens,
                "llm_cost_usd": round(mine.cost_usd, 8),
                "llm_requests": mine.requests,
                "llm_reasks": reasks if i == 0 else 0,
                "llm_round": record["round"],
                "llm_round_index": i,
                "llm_round_size": len(accepted),
                "llm_fallback": fallback,
                "llm_cached_calls": sum(1 for c in record["calls"] if c["cached"]) if i == 0 else 0,
                "model": self.model,
                "endpoint": self.client.endpoint,
                "strategy": self.strategy.name,
                "round_usage": usage.as_dict(),
                "study_usage": self.accountant.spent.as_dict(),
                "study_answers": self.answers.as_dict(),
                "transcript": {"messages": record["messages"], "calls": record["calls"]},
            }

    def _log(self, record: dict[str, Any]) -> None:
        if self.transcript_log is None:
            return
        self.transcript_log.parent.mkdir(parents=True, exist_ok=True)
        with self.transcript_log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
