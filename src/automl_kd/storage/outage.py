"""Storage faults: what counts as "the storage is unreachable" (a database restarting, a network blip).

The search loop retries with backoff while :func:`is_storage_error` is true, for up to
``storage.retry_timeout`` seconds. A new fault rule (another driver's exception) goes into :data:`STORAGE_ERRORS`.
"""

from __future__ import annotations

import optuna
import sqlalchemy.exc

#: what a storage raises while it is unreachable
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
)


def is_storage_error(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, says the storage is unreachable.

    Optuna sometimes re-raises a storage error as another exception (an ``UnboundLocalError`` in its own
    ``finally``), so the whole chain is inspected.
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, STORAGE_ERRORS):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
