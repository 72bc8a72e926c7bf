"""``automl-kd export``: a finalized student as ONNX, ``torch.export`` (.pt2), TorchScript and safetensors.

The graph formats (ONNX, .pt2, TorchScript) take ``float32`` images in ``[0, 1]``, shape ``N x C x H x W`` with a
dynamic batch, and include the training set's normalisation, so a deployment needs nothing but the file. The
safetensors file holds the bare student's weights (they expect normalised inputs; mean and std are in its metadata
and the model card).

Every file is checked after it is written: ONNX with ``onnx.checker`` and onnxruntime against the torch outputs on
the real test images saved by ``finalize`` (max abs difference below ``tolerance``, 1e-4 by default, else
:class:`ExportError`), the .pt2 and TorchScript programs by reloading and running them, safetensors by reloading.
The differences go into ``model_card.json`` and ``model_card.md``.

TorchScript (``torch.jit``) is deprecated in torch 2.14 in favour of ``torch.export``; it is written only when
asked for (``formats=("torchscript", ...)``) and the card says so. The default formats are onnx, pt2, safetensors.

Example::

    card = export_student(Path("runs/quick/final/trial-3"))
    print(card["checks"]["onnx"]["max_abs_diff"])
"""

from __future__ import annotations

import hashlib
import importlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_kd.distill.checkpoints import UnsafeFile, load_tensors
from automl_kd.errors import AutomlKdError, ConfigError
from automl_kd.manager import PluginManager
from automl_kd.results.finalize import CHECK_IMAGES, CheckpointError, load_finalized

FORMATS = ("onnx", "pt2", "torchscript", "safetensors")
DEFAULT_FORMATS = ("onnx", "pt2", "safetensors")
FILES = {
    "onnx": "model.onnx",
    "pt2": "model.pt2",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.safetensors",
}
OPSET = 18


class ExportError(AutomlKdError):
    """An exported model could not be written, or its outputs do not match the torch model's."""


