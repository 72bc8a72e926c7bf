"""``automl-kd evaluate``: score a finalized student on another dataset through a class map.

The IG-KD paper's ImageNet check (Hernandez et al. 2025) maps a few ImageNet synsets onto CIFAR-10 classes and
scores the student only on the images its teacher gets right. We score *every* image of a mapped class, and report
accuracy, balanced accuracy (the mean of the per-class recalls, so a class with many images does not dominate),
per-class recall and counts; images of unmapped classes are skipped and counted.

The evaluation config (YAML)::

    data:                       # any DataConfig; an imagefolder root may also be a plain folder of class folders
      dataset: imagefolder
      root: data/imagenet-subset
      image_size: 32
    split: all                  # test (default) | val | train | all: which split(s) of that dataset to score
    class_map:                  # evaluation class -> training class name or index; several may share a target
      n02123045: cat            # tabby
      n02123159: cat            # tiger cat
      n04552348: 0              # warplane -> airplane
    restrict: false             # true: predict among the mapped training classes only

Images whose channels or size differ from the student's input are converted (RGB <-> grey, bilinear resize with
antialiasing), and the report says so.

A plain weights file (any network of a registered space; our own state dicts and the reference layouts of
:mod:`automl_kd.distill.checkpoints`, e.g. the IG-KD authors' released students) is scored the same way when the
config says which network it is::

    model:
      space: paper-truncated
      params: {removed: 5}
      input: unit               # dataset (default: the data's training-split mean/std) | unit | {mean, std}
    data: {dataset: imagefolder, root: cifar-10-jpeg}

    automl-kd evaluate --checkpoint CIFAR10_..._TestAcc92.42.pt --config eval.yaml --json

Example::

    result = evaluate_student(Path("runs/quick/final/trial-3"), "eval.yaml")
    print(result["accuracy"], result["balanced_accuracy"])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from automl_kd.config import DataConfig, InputNorm, read_yaml_mapping
from automl_kd.data import DataSplits, load_data, read_class_folders
from automl_kd.distill.checkpoints import load_weights
from automl_kd.distill.teacher_info import Normalizer, check_input, input_normalizer
from automl_kd.errors import ConfigError, DataError
from automl_kd.manager import PluginManager, get_plugin_manager
from automl_kd.precision import autocast, autocast_dtype, dtype_name
from automl_kd.results.finalize import load_finalized


class ModelSpec(BaseModel):
    """Which network a plain weights file holds: a candidate of a registered space and its input convention."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: str
    params: dict[str, Any] | None = None
    space_options: dict[str, Any] = Field(default_factory=dict)
    input: Literal["dataset", "unit"] | InputNorm = "dataset"
    #: the network's class names in output order (default: the data's training classes)
    classes: list[str] | None = None


class EvalConfig(BaseModel):
    """What ``automl-kd evaluate`` reads: the data, which split(s), the class map, and for a plain weights file
    the network (``model``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSpec | None = None
    data: DataConfig
    split: Literal["test", "val", "train", "all"] = "test"
    #: evaluation class name -> training class name or index; empty = classes with identical names
    class_map: dict[str, str | int] = Field(default_factory=dict)
    restrict: bool = False
    batch_size: int = Field(256, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


def load_eval_config(source: str | Path | Mapping[str, Any]) -> EvalConfig:
    """Read and validate an evaluation config from YAML or a mapping; errors name the key."""
    raw = read_yaml_mapping(
        source, "evaluation config", "the evaluation config must be a mapping with `data:` and `class_map:`"
    )
    try:
        return EvalConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            message = (
                f"evaluation config key {loc!r} is unknown; allowed: model, data, split, class_map, restrict, "
                "batch_size (DataConfig keys under data; space, params, space_options, input, classes under model)"
            )
        else:
            message = f"evaluation config key {loc!r}: {err['msg']} (got {err.get('input')!r})"
        raise ConfigError(message) from None


# -- reading the evaluation images ----------------------------------------------------------------------------
def read_eval_folders(
    root: Path, image_size: int | None, grey: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image under ``root/<class>/``: uint8 ``N x C x H x W``, labels, class names (sorted)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class folders")
    x, y = read_class_folders(root, classes, image_size, "L" if grey else "RGB")
    return x, y, classes


def load_eval_images(
    cfg: EvalConfig, in_chans: int, data: DataSplits | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The images to score (uint8), their labels and the evaluation classes (from ``data`` when it is loaded)."""
    d = cfg.data
    if d.dataset == "imagefolder" and d.root and not (Path(d.root) / "train").is_dir():
        # a plain folder of class folders (the usual shape of a held-out set): score all of it
        if not Path(d.root).is_dir():
            raise DataError(f"imagefolder root {d.root} does not exist")
        x, y, classes = read_eval_folders(Path(d.root), d.image_size, grey=in_chans == 1)
        return torch.from_numpy(x), torch.from_numpy(y), classes

    data = data or load_data(d)
    splits = {"test": [data.test], "val": [data.val], "train": [data.train]}.get(
        cfg.split, [data.train, data.val, data.test]
    )
    return torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]), list(data.classes)


