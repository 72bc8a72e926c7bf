"""The ``optuna`` proposer: any Optuna sampler by short name, or any sampler class by import path.

``sampler: tpe`` (default), ``cmaes``, ``nsga2``, ``gp``, ``qmc``, ``random``, or ``module.path:ClassName`` for
any other (OptunaHub samplers included). ``sampler_options`` are passed to the sampler's constructor; ``seed`` comes
from the study.
"""

from __future__ import annotations

import importlib
from typing import Any

import optuna

from automl_kd.hookspecs import hookimpl
from automl_kd.space import SearchSpace

SAMPLERS: dict[str, str] = {
    "tpe": "optuna.samplers:TPESampler",
    "cmaes": "optuna.samplers:CmaEsSampler",
    "nsga2": "optuna.samplers:NSGAIISampler",
    "nsga3": "optuna.samplers:NSGAIIISampler",
    "gp": "optuna.samplers:GPSampler",
    "qmc": "optuna.samplers:QMCSampler",
    "random": "optuna.samplers:RandomSampler",
}


def _load(path: str) -> type[optuna.samplers.BaseSampler]:
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(
            f"sampler {path!r}: use a short name ({', '.join(SAMPLERS)}) or 'module.path:ClassName'"
        )
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"sampler {path!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise ValueError(f"{path!r} is not an optuna.samplers.BaseSampler subclass")
    return cls


def optuna_sampler(
    space: SearchSpace,
    seed: int | None = None,
    directions: Any = None,
    sampler: str = "tpe",
    sampler_options: dict[str, Any] | None = None,
) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by short name (tpe, cmaes, nsga2, nsga3, gp, qmc, random) or 'module:Class'."""
    cls = _load(SAMPLERS.get(sampler, sampler))
    opts = dict(sampler_options or {})
    opts.setdefault("seed", seed)
    if cls is optuna.samplers.TPESampler:
        # multivariate TPE models the joint distribution of the architecture's slots, which independent TPE ignores
        opts.setdefault("multivariate", True)
    if cls is optuna.samplers.CmaEsSampler:
        # CMA-ES handles numbers only; categorical slots would silently fall back to random sampling
        opts.setdefault("warn_independent_sampling", True)
    try:
        return cls(**opts)
    except TypeError as exc:
        raise ValueError(f"sampler_options for {sampler!r}: {exc}") from None


@hookimpl
def register_proposers(register: Any) -> None:
    register(
        "optuna", optuna_sampler, description="any Optuna sampler (TPE by default; cmaes, nsga2, gp, qmc)"
    )