class Deployable(nn.Module):
    """The student with its input normalisation: ``[0, 1]`` images in, logits out."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model((x - self.mean) / self.std)
        return out


def _need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(
            f"{what} needs the `{module.split('.')[0]}` package: pip install onnx onnxscript onnxruntime "
            "safetensors (all in automl-kd's `dev` extra)"
        ) from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _diff(a: Any, b: torch.Tensor) -> float:
    return float((torch.as_tensor(a).float() - b.float()).abs().max())


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=4096)


# -- one function per format: write, reload, compare ---------------------------------------------------------------
def _onnx(wrapped: nn.Module, x: torch.Tensor, ref: torch.Tensor, path: Path) -> dict[str, Any]:
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        _need(mod, "ONNX export")
    # optional dependencies (the dev extra): imported when this format is asked for, after _need's hint
    import onnx
    import onnxruntime as ort

    try:
        # the dynamo exporter is torch's supported path; the TorchScript-based one is deprecated
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (x,),
                str(path),
                dynamo=True,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: _batch_dim()},),
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: x.numpy()})[0]
    single = sess.run(None, {name: x[:1].numpy()})[0]  # the batch axis really is dynamic
    return {
        "max_abs_diff": max(_diff(out, ref), _diff(single, ref[:1])),
        "argmax_agrees": bool((torch.as_tensor(out).argmax(1) == ref.argmax(1)).all()),
        "opset": OPSET,
        "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
    }


def _pt2(wrapped: nn.Module, x: torch.Tensor, ref: torch.Tensor, path: Path) -> dict[str, Any]:
    try:
        program = torch.export.export(wrapped, (x,), dynamic_shapes=({0: _batch_dim()},))
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
    except Exception as exc:
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        out = loaded(x)
    return {"max_abs_diff": _diff(out, ref), "runtime": f"torch.export.load, torch {torch.__version__}"}


def _torchscript(wrapped: nn.Module, x: torch.Tensor, ref: torch.Tensor, path: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            # deprecated in torch 2.14 (FutureWarning); written only on request, and the card says so
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(wrapped, x)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path))
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc
    with torch.no_grad():
        out = loaded(x)
    return {
        "max_abs_diff": _diff(out, ref),
        "runtime": f"torch.jit.load, torch {torch.__version__}",
        "note": "torch.jit is deprecated in this torch; prefer model.pt2 (torch.export)",
    }


def _safetensors(model: nn.Module, record: dict[str, Any], path: Path) -> dict[str, Any]:
    st = _need("safetensors.torch", "safetensors export")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": "pt",
        "architecture": str(record.get("architecture", "")),
        "space": json.dumps(record["space"]),
        "params": json.dumps(record["params"]),
        "mean": json.dumps(record["data"]["mean"]),
        "std": json.dumps(record["data"]["std"]),
        "classes": json.dumps(record["data"]["classes"]),
    }
    st.save_file(state, str(path), metadata=meta)
    back = st.load_file(str(path))
    same = back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    if not same:
        raise ExportError(f"{path} does not read back to the same tensors")
    return {"tensors": len(state), "reloaded_equal": True}


# -- the export ------------------------------------------------------------------------------------------------
def export_student(
    final: Path,
    out_dir: Path | None = None,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    tolerance: float = 1e-4,
    pm: PluginManager | None = None,
) -> dict[str, Any]:
    """Export the finalized student in ``final`` (its directory or ``model.pt``) into ``out_dir`` (default
    ``<final>/export``); return the model card (also written as ``model_card.json`` and ``model_card.md``)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(
            f"unknown export format {unknown[0] if unknown else '(none)'!r}; use {', '.join(FORMATS)}"
        )
    final = Path(final)
    folder = final if final.is_dir() else final.parent
    model, record = load_finalized(final, pm)
    out = Path(out_dir) if out_dir else folder / "export"
    out.mkdir(parents=True, exist_ok=True)

    wrapped = Deployable(model, record["data"]["mean"], record["data"]["std"]).eval()
    sample_path = folder / CHECK_IMAGES
    if sample_path.is_file():
        try:
            sample = load_tensors(sample_path)
            x = sample["x"].float().div(255)
        except (UnsafeFile, OSError, KeyError, TypeError, AttributeError) as exc:
            what = exc if isinstance(exc, UnsafeFile) else f"no uint8 tensor 'x' ({type(exc).__name__})"
            raise CheckpointError(f"check images {sample_path}: {what}") from None
        source = f"{len(x)} real test images saved by finalize"
    else:  # a checkpoint finalized elsewhere: still compare, on reproducible noise images
        sp = record["space"]
        g = torch.Generator().manual_seed(0)
        x = torch.rand(8, sp["in_chans"], sp["input_size"], sp["input_size"], generator=g)
        source = "8 random images (no check_images.pt beside the checkpoint)"
    x = x.contiguous()
    with torch.no_grad():
        ref = wrapped(x)

    checks: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        path = out / FILES[fmt]
        if fmt == "onnx":
            checks[fmt] = _onnx(wrapped, x, ref, path)
        elif fmt == "pt2":
            checks[fmt] = _pt2(wrapped, x, ref, path)
        elif fmt == "torchscript":
            checks[fmt] = _torchscript(wrapped, x, ref, path)
        else:
            checks[fmt] = _safetensors(model, record, path)
        checks[fmt].update(file=FILES[fmt], bytes=path.stat().st_size, sha256=_sha256(path))
        diff = checks[fmt].get("max_abs_diff")
        if diff is not None and not diff < tolerance:
            raise ExportError(
                f"{fmt} outputs differ from torch by up to {diff:.3g} on {source} (tolerance {tolerance:g})"
            )

    card = model_card(record, checks, source, tolerance)
    (out / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    (out / "model_card.md").write_text(card_markdown(card))
    return card


def model_card(
    record: dict[str, Any], checks: dict[str, dict[str, Any]], source: str, tolerance: float
) -> dict[str, Any]:
    """The card's facts: architecture, accuracy, cost, teacher, augmenters, data, files and their checks."""
    m = record["metrics"]
    sp = record["space"]
    teacher = record.get("teacher")
    cfg_teacher = (record.get("config") or {}).get("teacher")
    return {
        "name": f"{record['study']}-trial-{record['trial']}",
        "architecture": {
            "space": sp["name"],
            "space_options": sp["options"],
            "params": record["params"],
            "text": record.get("architecture", ""),
        },
        "input": {
            "shape": ["batch", sp["in_chans"], sp["input_size"], sp["input_size"]],
            "dtype": "float32",
            "range": "[0, 1] (normalisation is inside the graph formats)",
            "mean": record["data"]["mean"],
            "std": record["data"]["std"],
        },
        "output": {"logits": len(record["data"]["classes"]), "classes": record["data"]["classes"]},
        "accuracy": {
            "dataset": record["data"]["dataset"],
            "val_acc": m.get("val_acc"),
            "test_acc": m.get("test_acc"),
            "search_val_acc": record.get("search", {}).get("val_acc"),
        },
        "cost": {
            "params": m.get("params"),
            "macs": m.get("macs"),
            # every batch size finalize measured (1 and 64 by default), median ms per batch
            **{k: v for k, v in m.items() if k.startswith("latency_ms_b")},
            "latency_device": m.get("latency_device"),
        },
        "training": {**record.get("train", {}), "seed": record.get("seed")},
        "teacher": teacher or ({"config": cfg_teacher, "used": False} if cfg_teacher else None),
        "augmenters": record.get("augmenters", []),
        "source": {"study": record["study"], "trial": record["trial"], "proposer": record.get("proposer")},
        "checks": {"images": source, "tolerance": tolerance, **checks},
        "versions": record.get("versions", {}),
    }


def _v(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (for a model hub or a README)."""
    acc, cost, arch = card["accuracy"], card["cost"], card["architecture"]
    teacher = card["teacher"]
    if teacher and teacher.get("used", True):
        t_cfg = teacher.get("config") or {}
        t_name = t_cfg.get("model") or t_cfg.get("space") or "?"
        teacher_text = (
            f"{t_name}, {_v(teacher.get('params'))} params, test accuracy {_v(teacher.get('test_acc'))} %"
        )
    elif teacher:
        teacher_text = "configured but not used (the trial trained without distillation augmenters)"
    else:
        teacher_text = "none (trained on labels only)"
    latency = ", ".join(
        f"{_v(v, 3)} ms at batch {k.removeprefix('latency_ms_b')}"
        for k, v in sorted(cost.items(), key=lambda kv: (len(kv[0]), kv[0]))
        if k.startswith("latency_ms_b")
    )
    epochs = card["training"].get("epochs")
    augs = (
        ", ".join(f"{a['name']} {json.dumps(a.get('options') or {})}" for a in card["augmenters"]) or "none"
    )
    lines = [
        f"# {card['name']}",
        "",
        f"A student network found by automl-kd (study `{card['source']['study']}`, trial "
        f"{card['source']['trial']}, proposed by {card['source']['proposer'] or '?'}) and finalized with "
        f"{_v(epochs)} epoch{'' if epochs == 1 else 's'} of training.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{arch['space']}` space: `{' / '.join(str(arch['text']).splitlines())}` |",
        f"| validation accuracy | {_v(acc['val_acc'])} % ({acc['dataset']}; search proxy: "
        f"{_v(acc['search_val_acc'])} %) |",
        f"| test accuracy | {_v(acc['test_acc'])} % (reported only, never used to choose) |",
        f"| parameters | {_v(cost['params'])} |",
        f"| multiply-adds | {_v(cost['macs'])} per image |",
        f"| latency | {latency or 'n/a'} ({cost['latency_device'] or 'n/a'}) |",
        f"| teacher | {teacher_text} |",
        f"| augmenters | {augs} |",
        f"| input | float32 {' x '.join(map(str, card['input']['shape']))}, {card['input']['range']} |",
        f"| classes | {', '.join(card['output']['classes'])} |",
        "",
        "## Files and checks",
        "",
        f"Outputs compared with the torch model on {card['checks']['images']} (tolerance "
        f"{card['checks']['tolerance']:g}).",
        "",
        "| file | check | sha256 |",
        "|---|---|---|",
    ]
    for key in FORMATS:
        c = card["checks"].get(key)
        if not c:
            continue
        if "max_abs_diff" in c:
            check = f"max abs diff {c['max_abs_diff']:.2e} ({c['runtime']})"
        else:
            check = f"{c['tensors']} tensors, reloaded equal (bare student: normalise inputs with mean/std)"
        if c.get("note"):
            check += f"; {c['note']}"
        lines.append(f"| `{c['file']}` | {check} | `{c['sha256'][:16]}…` |")
    versions = ", ".join(f"{k} {v}" for k, v in card["versions"].items())
    lines += [
        "",
        f"Normalisation: mean {card['input']['mean']}, std {card['input']['std']}.",
        "",
        f"Built with {versions}.",
        "",
    ]
    return "\n".join(lines)