def resolve_class_map(
    class_map: Mapping[str, str | int], eval_classes: list[str], train_classes: list[str]
) -> dict[int, int]:
    """Evaluation class index -> training class index, with a clear error for any name or index that is wrong."""
    if not class_map:
        shared = [c for c in eval_classes if c in train_classes]
        if not shared:
            raise ConfigError(
                "no class_map given and no evaluation class has a training class's name; "
                f"evaluation classes: {', '.join(eval_classes[:20])}; training classes: {', '.join(train_classes)}"
            )
        class_map = {c: c for c in shared}
    out: dict[int, int] = {}
    for source, target in class_map.items():
        if source not in eval_classes:
            raise ConfigError(
                f"class_map: {source!r} is not a class of the evaluation data; its classes are: "
                f"{', '.join(eval_classes[:40])}"
            )
        if isinstance(target, int) and not isinstance(target, bool):
            if not 0 <= target < len(train_classes):
                raise ConfigError(
                    f"class_map: {source!r} -> {target} is not a training class index (0..{len(train_classes) - 1})"
                )
            out[eval_classes.index(source)] = target
        elif target in train_classes:
            out[eval_classes.index(source)] = train_classes.index(str(target))
        else:
            raise ConfigError(
                f"class_map: {source!r} -> {target!r} is not a training class; training classes: "
                f"{', '.join(train_classes)} (or their indices)"
            )
    return out


