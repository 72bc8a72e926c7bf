"""The teacher: built from a timm name or a search space, weights from a checkpoint or trained once and cached.

``get_teacher`` is what the engine calls (``Search.resource("teacher")``). A teacher is

- a timm model (``teacher.model: resnet18``, ``teacher.model_options`` for ``timm.create_model``), or
- a candidate of any registered space (``teacher.space: mbv2`` with ``teacher.params``), or that space's
  reference network when ``params`` is omitted (``teacher.space: paper-truncated`` is the IG-KD paper's teacher).

Weights come from ``teacher.checkpoint`` (``torch.load(..., weights_only=True)``: a state dict, or a dict holding
one under ``state_dict``/``model``), or the library trains the teacher with :func:`automl_kd.distill.loop.train_student`
and ``teacher.train`` settings and stores the weights in the artifact cache under the hash of the teacher config
and the data fingerprint, so every trial and every later run reuses them.

The returned module is frozen: eval mode (``train()`` cannot switch it back), no parameter requires a gradient,
and the training loop runs it under ``no_grad``. It carries :class:`TeacherInfo` as ``teacher.automl_kd_teacher``.

Example::

    teacher = get_teacher(cfg.teacher, data, torch.device("cpu"), ArtifactCache.default(), pm=get_plugin_manager())
    print(teacher.automl_kd_teacher.val_acc)
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_kd.cache import ArtifactCache
from automl_kd.config import Config, TeacherConfig
from automl_kd.data import DataSplits, load_data, with_training_pool
from automl_kd.errors import ConfigError
from automl_kd.manager import PluginManager, get_plugin_manager
from automl_kd.metrics import count_params, resolve_device

from .checkpoints import load_weights
from .fit import fit
from .loop import accuracy
from .plan import TrialPlan
from .settings import TrainSettings
from .taps import model_fingerprint
from .teacher_info import (
    TeacherInfo,
    attach_info,
    check_input,
    input_normalizer,
    teacher_dtype,
    teacher_info,
    teacher_normalizer,
)

__all__ = [
    "TeacherInfo",
    "get_teacher",
    "teacher_cache_key",
    "teacher_data",
    "teacher_for_config",
    "teacher_info",
    "teacher_plan",
    "teacher_record",
]

log = logging.getLogger("automl_kd")

CACHE_KIND = "teacher"


def build_teacher_model(cfg: TeacherConfig, data: DataSplits, pm: PluginManager | None = None) -> nn.Module:
    """The teacher network, randomly initialised, for ``data``'s classes, channels and image size."""
    shape = {"num_classes": data.num_classes, "in_chans": data.in_chans, "input_size": data.input_size}
    if cfg.model is not None:
        # imported here: timm (with torchvision) takes seconds to import, and only a timm-model teacher needs it;
        # the engine imports this module on every command-line start
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
    pm = pm or get_plugin_manager()
    space = pm.spaces.create(str(cfg.space), cfg.space_options, where="teacher.space", **shape)
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


