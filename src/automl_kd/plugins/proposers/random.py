"""The ``random`` proposer: uniform sampling over the space (Optuna's ``RandomSampler``, seeded)."""

from __future__ import annotations

from typing import Any

import optuna

from automl_kd.hookspecs import hookimpl
from automl_kd.space import SearchSpace


def random_sampler(
    space: SearchSpace, seed: int | None = None, directions: Any = None
) -> optuna.samplers.BaseSampler:
    """Uniform random search (the baseline every other proposer must beat)."""
    return optuna.samplers.RandomSampler(seed=seed)


@hookimpl
def register_proposers(register: Any) -> None:
    register("random", random_sampler, description="uniform random search (Optuna RandomSampler)")
