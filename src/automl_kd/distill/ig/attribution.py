"""Integrated gradients, batched across images and integration steps, and the maps the IG overlay blends in.

``IG_i(x) = (x_i - b_i) * integral_0^1 d f(b + a (x - b)) / d x_i da``, approximated by a quadrature rule with
nodes ``a_k`` and weights ``w_k``. Every (image, node) pair is one row of a batch, so a forward and a backward
pass serve many images and nodes at once; the weights ride on the backward seed (``sum_k w_k f(x_k)``), so the
summed gradient comes out of ``index_add_`` with no extra pass. The teacher runs as an inference copy with each
batch norm folded into the convolution before it (:func:`fold_batchnorm`): the same function, without the
normalisation's forward and backward passes, which are about 40 % of a MobileNetV2 step on a CPU.

The first convolution (with its folded norm) is affine in the input, so along the path its pre-activation is
``conv(b) + a * conv_without_bias(x - b)``: it is computed once per image and each node costs an ``addcmul``; its
input gradient is linear too, so the gradients of all nodes of an image are summed at its output and sent back
through it once (:func:`split_stem`). With a 1-channel 28 px input this removes the slowest backward kernel of the
network (oneDNN's backward-data for one input channel).

Captum's ``IntegratedGradients`` uses the same quadrature rules (same nodes and weights), so attributions agree
to float rounding; captum is only the reference in the tests and benchmarks.

Completeness: ``sum_i IG_i(x) = f(x) - f(b)`` holds for the exact integral; the quadrature error is measured by
:func:`completeness_error` and reported with every precompute.
"""

from __future__ import annotations

import copy
import math
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


# -- the inference copy of the teacher -------------------------------------------------------------------------
class _AfterNorm(nn.Module):
    """What remains of timm's ``BatchNormAct2d`` once its normalisation is folded away: dropout, activation."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.drop: nn.Module = bn.drop  # type: ignore[assignment]
        self.act: nn.Module = bn.act  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.drop(x))
        return out


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Conv2d | nn.BatchNorm2d | _ConvAct) or super().is_leaf_module(m, qualname)


def _is_timm_norm_act(m: nn.Module) -> bool:
    return type(m).__name__ == "BatchNormAct2d" and hasattr(m, "act") and hasattr(m, "drop")


def fold_batchnorm(model: nn.Module, fuse_activation: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``conv -> batch norm`` pair folded into the conv.

    Pairs are found on the traced graph (a conv whose only user is a batch norm), so a norm that does not follow a
    conv, or whose conv output is used elsewhere, stays. With ``fuse_activation``, a timm norm whose activation is
    ReLU or ReLU6 also joins that activation to the conv (:class:`_ConvAct`: an input-gradient-only backward on
    CPUs). Module names are unchanged. A model that cannot be traced is returned as a plain frozen copy (correct,
    only slower).
    """
    folded = copy.deepcopy(model).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    try:
        graph = _LeafTracer().trace(folded)
    except Exception:
        return folded
    modules = dict(folded.named_modules())
    # a module called at several places (shared weights) must keep its own function: never fold those
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = modules.get(str(src.target))
        plain = type(bn) is nn.BatchNorm2d
        if not isinstance(conv, nn.Conv2d) or not (plain or _is_timm_norm_act(bn)):
            continue
        if calls[str(src.target)] != 1 or calls[str(node.target)] != 1:
            continue
        if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
            continue
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        conv.weight.data.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(shift.detach().clone(), requires_grad=False)
        hi = None if plain or not isinstance(bn.drop, nn.Identity) else _act_bound(bn.act)
        zero_pad = conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
        if fuse_activation and hi is not None and zero_pad:
            folded.set_submodule(str(src.target), _ConvAct(conv, hi))
            folded.set_submodule(str(node.target), nn.Identity())
        elif plain or (isinstance(bn.drop, nn.Identity) and isinstance(bn.act, nn.Identity)):
            folded.set_submodule(str(node.target), nn.Identity())
        else:
            folded.set_submodule(str(node.target), _AfterNorm(bn))
    return folded


#: per-thread scratch buffers of :class:`_ConvActFn`'s backward while :func:`integrated_gradients` runs: a fresh
#: 10-20 MB tensor per activation costs page faults (measured: the masked gradient takes 8 ms into a new tensor,
#: 3 ms into a reused one)
_SCRATCH = threading.local()


def _conv_input_grad(
    g: torch.Tensor, x: torch.Tensor, c: nn.Conv2d, flipped: torch.Tensor | None
) -> torch.Tensor:
    if flipped is not None:
        # a stride-1 "same" depthwise conv's input gradient is the same conv with the kernel flipped: oneDNN's
        # forward kernel does it about 30 % faster than its backward-data kernel (measured on this CPU)
        return F.conv2d(g, flipped, None, 1, c.padding, 1, c.groups)
    gx: torch.Tensor = torch.ops.aten.convolution_backward(
        g,
        x,
        c.weight,
        None,
        list(c.stride),
        list(c.padding),
        list(c.dilation),
        False,
        [0, 0],
        c.groups,
        [True, False, False],
    )[0]
    return gx


