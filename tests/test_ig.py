"""Integrated gradients: quadrature, the inference copy, agreement with captum, completeness, cached maps."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from distill_support import CPU, one_thread, tiny_data, tiny_teacher
from torch import nn

from automl_kd.cache import ArtifactCache
from automl_kd.distill.ig import maps as maps_module
from automl_kd.distill.ig.attribution import (
    IGSettings,
    completeness_error,
    integrated_gradients,
    make_baseline,
    quadrature,
    reduce_channels,
)
from automl_kd.distill.ig.inference import fold_batchnorm, inference_copy
from automl_kd.distill.ig.maps import OnDemandIGMaps, ig_cache_key, on_demand_ig_maps, precompute_ig_maps
from automl_kd.distill.taps import model_fingerprint
from automl_kd.distill.teacher import freeze
from automl_kd.plugins.spaces.paper_truncated import PaperTruncatedSpace


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return freeze(model)


@pytest.mark.parametrize(
    "method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
)
def test_quadrature_integrates_polynomials(method: str) -> None:
    a, w = quadrature(16, method)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6) and float(a.min()) >= 0 and float(a.max()) <= 1
    tol = 1e-6 if method == "gausslegendre" else 0.1
    assert float((w * a**3).sum()) == pytest.approx(0.25, abs=tol)  # integral of a^3 over [0, 1]
    a, w = quadrature(4, "gausslegendre")  # exact up to degree 7
    assert float((w.double() * a.double() ** 7).sum()) == pytest.approx(1 / 8, abs=1e-6)


@pytest.mark.parametrize("which", ["paper-truncated", "timm-efficientnet", "timm-resnet"])
def test_inference_copy_computes_the_same_function(which: str) -> None:
    torch.manual_seed(0)
    if which == "paper-truncated":
        model = PaperTruncatedSpace(num_classes=10, in_chans=1, input_size=16, width=0.25).build(
            {"removed": 12}
        )
    else:
        model = timm.create_model(f"test_{which.removeprefix('timm-')}", num_classes=10, in_chans=1)
    model = _randomise_bn(model)
    fast = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # every norm was folded away
    x = torch.randn(4, 1, 16, 16)
    assert torch.allclose(fast(x), model(x), atol=1e-4, rtol=1e-4)
    xg = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(model(xg)[:, 3].sum(), xg)
    xg = x.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(fast(xg)[:, 3].sum(), xg)  # the fused conv+ReLU6 backward
    assert torch.allclose(g1, g2, atol=1e-4, rtol=1e-3)
    assert isinstance(fold_batchnorm(model), nn.Module)


def test_attributions_equal_captums() -> None:
    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    model = _randomise_bn(
        PaperTruncatedSpace(num_classes=10, in_chans=1, input_size=16, width=0.25).build({"removed": 14})
    )
    x, target = torch.randn(5, 1, 16, 16), torch.tensor([0, 3, 5, 7, 9])
    base = torch.zeros_like(x)
    ref = (
        IntegratedGradients(model)
        .attribute(x, base, target=target, n_steps=12, method="gausslegendre")
        .float()
    )
    # the same network: the same numbers (same nodes, weights and gradients)
    assert torch.allclose(
        integrated_gradients(model, x, base, target, steps=12, batch_size=16), ref, atol=1e-7
    )
    # the inference copy (folded, fused) differs by float rounding, which can move a ReLU6 kink slightly
    fast = integrated_gradients(inference_copy(model), x, base, target, steps=12, batch_size=16)
    assert float((fast - ref).abs().max()) < 1e-3 * float(ref.abs().max())


def test_stem_hoisting_gives_the_per_node_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stem conv runs once per image (its pre-activation is affine along the path); the attributions equal
    those of differentiating the whole network at every node, with per-image and shared baselines."""
    import automl_kd.distill.ig.attribution as ig

    torch.manual_seed(0)
    model = _randomise_bn(
        PaperTruncatedSpace(num_classes=10, in_chans=3, input_size=16, width=0.25).build({"removed": 12})
    )
    fast = inference_copy(model)
    split = ig.split_stem(fast)
    assert split is not None and split[0].conv.in_channels == 3  # the first conv, joined with its ReLU6
    x = torch.randn(5, 3, 16, 16)
    target = torch.tensor([0, 3, 5, 7, 9])
    for base in (make_baseline(x, "blurred", torch.zeros(3)), torch.zeros_like(x)):
        hoisted = integrated_gradients(fast, x, base, target, steps=8, batch_size=12)
        monkeypatch.setattr(ig, "split_stem", lambda m: None)
        per_node = integrated_gradients(fast, x, base, target, steps=8, batch_size=12)
        monkeypatch.undo()
        assert float((hoisted - per_node).norm() / per_node.norm()) < 1e-4
        # the completeness check (a shared baseline is evaluated once) against f(x) - f(b) image by image
        err, gap = ig.completeness(fast, x, base, target, hoisted)
        with torch.no_grad():
            diff = (fast(x) - fast(base)).gather(1, target.view(-1, 1)).squeeze(1)
        assert torch.allclose(gap, diff.abs(), atol=1e-5)
        assert torch.allclose(err, (hoisted.flatten(1).sum(1) - diff).abs(), atol=1e-5)
    # no stem conv + clamp at the input (a plain conv network): no split, the whole network per node
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 10)).eval()
    assert ig.split_stem(plain) is None


