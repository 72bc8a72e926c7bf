"""Commands that run searches and look at them: ``run``, ``demo``, ``worker``, ``show``, ``llm parse``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from automl_kd.config import load_config
from automl_kd.engine.check import check_config
from automl_kd.engine.progress import make_progress
from automl_kd.engine.search import Search
from automl_kd.errors import AutomlKdError, ConfigError, ctrl_c_not_swallowed
from automl_kd.llm.parser import parse_answer_file
from automl_kd.results.baseline import run_ce_baseline
from automl_kd.results.export import export_student
from automl_kd.results.finalize import CHECKPOINT, FINAL_RECORD, final_dir, finalize
from automl_kd.results.html import write_report
from automl_kd.results.leaderboard import ATTR_TEACHER, ce_baselines, leaderboard, summary
from automl_kd.storage.studies import default_url, load_study, run_dir_url
from automl_kd.storage.workers import config_of_study, run_workers

from .common import emit_json, plugin_manager, print_leaderboard, run_dir_of, storage_of, study_options

log = logging.getLogger("automl_kd")
#: the stop reason after the first Ctrl-C (exit code 130); "stopped": no CE baseline, the demo stops too
STOPPED_BY_SIGINT = "stopped by SIGINT (Ctrl-C)"


def _run_search(args: argparse.Namespace, cfg: Any) -> int:
    search, study, storage, code = _search(args, cfg)
    if code == 0:
        _ce_baseline(args, cfg, search, study)
    return _finish(args, search, study, storage, code)


def _ce_baseline(args: argparse.Namespace, cfg: Any, search: Search, study: Any) -> None:
    """``search.ce_baseline``: retrain the chosen trials with cross-entropy alone (not after a stopped search)."""
    if cfg.search.ce_baseline == "none" or _stopped(search):
        return
    run_ce_baseline(study, cfg.search.ce_baseline, config=cfg, pm=plugin_manager(args))


def _stopped(search: Search) -> bool:
    """The search was stopped (a signal, a stop request), not finished."""
    return bool(search.stop_reason) and str(search.stop_reason).startswith("stopped")


def _search(args: argparse.Namespace, cfg: Any) -> tuple[Search, Any, str, int]:
    """Run the search of ``cfg`` (or its workers); on an error the ``--json`` summary still ends stdout."""
    workers = getattr(args, "workers", 1) or 1
    storage_url = args.storage or cfg.storage.url
    if storage_url is None:  # the run directory's own: study.db, or the journal.log of a run with workers
        storage_url = run_dir_url(cfg.resolved_run_dir, workers)
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

            def on_int(signum: int, frame: Any) -> None:
                # a flag, not KeyboardInterrupt: an exception raised at an arbitrary point can land inside a
                # storage transaction and leave the study locked (the likely cause of a Ctrl-C during a trial's
                # first writes that hung for minutes on a loaded machine); a second Ctrl-C stops at once
                signal.signal(signal.SIGINT, signal.default_int_handler)
                log.warning(
                    "Ctrl-C: stopping the running trial at its next batch; it is queued to run again "
                    "(Ctrl-C again: stop now)"
                )
                search.stop(STOPPED_BY_SIGINT)

            previous = signal.signal(signal.SIGTERM, on_term), signal.signal(signal.SIGINT, on_int)
            try:
                with ctrl_c_not_swallowed():  # a second Ctrl-C in a gc callback still stops the run
                    study = search.run(n_trials=getattr(args, "n_trials", None))
            finally:  # after the search (the CE baseline, the demo's finalize and report) a signal acts at once
                signal.signal(signal.SIGTERM, previous[0])
                signal.signal(signal.SIGINT, previous[1])
    except BaseException:
        if args.json:  # the summary still ends stdout, with the reason the search stopped
            with contextlib.suppress(Exception):
                emit_json(summary(search.study, storage, {"stop_reason": search.stop_reason}))
        raise
    return search, study, storage, code


def _finish(
    args: argparse.Namespace,
    search: Search,
    study: Any,
    storage: str,
    code: int,
    extra: dict[str, Any] | None = None,
) -> int:
    """The summary (``--json``) or the leaderboard; after SIGTERM, leave at once."""
    if args.json:
        emit_json(summary(study, storage, {"stop_reason": search.stop_reason, **(extra or {})}))
    else:
        print_leaderboard(leaderboard(study, top=10), study.study_name)
    if search.stop_reason in ("stopped by SIGTERM", STOPPED_BY_SIGINT):
        # everything is recorded; the interpreter's own teardown (torch's thread pools) can take seconds more on
        # a busy machine, and Kubernetes or SLURM send SIGKILL after a few: leave now
        if search.stop_reason == STOPPED_BY_SIGINT:
            print(
                "interrupted (SIGINT); a running trial was recorded and queued to run again", file=sys.stderr
            )
            code = 130
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
    """Join an existing study from any machine; its config comes from the study itself (no CE baseline: that is
    the job of the process that started the search)."""

    cfg = config_of_study(args.storage, args.study)
    args.workers = 1
    search, study, storage, code = _search(args, cfg)
    return _finish(args, search, study, storage, code)


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


#: ``automl-kd demo`` finalizes its best student for this many times the search's epochs
DEMO_FINAL_FACTOR = 2


def cmd_demo(args: argparse.Namespace) -> int:
    """The embedded demo end to end: teacher -> KD search -> CE-alone baseline -> finalize + ONNX -> report."""
    overrides = list(args.set or [])
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.final_epochs is not None and args.final_epochs < 1:
        raise ConfigError(f"--final-epochs must be at least 1, got {args.final_epochs}")
    cfg = load_config(demo_config_path(), overrides)
    # the finalized student trains longer than a searched one, never shorter
    final_epochs = args.final_epochs or DEMO_FINAL_FACTOR * int(cfg.evaluator.options.get("epochs", 1))
    t0 = time.perf_counter()
    search, study, storage, code = _search(args, cfg)
    if _stopped(search) or code:
        log.warning("demo stopped during the search; rerun `automl-kd demo` to continue")
        return _finish(args, search, study, storage, code)
    pm = plugin_manager(args)
    _ce_baseline(args, cfg, search, study)
    rows = leaderboard(study, top=10)
    if not args.json:
        print_leaderboard(rows, study.study_name)
    if not rows:
        raise AutomlKdError(
            f"the demo search completed no trial; see `automl-kd show --run-dir {search.run_dir}`"
        )
    run_dir = search.run_dir
    folder = final_dir(run_dir, rows[0]["trial"])
    rec = _reusable_final(folder, final_epochs)
    card_path = folder / "export" / "model_card.json"
    card: dict[str, Any] | None = None
    if rec is None:  # a rerun of a finished demo reuses the finalized student (and its ONNX file)
        rec = finalize(
            run_dir,
            trial=rows[0]["trial"],
            epochs=final_epochs,
            storage=args.storage,
            study_name=study.study_name,
            pm=pm,
        )
    elif card_path.is_file():
        card = json.loads(card_path.read_text())
        if not (folder / "export" / str(card.get("checks", {}).get("onnx", {}).get("file"))).is_file():
            card = None
    if card is None:
        card = export_student(folder, formats=["onnx"], pm=pm)
    onnx_path = folder / "export" / card["checks"]["onnx"]["file"]
    page = write_report(study, run_dir, source=storage)
    facts = _demo_facts(study, rows[0], rec, page, onnx_path, time.perf_counter() - t0)
    if args.json:
        emit_json(summary(study, storage, {"stop_reason": search.stop_reason, "demo": facts}))
    else:
        for line in _demo_lines(facts):
            print(line)
    return 0


def _reusable_final(folder: Path, epochs: int) -> dict[str, Any] | None:
    try:
        rec = json.loads((folder / FINAL_RECORD).read_text())
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(rec, dict)
        and rec.get("train", {}).get("epochs") == epochs
        and (folder / CHECKPOINT).is_file()
    )
    return rec if ok else None


def _demo_facts(
    study: Any, best: dict[str, Any], rec: dict[str, Any], page: Path, onnx_path: Path, seconds: float
) -> dict[str, Any]:
    teacher = study.user_attrs.get(ATTR_TEACHER) or {}
    base = ce_baselines(study).get(best["trial"]) or {}
    return {
        "teacher_val_acc": teacher.get("val_acc"),
        "teacher_params": teacher.get("params"),
        "best_trial": best["trial"],
        "best_val_acc": best.get("val_acc"),
        "best_params": best.get("params"),
        "ce_val_acc": best.get("ce_val_acc"),
        "kd_gain": best.get("kd_gain"),
        "noise_band": base.get("noise_band"),
        "n_val": base.get("n_val"),
        "final_epochs": rec["train"]["epochs"],
        "final_val_acc": rec["metrics"]["val_acc"],
        "final_test_acc": rec["metrics"]["test_acc"],
        "report": str(page),
        "onnx": str(onnx_path),
        "seconds": round(seconds, 1),
    }


def _demo_lines(f: dict[str, Any]) -> list[str]:
    lines = []
    if f["teacher_val_acc"] is not None:
        lines.append(f"teacher: val {f['teacher_val_acc']:.2f} %, {f['teacher_params']:,} params")
    best = f"best student: trial {f['best_trial']}, val {f['best_val_acc']:.2f} % distilled"
    if f["ce_val_acc"] is not None:
        gain, band = f["kd_gain"], f["noise_band"] or 0.0
        noise = f"the +/-{band:.2f}-point noise band of {f['n_val']} validation images"
        if gain > band:
            verdict = f"beyond {noise}: KD helped"
        elif gain < -band:
            verdict = f"beyond {noise}: KD hurt"
        else:
            verdict = f"within {noise}: no difference shown"
        best += f", {f['ce_val_acc']:.2f} % with cross-entropy alone: KD gain {gain:+.2f} points ({verdict})"
    lines.append(best)
    lines.append(
        f"finalized ({f['final_epochs']} epochs): val {f['final_val_acc']:.2f} %, test {f['final_test_acc']:.2f} %"
    )
    lines.append(f"report: {f['report']}")
    lines.append(f"onnx: {f['onnx']}")
    lines.append(f"demo took {f['seconds']:.0f} s")
    return lines


def cmd_show(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    study = load_study(args.storage, run_dir, args.study)
    if args.json:
        emit_json(summary(study, storage_of(args, run_dir)))
        return 0
    print_leaderboard(leaderboard(study, top=args.top), study.study_name)
    s = summary(study, storage_of(args, run_dir))
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

    sp = sub.add_parser(
        "demo",
        help="the embedded demo: teacher, KD search, CE-alone baseline, report, ONNX (Fashion-MNIST, CPU, minutes)",
    )
    run_opts(sp)
    sp.add_argument(
        "--final-epochs",
        type=int,
        default=None,
        help=f"epochs of the best student's final training (default: {DEMO_FINAL_FACTOR}x the search's epochs)",
    )
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

    sp = sub.add_parser("show", help="the leaderboard of a study")
    study_options(sp)
    sp.add_argument("--top", type=int, default=20)
    sp.set_defaults(func=cmd_show)
