"""Commands on a finished search: ``report``, ``finalize``, ``export``, ``evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from automl_kd.cache import atomic_write
from automl_kd.results.export import DEFAULT_FORMATS, export_student
from automl_kd.results.finalize import final_dir, finalize, locate_final
from automl_kd.results.html import write_report
from automl_kd.results.transfer import evaluate_student, load_eval_config
from automl_kd.storage.studies import load_study

from .common import emit_json, plugin_manager, run_dir_of, storage_of, study_options


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    study = load_study(args.storage, run_dir, args.study)
    out = Path(args.out) if args.out else None
    page = write_report(study, run_dir, out, source=storage_of(args, run_dir))
    if args.json:
        emit_json({"report": str(page), "pngs": sorted(str(p) for p in page.parent.glob("*.png"))})
    else:
        print(page)
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    if run_dir.is_dir():  # an unwritable run directory fails now, not after the training
        (run_dir / "final").mkdir(exist_ok=True)
    rec = finalize(
        run_dir,
        trial=args.trial,
        epochs=args.epochs,
        overrides=list(args.set or []),
        storage=args.storage,
        study_name=args.study,
        pm=plugin_manager(args),
    )
    folder = final_dir(run_dir, rec["trial"])
    if args.json:
        emit_json(
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
    if args.checkpoint:
        return Path(args.checkpoint)
    return locate_final(run_dir_of(args), args.trial, args.storage, args.study)


def cmd_export(args: argparse.Namespace) -> int:
    final = _final_path(args)
    out = Path(args.out) if args.out else None
    formats = args.format or list(DEFAULT_FORMATS)
    card = export_student(final, out, formats=formats, tolerance=args.tolerance, pm=plugin_manager(args))
    folder = out or (final if final.is_dir() else final.parent) / "export"
    if args.json:
        emit_json({"dir": str(folder), "card": card})
        return 0
    for fmt in formats:
        c = card["checks"][fmt]
        check = f"max abs diff {c['max_abs_diff']:.2e}" if "max_abs_diff" in c else "reloaded equal"
        print(f"{folder / c['file']}: {check}")
    print(folder / "model_card.md")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    final = _final_path(args)
    cfg = load_eval_config(args.config)
    result = evaluate_student(final, cfg, pm=plugin_manager(args))
    if (
        cfg.model is not None
    ):  # a plain weights file (perhaps read-only, shared): write the result only if asked
        out = Path(args.out) if args.out else None
    else:
        folder = final if final.is_dir() else final.parent
        out = Path(args.out) if args.out else folder / f"evaluate-{Path(args.config).stem}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, (json.dumps(result, indent=2) + "\n").encode())
    if args.json:
        emit_json(result)
        return 0
    print(
        f"{result['n']} mapped images: accuracy {result['accuracy']:.2f} %, balanced accuracy "
        f"{result['balanced_accuracy']:.2f} %; {result['n_skipped']} images of unmapped classes skipped"
    )
    for name, v in result["per_class_recall"].items():
        print(f"  {name}: recall {v['recall']:.2f} % (n={v['n']})")
    if out is not None:
        print(out)
    return 0


def _finalized_options(sp: argparse.ArgumentParser) -> None:
    """Where a finalized student is: a study's trial, or a folder (export, evaluate)."""
    study_options(sp)
    sp.add_argument("--trial", default="best", help="finalized trial number or 'best' (default)")
    sp.add_argument(
        "--checkpoint", help="a finalized directory or its model.pt (instead of --run-dir/--trial)"
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "report", help="an HTML report of a study: leaderboard, Pareto front, curves, transcripts"
    )
    study_options(sp)
    sp.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser(
        "finalize", help="retrain a trial's student from scratch, longer, with its augmenters"
    )
    study_options(sp)
    sp.add_argument("--trial", default="best", help="trial number or 'best' (default)")
    sp.add_argument("--epochs", type=int, help="training epochs (default: 5x the search's)")
    sp.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a value of the study's config"
    )
    sp.set_defaults(func=cmd_finalize)

    sp = sub.add_parser("export", help="a finalized student as ONNX, .pt2 and safetensors, with a model card")
    _finalized_options(sp)
    sp.add_argument("--out", help="output folder (default: the finalized directory's export/)")
    sp.add_argument(
        "--format",
        action="append",
        choices=["onnx", "pt2", "torchscript", "safetensors"],
        help="repeatable (default: onnx, pt2, safetensors; torchscript is deprecated in torch)",
    )
    sp.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed vs torch")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser(
        "evaluate",
        help="score a finalized student through a class map, or a plain weights file named by `model:` in the config",
    )
    _finalized_options(sp)
    sp.add_argument("--config", required=True, help="evaluation YAML: data, split, class_map, restrict")
    sp.add_argument(
        "--out",
        help="result JSON (default: <finalized dir>/evaluate-<config name>.json; none for a plain weights file)",
    )
    sp.set_defaults(func=cmd_evaluate)
