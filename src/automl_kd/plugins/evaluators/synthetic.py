"""The ``synthetic`` evaluator: an instant, deterministic score from the candidate's analytic cost, plus an
optional fixed wait.

For smoke-testing a cluster set-up (workers, storage, dashboards) without training anything, and for the
scale-out benchmark, whose evaluator must cost mostly waiting. Never use its scores for research: they only say
that bigger networks score higher.
"""

from __future__ import annotations

import math
import time
from typing import Any

from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.hookspecs import hookimpl
from automl_kd.space import Candidate


class SyntheticEvaluator(Evaluator):
    """``val_acc = 100 * (1 - exp(-params / scale))``, reported over ``epochs`` steps, after ``sleep`` seconds."""

    name = "synthetic"

    def __init__(self, sleep: float = 0.0, epochs: int = 1, scale: float = 1e5) -> None:
        if sleep < 0 or epochs < 1 or scale <= 0:
            raise ValueError("need sleep >= 0, epochs >= 1 and scale > 0")
        self.sleep, self.epochs, self.scale = sleep, epochs, scale

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        cost = context.space.cost(candidate.params)
        final = 100.0 * (1.0 - math.exp(-cost.params / self.scale))
        for epoch in range(self.epochs):
            time.sleep(self.sleep / self.epochs)
            context.report(epoch, final * (epoch + 1) / self.epochs)
        return {"val_acc": final, "params": cost.params, "macs": cost.macs, "synthetic": True}


@hookimpl
def register_evaluators(register: Any) -> None:
    register(
        "synthetic", SyntheticEvaluator, description="instant score from the analytic cost (+ fixed wait)"
    )
