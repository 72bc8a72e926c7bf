"""The ``genius-imagenet`` space: parameters, text forms, analytic cost vs FlopCounterMode, timm build."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from automl_kd.errors import InvalidCandidate
from automl_kd.manager import get_plugin_manager
from automl_kd.plugins.spaces.genius_imagenet import OPS, GeniusImageNetSpace
from automl_kd.testing import SearchSpaceContract

# GENIUS-329 as in GENIUS's network/genius.py (op ids per stage)
GENIUS_329 = [
    [1, 0, 0, 0, 1, 0],
    [1, 0, 1, 1, 1, 0],
    [4, 0, 4, 3, 0, 0],
    [4, 3, 0, 4, 4, 0],
    [5, 0, 5, 5, 5, 0],
]


@pytest.fixture(scope="module")
def space() -> GeniusImageNetSpace:
    return GeniusImageNetSpace()


def measured(space: GeniusImageNetSpace, params: dict, size: int, device: str = "meta") -> tuple[float, int]:
    """MACs (FlopCounterMode FLOPs / 2) and parameters of the built network (meta device: no compute)."""
    with torch.device(device):
        model = space.build(params).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(torch.randn(1, space.in_chans, size, size))
    assert out.shape == (1, space.num_classes)
    return counter.get_total_flops() / 2, sum(p.numel() for p in model.parameters())


def test_parameters_are_fixed(space: GeniusImageNetSpace) -> None:
    dists = space.distributions()
    assert list(dists)[:7] == ["s1_b1", "s1_b2", "s1_b3", "s1_b4", "s1_b5", "s1_b6", "s2_b1"]
    assert len(dists) == 30
    assert all(tuple(d.choices) == OPS for d in dists.values())  # type: ignore[attr-defined]


def test_registered_as_a_plugin() -> None:
    pm = get_plugin_manager()
    assert "genius-imagenet" in pm.spaces.names()
    made = pm.spaces.create("genius-imagenet", {"cost_input_size": 224}, num_classes=10, input_size=32)
    assert isinstance(made, GeniusImageNetSpace) and made.cost_input_size == 224 and made.input_size == 32


def test_encode_decode_round_trip(space: GeniusImageNetSpace) -> None:
    rng = random.Random(3)
    for _ in range(20):
        params = space.sample(rng)
        text = space.encode(params)
        assert space.decode(text) == params
    params = space.decode(str(GENIUS_329))
    assert space.stage_ids(params) == GENIUS_329


@pytest.mark.parametrize(
    "obj",
    [
        GENIUS_329,
        [v for s in GENIUS_329 for v in s],
        {f"stage{i + 1}": s for i, s in enumerate(GENIUS_329)},
        {f"Stage {i + 1}": [OPS[v] for v in s] for i, s in enumerate(GENIUS_329)},
        [[str(v) for v in s] for s in GENIUS_329],
        [["id" if v == 0 else OPS[v] for v in s] for s in GENIUS_329],
    ],
)
def test_answer_forms(space: GeniusImageNetSpace, obj: object) -> None:
    assert space.stage_ids(space.params_from_answer(obj)) == GENIUS_329


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([[1, 0, 0, 0, 1], *GENIUS_329[1:]], "stage 1 has 5 ops; each stage needs exactly 6"),
        (GENIUS_329[:4], "expected 5 stages of 6 ops, got 4 lists"),
        ([1, 2, 3], "expected 30 ops (5 stages x 6), got a list of 3"),
        ([[9, 0, 0, 0, 1, 0], *GENIUS_329[1:]], "s1_b1=9 is not allowed"),
        ([["ir_k9_e6", 0, 0, 0, 1, 0], *GENIUS_329[1:]], "s1_b1='ir_k9_e6' is not allowed"),
        ({"depth": 3}, "expected the 30 parameters"),
    ],
)
def test_answer_errors_are_precise(space: GeniusImageNetSpace, obj: object, message: str) -> None:
    with pytest.raises(InvalidCandidate, match=message.replace("(", r"\(").replace(")", r"\)")):
        space.params_from_answer(obj)


def test_genius_329_reference_numbers(space: GeniusImageNetSpace) -> None:
    # GENIUS reports 329 MFLOPs (thop, batch norm included) and 7.0 M params for this network
    cost = space.cost(space.params_from_answer(GENIUS_329))
    assert cost.macs == 306_968_192
    assert cost.params == 6_967_464


@pytest.mark.parametrize(
    "arch",
    [
        GENIUS_329,
        [[0] * 6] * 5,  # every stage a single 1x1 projection
        [[6] * 6] * 5,  # the largest network
        [[0, 6, 0, 2, 0, 1], [3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5], [2, 4, 6, 1, 3, 5], [0, 1, 0, 0, 0, 0]],
    ],
)
def test_cost_matches_flop_counter_at_224(space: GeniusImageNetSpace, arch: list[list[int]]) -> None:
    params = space.params_from_answer(arch)
    cost = space.cost(params)
    macs, n_params = measured(space, params, 224)
    assert abs(cost.macs - macs) <= 0.01 * macs  # within 1 % (in fact exact)
    assert cost.macs == macs
    assert cost.params == n_params


def test_cost_at_other_sizes_and_classes() -> None:
    small = GeniusImageNetSpace(num_classes=10, in_chans=1, input_size=64)
    params = small.sample(random.Random(0))
    macs, n_params = measured(small, params, 64, device="cpu")  # a real forward pass too
    assert small.cost(params).macs == macs and small.cost(params).params == n_params
    priced_at_224 = GeniusImageNetSpace(num_classes=10, in_chans=1, input_size=64, cost_input_size=224)
    assert priced_at_224.cost(params).macs > small.cost(params).macs


def test_describe_table_adds_up(space: GeniusImageNetSpace) -> None:
    text = space.describe()
    assert "stage 5 slots 2-6" in text and "ir_k7_e6" in text
    table = space.slot_macs_table()
    fixed = space._fixed_cost(224).macs / 1e6
    rng = random.Random(1)
    for _ in range(10):
        params = space.sample(rng)
        ids = space.stage_ids(params)
        total = fixed + sum(
            table[i][0 if j == 0 else 1][op] for i, s in enumerate(ids) for j, op in enumerate(s)
        )
        assert total == pytest.approx(space.cost(params).macs / 1e6, rel=1e-9)


def test_skip_removes_layers_and_reference(space: GeniusImageNetSpace) -> None:
    deep = space.build(space.params_from_answer([[1] * 6] * 5))
    shallow = space.build(space.params_from_answer([[1, 0, 0, 0, 0, 0]] * 5))
    assert [len(s) for s in deep.blocks[1:]] == [6] * 5  # type: ignore[arg-type]
    assert [len(s) for s in shallow.blocks[1:]] == [1] * 5  # type: ignore[arg-type]
    ref = space.reference()
    assert set(ref.values()) == {"ir_k7_e6"}
    assert space.cost(ref).macs > space.cost(space.params_from_answer(GENIUS_329)).macs


class TestGeniusSpaceContract(SearchSpaceContract):
    """The contract every search space satisfies (small images, so that tracing is quick)."""

    @pytest.fixture
    def space(self) -> GeniusImageNetSpace:
        return GeniusImageNetSpace(num_classes=10, in_chans=3, input_size=64)
