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

    workers = getattr(args, "workers", 1) or 1
    storage_url = args.storage or cfg.storage.url
    if workers > 1 and storage_url is None:
        from .workers import default_parallel_storage

        storage_url = default_parallel_storage(cfg.resolved_run_dir)
    if getattr(args, "device", None):
        cfg = cfg.model_copy(update={"device": args.device})
    progress = make_progress(args.json)
    search = Search(cfg, pm=_pm(args), storage=storage_url, study_name=args.study, progress=progress)
    storage = storage_url or f"sqlite:///{(search.run_dir / 'study.db').resolve()}"
    if workers > 1:
        from .workers import run_workers

        devices = args.devices.split(",") if args.devices else None
        run_workers(cfg, storage, search.study_name, workers, devices, args.disable_plugin)
        search.stop_reason = "workers finished"
        study = search.study
    else:

        def on_term(signum: int, frame: Any) -> None:
            log.warning("SIGTERM: stopping the running trial at its next batch; it is queued to run again")
            search.stop()

        signal.signal(signal.SIGTERM, on_term)
        study = search.run(n_trials=getattr(args, "n_trials", None))
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


def cmd_worker(args: argparse.Namespace) -> int:
    """Join an existing study from any machine; its config comes from the study itself."""
    from .workers import config_of_study

    cfg = config_of_study(args.storage, args.study)
    args.workers = 1
    return _run_search(args, cfg)


def cmd_llm_parse(args: argparse.Namespace) -> int:
    """Print the candidates parsed from a saved LLM answer, or why it cannot be used (exit 1)."""
    from .llm import parse_answer_file

    pm = _pm(args)
    space = pm.spaces.create(args.space, {})
    path = Path(args.file)
    if not path.is_file():
        raise AutomlKdError(f"answer file {str(path)!r} does not exist")
    candidates, errors = parse_answer_file(space, path)
    if args.json:
        _emit_json({"candidates": candidates, "errors": errors})
    else:
        for params in candidates:
            print(space.encode(params))
            print(f"  cost: {space.cost(params)}")
        for err in errors:
            print(f"not usable: {err}", file=sys.stderr)
    return 0 if candidates else 1


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


# -- report / finalize / export / evaluate ---------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from .html_report import write_report
    from .search import load_study

    run_dir = Path(args.run_dir)
    study = load_study(args.storage, run_dir, args.study)
    out = Path(args.out) if args.out else None
    page = write_report(study, run_dir, out, source=args.storage or str(run_dir))
    if args.json:
        _emit_json({"report": str(page), "pngs": sorted(str(p) for p in page.parent.glob("*.png"))})
    else:
        print(page)
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from .finalize import final_dir, finalize

    run_dir = Path(args.run_dir)
    rec = finalize(
        run_dir,
        trial=args.trial,
        epochs=args.epochs,
        overrides=list(args.set or []),
        storage=args.storage,
        study_name=args.study,
        pm=_pm(args),
    )
    folder = final_dir(run_dir, rec["trial"])
    if args.json:
        _emit_json(
            {"trial": rec["trial"], "dir": str(folder), "epochs": rec["train"]["epochs"], **rec["metrics"]}
        )
    else:
        m = rec["metrics"]
        print(
            f"trial {rec['trial']}: {rec['train']['epochs']} epochs, val {m['val_acc']:.2f} %, "
            f"test {m['test_acc']:.2f} %, {m['params']:,} params -> {folder}"
        )
    return 0


def _final_path(args: argparse.Namespace) -> Path:
    from .finalize import locate_final

    if args.checkpoint:
        return Path(args.checkpoint)
    return locate_final(Path(args.run_dir), args.trial, args.storage, args.study)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import DEFAULT_FORMATS, export_student

    final = _final_path(args)
    out = Path(args.out) if args.out else None
    formats = args.format or list(DEFAULT_FORMATS)
    card = export_student(final, out, formats=formats, tolerance=args.tolerance, pm=_pm(args))
    folder = out or (final if final.is_dir() else final.parent) / "export"
    if args.json:
        _emit_json({"dir": str(folder), "card": card})
        return 0
    for fmt in formats:
        c = card["checks"][fmt]
        check = f"max abs diff {c['max_abs_diff']:.2e}" if "max_abs_diff" in c else "reloaded equal"
        print(f"{folder / c['file']}: {check}")
    print(folder / "model_card.md")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_student

    final = _final_path(args)
    result = evaluate_student(final, args.config, pm=_pm(args))
    folder = final if final.is_dir() else final.parent
    out = Path(args.out) if args.out else folder / f"evaluate-{Path(args.config).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        _emit_json(result)
        return 0
    print(
        f"{result['n']} mapped images: accuracy {result['accuracy']:.2f} %, balanced accuracy "
        f"{result['balanced_accuracy']:.2f} %; {result['n_skipped']} images of unmapped classes skipped"
    )
    for name, v in result["per_class_recall"].items():
        print(f"  {name}: recall {v['recall']:.2f} % (n={v['n']})")
    print(out)
    return 0


