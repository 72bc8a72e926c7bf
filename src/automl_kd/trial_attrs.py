"""The names a trial's metrics are stored under as Optuna user attributes.

A metric is stored under its own name (``val_acc``, ``macs``, ``latency_ms_b1``), except the parameter count:
Optuna's ``trials_dataframe()`` names a user attribute ``x`` ``user_attrs_x``, and ``user_attrs_params`` beside the
searched choices' ``params_*`` columns reads as one more searched parameter. It is stored as ``n_params``. In the
code, the history a proposer sees, the leaderboard and the report it stays the metric ``params`` (also an objective's
name); a study written before keeps ``params`` in storage, and :func:`metrics_of` reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: metric name -> the user attribute it is stored under, where the two differ
STORED_AS = {"params": "n_params"}
_METRIC_OF = {stored: metric for metric, stored in STORED_AS.items()}

#: what the ``screen`` proposer records on each trial it proposes: the candidates scored for it, the CPU seconds of
#: the proxy scores it needed, the chosen candidate's score
SCREENED = "screened"
SCREEN_PROXY_CPU_S = "screen_proxy_cpu_s"
SCREEN_SCORE = "screen_score"


def stored_name(metric: str) -> str:
    """The user attribute a metric is written to."""
    return STORED_AS.get(metric, metric)


def metrics_of(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's user attributes under the metrics' names: ``n_params`` reads as ``params``, and an old study's
    ``params`` stays ``params``."""
    out = dict(user_attrs)
    for stored, metric in _METRIC_OF.items():
        if stored in out:
            out[metric] = out.pop(stored)
    return out