class _ConvActFn(torch.autograd.Function):
    """conv -> clamp(lo, hi) in one oneDNN call where available (the clamp is a post-op, no extra pass over
    memory); the backward gives the input gradient only (the teacher is frozen), masking by the saved output."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, conv: nn.Conv2d, lo: float, hi: float, flipped: torch.Tensor | None
    ) -> torch.Tensor:
        if _FUSED:
            y: torch.Tensor = torch.ops.mkldnn._convolution_pointwise(
                x,
                conv.weight,
                conv.bias,
                list(conv.padding),
                list(conv.stride),
                list(conv.dilation),
                conv.groups,
                "hardtanh",
                [lo, hi],
                "",
            )
        else:
            y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            y.clamp_(lo, hi)
        ctx.save_for_backward(x, y)
        ctx.conv, ctx.lo, ctx.hi, ctx.flipped = conv, lo, hi, flipped
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        x, y = ctx.saved_tensors
        return (
            _conv_input_grad(_masked(grad, y, ctx.lo, ctx.hi), x, ctx.conv, ctx.flipped),
            None,
            None,
            None,
            None,
        )


#: oneDNN's convolution with a fused clamp post-op is available (else a plain conv and an in-place clamp)
_FUSED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _masked(grad: torch.Tensor, y: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``grad`` where ``lo < y < hi``, else 0 (the clamp's backward), into a reused scratch buffer when
    :func:`integrated_gradients` runs."""
    pool = getattr(_SCRATCH, "pool", None)
    if pool is None:
        return torch.ops.aten.hardtanh_backward(grad, y, lo, hi)
    # the masked gradient only lives until the conv backward that follows: reuse one buffer per shape
    key = (tuple(grad.shape), grad.stride(), grad.dtype, grad.device)
    g = pool.get(key)
    if g is None:
        g = pool[key] = torch.empty_like(grad)
    torch.ops.aten.hardtanh_backward.grad_input(grad, y, lo, hi, grad_input=g)
    return g


class _ConvAct(nn.Module):
    """A frozen conv followed by ReLU or ReLU6, fused (see :class:`_ConvActFn`)."""

    def __init__(self, conv: nn.Conv2d, hi: float) -> None:
        super().__init__()
        self.conv, self.hi = conv, hi
        k = conv.kernel_size
        same = all(p == kk // 2 and kk % 2 == 1 for p, kk in zip(conv.padding, k, strict=True))
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        simple = conv.stride == (1, 1) and conv.dilation == (1, 1) and same and depthwise
        #: the flipped kernel of a stride-1 "same" depthwise conv (its input gradient is a forward conv with it)
        self.flipped = conv.weight.detach().flip(-1, -2).contiguous() if simple else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            return self.conv(x).clamp(0.0, self.hi)
        out: torch.Tensor = _ConvActFn.apply(
            x.contiguous(memory_format=torch.channels_last), self.conv, 0.0, self.hi, self.flipped
        )
        return out


def _act_bound(act: nn.Module) -> float | None:
    if isinstance(act, nn.ReLU6):
        return 6.0
    if isinstance(act, nn.ReLU):
        return float("inf")
    return None


def inference_copy(model: nn.Module) -> nn.Module:
    """The copy of a teacher that IG differentiates: frozen, eval mode, batch norms folded into the convolutions,
    ``conv -> ReLU6`` joined into one module with an input-gradient-only backward pass on CPUs (:class:`_ConvAct`),
    the remaining activations out of place (an in-place ReLU6 on a channels-last tensor computes out of place and
    copies back), channels-last memory (about 2x faster depthwise convolutions on CPUs). Same function as
    ``model`` up to float rounding."""
    fast = fold_batchnorm(model, fuse_activation=True)
    for m in fast.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            setattr(m, "inplace", False)  # noqa: B010 (mypy cannot type an attribute found by getattr)
    return fast.to(memory_format=torch.channels_last)


#: inference copies -> (their first conv + clamp, the rest of the network as a graph module), or None
_STEMS: weakref.WeakKeyDictionary[nn.Module, tuple[_ConvAct, nn.Module] | None] = weakref.WeakKeyDictionary()


def split_stem(model: nn.Module) -> tuple[_ConvAct, nn.Module] | None:
    """``(stem, rest)`` with ``model(x) == rest(stem(x))`` when the input's only use is a conv + clamp of an
    inference copy (:func:`inference_copy`), else None. Everything before the stem's clamp is affine in the
    input, which :func:`integrated_gradients` exploits: the stem's convolution runs once per image instead of
    once per (image, integration node), and so does its backward pass."""
    if model in _STEMS:
        return _STEMS[model]
    found = None
    try:
        graph = _LeafTracer().trace(model)
        inputs = [n for n in graph.nodes if n.op == "placeholder"]
        users = list(inputs[0].users) if len(inputs) == 1 else []
        stem = model.get_submodule(str(users[0].target)) if len(users) == 1 else None
        if (
            isinstance(stem, _ConvAct)
            and users[0].op == "call_module"
            and users[0].args == (inputs[0],)
            and not users[0].kwargs
            and stem.conv.padding_mode == "zeros"
        ):
            with graph.inserting_before(users[0]):
                entry = graph.placeholder("stem_out")
            users[0].replace_all_uses_with(entry)
            graph.erase_node(users[0])
            graph.erase_node(inputs[0])
            graph.lint()
            found = (stem, torch.fx.GraphModule(model, graph))
    except Exception:  # an untraceable model: integrate through the whole network (correct, a little slower)
        found = None
    _STEMS[model] = found
    return found


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
    _SCRATCH.pool = {}
    try:
        return _integrate(model, x, baseline, target, steps, method, batch_size)
    finally:
        del _SCRATCH.pool


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
            grad = _masked(grad, pts.detach(), 0.0, split[0].hi)
        total.index_add_(0, img, grad.float())
    if split is not None:
        total = _conv_input_grad(total, x.contiguous(memory_format=torch.channels_last), split[0].conv, None)
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
