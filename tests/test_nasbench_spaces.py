"""The nasbench plugin's spaces, evaluators and permuted variants, found through the entry point."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from automl_kd_nasbench import (
    MacroTableEvaluator,
    NASBench201Space,
    NASBenchMacroSpace,
    NB201TableEvaluator,
    PermutedMacroSpace,
    PermutedNB201Space,
    derangement,
    load_macro_table,
)
from automl_kd_nasbench.macro import LAYERS
from automl_kd_nasbench.nb201 import EDGE_NAMES
from conftest import MACRO_JSON
from torch.utils.flop_counter import FlopCounterMode

from automl_kd.errors import ConfigError, InvalidCandidate
from automl_kd.evaluator import TrialContext
from automl_kd.manager import get_plugin_manager
from automl_kd.space import SearchSpace

ROOT = Path(__file__).resolve().parent.parent
MACRO = MACRO_JSON
ALL_MACRO_KEYS = ["".join(p) for p in itertools.product("012", repeat=8)]


def ctx(space: SearchSpace, seed: int = 0) -> TrialContext:
    return TrialContext(number=0, seed=seed, device=torch.device("cpu"), run_dir=Path("."), space=space)


@pytest.fixture(scope="module")
def pm() -> Any:
    return get_plugin_manager()


# -- discovery ----------------------------------------------------------------------------------------------
def test_entry_point_registers_spaces_and_evaluators(pm: Any) -> None:
    info = pm.infos["nasbench"]
    assert info.distribution == "automl-kd-nasbench"  # found as an installed distribution, not a built-in
    assert {"nasbench-macro", "nasbench-macro-permuted", "nasbench201", "nasbench201-permuted"} <= set(
        pm.spaces.names()
    )
    assert {"nasbench-macro", "nasbench201"} <= set(pm.evaluators.names())
    assert not [f for f in pm.errors if f.name == "nasbench"]


def test_options_are_validated_from_the_signatures(pm: Any) -> None:
    space = pm.spaces.create("nasbench201-permuted", {"dataset": "cifar100", "perm_seed": "3"})
    assert space.perm_seed == 3 and space.dataset == "cifar100"
    with pytest.raises(ConfigError, match="unknown option 'seeds'"):
        pm.spaces.create("nasbench-macro-permuted", {"seeds": 1})
    with pytest.raises(ConfigError, match="runs"):
        pm.evaluators.create("nasbench-macro", {"runs": "median"})
    # the host's data shape is accepted by every space
    assert pm.spaces.create("nasbench201", num_classes=10, in_chans=3, input_size=32).dataset == "cifar10"


# -- NAS-Bench-Macro space ----------------------------------------------------------------------------------
def test_macro_encode_decode_round_trip_over_the_whole_space() -> None:
    space = NASBenchMacroSpace()
    for key in ALL_MACRO_KEYS:
        params = space.decode(key)
        assert space.encode(params) == key == space.table_key(params)
    assert (
        space.decode("[2, 2, 2, 1, 2, 2, 2, 0]")
        == space.decode("2,2,2,1,2,2,2,0")
        == space.decode("22212220")
    )
    obj = {name: int(i == 0) for i, name in enumerate(LAYERS)}
    assert space.decode(json.dumps(obj)) == space.decode("10000000")


@pytest.mark.parametrize("text", ["2221222", "222122203", "22212223", "abc", "[1, 2]", '"x"'])
def test_macro_decode_rejects_bad_text(text: str) -> None:
    with pytest.raises(InvalidCandidate):
        NASBenchMacroSpace().decode(text)


def test_macro_validate_messages() -> None:
    space = NASBenchMacroSpace()
    good = dict.fromkeys(LAYERS, 1)
    assert space.validate(good) == good
    with pytest.raises(InvalidCandidate, match="layer3=3 is not allowed"):
        space.validate({**good, "layer3": 3})
    with pytest.raises(InvalidCandidate, match="missing parameter 'layer8'"):
        space.validate({k: 1 for k in LAYERS[:-1]})
    with pytest.raises(InvalidCandidate, match="layer1=True"):
        space.validate({**good, "layer1": True})


def test_macro_analytic_cost_equals_the_table_for_every_architecture() -> None:
    table = load_macro_table(MACRO)
    space = NASBenchMacroSpace()
    for key, entry in table.entries.items():
        cost = space.cost(space.decode(key))
        assert (cost.params, cost.macs) == (entry.params, entry.flops), key


@pytest.mark.parametrize("key", ["22212220", "00000000", "21102201"])
def test_macro_build_matches_the_table(key: str) -> None:
    table = load_macro_table(MACRO)
    space = NASBenchMacroSpace()
    model = space.build(space.decode(key)).eval()
    assert sum(p.numel() for p in model.parameters()) == table.entries[key].params
    with FlopCounterMode(display=False) as flops:
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10)
    assert flops.get_total_flops() // 2 == table.entries[key].flops  # multiply-adds = FLOPs / 2


# -- NAS-Bench-201 space ------------------------------------------------------------------------------------
def test_nb201_arch_string_round_trip_and_errors() -> None:
    space = NASBench201Space()
    text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    params = space.decode(text)
    assert space.encode(params) == text
    assert space.table_key(params) == "333132"  # the best CIFAR-10 cell
    assert (
        space.decode('["none", "none", "none", "none", "none", "avg_pool_3x3"]')["edge_2_3"] == "avg_pool_3x3"
    )
    with pytest.raises(InvalidCandidate, match="conv_5x5"):
        space.decode(text.replace("nor_conv_1x1", "conv_5x5"))
    with pytest.raises(InvalidCandidate, match="arch string"):
        space.decode("|garbage|")
    assert space.buildable


def test_nb201_build_has_the_tables_parameter_count() -> None:
    from automl_kd_nasbench.tables import NB201_OPS, load_nb201_table

    table = load_nb201_table("cifar10")
    space = NASBench201Space()
    keys = sorted(table.entries)
    sample = [*random.Random(0).sample(keys, 24), "333132", "000000", "111111", "444444", "222222"]
    checked = 0
    for key in sample:
        params = dict(zip(EDGE_NAMES, (NB201_OPS[int(c)] for c in key), strict=True))
        model = space.build(params)
        n = sum(p.numel() for p in model.parameters())
        assert n == space.cost(params).params, key
        # the 150 entries of the table's known size quirk (docs/nasbench.md) are the only ones that may differ
        if n == round(table.entries[key].model_size_mb * 1e6):
            checked += 1
    assert checked >= len(sample) - 2


def test_nb201_build_runs_and_shapes_its_output() -> None:
    space = NASBench201Space(dataset="cifar100")
    params = space.decode(
        "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
    )
    model = space.build(params)
    with FlopCounterMode(display=False) as counter:
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    assert counter.get_total_flops() // 4 == space.cost(params).macs  # 2 images, 2 FLOPs per multiply-add


# -- permuted variants --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 5])
def test_derangement_is_seeded_and_has_no_fixed_point(n: int) -> None:
    perms = {derangement(n, s) for s in range(20)}
    assert len(perms) > 1  # the seed matters
    for s in range(20):
        perm = derangement(n, s)
        assert perm == derangement(n, s)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_permuted_macro_is_a_bijection_with_the_seed(seed: int) -> None:
    space, base = PermutedMacroSpace(perm_seed=seed), NASBenchMacroSpace()
    images = set()
    for key in ALL_MACRO_KEYS:
        params = space.decode(key)
        canon = space.canonical(params)
        assert space.from_canonical(canon) == params
        images.add(base.table_key(canon))
        assert space.cost(params) == base.cost(canon)
    assert len(images) == len(ALL_MACRO_KEYS)  # bijective on the whole space
    # no label keeps its meaning, so the published optimum's key points somewhere else
    assert space.table_key(space.decode("22212220")) != "22212220"
    assert "22212220" not in space.describe() and "secret" in space.describe()


def test_permuted_nb201_is_a_bijection_with_the_seed() -> None:
    space, base = PermutedNB201Space(perm_seed=2), NASBench201Space()
    rng = random.Random(0)
    for _ in range(500):
        params = space.sample(rng)
        canon = space.canonical(params)
        assert space.from_canonical(canon) == params
        assert all(canon[e] != params[e] for e in EDGE_NAMES)
        assert space.cost(params) == base.cost(canon)
    assert PermutedNB201Space(perm_seed=2).permutation == space.permutation


# -- evaluators ---------------------------------------------------------------------------------------------
def test_macro_records_say_test_accuracy() -> None:
    ev = MacroTableEvaluator(path=str(MACRO))
    for space in (NASBenchMacroSpace(), PermutedMacroSpace(perm_seed=4)):
        for key in ("22212220", "01201120", "00000000"):
            rec = ev.evaluate(space.candidate(space.decode(key)), ctx(space))
            assert rec["accuracy_source"].startswith("test accuracy")
            assert "no validation split" in rec["accuracy_source"]
            entry = ev.table.entries[space.table_key(space.decode(key))]
            assert rec["val_acc"] == pytest.approx(entry.mean_acc) == rec["test_acc"]
            assert (rec["params"], rec["macs"]) == (entry.params, entry.flops)
    space = NASBenchMacroSpace()
    noisy = MacroTableEvaluator(path=str(MACRO), runs="sample")
    rec = noisy.evaluate(space.candidate(space.decode("22212220")), ctx(space, seed=5))
    assert rec["val_acc"] in rec["test_acc_runs"] and rec["table_value"] == pytest.approx(93.1267, abs=1e-3)


def test_nb201_records_say_validation_and_no_test_accuracy() -> None:
    for dataset in ("cifar10", "cifar100", "imagenet16-120"):
        space = NASBench201Space(dataset=dataset)
        ev = NB201TableEvaluator()
        rec = ev.evaluate(space.candidate(space.sample(random.Random(1))), ctx(space))
        assert (
            rec["accuracy_source"].startswith("validation accuracy")
            and "no test accuracy" in rec["accuracy_source"]
        )
        assert "test_acc" not in rec
        assert rec["benchmark"] == f"nas-bench-201/{dataset}"
        assert rec["latency_s"] > 0 and rec["train_time_s"] > 0 and rec["params"] > 0


def test_evaluators_refuse_the_wrong_space() -> None:
    macro, nb = NASBenchMacroSpace(), NASBench201Space(dataset="cifar100")
    with pytest.raises(ConfigError, match="needs a nasbench-macro space"):
        MacroTableEvaluator(path=str(MACRO)).evaluate(nb.candidate(nb.sample(random.Random(0))), ctx(nb))
    with pytest.raises(ConfigError, match="differs from the space"):
        NB201TableEvaluator(dataset="cifar10").evaluate(nb.candidate(nb.sample(random.Random(0))), ctx(nb))
    with pytest.raises(ConfigError, match="needs a nasbench201 space"):
        NB201TableEvaluator().evaluate(macro.candidate(macro.sample(random.Random(0))), ctx(macro))
