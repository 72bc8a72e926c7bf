"""Pieces of one trial that need no study: its seed, why it failed, and how its metrics are stored."""

from __future__ import annotations

import hashlib
import json
from typing import Any


class TrialSurplus(Exception):
    """Raised for a trial started after the study reached its target (never trained, not counted)."""


def trial_seed(study_seed: int, number: int) -> int:
    """Each trial's seed derives from the study seed and the trial number (stable across processes)."""
    digest = hashlib.sha256(f"automl-kd:{study_seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def failure_reason(exc: BaseException) -> str:
    """The ``fail_reason`` recorded for a trial that raised ``exc``."""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {exc}"
    return f"{type(exc).__name__}: {exc}"


def jsonable(value: Any) -> Any:
    """``value`` if storage can hold it as JSON, else its JSON round trip with ``str`` for the rest."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))
