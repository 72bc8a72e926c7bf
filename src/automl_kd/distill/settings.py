"""The training settings of one student (or teacher) run: one typed model, read by every place that trains.

The ``train`` evaluator builds it from its options, ``finalize`` from the study's evaluator options (with more
epochs), the teacher from ``teacher.train``; the search's Hyperband budget is the same ``epochs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def check_train_fraction(fraction: float) -> float:
    """``fraction`` if it is a usable ``train_fraction`` (in (0, 1]), else a ValueError naming the option."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    return fraction


class TrainSettings(BaseModel):
    """Optimisation settings of one training run.

    Example::

        settings = TrainSettings(epochs=3, batch_size=64, lr=0.005)
        longer = settings.model_copy(update={"epochs": 30})
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = 0.9
    schedule: Literal["cosine", "none"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = None
    #: cap on optimisation steps per epoch (None = whole training split); for quick runs and tests
    max_steps_per_epoch: int | None = Field(None, ge=1)
    #: train on a stratified random fraction of the training split, drawn afresh from each run's seed (the IG-KD
    #: paper's Monte Carlo design); the teacher, its caches and the validation split stay those of the whole split
    train_fraction: float = 1.0
    eval_batch_size: int = Field(512, ge=1)
    crop_padding: int = Field(4, ge=0)
    flip: bool = True
    #: autocast precision (:mod:`automl_kd.precision`); the host sets it from the config's ``precision`` (whose
    #: default is ``auto``); code that builds settings itself gets plain fp32 unless it asks
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"

    @field_validator("train_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        return check_train_fraction(v)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], **update: Any) -> TrainSettings:
        """The settings among a plugin's ``options`` (other keys, e.g. ``latency``, are ignored), plus ``update``."""
        return cls(**{k: v for k, v in options.items() if k in cls.model_fields}, **update)
