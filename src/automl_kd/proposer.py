"""Proposers: the simple :class:`Proposer` base class and its adapter to an Optuna sampler.

The engine has one path: an Optuna study with a sampler. Any Optuna sampler is a proposer. Authors who don't want
Optuna's API subclass :class:`Proposer` and implement ``propose(space, history, n)``; :class:`ProposerSampler` turns
it into a :class:`optuna.samplers.BaseSampler`, so it also works in a plain ``optuna.create_study``.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from .engine.outcome import TrialOutcome
from .space import Candidate, SearchSpace
from .trial_attrs import metrics_of

#: trial system attributes written by the adapter
ATTR_PROPOSER = "automl_kd:proposer"
ATTR_RATIONALE = "automl_kd:rationale"
ATTR_META = "automl_kd:proposal_meta"


@dataclass(frozen=True)
class HistoryEntry:
    """One finished trial as a proposer sees it: validation metrics only (never test accuracy)."""

    number: int
    params: dict[str, Any]
    state: str  # a TrialOutcome: complete, pruned, failed or rejected
    values: tuple[float, ...] | None
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None


#: user attributes a proposer may see; test metrics are deliberately absent (GENIUS fed test accuracy back)
VISIBLE_METRICS = ("val_acc", "params", "macs", "latency_ms_b1", "latency_ms_b64", "epochs", "val_acc_curve")


def history_from_trials(trials: Sequence[FrozenTrial]) -> list[HistoryEntry]:
    """Turn a study's finished trials into proposer history (validation metrics only)."""
    out: list[HistoryEntry] = []
    for t in trials:
        outcome = TrialOutcome.of(t)
        state: TrialOutcome
        if outcome in (TrialOutcome.COMPLETE, TrialOutcome.PRUNED):
            state = outcome
        elif t.state == TrialState.FAIL:  # interrupted and surplus trials read as failed, as before
            state = TrialOutcome.REJECTED if outcome == TrialOutcome.REJECTED else TrialOutcome.FAILED
        else:
            continue
        attrs = metrics_of(t.user_attrs)
        metrics = {k: attrs[k] for k in VISIBLE_METRICS if k in attrs}
        values = tuple(t.values) if t.values is not None else None
        reason = str(t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason") or "")
        # searched augmenter weights (aug.<name>.<option>) are study parameters but not part of the architecture
        params = {k: v for k, v in t.params.items() if not k.startswith("aug.")}
        out.append(HistoryEntry(t.number, params, state, values, metrics, reason))
    return out


class Proposer:
    """Base class for proposers that don't want Optuna's sampler API.

    Subclasses implement :meth:`propose`. ``batch_size`` candidates are requested per call (an LLM may answer
    several at once); the adapter queues the surplus for the next trials.

    Example::

        class FirstChoice(Proposer):
            name = "first"
            def propose(self, space, history, n):
                params = {k: d.choices[0] for k, d in space.distributions().items()}
                return [space.candidate(params, rationale="always the first choice")]
    """

    name: ClassVar[str] = "proposer"
    batch_size: int = 1

    def propose(self, space: SearchSpace, history: Sequence[HistoryEntry], n: int) -> list[Candidate]:
        """Return up to ``n`` new candidates of ``space`` given the finished trials in ``history``."""
        raise NotImplementedError

    def proposal_meta(self, candidate: Candidate) -> dict[str, Any]:
        """Extra JSON-serialisable record stored with the trial that evaluates ``candidate`` (e.g. a transcript)."""
        return {}

    def as_sampler(self, space: SearchSpace, seed: int | None = None) -> ProposerSampler:
        return ProposerSampler(self, space, seed=seed)


@dataclass(frozen=True)
class Proposal:
    """The candidate a :class:`ProposerSampler` gave a trial, and the name of the proposer that made it."""

    proposer: str
    candidate: Candidate


class ProposerSampler(BaseSampler):
    """Adapts a :class:`Proposer` to :class:`optuna.samplers.BaseSampler`.

    The whole candidate is sampled as one relative sample over the space's fixed distributions. Trials with
    fixed parameters (enqueued, or retried after a crash) are left to Optuna and cost the proposer nothing.
    The proposer's name, the candidate's rationale and :meth:`Proposer.proposal_meta` are stored as the trial's
    system attributes (any Optuna tool, and the report, reads them there); the engine takes the proposal in
    memory (:meth:`proposal`).
    """

    def __init__(self, proposer: Proposer, space: SearchSpace, seed: int | None = None) -> None:
        self.proposer = proposer
        self.space = space
        self._rng = random.Random(seed)
        self._queue: deque[Candidate] = deque()
        self._proposals: dict[int, Proposal] = {}

    def proposal(self, trial_id: int) -> Proposal | None:
        """The proposal this sampler gave trial ``trial_id`` (once; None for a trial with fixed parameters)."""
        return self._proposals.pop(trial_id, None)

    def reseed_rng(self) -> None:
        self._rng = random.Random()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        if not self._queue:
            done = study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
            )
            history = history_from_trials(done)
            n = max(1, int(getattr(self.proposer, "batch_size", 1)))
            # an exception here (a spent budget, an unreachable endpoint) fails this trial through Optuna
            self._queue.extend(self.proposer.propose(self.space, history, n))
        if not self._queue:
            raise RuntimeError(f"proposer {self.proposer.name!r} returned no candidate")
        cand = self._queue.popleft()
        self._proposals[trial._trial_id] = Proposal(self.proposer.name, cand)
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, ATTR_PROPOSER, self.proposer.name)
        if cand.rationale:
            storage.set_trial_system_attr(trial._trial_id, ATTR_RATIONALE, cand.rationale)
        meta = self.proposer.proposal_meta(cand)
        if meta:
            storage.set_trial_system_attr(
                trial._trial_id, ATTR_META, json.loads(json.dumps(meta, default=str))
            )
        return cand.params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached for parameters outside the space (none in normal use): draw uniformly.
        return optuna.samplers.RandomSampler(seed=self._rng.randrange(2**31)).sample_independent(
            study, trial, param_name, param_distribution
        )
