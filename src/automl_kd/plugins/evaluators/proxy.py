"""The ``proxy`` evaluator: a zero-cost proxy scores each candidate at initialisation, with no training.

A proxy is computed on a freshly initialised network (weights drawn with the seed) and one minibatch of the
configured data's training split (drawn with the same seed):

- ``synflow`` (Tanaka et al. 2020, as a proxy: Abdelfattah et al. 2021): the network in float64 with every
  parameter replaced by its absolute value and BatchNorm made the identity (the published proxy builds its
  network without BN); one all-ones input; ``R`` = the sum of the outputs; the score is the sum over the weights of
  every conv and linear layer of ``|w * dR/dw|``. No data values enter, only the input shape.
- ``naswot`` (Mellor et al. 2021, "Neural Architecture Search without Training"): every ReLU's on/off pattern
  over the minibatch gives each image a binary code ``c``; ``K = sum_relus c c^T + (1 - c)(1 - c)^T`` (the
  number of units on which two images agree, a Hamming kernel); the score is ``log |det K|``.
- ``jacob_cov`` (Mellor et al. 2021, first version): the Jacobian of the summed outputs with respect to each
  input image; the correlation matrix ``C`` of the images' Jacobians, its eigenvalues ``v``; the score is
  ``-sum(log(v + k) + 1 / (v + k))`` with ``k = 1e-5``.
- ``snip`` (Lee et al. 2019, as a proxy: Abdelfattah et al. 2021): cross-entropy on the minibatch; the sum over
  conv and linear weights of ``|w * dL/dw|``.
- ``grad_norm`` (Abdelfattah et al. 2021): the same loss; the sum over conv and linear layers of the L2 norm of
  ``dL/dw``.
- ``params``, ``macs``: the network's parameter count and multiply-adds: the baselines a proxy must beat.

Each proxy but synflow runs in float32 with BatchNorm in training mode (batch statistics), as the published
proxies do; snip and grad_norm share one backward pass. Every proxy starts from its own copy of the same
initialised network, so the order they are computed in changes nothing.

Higher is better for every proxy. The evaluator's ``val_acc`` (the objective every proposer maximises, which the
evaluator contract keeps within 0-100) is the score through a strictly increasing map into (0, 100)
(:func:`to_objective`): the ranking is the proxy's; the raw score is ``proxy_score``. A score that is not a
number (a network whose output does not depend on its input: jacob_cov and naswot are undefined) ranks lowest.
Scores are cached in the artifact cache by (space, architecture, proxy, data, seed, batch size).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from automl_kd.cache import ArtifactCache, canonical_json
from automl_kd.data import DataSplits
from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.hookspecs import hookimpl
from automl_kd.metrics import count_macs, count_params
from automl_kd.space import Candidate, SearchSpace

ProxyName = Literal["synflow", "naswot", "jacob_cov", "snip", "grad_norm", "params", "macs"]
PROXIES: tuple[str, ...] = ("synflow", "naswot", "jacob_cov", "snip", "grad_norm", "params", "macs")
#: bumped when a proxy's definition changes, so cached scores of the old definition are never reused
PROXY_VERSION = 1
CACHE_KIND = "proxy-score"
JACOB_K = 1e-5
_RELUS = (nn.ReLU, nn.ReLU6)


@dataclass(frozen=True)
class ProxyScore:
    """One proxy's value for one network, with the CPU and wall seconds it took."""

    value: float
    cpu_s: float
    wall_s: float


def layer_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights of the conv and linear layers, which the gradient proxies sum over."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


# -- the proxies (each takes a network it may change: pass a copy) ---------------------------------------------
def synflow(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """SynFlow in float64: |parameters|, BatchNorm as the identity, an all-ones input, sum of |w * dR/dw|."""
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                # the identity: running mean 0 and variance 1, eval mode, no eps, weight 1 and bias 0; a BN fused
                # with its activation (timm's BatchNormAct2d) keeps the activation
                m.eval()
                m.eps = 0.0
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
                if m.weight is not None and m.bias is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    out = model(torch.ones(1, *input_shape, dtype=torch.float64, device=device))
    out.sum().backward()
    total = 0.0
    for w in layer_weights(model):
        if w.grad is not None:
            total += float((w.detach() * w.grad).abs().sum())
    return total


class _HammingKernel:
    """Forward hooks on every ReLU that add the binary codes' agreements to an ``n x n`` kernel."""

    def __init__(self, model: nn.Module, n: int, device: torch.device) -> None:
        self.kernel = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, _RELUS)]
        if not self.handles:
            raise ValueError("naswot needs ReLU modules (nn.ReLU or nn.ReLU6); this network has none")

    def _hook(self, _module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        # ReLU(x) > 0 exactly where x > 0 (also for ReLU6 and in-place ReLUs, whose input is overwritten)
        code = (output.detach() > 0).flatten(1).float()
        # c c^T + (1 - c)(1 - c)^T = 2 c c^T - s_i - s_j + units, with s the codes' sums: one product, in
        # float32, exact while a layer has fewer than 2^24 units (every partial sum is an integer)
        if code.shape[1] >= 2**24:
            code = code.double()
        both = code @ code.t()
        ones = code.sum(1)
        self.kernel.add_(
            2.0 * both.double() - ones.double()[:, None] - ones.double()[None, :] + code.shape[1]
        )

    def close(self) -> float:
        for h in self.handles:
            h.remove()
        sign, logdet = torch.linalg.slogdet(self.kernel)
        return float(logdet) if float(sign) != 0.0 else -math.inf


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log |det K| of the Hamming kernel of the ReLUs' binary codes over the minibatch ``x``."""
    kernel = _HammingKernel(model, x.shape[0], x.device)
    try:
        with torch.no_grad():
            model(x)
    finally:
        value = kernel.close()
    return value


def _jacob_score(grad: torch.Tensor | None) -> float:
    if grad is None:
        return math.nan  # the output does not depend on the input
    jac = grad.detach().flatten(1).double().cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.corrcoef(jac)
    if not np.all(np.isfinite(corr)):
        return math.nan  # an image's Jacobian is constant (zero): the output does not depend on it
    v = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(v + JACOB_K) + 1.0 / (v + JACOB_K)))


