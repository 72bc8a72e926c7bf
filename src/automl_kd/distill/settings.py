"""The training settings of one student (or teacher) run: one typed model, read by every place that trains.

Every field is a setting in one place: its type, default, bounds and description are here. The ``train``
evaluator's options are these fields (except the :data:`HOST_SET` ones, which the host takes from the config's
``data`` and ``precision``), so a new setting is a new field here and its use in :mod:`automl_kd.distill.loop`;
``finalize`` and the CE-alone baseline read the study's evaluator options back into this model, the teacher builds it
from ``teacher.train``. The search's Hyperband budget is the same ``epochs``. A run's settings, seed, device and
precision are resolved together once, into a :class:`automl_kd.distill.plan.TrialPlan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from automl_kd.config import DataConfig


def check_train_fraction(fraction: float) -> float:
    """``fraction`` if it is a usable ``train_fraction`` (in (0, 1]), else a ValueError naming the option."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    return fraction


#: settings the host sets from the config, not options: the data's augmentation and the run's precision
HOST_SET: dict[str, str] = {
    "crop_padding": "data.crop_padding",
    "flip": "data.flip",
    "precision": "precision",
}


class TrainSettings(BaseModel):
    """Optimisation settings of one training run.

    Example::

        settings = TrainSettings(epochs=3, batch_size=64, lr=0.005)
        longer = settings.model_copy(update={"epochs": 30})
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(2, ge=1, description="training epochs per candidate")
    batch_size: int = Field(128, ge=1, description="training batch size")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        "adam", description="`adam`, `adamw`, `sgd` (Nesterov, with `momentum`)"
    )
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    momentum: float = Field(0.9, gt=0, lt=1, description="momentum of `sgd` (the other optimizers ignore it)")
    schedule: Literal["cosine", "none"] = Field(
        "cosine", description="`cosine` (to zero over the run) or `none`"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy term")
    grad_clip: float | None = Field(None, description="max gradient norm (none or 0: no clipping)")
    max_steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="cap on optimisation steps per epoch (none: the whole training split); quick runs",
    )
    train_fraction: float = Field(
        1.0,
        description=(
            "train on a stratified random fraction of the training split, drawn afresh from each run's seed "
            "(the IG-KD paper's Monte Carlo design); the teacher, its caches and the validation split stay "
            "those of the whole split"
        ),
    )
    eval_batch_size: int = Field(512, ge=1, description="batch size of the validation and test passes")
    crop_padding: int = Field(4, ge=0, description="random-crop padding (from `data.crop_padding`)")
    flip: bool = Field(True, description="random horizontal flips (from `data.flip`)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast precision, automl_kd.precision (from the config's `precision`)"
    )

    @field_validator("train_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        return check_train_fraction(v)

    @classmethod
    def option_fields(cls) -> dict[str, tuple[Any, Any]]:
        """The settings a config sets as ``train`` evaluator options: name -> (type, default); the bounds are
        checked when the settings are made (:meth:`from_options`)."""
        return {
            name: (f.annotation, f.default) for name, f in cls.model_fields.items() if name not in HOST_SET
        }

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **update: Any) -> TrainSettings:
        """The settings among a plugin's ``options`` (other keys, e.g. ``latency``, are ignored), plus ``update``.

        A value out of bounds is a ValueError in one line (``epochs must be >= 1 (got 0)``)."""
        values = {k: v for k, v in options.items() if k in cls.model_fields}
        try:
            return cls(**{**values, **update})
        except pydantic.ValidationError as exc:
            raise ValueError(describe_error(exc)) from None

    def for_run(self, data: DataConfig, precision: str) -> TrainSettings:
        """These settings with the :data:`HOST_SET` ones taken from the config: ``data.crop_padding``,
        ``data.flip`` and the run's ``precision``."""
        return self.model_copy(
            update={"crop_padding": data.crop_padding, "flip": data.flip, "precision": precision}
        )


_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"), "less_than": ("lt", "<")}


def describe_error(exc: pydantic.ValidationError) -> str:
    """The first error of a settings model in one line: ``lr must be > 0 (got 0.0)``."""
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] in _BOUNDS:
        key, op = _BOUNDS[err["type"]]
        bound = ctx[key]
        return f"{name} must be {op} {bound:g} (got {err['input']!r})"
    if err["type"] == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return f"{name}: {err['msg']} (got {err.get('input')!r})"
