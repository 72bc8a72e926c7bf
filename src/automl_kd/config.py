"""Typed configuration: YAML in, validated models out, one clear message for every user error.

``load_config(path, overrides=["search.n_trials=6"])`` reads YAML, applies ``--set`` overrides, and validates the
whole tree at once. An unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` whose message
names the dotted key and what is allowed; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError

log = logging.getLogger("automl_kd")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginRef(_Model):
    """A plugin by registered name, with its options (validated against the plugin's signature)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class DataConfig(_Model):
    """Which dataset, where it lives, how it is split and augmented."""

    dataset: Literal["fashion-mnist", "cifar10", "cifar100", "imagefolder"] = "fashion-mnist"
    root: str | None = None
    download: bool = False
    #: fraction of the training set held out for validation (selection); the test split is for reporting only
    val_fraction: float = Field(0.1, gt=0.0, lt=0.9)
    #: use a stratified subset of this many training images (before the validation split); None = all
    train_size: int | None = Field(None, ge=10)
    test_size: int | None = Field(None, ge=10)
    #: resize ImageFolder images to this size (square); None = keep (all images must then share one size)
    image_size: int | None = Field(None, ge=8, le=1024)
    crop_padding: int = Field(4, ge=0, le=64)
    flip: bool = True
    split_seed: int = 0


class ConstraintsConfig(_Model):
    """Hard constraints: a candidate that breaks one is rejected before any training."""

    max_params: int | None = Field(None, gt=0)
    macs: tuple[float, float] | None = None

    @field_validator("macs")
    @classmethod
    def _window(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError("must be [low, high] with 0 <= low < high (multiply-adds per image)")
        return v


Objective = Literal["val_acc", "params", "macs", "latency"]


class SearchConfig(_Model):
    proposer: PluginRef = PluginRef(name="optuna")
    #: the study's target number of finished trials (rerunning with a larger number adds the difference)
    n_trials: int = Field(10, ge=1, le=1_000_000)
    #: seconds; stop starting new trials after this long (per invocation)
    timeout: float | None = Field(None, gt=0)
    objectives: list[Objective] = Field(default_factory=lambda: list[Objective](["val_acc"]), min_length=1)
    constraints: ConstraintsConfig = ConstraintsConfig()
    pruner: Literal["none", "median", "hyperband"] = "none"
    #: after the search, retrain these trials' architectures with cross-entropy alone (same seed and settings, no
    #: augmenters) so the leaderboard shows what distillation gave: the best trial, every completed one, or none
    ce_baseline: Literal["none", "best", "all"] = "none"

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if v[0] != "val_acc" or len(set(v)) != len(v):
            raise ValueError(
                "the first objective must be val_acc, then any of params, macs, latency, each once"
            )
        return v

    @model_validator(mode="after")
    def _pruning_needs_one_objective(self) -> SearchConfig:
        if self.pruner != "none" and len(self.objectives) > 1:
            raise ValueError(
                "pruning works with a single objective (Optuna cannot prune multi-objective trials); "
                "set search.pruner: none"
            )
        return self


class StorageConfig(_Model):
    """Optuna storage. ``url`` None = SQLite file ``study.db`` in the run directory."""

    url: str | None = None
    heartbeat_interval: int = Field(10, ge=1)
    grace_period: int = Field(30, ge=2)
    #: seconds to keep retrying (with backoff) while the storage is unreachable, then stop with an error
    retry_timeout: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _grace(self) -> StorageConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("grace_period must be larger than heartbeat_interval")
        return self


class TeacherTrainConfig(_Model):
    """How the library trains a teacher that has no ``checkpoint`` (the result is cached by content hash)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    #: cap on optimisation steps per epoch (None = the whole training split)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    #: train on this many images of the dataset's whole training set (stratified, none of them a validation
    #: image) instead of the students' training split (None); the teacher is validated on the students' split
    train_size: int | None = Field(None, ge=10)
    crop_padding: int = Field(4, ge=0, le=64)
    flip: bool = True
    seed: int = 0


class TeacherOutputsConfig(_Model):
    """How the training loop gets the teacher's outputs (logits, attention maps) for the view the student sees.

    ``online``: a teacher forward pass on every batch. ``cached``: computed once for ``views`` fixed augmented
    views per image (FKD-style; the view parameters are stored with the outputs and the student trains on exactly
    those views). ``auto`` (default): ``cached``, with a single view when the augmentation has no randomness, and
    ``online`` when an augmenter's transform cannot be replayed.
    """

    mode: Literal["auto", "online", "cached"] = "auto"
    views: int = Field(4, ge=1, le=1024)
    seed: int = 0
    #: storage type of cached feature summaries (attention maps); logits are always stored as float32
    dtype: Literal["float16", "float32"] = "float16"


class InputNorm(_Model):
    """A network's own input normalisation: ``(x - mean) / std`` per channel, ``x`` in [0, 1]."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> InputNorm:
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean has {len(self.mean)} values and std {len(self.std)}; give one per channel"
            )
        if any(v <= 0 for v in self.std):
            raise ValueError("every std must be > 0")
        return self


class TeacherConfig(_Model):
    """The teacher: a timm model name, a candidate of a space, or a space's reference network.

    Weights come from ``checkpoint`` (loaded with ``weights_only=True``; our own state dicts and the reference
    layouts of :mod:`automl_kd.distill.checkpoints`) or are trained by the library and cached by content hash.
    ``finetune: true`` trains a checkpoint further with ``train`` (cached by content hash too). ``input`` is the
    input convention the weights expect: ``dataset`` (normalised with the training split's mean and std, as the
    library trains), ``unit`` ([0, 1], no normalisation), or ``{mean: [...], std: [...]}``.
    """

    model: str | None = None
    space: str | None = None
    params: dict[str, Any] | None = None
    space_options: dict[str, Any] = Field(default_factory=dict)
    #: extra keyword arguments for ``timm.create_model`` (teacher.model only)
    model_options: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    finetune: bool = False
    input: Literal["dataset", "unit"] | InputNorm = "dataset"
    train: TeacherTrainConfig = TeacherTrainConfig()
    outputs: TeacherOutputsConfig = TeacherOutputsConfig()

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if (self.model is None) == (self.space is None):
            raise ValueError("give exactly one of teacher.model (a timm name) or teacher.space")
        if self.finetune and not self.checkpoint:
            raise ValueError("teacher.finetune needs teacher.checkpoint (the weights to start from)")
        return self


class Config(_Model):
    """A whole run: data, space, search, evaluator, teacher, augmenters, storage."""

    #: names the study and the default run directory ``runs/<name>``: a plain file name
    name: str = Field("automl-kd", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: str = "auto"
    #: numeric precision of training, teacher outputs and evaluation (automl_kd.precision; the IG precompute
    #: stays fp32: bf16 loses its completeness); auto picks per network
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    run_dir: str | None = None
    data: DataConfig = DataConfig()
    space: PluginRef = PluginRef(name="mbv2")
    search: SearchConfig = SearchConfig()
    evaluator: PluginRef = PluginRef(name="train")
    teacher: TeacherConfig | None = None
    augmenters: list[PluginRef] = Field(default_factory=list)
    storage: StorageConfig = StorageConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v in (".", ".."):
            raise ValueError("must be a plain file name: letters, digits, '_', '.', '-', and not '.' or '..'")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "mps") and not v.startswith("cuda"):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else default_run_dir(self.name)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def default_run_dir(name: str | None = None) -> Path:
    """Where a run keeps its study without ``run_dir``: ``runs/<name>`` (the config's name, ``automl-kd`` by
    default). ``run`` writes there and ``show``/``report``/``finalize`` read there."""
    return Path("runs") / (name or str(Config.model_fields["name"].default))


def _format_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        parent: Any = Config
        for part in err["loc"][:-1]:
            field = parent.model_fields.get(str(part)) if parent is not None else None
            ann = field.annotation if field else None
            parent = next(
                (
                    a
                    for a in getattr(ann, "__args__", (ann,))
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                None,
            )
        allowed = ", ".join(parent.model_fields) if parent else "?"
        return f"config key {_short(loc, 120)} is unknown; allowed here: {allowed}"
    msg = " ".join(str(err["msg"]).split())
    if "input" in err and err["type"] not in ("missing",):
        msg += f" (got {_short(err['input'])})"
    more = f" (and {len(exc.errors()) - 1} more error(s))" if len(exc.errors()) > 1 else ""
    return f"config key {_short(loc, 120)}: {msg}{more}"


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...'"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0]).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


#: the most values (mappings, lists, scalars) YAML aliases (``*name``) may add to one document or ``--set`` value.
#: The largest config shipped (examples/configs/distill.yaml) has 178 values in all, and the demo's one alias
#: adds 37; nine nested aliases of nine (a "billion laughs") add 387 million, enough to exhaust the memory.
MAX_ALIAS_VALUES = 10_000


def _alias_values(root: yaml.Node) -> int:
    """How many values the aliases of ``root`` add when expanded (counted on the node graph, in linear time)."""
    sizes: dict[int, int] = {}  # the expanded size of every distinct node
    stack = [root]
    while stack:
        node = stack[-1]
        kids = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        kids = list(node.value) if isinstance(node, yaml.SequenceNode) else kids
        todo = [k for k in kids if id(k) not in sizes]
        if todo:
            stack.extend(todo)
        else:
            sizes[id(stack.pop())] = 1 + sum(sizes[id(k)] for k in kids)
    return sizes[id(root)] - len(sizes)


def _load_yaml(text: str, where: str) -> Any:
    """``text``'s one YAML document, read by :class:`_StrictLoader`, or a :class:`ConfigError` naming ``where``
    when its aliases expand to more than :data:`MAX_ALIAS_VALUES` values (counted before anything is built)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        added = 0 if node is None else _alias_values(node)
        if added > MAX_ALIAS_VALUES:
            raise ConfigError(
                f"{where}: its aliases (*name) expand to {added} more values, over the limit of "
                f"{MAX_ALIAS_VALUES}; write the repeated block out, or repeat it fewer times"
            )
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a nested dict, returning a copy."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. search.n_trials=6")
        try:
            value = _load_yaml(text, f"--set {_short(item)}")
        except _DuplicateKey as exc:
            raise ConfigError(f"--set {item!r}: value has key {exc.key!r} twice") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {_yaml_problem(exc)}") from None
        except RecursionError:
            raise ConfigError(f"--set {_short(item)}: value is nested too deep to read") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # an unhashable key: PyYAML's own error says so
                break
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(
    source: str | Path | Mapping[str, Any] | None, what: str, not_a_mapping: str
) -> dict[str, Any]:
    """The mapping in a YAML file (or ``source`` itself when it is a mapping; ``{}`` for None), or a
    :class:`ConfigError` that says what is wrong and where. ``what`` names the file in messages; ``not_a_mapping``
    is the message for a file that holds something else (``{path!r}`` is filled in).

    A directory, a file that is not UTF-8, invalid YAML, a key given twice in one mapping (plain YAML keeps
    the last silently) and aliases that expand to more than :data:`MAX_ALIAS_VALUES` values are errors; an empty
    file is ``{}``, and said so."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    shown = repr(str(path))
    if path.is_dir():
        raise ConfigError(f"{what.removesuffix(' file')} {shown} is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {shown} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {shown} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what} {shown} cannot be read: {exc.strerror or exc}") from None
    try:
        raw = _load_yaml(text, f"{what} {shown}")
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{what} {shown}: key {exc.key!r} is given twice (lines {exc.first} and {exc.second})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {shown} is not valid YAML: {_yaml_problem(exc)}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # values PyYAML cannot build (e.g. a huge date)
        raise ConfigError(f"{what} {shown} is not valid YAML: {_short(str(exc), 200)}") from None
    if raw is None:
        log.warning("%s %s is empty: every value is a default", what, shown)
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(not_a_mapping.format(path=str(path)))
    return raw


def load_config(
    source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Read and validate a config from a YAML file, a mapping, or nothing (all defaults).

    Example::

        cfg = load_config("examples/configs/quick.yaml", overrides=["search.n_trials=6"])
    """
    raw = read_yaml_mapping(
        source, "config file", "config file {path!r} must hold a mapping at the top level"
    )
    raw = apply_overrides(raw, overrides)
    try:
        return Config.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