def _fit(x: torch.Tensor, in_chans: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """[0, 1] images converted to the student's channels and size; notes say what was changed."""
    notes = []
    if x.shape[1] != in_chans:
        notes.append(f"converted {x.shape[1]} -> {in_chans} channels")
        if in_chans == 1 and x.shape[1] == 3:  # ITU-R 601 luma, what PIL's "L" conversion uses
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        elif in_chans == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise DataError(f"evaluation images have {x.shape[1]} channels; the student takes {in_chans}")
    if x.shape[-2:] != (size, size):
        notes.append(f"resized {x.shape[-1]}x{x.shape[-2]} -> {size}x{size} (bilinear, antialiased)")
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x, notes


# -- scoring ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_student(
    checkpoint: Path,
    eval_config: str | Path | Mapping[str, Any] | EvalConfig,
    *,
    pm: PluginManager | None = None,
) -> dict[str, Any]:
    """Score a finalized student (its directory or ``model.pt``) on the evaluation data of ``eval_config``; with
    ``model:`` in the config, ``checkpoint`` is a plain weights file of that network."""
    cfg = eval_config if isinstance(eval_config, EvalConfig) else load_eval_config(eval_config)
    data: DataSplits | None = None
    if cfg.model is not None:
        model, record, normalize, data = _plain_checkpoint(Path(checkpoint), cfg, pm)
    else:
        model, record = load_finalized(Path(checkpoint), pm)
        normalize = None
    sp, data_rec = record["space"], record["data"]
    train_classes = list(data_rec["classes"])
    x_all, y_all, eval_classes = load_eval_images(cfg, sp["in_chans"], data)
    mapping = resolve_class_map(cfg.class_map, eval_classes, train_classes)

    keep = torch.tensor([int(v) in mapping for v in y_all.tolist()], dtype=torch.bool)
    skipped: dict[str, int] = {}
    for v in y_all[~keep].tolist():
        skipped[eval_classes[v]] = skipped.get(eval_classes[v], 0) + 1
    if not bool(keep.any()):
        raise DataError("no evaluation image belongs to a mapped class")
    x_src, y_src = x_all[keep], y_all[keep]
    target = torch.tensor([mapping[int(v)] for v in y_src.tolist()], dtype=torch.long)

    dtype = autocast_dtype(cfg.precision, torch.device("cpu"), model, tuple(x_src.shape[1:]))
    mean = torch.tensor(data_rec["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(data_rec["std"]).view(1, -1, 1, 1)
    allowed = torch.tensor(sorted(set(mapping.values())))
    preds: list[torch.Tensor] = []
    notes: list[str] = []
    for start in range(0, len(x_src), cfg.batch_size):
        xb, notes = _fit(
            x_src[start : start + cfg.batch_size].float().div(255), sp["in_chans"], sp["input_size"]
        )
        with autocast(torch.device("cpu"), dtype):
            logits = model(normalize(xb) if normalize is not None else (xb - mean) / std).float()
        if cfg.restrict:  # predict among the mapped training classes only
            mask = torch.full_like(logits, float("-inf"))
            mask[:, allowed] = 0.0
            logits = logits + mask
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    correct = pred == target

    per_class = {}
    for t in sorted(set(mapping.values())):
        sel = target == t
        n = int(sel.sum())
        if n:
            per_class[train_classes[t]] = {
                "recall": round(100.0 * float(correct[sel].float().mean()), 4),
                "n": n,
            }
    per_source = {}
    for s, t in sorted(mapping.items()):
        sel = y_src == s
        n = int(sel.sum())
        acc = round(100.0 * float(correct[sel].float().mean()), 4) if n else None
        per_source[eval_classes[s]] = {"target": train_classes[t], "n": n, "accuracy": acc}
    targets = set(mapping.values())
    return {
        "checkpoint": str(checkpoint),
        **({"layout": record["layout"], "model": cfg.model.model_dump(mode="json")} if cfg.model else {}),
        "precision": dtype_name(dtype),
        "trial": record.get("trial"),
        "data": cfg.data.model_dump(mode="json"),
        "split": cfg.split if not _plain_folder(cfg) else "all (class folders)",
        "n": len(target),
        "accuracy": round(100.0 * float(correct.float().mean()), 4),
        "balanced_accuracy": round(sum(v["recall"] for v in per_class.values()) / len(per_class), 4),
        "per_class_recall": per_class,
        "per_source_class": per_source,
        "n_skipped": int((~keep).sum()),
        "skipped_by_class": skipped,
        "predicted_outside_map": int(sum(1 for p in pred.tolist() if p not in targets)),
        "restrict": cfg.restrict,
        "conversions": notes,
    }


def _plain_checkpoint(
    path: Path, cfg: EvalConfig, pm: PluginManager | None
) -> tuple[torch.nn.Module, dict[str, Any], Normalizer, DataSplits | None]:
    """The network of ``cfg.model`` with ``path``'s weights, a record shaped like a finalized one, how its inputs
    are normalised, and the loaded data (None for a plain folder of class folders)."""
    spec = cfg.model
    assert spec is not None
    if path.is_dir():
        raise ConfigError(f"--checkpoint {str(path)!r} is a directory; with `model:` give the weights file")
    if _plain_folder(cfg):
        if spec.input == "dataset":
            raise ConfigError(
                "model.input: 'dataset' needs the training split's mean and std, and a plain folder of class "
                "folders has none; give `unit` or {mean: [...], std: [...]}"
            )
        if not spec.classes:
            raise ConfigError(
                "model.classes: a plain folder of class folders needs the network's class names"
            )
        data = None
        in_chans = int(spec.space_options.get("in_chans", 3))
        size = int(cfg.data.image_size or spec.space_options.get("input_size", 32))
        classes, mean, std = list(spec.classes), [0.0] * in_chans, [1.0] * in_chans
    else:
        data = load_data(cfg.data)
        check_input(spec.input, data)
        in_chans, size = data.in_chans, data.input_size
        classes, mean, std = list(spec.classes or data.classes), list(data.mean), list(data.std)
    pm = pm or get_plugin_manager()
    shape = {"num_classes": len(classes), "in_chans": in_chans, "input_size": size}
    space = pm.spaces.create(spec.space, spec.space_options, where="model.space", **shape)
    params = spec.params if spec.params is not None else space.reference()
    if params is None:
        raise ConfigError(f"model.params: space {spec.space!r} has no reference network; give the parameters")
    try:
        model = space.build(space.validate(params))
    except Exception as exc:
        raise ConfigError(f"model.params: {exc}") from None
    layout = load_weights(model, path, "checkpoint")
    model.eval()
    record = {
        "space": {"in_chans": in_chans, "input_size": size},
        "data": {"classes": classes, "mean": mean, "std": std},
        "layout": layout,
    }
    if data is not None:
        normalize = input_normalizer(spec.input, data)
    else:
        norm = spec.input if isinstance(spec.input, InputNorm) else InputNorm(mean=mean, std=std)
        normalize = input_normalizer(norm, None)
    return model, record, normalize, data


def _plain_folder(cfg: EvalConfig) -> bool:
    d = cfg.data
    return d.dataset == "imagefolder" and bool(d.root) and not (Path(str(d.root)) / "train").is_dir()
