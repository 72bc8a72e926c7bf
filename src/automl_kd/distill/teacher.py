"""The teacher: built from a timm name or a search space, weights from a checkpoint or trained once and cached.

``get_teacher`` is what the engine calls (``Search.resource("teacher")``). A teacher is

- a timm model (``teacher.model: resnet18``, ``teacher.model_options`` for ``timm.create_model``), or
- a candidate of any registered space (``teacher.space: mbv2`` with ``teacher.params``), or that space's
  reference network when ``params`` is omitted (``teacher.space: paper-truncated`` is the IG-KD paper's teacher).

Weights come from ``teacher.checkpoint`` (``torch.load(..., weights_only=True)``: a state dict, or a dict holding
one under ``state_dict``/``model``), or the library trains the teacher with :func:`automl_kd.training.train_student`
and ``teacher.train`` settings and stores the weights in the artifact cache under the hash of the teacher config
and the data fingerprint, so every trial and every later run reuses them.

The returned module is frozen: eval mode (``train()`` cannot switch it back), no parameter requires a gradient,
and the training loop runs it under ``no_grad``. It carries :class:`TeacherInfo` as ``teacher.automl_kd_teacher``.

Example::

    teacher = get_teacher(cfg.teacher, data, torch.device("cpu"), ArtifactCache.default(), pm=get_plugin_manager())
    print(teacher.automl_kd_teacher.val_acc)
"""

from __future__ import annotations

import hashlib
import logging
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import ConfigError

if TYPE_CHECKING:
    from .cache import ArtifactCache
    from .config import TeacherConfig
    from .data import DataSplits
    from .manager import PluginManager

log = logging.getLogger("automl_kd")

ATTR = "automl_kd_teacher"
CACHE_KIND = "teacher"


@dataclass
class TeacherInfo:
    """Where a teacher came from and how its outputs are served; attached to the module as ``automl_kd_teacher``."""

    source: str  # "checkpoint", "cache" or "trained"
    fingerprint: str  # hash of the weights: part of every IG-map and teacher-output cache key
    config: Any = None  # the TeacherConfig
    cache: Any = None  # the ArtifactCache it was loaded from / stored in
    cache_key: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def val_acc(self) -> float | None:
        v = self.metrics.get("val_acc")
        return float(v) if v is not None else None


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


