"""Permuted-label variants of the benchmark spaces, to tell memorised optima apart from search ability.

An LLM may have read the benchmarks' papers and know their best architectures ("22212220" on NAS-Bench-Macro,
3x3 convs with one skip on NAS-Bench-201). In a permuted space every op label stands for another op: a seeded
derangement (a permutation without fixed points, so no label keeps its meaning) is applied to the labels, the
same one on every layer or edge. It is a pure relabelling: the landscape is the same up to that renaming, so a
proposer that ignores what labels mean (random, TPE, evolution) performs identically, while a proposer that
leans on remembered optima or on op names loses that advantage. :meth:`describe` says so and withholds the
legend.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

from .macro import LAYERS, NETWORK_TEXT, OP_TEXT, NASBenchMacroSpace
from .nb201 import CELL_TEXT, DATA_SHAPES, EDGE_NAMES, NASBench201Space
from .nb201 import OP_TEXT as NB201_OP_TEXT
from .tables import NB201_OPS


def derangement(n: int, seed: int) -> tuple[int, ...]:
    """A permutation of ``range(n)`` with no fixed point, fully determined by ``seed`` (``n >= 2``)."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 elements")
    rng = random.Random(f"automl-kd-nasbench-permutation:{seed}")
    while True:  # about e = 2.7 draws on average
        perm = list(range(n))
        rng.shuffle(perm)
        if all(p != i for i, p in enumerate(perm)):
            return tuple(perm)


def _invert(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


class PermutedMacroSpace(NASBenchMacroSpace):
    """NAS-Bench-Macro with its op ids 0, 1, 2 relabelled by a seeded derangement (``perm_seed``).

    Label ``i`` on any layer means the benchmark's op ``permutation[i]``. ``cost``, ``build`` and the table
    evaluators translate through :meth:`canonical`.

    Example::

        space = PermutedMacroSpace(perm_seed=1)
        space.canonical(space.decode("00000000"))  # the op every label 0 really is
    """

    name: ClassVar[str] = "nasbench-macro-permuted"

    def __init__(
        self, perm_seed: int = 0, num_classes: int = 10, in_chans: int = 3, input_size: int = 32
    ) -> None:
        # not called ``seed``: that name is reserved for the host's per-trial seed
        super().__init__(num_classes=num_classes, in_chans=in_chans, input_size=input_size)
        self.perm_seed = perm_seed
        self.permutation = derangement(len(OP_TEXT), perm_seed)
        self.inverse = _invert(self.permutation)

    def canonical(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (self.permutation[int(v)] if k in LAYERS else v) for k, v in params.items()}

    def from_canonical(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The labels of this space for the benchmark's own parameters (inverse of :meth:`canonical`)."""
        return {k: (self.inverse[int(v)] if k in LAYERS else v) for k, v in params.items()}

    def describe(self) -> str:
        return "\n".join(
            [
                "NAS-Bench-Macro search space with shuffled op labels (CIFAR-10, 32x32 images, 10 classes).",
                NETWORK_TEXT,
                "Each layer (layer1 .. layer8) is one of three ops labelled 0, 1 and 2: identity, an",
                "inverted residual with expansion 3 and kernel 3, and one with expansion 6 and kernel 5.",
                "Which label is which op is kept secret: the labels were shuffled at random (the same way on",
                "every layer), so do not assume that a label means what it means in the published",
                "NAS-Bench-Macro. Learn it from the results.",
                'An architecture is written as 8 digits, layer1 first, e.g. "01201120".',
            ]
        )


class PermutedNB201Space(NASBench201Space):
    """NAS-Bench-201 with its 5 op names relabelled by a seeded derangement (``perm_seed``).

    The name ``NB201_OPS[i]`` on any edge means the op ``NB201_OPS[permutation[i]]``: names are kept, meanings
    shuffled, so a remembered optimum written with the usual names lands somewhere else.
    """

    name: ClassVar[str] = "nasbench201-permuted"

    def __init__(
        self,
        dataset: str = "cifar10",
        perm_seed: int = 0,
        num_classes: int | None = None,
        in_chans: int | None = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__(dataset=dataset)
        self.perm_seed = perm_seed
        self.permutation = derangement(len(NB201_OPS), perm_seed)
        self.inverse = _invert(self.permutation)

    def canonical(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: (NB201_OPS[self.permutation[NB201_OPS.index(v)]] if k in EDGE_NAMES else v)
            for k, v in params.items()
        }

    def from_canonical(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The labels of this space for the benchmark's own parameters (inverse of :meth:`canonical`)."""
        return {
            k: (NB201_OPS[self.inverse[NB201_OPS.index(v)]] if k in EDGE_NAMES else v)
            for k, v in params.items()
        }

    def describe(self) -> str:
        classes, size = DATA_SHAPES[self.dataset]
        ops = ", ".join(NB201_OP_TEXT[op] for op in NB201_OPS)
        return "\n".join(
            [
                f"NAS-Bench-201 search space with shuffled op names ({self.dataset}, {size}x{size} images, "
                f"{classes} classes).",
                CELL_TEXT,
                f"Each edge is one of five ops, labelled {', '.join(NB201_OPS)}. The ops are: {ops}.",
                "But the labels were shuffled at random (the same way on every edge): a label does NOT name",
                "the op it names in the published NAS-Bench-201. Learn what each label does from the",
                "results.",
                "An architecture is written as NAS-Bench-201's arch string with these labels, e.g. "
                "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
            ]
        )
