"""Search spaces: the base class, the immutable :class:`Candidate`, and the cost model.

A space has fixed parameter names, each with a fixed Optuna distribution (no dynamic value spaces: variable depth
is a ``skip`` op per slot). Everything the engine and the proposers need is here: a text description for an LLM,
text encode/decode, validation with precise messages, analytic cost, and ``build`` to a real ``nn.Module``.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterable, Mapping
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


def _esc(text: str) -> str:
    """``text`` with the metacharacters of a regular expression escaped, and nothing else (JSON-schema
    ``pattern`` engines, ECMA-262 in unicode mode among them, reject escapes such as ``\\~``)."""
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\/" else c for c in text)


@dataclass(frozen=True)
class TextForm:
    """A space's text form as fixed text around slots, each slot one of a few strings: NAS-Bench-Macro's
    ``01201120`` is 8 slots of ``0``/``1``/``2`` with nothing between them, NAS-Bench-201's arch string 6 slots of
    op names inside ``|...~0|+|...``. It gives the regular expression of the form (the ``pattern`` of the answer's
    JSON schema and what the parser looks for in free text), optionally without some texts (the designs already
    tried), and the longest text of the form.

    Example::

        form = TextForm(("",) * 9, (("0", "1", "2"),) * 8)
        form.pattern()                          # '^[012]{8}$'
        form.pattern(exclude=["00000000"])      # every 8-digit text but that one
    """

    #: the text before each slot and after the last (one more than ``slots``)
    separators: tuple[str, ...]
    #: the strings each slot may hold, in the space's order
    slots: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.separators) != len(self.slots) + 1:
            raise ValueError("a text form has one separator more than slots")

    def size(self) -> int:
        """How many texts the form has."""
        n = 1
        for choices in self.slots:
            n *= len(choices)
        return n

    def max_length(self) -> int:
        return sum(len(s) for s in self.separators) + sum(max(len(c) for c in cs) for cs in self.slots)

    def text(self, values: Iterable[str]) -> str:
        """The text of one slot value per slot."""
        values = list(values)
        return "".join(sep + v for sep, v in zip(self.separators, [*values, ""], strict=True))

    def split(self, text: str) -> tuple[str, ...] | None:
        """The slot values of ``text``, or None when it is not of the form."""
        m = re.fullmatch(self._body(self.slots, capture=True), text)
        return None if m is None else m.groups()

    @staticmethod
    def _choice(choices: Iterable[str], capture: bool = False) -> str:
        choices = list(choices)
        if not capture and len(choices) > 1 and all(len(c) == 1 for c in choices):
            return "[" + "".join("\\" + c if c in "]\\^-" else c for c in choices) + "]"
        inner = "|".join(_esc(c) for c in choices)
        return f"({inner})" if capture or len(choices) > 1 else inner

    def _body(self, slots: Iterable[tuple[str, ...]], start: int = 0, capture: bool = False) -> str:
        """The expression of the form from slot ``start`` on; runs of equal slots with no text between them
        are written once with a count (``[012]{8}``)."""
        slots = list(slots)
        out: list[str] = []
        i = 0
        while i < len(slots):
            out.append(_esc(self.separators[start + i]))
            j = i + 1
            while not capture and j < len(slots) and slots[j] == slots[i] and not self.separators[start + j]:
                j += 1
            piece = self._choice(slots[i], capture)
            out.append(piece if j - i == 1 else f"{piece}{{{j - i}}}")
            i = j
        out.append(_esc(self.separators[start + len(slots)]))
        return "".join(out)

    def pattern(self, exclude: Iterable[str] = ()) -> str:
        """The anchored regular expression of every text of the form but those in ``exclude`` (a prefix tree
        of the excluded texts: its size grows with their number times the slots, not with the space)."""
        rows = {self.split(t) for t in exclude}
        rows.discard(None)
        if not rows:
            return "^" + self._body(self.slots) + "$"
        body = self._without(0, [r for r in rows if r is not None])
        return "^(?!)$" if body is None else "^" + body + "$"

    def _without(self, i: int, rows: list[tuple[str, ...]]) -> str | None:
        if not rows:
            return self._body(self.slots[i:], i)
        if i == len(self.slots):
            return None  # this very text is excluded
        by_value: dict[str, list[tuple[str, ...]]] = {}
        for r in rows:
            by_value.setdefault(r[i], []).append(r)
        alts = []
        free = [c for c in self.slots[i] if c not in by_value]
        if free:
            alts.append(self._choice(free) + self._body(self.slots[i + 1 :], i + 1))
        for c in self.slots[i]:
            if c in by_value:
                rest = self._without(i + 1, by_value[c])
                if rest is not None:
                    alts.append(_esc(c) + rest)
        if not alts:
            return None
        joined = alts[0] if len(alts) == 1 else "(" + "|".join(alts) + ")"
        return _esc(self.separators[i]) + joined


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

    def text_form(self) -> TextForm | None:
        """The space's text form (:meth:`encode`'s output, which :meth:`decode` reads) as slots, when it is one:
        the LLM proposer asks for it, constrains the answer to it, and finds it in free text. None (the
        default) leaves the answer a JSON object of the parameters."""
        return None

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
