"""Weights from foreign checkpoints: our own state dicts and the reference layouts others publish.

A checkpoint is read with ``torch.load(..., weights_only=True, map_location="cpu")`` (no code runs, and a file
saved on a GPU loads on a CPU-only machine). Its tensors are then put onto a built network:

- **native**: the keys are the network's own (a state dict saved by automl-kd, timm or plain PyTorch);
- **igkd**: the IG-KD authors' student layout (``front_layers.N``, ``middle_layer``, ``end_layers.N``,
  ``classifier.1``; github.com/nordlinglab/ModelCompression-IntegratedGradients);
- **torchvision**: torchvision-style MobileNetV2 (``features.N...``, ``classifier.1``).

The foreign layouts hold the same tensors in the same order as ``paper-truncated``'s build (and any space whose
build has the same tensors in the same order), so they are mapped in order, checked tensor by tensor by shape; the
first tensor that does not fit is named in a one-line :class:`~automl_kd.errors.ConfigError`.

Example::

    model = PaperTruncatedSpace().build({"removed": 5})
    layout = load_weights(model, "CIFAR10_KD_IG_AT_..._TestAcc92.42.pt")   # -> "igkd"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_kd.errors import ConfigError

#: layout name -> a pattern every key of that layout matches
LAYOUTS: dict[str, re.Pattern[str]] = {
    "igkd": re.compile(r"^(front_layers\.\d+|middle_layer|end_layers\.\d+|classifier\.1)\."),
    "torchvision": re.compile(r"^(features\.\d+|classifier\.1)\."),
}
#: keys a checkpoint may nest its state dict under (training scripts save more than the weights)
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "student")


class UnsafeFile(Exception):
    """A file holds Python objects beyond tensors and plain containers, or is not a torch file; not loaded."""


def refusal(exc: BaseException) -> str:
    """One line for a failed weights-only load (torch's own spans several and suggests ``weights_only=False``,
    which would run whatever the pickle asks for): which object it refused, or the read error's first line."""
    text = str(exc)
    found = re.search(r"[Uu]nsupported global:? (?:GLOBAL )?([\w.]+)", text)
    if found:
        return f"refused: it holds the Python object {found.group(1)}, and loading it would run code"
    if "weights_only" in text or "Weights only load failed" in text:
        return "refused: it holds Python objects, not only tensors (loading it would run code)"
    first = " ".join((text.strip().splitlines() or [type(exc).__name__])[0].split())
    return f"unreadable: {first[:200]}"


def load_tensors(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU (no code runs); :class:`UnsafeFile`, one line, when
    refused or unreadable."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:
        raise UnsafeFile(refusal(exc)) from None


def read_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, safely: a state dict, or one nested under a usual key."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"{what} {str(p)!r} does not exist" + (" (it is a directory)" if p.is_dir() else "")
        )
    try:
        obj = load_tensors(p)
    except (UnsafeFile, OSError) as exc:  # pickle refusals, truncated zips, foreign formats
        raise ConfigError(f"{what} {str(p)!r} cannot be read safely: {exc}") from None
    for k in NESTED_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping):
            obj = obj[k]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ConfigError(f"{what} {str(p)!r} holds no state dict")
    tensors = {str(k).removeprefix("module."): v for k, v in obj.items()}  # saved from DataParallel/DDP
    bad = next((k for k, v in tensors.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ConfigError(f"{what} {str(p)!r}: entry {bad!r} is not a tensor")
    return tensors


def detect_layout(keys: list[str], own: set[str]) -> str:
    """``native`` when the keys are the network's own, else the first reference layout all keys match, else
    ``ordered`` (an unknown layout, still mapped in order and checked by shape)."""
    if set(keys) == own:
        return "native"
    for name, pattern in LAYOUTS.items():
        if all(pattern.match(k) for k in keys):
            return name
    return "ordered"


def map_state_dict(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    target: str = "the network",
) -> tuple[dict[str, torch.Tensor], str]:
    """``tensors`` renamed onto ``model``'s own keys, and the layout that was recognised."""
    own = model.state_dict()
    layout = detect_layout(list(tensors), set(own))
    if layout == "native":
        for k, v in tensors.items():
            if v.shape != own[k].shape:
                raise ConfigError(
                    f"{source} does not fit {target}: tensor {k!r} has shape {list(v.shape)}, "
                    f"{target} needs {list(own[k].shape)}"
                )
        return dict(tensors), layout
    theirs = list(tensors.items())
    ours = list(own.items())
    for i, (name, want) in enumerate(ours):
        if i >= len(theirs):
            raise ConfigError(
                f"{source} ({layout} layout) has {len(theirs)} tensors, {target} needs {len(ours)}: "
                f"nothing for {name!r} {list(want.shape)}"
            )
        key, value = theirs[i]
        if value.shape != want.shape:
            raise ConfigError(
                f"{source} ({layout} layout): tensor {i} {key!r} {list(value.shape)} does not fit "
                f"{name!r} {list(want.shape)}"
            )
    if len(theirs) > len(ours):
        raise ConfigError(
            f"{source} ({layout} layout) has {len(theirs)} tensors, {target} needs {len(ours)}: "
            f"{theirs[len(ours)][0]!r} and later are left over"
        )
    return {name: value for (name, _), (_, value) in zip(ours, theirs, strict=True)}, layout


def load_weights(
    model: nn.Module, path: str | Path, what: str = "checkpoint", target: str = "the network"
) -> str:
    """Load a checkpoint in any supported layout into ``model`` (named ``target`` in errors); return the layout."""
    tensors = read_state_dict(path, what)
    mapped, layout = map_state_dict(model, tensors, f"{what} {str(path)!r}", target)
    model.load_state_dict(mapped, strict=True)
    return layout
