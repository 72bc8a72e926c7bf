"""Search spaces: the base class, the immutable :class:`Candidate`, and the cost model.

A space has fixed parameter names, each with a fixed Optuna distribution (no dynamic value spaces: variable depth
is a ``skip`` op per slot). Everything the engine and the proposers need is here: a text description for an LLM,
text encode/decode, validation with precise messages, analytic cost, and ``build`` to a real ``nn.Module``.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from .errors import InvalidCandidate

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Cost:
    """Analytic cost of a candidate: parameters and multiply-adds (MACs) for one image at the space's resolution."""

    params: int
    macs: int

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs}


@dataclass(frozen=True)
class Candidate:
    """An architecture: the space's name and a complete, validated parameter assignment. Immutable and hashable."""

    space: str
    items: tuple[tuple[str, Any], ...]
    rationale: str = field(default="", compare=False)

    @classmethod
    def from_params(cls, space: str, params: Mapping[str, Any], rationale: str = "") -> Candidate:
        return cls(space, tuple(sorted(params.items())), rationale)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.items)

    def key(self) -> str:
        """Canonical text key: equal candidates have equal keys (used for duplicate detection and caches)."""
        return json.dumps(dict(self.items), sort_keys=True, separators=(",", ":"))


class SearchSpace:
    """Base class of search spaces.

    Subclasses set :attr:`name`, implement :meth:`distributions`, :meth:`cost` and usually :meth:`build`, and may
    override :meth:`describe`, :meth:`encode` and :meth:`decode`. Constructors take keyword options only; the host
    also passes the data shape (``num_classes``, ``in_chans``, ``input_size``) to every space that accepts it.

    Example::

        space = get_plugin_manager().spaces.create("mbv2", num_classes=10, in_chans=1, input_size=28)
        params = space.sample(random.Random(0))
        print(space.encode(params), space.cost(params))
        model = space.build(params)
    """

    name: ClassVar[str] = "space"
    #: whether :meth:`build` returns a network (False for table-look-up benchmark spaces)
    buildable: ClassVar[bool] = True

    def distributions(self) -> dict[str, BaseDistribution]:
        """Fixed parameter names and their Optuna distributions, in a stable order."""
        raise NotImplementedError

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``params`` checked and normalised (ints for int parameters), or raise :class:`InvalidCandidate`.

        The message says exactly which parameter is wrong and what is allowed.
        """
        dists = self.distributions()
        unknown = sorted(set(params) - set(dists))
        if unknown:
            raise InvalidCandidate(f"unknown parameter {unknown[0]!r}; parameters are: {', '.join(dists)}")
        missing = [k for k in dists if k not in params]
        if missing:
            raise InvalidCandidate(f"missing parameter {missing[0]!r}")
        out: dict[str, Any] = {}
        for key, dist in dists.items():
            out[key] = _check_value(key, params[key], dist)
        self.check(out)
        return out

    def check(self, params: dict[str, Any]) -> None:
        """Extra structural checks beyond each parameter's own range; raise :class:`InvalidCandidate`."""

    def candidate(self, params: Mapping[str, Any], rationale: str = "") -> Candidate:
        return Candidate.from_params(self.name, self.validate(params), rationale)

    # -- text forms -----------------------------------------------------------------------------------------
    def describe(self) -> str:
        """Plain-text description of the space for people and for an LLM."""
        lines = [f"Search space {self.name!r}. Parameters:"]
        for key, dist in self.distributions().items():
            lines.append(f"- {key}: {_describe_dist(dist)}")
        return "\n".join(lines)

    def encode(self, params: Mapping[str, Any]) -> str:
        """Compact text form of a candidate; :meth:`decode` inverts it."""
        return json.dumps({k: params[k] for k in self.distributions()}, separators=(", ", ": "))

    def decode(self, text: str) -> dict[str, Any]:
        """Parse the text form back into validated parameters, or raise :class:`InvalidCandidate`."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidCandidate(f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidCandidate("expected a JSON object of parameter values")
        return self.validate(obj)

    # -- cost and build -------------------------------------------------------------------------------------
    def cost(self, params: Mapping[str, Any]) -> Cost:
        """Parameters and MACs without training (analytic or by tracing)."""
        raise NotImplementedError

    def build(self, params: Mapping[str, Any]) -> nn.Module:
        """The real network for ``params`` (randomly initialised)."""
        raise NotImplementedError(f"space {self.name!r} has no build(): it is a table-look-up space")

    def reference(self) -> dict[str, Any] | None:
        """A reference architecture (the largest, or the paper's teacher) for the compression factor, if any."""
        return None

    # -- sampling -------------------------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniformly random valid candidate (rejection sampling over :meth:`check`)."""
        for _ in range(1000):
            params = {k: sample_value(d, rng) for k, d in self.distributions().items()}
            try:
                return self.validate(params)
            except InvalidCandidate:
                continue
        raise RuntimeError(f"space {self.name!r}: no valid candidate in 1000 random draws")


def _check_value(key: str, value: Any, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            # True == 1 in Python; a bool must not stand for an int choice or the other way round
            if value == choice and isinstance(value, bool) == isinstance(choice, bool):
                return choice
        allowed = ", ".join(repr(c) for c in dist.choices)
        raise InvalidCandidate(f"{key}={value!r} is not allowed; choose one of {allowed}")
    if isinstance(dist, IntDistribution):
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise InvalidCandidate(f"{key}={value!r} must be an integer in [{dist.low}, {dist.high}]")
        v = int(value)
        if not dist.low <= v <= dist.high or (v - dist.low) % dist.step:
            raise InvalidCandidate(f"{key}={v} is outside [{dist.low}, {dist.high}] step {dist.step}")
        return v
    if isinstance(dist, FloatDistribution):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidCandidate(f"{key}={value!r} must be a number in [{dist.low}, {dist.high}]")
        if not dist.low <= float(value) <= dist.high:
            raise InvalidCandidate(f"{key}={value} is outside [{dist.low}, {dist.high}]")
        return float(value)
    raise TypeError(f"unsupported distribution for {key}: {dist!r}")


def _describe_dist(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(json.dumps(c) for c in dist.choices)
    if isinstance(dist, IntDistribution):
        return f"integer in [{dist.low}, {dist.high}]" + (f" step {dist.step}" if dist.step != 1 else "")
    if isinstance(dist, FloatDistribution):
        return f"number in [{dist.low}, {dist.high}]" + (" (log scale)" if dist.log else "")
    return repr(dist)


def sample_value(dist: BaseDistribution, rng: random.Random) -> Any:
    """One uniform draw from an Optuna distribution."""
    if isinstance(dist, CategoricalDistribution):
        return rng.choice(dist.choices)
    if isinstance(dist, IntDistribution):
        return rng.randrange(dist.low, dist.high + 1, dist.step)
    if isinstance(dist, FloatDistribution):
        return rng.uniform(dist.low, dist.high)
    raise TypeError(f"unsupported distribution {dist!r}")


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask ``trial`` for parameter ``name`` of distribution ``dist`` (the ``suggest_*`` call that fits it)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"unsupported distribution for {name}: {dist!r}")


#: the most assignments :func:`enumerate_space` goes through
MAX_ARCHITECTURES = 1_000_000


def _choices(d: Any) -> list[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution):
        return list(range(d.low, d.high + 1, d.step))
    raise ValueError(f"only categorical and integer parameters can be enumerated, not {type(d).__name__}")


def enumerate_space(space: SearchSpace) -> list[Candidate]:
    """Every valid candidate of a finite space (each architecture once)."""
    dists = space.distributions()
    names = list(dists)
    grid = [_choices(dists[n]) for n in names]
    size = 1
    for g in grid:
        size *= len(g)
    if size > MAX_ARCHITECTURES:
        raise ValueError(
            f"the space has {size:,} assignments; at most {MAX_ARCHITECTURES:,} can be enumerated"
        )
    out: dict[str, Candidate] = {}
    for values in itertools.product(*grid):
        try:
            cand = space.candidate(dict(zip(names, values, strict=True)))
        except InvalidCandidate:
            continue
        out.setdefault(cand.key(), cand)
    return list(out.values())
