"""Exceptions raised by automl-kd.

Every error a user can cause derives from :class:`AutomlKdError`; the CLI prints its message (no traceback) and
exits with :attr:`AutomlKdError.exit_code`.
"""

from __future__ import annotations

import _thread
import contextlib
import sys
from collections.abc import Iterator
from typing import Any


class AutomlKdError(Exception):
    """Base class of every error automl-kd raises on purpose."""

    exit_code = 1


class ConfigError(AutomlKdError):
    """A configuration value is missing, unknown, of the wrong type or out of range.

    The message names the key (dotted path) and what is allowed.
    """

    exit_code = 2


class PluginError(AutomlKdError):
    """A plugin failed to load, registered a bad object, or raised inside a hook."""

    exit_code = 3


class DuplicateNameError(PluginError):
    """Two plugins registered the same name for the same kind."""


class UnknownNameError(ConfigError):
    """A config names a plugin that is not registered."""


class InvalidCandidate(AutomlKdError):
    """A candidate does not belong to its search space (unknown parameter, value out of range, bad text)."""


class CandidateRejected(AutomlKdError):
    """A valid candidate breaks a hard constraint (params limit, MACs window); it is never trained."""


class InfeasibleCandidate(AutomlKdError):
    """An evaluator cannot score this candidate (for example a table has no entry for it)."""


class DataError(AutomlKdError):
    """A dataset is missing, unreadable or malformed."""

    exit_code = 4


class CacheError(AutomlKdError):
    """A cache entry is corrupt, truncated or was computed for other inputs."""


class BudgetExhausted(AutomlKdError):
    """A proposer ran out of its budget (tokens, cost, requests); the search stops cleanly."""


class StorageUnavailable(AutomlKdError):
    """The trial store could not be reached for longer than the configured retry window."""

    exit_code = 5


class StorageError(AutomlKdError):
    """The trial store or the run directory is there but cannot be used: a corrupt or read-only database file, a
    folder that cannot be written. Retrying does not help (unlike :class:`StorageUnavailable`)."""

    exit_code = 6


class ProposerFailed(AutomlKdError):
    """The proposer raised instead of proposing (e.g. its LLM endpoint is gone); the search stops with why."""


class TrialInterrupted(AutomlKdError):
    """The running trial was stopped by a signal (SIGTERM, Ctrl-C) before it finished; it is retried later."""


class NoTrialCompleted(AutomlKdError):
    """The search ended (its target reached, a timeout, a spent budget) and not one trial of the study completed:
    every finished trial failed or was rejected. The message counts them and names the most common reason."""

    exit_code = 7


class TrainingDiverged(AutomlKdError):
    """The loss became NaN or infinite; the trial fails with this reason."""


def raised_by_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` is a Ctrl-C, or an error raised while one was being handled.

    A ``KeyboardInterrupt`` can land anywhere, also inside a library's own ``except``/``finally`` (optuna's trial
    bookkeeping, for one), where it turns into an unrelated error such as ``UnboundLocalError``; the Ctrl-C is
    still what happened, and the user should hear that, not about a bug.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def ctrl_c_not_swallowed() -> Iterator[None]:
    """Re-deliver a Ctrl-C that Python swallowed because it landed in a ``__del__`` or a gc callback.

    Python prints such an exception as "Exception ignored in ..." with a traceback and goes on as if nothing
    happened (SQLAlchemy's weakref callbacks are a common place for a second Ctrl-C to land). Inside this block the
    traceback is not printed and the interrupt is raised again in the main thread, where it can stop the run.
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _thread.interrupt_main()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
