"""The config's search space, built for the shape of the data (known datasets need no data read)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from automl_kd.config import Config
from automl_kd.data import DATA_SHAPES
from automl_kd.errors import ConfigError
from automl_kd.evaluator import Evaluator
from automl_kd.manager import PluginManager
from automl_kd.space import SearchSpace


def make_space(
    config: Config,
    pm: PluginManager,
    evaluator: Evaluator,
    resource: Callable[[str], Any],
    check_only: bool = False,
) -> SearchSpace:
    """The config's space, built for the data's shape (known datasets need no data read; ``check_only`` uses a
    stand-in shape to validate the options without reading any)."""
    ref = config.space
    shape = DATA_SHAPES.get(config.data.dataset)
    if shape is None and check_only:
        shape = (10, 3, 32)
    if shape is None and getattr(evaluator, "trains", False):
        data = resource("data")
        shape = (data.num_classes, data.in_chans, data.input_size)
    host = dict(zip(("num_classes", "in_chans", "input_size"), shape, strict=True)) if shape else {}
    space: SearchSpace = pm.spaces.create(ref.name, ref.options, where="space", **host)
    if getattr(evaluator, "trains", False) and not getattr(space, "buildable", True):
        raise ConfigError(f"space {ref.name!r} cannot build networks; use a table evaluator with it")
    return space
