"""Distillation tools: ``teacher train`` (``ig precompute`` comes with the ig-overlay plugin)."""

from __future__ import annotations

import argparse
import logging

from automl_kd.config import load_config
from automl_kd.distill.teacher import teacher_for_config, teacher_info

from .common import config_options, emit_facts, plugin_manager

log = logging.getLogger("automl_kd")


def cmd_teacher_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, list(args.set or []))
    teacher, _ = teacher_for_config(cfg, plugin_manager(args), retrain=args.force)
    info = teacher_info(teacher)
    assert info is not None
    out = {"source": info.source, "cache_key": info.cache_key, "weights": info.fingerprint, **info.metrics}
    out["params"] = sum(p.numel() for p in teacher.parameters())
    emit_facts(args, out)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("teacher", help="teacher tools")
    teacher_sub = sp.add_subparsers(dest="teacher_command", required=True)
    tp = teacher_sub.add_parser(
        "train", help="train the config's teacher once and cache it (or show the cached one)"
    )
    config_options(tp)
    tp.add_argument("--force", action="store_true", help="retrain even if cached weights exist")
    tp.set_defaults(func=cmd_teacher_train)