def build_teacher_model(cfg: TeacherConfig, data: DataSplits, pm: PluginManager | None = None) -> nn.Module:
    """The teacher network, randomly initialised, for ``data``'s classes, channels and image size."""
    shape = {"num_classes": data.num_classes, "in_chans": data.in_chans, "input_size": data.input_size}
    if cfg.model is not None:
        import timm

        if cfg.model_options.get("pretrained"):
            raise ConfigError(
                "teacher.model_options.pretrained: not supported offline; use teacher.checkpoint"
            )
        try:
            model: nn.Module = timm.create_model(
                cfg.model,
                pretrained=False,
                num_classes=data.num_classes,
                in_chans=data.in_chans,
                **cfg.model_options,
            )
        except RuntimeError as exc:  # timm's "Unknown model"
            raise ConfigError(f"teacher.model {cfg.model!r}: {exc}") from None
        return model
    from .manager import get_plugin_manager
    from .options import accepts_var_keywords, build_with_options, parameter_names

    pm = pm or get_plugin_manager()
    entry = pm.spaces.get(str(cfg.space))
    names = parameter_names(entry.factory)
    host = {k: v for k, v in shape.items() if (accepts_var_keywords(entry.factory) or k in names)}
    host = {k: v for k, v in host.items() if k not in cfg.space_options}
    space = build_with_options(entry, cfg.space_options, "teacher.space", **host)
    params = cfg.params if cfg.params is not None else space.reference()
    if params is None:
        raise ConfigError(
            f"teacher.params: space {cfg.space!r} has no reference network; give the parameters"
        )
    try:
        built: nn.Module = space.build(space.validate(params))
    except Exception as exc:
        raise ConfigError(f"teacher.params: {exc}") from None
    return built


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load weights with ``weights_only=True`` (no code runs); accept a state dict or one nested under
    ``state_dict``/``model``. A missing file or mismatched tensors raise :class:`ConfigError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"teacher.checkpoint {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"teacher.checkpoint {str(p)!r} cannot be read safely: {exc}") from None
    for k in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(k), dict):
            obj = obj[k]
    if not isinstance(obj, dict):
        raise ConfigError(f"teacher.checkpoint {str(p)!r} holds no state dict")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}  # saved from DataParallel/DDP
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise ConfigError(
            f"teacher.checkpoint {str(p)!r} does not fit the teacher: {' '.join(first)}"
        ) from None


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode for good (``train()`` keeps it in eval: batch-norm statistics never move), no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
        return nn.Module.train(self, False)

    model.train = types.MethodType(stay_eval, model)  # type: ignore[method-assign]
    return model


def teacher_cache_key(cfg: TeacherConfig, data: DataSplits) -> str:
    """Hash of everything that determines trained teacher weights: the network, its training, the data split."""
    from .cache import ArtifactCache

    spec = cfg.model_dump(mode="json", exclude={"checkpoint", "outputs"})
    return ArtifactCache.key(CACHE_KIND, {"teacher": spec, "data": data.fingerprint})


def train_teacher(model: nn.Module, data: DataSplits, cfg: TeacherConfig) -> dict[str, Any]:
    """Train ``model`` in place on ``data.train`` with ``cfg.train``; return its metrics (validation accuracy,
    and test accuracy for the report only)."""
    from .training import TrainSettings, accuracy, train_student

    t = cfg.train
    settings = TrainSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        max_steps_per_epoch=t.max_steps_per_epoch,
        crop_padding=t.crop_padding,
        flip=t.flip,
    )
    result = train_student(model, data, settings, seed=t.seed, log=lambda m: log.info("teacher: %s", m))
    model.eval()
    return {
        "val_acc": round(result.val_acc, 4),
        "test_acc": round(accuracy(model, data.test, data), 4),  # report only, never used to select
        "epochs": result.epochs_run,
        "steps": result.steps,
    }


def get_teacher(
    teacher_cfg: TeacherConfig,
    data: DataSplits,
    device: torch.device,
    cache: ArtifactCache,
    pm: PluginManager | None = None,
    *,
    retrain: bool = False,
) -> nn.Module:
    """The frozen teacher on ``device``: from the checkpoint, from the cache, or trained now and cached.

    ``retrain`` ignores a cached entry (``automl-kd teacher train --force``).
    """
    model = build_teacher_model(teacher_cfg, data, pm)
    if teacher_cfg.checkpoint:
        load_checkpoint(model, teacher_cfg.checkpoint)
        info = TeacherInfo("checkpoint", model_fingerprint(model), teacher_cfg, cache)
        log.info("teacher: loaded %s (weights %s)", teacher_cfg.checkpoint, info.fingerprint[:12])
        return _ready(model, info, device)
    key = teacher_cache_key(teacher_cfg, data)
    art = None if retrain else _load_cached(model, cache, key)
    if art is None:
        with cache.lock(CACHE_KIND, key):
            art = (
                None if retrain else _load_cached(model, cache, key)
            )  # a concurrent worker may have trained it
            if art is None:
                log.info("teacher: no cached weights (key %s); training it now", key[:12])
                model.to(device)
                metrics = train_teacher(model, data, teacher_cfg)
                meta = {"metrics": metrics, "config": teacher_cfg.model_dump(mode="json")}
                cache.save(CACHE_KIND, key, model.state_dict(), meta)
                info = TeacherInfo("trained", model_fingerprint(model), teacher_cfg, cache, key, metrics)
                log.info("teacher: trained, val_acc=%.2f%%, cached as %s", metrics["val_acc"], key[:12])
                return _ready(model, info, device)
    metrics = dict(art.meta.get("metrics") or {})
    info = TeacherInfo("cache", model_fingerprint(model), teacher_cfg, cache, key, metrics)
    log.info("teacher: reusing cached weights %s (val_acc=%s%%)", key[:12], metrics.get("val_acc"))
    return _ready(model, info, device)


def _load_cached(model: nn.Module, cache: ArtifactCache, key: str) -> Any:
    art = cache.load(CACHE_KIND, key)
    if art is None:
        return None
    try:
        model.load_state_dict(art.tensors, strict=True)
    except RuntimeError as exc:
        cache.discard(CACHE_KIND, key, f"its tensors do not fit the teacher: {str(exc).splitlines()[0]}")
        return None
    return art


def _ready(model: nn.Module, info: TeacherInfo, device: torch.device) -> nn.Module:
    model.to(device).to(memory_format=torch.channels_last)
    freeze(model)
    setattr(model, ATTR, info)
    return model


def teacher_info(teacher: nn.Module | None) -> TeacherInfo | None:
    """The :class:`TeacherInfo` of a teacher from :func:`get_teacher` (None for any other module)."""
    info = getattr(teacher, ATTR, None) if teacher is not None else None
    return info if isinstance(info, TeacherInfo) else None


def teacher_for_config(
    config: Any, pm: PluginManager | None = None, *, retrain: bool = False
) -> tuple[nn.Module, Any]:
    """The teacher of a whole :class:`automl_kd.config.Config` and the data it belongs to (``automl-kd teacher
    train``): loads the data on the configured device and calls :func:`get_teacher` with the default cache."""
    from .cache import ArtifactCache
    from .data import load_data
    from .metrics import resolve_device

    if config.teacher is None:
        raise ConfigError("teacher: the config has no `teacher:` section")
    device = resolve_device(config.device)
    data = load_data(config.data).to(device)
    return get_teacher(config.teacher, data, device, ArtifactCache.default(), pm, retrain=retrain), data
