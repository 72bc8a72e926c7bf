"""Looking inside a network: the outputs of named layers during a forward pass, and a hash of its weights."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .augmenter import Outputs


@contextlib.contextmanager
def tap_features(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the outputs of the named submodules during forward passes inside the block."""
    found: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"no layer named {missing[0]!r}; layers include: {', '.join(list(modules)[1:12])} ...")
    handles = []
    for name in names:

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor, name: str = name) -> None:
            found[name] = out

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def forward(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> Outputs:
    if not layers:
        return Outputs(model(x))
    with tap_features(model, layers) as feats:
        logits = model(x)
    return Outputs(logits, dict(feats))


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (32 hex digits) of a model's parameters and buffers: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]
