"""Commands for getting started: ``init`` writes an example config, ``plugins`` lists what is installed."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from automl_kd.errors import AutomlKdError
from automl_kd.manager import DISABLE_ENV

from .common import emit_json, plugin_manager

#: the example configs shipped in the package (``automl_kd/configs/<name>.yaml``), for ``automl-kd init``
EXAMPLES = {
    "quick": "four short trials of the train evaluator on Fashion-MNIST (about a minute on 2 CPU cores)",
    "demo": "the demo's run: a teacher, a KD search, a CE-alone baseline (a few minutes on 2 CPU cores)",
}


def example_config(name: str) -> str:
    """The text of a shipped example config."""
    return (resources.files("automl_kd") / "configs" / f"{name}.yaml").read_text("utf-8")


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.path if args.path is not None else f"{args.example}.yaml")
    if target.is_dir():
        target = target / f"{args.example}.yaml"
    if target.exists() and not args.force:
        raise AutomlKdError(f"{target} exists; name another path, or --force to overwrite it")
    target.write_text(example_config(args.example), encoding="utf-8")
    print(f"wrote {target} ({EXAMPLES[args.example]})")
    print(f"next: automl-kd check {target} && automl-kd run {target}")
    return 0


def _plugin_rows(pm: Any) -> list[dict[str, Any]]:
    """Every plugin, loaded or disabled: the name ``--disable-plugin`` takes, where it comes from, what it adds."""
    kinds = {"spaces": pm.spaces, "proposers": pm.proposers, "evaluators": pm.evaluators}
    kinds |= {"augmenters": pm.augmenters, "benchmarks": pm.benchmarks}
    rows = []
    for info in pm.infos.values():
        adds = {k: [e.name for e in reg if e.plugin == info.name] for k, reg in kinds.items()}
        rows.append(
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "hooks": list(info.hooks),
                "registers": {k: v for k, v in adds.items() if v},
                "disabled": False,
            }
        )
    for name, dist in pm.disabled.items():
        rows.append(
            {
                "name": name,
                "distribution": dist,
                "version": None,
                "hooks": [],
                "registers": {},
                "disabled": True,
            }
        )
    return rows


def cmd_plugins(args: argparse.Namespace) -> int:
    pm = plugin_manager(args)
    kinds = {
        "spaces": pm.spaces,
        "proposers": pm.proposers,
        "evaluators": pm.evaluators,
        "augmenters": pm.augmenters,
    }
    data: dict[str, Any] = {
        "plugins": _plugin_rows(pm),
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

    width = shutil.get_terminal_size((80, 24)).columns  # the terminal's, or COLUMNS when it is not one
    print(f"plugins (block one: --disable-plugin NAME or {DISABLE_ENV}=NAME)")
    for p in data["plugins"]:
        source = (
            "built in" if p["distribution"] is None else f"{p['distribution']} {p['version'] or ''}".strip()
        )
        print(f"  {p['name']}  ({source}{', disabled' if p['disabled'] else ''})")
        adds = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["registers"].items())
        for line in textwrap.wrap(adds, max(width - 6, 20), break_on_hyphens=False):
            print(f"      {line}")
    for kind in kinds:
        _print_kind(kind, data[kind], width)
    for f in pm.errors:
        print(f"error: {f.message()}")
    return 0


def _print_kind(kind: str, entries: list[dict[str, Any]], width: int) -> None:
    """One kind's names: a table where the terminal is wide enough for whole plugin names and a readable
    description, else one block per name (the plugin's name on a line of its own). Names are never cut."""
    name_w = max([len(e["name"]) for e in entries] + [4])
    plugin_w = max([len(e["plugin"]) for e in entries] + [6])
    if width >= name_w + plugin_w + 40 + 10:
        table = Table(title=kind)
        table.add_column("name", no_wrap=True, min_width=name_w)
        table.add_column("plugin", no_wrap=True, min_width=plugin_w)
        table.add_column("description")
        for e in entries:
            table.add_row(e["name"], e["plugin"], e["description"])
        Console(width=width).print(table)
        return
    print(f"\n{kind}")
    for e in entries:
        text = textwrap.wrap(e["description"], max(width - name_w - 4, 20)) or [""]
        print(f"  {e['name']:<{name_w}}  {text[0]}".rstrip())
        for line in text[1:]:
            print(f"  {'':<{name_w}}  {line}")
        print(f"  {'':<{name_w}}  plugin: {e['plugin']}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "init", help="write an example config to start from (the package's own, so a wheel install has one)"
    )
    sp.add_argument("path", nargs="?", help="file or folder to write (default: ./<example>.yaml)")
    sp.add_argument(
        "--example", choices=sorted(EXAMPLES), default="quick", help="which example (default: quick)"
    )
    sp.add_argument("--force", action="store_true", help="overwrite an existing file")
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser(
        "plugins", help="list plugins (with the name --disable-plugin takes) and what they register"
    )
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_plugins)
