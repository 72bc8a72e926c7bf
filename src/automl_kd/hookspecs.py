"""The plugin contract: every hook automl-kd calls, typed and documented.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names match these specs. Built-in
plugins are registered exactly like third-party ones (see :mod:`automl_kd.manager`). Hooks are always called
with keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from .registry import Registry

PROJECT = "automl_kd"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_search_spaces(register: Registry[Any]) -> None:
    """Register search spaces: ``register(name, factory, description="")``.

    Called once when the plugin manager is built. ``factory(**options)`` returns a
    :class:`automl_kd.SearchSpace`; the host passes the data shape (``num_classes``, ``in_chans``, ``input_size``)
    when the factory accepts it. Registering a name that another plugin registered is an error.
    """


@hookspec
def register_proposers(register: Registry[Any]) -> None:
    """Register proposers: ``register(name, factory, description="")``.

    ``factory(space=..., seed=..., directions=..., **options)`` returns either an
    :class:`optuna.samplers.BaseSampler` or an :class:`automl_kd.Proposer`, which the host adapts to a sampler.
    """


@hookspec
def register_evaluators(register: Registry[Any]) -> None:
    """Register evaluators: ``register(name, factory, description="")``.

    ``factory(**options)`` returns an :class:`automl_kd.Evaluator`.
    """


@hookspec
def register_augmenters(register: Registry[Any]) -> None:
    """Register distillation augmenters: ``register(name, factory, description="")``.

    ``factory(**options)`` returns an :class:`automl_kd.Augmenter`.
    """


@hookspec
def register_benchmarks(register: Registry[Any]) -> None:
    """Register table benchmarks for ``automl-kd compare``: ``register(name, factory, description="")``.

    ``factory()`` returns an :class:`automl_kd.compare.BenchmarkSpec` naming a registered space and a registered
    table evaluator (one with ``table_values(space)``). The core knows no benchmark by name.
    """


@hookspec
def register_commands(cli: argparse._SubParsersAction) -> None:
    """Add subcommands to ``automl-kd``: ``cli.add_parser(name, help=...)``, then ``set_defaults(func=...)``.

    Called once per command line, before it is parsed. ``func(args)`` returns the exit code; it may raise
    :class:`automl_kd.AutomlKdError` for a one-line ``error: ...``. A name the host (or another plugin) already
    uses is a plugin error and the command is not added.
    """


@hookspec
def on_trial_end(
    study_name: str, trial_number: int, state: str, values: list[float] | None, attrs: dict[str, Any]
) -> None:
    """Observe a finished trial (complete, pruned, failed or rejected).

    Called in the worker process right after the trial is recorded in storage. ``attrs`` holds the recorded
    metrics (``val_acc``, ``params``, ``macs``, ...) and ``fail_reason`` where it failed. Return values are ignored;
    an exception raised here is reported as a plugin error and does not change the trial.
    """
