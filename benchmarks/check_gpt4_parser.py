"""Check the LLM answer parser on real GPT-4 answers from GENIUS's published chat histories.

The answers are not in this repository: download GENIUS's ImageNet chat histories (JSON lists of chat
messages, ``imagenet/chat_history/**/*.json`` or ``imagenet/chatting_history/**/*.json`` in
github.com/mingkai-zheng/GENIUS) and pass the files or their folder::

    python benchmarks/check_gpt4_parser.py GENIUS/imagenet/chatting_history --json gpt4_parser.json

Every assistant message is parsed as a ``genius-imagenet`` candidate. A well-formed answer must give exactly
one valid design; any other answer must get a clear reason. Where a file also holds GENIUS's later prompts,
every "ExperimentN" design those prompts list (the designs GENIUS's own harness read and trained) must be one
of the designs parsed from an earlier answer. The exit status is 1 when an answer yields no design and no
reason, or when an experiment design was not found among the parsed answers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from automl_kd.llm import parse_answer
from automl_kd.plugins.spaces.genius_imagenet import GeniusImageNetSpace

_EXPERIMENT = re.compile(r"- Experiment\s*(\d+)\s*\n((?:.*\[[^\]]*\].*\n?){5})")


def files_from(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p])
    return out


def check_file(space: GeniusImageNetSpace, path: Path) -> dict[str, Any]:
    messages = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(messages, list):
        return {
            "file": str(path),
            "skipped": "not a JSON list of chat messages",
            "answers": [],
            "experiments": 0,
            "experiments_not_parsed": [],
        }
    answers: list[dict[str, Any]] = []
    parsed_designs: list[list[list[int]]] = []
    experiments: list[list[list[int]]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        if m.get("role") == "assistant":
            result = parse_answer(str(m.get("content") or ""), space)
            valid = [space.stage_ids(c.params) for c in result.candidates if c.params is not None]
            reasons = ([result.error] if result.error else []) + [
                c.error for c in result.candidates if c.error
            ]
            parsed_designs.extend(valid)
            cost = space.cost(space.params_from_answer(valid[0])).macs / 1e6 if valid else None
            answers.append({"message": i, "designs": valid, "macs_m": cost, "reasons": reasons})
        elif m.get("role") == "user":
            for _, block in _EXPERIMENT.findall(str(m.get("content") or "")):
                result = parse_answer(block, space)
                experiments.extend(space.stage_ids(c.params) for c in result.valid if c.params)
    unique_experiments = [e for k, e in enumerate(experiments) if e not in experiments[:k]]
    missing = [e for e in unique_experiments if e not in parsed_designs]
    return {
        "file": str(path),
        "answers": answers,
        "experiments": len(unique_experiments),
        "experiments_not_parsed": missing,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="GENIUS chat-history JSON files or folders")
    ap.add_argument("--json", help="write the per-answer results here")
    args = ap.parse_args(argv)
    space = GeniusImageNetSpace()
    reports = [check_file(space, p) for p in files_from(args.paths)]
    n = ok = unclear = 0
    for rep in reports:
        print(f"== {rep['file']}" + (f" (skipped: {rep['skipped']})" if "skipped" in rep else ""))
        for a in rep["answers"]:
            n += 1
            if len(a["designs"]) == 1:
                ok += 1
                print(
                    f"  message {a['message']:3d}: ok  {json.dumps(a['designs'][0])}  {a['macs_m']:.1f}M MACs"
                )
            elif a["designs"]:
                ok += 1
                print(f"  message {a['message']:3d}: ok  {len(a['designs'])} designs")
            else:
                unclear += not a["reasons"]
                print(f"  message {a['message']:3d}: no design: {'; '.join(a['reasons']) or 'NO REASON'}")
        if rep["experiments"]:
            print(
                f"  experiments in prompts: {rep['experiments']}, not among parsed answers: "
                f"{len(rep['experiments_not_parsed'])}"
            )
    missing = sum(len(r["experiments_not_parsed"]) for r in reports)
    print(
        f"\n{n} answers: {ok} gave a valid design, {n - ok} did not "
        f"({unclear} without a reason); {missing} experiment designs not recovered"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"answers": n, "valid": ok, "files": reports}, indent=1))
    return 1 if unclear or missing else 0


if __name__ == "__main__":
    sys.exit(main())