def test_completeness_within_tolerance() -> None:
    # a smooth network: Gauss-Legendre converges fast: the sum of attributions matches f(x) - f(b) to 1e-4
    # relative (plus float rounding)
    torch.manual_seed(0)
    smooth = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    x, b, t = torch.randn(6, 1, 8, 8), torch.zeros(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    attr = integrated_gradients(smooth, x, b, t, steps=16)
    with torch.no_grad():
        gap = (smooth(x) - smooth(b)).gather(1, t.view(-1, 1)).squeeze(1).abs()
    assert bool((completeness_error(smooth, x, b, t, attr) <= 1e-4 * gap + 1e-6).all())
    # a ReLU6 network is piecewise linear: completeness error within 5 % of |f(x) - f(b)| at 64 nodes
    model = _randomise_bn(
        PaperTruncatedSpace(num_classes=10, in_chans=1, input_size=16, width=0.25).build({"removed": 14})
    )
    x, b = torch.randn(6, 1, 16, 16), torch.zeros(6, 1, 16, 16)
    attr = integrated_gradients(inference_copy(model), x, b, t, steps=64)
    with torch.no_grad():
        gap = (model(x) - model(b)).gather(1, t.view(-1, 1)).squeeze(1).abs()
    assert float(completeness_error(model, x, b, t, attr).mean() / gap.mean()) < 0.05


def test_baselines_and_reductions() -> None:
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor([0.1, 0.2, 0.3])
    assert torch.allclose(make_baseline(x, "zeros", mean)[:, :, 0, 0], mean.expand(2, 3))
    assert float(make_baseline(x, "black", mean).abs().sum()) == 0
    assert torch.allclose(make_baseline(x, "mean", mean)[:, :, 4, 4], x.mean(dim=(2, 3)))
    blurred = make_baseline(x, "blurred", mean, blur_sigma=1.0)
    assert blurred.shape == x.shape and float(blurred.std()) < float(x.std())
    a = torch.tensor([[[[1.0]], [[-2.0]], [[2.0]]]])  # one pixel, three channels
    assert [float(reduce_channels(a, h)) for h in ("sum_abs", "abs_sum", "max_abs", "l2")] == [
        5.0,
        1.0,
        2.0,
        3.0,
    ]


def test_precompute_is_cached_by_content_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tiny_data()
    cache = ArtifactCache(tmp_path / "cache")
    teacher = tiny_teacher(data)
    s = IGSettings(steps=4, batch_size=64)
    calls: list[int] = []

    def interrupt_after_two_chunks(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        precompute_ig_maps(teacher, data, s, cache, chunk=64, progress=interrupt_after_two_chunks)
    messages: list[str] = []
    maps = precompute_ig_maps(teacher, data, s, cache, chunk=64, log=messages.append)
    assert any("resumed" in m and "128 of 240" in m for m in messages), messages
    assert len(maps) == len(data.train) and maps.maps.dtype == torch.float16
    # the resumed result equals a fresh, uninterrupted computation
    fresh = precompute_ig_maps(teacher, data, s, ArtifactCache(tmp_path / "other"), chunk=500)
    assert torch.allclose(maps.lookup(data.train.index), fresh.lookup(data.train.index), rtol=2e-3, atol=1e-6)
    # a second call is a cache hit, and the key depends on the teacher's weights and on the settings
    messages.clear()
    precompute_ig_maps(teacher, data, s, cache, log=messages.append)
    assert any("reusing" in m and "no recomputation" in m for m in messages)
    fp = model_fingerprint(teacher)
    assert ig_cache_key(fp, data.fingerprint, "train", s) != ig_cache_key(
        fp, data.fingerprint, "train", IGSettings(steps=5)
    )
    assert ig_cache_key(fp, data.fingerprint, "train", s) != ig_cache_key(
        "0" * 32, data.fingerprint, "train", s
    )
    assert not cache.partial_dir("ig-maps", maps.key).exists()  # the pieces are gone once the whole is stored


def test_a_corrupt_map_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tiny_data()
    cache = ArtifactCache(tmp_path / "cache")
    teacher = tiny_teacher(data)
    s = IGSettings(steps=2, batch_size=128)
    maps = precompute_ig_maps(teacher, data, s, cache)
    path = cache.path("ig-maps", maps.key)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(bytes(raw))
    messages: list[str] = []
    with caplog.at_level(logging.WARNING, logger="automl_kd"):
        again = precompute_ig_maps(teacher, data, s, cache, log=messages.append)
    assert "checksum mismatch" in caplog.text
    assert any("computed and cached" in m for m in messages)
    assert torch.allclose(again.lookup(data.train.index), maps.lookup(data.train.index))
    np.testing.assert_array_equal(again.index.numpy(), data.train.index.numpy())
    assert CPU.type == "cpu"


@pytest.mark.parametrize(
    "options",
    [
        {"baseline": "black", "target": "prediction", "reduction": "abs_sum", "fp16": False},
        {"baseline": "blurred", "blur_sigma": 1.5, "reduction": "max_abs", "method": "riemann_trapezoid"},
        {"baseline": "mean", "reduction": "l2", "method": "riemann_middle"},
    ],
)
def test_every_ig_setting_yields_maps(tmp_path: Path, options: dict[str, object]) -> None:
    data = tiny_data()
    s = IGSettings(steps=3, batch_size=128, **options)  # type: ignore[arg-type]
    maps = precompute_ig_maps(tiny_teacher(data), data, s, ArtifactCache(tmp_path / "c"))
    m = maps.lookup(data.train.index[:10])
    assert m.shape == (10, 28, 28) and bool(torch.isfinite(m).all()) and float(m.min()) >= 0
    assert maps.maps.dtype == (torch.float16 if s.fp16 else torch.float32)
    # completeness with a stated tolerance is tested above at 32+ steps; 3 steps only have to give a finite error
    assert (
        math.isfinite(maps.meta["completeness_error_relative"])
        and maps.meta["completeness_error_relative"] >= 0
    )


def test_maps_computed_on_demand_equal_the_precompute_and_share_its_pieces(tmp_path: Path) -> None:
    """``precompute: needed``: only the looked-up images get maps, equal to the whole-split precompute; a later
    process reads them instead of computing them again, and the full precompute finishes the rest."""
    data = tiny_data()
    teacher = tiny_teacher(data)
    s = IGSettings(steps=4, batch_size=64)
    cache = ArtifactCache(tmp_path / "cache")
    full = precompute_ig_maps(teacher, data, s, ArtifactCache(tmp_path / "full"))
    some = data.train.index[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:50]]
    lazy = on_demand_ig_maps(teacher, data, s, cache)
    assert isinstance(lazy, OnDemandIGMaps) and lazy.key == full.key and lazy.store.done == 0
    got = lazy.lookup(some)
    assert lazy.store.done == 50 and torch.allclose(got, full.lookup(some), rtol=3e-3, atol=1e-6)
    assert lazy.lookup(some[:10]).shape == (10, 28, 28) and lazy.store.done == 50  # no recomputation
    folder = cache.partial_dir("ig-maps", lazy.key)
    pieces = sorted(folder.glob("*.art"))
    assert len(pieces) == 1 and not cache.exists("ig-maps", lazy.key)
    with pytest.raises(KeyError, match="no IG map for dataset index"):
        lazy.lookup(torch.tensor([10**6]))

    maps_module._ON_DEMAND.clear()  # as a new process: it reads the pieces
    messages: list[str] = []
    again = on_demand_ig_maps(teacher, data, s, cache, log=messages.append)
    assert isinstance(again, OnDemandIGMaps) and again is not lazy and again.store.done == 50
    assert any("50 of 240 images already done" in m for m in messages), messages
    assert torch.equal(again.lookup(some), got) and sorted(folder.glob("*.art")) == pieces

    messages.clear()
    whole = precompute_ig_maps(teacher, data, s, cache, chunk=64, log=messages.append)
    assert any("resumed" in m and "50 of 240" in m for m in messages), messages
    assert torch.allclose(whole.lookup(data.train.index), full.lookup(data.train.index), rtol=3e-3, atol=1e-6)
    assert not folder.exists() and not isinstance(on_demand_ig_maps(teacher, data, s, cache), OnDemandIGMaps)


def test_on_demand_maps_store_the_whole_when_complete_and_skip_a_bad_piece(tmp_path: Path) -> None:
    data = tiny_data()
    teacher = tiny_teacher(data)
    s = IGSettings(steps=2, batch_size=128)
    cache = ArtifactCache(tmp_path / "cache")
    lazy = on_demand_ig_maps(teacher, data, s, cache)
    assert isinstance(lazy, OnDemandIGMaps)
    first = lazy.lookup(data.train.index[:40])
    piece = next(cache.partial_dir("ig-maps", lazy.key).glob("*.art"))
    raw = bytearray(piece.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    piece.write_bytes(bytes(raw))
    maps_module._ON_DEMAND.clear()
    messages: list[str] = []
    again = on_demand_ig_maps(teacher, data, s, cache, log=messages.append)
    assert isinstance(again, OnDemandIGMaps) and again.store.done == 0
    assert any("unusable" in m and "computed again" in m for m in messages), messages
    assert torch.allclose(again.lookup(data.train.index[:40]), first, rtol=3e-3, atol=1e-6)
    everything = again.lookup(data.train.index)  # every image has a map now: the whole is one cache entry
    assert cache.exists("ig-maps", again.key) and not cache.partial_dir("ig-maps", again.key).exists()
    assert any("computed and cached" in m for m in messages), messages
    assert torch.equal(again.lookup(data.train.index), everything)
    stored = precompute_ig_maps(teacher, data, s, cache)
    assert torch.equal(stored.lookup(data.train.index), everything)
