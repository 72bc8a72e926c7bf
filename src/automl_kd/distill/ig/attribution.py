"""Integrated gradients, batched across images and integration steps, and the maps the IG overlay blends in.

``IG_i(x) = (x_i - b_i) * integral_0^1 d f(b + a (x - b)) / d x_i da``, approximated by a quadrature rule with
nodes ``a_k`` and weights ``w_k``. Every (image, node) pair is one row of a batch, so a forward and a backward
pass serve many images and nodes at once; the weights ride on the backward seed (``sum_k w_k f(x_k)``), so the
summed gradient comes out of ``index_add_`` with no extra pass. The teacher runs as an inference copy with each
batch norm folded into the convolution before it (``inference.fold_batchnorm``): the same function, without the
normalisation's forward and backward passes, which are about 40 % of a MobileNetV2 step on a CPU.

The first convolution (with its folded norm) is affine in the input, so along the path its pre-activation is
``conv(b) + a * conv_without_bias(x - b)``: it is computed once per image and each node costs an ``addcmul``; its
input gradient is linear too, so the gradients of all nodes of an image are summed at its output and sent back
through it once (``inference.split_stem``). With a 1-channel 28 px input this removes the slowest backward
kernel of the network (oneDNN's backward-data for one input channel).

Captum's ``IntegratedGradients`` uses the same quadrature rules (same nodes and weights), so attributions agree
to float rounding; captum is only the reference in the tests and benchmarks.

Completeness: ``sum_i IG_i(x) = f(x) - f(b)`` holds for the exact integral; the quadrature error is measured by
:func:`completeness_error` and reported with every precompute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .inference import SCRATCH, conv_input_grad, masked_grad, split_stem

Method = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
Baseline = Literal["zeros", "black", "blurred", "mean"]
Reduction = Literal["sum_abs", "abs_sum", "max_abs", "l2"]
Target = Literal["label", "prediction"]


def quadrature(steps: int, method: Method = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``a_k`` in [0, 1] and weights ``w_k`` (summing to 1) of a rule with ``steps`` nodes.

    Gauss-Legendre is exact for polynomials of degree ``2 * steps - 1``; the Riemann rules are captum's
    (left, right, middle, trapezoid).
    """
    if steps < 1 or (method == "riemann_trapezoid" and steps < 2):
        raise ValueError(f"{method} needs at least {2 if method == 'riemann_trapezoid' else 1} steps")
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (x + 1) / 2, w / 2
    elif method == "riemann_trapezoid":
        alphas = np.linspace(0, 1, steps)
        weights = np.full(steps, 1 / (steps - 1))
        weights[[0, -1]] /= 2
    elif method in ("riemann_left", "riemann_right", "riemann_middle"):
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        alphas = (np.arange(steps) + offset) / steps
        weights = np.full(steps, 1 / steps)
    else:
        raise ValueError(f"unknown quadrature method {method!r}")
    return torch.tensor(alphas, dtype=torch.float32), torch.tensor(weights, dtype=torch.float32)


# -- baselines, attributions, maps ----------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an N x C x H x W batch (reflect padding), per channel."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def make_baseline(
    x01: torch.Tensor, kind: Baseline, mean: torch.Tensor, blur_sigma: float = 2.0
) -> torch.Tensor:
    """The baseline of each [0, 1] image, in [0, 1] pixel space.

    ``zeros``: zero in the *normalised* space, i.e. the training set's mean colour (the paper's choice);
    ``black``: pixel value 0; ``blurred``: the image blurred with ``blur_sigma`` pixels; ``mean``: the image's
    own mean colour per channel.
    """
    if kind == "zeros":
        return mean.view(1, -1, 1, 1).to(x01).expand_as(x01)
    if kind == "black":
        return torch.zeros_like(x01)
    if kind == "blurred":
        return gaussian_blur(x01, blur_sigma)
    if kind == "mean":
        return x01.mean(dim=(2, 3), keepdim=True).expand_as(x01)
    raise ValueError(f"unknown baseline {kind!r}")


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    target: torch.Tensor,
    steps: int = 32,
    method: Method = "gausslegendre",
    batch_size: int = 256,
) -> torch.Tensor:
    """IG attributions of ``model``'s ``target`` logit for each input (N x C x H x W, the model's input space).

    ``batch_size`` is the number of (image, node) rows per forward/backward pass. ``model`` should be a frozen
    eval-mode network (:func:`fold_batchnorm` makes a fast one).
    """
    SCRATCH.pool = {}
    try:
        return _integrate(model, x, baseline, target, steps, method, batch_size)
    finally:
        del SCRATCH.pool