def load_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load ``teacher.checkpoint`` into ``model`` (``weights_only=True``, no code runs): our own state dicts and
    the reference layouts of :mod:`automl_kd.distill.checkpoints`; return the layout. A missing, unsafe or
    mismatched file raises :class:`ConfigError` in one line."""
    return load_weights(model, path, what="teacher.checkpoint", target="the teacher")


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode for good (``train()`` keeps it in eval: batch-norm statistics never move), no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
        return nn.Module.train(self, False)

    model.train = types.MethodType(stay_eval, model)  # type: ignore[method-assign]
    return model


def teacher_cache_key(
    cfg: TeacherConfig, data: DataSplits, start: str | None = None, precision: str = "fp32"
) -> str:
    """Hash of everything that determines trained teacher weights: the network, its training, the data split, the
    precision it trains in, and for a fine-tuned checkpoint the fingerprint of the weights it starts from
    (``start``). Options at their defaults stay out of the hash, so keys made before they existed still hold."""
    spec = cfg.model_dump(mode="json", exclude={"checkpoint", "outputs"})
    for k, default in (("finetune", False), ("input", "dataset")):
        if spec.get(k) == default:
            spec.pop(k)
    if spec["train"].get("train_size") is None:
        spec["train"].pop("train_size", None)
    parts: dict[str, Any] = {"teacher": spec, "data": data.fingerprint}
    if start is not None:
        parts["start"] = start
    if precision != "fp32":
        parts["precision"] = precision
    return ArtifactCache.key(CACHE_KIND, parts)


def teacher_settings(cfg: TeacherConfig) -> TrainSettings:
    """The training settings of ``teacher.train`` (its ``seed`` is the run's seed and its ``train_size`` the data
    it trains on (:func:`teacher_data`), not settings)."""
    return TrainSettings(**cfg.train.model_dump(exclude={"seed", "train_size"}))


def teacher_plan(cfg: TeacherConfig, device: torch.device, precision: str) -> TrialPlan:
    """The plan of the teacher's training: ``teacher.train``'s settings and seed, on ``device``, in ``precision``."""
    settings = teacher_settings(cfg).model_copy(update={"precision": precision})
    return TrialPlan.make(settings, seed=cfg.train.seed, device=device)


def teacher_data(cfg: TeacherConfig, data: DataSplits) -> DataSplits:
    """The data the teacher trains on: ``data`` itself, or with ``teacher.train.train_size`` a larger training
    split drawn from the same dataset outside the validation split (:func:`automl_kd.data.with_training_pool`)."""
    if cfg.train.train_size is None:
        return data
    return with_training_pool(data, cfg.train.train_size)


def train_teacher(
    cfg: TeacherConfig,
    data: DataSplits,
    plan: TrialPlan,
    pm: PluginManager | None = None,
    start: nn.Module | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build and train the teacher on ``data.train`` with its ``plan`` (:func:`teacher_plan`, through
    :func:`automl_kd.distill.fit.fit`), from ``start``'s weights when fine-tuning a checkpoint; return it and its
    metrics (validation accuracy, and test accuracy for the report only). ``data`` is :func:`teacher_data`'s."""
    normalize = input_normalizer(cfg.input, data)

    def build() -> nn.Module:
        model = build_teacher_model(cfg, data, pm)
        if start is not None:
            model.load_state_dict(start.state_dict())
        return model

    fitted = fit(
        build,
        data,
        plan,
        normalize=normalize,
        log=lambda m: log.info("teacher: %s", m),
        should_stop=should_stop,  # a stop request (SIGTERM) ends it at the next batch: nothing is cached
    )
    model = fitted.model.eval()
    return model, {
        "val_acc": round(fitted.result.val_acc, 4),
        # report only, never used to select
        "test_acc": round(
            accuracy(model, data.test, data, normalize=normalize, precision=fitted.plan.dtype), 4
        ),
        "epochs": fitted.result.epochs_run,
        "steps": fitted.result.steps,
    }


