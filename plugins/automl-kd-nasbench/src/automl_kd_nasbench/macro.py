"""The NAS-Bench-Macro search space: 8 layers x 3 ops on CIFAR-10, its real network and its analytic cost.

Network (Su et al., CVPR 2021; the data README): stem 3x3 conv 3->32 + BN + ReLU; 8 searchable layers in
stages of 2, 3, 3, the first layer of each stage with stride 2 and twice the channels (32->64->128->256); each
layer is ``0`` identity (a 1x1 conv + BN projection where the shape changes), ``1`` an inverted residual with
expansion 3 and kernel 3, or ``2`` one with expansion 6 and kernel 5 (timm's ``InvertedResidual`` with ReLU);
head 1x1 conv to 1280 + BN + ReLU, global average pool, linear classifier.

The analytic cost counts conv and linear multiply-adds and every parameter (BN included); it equals the
table's ``params`` and ``flops`` for all 6,561 architectures (a test checks it): the same count the benchmark
used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from optuna.distributions import BaseDistribution, CategoricalDistribution

from automl_kd.errors import InvalidCandidate
from automl_kd.space import Cost, SearchSpace, TextForm

if TYPE_CHECKING:
    from torch import nn

#: op id -> (name, kernel, expansion); identity has neither
OPS: tuple[tuple[str, int, int], ...] = (("identity", 0, 0), ("ir_k3_e3", 3, 3), ("ir_k5_e6", 5, 6))
OP_TEXT = (
    "identity (a 1x1 conv + BN projection when the layer changes stride or channels)",
    "MobileNetV2 inverted residual, expansion 3, kernel 3x3",
    "MobileNetV2 inverted residual, expansion 6, kernel 5x5",
)
NETWORK_TEXT = (
    "The network: stem 3x3 conv to 32 channels; 8 searchable layers in 3 stages of 2, 3 and 3 layers;\n"
    "the first layer of each stage has stride 2 and doubles the channels (32->64->128->256); head 1x1 conv\n"
    "to 1280 channels, global average pooling, linear classifier."
)
STAGES = (2, 3, 3)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
LAYERS = tuple(f"layer{i}" for i in range(1, sum(STAGES) + 1))
_DIGITS = re.compile(r"^\s*\[?\s*([0-2](?:\s*,?\s*[0-2]){7})\s*\]?\s*$")


def layer_shapes(stem_channels: int = STEM_CHANNELS) -> list[tuple[int, int, int]]:
    """``(in_channels, out_channels, stride)`` of the 8 searchable layers."""
    shapes: list[tuple[int, int, int]] = []
    chs = stem_channels
    for n in STAGES:
        for i in range(n):
            if i == 0:
                shapes.append((chs, 2 * chs, 2))
                chs *= 2
            else:
                shapes.append((chs, chs, 1))
    return shapes


def _out(size: int, stride: int) -> int:
    # odd kernels padded by k // 2: a stride-2 layer gives ceil(size / 2)
    return (size - 1) // stride + 1


def macro_cost(ops: Sequence[int], num_classes: int = 10, in_chans: int = 3, input_size: int = 32) -> Cost:
    """Parameters and multiply-adds of the NAS-Bench-Macro network with op ids ``ops`` (8 ints in 0..2)."""
    size = input_size
    params = STEM_CHANNELS * in_chans * 9 + 2 * STEM_CHANNELS
    macs = STEM_CHANNELS * in_chans * 9 * size * size
    for op, (cin, cout, stride) in zip(ops, layer_shapes(), strict=True):
        out = _out(size, stride)
        _, kernel, exp = OPS[op]
        if op == 0:
            if stride != 1 or cin != cout:
                params += cin * cout + 2 * cout
                macs += cin * cout * out * out
        else:
            mid = cin * exp
            params += cin * mid + mid * kernel * kernel + mid * cout + 4 * mid + 2 * cout
            macs += cin * mid * size * size + (mid * kernel * kernel + mid * cout) * out * out
        size = out
    params += 256 * HEAD_CHANNELS + 2 * HEAD_CHANNELS + (HEAD_CHANNELS + 1) * num_classes
    macs += 256 * HEAD_CHANNELS * size * size + HEAD_CHANNELS * num_classes
    return Cost(params=params, macs=macs)


def build_macro_network(ops: Sequence[int], num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """The NAS-Bench-Macro network for op ids ``ops``, randomly initialised (timm blocks, ReLU)."""
    from timm.models._efficientnet_blocks import InvertedResidual
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int, act: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
        return [*layers, nn.ReLU(inplace=True)] if act else layers

    blocks: list[nn.Module] = []
    for op, (cin, cout, stride) in zip(ops, layer_shapes(), strict=True):
        if op == 0:
            shape_changes = stride != 1 or cin != cout
            blocks.append(
                nn.Sequential(*conv_bn(cin, cout, 1, stride, False)) if shape_changes else nn.Identity()
            )
        else:
            _, kernel, exp = OPS[op]
            # timm adds the input back exactly when stride is 1 and channels match, like the benchmark's
            # blocks
            blocks.append(
                InvertedResidual(
                    cin, cout, dw_kernel_size=kernel, stride=stride, exp_ratio=exp, act_layer=nn.ReLU
                )
            )
    return nn.Sequential(
        nn.Sequential(*conv_bn(in_chans, STEM_CHANNELS, 3, 1, True)),
        nn.Sequential(*blocks),
        nn.Sequential(*conv_bn(layer_shapes()[-1][1], HEAD_CHANNELS, 1, 1, True)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(HEAD_CHANNELS, num_classes),
    )


def parse_ops(text: str, n: int = len(LAYERS), choices: int = 3) -> list[int] | None:
    """Op ids from ``"22212220"``, ``"2,2,2,1,2,2,2,0"`` or ``"[2, 2, ...]"``; None for any other text."""
    m = _DIGITS.match(text) if n == len(LAYERS) and choices == 3 else None
    if m is None:
        return None
    return [int(c) for c in re.sub(r"[^0-9]", "", m.group(1))]


class NASBenchMacroSpace(SearchSpace):
    """NAS-Bench-Macro: 8 layers, each identity (0), IR e3 k3 (1) or IR e6 k5 (2); 6,561 CIFAR-10 networks.

    Parameters are ``layer1`` .. ``layer8`` with choices 0, 1, 2. The text form is the table key, eight digits
    such as ``22212220``; :meth:`decode` also accepts a JSON list or a JSON object of parameters.

    Example::

        space = NASBenchMacroSpace()
        params = space.decode("22212220")
        space.cost(params).params  # 1,985,514, the same as the table
        model = space.build(params)
    """

    name: ClassVar[str] = "nasbench-macro"
    buildable: ClassVar[bool] = True

    def __init__(self, num_classes: int = 10, in_chans: int = 3, input_size: int = 32) -> None:
        # The host passes the data shape; the table is CIFAR-10 (10 classes, 3x32x32). Other shapes only
        # change what build() and cost() return, for training the benchmark's networks on other data.
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = input_size

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution([0, 1, 2]) for name in LAYERS}

    def describe(self) -> str:
        lines = [
            "NAS-Bench-Macro search space (CIFAR-10, 32x32 images, 10 classes).",
            NETWORK_TEXT,
            "Each layer (layer1 .. layer8) is one of:",
        ]
        lines += [f"  {i} = {text}" for i, text in enumerate(OP_TEXT)]
        lines.append('An architecture is written as 8 digits, layer1 first, e.g. "01201120".')
        return "\n".join(lines)

    def ops(self, params: Mapping[str, Any]) -> list[int]:
        return [int(params[name]) for name in LAYERS]

    def table_key(self, params: Mapping[str, Any]) -> str:
        """The table's key for ``params`` (8 digits)."""
        return "".join(str(op) for op in self.ops(self.canonical(params)))

    def canonical(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The benchmark's own parameters for ``params`` (identity; the permuted variant maps its labels)."""
        return dict(params)

    def encode(self, params: Mapping[str, Any]) -> str:
        return "".join(str(params[name]) for name in LAYERS)

    def text_form(self) -> TextForm:
        """8 digits, one op id per layer: ``^[012]{8}$`` (the form the LLM proposer asks for and allows)."""
        ids = tuple(str(i) for i in range(len(OP_TEXT)))
        return TextForm(("",) * (len(LAYERS) + 1), (ids,) * len(LAYERS))

    def decode(self, text: str) -> dict[str, Any]:
        ops = parse_ops(text)
        if ops is not None:
            return self.validate(dict(zip(LAYERS, ops, strict=True)))
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            raise InvalidCandidate(
                f"cannot read {text[:60]!r}: write 8 digits 0-2, e.g. 01201120, "
                "or a JSON object of layer1..layer8"
            ) from None
        if isinstance(obj, list):
            if len(obj) != len(LAYERS):
                raise InvalidCandidate(f"expected {len(LAYERS)} op ids, got {len(obj)}")
            return self.validate(dict(zip(LAYERS, obj, strict=True)))
        if not isinstance(obj, dict):
            raise InvalidCandidate(
                "expected 8 digits, a JSON list of 8 op ids or a JSON object of layer1..layer8"
            )
        return self.validate(obj)

    def cost(self, params: Mapping[str, Any]) -> Cost:
        return macro_cost(self.ops(self.canonical(params)), self.num_classes, self.in_chans, self.input_size)

    def build(self, params: Mapping[str, Any]) -> nn.Module:
        return build_macro_network(self.ops(self.canonical(params)), self.num_classes, self.in_chans)

    def reference(self) -> dict[str, Any]:
        """The largest network (every layer IR e6 k5), the natural reference for compression factors."""
        return dict.fromkeys(LAYERS, 2)
