"""The zero-cost proxies and the ``proxy`` evaluator: hand-computed values on two known networks, the shared pass,
the objective map, the cache and a real ``automl-kd run`` on Fashion-MNIST."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fault_support import assert_one_error, base_config, cli_in_process, write_yaml
from torch import nn

from automl_kd.cache import ArtifactCache
from automl_kd.config import DataConfig
from automl_kd.data import load_data
from automl_kd.evaluator import TrialContext
from automl_kd.manager import get_plugin_manager
from automl_kd.plugins.evaluators.proxy import (
    JACOB_K,
    PROXIES,
    ProxyEvaluator,
    compute_proxies,
    jacob_cov,
    naswot,
    snip_and_grad_norm,
    synflow,
    to_objective,
)


def _batch(n: int = 6, d: int = 5, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _linear(d: int = 5, k: int = 3, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, k, bias=False)


# -- network 1: one linear layer, y = W x --------------------------------------------------------------------------
def test_one_linear_layer_matches_the_closed_forms() -> None:
    net = _linear()
    x, y = _batch()
    w = net.weight.detach().double().numpy()
    xs, n = x.double().numpy(), x.shape[0]

    # synflow: R = sum_kj |W_kj| * 1, so dR/dW = 1 and the score is sum |W|
    assert synflow(_linear(), (5,)) == pytest.approx(np.abs(w).sum(), rel=1e-12)

    # cross-entropy gradient: dL/dW = mean_n (softmax(W x_n) - onehot(y_n)) x_n^T
    logits = xs @ w.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(n), y.numpy()] -= 1.0
    grad = p.T @ xs / n
    got = snip_and_grad_norm(_linear(), x, y)
    assert got["grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-5)
    assert got["snip"] == pytest.approx(np.abs(w * grad).sum(), rel=1e-5)

    # jacob_cov: every image's Jacobian is the column sums of W, so the correlation matrix is all ones:
    # eigenvalues n (once) and 0 (n - 1 times)
    expected = -(math.log(n + JACOB_K) + 1 / (n + JACOB_K)) - (n - 1) * (math.log(JACOB_K) + 1 / JACOB_K)
    assert jacob_cov(_linear(), x) == pytest.approx(expected, rel=1e-6)

    # the baselines
    scores = compute_proxies(_linear(), ["params", "macs"], x, y)
    assert scores["params"].value == 15 and scores["macs"].value == 15


# -- network 2: linear, BatchNorm, ReLU, linear ------------------------------------------------------------------
def _mlp(seed: int = 1, hidden: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(5, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3, bias=False)
    )
    with torch.no_grad():  # a BN far from the identity: synflow must neutralise it anyway
        bn = net[1]
        bn.weight.copy_(torch.linspace(-2.0, 3.0, hidden))
        bn.bias.copy_(torch.linspace(-0.4, 0.3, hidden))
        bn.running_mean.fill_(0.7)
        bn.running_var.fill_(4.0)
    return net


def test_two_layer_net_synflow_is_twice_the_path_sum_whatever_the_batchnorm() -> None:
    net = _mlp()
    w1, w2 = (np.abs(net[i].weight.detach().double().numpy()) for i in (0, 3))
    # with |weights|, BN as the identity and a positive input, the ReLU passes everything: R = 1^T |W2| |W1| 1,
    # and each layer's sum of w * dR/dw is R again
    path = float(np.ones(3) @ w2 @ w1 @ np.ones(5))
    assert synflow(_mlp(), (5,)) == pytest.approx(2 * path, rel=1e-12)


def test_two_layer_net_naswot_is_the_log_determinant_of_the_hamming_kernel() -> None:
    x, _ = _batch(n=6)
    net = _mlp()
    net.train()
    h = (x.double().numpy() @ net[0].weight.detach().double().numpy().T) * 1.0
    # BN in training mode: batch mean and biased variance, then its affine map
    bn = net[1]
    z = (h - h.mean(0)) / np.sqrt(h.var(0) + bn.eps)
    z = z * bn.weight.detach().double().numpy() + bn.bias.detach().double().numpy()
    codes = (z > 0).astype(np.float64)
    kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T
    sign, logdet = np.linalg.slogdet(kernel)
    assert sign != 0
    assert naswot(net, x) == pytest.approx(logdet, rel=1e-6)


def test_a_network_without_relu_has_no_naswot() -> None:
    with pytest.raises(ValueError, match="ReLU"):
        naswot(_linear(), _batch()[0])


# -- the shared pass, degenerate networks, the objective map ---------------------------------------------------
def test_the_shared_pass_gives_the_values_of_each_proxy_alone() -> None:
    from automl_kd_nasbench import NASBench201Space

    space = NASBench201Space()
    params = space.decode(
        "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|nor_conv_3x3~2|"
    )
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    model = space.build(params)
    alone = compute_proxies(model, PROXIES, x, y)
    shared = compute_proxies(model, PROXIES, x, y, shared=True)
    assert {k: v.value for k, v in alone.items()} == pytest.approx({k: v.value for k, v in shared.items()})
    assert all(math.isfinite(v.value) for v in alone.values())
    assert (
        alone["params"].value == space.cost(params).params and alone["macs"].value == space.cost(params).macs
    )


def test_a_cell_of_only_none_edges_ranks_lowest() -> None:
    from automl_kd_nasbench import NASBench201Space

    space = NASBench201Space()
    model = space.build(space.decode('["none", "none", "none", "none", "none", "none"]'))
    x = torch.randn(4, 3, 32, 32)
    scores = compute_proxies(model, ["naswot", "jacob_cov", "synflow"], x, torch.zeros(4, dtype=torch.long))
    assert math.isnan(scores["jacob_cov"].value) and scores["naswot"].value == -math.inf
    assert scores["synflow"].value == 0.0
    assert to_objective(scores["jacob_cov"].value) == 0.0 == to_objective(scores["naswot"].value)


def test_the_objective_map_is_strictly_increasing_inside_0_100() -> None:
    values = [
        -1e300,
        -1e6,
        -65.5,
        -65.4,
        -1.0,
        0.0,
        1e-9,
        1.0,
        800.0,
        800.001,
        1e21,
        1e21 * (1 + 1e-9),
        1e300,
    ]
    mapped = [to_objective(v) for v in values]
    assert all(0.0 < m < 100.0 for m in mapped)
    assert all(a < b for a, b in itertools.pairwise(mapped))
    assert to_objective(math.inf) == 100.0 and to_objective(math.nan) == 0.0


# -- the evaluator ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fmnist() -> Any:
    return load_data(DataConfig(train_size=200, test_size=100, val_fraction=0.25))


def _context(space: Any, data: Any, cache: ArtifactCache | None, tmp_path: Path) -> TrialContext:
    resources = {"data": data, "cache": cache}
    return TrialContext(
        number=0,
        seed=123,
        device=torch.device("cpu"),
        run_dir=tmp_path,
        space=space,
        resource=lambda name: resources.get(name),
    )


def test_scores_are_cached_by_architecture_proxy_data_and_seed(fmnist: Any, tmp_path: Path) -> None:
    from conftest import small_mbv2_options

    pm = get_plugin_manager()
    space = pm.spaces.create("mbv2", small_mbv2_options(), num_classes=10, in_chans=1, input_size=28)
    cache = ArtifactCache(tmp_path / "cache")
    candidate = space.candidate(space.reference())
    ctx = _context(space, fmnist, cache, tmp_path)

    first = ProxyEvaluator("snip").evaluate(candidate, ctx)
    assert not first["proxy_cached"] and first["proxy_seed"] == 0
    assert 0.0 < first["val_acc"] < 100.0 and first["val_acc"] == to_objective(first["proxy_score"])
    assert len(list((tmp_path / "cache" / "proxy-score").glob("*.art"))) == 1
    again = ProxyEvaluator("snip").evaluate(candidate, ctx)
    assert again["proxy_cached"] and again["proxy_score"] == first["proxy_score"]
    assert again["proxy_cpu_s"] == first["proxy_cpu_s"]  # the cost of the computation the entry came from

    # another proxy, another seed, another architecture: each is a new entry, computed
    for evaluator, cand in (
        (ProxyEvaluator("grad_norm"), candidate),
        (ProxyEvaluator("snip", seed=1), candidate),
        (ProxyEvaluator("snip"), space.candidate(space.sample(random.Random(5)))),
    ):
        assert not evaluator.evaluate(cand, ctx)["proxy_cached"]
    assert len(list((tmp_path / "cache" / "proxy-score").glob("*.art"))) == 4

    # seed: null uses the trial's seed; the same seed gives the same score without the cache
    a = ProxyEvaluator("snip", seed=None, cache=False).evaluate(candidate, ctx)
    b = ProxyEvaluator("snip", seed=123).evaluate(candidate, ctx)
    assert a["proxy_seed"] == 123 and a["proxy_score"] == b["proxy_score"] and not a["proxy_cached"]


@pytest.mark.parametrize("bad", [{"proxy": "zen"}, {"batch_size": 1}])
def test_bad_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        ProxyEvaluator(**bad)


def test_automl_kd_run_scores_candidates_with_a_proxy_and_reuses_the_cache(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOML_KD_CACHE", str(tmp_path / "cache"))
    cfg = base_config("proxy-run", evaluator={"name": "proxy", "options": {"proxy": "synflow"}})
    cfg["search"] = {"proposer": {"name": "random"}, "n_trials": 3}
    write_yaml(tmp_path / "proxy.yaml", cfg)
    first = cli_in_process("run", "proxy.yaml", "--json", "--run-dir", "run1", cwd=tmp_path, capfd=capfd)
    assert first.rc == 0, first
    trials = json.loads(first.out.strip().splitlines()[-1])["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3
    for t in trials:
        m = t["metrics"]
        assert m["proxy"] == "synflow" and m["proxy_score"] > 0 and not m["proxy_cached"]
        assert m["val_acc"] == pytest.approx(to_objective(m["proxy_score"])) and m["proxy_cpu_s"] >= 0
        assert m["params"] > 0 and m["macs"] > 0

    # a second run of the same study seed proposes the same candidates: every score comes from the cache
    second = cli_in_process("run", "proxy.yaml", "--json", "--run-dir", "run2", cwd=tmp_path, capfd=capfd)
    assert second.rc == 0, second
    again = json.loads(second.out.strip().splitlines()[-1])["trials"]
    assert [t["metrics"]["proxy_cached"] for t in again] == [True] * 3
    assert [t["metrics"]["proxy_score"] for t in again] == [t["metrics"]["proxy_score"] for t in trials]


def test_an_unknown_proxy_is_one_config_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cfg = base_config("bad-proxy", evaluator={"name": "proxy", "options": {"proxy": "zen"}})
    write_yaml(tmp_path / "bad.yaml", cfg)
    res = cli_in_process("run", "bad.yaml", "--run-dir", "run", cwd=tmp_path, capfd=capfd)
    assert_one_error(res, 2, "zen")


# -- the ground-truth benchmark ------------------------------------------------------------------------------------
def _image_folder(root: Path, per_class: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_the_ground_truth_benchmark_scores_resumes_and_prints_its_table(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import MACRO_JSON

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "proxy_ground_truth.py"
    data, run_dir, out = _image_folder(tmp_path / "images"), tmp_path / "run", tmp_path / "gt.json"
    args = [sys.executable, str(script), "--data", str(data), "--macro-table", str(MACRO_JSON)]
    args += ["--run-dir", str(run_dir), "--out", str(out), "--macro-archs", "4", "--nb201-archs", "3"]
    first = subprocess.run([*args, "--batch-size", "16"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    result = json.loads(out.read_text())
    assert result["complete"] and result["machine"] and result["torch_threads"] == 1
    assert str(tmp_path) not in result["command"]  # no local path in the committed JSON
    macro, nb201 = result["tables"]["nasbench-macro"], result["tables"]["nb201-cifar10"]
    assert (macro["archs_done"], nb201["archs_done"]) == (4, 3)
    assert "seeded random permutation" in nb201["sample"]
    for table in (macro, nb201):
        assert set(table["unconstrained"]) == {
            "synflow",
            "naswot",
            "jacob_cov",
            "snip",
            "grad_norm",
            "params",
            "flops",
        }
        assert table["cpu_s_per_arch"]["all_proxies_mean"] > 0 and table["rate_archs_per_s"] > 0

    # a torn last line (a killed run) is cut off and that architecture is scored again; nothing else is
    store = run_dir / "nb201-cifar10.jsonl"
    lines = store.read_text().splitlines()
    store.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    again = subprocess.run([*args, "--batch-size", "16"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (
        "nasbench-macro: 4 done, 0 to go" in again.stdout and "nb201-cifar10: 2 done, 1 to go" in again.stdout
    )
    assert [json.loads(line)["arch"] for line in store.read_text().splitlines()] == [
        json.loads(line)["arch"] for line in lines
    ]
    table = subprocess.run([*args, "--markdown"], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "| naswot |" in table.stdout and "| 0.74 |" in table.stdout
