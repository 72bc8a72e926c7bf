"""What every command module shares: the plugin manager of a command line, the JSON summary line, the leaderboard
table, and the run directory a study lives in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from automl_kd.config import default_run_dir
from automl_kd.manager import PluginManager, get_plugin_manager
from automl_kd.storage.studies import default_url, run_dir_url


def plugin_manager(args: argparse.Namespace) -> PluginManager:
    """The plugin manager of this command line (``--disable-plugin`` applied), built once per ``args``."""
    pm = getattr(args, "_pm", None)
    if pm is None:
        pm = get_plugin_manager(disable=getattr(args, "disable_plugin", None) or ())
        args._pm = pm
    return pm


def emit_json(obj: Any) -> None:
    # the JSON summary is the last line on stdout, on one line, so `| tail -n 1 | jq` works
    print(json.dumps(obj, default=str, separators=(",", ":")), flush=True)


def emit_facts(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """A tool's result: the JSON line with ``--json``, else one ``key=value`` line."""
    if args.json:
        emit_json(out)
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))


def config_options(sp: argparse.ArgumentParser) -> None:
    """A config file argument, its ``--set`` overrides and ``--json`` (``teacher train``, ``ig precompute``)."""
    sp.add_argument("config")
    sp.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    sp.add_argument("--json", action="store_true")


def run_dir_of(args: argparse.Namespace) -> Path:
    """``--run-dir``, or where ``automl-kd run`` puts the study: ``runs/<study>`` (``runs/automl-kd`` by default)."""
    return Path(args.run_dir) if args.run_dir else default_run_dir(getattr(args, "study", None))


def storage_of(args: argparse.Namespace, run_dir: Path) -> str:
    """The storage a reading command uses: ``--storage``, else the run directory's own (its ``journal.log``
    after a run with ``--workers``, else its ``study.db``)."""
    return args.storage or run_dir_url(run_dir) or default_url(run_dir)


def study_options(sp: argparse.ArgumentParser) -> None:
    """Options of the commands that read an existing study (show, report, finalize, export, evaluate)."""
    sp.add_argument(
        "--run-dir",
        help="run directory holding study.db or journal.log (default: runs/<study>, as `run` writes it)",
    )
    sp.add_argument("--storage", help="Optuna storage URL (default: SQLite in the run directory)")
    sp.add_argument("--study", help="study name (default: the storage's only study)")
    sp.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def print_leaderboard(rows: list[dict[str, Any]], title: str) -> None:
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
    if any("ce_val_acc" in r for r in rows):
        # search.ce_baseline: the same architecture trained with cross-entropy alone, and what distillation gave
        cols[4:4] = [("ce_val_acc", "CE alone val %"), ("kd_gain", "KD gain")]
    for _, head in cols:
        table.add_column(head, justify="right")
    for r in rows:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            if key == "kd_gain" and isinstance(v, int | float):
                cells.append(f"{v:+.2f}")
            elif isinstance(v, float):
                cells.append(f"{v:.2f}")
            elif isinstance(v, int) and key in ("params", "macs"):
                cells.append(f"{v:,}")
            else:
                cells.append("" if v is None else str(v))
        table.add_row(*cells)
    Console(width=max(120, Console().width)).print(table)
