"""Commands that run searches and look at them: ``run``, ``demo``, ``worker``, ``show``, ``plugins``, ``llm parse``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from automl_kd.config import load_config
from automl_kd.engine.check import check_config
from automl_kd.engine.progress import make_progress
from automl_kd.engine.search import Search
from automl_kd.errors import AutomlKdError
from automl_kd.llm.parser import parse_answer_file
from automl_kd.results.leaderboard import leaderboard, summary
from automl_kd.storage.studies import default_url, load_study
from automl_kd.storage.workers import config_of_study, default_parallel_storage, run_workers

from .common import emit_json, plugin_manager, print_leaderboard, run_dir_of, study_options

log = logging.getLogger("automl_kd")


def _run_search(args: argparse.Namespace, cfg: Any) -> int:
    workers = getattr(args, "workers", 1) or 1
    storage_url = args.storage or cfg.storage.url
    if workers > 1 and storage_url is None:
        storage_url = default_parallel_storage(cfg.resolved_run_dir)
    if getattr(args, "device", None):
        cfg = cfg.model_copy(update={"device": args.device})
    progress = make_progress(args.json)
    search = Search(
        cfg, pm=plugin_manager(args), storage=storage_url, study_name=args.study, progress=progress
    )
    storage = storage_url or default_url(search.run_dir)
    code = 0
    try:
        if workers > 1:
            devices = args.devices.split(",") if args.devices else None
            code = run_workers(cfg, storage, search.study_name, workers, devices, args.disable_plugin)
            search.stop_reason = "workers finished" if code == 0 else f"a worker exited with code {code}"
            study = search.study
        else:

            def on_term(signum: int, frame: Any) -> None:
                log.warning(
                    "SIGTERM: stopping the running trial at its next batch; it is queued to run again"
                )
                search.stop("stopped by SIGTERM")

            signal.signal(signal.SIGTERM, on_term)
            study = search.run(n_trials=getattr(args, "n_trials", None))
    except BaseException:
        if args.json:  # the summary still ends stdout, with the reason the search stopped
            with contextlib.suppress(Exception):
                emit_json(summary(search.study, storage, {"stop_reason": search.stop_reason}))
        raise
    if args.json:
        emit_json(summary(study, storage, {"stop_reason": search.stop_reason}))
    else:
        print_leaderboard(leaderboard(study, top=10), study.study_name)
    if search.stop_reason == "stopped by SIGTERM":
        # everything is recorded; the interpreter's own teardown (torch's thread pools) can take seconds more on
        # a busy machine, and Kubernetes or SLURM send SIGKILL after a few: leave now
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(args.config, overrides)
    return _run_search(args, cfg)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config as ``run`` would (every key, every plugin and its options, the teacher checkpoint)
    without reading data, opening a storage or writing anything."""
    cfg = load_config(args.config, list(args.set or []))
    described = check_config(cfg, plugin_manager(args))
    if args.json:
        emit_json({"config": str(args.config), "ok": True, **described})
    else:
        print(f"{args.config}: ok (" + ", ".join(f"{k} {v}" for k, v in described.items()) + ")")
    return 0


def demo_config_path() -> Path:
    return Path(str(resources.files("automl_kd") / "configs" / "demo.yaml"))


def cmd_worker(args: argparse.Namespace) -> int:
    """Join an existing study from any machine; its config comes from the study itself."""

    cfg = config_of_study(args.storage, args.study)
    args.workers = 1
    return _run_search(args, cfg)


def cmd_llm_parse(args: argparse.Namespace) -> int:
    """Print the candidates parsed from a saved LLM answer, or why it cannot be used (exit 1)."""

    pm = plugin_manager(args)
    space = pm.spaces.create(args.space, {})
    path = Path(args.file)
    if not path.is_file():
        raise AutomlKdError(f"answer file {str(path)!r} does not exist")
    candidates, errors = parse_answer_file(space, path)
    if args.json:
        emit_json({"candidates": candidates, "errors": errors})
    else:
        for params in candidates:
            print(space.encode(params))
            print(f"  cost: {space.cost(params)}")
        for err in errors:
            print(f"not usable: {err}", file=sys.stderr)
    return 0 if candidates else 1


