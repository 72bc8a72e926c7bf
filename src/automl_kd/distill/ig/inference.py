"""The teacher's inference copy for integrated gradients: batch norms folded into the convolutions before them,
``conv -> ReLU6`` fused into one oneDNN call on CPUs with a backward pass for the input gradient only, and the
affine stem split off (see :mod:`automl_kd.distill.ig.attribution` for why each one pays)."""

from __future__ import annotations

import copy
import threading
import weakref
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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
SCRATCH = threading.local()


def conv_input_grad(
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
            conv_input_grad(masked_grad(grad, y, ctx.lo, ctx.hi), x, ctx.conv, ctx.flipped),
            None,
            None,
            None,
            None,
        )


#: oneDNN's convolution with a fused clamp post-op is available (else a plain conv and an in-place clamp)
_FUSED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def masked_grad(grad: torch.Tensor, y: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``grad`` where ``lo < y < hi``, else 0 (the clamp's backward), into a reused scratch buffer when
    :func:`integrated_gradients` runs."""
    pool = getattr(SCRATCH, "pool", None)
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