def get_teacher(
    teacher_cfg: TeacherConfig,
    data: DataSplits,
    device: torch.device,
    cache: ArtifactCache,
    pm: PluginManager | None = None,
    *,
    retrain: bool = False,
    precision: str = "fp32",
    should_stop: Callable[[], bool] | None = None,
) -> nn.Module:
    """The frozen teacher on ``device``: from the checkpoint, from the cache, or trained now and cached (a
    checkpoint with ``finetune: true`` is trained further and cached under its weights' fingerprint).

    ``retrain`` ignores a cached entry (``automl-kd teacher train --force``). The teacher takes inputs in its own
    convention (``teacher.input``): use :func:`automl_kd.distill.teacher_info.teacher_normalizer`.
    """
    check_input(teacher_cfg.input, data)
    model = build_teacher_model(teacher_cfg, data, pm)
    start: nn.Module | None = None
    start_fp: str | None = None
    if teacher_cfg.checkpoint:
        layout = load_checkpoint(model, teacher_cfg.checkpoint)
        fingerprint = model_fingerprint(model)
        if not teacher_cfg.finetune:
            info = TeacherInfo("checkpoint", fingerprint, teacher_cfg, cache, metrics={"layout": layout})
            log.info(
                "teacher: loaded %s (%s layout, weights %s)", teacher_cfg.checkpoint, layout, fingerprint[:12]
            )
            return _ready(model, info, device)
        start, start_fp = model, fingerprint
        model = build_teacher_model(teacher_cfg, data, pm)
    plan = teacher_plan(teacher_cfg, device, precision).for_network(model, data.input_shape)
    data = teacher_data(teacher_cfg, data)
    key = teacher_cache_key(teacher_cfg, data, start_fp, plan.precision)
    art = None if retrain else _load_cached(model, cache, key)
    if art is None:
        with cache.lock(CACHE_KIND, key):
            art = (
                None if retrain else _load_cached(model, cache, key)
            )  # a concurrent worker may have trained it
            if art is None:
                what = "fine-tuning the checkpoint" if start is not None else "training it"
                log.info("teacher: no cached weights (key %s); %s now", key[:12], what)
                model, metrics = train_teacher(teacher_cfg, data, plan, pm, start, should_stop)
                meta = {"metrics": metrics, "config": teacher_cfg.model_dump(mode="json")}
                cache.save(CACHE_KIND, key, model.state_dict(), meta)
                info = TeacherInfo("trained", model_fingerprint(model), teacher_cfg, cache, key, metrics)
                info.dtypes[(precision, device.type)] = plan.dtype  # resolved once, for training and for use
                log.info("teacher: trained, val_acc=%.2f%%, cached as %s", metrics["val_acc"], key[:12])
                return _ready(model, info, device)
    metrics = dict(art.meta.get("metrics") or {})
    info = TeacherInfo("cache", model_fingerprint(model), teacher_cfg, cache, key, metrics)
    info.dtypes[(precision, device.type)] = plan.dtype  # the plan its cached weights were trained with
    log.info("teacher: reusing cached weights %s (val_acc=%s%%)", key[:12], metrics.get("val_acc"))
    return _ready(model, info, device)


def teacher_record(teacher: nn.Module, data: DataSplits, precision: str) -> dict[str, Any]:
    """What a finalize or CE-baseline run records about its teacher: where it came from, its weights' fingerprint,
    its parameter count, its validation and (report only) test accuracy in ``precision`` (the teacher's dtype,
    resolved once per teacher: :func:`~automl_kd.distill.teacher_info.teacher_dtype`)."""
    info = teacher_info(teacher)
    normalize = teacher_normalizer(teacher, data)
    dtype = teacher_dtype(teacher, precision, data.val.x.device, data.input_shape)
    return {
        "source": getattr(info, "source", None),
        "fingerprint": getattr(info, "fingerprint", None),
        "params": count_params(teacher),
        "val_acc": round(accuracy(teacher, data.val, data, normalize=normalize, precision=dtype), 4),
        # report only
        "test_acc": round(accuracy(teacher, data.test, data, normalize=normalize, precision=dtype), 4),
    }


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
    attach_info(model, info)
    return model


def teacher_for_config(
    config: Config, pm: PluginManager | None = None, *, retrain: bool = False
) -> tuple[nn.Module, Any]:
    """The teacher of a whole :class:`automl_kd.config.Config` and the data it belongs to (``automl-kd teacher
    train``): loads the data on the configured device and calls :func:`get_teacher` with the default cache."""
    if config.teacher is None:
        raise ConfigError("teacher: the config has no `teacher:` section")
    device = resolve_device(config.device)
    data = load_data(config.data).to(device)
    teacher = get_teacher(
        config.teacher, data, device, ArtifactCache.default(), pm, retrain=retrain, precision=config.precision
    )
    return teacher, data
