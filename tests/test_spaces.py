"""Tests of the built-in search spaces ``mbv2`` and ``paper-truncated`` and their shared network/cost code."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import torch
from optuna.distributions import CategoricalDistribution
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from automl_kd.errors import InvalidCandidate
from automl_kd.plugins.spaces import mbv2, paper_truncated
from automl_kd.plugins.spaces.irnet import BlockSpec, IRNet, NetPlan, feature_layers, mid_channels
from automl_kd.plugins.spaces.mbv2 import DEFAULT_OPS, MBV2Space
from automl_kd.plugins.spaces.paper_truncated import PaperTruncatedSpace

# the IG-KD paper's table (num_classes=10, 3x32x32): modules removed -> parameters
PAPER_PARAMS = {
    0: 2_236_682,
    3: 1_019_402,
    5: 543_498,
    7: 306_954,
    9: 185_738,
    11: 77_194,
    13: 40_970,
    15: 16_042,
    17: 1_994,
}

SMALL_STAGES = [[8, 1, 1], [16, 2, 2], [24, 2, 2]]
ALL_OPS = [*DEFAULT_OPS, "ir_k3_e1", "ir_k5_e1"]


def small_space(**kw: Any) -> MBV2Space:
    opts: dict[str, Any] = {"stages": SMALL_STAGES, "ops": ALL_OPS, "widths": [0.5, 1.0], "head_channels": 64}
    opts.update(kw)
    return MBV2Space(**opts)


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def counted_macs(model: nn.Module, in_chans: int, size: int) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_chans, size, size))
    return counter.get_total_flops() // 2


def assert_cost_matches(space: Any, params: dict[str, Any]) -> None:
    model = space.build(params)
    cost = space.cost(params)
    assert cost.params == numel(model), space.encode(params)
    macs = counted_macs(model, space.in_chans, space.input_size)
    assert abs(cost.macs - macs) <= 0.01 * macs, (space.encode(params), cost.macs, macs)


def conv_of(model: nn.Module, name: str) -> nn.Conv2d:
    conv = dict(model.named_modules())[name]
    assert isinstance(conv, nn.Conv2d)
    return conv


def uniform(space: MBV2Space, op: str, width: float) -> dict[str, Any]:
    return {k: (width if k.endswith("width") else op) for k in space.distributions()}


# -- paper-truncated ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("removed", sorted(PAPER_PARAMS))
def test_paper_table_params(removed: int) -> None:
    space = PaperTruncatedSpace(num_classes=10, in_chans=3, input_size=32)
    model = space.build({"removed": removed})
    assert numel(model) == space.cost({"removed": removed}).params == PAPER_PARAMS[removed]
    assert len(model.features) == 19 - removed


def test_paper_teacher_structure_and_macs() -> None:
    space = PaperTruncatedSpace()
    model = space.build(space.reference())
    assert isinstance(model.features[1], DepthwiseSeparableConv)  # torchvision's t=1 block
    assert all(isinstance(m, InvertedResidual) for m in list(model.features)[2:18])
    assert conv_of(model, "features.18.conv").out_channels == 1280
    # the IG-KD paper: 88.0M multiply-adds for the teacher, 58.7M for the CF=4.12 student
    assert round(space.cost({"removed": 0}).macs / 1e6, 1) == 88.0
    assert round(space.cost({"removed": 5}).macs / 1e6, 1) == 58.7
    for removed in (0, 5, 16, 18):
        assert_cost_matches(space, {"removed": removed})


def test_paper_text_forms_and_errors() -> None:
    space = PaperTruncatedSpace()
    for k in range(19):
        assert space.decode(space.encode({"removed": k})) == {"removed": k}
    assert (
        space.decode(" Removed: 7 ") == space.decode("7") == space.decode('{"removed": 7}') == {"removed": 7}
    )
    with pytest.raises(InvalidCandidate, match="outside"):
        space.decode("removed=19")
    with pytest.raises(InvalidCandidate, match="cannot read"):
        space.decode("remove seven")
    with pytest.raises(InvalidCandidate, match="unknown parameter"):
        space.validate({"removed": 1, "depth": 2})
    with pytest.raises(ValueError, match="width"):
        PaperTruncatedSpace(width=0)
    assert "removed=5: 543,498 params" in space.describe()


def test_paper_width_option() -> None:
    space = PaperTruncatedSpace(width=0.5)
    for k in (0, 9):
        assert_cost_matches(space, {"removed": k})
    assert space.cost({"removed": 0}).params < PAPER_PARAMS[0]


# -- mbv2: cost and build ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ALL_OPS)
def test_mbv2_cost_every_op(op: str) -> None:
    space = small_space()
    assert_cost_matches(space, uniform(space, op, 1.0))


def test_mbv2_cost_random_candidates() -> None:
    rng = random.Random(0)
    space = small_space(stem_channels=20)  # 20 * 3 is not a multiple of 8: exercises timm's mid rounding
    for _ in range(6):
        assert_cost_matches(space, space.sample(rng))
    default = MBV2Space()
    assert_cost_matches(default, default.reference())
    assert_cost_matches(default, default.sample(rng))


def test_mid_channels_follow_timm() -> None:
    assert mid_channels(20, 3.0) == 64  # make_divisible(60) rounds up, torchvision's round() would give 60
    assert mid_channels(32, 6.0) == 192
    plan = NetPlan(stages=((BlockSpec(24, 3, 1, 3.0),),), stem_channels=20)
    assert conv_of(IRNet(plan), "blocks.0.0.conv_pw").out_channels == 64


def test_mbv2_reference_is_largest_and_smallest_is_smallest() -> None:
    space = small_space()
    ref, small = space.cost(space.reference()), space.cost(space.smallest())
    rng = random.Random(1)
    for _ in range(30):
        c = space.cost(space.sample(rng))
        assert small.macs <= c.macs <= ref.macs and small.params <= c.params <= ref.params
    assert set(MBV2Space().reference().values()) == {1.0, "ir_k7_e6"}


def test_skip_removes_layers() -> None:
    space = small_space()
    params = uniform(space, "ir_k3_e6", 1.0)
    full = space.build(params)
    params.update({"s1_b1_op": "skip", "s2_b1_op": "skip"})
    short = space.build(params)
    assert [len(list(s.children())) for s in full.blocks] == [1, 2, 2]
    assert [len(list(s.children())) for s in short.blocks] == [1, 1, 1]
    assert space.cost(params).params == numel(short)


@pytest.mark.parametrize(("in_chans", "size"), [(1, 28), (3, 32), (3, 64)])
def test_forward_shapes(in_chans: int, size: int) -> None:
    x = torch.randn(2, in_chans, size, size)
    space = small_space(num_classes=7, in_chans=in_chans, input_size=size)
    model = space.build(space.sample(random.Random(size)))
    assert model(x).shape == (2, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 64)
    paper = PaperTruncatedSpace(num_classes=7, in_chans=in_chans, input_size=size)
    for removed in (0, 9):  # batch 1: the teacher is the slowest model in this file
        assert paper.build({"removed": removed})(x[:1]).shape == (1, 7)
    assert_cost_matches(space, space.reference())


def test_stem_stride_auto() -> None:
    assert MBV2Space(input_size=64).stem_stride == 1
    assert MBV2Space(input_size=96).stem_stride == 2
    assert MBV2Space(input_size=96, stem_stride=1).stem_stride == 1


def test_feature_layers_match_real_outputs() -> None:
    space = small_space(input_size=32)
    model = space.build(space.reference())
    paper = PaperTruncatedSpace().build({"removed": 12})
    for net in (model, paper):
        layers = feature_layers(net)
        modules = dict(net.named_modules())
        outputs: dict[str, torch.Tensor] = {}

        def keep(name: str, store: dict[str, torch.Tensor] = outputs) -> Any:
            return lambda _m, _i, out: store.__setitem__(name, out)

        for name, _, _ in layers:
            modules[name].register_forward_hook(keep(name))
        net(torch.zeros(1, 3, 32, 32))
        for name, chs, stride in layers:
            assert outputs[name].shape[1:] == (chs, 32 // stride, 32 // stride), name
    assert [n for n, _, _ in feature_layers(model)] == ["blocks.0", "blocks.1", "blocks.2"]
    assert feature_layers(paper)[-1] == ("features.6", 32, 2)
    with pytest.raises(TypeError):
        feature_layers(nn.Linear(2, 2))


# -- mbv2: parameters and text -----------------------------------------------------------------------------
def test_mbv2_parameter_names_are_fixed_and_ordered() -> None:
    space = MBV2Space()
    names = list(space.distributions())
    assert names[:4] == ["s0_width", "s0_b0_op", "s1_width", "s1_b0_op"]
    assert len(names) == 7 + 17
    assert names == list(MBV2Space().distributions())
    first, other = space.distributions()["s1_b0_op"], space.distributions()["s1_b1_op"]
    assert isinstance(first, CategoricalDistribution) and isinstance(other, CategoricalDistribution)
    assert "skip" not in first.choices and "skip" in other.choices


def test_encode_decode_roundtrip() -> None:
    space = MBV2Space()
    rng = random.Random(0)
    for _ in range(50):
        params = space.sample(rng)
        text = space.encode(params)
        assert space.decode(text) == params
        assert space.decode(json.dumps(params)) == params
    assert space.encode(space.reference()).splitlines()[1] == "stage1 w1.0: ir_k7_e6 ir_k7_e6"


def test_decode_is_tolerant_of_layout() -> None:
    space = small_space()
    params = space.decode(
        "```\n  STAGE0  W0.5 : IR_K3_E6\n\nstage 1, width=1: ir_k5_e3, skip\n"
        "stage2 w1.0: ir_k3_e1   ir_k7_e6\n```"
    )
    assert params == {
        "s0_width": 0.5,
        "s0_b0_op": "ir_k3_e6",
        "s1_width": 1.0,
        "s1_b0_op": "ir_k5_e3",
        "s1_b1_op": "skip",
        "s2_width": 1.0,
        "s2_b0_op": "ir_k3_e1",
        "s2_b1_op": "ir_k7_e6",
    }
    assert space.decode(
        json.dumps({k: str(v).upper() if isinstance(v, str) else v for k, v in params.items()})
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stage0 w0.5: ir_k3_e6\nstage1 w1.0: skip skip\nstage2 w1.0: ir_k3_e6 skip", "slot 0 of stage 1"),
        ("stage0 w0.6: ir_k3_e6\nstage1 w1.0: ir_k3_e6 skip\nstage2 w1.0: ir_k3_e6 skip", "s0_width=0.6"),
        (
            "stage0 w0.5: ir_k9_e6\nstage1 w1.0: ir_k3_e6 skip\nstage2 w1.0: ir_k3_e6 skip",
            "s0_b0_op='ir_k9_e6'",
        ),
        (
            "stage0 w0.5: ir_k3_e6\nstage1 w1.0: ir_k3_e6\nstage2 w1.0: ir_k3_e6 skip",
            "stage1 has 2 slots, but the line gives 1 op",
        ),
        ("stage0 w0.5: ir_k3_e6\nstage2 w1.0: ir_k3_e6 skip", "stage1 is missing"),
        ("stage0 w0.5: ir_k3_e6\nstage0 w0.5: ir_k3_e6", "stage0 is given twice"),
        ("stage7 w0.5: ir_k3_e6", "stage7 does not exist"),
        ("use big kernels everywhere", "cannot read"),
        ('{"s0_width": 0.5', "not valid JSON"),
    ],
)
def test_decode_errors_are_precise(text: str, message: str) -> None:
    with pytest.raises(InvalidCandidate, match=message.replace("(", r"\(")):
        small_space().decode(text)


def test_validate_errors() -> None:
    space = small_space()
    good = uniform(space, "ir_k3_e6", 1.0)
    assert space.validate(good) == good
    with pytest.raises(InvalidCandidate, match="unknown parameter 's9_width'"):
        space.validate({**good, "s9_width": 1.0})
    with pytest.raises(InvalidCandidate, match="missing parameter 's0_width'"):
        space.validate({k: v for k, v in good.items() if k != "s0_width"})
    with pytest.raises(InvalidCandidate, match="s1_b1_op='ir_k4_e6' is not allowed"):
        space.validate({**good, "s1_b1_op": "ir_k4_e6"})
    with pytest.raises(InvalidCandidate, match="slot 0 of stage 2 carries"):
        space.validate({**good, "s2_b0_op": "skip"})
    with pytest.raises(InvalidCandidate):
        space.cost({**good, "s0_width": 2.0})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ops": ["ir_k3_e6", "skip"]}, "do not list 'skip'"),
        ({"ops": ["conv3x3"]}, "not of the form"),
        ({"ops": ["ir_k4_e6"]}, "odd"),
        ({"ops": ["ir_k3_e6", "ir_k3_e6"]}, "listed twice"),
        ({"ops": []}, "at least one op"),
        ({"stages": []}, "at least one"),
        ({"stages": [[16, 3, 1]]}, "stride 1 or 2"),
        ({"stages": [[16, 1]]}, "three integers"),
        ({"stages": [[16, 1, 0]]}, "slots >= 1"),
        ({"widths": [0.5, 0.0]}, "> 0"),
        ({"widths": [1.0, 1]}, "distinct"),
        ({"stem_stride": 4}, "stem_stride"),
        ({"stem_channels": 0}, "stem_channels"),
        ({"num_classes": 0}, "num_classes"),
        ({"drop_rate": 1.5}, "drop_rate"),
    ],
)
def test_invalid_options_raise_value_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MBV2Space(**options)


def test_describe_mentions_everything_an_llm_needs() -> None:
    space = small_space()
    text = space.describe()
    for word in [*ALL_OPS, "skip", "stage2", "slot 0", "w0.5=8", "Text form"]:
        assert word in text
    example = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("stage") and ": ir_" in ln]
    assert space.decode("\n".join(example)) == space.smallest()


def test_hooks_register_both_spaces() -> None:
    names: dict[str, Any] = {}

    def register(name: str, factory: Any, *, description: str = "") -> None:
        assert description
        names[name] = factory

    mbv2.register_search_spaces(register)
    paper_truncated.register_search_spaces(register)
    assert names == {"mbv2": MBV2Space, "paper-truncated": PaperTruncatedSpace}