def jacob_cov(model: nn.Module, x: torch.Tensor) -> float:
    """-sum(log(v + k) + 1/(v + k)) over the eigenvalues ``v`` of the correlation matrix of the input Jacobians."""
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(torch.ones_like(out))
    return _jacob_score(x.grad)


def snip_and_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """One cross-entropy backward pass: snip (sum |w * dL/dw|) and grad_norm (sum of per-layer ||dL/dw||)."""
    model.zero_grad(set_to_none=True)
    return _loss_gradients(model, model(x), y)


def _loss_gradients(model: nn.Module, out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    nn.functional.cross_entropy(out, y).backward()
    snip_total, norm_total = 0.0, 0.0
    for w in layer_weights(model):
        g = w.grad
        if g is not None:
            snip_total += float((w.detach() * g).abs().sum())
            norm_total += float(g.norm())
    return {"snip": snip_total, "grad_norm": norm_total}


def one_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, wanted: Iterable[str]) -> dict[str, float]:
    """naswot, jacob_cov, snip and grad_norm (those of ``wanted``) from one forward pass and up to two backward
    passes; the same values as the proxies computed one by one (the activations, the input Jacobian and the
    loss gradients do not depend on each other)."""
    want = set(wanted)
    x = x.clone().requires_grad_("jacob_cov" in want)
    model.zero_grad(set_to_none=True)
    kernel = _HammingKernel(model, x.shape[0], x.device) if "naswot" in want else None
    try:
        out = model(x)
    finally:
        values = {"naswot": kernel.close()} if kernel is not None else {}
    gradient_proxies = want & {"snip", "grad_norm"}
    if "jacob_cov" in want:
        (grad,) = (
            torch.autograd.grad(out.sum(), x, retain_graph=bool(gradient_proxies), allow_unused=True)
            if out.requires_grad
            else (None,)
        )
        values["jacob_cov"] = _jacob_score(grad)
    if gradient_proxies:
        values.update(_loss_gradients(model, out, y))
    return {k: v for k, v in values.items() if k in want}


def compute_proxies(
    model: nn.Module,
    proxies: Iterable[str],
    x: torch.Tensor,
    y: torch.Tensor,
    cost: Callable[[], tuple[int, int]] | None = None,
    shared: bool = False,
) -> dict[str, ProxyScore]:
    """Every proxy of ``proxies`` for the initialised ``model`` on the minibatch ``x``, ``y`` (each on its own
    copy of ``model``). ``cost`` gives (params, macs) when the caller knows them (a table); else they are counted.
    snip and grad_norm share one backward pass; with ``shared``, naswot, jacob_cov, snip and grad_norm all come
    from :func:`one_pass`. Proxies that share a pass are each charged the whole pass."""
    wanted = list(dict.fromkeys(proxies))
    unknown = [p for p in wanted if p not in PROXIES]
    if unknown:
        raise ValueError(f"unknown proxies {unknown}: choose from {', '.join(PROXIES)}")
    input_shape = tuple(x.shape[1:])
    model.train()
    out: dict[str, ProxyScore] = {}

    def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
        c0, w0 = time.process_time(), time.perf_counter()
        value = fn()
        return value, time.process_time() - c0, time.perf_counter() - w0

    counted: tuple[int, int] | None = None
    together = [p for p in wanted if p in ("naswot", "jacob_cov", "snip", "grad_norm")] if shared else []
    if together:
        values, c, w = timed(lambda: one_pass(copy.deepcopy(model), x, y, together))
        out.update({name: ProxyScore(values[name], c, w) for name in together})
    for name in wanted:
        if name in out:
            continue
        if name in ("params", "macs"):
            if counted is None:
                counted, c, w = timed(cost or (lambda: (count_params(model), count_macs(model, input_shape))))
                model.train()
            out[name] = ProxyScore(float(counted[0 if name == "params" else 1]), c, w)
        elif name == "synflow":
            value, c, w = timed(lambda: synflow(copy.deepcopy(model), input_shape))
            out[name] = ProxyScore(value, c, w)
        elif name == "naswot":
            value, c, w = timed(lambda: naswot(copy.deepcopy(model), x))
            out[name] = ProxyScore(value, c, w)
        elif name == "jacob_cov":
            value, c, w = timed(lambda: jacob_cov(copy.deepcopy(model), x))
            out[name] = ProxyScore(value, c, w)
        else:  # snip, grad_norm
            both, c, w = timed(lambda: snip_and_grad_norm(copy.deepcopy(model), x, y))
            for key in ("snip", "grad_norm"):
                if key in wanted:
                    out[key] = ProxyScore(both[key], c, w)
    return {name: out[name] for name in wanted}


