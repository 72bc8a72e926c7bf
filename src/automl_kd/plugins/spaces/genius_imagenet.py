"""The ``genius-imagenet`` space: GENIUS's MobileNetV3-like ImageNet space (Zheng et al. 2023), timm blocks.

Five searched stages of six slots; each slot takes one of seven ops (GENIUS's op ids 0..6)::

    0 skip   1 ir_k3_e4   2 ir_k5_e4   3 ir_k7_e4   4 ir_k3_e6   5 ir_k5_e6   6 ir_k7_e6

``ir_kK_eE`` is timm's ``InvertedResidual`` (1x1 expansion by E, KxK depthwise, squeeze-and-excitation 0.25 of
the expanded channels, 1x1 linear projection), built with timm's ``EfficientNetBuilder``. ``skip`` in slots
2-6 deletes the layer, so the depth of every stage (1 to 6 blocks) is searched too. ``skip`` in slot 1 is
allowed, as in GENIUS: the first slot changes channels (and usually resolution), so a skip there becomes a 1x1
conv + BN projection with the stage's stride (GENIUS's ``Identity`` with ``downsample``). A stage therefore
always has at least one layer.

Fixed parts, as in GENIUS's ``network/genius.py``: stem conv 3x3 stride 2 to 16 channels + BN + hard-swish; a
depthwise-separable block 16 -> 16 with SE; stages 16->24 (s2), 24->40 (s2), 40->80 (s2), 80->96 (s1), 96->192
(s2); a 1x1 conv 192 -> 320 + BN + hard-swish; global average pool; a 1x1 conv 320 -> 1280 with bias +
hard-swish on the pooled vector; dropout; linear classifier. Hard-swish everywhere, SE with ReLU and
hard-sigmoid (MobileNetV3).

Cost (analytic, :meth:`GeniusImageNetSpace.cost`): MACs count convolutions and linear layers only, the way
thop and fvcore count those layers (``Cout * Hout * Wout * Cin / groups * k * k``; a linear ``in * out``),
biases, batch norm, activations, pooling and the SE gate multiply excluded; it equals
``torch.utils.flop_counter`` FLOPs / 2. Because every slot's cost depends only on its op and on whether it is
the stage's first slot, the total is the fixed cost plus a sum of table entries;
:meth:`GeniusImageNetSpace.describe` gives that table to an LLM. GENIUS's published FLOPs (thop, which also
counted batch norm) are about 7 % higher than these MACs: the architecture in GENIUS's ``genius.py``
(GENIUS-329, 329 M FLOPs, 7.0 M params) has 307.0 M MACs and 6,967,464 parameters here. A window taken from
the paper ([270, 330] M) may be lowered accordingly (about [252, 307] M).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from timm.layers import make_divisible
from torch import nn

from automl_kd.errors import InvalidCandidate
from automl_kd.hookspecs import hookimpl
from automl_kd.space import Cost, SearchSpace, TextForm

from .genius_net import (
    _ALIASES,
    FEATURE_CHS,
    HEAD_CHS,
    OPS,
    SE_RATIO,
    SLOTS,
    STAGES,
    STEM_CHS,
    GeniusNet,
    StageSpec,
    _op,
)
from .irnet import conv_cost, conv_out_size, mid_channels

__all__ = ["OPS", "STAGES", "GeniusImageNetSpace", "GeniusNet", "StageSpec"]


def _se_chs(chs: int) -> int:
    return int(
        make_divisible(chs * SE_RATIO)
    )  # timm MobileNetV3 / GENIUS: divisor 8 of the expanded channels


def _se(chs: int) -> tuple[int, int]:
    rd = _se_chs(chs)
    return chs * rd + rd + rd * chs + chs, 2 * chs * rd  # two 1x1 convs with bias on a 1x1 map


def slot_cost(stage: StageSpec, first: bool, op: str, size: int) -> tuple[int, int, int]:
    """``(params, macs, out_size)`` of one slot reading ``size x size``; a removed layer costs nothing."""
    cin = stage.in_chs if first else stage.out_chs
    stride = stage.stride if first else 1
    if op == "skip":
        if not first:
            return 0, 0, size
        out = conv_out_size(size, 1, stride)
        p, m = conv_cost(cin, stage.out_chs, 1, out)
        return p + 2 * stage.out_chs, m, out
    k, e = _op(op)
    mid = mid_channels(cin, e)
    out = conv_out_size(size, k, stride)
    p1, m1 = conv_cost(cin, mid, 1, size)
    p2, m2 = conv_cost(mid, mid, k, out, groups=mid)
    p3, m3 = _se(mid)
    p4, m4 = conv_cost(mid, stage.out_chs, 1, out)
    return p1 + p2 + p3 + p4 + 4 * mid + 2 * stage.out_chs, m1 + m2 + m3 + m4, out


class GeniusImageNetSpace(SearchSpace):
    """GENIUS's ImageNet space: 5 stages x 6 slots x 7 ops; parameters ``s1_b1`` ... ``s5_b6``.

    ``input_size`` is the side of the images the network is built for; MACs are counted at ``cost_input_size``
    (default: ``input_size``; 224 for the paper's FLOPs window whatever resolution training uses).

    Example::

        space = GeniusImageNetSpace()
        params = space.decode("[[1,0,1,0,1,0],[1,1,0,1,1,0],[4,4,0,4,4,0],[4,5,0,5,4,0],[6,6,0,6,6,0]]")
        print(space.cost(params).macs / 1e6)  # MACs at 224 px, in millions
    """

    name = "genius-imagenet"

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        input_size: int = 224,
        cost_input_size: int | None = None,
        drop_rate: float = 0.2,
    ) -> None:
        for key, value in (("num_classes", num_classes), ("in_chans", in_chans), ("input_size", input_size)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if cost_input_size is not None and cost_input_size < 1:
            raise ValueError(f"cost_input_size must be >= 1, got {cost_input_size}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = input_size
        self.cost_input_size = cost_input_size or input_size
        self.drop_rate = drop_rate

    # -- parameters ------------------------------------------------------------------------------------------
    @staticmethod
    def param_name(stage: int, slot: int) -> str:
        """Parameter name of ``slot`` (0-based) of ``stage`` (0-based): ``s{stage+1}_b{slot+1}``."""
        return f"s{stage + 1}_b{slot + 1}"

    def distributions(self) -> dict[str, BaseDistribution]:
        return {
            self.param_name(i, j): CategoricalDistribution(OPS)
            for i in range(len(STAGES))
            for j in range(SLOTS)
        }

    def stage_ops(self, params: Mapping[str, Any]) -> list[list[str]]:
        """The op names of each stage, 5 lists of 6."""
        return [[str(params[self.param_name(i, j)]) for j in range(SLOTS)] for i in range(len(STAGES))]

    def stage_ids(self, params: Mapping[str, Any]) -> list[list[int]]:
        """GENIUS's form: 5 lists of 6 op ids."""
        return [[OPS.index(op) for op in ops] for ops in self.stage_ops(params)]

    # -- text forms ------------------------------------------------------------------------------------------
    def encode(self, params: Mapping[str, Any]) -> str:
        """Per-stage op-id lists, e.g. ``[[1,0,1,0,1,0],[...],...]`` (GENIUS's form); :meth:`decode` inverts
        it."""
        return json.dumps(self.stage_ids(params), separators=(",", ":"))

    def text_form(self) -> TextForm:
        """The per-stage op-id lists of :meth:`encode`, ``[[1,0,1,0,1,0],...]``: 5 x 6 ids 0-6."""
        seps = ["[["]
        for i in range(len(STAGES)):
            seps += [","] * (SLOTS - 1) + (["],["] if i < len(STAGES) - 1 else ["]]"])
        ids = tuple(str(i) for i in range(len(OPS)))
        return TextForm(tuple(seps), (ids,) * (len(STAGES) * SLOTS))

    def decode(self, text: str) -> dict[str, Any]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidCandidate(f"not valid JSON: {exc}") from None
        return self.params_from_answer(obj)

    def params_from_answer(self, obj: Any) -> dict[str, Any]:
        """Validated parameters from a decoded answer, or :class:`InvalidCandidate` saying what is wrong.

        Accepted forms: a mapping of the 30 parameters; a mapping ``{"stage1": [...], ..., "stage5": [...]}``;
        five lists of six ops; one flat list of 30 ops. An op is its name (``"ir_k5_e6"``,
        ``"skip"``/``"id"``) or its GENIUS id 0..6 (an integer or a digit string).
        """
        n = len(STAGES)
        if isinstance(obj, Mapping):
            if any(k in obj for k in self.distributions()):
                return self.validate({k: self._op_value(k, v) for k, v in obj.items()})
            stages = [obj.get(k) for k in _stage_keys(obj)]
            if len(stages) != n:
                raise InvalidCandidate(
                    f"expected the {SLOTS * n} parameters s1_b1..s5_b6 or the keys stage1..stage5, got keys "
                    f"{sorted(obj)[:8]}"
                )
            obj = stages
        if not isinstance(obj, Sequence) or isinstance(obj, str):
            raise InvalidCandidate(
                f"expected {n} lists of {SLOTS} ops or one list of {n * SLOTS}, got {obj!r}"
            )
        if all(isinstance(s, Sequence) and not isinstance(s, str) for s in obj):
            if len(obj) != n:
                raise InvalidCandidate(f"expected {n} stages of {SLOTS} ops, got {len(obj)} lists")
            for i, s in enumerate(obj):
                if len(s) != SLOTS:
                    raise InvalidCandidate(
                        f"stage {i + 1} has {len(s)} ops; each stage needs exactly {SLOTS}"
                    )
            flat = [v for s in obj for v in s]
        elif len(obj) == n * SLOTS:
            flat = list(obj)
        else:
            raise InvalidCandidate(
                f"expected {n * SLOTS} ops ({n} stages x {SLOTS}), got a list of {len(obj)}"
            )
        names = list(self.distributions())
        return self.validate({k: self._op_value(k, v) for k, v in zip(names, flat, strict=True)})

    @staticmethod
    def _op_value(key: str, value: Any) -> Any:
        if isinstance(value, bool):
            return value  # rejected by validate() with the list of allowed ops
        if isinstance(value, int | float) and float(value).is_integer() and 0 <= int(value) < len(OPS):
            return OPS[int(value)]
        if isinstance(value, str):
            v = value.strip().lower()
            if v.isdigit() and int(v) < len(OPS):
                return OPS[int(v)]
            return _ALIASES.get(v, v)
        return value

    def describe(self) -> str:
        size = self.cost_input_size
        lines = [
            f"Search space 'genius-imagenet': a MobileNetV3-like network for {self.input_size}x"
            f"{self.input_size} images and {self.num_classes} classes.",
            "Fixed parts: stem conv 3x3 stride 2 to 16 channels; a depthwise-separable block with 16 "
            "channels; five searched stages of six slots; a 1x1 conv to 320 channels; global average "
            "pooling; a 1x1 conv to 1280 channels; a linear classifier. Hard-swish activations, "
            "squeeze-and-excitation (0.25) in every block.",
            "Operations for each slot (id: name):",
            "0: skip - in slot 1 of a stage a 1x1 conv + BN projection (slot 1 changes channels and "
            "resolution); in slots 2-6 the layer is removed, so skips set the depth of a stage",
        ]
        for i, op in enumerate(OPS[1:], start=1):
            k, e = _op(op)
            lines.append(f"{i}: {op} - inverted residual block, depthwise kernel {k}x{k}, expansion {e}")
        lines.append("Stages (parameters; channels; stride of slot 1; output resolution):")
        res = conv_out_size(size, 3, 2)
        for i, st in enumerate(STAGES):
            res = conv_out_size(res, 1, st.stride)
            lines.append(
                f"stage {i + 1} ({self.param_name(i, 0)}..{self.param_name(i, SLOTS - 1)}): {st.in_chs} -> "
                f"{st.out_chs} channels, stride {st.stride}, {res}x{res}"
            )
        lines.append(f"MACs in millions at {size}x{size} per slot, for op ids 0..6:")
        for i, (first, rest) in enumerate(self.slot_macs_table()):
            lines.append(f"stage {i + 1} slot 1: {_fmt_list(first)}")
            lines.append(f"stage {i + 1} slots 2-6: {_fmt_list(rest)}")
        fixed = self._fixed_cost(size)
        lines.append(
            f"Fixed parts: {fixed.macs / 1e6:.3f} M MACs. Total MACs = fixed parts + the 30 slot entries."
        )
        lines.append("Parameters s1_b1 .. s5_b6 each take an op name: " + ", ".join(OPS) + ".")
        return "\n".join(lines)

    def slot_macs_table(self) -> list[tuple[list[float], list[float]]]:
        """Per stage: MACs (millions) of each op in slot 1 and in slots 2-6, at ``cost_input_size``."""
        size = conv_out_size(self.cost_input_size, 3, 2)
        table = []
        for st in STAGES:
            first = [slot_cost(st, True, op, size)[1] / 1e6 for op in OPS]
            rest_size = conv_out_size(size, 1, st.stride)
            rest = [slot_cost(st, False, op, rest_size)[1] / 1e6 for op in OPS]
            table.append((first, rest))
            size = rest_size
        return table

    # -- cost ------------------------------------------------------------------------------------------------
    def _fixed_cost(self, input_size: int) -> Cost:
        size = conv_out_size(input_size, 3, 2)
        p, m = conv_cost(self.in_chans, STEM_CHS, 3, size)
        params, macs = p + 2 * STEM_CHS, m
        for cp, cm in (
            conv_cost(STEM_CHS, STEM_CHS, 3, size, groups=STEM_CHS),
            _se(STEM_CHS),
            conv_cost(STEM_CHS, STEM_CHS, 1, size),
        ):
            params, macs = params + cp, macs + cm
        params += 4 * STEM_CHS
        for st in STAGES:
            size = conv_out_size(size, 1, st.stride)
        p, m = conv_cost(STAGES[-1].out_chs, HEAD_CHS, 1, size)
        params, macs = params + p + 2 * HEAD_CHS, macs + m
        p, m = conv_cost(HEAD_CHS, FEATURE_CHS, 1, 1, bias=True)
        params, macs = params + p, macs + m
        return Cost(
            params=params + (FEATURE_CHS + 1) * self.num_classes, macs=macs + FEATURE_CHS * self.num_classes
        )

    def cost(self, params: Mapping[str, Any], input_size: int | None = None) -> Cost:
        """Parameters and MACs (convolutions and linear layers) for one image at ``cost_input_size``."""
        size_in = input_size or self.cost_input_size
        fixed = self._fixed_cost(size_in)
        total_p, total_m = fixed.params, fixed.macs
        size = conv_out_size(size_in, 3, 2)
        for st, ops in zip(STAGES, self.stage_ops(params), strict=True):
            for j, op in enumerate(ops):
                p, m, size = slot_cost(st, j == 0, op, size)
                total_p, total_m = total_p + p, total_m + m
        return Cost(params=total_p, macs=total_m)

    # -- build -----------------------------------------------------------------------------------------------
    def build(self, params: Mapping[str, Any]) -> nn.Module:
        return GeniusNet(
            self.stage_ops(self.validate(params)),
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            drop_rate=self.drop_rate,
        )

    def reference(self) -> dict[str, Any]:
        """The largest network of the space: every slot ``ir_k7_e6``."""
        return dict.fromkeys(self.distributions(), OPS[-1])


def _stage_keys(obj: Mapping[str, Any]) -> list[str]:
    """Keys like ``stage1``/``Stage 1``/``s1`` in stage order, or [] when they are not exactly stages 1..5."""
    found: dict[int, str] = {}
    for key in obj:
        m = re.fullmatch(r"\s*(?:stage|s)[\s_-]*(\d)\s*", str(key), flags=re.IGNORECASE)
        if m:
            found[int(m.group(1))] = key
    if sorted(found) == list(range(1, len(STAGES) + 1)):
        return [found[i] for i in sorted(found)]
    if sorted(found) == list(range(len(STAGES))):
        return [found[i] for i in sorted(found)]
    return []


def _fmt_list(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


@hookimpl
def register_search_spaces(register: Any) -> None:
    register(
        "genius-imagenet",
        GeniusImageNetSpace,
        description="GENIUS ImageNet space: 5 stages x 6 slots x 7 ops, MobileNetV3-like, timm blocks",
    )
