"""Storage faults: what counts as "the storage is unreachable" (a database restarting, a network blip), what is a
fault that no retry fixes (a corrupt or read-only SQLite file), and the outage rule itself.

The rule (:func:`retrying`, and the search loop, which applies the same one between trials): while
:func:`is_storage_error` is true, retry with backoff for up to ``storage.retry_timeout`` seconds, then
:class:`StorageUnavailable` (exit 5); a :func:`storage_fault` is a :class:`StorageError` (exit 6) at once. It holds
on every path: opening the storage and the study at start-up, the heartbeat (which swallows errors and lets the
loop decide), asking for a trial and telling its result. A new fault rule (another driver's exception) goes into
:data:`STORAGE_ERRORS` or :data:`SQLITE_FAULTS`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from automl_kd.errors import StorageError, StorageUnavailable

from .urls import display_url

T = TypeVar("T")

#: what a storage raises while it is unreachable
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
)


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


#: SQLite's words for a database file that retrying will not fix
SQLITE_FAULTS = {
    "malformed": "is corrupt",
    "not a database": "is not a database",
    "readonly database": "is read-only",
    "unable to open database file": "cannot be opened",
    "disk i/o error": "cannot be read or written (disk I/O error)",
    "database or disk is full": "cannot be written: No space left on device",
}


def storage_fault(exc: BaseException | None, url: str | None = None) -> StorageError | None:
    """The :class:`StorageError` that ``exc`` (or an exception it came from) means, or None: a corrupt,
    read-only or unopenable SQLite file is not an outage."""
    for e in _chain(exc):
        orig = getattr(e, "orig", e)
        if isinstance(orig, sqlite3.Error):
            text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
            for words, what in SQLITE_FAULTS.items():
                if words in text.lower():
                    where = _sqlite_path(url)
                    return StorageError(f"study database {where} {what} ({text})")
    return None


def _sqlite_path(url: str | None) -> str:
    try:
        return str(make_url(url).database) if url else "(run directory)"
    except Exception:
        return str(url)


def is_storage_error(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, says the storage is unreachable (an outage: retry).

    Optuna sometimes re-raises a storage error as another exception (an ``UnboundLocalError`` in its own
    ``finally``), so the whole chain is inspected. A corrupt or read-only SQLite file is no outage.
    """
    if storage_fault(exc) is not None:
        return False
    return any(isinstance(e, STORAGE_ERRORS) for e in _chain(exc))


def unreachable(url: str | None, waited: float, exc: BaseException) -> StorageUnavailable:
    first = (str(exc).strip().splitlines() or [""])[0]
    return StorageUnavailable(
        f"storage {display_url(url)} unreachable for {waited:.0f} s: {type(exc).__name__}: {first}"
    )


def retrying(
    fn: Callable[[], T],
    url: str | None,
    timeout: float,
    log: Callable[..., Any] | None = logging.getLogger("automl_kd").warning,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()`` under the outage rule: retried with backoff while the storage is unreachable, for ``timeout``
    seconds, then :class:`StorageUnavailable`; a storage fault (corrupt, read-only) raises :class:`StorageError`."""
    start: float | None = None
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as exc:
            fault = storage_fault(exc, url)
            if fault is not None:
                raise fault from None
            if not is_storage_error(exc):
                raise
            start = start or time.monotonic()
            waited = time.monotonic() - start
            if waited >= timeout:
                raise unreachable(url, waited, exc) from None
            if log is not None:
                log("storage unreachable (%s); retrying in %.1f s", type(exc).__name__, delay)
            sleep(min(delay, max(0.0, timeout - waited) + 0.05))
            delay = min(delay * 2, 10.0)