def cmd_demo(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(demo_config_path(), overrides)
    return _run_search(args, cfg)


def cmd_plugins(args: argparse.Namespace) -> int:
    pm = plugin_manager(args)
    kinds = {
        "spaces": pm.spaces,
        "proposers": pm.proposers,
        "evaluators": pm.evaluators,
        "augmenters": pm.augmenters,
    }
    data: dict[str, Any] = {
        "plugins": [
            {"name": i.name, "distribution": i.distribution, "version": i.version, "hooks": list(i.hooks)}
            for i in pm.infos.values()
        ],
        **{
            k: [
                {
                    "name": e.name,
                    "plugin": e.plugin,
                    "distribution": pm.distribution_of(e.plugin),
                    "description": e.description,
                }
                for e in reg
            ]
            for k, reg in kinds.items()
        },
        "errors": [{"name": f.name, "distribution": f.distribution, "error": f.error} for f in pm.errors],
    }
    if args.json:
        emit_json(data)
        return 0

    console = Console()
    for kind in kinds:
        table = Table(title=kind, show_lines=False)
        for col in ("name", "plugin", "description"):
            table.add_column(col)
        for e in data[kind]:
            plugin = e["distribution"] or e["plugin"]
            table.add_row(e["name"], plugin, e["description"])
        console.print(table)
    for f in pm.errors:
        console.print(f"[red]error[/red]: {f.message()}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    study = load_study(args.storage, run_dir, args.study)
    if args.json:
        emit_json(summary(study, args.storage or str(run_dir)))
        return 0
    print_leaderboard(leaderboard(study, top=args.top), study.study_name)
    s = summary(study, args.storage or str(run_dir))
    print("trials: " + ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items())))
    if s.get("llm_tokens"):
        print(f"LLM tokens: {s['llm_tokens']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    def run_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
        )
        sp.add_argument("--storage", help="Optuna storage URL (default: SQLite in the run directory)")
        sp.add_argument("--study", help="study name (default: the config's name)")
        sp.add_argument("--run-dir", help="run directory (default: runs/<name>)")
        sp.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    sp = sub.add_parser("run", help="run or resume a search from a YAML config")
    sp.add_argument("config")
    run_opts(sp)
    sp.add_argument(
        "--workers", type=int, default=1, help="local worker processes (Journal storage by default)"
    )
    sp.add_argument(
        "--devices", help="comma-separated devices, assigned to workers round-robin (cuda:0,cuda:1)"
    )
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser(
        "check", help="validate a config (keys, plugins and their options, teacher checkpoint); runs nothing"
    )
    sp.add_argument("config")
    sp.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("demo", help="run the embedded demo (Fashion-MNIST, CPU, a few minutes)")
    run_opts(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("worker", help="join a study as one more worker (any machine, same storage)")
    sp.add_argument("--storage", required=True, help="the study's Optuna storage URL")
    sp.add_argument("--study", required=True, help="the study's name")
    sp.add_argument("--device", help="pin this worker to a device (cpu, cuda:1, ...)")
    sp.add_argument("--n-trials", type=int, help="the study's target (default: its config's n_trials)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_worker)

    sp = sub.add_parser("llm", help="LLM proposer tools")
    llm_sub = sp.add_subparsers(dest="llm_command", required=True)
    lp = llm_sub.add_parser("parse", help="parse a saved LLM answer into candidates of a space")
    lp.add_argument("--space", required=True, help="registered space name, e.g. genius-imagenet")
    lp.add_argument("file", help="the answer: plain text, a chat-completion JSON, or a message list")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=cmd_llm_parse)

    sp = sub.add_parser("plugins", help="list plugins and what they register")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_plugins)

    sp = sub.add_parser("show", help="the leaderboard of a study")
    study_options(sp)
    sp.add_argument("--top", type=int, default=20)
    sp.set_defaults(func=cmd_show)