def to_objective(score: float) -> float:
    """A strictly increasing map of any score into (0, 100): ``50 + 50 t / (1 + |t|)`` with
    ``t = sign(s) log(1 + |s|)``; +inf gives 100, -inf and NaN give 0 (they rank lowest)."""
    if math.isnan(score) or score == -math.inf:
        return 0.0
    if score == math.inf:
        return 100.0
    t = math.copysign(math.log1p(abs(score)), score)
    return 50.0 + 50.0 * t / (1.0 + abs(t))


def minibatch(data: DataSplits, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` training images drawn with ``seed`` (normalised like training inputs) and their labels."""
    train = data.train
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[: min(batch_size, len(train))].to(train.x.device)
    x = data.normalize(train.x[idx].float().div_(255))
    return x, train.y[idx]


def _space_identity(space: SearchSpace) -> dict[str, Any]:
    """What identifies the space's networks besides a candidate's parameters: its name and its options."""
    state = {k: v for k, v in vars(space).items() if not k.startswith("_")}
    return {"name": space.name, "options": canonical_json(state)}


class ProxyEvaluator(Evaluator):
    """Score each candidate with a zero-cost proxy at initialisation (no training).

    ``proxy``: synflow, naswot, jacob_cov, snip, grad_norm, params or macs. ``batch_size``: the minibatch's
    size. ``seed``: the seed of the weights and of the minibatch; the default 0 scores every candidate on the
    same minibatch (so scores compare, and a candidate seen again is read from the cache); ``null`` uses each
    trial's seed. ``cache``: keep scores in the artifact cache.
    """

    name = "proxy"
    trains = True  # needs the data, the device and the space's build(), though it trains nothing

    def __init__(
        self,
        proxy: ProxyName = "synflow",
        batch_size: int = 64,
        seed: int | None = 0,
        cache: bool = True,
    ) -> None:
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {', '.join(PROXIES)} (got {proxy!r})")
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (got {batch_size!r})")
        self.proxy, self.batch_size, self.seed, self.use_cache = proxy, batch_size, seed, cache
        self.steps = None

    def cache_key(self, space: SearchSpace, params: Mapping[str, Any], data: DataSplits, seed: int) -> str:
        return ArtifactCache.key(
            CACHE_KIND,
            {
                "version": PROXY_VERSION,
                "space": _space_identity(space),
                "arch": dict(params),
                "proxy": self.proxy,
                "data": data.fingerprint,
                "input": list(data.input_shape),
                "seed": seed,
                "batch_size": self.batch_size,
            },
        )

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        data: DataSplits = context.resource("data")
        seed = context.seed if self.seed is None else self.seed
        cache: ArtifactCache | None = context.resource("cache") if self.use_cache else None
        key = self.cache_key(context.space, candidate.params, data, seed)
        art = cache.load(CACHE_KIND, key) if cache is not None else None
        if art is not None:
            score = ProxyScore(
                float(art.tensors["score"].item()), float(art.meta["cpu_s"]), float(art.meta["wall_s"])
            )
            params, macs = int(art.meta["params"]), int(art.meta["macs"])
        else:
            torch.manual_seed(seed)
            model = context.space.build(candidate.params).to(context.device)
            x, y = minibatch(data, self.batch_size, seed)
            score = compute_proxies(model, [self.proxy], x, y)[self.proxy]
            params, macs = count_params(model), count_macs(model, data.input_shape)
            if cache is not None:
                meta = {"cpu_s": score.cpu_s, "wall_s": score.wall_s, "params": params, "macs": macs}
                cache.save(CACHE_KIND, key, {"score": torch.tensor([score.value], dtype=torch.float64)}, meta)
        finite = math.isfinite(score.value)
        return {
            "val_acc": to_objective(score.value),
            "proxy": self.proxy,
            "proxy_score": score.value if finite else str(score.value),
            "proxy_cpu_s": round(score.cpu_s, 4),
            "proxy_wall_s": round(score.wall_s, 4),
            "proxy_cached": art is not None,
            "proxy_seed": seed,
            "params": params,
            "macs": macs,
        }


@hookimpl
def register_evaluators(register: Any) -> None:
    register(
        "proxy",
        ProxyEvaluator,
        description="zero-cost proxy at initialisation (synflow, naswot, jacob_cov, snip, grad_norm, params, "
        "macs); no training",
    )
