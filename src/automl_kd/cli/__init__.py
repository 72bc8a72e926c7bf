"""The ``automl-kd`` command line: ``main`` (the console script), one module per group of commands."""

from __future__ import annotations

from .main import build_parser, main
from .search import demo_config_path

__all__ = ["build_parser", "demo_config_path", "main"]
