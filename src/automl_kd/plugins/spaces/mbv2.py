"""``mbv2``: a CIFAR-style MobileNetV2 space of timm inverted-residual blocks.

The macro layout is fixed (stem, stages with their strides and number of slots, head conv, classifier); a
candidate picks a width multiplier per stage and an op per slot. ``skip`` in a slot other than a stage's first
removes that layer, so depth per stage is searched with fixed parameter names. Costs are analytic
(:mod:`.irnet`).

Example::

    space = MBV2Space(num_classes=10, in_chans=3, input_size=32)
    params = space.sample(random.Random(0))
    text = space.encode(params)        # "stage0 w0.5: ir_k5_e3\\nstage1 w1.0: ir_k3_e6 skip\\n..."
    assert space.decode(text) == params
    model = space.build(params)        # an IRNet of timm blocks
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from timm.layers import make_divisible

from automl_kd.errors import InvalidCandidate
from automl_kd.hookspecs import hookimpl
from automl_kd.space import Cost, SearchSpace

from .irnet import BlockSpec, IRNet, NetPlan, block_cost, conv_out_size, plan_cost

#: (channels at width 1.0, stride of the first slot, number of slots): MobileNetV2 for 32x32 inputs
DEFAULT_STAGES: tuple[tuple[int, int, int], ...] = (
    (16, 1, 1),
    (24, 1, 2),
    (32, 2, 3),
    (64, 2, 4),
    (96, 1, 3),
    (160, 2, 3),
    (320, 1, 1),
)
DEFAULT_OPS: tuple[str, ...] = ("ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6", "ir_k7_e3", "ir_k7_e6")
DEFAULT_WIDTHS: tuple[float, ...] = (0.5, 0.75, 1.0)
SKIP = "skip"

_OP = re.compile(r"^ir_k(\d+)_e(\d+(?:\.\d+)?)$")
_LINE = re.compile(
    r"^stage\s*(\d+)\s*[,:]?\s*w(?:idth)?\s*[=:]?\s*(\d*\.?\d+)\s*[:=]?\s*(.*)$", re.IGNORECASE
)


def parse_op(op: str) -> tuple[int, float]:
    """``"ir_k5_e6"`` -> ``(5, 6.0)``; raise ValueError for anything else."""
    m = _OP.match(op)
    if m is None:
        raise ValueError(f"op {op!r} is not of the form 'ir_k<kernel>_e<expansion>' (e.g. 'ir_k3_e6')")
    return int(m.group(1)), float(m.group(2))


def _op_meaning(op: str) -> str:
    k, e = parse_op(op)
    if e == 1:
        return f"depthwise-separable block: {k}x{k} depthwise conv, 1x1 linear projection (no expansion)"
    return (
        f"inverted residual: 1x1 expansion to {e:g}x the input channels, {k}x{k} depthwise conv, "
        "1x1 linear projection"
    )


class MBV2Space(SearchSpace):
    """CIFAR-style MobileNetV2 space: a width per stage and an inverted-residual op (or ``skip``) per slot.

    Options:
        stages: ``[channels, stride, slots]`` per stage (stride applies to the stage's first slot).
        ops: op vocabulary ``ir_k<kernel>_e<expansion>``; expansion 1 compiles to timm's depthwise-separable
            block. ``skip`` is added by the space to every slot but the first of each stage.
        widths: per-stage width multipliers; channels = ``make_divisible(channels * width, 8)``.
        stem_channels: channels of the 3x3 stem conv.
        stem_stride: stride of the stem; ``None`` = 1 if ``input_size <= 64`` else 2.
        head_channels: 1x1 conv before pooling (``None`` or 0: none).
        drop_rate: dropout before the classifier.
    """

    name = "mbv2"

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: int = 32,
        stages: list[tuple[int, int, int]] | None = None,
        ops: list[str] | None = None,
        widths: list[float] | None = None,
        stem_channels: int = 32,
        stem_stride: int | None = None,
        head_channels: int | None = 1280,
        drop_rate: float = 0.0,
    ) -> None:
        self.stages = _check_stages(DEFAULT_STAGES if stages is None else stages)
        self.ops = _check_ops(DEFAULT_OPS if ops is None else ops)
        self.widths = _check_widths(DEFAULT_WIDTHS if widths is None else widths)
        if stem_stride is None:
            stem_stride = 1 if input_size <= 64 else 2
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = input_size
        self.stem_channels = stem_channels
        self.stem_stride = stem_stride
        self.head_channels = head_channels or None
        self.drop_rate = drop_rate
        #: channels of stage i at each width
        self.channels = [{w: int(make_divisible(c * w, 8)) for w in self.widths} for c, _, _ in self.stages]
        dists: dict[str, BaseDistribution] = {}
        for i, (_, _, slots) in enumerate(self.stages):
            dists[f"s{i}_width"] = CategoricalDistribution(self.widths)
            for j in range(slots):
                choices = self.ops if j == 0 else (*self.ops, SKIP)
                dists[f"s{i}_b{j}_op"] = CategoricalDistribution(choices)
        self._dists = dists
        self._reference = self._uniform(max, None)
        # building the largest plan checks the remaining options (sizes, channels) with NetPlan's messages
        self.plan(self._reference)

    # -- the space --------------------------------------------------------------------------------------
    def distributions(self) -> dict[str, BaseDistribution]:
        return dict(self._dists)

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        for i in range(len(self.stages)):
            key = f"s{i}_b0_op"
            if key in params and params[key] == SKIP:
                raise InvalidCandidate(
                    f"{key}='skip' is not allowed: slot 0 of stage {i} carries the stage's stride and "
                    f"channel change and cannot be removed; choose one of {', '.join(self.ops)}"
                )
        return super().validate(params)

    def plan(self, params: Mapping[str, Any]) -> NetPlan:
        """The :class:`NetPlan` of already validated ``params``."""
        stages: list[tuple[BlockSpec, ...]] = []
        for i, (_, stride, slots) in enumerate(self.stages):
            chs = self.channels[i][params[f"s{i}_width"]]
            blocks = []
            for j in range(slots):
                op = params[f"s{i}_b{j}_op"]
                if op == SKIP:
                    continue
                kernel, exp = parse_op(op)
                blocks.append(BlockSpec(chs, kernel, stride if j == 0 else 1, exp))
            stages.append(tuple(blocks))
        return NetPlan(
            stages=tuple(stages),
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            input_size=self.input_size,
            stem_channels=self.stem_channels,
            stem_stride=self.stem_stride,
            head_channels=self.head_channels,
        )

    def cost(self, params: Mapping[str, Any]) -> Cost:
        return plan_cost(self.plan(self.validate(params)))

    def build(self, params: Mapping[str, Any]) -> IRNet:
        return IRNet(self.plan(self.validate(params)), drop_rate=self.drop_rate)

    def reference(self) -> dict[str, Any]:
        """The largest candidate: the widest width and the most expensive op in every slot."""
        return dict(self._reference)

    def smallest(self) -> dict[str, Any]:
        """The cheapest candidate: narrowest width, cheapest op in each first slot, ``skip`` elsewhere."""
        return self._uniform(min, SKIP)

    def _uniform(self, pick: Any, rest: str | None) -> dict[str, Any]:
        """Widths ``pick(widths)``; in each slot the op ``pick`` selects by whole-network (MACs, params)."""

        def params_for(op: str, other: str | None) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for i, (_, _, slots) in enumerate(self.stages):
                out[f"s{i}_width"] = pick(self.widths)
                for j in range(slots):
                    out[f"s{i}_b{j}_op"] = op if j == 0 or other is None else other
            return out

        def key(op: str) -> tuple[int, int]:
            c = plan_cost(self.plan(params_for(op, rest)))
            return c.macs, c.params

        return params_for(pick(self.ops, key=key), rest)

    # -- text forms -------------------------------------------------------------------------------------
    def encode(self, params: Mapping[str, Any]) -> str:
        lines = []
        for i, (_, _, slots) in enumerate(self.stages):
            ops = " ".join(str(params[f"s{i}_b{j}_op"]) for j in range(slots))
            lines.append(f"stage{i} w{float(params[f's{i}_width'])!r}: {ops}")
        return "\n".join(lines)

    def decode(self, text: str) -> dict[str, Any]:
        """Parse the one-line-per-stage form (see :meth:`describe`) or a JSON object of parameters."""
        body = _strip_fences(text)
        if body.startswith("{"):
            try:
                obj = json.loads(body)
            except json.JSONDecodeError as exc:
                raise InvalidCandidate(f"not valid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise InvalidCandidate("expected a JSON object of parameter values")
            return self.validate({k: v.strip().lower() if isinstance(v, str) else v for k, v in obj.items()})
        params: dict[str, Any] = {}
        seen: set[int] = set()
        for n, raw in enumerate(body.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = _LINE.match(line)
            if m is None:
                raise InvalidCandidate(
                    f"line {n}: cannot read {line!r}; expected 'stage<i> w<width>: <op> <op> ...' "
                    f"(e.g. 'stage1 w0.75: ir_k5_e6 skip')"
                )
            i = int(m.group(1))
            if i >= len(self.stages):
                raise InvalidCandidate(
                    f"line {n}: stage{i} does not exist; stages are 0..{len(self.stages) - 1}"
                )
            if i in seen:
                raise InvalidCandidate(f"line {n}: stage{i} is given twice")
            seen.add(i)
            ops = [op.lower() for op in re.split(r"[\s,;]+", m.group(3).strip()) if op]
            slots = self.stages[i][2]
            if len(ops) != slots:
                raise InvalidCandidate(
                    f"stage{i} has {_count(slots, 'slot')}, but the line gives {_count(len(ops), 'op')} "
                    f"({' '.join(ops) or 'none'}); write one op per slot, 'skip' for a removed layer"
                )
            params[f"s{i}_width"] = float(m.group(2))
            params.update({f"s{i}_b{j}_op": op for j, op in enumerate(ops)})
        missing = [i for i in range(len(self.stages)) if i not in seen]
        if missing:
            raise InvalidCandidate(
                f"stage{missing[0]} is missing; give one line for each of the {len(self.stages)} stages"
            )
        return self.validate(params)

    def describe(self) -> str:
        wmax = max(self.widths)
        ref, small = plan_cost(self.plan(self.reference())), plan_cost(self.plan(self.smallest()))
        head = f"1x1 conv to {self.head_channels} channels + BN + ReLU6, " if self.head_channels else ""
        lines = [
            f"Search space {self.name!r}: a MobileNetV2-style network of timm inverted-residual blocks for "
            f"{self.in_chans}x{self.input_size}x{self.input_size} inputs and {self.num_classes} classes.",
            f"Fixed: stem 3x3 conv to {self.stem_channels} channels (stride {self.stem_stride}) + BN + "
            f"ReLU6; {head}global average pool, linear classifier.",
            "Searched: a width multiplier per stage and an op per slot. Stages:",
        ]
        size = conv_out_size(self.input_size, 3, self.stem_stride)
        for i, (_, stride, slots) in enumerate(self.stages):
            size = conv_out_size(size, 3, stride)
            chs = ", ".join(f"w{w!r}={c}" for w, c in self.channels[i].items())
            lines.append(
                f"  stage{i}: {_count(slots, 'slot')}, stride {stride} in slot 0, output {size}x{size}, "
                f"channels {chs}"
            )
        lines.append("Ops:")
        lines += [f"  {op}: {_op_meaning(op)}" for op in self.ops]
        lines.append(
            f"  {SKIP}: remove the layer (not allowed in slot 0, which carries the stride and channel change)"
        )
        lines.append(f"MACs in thousands of one layer at width {wmax!r} (slot 0 / each other slot):")
        lines.append("  " + "  ".join(["stage ", *(f"{op:>15}" for op in self.ops)]))
        for i, row in enumerate(self._op_table(wmax)):
            cells = (f"{a // 1000}/{b // 1000}".rjust(15) for a, b in row)
            lines.append("  " + "  ".join([f"stage{i}", *cells]))
        lines += [
            f"Whole network: from {small.params:,} params and {small.macs:,} MACs (smallest) "
            f"to {ref.params:,} params and {ref.macs:,} MACs (largest).",
            "Text form: one line per stage, 'stage<i> w<width>: ' then one op per slot, separated by spaces. "
            "Example:",
            *("  " + ln for ln in self.encode(self.smallest()).splitlines()),
            "A JSON object of the parameters is also accepted: "
            + ", ".join(list(self._dists)[:3])
            + ", ... (s<i>_width, s<i>_b<j>_op).",
        ]
        return "\n".join(lines)

    def _op_table(self, width: float) -> list[list[tuple[int, int]]]:
        """Per stage and op: MACs of the op in slot 0 and in a later slot, all stages at ``width``."""
        rows: list[list[tuple[int, int]]] = []
        size = conv_out_size(self.input_size, 3, self.stem_stride)
        in_chs = self.stem_channels
        for i, (_, stride, _) in enumerate(self.stages):
            chs = self.channels[i][width]
            row = []
            for op in self.ops:
                k, e = parse_op(op)
                _, first, out = block_cost(in_chs, BlockSpec(chs, k, stride, e), size)
                _, other, _ = block_cost(chs, BlockSpec(chs, k, 1, e), out)
                row.append((first, other))
            rows.append(row)
            size, in_chs = conv_out_size(size, 3, stride), chs
        return rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _strip_fences(text: str) -> str:
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    return body.strip()


def _check_stages(stages: Any) -> tuple[tuple[int, int, int], ...]:
    out = []
    if not stages:
        raise ValueError("stages must list at least one [channels, stride, slots]")
    for i, st in enumerate(stages):
        if len(st) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in st):
            raise ValueError(f"stages[{i}] must be three integers [channels, stride, slots], got {st!r}")
        chs, stride, slots = st
        if chs < 1 or slots < 1 or stride not in (1, 2):
            raise ValueError(f"stages[{i}]={list(st)}: need channels >= 1, stride 1 or 2, slots >= 1")
        out.append((chs, stride, slots))
    return tuple(out)


def _check_ops(ops: Any) -> tuple[str, ...]:
    if not ops:
        raise ValueError("ops must list at least one op such as 'ir_k3_e6'")
    out = []
    for op in ops:
        if op == SKIP:
            raise ValueError(
                "do not list 'skip' in ops: the space adds it to every slot after a stage's first"
            )
        kernel, exp = parse_op(op)  # raises ValueError with the expected form
        BlockSpec(8, kernel, 1, exp)  # odd kernel, positive expansion
        if op in out:
            raise ValueError(f"op {op!r} is listed twice")
        out.append(op)
    return tuple(out)


def _check_widths(widths: Any) -> tuple[float, ...]:
    if not widths:
        raise ValueError("widths must list at least one width multiplier")
    out = tuple(float(w) for w in widths)
    if any(not w > 0 for w in out):
        raise ValueError(f"width multipliers must be > 0, got {list(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"width multipliers must be distinct, got {list(out)}")
    return out


@hookimpl
def register_search_spaces(register: Any) -> None:
    """Register ``mbv2``."""
    register(
        "mbv2",
        MBV2Space,
        description="CIFAR-style MobileNetV2 space: width per stage, inverted-residual op or skip per slot",
    )
