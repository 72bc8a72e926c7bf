"""Searched augmenter options: ``{search: [a, b]}`` or ``{low: x, high: y}`` in a config become study parameters.

A searched option of augmenter ``kd`` named ``weight`` is the study parameter ``aug.kd.weight``; each trial gets its
own value, which :func:`resolve_augmenter_options` writes back into the augmenter's options.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from automl_kd.errors import ConfigError


def searched_option(value: Any) -> BaseDistribution | None:
    """The distribution of an augmenter option written as ``{search: [a, b, ...]}`` (categorical) or
    ``{low: x, high: y}`` (float; optional ``log: true``, ``step``); None for a plain value."""
    if not isinstance(value, dict):
        return None
    try:
        if set(value) == {"search"} and isinstance(value["search"], list) and value["search"]:
            odd = [
                c for c in value["search"] if c is not None and not isinstance(c, bool | int | float | str)
            ]
            if odd:  # Optuna would only warn, and the study could not store the choice
                raise ValueError(f"choices must be plain values (numbers, strings, booleans), not {odd[0]!r}")
            return CategoricalDistribution(value["search"])
        if {"low", "high"} <= set(value) <= {"low", "high", "log", "step"}:
            return FloatDistribution(
                float(value["low"]),
                float(value["high"]),
                log=bool(value.get("log", False)),
                step=value.get("step"),
            )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"searched augmenter option {value!r}: {exc}") from None
    return None


def augmenter_distributions(refs: Any) -> dict[str, BaseDistribution]:
    """``aug.<name>.<option>`` -> distribution for every searched option of the configured augmenters."""
    out: dict[str, BaseDistribution] = {}
    for ref in refs:
        for key, value in ref.options.items():
            dist = searched_option(value)
            if dist is not None:
                name = f"aug.{ref.name}.{key}"
                if name in out:
                    raise ConfigError(f"augmenter {ref.name!r} is listed twice with searched option {key!r}")
                out[name] = dist
    return out


def resolve_augmenter_options(name: str, options: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Options with each searched one replaced by this trial's value (or, without one, a placeholder from its
    range, for validation)."""
    out = {}
    for key, value in options.items():
        dist = searched_option(value)
        if dist is None:
            out[key] = value
        elif f"aug.{name}.{key}" in values:
            out[key] = values[f"aug.{name}.{key}"]
        else:
            out[key] = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low  # type: ignore[attr-defined]
    return out