# -- distillation: teacher and IG maps --------------------------------------------------------------------------
def cmd_teacher_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .teacher import teacher_for_config, teacher_info

    cfg = load_config(args.config, list(args.set or []))
    teacher, _ = teacher_for_config(cfg, _pm(args), retrain=args.force)
    info = teacher_info(teacher)
    assert info is not None
    out = {"source": info.source, "cache_key": info.cache_key, "weights": info.fingerprint, **info.metrics}
    out["params"] = sum(p.numel() for p in teacher.parameters())
    if args.json:
        _emit_json(out)
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def cmd_ig_precompute(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .config import load_config
    from .ig_maps import precompute_for_config

    cfg = load_config(args.config, list(args.set or []))
    with Progress(disable=not sys.stderr.isatty()) as bar:  # a live bar on a terminal; log lines otherwise
        task = bar.add_task("IG maps", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if bar.disable:
                log.info("IG maps: %d/%d images", done, total)

        maps = precompute_for_config(cfg, _pm(args), progress=progress, log=log.info)
    out = {"key": maps.key, "images": len(maps), **{k: v for k, v in maps.meta.items() if k != "settings"}}
    if args.json:
        _emit_json(out)
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
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
    sp.add_argument(
        "--workers", type=int, default=1, help="local worker processes (Journal storage by default)"
    )
    sp.add_argument(
        "--devices", help="comma-separated devices, assigned to workers round-robin (cuda:0,cuda:1)"
    )
    sp.set_defaults(func=cmd_run)

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

    from .compare import add_compare_arguments, compare_main

    sp = sub.add_parser(
        "compare", help="compare proposers on NAS table benchmarks (seeds x budget, statistics)"
    )
    add_compare_arguments(sp)
    sp.set_defaults(func=compare_main)

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

    def study_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--run-dir", default="runs/automl-kd", help="run directory holding study.db")
        sp.add_argument("--storage", help="Optuna storage URL (default: SQLite in the run directory)")
        sp.add_argument("--study", help="study name (default: the storage's only study)")
        sp.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    sp = sub.add_parser(
        "report", help="an HTML report of a study: leaderboard, Pareto front, curves, transcripts"
    )
    study_opts(sp)
    sp.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser(
        "finalize", help="retrain a trial's student from scratch, longer, with its augmenters"
    )
    study_opts(sp)
    sp.add_argument("--trial", default="best", help="trial number or 'best' (default)")
    sp.add_argument("--epochs", type=int, help="training epochs (default: 5x the search's)")
    sp.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a value of the study's config"
    )
    sp.set_defaults(func=cmd_finalize)

    sp = sub.add_parser("export", help="a finalized student as ONNX, .pt2 and safetensors, with a model card")
    study_opts(sp)
    sp.add_argument("--trial", default="best", help="finalized trial number or 'best' (default)")
    sp.add_argument(
        "--checkpoint", help="a finalized directory or its model.pt (instead of --run-dir/--trial)"
    )
    sp.add_argument("--out", help="output folder (default: the finalized directory's export/)")
    sp.add_argument(
        "--format",
        action="append",
        choices=["onnx", "pt2", "torchscript", "safetensors"],
        help="repeatable (default: onnx, pt2, safetensors; torchscript is deprecated in torch)",
    )
    sp.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed vs torch")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("evaluate", help="score a finalized student on another dataset through a class map")
    study_opts(sp)
    sp.add_argument("--trial", default="best", help="finalized trial number or 'best' (default)")
    sp.add_argument(
        "--checkpoint", help="a finalized directory or its model.pt (instead of --run-dir/--trial)"
    )
    sp.add_argument("--config", required=True, help="evaluation YAML: data, split, class_map, restrict")
    sp.add_argument("--out", help="result JSON (default: <finalized dir>/evaluate-<config name>.json)")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("teacher", help="teacher tools")
    teacher_sub = sp.add_subparsers(dest="teacher_command", required=True)
    tp = teacher_sub.add_parser(
        "train", help="train the config's teacher once and cache it (or show the cached one)"
    )
    tp.add_argument("config")
    tp.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    tp.add_argument("--force", action="store_true", help="retrain even if cached weights exist")
    tp.add_argument("--json", action="store_true")
    tp.set_defaults(func=cmd_teacher_train)

    sp = sub.add_parser("ig", help="integrated-gradients tools")
    ig_sub = sp.add_subparsers(dest="ig_command", required=True)
    ip = ig_sub.add_parser(
        "precompute", help="compute (or resume) the IG maps of the config's ig-overlay augmenter"
    )
    ip.add_argument("config")
    ip.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)"
    )
    ip.add_argument("--json", action="store_true")
    ip.set_defaults(func=cmd_ig_precompute)
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
