"""The network of a ``genius-imagenet`` candidate (:class:`GeniusNet`, MobileNetV3-like, built from timm's
EfficientNet blocks) and the fixed parts it shares with the space's cost model: the stages, the ops, the widths.
A helper module (no hooks): :mod:`automl_kd.plugins.spaces.genius_imagenet` registers the space."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import ConvNormAct, make_divisible
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import EfficientNetBuilder, decode_arch_def, efficientnet_init_weights
from torch import nn

#: op names in GENIUS's id order (the id of an op is its index)
OPS: tuple[str, ...] = ("skip", "ir_k3_e4", "ir_k5_e4", "ir_k7_e4", "ir_k3_e6", "ir_k5_e6", "ir_k7_e6")
_ALIASES = {"id": "skip", "identity": "skip", "none": "skip", "zero": "skip"}
SLOTS = 6
STEM_CHS = 16
HEAD_CHS = 320
FEATURE_CHS = 1280
SE_RATIO = 0.25


@dataclass(frozen=True)
class StageSpec:
    """One searched stage: input and output channels, and the stride of its first slot."""

    in_chs: int
    out_chs: int
    stride: int


STAGES: tuple[StageSpec, ...] = (
    StageSpec(16, 24, 2),
    StageSpec(24, 40, 2),
    StageSpec(40, 80, 2),
    StageSpec(80, 96, 1),
    StageSpec(96, 192, 2),
)


def _op(name: str) -> tuple[int, int]:
    """``(kernel, expansion)`` of an ``ir_kK_eE`` op."""
    m = re.fullmatch(r"ir_k(\d)_e(\d)", name)
    assert m, name
    return int(m.group(1)), int(m.group(2))


_SE_LAYER = partial(
    SqueezeExcite,
    gate_layer="hard_sigmoid",
    force_act_layer=nn.ReLU,
    rd_round_fn=lambda c: int(make_divisible(c)),
)


def _builder() -> EfficientNetBuilder:
    return EfficientNetBuilder(
        output_stride=1024,  # never swap a stride for dilation
        round_chs_fn=lambda c: c,  # channels are final
        se_from_exp=True,  # SE reduction from the expanded channels, as in MobileNetV3 and GENIUS
        act_layer=nn.Hardswish,
        norm_layer=nn.BatchNorm2d,
        se_layer=_SE_LAYER,
    )


class GeniusNet(nn.Module):
    """The network of one ``genius-imagenet`` candidate: ``stem``, ``blocks`` (the depthwise-separable block,
    then one ``nn.Sequential`` per searched stage), ``head``, ``global_pool``, ``conv_head``, ``classifier``.

    :attr:`feature_info` lists ``(module name, channels, reduction)`` of each stage output (``blocks.0`` ...).
    """

    def __init__(
        self,
        stage_ops: Sequence[Sequence[str]],
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = ConvNormAct(in_chans, STEM_CHS, 3, stride=2, act_layer=nn.Hardswish)
        first = _builder()(STEM_CHS, decode_arch_def([[f"ds_r1_k3_s1_c{STEM_CHS}_se{SE_RATIO}"]]))
        stages: list[nn.Module] = [first[0]]
        info = [("blocks.0", STEM_CHS, 2)]
        reduction = 2
        for i, (st, ops) in enumerate(zip(STAGES, stage_ops, strict=True)):
            stages.append(_build_stage(st, list(ops)))
            reduction *= st.stride
            info.append((f"blocks.{i + 1}", st.out_chs, reduction))
        self.blocks = nn.Sequential(*stages)
        self.head = ConvNormAct(STAGES[-1].out_chs, HEAD_CHS, 1, act_layer=nn.Hardswish)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(HEAD_CHS, FEATURE_CHS, 1, bias=True)
        self.act2 = nn.Hardswish()
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(FEATURE_CHS, num_classes)
        self.num_features = FEATURE_CHS
        self.feature_info = info
        efficientnet_init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.blocks(self.stem(x)))
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act2(self.conv_head(self.global_pool(x))).flatten(1)
        x = self.drop(x)
        if pre_logits:
            return x
        out: torch.Tensor = self.classifier(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # timm's split: features, then the head


def _build_stage(st: StageSpec, ops: list[str]) -> nn.Sequential:
    modules: list[nn.Module] = []
    in_chs = st.in_chs
    stride = st.stride
    if ops[0] == "skip":
        # GENIUS's Identity with downsample: slot 1 must change channels/resolution, so a linear projection
        modules.append(ConvNormAct(st.in_chs, st.out_chs, 1, stride=st.stride, apply_act=False))
        in_chs, stride = st.out_chs, 1
    strings = []
    for j, op in enumerate(ops):
        if op == "skip":
            continue
        k, e = _op(op)
        s = stride if j == 0 else 1
        strings.append(f"ir_r1_k{k}_s{s}_e{e}_c{st.out_chs}_se{SE_RATIO}")
    if strings:
        built = _builder()(in_chs, decode_arch_def([strings]))
        modules.extend(built[0])
    return nn.Sequential(*modules)
