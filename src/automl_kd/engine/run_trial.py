"""One trial on Optuna's ask/tell: ask for a trial, run it under its heartbeat, record how it ended, tell.

:func:`ending` is the one table from what a trial raised (or that it returned) to how it ended: the
:class:`TrialOutcome` recorded in the trial, Optuna's state, the ``fail_reason``, whether its parameters are queued
again, and what the search does next: go on, stop cleanly (``stop``), or stop with an error (``error``, raised by
the loop once the trial is told). Optuna's own loop (``_run_trial`` in ``optuna/study/_optimize.py``) has the same
shape: ask, run, one place that turns an exception into a state, tell. Ours records our outcomes, and stops the
search on the errors every later trial would meet too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from automl_kd.errors import (
    AutomlKdError,
    BudgetExhausted,
    CandidateRejected,
    ConfigError,
    DataError,
    InvalidCandidate,
    ProposerFailed,
    TrialInterrupted,
)
from automl_kd.storage.heartbeat import beating, queue_trial
from automl_kd.storage.outage import is_storage_error, storage_fault

from .outcome import ATTR_OUTCOME, TrialOutcome
from .trial import TrialSurplus, failure_reason

FAIL = TrialState.FAIL
#: the logger Optuna's own loop reports failed trials on; ours reports them there too, in the same words
OPTUNA_TRIALS = optuna.logging.get_logger("optuna.study._optimize")


@dataclass(frozen=True)
class Ending:
    """How a trial ended, decided by :func:`ending` from what it raised."""

    #: recorded as the trial's ``outcome``; None: the storage failed, nothing more can be written to the trial
    outcome: TrialOutcome | None
    #: the state Optuna is told
    state: TrialState
    #: the ``fail_reason`` (for an interrupted trial: ``interrupted_by``); "" records none
    reason: str = ""
    #: not the candidate's fault: its parameters are queued again with the same seed
    requeue: bool = False
    #: the search stops cleanly with this reason (a spent proposer budget)
    stop: str = ""
    #: the search stops with this error once the trial is told
    error: BaseException | None = None


def ending(exc: BaseException | None, url: str | None = None) -> Ending:
    """The one table from what a trial raised (None: it returned its values) to how it ended."""
    if exc is None:
        return Ending(TrialOutcome.COMPLETE, TrialState.COMPLETE)
    if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C: record the trial, queue it again, stop now
        return Ending(TrialOutcome.INTERRUPTED, FAIL, str(exc) or "SIGINT (Ctrl-C)", requeue=True, error=exc)
    fault = storage_fault(exc, url)
    if fault is not None:  # a full disk, a corrupt or read-only file: no retry helps (exit 6)
        return Ending(None, FAIL, error=fault)
    if is_storage_error(exc):  # an outage: the loop's outage rule retries, then gives up (exit 5)
        return Ending(None, FAIL, error=exc)
    if isinstance(exc, optuna.TrialPruned):
        return Ending(TrialOutcome.PRUNED, TrialState.PRUNED)
    if isinstance(exc, TrialSurplus):
        return Ending(TrialOutcome.SURPLUS, FAIL)
    if isinstance(exc, BudgetExhausted):
        why = f"proposer budget spent: {exc}"
        return Ending(TrialOutcome.BUDGET, FAIL, why, stop=why)
    if isinstance(exc, ProposerFailed):  # the proposer raised (its endpoint is gone): stop with its reason
        return Ending(
            TrialOutcome.PROPOSER_FAILED,
            FAIL,
            str(exc),
            stop=str(exc),
            error=ProposerFailed(f"search stopped: {exc}"),
        )
    if isinstance(exc, CandidateRejected | InvalidCandidate):
        return Ending(TrialOutcome.REJECTED, FAIL, f"rejected: {exc}")
    if isinstance(exc, TrialInterrupted):  # SIGTERM or a first Ctrl-C: not the candidate's fault
        return Ending(TrialOutcome.INTERRUPTED, FAIL, str(exc), requeue=True)
    if isinstance(exc, ConfigError | DataError):  # the config or the data: every trial would fail alike
        return Ending(TrialOutcome.FAILED, FAIL, failure_reason(exc), error=exc)
    if isinstance(exc, SystemExit):  # a plugin's sys.exit: this trial's failure, not the end of the process
        return Ending(
            TrialOutcome.FAILED,
            FAIL,
            f"SystemExit({exc.code!r}) raised in the trial (a plugin called sys.exit)",
        )
    if isinstance(exc, Exception):  # the candidate failed on its own merits (training error, out of memory)
        return Ending(TrialOutcome.FAILED, FAIL, failure_reason(exc))
    return Ending(TrialOutcome.FAILED, FAIL, failure_reason(exc), error=exc)


@dataclass
class Drawn:
    """What a trial drew before it was evaluated: the parameters (searched augmenter options included) and the
    trial number its seed comes from; an interrupted trial is queued again with both."""

    params: dict[str, Any] | None = None
    seed_of: int = 0


def run_trial(
    study: optuna.Study,
    body: Callable[[optuna.Trial, Drawn], float | list[float]],
    *,
    url: str | None,
    heartbeat_interval: float,
    distributions: Callable[[], dict[str, BaseDistribution]],
) -> tuple[FrozenTrial | None, Ending]:
    """Ask for a trial, run ``body`` on it under its heartbeat (the proposer's call included: Optuna samples
    inside the first ``suggest``), record how it ended and tell Optuna. Returns the told trial (None when the
    storage failed) and its :class:`Ending`; the caller acts on ``stop`` and ``error``."""
    trial = study.ask()
    drawn = Drawn(seed_of=trial.number)
    values: float | list[float] | None = None
    raised: BaseException | None = None
    with beating(study, trial._trial_id, heartbeat_interval):
        try:
            values = body(trial, drawn)
        except BaseException as exc:  # every way a trial ends goes through the one table
            raised = exc
    end = ending(raised, url)
    if raised is not None and end.state == FAIL:
        log_failed(trial, raised)
    return tell(study, trial, end, values, drawn, distributions), end


def log_failed(trial: optuna.Trial, exc: BaseException) -> None:
    """Log a failed trial as Optuna's loop does: in one line for our own errors (their message is the reason),
    with the traceback for anything else (a bug in a plugin is easier to find with it)."""
    ours = isinstance(exc, AutomlKdError | TrialSurplus | KeyboardInterrupt | SystemExit)
    OPTUNA_TRIALS.warning(
        f"Trial {trial.number} failed with parameters: {trial.params} "
        f"because of the following error: {exc!r}.",
        exc_info=None if ours else (type(exc), exc, exc.__traceback__),
    )


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    end: Ending,
    values: float | list[float] | None,
    drawn: Drawn,
    distributions: Callable[[], dict[str, BaseDistribution]],
) -> FrozenTrial | None:
    """Record ``end`` in the trial (outcome, reason, a queued retry) and tell Optuna its state."""
    if (
        end.outcome is None
    ):  # the storage failed: fail the trial if it still lets us (else its heartbeat will)
        with contextlib.suppress(Exception):
            study.tell(trial, state=FAIL)
        return None
    trial.set_user_attr(ATTR_OUTCOME, end.outcome)
    if end.outcome == TrialOutcome.INTERRUPTED:
        trial.set_user_attr("interrupted_by", end.reason)
    elif end.reason:
        trial.set_user_attr("fail_reason", end.reason)
    if end.requeue and drawn.params is not None:
        queue_trial(study, drawn.params, distributions(), seed_of=drawn.seed_of)
    return study.tell(trial, values if end.state == TrialState.COMPLETE else None, state=end.state)
