"""Inverted-residual networks built from timm blocks, and their analytic cost.

A :class:`NetPlan` is the single description of a network: stem, stages of :class:`BlockSpec`, optional
1x1 head conv, classifier. :class:`IRNet` builds it with timm's ``EfficientNetBuilder`` (so the blocks are
timm's ``InvertedResidual`` and ``DepthwiseSeparableConv``), and :func:`plan_cost` counts its parameters and
multiply-adds from the same plan without building anything, which is what lets a proposer price thousands
of candidates.

Counting rules (they match ``torch.utils.flop_counter.FlopCounterMode`` divided by two):
conv ``Cout * Hout * Wout * Cin / groups * k * k`` MACs and ``Cout * Cin / groups * k * k`` params (no bias);
batch norm ``2 * C`` params and no MACs; linear ``in * out`` MACs and ``(in + 1) * out`` params; activations,
residual adds and pooling are free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import ConvNormAct, make_divisible
from timm.models._efficientnet_builder import EfficientNetBuilder, decode_arch_def, efficientnet_init_weights
from torch import nn

from automl_kd.space import Cost

__all__ = [
    "BlockSpec",
    "IRNet",
    "NetPlan",
    "block_cost",
    "conv_out_size",
    "feature_layers",
    "mid_channels",
    "plan_cost",
]


@dataclass(frozen=True)
class BlockSpec:
    """One timm block of a stage.

    ``exp_ratio == 1`` compiles to timm's ``DepthwiseSeparableConv`` (depthwise conv + BN + ReLU6, then a
    linear 1x1 projection + BN), which is torchvision MobileNetV2's ``t=1`` block; any other ratio compiles
    to ``InvertedResidual`` (1x1 expand, depthwise, 1x1 linear projection). Both add the input back when the
    stride is 1 and the channel count does not change; the add has no parameters.
    """

    out_chs: int
    kernel: int = 3
    stride: int = 1
    exp_ratio: float = 6.0

    def __post_init__(self) -> None:
        if self.out_chs < 1:
            raise ValueError(f"block output channels must be >= 1, got {self.out_chs}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            # even kernels would need asymmetric padding; the cost model assumes padding k // 2
            raise ValueError(f"block kernel size must be a positive odd number, got {self.kernel}")
        if self.stride not in (1, 2):
            raise ValueError(
                f"block stride must be 1 or 2 (timm's builder allows no other), got {self.stride}"
            )
        if not self.exp_ratio > 0:
            raise ValueError(f"block expansion ratio must be > 0, got {self.exp_ratio}")

    @property
    def block_type(self) -> str:
        return "ds" if self.exp_ratio == 1 else "ir"

    def timm_string(self) -> str:
        """The timm block string, e.g. ``ir_r1_k3_s2_e6_c24`` or ``ds_r1_k3_s1_c16``."""
        if self.block_type == "ds":
            return f"ds_r1_k{self.kernel}_s{self.stride}_c{self.out_chs}"
        return f"ir_r1_k{self.kernel}_s{self.stride}_e{self.exp_ratio:g}_c{self.out_chs}"


@dataclass(frozen=True)
class NetPlan:
    """A whole network: stem conv 3x3, stages of blocks, optional head conv 1x1, pool, linear classifier.

    ``head_channels`` of ``None`` or 0 means no head conv: the classifier reads the last block's channels.
    """

    stages: tuple[tuple[BlockSpec, ...], ...]
    num_classes: int = 10
    in_chans: int = 3
    input_size: int = 32
    stem_channels: int = 32
    stem_stride: int = 1
    head_channels: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_classes", "in_chans", "input_size", "stem_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if self.head_channels is not None and self.head_channels < 0:
            raise ValueError(f"head_channels must be >= 0 or None, got {self.head_channels}")
        for i, stage in enumerate(self.stages):
            if not stage:
                raise ValueError(f"stage {i} has no blocks; leave empty stages out of the plan")

    @property
    def has_head(self) -> bool:
        return bool(self.head_channels)

    def timm_arch_def(self) -> list[list[str]]:
        """The plan's stages as timm block strings, one list per stage."""
        return [[b.timm_string() for b in stage] for stage in self.stages]


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Output side length of a conv with padding ``kernel // 2`` (timm's static padding for odd kernels)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def mid_channels(in_chs: int, exp_ratio: float) -> int:
    """Expanded channels of a timm ``InvertedResidual``: ``make_divisible(in_chs * exp_ratio)`` (divisor 8).

    This is not ``round(in_chs * exp_ratio)`` as in torchvision: 20 channels x 3 gives 64, not 60. The two
    agree whenever ``in_chs * exp_ratio`` is a multiple of 8.
    """
    return int(make_divisible(in_chs * exp_ratio))


