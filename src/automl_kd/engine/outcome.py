"""How a trial ended: one enum that the engine records and the proposers, the report and the progress read.

The engine stores the outcome as the trial's ``outcome`` user attribute (a plain string in storage, so any Optuna
tool can read it); :meth:`TrialOutcome.of` reads it back from a :class:`~optuna.trial.FrozenTrial`, and
:func:`is_finished` / :func:`is_claimed` say whether a trial counts toward the study's target.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from automl_kd._compat import StrEnum

#: the user attribute the outcome is stored under
ATTR_OUTCOME = "outcome"


class TrialOutcome(StrEnum):
    """How a trial ended (or that it has not yet). A ``StrEnum``: it compares equal to its stored string."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    #: the candidate failed on its own merits (training error, diverged loss, out of memory)
    FAILED = "failed"
    #: broke a hard constraint or was invalid; never trained
    REJECTED = "rejected"
    #: stopped by a signal or a dead process, not the candidate's fault; its parameters are queued again
    INTERRUPTED = "interrupted"
    #: the proposer's budget was spent before it produced a candidate
    BUDGET = "budget"
    #: the proposer raised (e.g. its LLM endpoint went away); the search stops with its reason, not counted
    PROPOSER_FAILED = "proposer-failed"
    #: started after another worker reached the study's target; never trained, not counted
    SURPLUS = "surplus"
    RUNNING = "running"
    WAITING = "waiting"

    @classmethod
    def of(cls, t: FrozenTrial) -> TrialOutcome:
        """The outcome of ``t``: its recorded one for a failed trial, else its Optuna state. A failed trial with
        no recorded outcome was closed by the heartbeat after its process died: interrupted."""
        if t.state == TrialState.FAIL:
            raw = t.user_attrs.get(ATTR_OUTCOME)
            try:
                return cls(raw) if raw else cls.INTERRUPTED
            except ValueError:
                return cls.FAILED
        if t.state == TrialState.COMPLETE:
            return cls.COMPLETE
        if t.state == TrialState.PRUNED:
            return cls.PRUNED
        if t.state == TrialState.RUNNING:
            return cls.RUNNING
        return cls.WAITING

    @property
    def counts(self) -> bool:
        """Whether a trial that ended this way counts toward ``n_trials``."""
        return self in _FINISHED


_FINISHED = frozenset(
    {TrialOutcome.COMPLETE, TrialOutcome.PRUNED, TrialOutcome.FAILED, TrialOutcome.REJECTED}
)


def is_finished(t: FrozenTrial) -> bool:
    """Counts toward ``n_trials``: complete, pruned, or failed/rejected on its own merits (not interrupted)."""
    return TrialOutcome.of(t).counts


def is_claimed(t: FrozenTrial) -> bool:
    """Counts toward ``n_trials`` once it ends well: finished, running, or waiting to run."""
    return is_finished(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)


def none_completed(trials: Sequence[FrozenTrial]) -> str | None:
    """Why a study that has finished trials has no completed one, in one line, or None when a trial completed
    (or none finished yet): the counts by outcome and the most common ``fail_reason`` (reasons that differ only in
    their numbers count as one; the first of them is shown)."""
    finished = [t for t in trials if is_finished(t)]
    if not finished or any(TrialOutcome.of(t) == TrialOutcome.COMPLETE for t in finished):
        return None
    outcomes = Counter(str(TrialOutcome.of(t)) for t in finished)
    if len(outcomes) == 1:
        (kind, n), *_ = outcomes.items()
        counts = f"{n} of {len(finished)} {kind}"
    else:
        counts = ", ".join(f"{n} {kind}" for kind, n in outcomes.most_common()) + f" of {len(finished)}"
    reasons = [str(t.user_attrs.get("fail_reason") or "no reason recorded") for t in finished]
    groups = Counter(re.sub(r"\d[\d.,]*", "#", r) for r in reasons)
    key, n = groups.most_common(1)[0]
    example = next(r for r in reasons if re.sub(r"\d[\d.,]*", "#", r) == key)
    return (
        f"no trial completed: {counts}; the most common reason ({n} trial{'s' if n != 1 else ''}): {example}"
    )
