"""The NAS-Bench-201 network (Dong & Yang, ICLR 2020), randomly initialised, for a cell of 6 edge ops.

Stem: 3x3 conv to 16 channels + BN. Three stages of 5 cells at 16, 32 and 64 channels, joined by a ResNet basic
block with stride 2 (ReLU-conv3x3-BN with stride 2, ReLU-conv3x3-BN, and a shortcut of 2x2 average pooling and
a 1x1 conv without BN). Then BN + ReLU, global average pooling and a linear classifier. Inside a cell, node ``j``
sums one op applied to each earlier node; node 3 is the output. The ops: ``none`` (zero), ``skip_connect``
(identity), ``nor_conv_1x1`` and ``nor_conv_3x3`` (ReLU, conv without bias, BN) and ``avg_pool_3x3`` (stride 1,
padding 1, padding not counted). Its parameter count is :func:`automl_kd_nasbench.nb201.nb201_cost`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: (to node, from node) of each of the 6 edges, in the arch string's order
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5


def relu_conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


def edge_op(op: str, channels: int) -> nn.Module | None:
    """The module of one edge; None for ``none`` (the edge contributes nothing)."""
    if op == "none":
        return None
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return relu_conv_bn(channels, channels, 1)
    if op == "nor_conv_3x3":
        return relu_conv_bn(channels, channels, 3)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NAS-Bench-201 op {op!r}")


class Cell(nn.Module):
    """One cell: 4 nodes, 6 edges; a node whose edges are all ``none`` is zero."""

    def __init__(self, ops: Sequence[str], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict()
        self.wiring: list[tuple[int, int, str]] = []
        for (dst, src), op in zip(EDGES, ops, strict=True):
            module = edge_op(op, channels)
            if module is not None:
                name = f"{src}_{dst}"
                self.edges[name] = module
                self.wiring.append((dst, src, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for dst in (1, 2, 3):
            terms = [self.edges[name](nodes[src]) for d, src, name in self.wiring if d == dst]
            node = terms[0] if terms else torch.zeros_like(x)
            for t in terms[1:]:
                node = node + t
            nodes.append(node)
        return nodes[3]


class ResNetBlock(nn.Module):
    """The reduction between stages: stride-2 basic block with an avg-pool + 1x1 conv shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_a = relu_conv_bn(cin, cout, 3, stride=2)
        self.conv_b = relu_conv_bn(cout, cout, 3)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


def build_nb201_network(ops: Sequence[str], num_classes: int = 10, in_chans: int = 3) -> nn.Module:
    """The NAS-Bench-201 network whose cell has edge ops ``ops`` (6 names, arch-string order)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_chans, CHANNELS[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(CHANNELS[0]),
    ]
    for stage, chs in enumerate(CHANNELS):
        if stage:
            layers.append(ResNetBlock(CHANNELS[stage - 1], chs))
        layers += [Cell(ops, chs) for _ in range(CELLS_PER_STAGE)]
    last = CHANNELS[-1]
    layers += [
        nn.BatchNorm2d(last),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(last, num_classes),
    ]
    return nn.Sequential(*layers)