def _integrate(
    model: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    method: Method,
    batch_size: int,
) -> torch.Tensor:
    alphas, weights = (t.to(x.device) for t in quadrature(steps, method))
    n = x.shape[0]
    delta = x - baseline
    channels_last = x.dim() == 4
    split = (
        split_stem(model) if channels_last and x.device.type == "cpu" and x.dtype == torch.float32 else None
    )
    if split is not None:
        # the stem is affine up to its clamp: pre(b + a (x - b)) = conv(b) + a * conv_without_bias(x - b), and its
        # input gradient is linear, so the per-node gradients are summed first and sent back through it once
        stem, net = split
        c = stem.conv
        cl = torch.channels_last
        with torch.no_grad():
            start_pre = F.conv2d(baseline.contiguous(memory_format=cl), c.weight, c.bias, c.stride, c.padding)
            step_pre = F.conv2d(delta.contiguous(memory_format=cl), c.weight, None, c.stride, c.padding)
        total = torch.zeros_like(start_pre)
    else:
        net = model
        total = torch.zeros_like(x, dtype=torch.float32)
    for start in range(0, n * steps, batch_size):
        rows = torch.arange(start, min(start + batch_size, n * steps), device=x.device)
        img, k = rows // steps, rows % steps
        if split is not None:
            pre = torch.addcmul(start_pre[img], alphas[k].view(-1, 1, 1, 1), step_pre[img])
            pts = pre.clamp_(0.0, split[0].hi).contiguous(memory_format=torch.channels_last)
        else:
            pts = torch.addcmul(baseline[img], alphas[k].view(-1, 1, 1, 1), delta[img])
            if channels_last:
                pts = pts.contiguous(memory_format=torch.channels_last)
        pts.requires_grad_(True)
        with torch.enable_grad():
            out = net(pts).float()
            seed = (out.gather(1, target[img].view(-1, 1)).squeeze(1) * weights[k]).sum()
            (grad,) = torch.autograd.grad(seed, pts)
        if split is not None:
            grad = masked_grad(grad, pts.detach(), 0.0, split[0].hi)
        total.index_add_(0, img, grad.float())
    if split is not None:
        total = conv_input_grad(total, x.contiguous(memory_format=torch.channels_last), split[0].conv, None)
    return total * delta


@torch.no_grad()
def completeness(
    model: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    target: torch.Tensor,
    attributions: torch.Tensor,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the completeness error ``|sum(attributions) - (f(x) - f(baseline))|`` (the quadrature error of
    IG) and the gap ``|f(x) - f(baseline)|`` it is measured against. Runs in batches of ``batch_size`` images;
    a baseline shared by every image (``zeros``, ``black``) is evaluated once."""
    shared = len(x) > 1 and (baseline.stride(0) == 0 or bool((baseline == baseline[:1]).all()))
    if shared:
        f_base = model(baseline[:1].contiguous()).float()[0]
        diffs = []
        for s in range(0, len(x), batch_size):
            out = model(x[s : s + batch_size]).float()
            t = target[s : s + batch_size]
            diffs.append(out.gather(1, t.view(-1, 1)).squeeze(1) - f_base[t])
        diff = torch.cat(diffs)
        return (attributions.flatten(1).sum(1) - diff).abs(), diff.abs()
    diffs = []
    for s in range(0, len(x), batch_size):
        n = len(x[s : s + batch_size])
        out = model(torch.cat([x[s : s + batch_size], baseline[s : s + batch_size]])).float()
        picked = out.gather(1, target[s : s + batch_size].repeat(2).view(-1, 1)).view(2, n)
        diffs.append(picked[0] - picked[1])
    diff = torch.cat(diffs) if diffs else torch.zeros(0, device=x.device)
    return (attributions.flatten(1).sum(1) - diff).abs(), diff.abs()


def completeness_error(
    model: nn.Module,
    x: torch.Tensor,
    baseline: torch.Tensor,
    target: torch.Tensor,
    attributions: torch.Tensor,
) -> torch.Tensor:
    """Per image ``|sum(attributions) - (f(x) - f(baseline))|``, the quadrature error of IG."""
    return completeness(model, x, baseline, target, attributions)[0]


def reduce_channels(attributions: torch.Tensor, how: Reduction = "sum_abs") -> torch.Tensor:
    """N x C x H x W attributions -> N x H x W non-negative maps.

    ``sum_abs``: sum over channels of |a| (the paper); ``abs_sum``: |sum over channels|; ``max_abs``: max over
    channels of |a|; ``l2``: Euclidean norm over channels.
    """
    if how == "sum_abs":
        return attributions.abs().sum(1)
    if how == "abs_sum":
        return attributions.sum(1).abs()
    if how == "max_abs":
        return attributions.abs().amax(1)
    if how == "l2":
        return attributions.pow(2).sum(1).sqrt()
    raise ValueError(f"unknown reduction {how!r}")


@dataclass(frozen=True)
class IGSettings:
    """Everything that determines an IG map (and so its cache key), plus ``batch_size``, which does not."""

    steps: int = 32
    method: Method = "gausslegendre"
    baseline: Baseline = "zeros"
    blur_sigma: float = 2.0
    target: Target = "label"
    reduction: Reduction = "sum_abs"
    fp16: bool = True
    batch_size: int = 256

    def key_parts(self) -> dict[str, Any]:
        parts: dict[str, Any] = {
            "steps": self.steps,
            "method": self.method,
            "baseline": self.baseline,
            "target": self.target,
            "reduction": self.reduction,
            "fp16": self.fp16,
        }
        if self.baseline == "blurred":
            parts["blur_sigma"] = self.blur_sigma
        return parts


def attribution_maps(
    model: nn.Module,
    x01: torch.Tensor,
    y: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    mean: torch.Tensor,
    s: IGSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps (N x H x W) of [0, 1] images ``x01`` with labels ``y``, each image's completeness error and its
    ``|f(x) - f(baseline)|`` (see :func:`completeness`)."""
    xn = normalize(x01)
    bn = normalize(make_baseline(x01, s.baseline, mean, s.blur_sigma))
    if s.target == "prediction":
        with torch.no_grad():
            target = model(xn).argmax(1)
    else:
        target = y
    attr = integrated_gradients(model, xn, bn, target, s.steps, s.method, s.batch_size)
    err, gap = completeness(model, xn, bn, target, attr, max(1, s.batch_size // 2))
    return reduce_channels(attr, s.reduction), err, gap
