"""``automl-kd``: the command line, thin over the Python API.

A user error (bad config, missing data, unknown plugin) prints one line ``error: ...`` and exits with the error's
code (2 for configs); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import AutomlKdError

log = logging.getLogger("automl_kd")


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("automl_kd")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    import optuna

    # our progress lines report each trial and its failure reason; Optuna's own lines would repeat them
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _pm(args: argparse.Namespace) -> Any:
    from .manager import get_plugin_manager

    return get_plugin_manager(disable=args.disable_plugin or ())


def _emit_json(obj: Any) -> None:
    # the JSON summary is the last line on stdout, on one line, so `| tail -n 1 | jq` works
    print(json.dumps(obj, default=str, separators=(",", ":")), flush=True)


# -- run / demo --------------------------------------------------------------------------------------------------
def _run_search(args: argparse.Namespace, cfg: Any) -> int:
    from .progress import make_progress
    from .report import leaderboard, summary
    from .search import Search

    progress = make_progress(args.json)
    search = Search(cfg, pm=_pm(args), storage=args.storage, study_name=args.study, progress=progress)

    def on_term(signum: int, frame: Any) -> None:
        log.warning("SIGTERM: finishing after the running trial")
        search.stop()

    signal.signal(signal.SIGTERM, on_term)
    study = search.run()
    storage = args.storage or cfg.storage.url or f"sqlite:///{(search.run_dir / 'study.db').resolve()}"
    if args.json:
        _emit_json(summary(study, storage, {"stop_reason": search.stop_reason}))
    else:
        _print_leaderboard(leaderboard(study, top=10), study.study_name)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config

    overrides = list(args.set or [])
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(args.config, overrides)
    return _run_search(args, cfg)


def demo_config_path() -> Path:
    return Path(str(resources.files("automl_kd") / "configs" / "demo.yaml"))


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import load_config

    overrides = list(args.set or [])
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(demo_config_path(), overrides)
    return _run_search(args, cfg)


# -- plugins ---------------------------------------------------------------------------------------------------
def cmd_plugins(args: argparse.Namespace) -> int:
    pm = _pm(args)
    kinds = {
        "spaces": pm.spaces,
        "proposers": pm.proposers,
        "evaluators": pm.evaluators,
        "augmenters": pm.augmenters,
    }
    data = {
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
        _emit_json(data)
        return 0
    from rich.console import Console
    from rich.table import Table

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


# -- show ------------------------------------------------------------------------------------------------------
def _print_leaderboard(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"leaderboard: {title} (ranked by validation accuracy)")
    cols = [
        ("rank", "#"),
        ("trial", "trial"),
        ("proposer", "proposer"),
        ("val_acc", "val %"),
        ("test_acc", "test %"),
        ("params", "params"),
        ("macs", "MACs"),
        ("compression_factor", "CF"),
        ("latency_ms_b1", "ms@1"),
        ("latency_ms_b64", "ms@64"),
    ]
    for _, head in cols:
        table.add_column(head, justify="right")
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            if isinstance(v, float):
                cells.append(f"{v:.2f}")
            elif isinstance(v, int) and key in ("params", "macs"):
                cells.append(f"{v:,}")
            else:
                cells.append("" if v is None else str(v))
        table.add_row(*cells)
    Console(width=max(120, Console().width)).print(table)


def cmd_show(args: argparse.Namespace) -> int:
    from .report import leaderboard, summary
    from .search import load_study

    study = load_study(args.storage, Path(args.run_dir), args.study)
    if args.json:
        _emit_json(summary(study, args.storage or args.run_dir))
        return 0
    _print_leaderboard(leaderboard(study, top=args.top), study.study_name)
    s = summary(study, args.storage or args.run_dir)
    print("trials: " + ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items())))
    if s.get("llm_tokens"):
        print(f"LLM tokens: {s['llm_tokens']}")
    return 0


# -- parser ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="automl-kd", description="Find small, fast students and distil them.")
    p.add_argument(
        "--disable-plugin",
        action="append",
        metavar="NAME",
        help="block a plugin by name (repeatable); also AUTOML_KD_DISABLE_PLUGINS=a,b",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

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
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("demo", help="run the embedded demo (Fashion-MNIST, CPU, a few minutes)")
    run_opts(sp)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("plugins", help="list plugins and what they register")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_plugins)

    sp = sub.add_parser("show", help="the leaderboard of a study")
    sp.add_argument("--storage")
    sp.add_argument("--run-dir", default="runs/automl-kd", help="run directory holding study.db")
    sp.add_argument("--study")
    sp.add_argument("--top", type=int, default=20)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_show)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except AutomlKdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
