"""``paper-truncated``: the IG-KD paper's CIFAR MobileNetV2 teacher and its truncated students.

The teacher is torchvision's MobileNetV2 layout adapted to 32x32 inputs (stem stride 1, second stage
stride 1): ``features.0`` is the 3x3 stem, ``features.1`` .. ``features.17`` the inverted-residual blocks,
``features.18`` the 1x1 conv to 1280 channels. A student removes the last ``removed`` modules of
``features`` and classifies from the last kept module (global average pool + linear). The blocks are timm's
(``DepthwiseSeparableConv`` for the ``t=1`` block, ``InvertedResidual`` for the rest); parameter counts equal
the paper's table exactly.

Example::

    space = PaperTruncatedSpace()
    space.cost({"removed": 5})   # Cost(params=543498, macs=58696640)
    model = space.build({"removed": 5})   # model.features has 14 modules
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from optuna.distributions import BaseDistribution, IntDistribution
from timm.layers import make_divisible

from automl_kd.errors import InvalidCandidate
from automl_kd.hookspecs import hookimpl
from automl_kd.space import Cost, SearchSpace

from .irnet import BlockSpec, IRNet, NetPlan, plan_cost

#: torchvision MobileNetV2 inverted-residual settings (t, c, n, s), second stage stride 1 for 32x32 inputs
PAPER_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
NUM_MODULES = 19  # stem + 17 blocks + head conv
MAX_REMOVED = NUM_MODULES - 1  # the stem always stays

_TEXT = re.compile(r"^(?:removed\s*[=:]\s*)?(\d+)$", re.IGNORECASE)


class PaperTruncatedSpace(SearchSpace):
    """The IG-KD teacher (``removed=0``) and the students that drop its last ``removed`` feature modules.

    Options:
        width: width multiplier as in torchvision (channels ``make_divisible(c * width, 8)``, head conv
            ``make_divisible(1280 * max(1, width), 8)``); the paper uses 1.0.
        stem_stride: stride of the stem conv; the paper's CIFAR network uses 1.
        drop_rate: dropout before the classifier.
    """

    name = "paper-truncated"

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: int = 32,
        width: float = 1.0,
        stem_stride: int = 1,
        drop_rate: float = 0.0,
    ) -> None:
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = input_size
        self.width = float(width)
        self.stem_stride = stem_stride
        self.drop_rate = drop_rate
        self.stem_channels = int(make_divisible(32 * width, 8))
        self.head_channels = int(make_divisible(1280 * max(1.0, width), 8))
        #: the 17 blocks of the teacher, in order, with the stage each belongs to
        self.blocks: list[tuple[int, BlockSpec]] = []
        for stage, (t, c, n, s) in enumerate(PAPER_SETTINGS):
            chs = int(make_divisible(c * width, 8))
            self.blocks += [(stage, BlockSpec(chs, 3, s if i == 0 else 1, float(t))) for i in range(n)]
        self.plan(0)  # checks the remaining options with NetPlan's messages

    def distributions(self) -> dict[str, BaseDistribution]:
        return {"removed": IntDistribution(0, MAX_REMOVED)}

    def plan(self, removed: int) -> NetPlan:
        """The network with the last ``removed`` modules of ``features`` dropped."""
        if not 0 <= removed <= MAX_REMOVED:
            raise ValueError(f"removed must be in [0, {MAX_REMOVED}], got {removed}")
        # removing 1 module drops the head conv; every further one drops a block from the end
        kept = self.blocks[: len(self.blocks) - max(0, removed - 1)]
        stages: dict[int, list[BlockSpec]] = {}
        for stage, spec in kept:
            stages.setdefault(stage, []).append(spec)
        return NetPlan(
            stages=tuple(tuple(v) for v in stages.values()),
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            input_size=self.input_size,
            stem_channels=self.stem_channels,
            stem_stride=self.stem_stride,
            head_channels=self.head_channels if removed == 0 else None,
        )

    def cost(self, params: Mapping[str, Any]) -> Cost:
        return plan_cost(self.plan(self.validate(params)["removed"]))

    def build(self, params: Mapping[str, Any]) -> IRNet:
        """The network with the paper's module names: ``features.0`` .. ``features.<18 - removed>``."""
        return IRNet(self.plan(self.validate(params)["removed"]), flat=True, drop_rate=self.drop_rate)

    def reference(self) -> dict[str, Any]:
        """The teacher."""
        return {"removed": 0}

    def encode(self, params: Mapping[str, Any]) -> str:
        return f"removed={int(params['removed'])}"

    def decode(self, text: str) -> dict[str, Any]:
        """Accepts ``removed=5``, ``removed: 5``, ``5`` or ``{"removed": 5}``."""
        body = text.strip().strip("`").strip()
        if body.startswith("{"):
            return super().decode(body)
        m = _TEXT.match(body)
        if m is None:
            raise InvalidCandidate(f"cannot read {text!r}; write 'removed=<k>' with k in [0, {MAX_REMOVED}]")
        return self.validate({"removed": int(m.group(1))})

    def describe(self) -> str:
        teacher = plan_cost(self.plan(0))
        lines = [
            f"Search space {self.name!r}: the IG-KD paper's CIFAR MobileNetV2 teacher "
            f"(width {self.width:g}, {self.in_chans}x{self.input_size}x{self.input_size} inputs, "
            f"{self.num_classes} classes) and its students, which remove the last k modules of `features` "
            "and classify from the last kept module (global average pool + linear).",
            f"One parameter: removed = k, an integer in [0, {MAX_REMOVED}]; 0 is the teacher.",
            "Modules of `features` (channels, total stride):",
            f"  features.0: stem 3x3 conv + BN + ReLU6 ({self.stem_channels} ch, stride {self.stem_stride})",
        ]
        stride = self.stem_stride
        for i, (_, spec) in enumerate(self.blocks, start=1):
            stride *= spec.stride
            kind = (
                "depthwise-separable"
                if spec.block_type == "ds"
                else f"inverted residual t={spec.exp_ratio:g}"
            )
            lines.append(f"  features.{i}: {kind} ({spec.out_chs} ch, stride {stride})")
        lines.append(f"  features.{NUM_MODULES - 1}: 1x1 conv + BN + ReLU6 ({self.head_channels} ch)")
        lines.append("Cost of each choice (params, MACs, compression factor in params):")
        for k in range(MAX_REMOVED + 1):
            c = plan_cost(self.plan(k))
            lines.append(
                f"  removed={k}: {c.params:,} params, {c.macs:,} MACs, CF {teacher.params / c.params:.2f}"
            )
        lines.append("Text form: 'removed=<k>' (or a JSON object {\"removed\": k}).")
        return "\n".join(lines)


@hookimpl
def register_search_spaces(register: Any) -> None:
    """Register ``paper-truncated``."""
    register(
        "paper-truncated",
        PaperTruncatedSpace,
        description="IG-KD paper's CIFAR MobileNetV2 teacher and students without its last k feature modules",
    )
