"""The study's pruner from ``search.pruner``: none, median, or Hyperband over the evaluator's epochs."""

from __future__ import annotations

import optuna

from automl_kd.config import Config


def make_pruner(config: Config, steps: int | None) -> optuna.pruners.BasePruner:
    """``steps`` is the evaluator's number of intermediate reports (the train evaluator's epochs); an evaluator that
    does not say falls back to its ``epochs`` option, else 10."""
    kind = config.search.pruner
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if kind == "hyperband":
        epochs = steps or int(config.evaluator.options.get("epochs", 10))
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2))
    return optuna.pruners.NopPruner()