def conv_cost(
    cin: int, cout: int, kernel: int, out_size: int, groups: int = 1, bias: bool = False
) -> tuple[int, int]:
    """``(params, macs)`` of a conv producing ``out_size x out_size``; a following BN adds ``2 * cout`` params."""
    weights = cout * (cin // groups) * kernel * kernel
    return weights + (cout if bias else 0), weights * out_size * out_size


def block_cost(in_chs: int, spec: BlockSpec, size: int) -> tuple[int, int, int]:
    """``(params, macs, out_size)`` of one timm block reading ``in_chs`` channels at ``size x size``."""
    out = conv_out_size(size, spec.kernel, spec.stride)
    if spec.block_type == "ds":
        dw_p, dw_m = conv_cost(in_chs, in_chs, spec.kernel, out, groups=in_chs)
        pw_p, pw_m = conv_cost(in_chs, spec.out_chs, 1, out)
        return dw_p + pw_p + 2 * in_chs + 2 * spec.out_chs, dw_m + pw_m, out
    mid = mid_channels(in_chs, spec.exp_ratio)
    # the expansion runs at the input resolution; only the depthwise conv carries the stride
    ex_p, ex_m = conv_cost(in_chs, mid, 1, size)
    dw_p, dw_m = conv_cost(mid, mid, spec.kernel, out, groups=mid)
    pl_p, pl_m = conv_cost(mid, spec.out_chs, 1, out)
    return ex_p + dw_p + pl_p + 4 * mid + 2 * spec.out_chs, ex_m + dw_m + pl_m, out


def plan_cost(plan: NetPlan) -> Cost:
    """Parameters and MACs of ``plan`` for one image, counted analytically (no model is built)."""
    size = conv_out_size(plan.input_size, 3, plan.stem_stride)
    params, macs = conv_cost(plan.in_chans, plan.stem_channels, 3, size)
    params += 2 * plan.stem_channels
    chs = plan.stem_channels
    for stage in plan.stages:
        for spec in stage:
            p, m, size = block_cost(chs, spec, size)
            params, macs, chs = params + p, macs + m, spec.out_chs
    if plan.head_channels:
        p, m = conv_cost(chs, plan.head_channels, 1, size)
        params, macs, chs = params + p + 2 * plan.head_channels, macs + m, plan.head_channels
    params += (chs + 1) * plan.num_classes
    macs += chs * plan.num_classes
    return Cost(params=params, macs=macs)


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int) -> ConvNormAct:
    return ConvNormAct(cin, cout, kernel, stride=stride, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU6)


def _build_stages(plan: NetPlan) -> list[nn.Sequential]:
    if not plan.stages:
        return []
    builder = EfficientNetBuilder(
        output_stride=1024,  # large, so that the builder never swaps a stride for dilation
        round_chs_fn=lambda c: c,  # channels are already final in the plan
        act_layer=nn.ReLU6,
        norm_layer=nn.BatchNorm2d,
    )
    stages: list[nn.Sequential] = builder(plan.stem_channels, decode_arch_def(plan.timm_arch_def()))
    return stages


class IRNet(nn.Module):
    """A network of timm inverted-residual blocks built from a :class:`NetPlan`.

    Two layouts with the same modules and parameters:

    - ``flat=False`` (default, timm-like): ``stem``, ``blocks`` (one ``nn.Sequential`` per stage), ``head``
      (1x1 conv or identity), ``global_pool``, ``classifier``; :attr:`feature_info` names the stage outputs
      ``blocks.0``, ``blocks.1``, ...
    - ``flat=True`` (torchvision MobileNetV2-like): ``features`` holds the stem, every block and the head
      conv in order (``features.0`` ... ``features.N``), then ``global_pool`` and ``classifier``;
      :attr:`feature_info` names every ``features.i``.

    Example::

        plan = NetPlan(stages=((BlockSpec(16, exp_ratio=1),), (BlockSpec(24, stride=2),)), head_channels=64)
        model = IRNet(plan)
        logits = model(torch.randn(2, 3, 32, 32))  # (2, 10)
    """

    def __init__(self, plan: NetPlan, *, flat: bool = False, drop_rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.plan = plan
        self.flat = flat
        self.num_classes = plan.num_classes
        stem = _conv_bn_relu6(plan.in_chans, plan.stem_channels, 3, plan.stem_stride)
        stages = _build_stages(plan)
        last_chs = plan.stages[-1][-1].out_chs if plan.stages else plan.stem_channels
        head: nn.Module | None = None
        if plan.head_channels:
            head = _conv_bn_relu6(last_chs, plan.head_channels, 1, 1)
            last_chs = plan.head_channels
        self.num_features = last_chs

        # (name, channels, reduction) of each tapped output, computed from the plan like the cost
        info: list[tuple[str, int, int]] = []
        reduction = plan.stem_stride
        if flat:
            blocks = [b for stage in stages for b in stage]
            self.features = nn.Sequential(stem, *blocks, *([head] if head is not None else []))
            info.append(("features.0", plan.stem_channels, reduction))
            specs = [s for stage in plan.stages for s in stage]
            for i, spec in enumerate(specs, start=1):
                reduction *= spec.stride
                info.append((f"features.{i}", spec.out_chs, reduction))
            if head is not None:
                info.append((f"features.{len(specs) + 1}", last_chs, reduction))
        else:
            self.stem = stem
            self.blocks = nn.Sequential(*stages)
            self.head = head if head is not None else nn.Identity()
            for i, stage_specs in enumerate(plan.stages):
                for spec in stage_specs:
                    reduction *= spec.stride
                info.append((f"blocks.{i}", stage_specs[-1].out_chs, reduction))
        self.feature_info = info
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(last_chs, plan.num_classes)
        efficientnet_init_weights(self)  # timm's EfficientNet/MobileNet initialisation

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global pooling (after the head conv, if any)."""
        if self.flat:
            out: torch.Tensor = self.features(x)
            return out
        x = self.stem(x)
        x = self.blocks(x)
        out = self.head(x)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, dropout, linear classifier (``pre_logits`` stops before the classifier)."""
        x = self.drop(self.global_pool(x).flatten(1))
        if pre_logits:
            return x
        out: torch.Tensor = self.classifier(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def feature_layers(model: nn.Module) -> list[tuple[str, int, int]]:
    """``(module name, channels, stride)`` of the tappable outputs of an :class:`IRNet`, shallow to deep.

    The names are ``named_modules()`` names, suitable for forward hooks (attention transfer). ``stride`` is
    the total downsampling factor from the input.
    """
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        raise TypeError(f"{type(model).__name__} has no feature_info; feature_layers() needs an IRNet")
    return list(info)
