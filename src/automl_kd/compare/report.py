"""The comparison's outputs: one PNG per benchmark, a markdown report, and the JSON file.

:func:`markdown_table` and :func:`pair_tests_table` write every markdown table of the report and of the
benchmarks' result files (``benchmarks/``): one table writer.

Kept apart from :mod:`automl_kd.compare.stats` so that the statistics import no plotting library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from automl_kd.plotting import pyplot

__all__ = ["markdown_report", "markdown_table", "pair_tests_table", "plot_benchmark", "write_outputs"]


# -- plots --------------------------------------------------------------------------------------------------
def plot_benchmark(name: str, entry: dict[str, Any], path: Path) -> None:
    """Best-so-far (median and 95 % interval of the median) and median regret (log scale) per proposer."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    info = entry["info"]
    for label, row in entry["proposers"].items():
        if row["status"] != "ok":
            continue
        med = np.array([np.nan if v is None else v for v in row["curve"]["median"]])
        lo = np.array([np.nan if v is None else v for v in row["curve"]["ci_lo"]])
        hi = np.array([np.nan if v is None else v for v in row["curve"]["ci_hi"]])
        x = np.arange(1, med.size + 1)
        (line,) = ax1.plot(x, med, label=f"{label} (n={len(row['seeds'])})")
        ax1.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        reg = np.array([np.nan if v is None else v for v in row["regret_curve"]["median"]])
        ax2.plot(x, np.maximum(reg, 1e-3), color=line.get_color(), label=label)
    ax1.axhline(info["optimum"], color="k", linestyle=":", linewidth=1, label="table optimum")
    ax1.axhline(info["top1pct_threshold"], color="gray", linestyle="--", linewidth=1, label="top 1 %")
    lo_y = max(info["table_mean"], ax1.get_ylim()[0])
    ax1.set_ylim(lo_y, info["optimum"] + 0.15 * (info["optimum"] - lo_y))
    ax1.set(
        xlabel="evaluations",
        ylabel="best-so-far accuracy (%)",
        title=f"{name}: best so far (median, 95 % CI)",
    )
    ax2.set_yscale("log")
    ax2.set(xlabel="evaluations", ylabel="regret (points; 0 shown as 1e-3)", title=f"{name}: median regret")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- markdown -----------------------------------------------------------------------------------------------
def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table: the header, its rule, then one line per row of cells."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(cells) + " |" for cells in rows
    ]


def pair_tests_table(tests: list[dict[str, Any]]) -> list[str]:
    """The pairwise tests (:func:`automl_kd.compare.stats.pair_tests`' records) as a markdown table."""
    head = ["at", "a vs b", "median a", "median b", "U", "p", "p (Holm)", "A12", "verdict"]
    return markdown_table(
        head,
        [
            [
                str(t["at"]),
                f"{t['a']} vs {t['b']}",
                f"{t['median_a']:.2f}",
                f"{t['median_b']:.2f}",
                f"{t['U']:.1f}",
                f"{t['p']:.3g}",
                f"{t['p_holm']:.3g}",
                f"{t['a12']:.2f}",
                str(t["verdict"]),
            ]
            for t in tests
        ],
    )


def _ci(s: dict[str, Any]) -> str:
    if s.get("median") is None:
        return "-"
    return f"{s['median']:.2f} [{s['ci_lo']:.2f}, {s['ci_hi']:.2f}]"


def _llm_cell(answers: dict[str, Any] | None) -> str:
    if not answers:
        return ""
    return f" (LLM re-asks {answers['reasks_per_run']:.1f}/run, fallbacks {answers['fallbacks_total']})"


def _row(label: str, row: dict[str, Any], marks: list[str]) -> str:
    if row["status"] != "ok":
        return f"| {label} | not run: {row.get('reason', '')} |" + " |" * (len(marks) + 7)
    last = marks[-1]
    top = row["evals_to_top1pct"]
    top_s = f"{top['median']:.0f}" if top["median"] is not None else f"> {last}"
    spp = row["seconds_per_proposal"]["mean"]
    usage = row.get("usage") or {}
    tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    cells = (
        [label, str(len(row["seeds"]))]
        + [_ci(row["at"][m]) for m in marks]
        + [
            f"{row['at'][last]['regret_median']:.2f}",
            f"{row['rank_percentile']['median']:.2f}",
            f"{top_s} ({top['reached']})",
            f"{row['duplicates']['mean_per_run']:.1f}",
            f"{row['invalid']['mean_per_run']:.1f}" + _llm_cell(row.get("llm_answers")),
            f"{1000 * spp:.1f}" if spp is not None else "-",
            f"{tokens:,}" if usage else "-",
            f"{usage['cost_usd']:.4f}" if "cost_usd" in usage else "-",
        ]
    )
    return "| " + " | ".join(cells) + " |"


def _cap_and_screening_rows(rows: dict[str, Any]) -> list[str]:
    """Rows of the cap-and-screening table: proposals rejected over a cap, and the screen proposer's proxy work."""
    out = []
    for label, row in rows.items():
        if row["status"] != "ok":
            continue
        rejected = (row.get("rejected_over_cap") or {}).get("mean_per_run") or 0.0
        screening = row.get("screening")
        if not rejected and not screening:
            continue
        screened = f"{screening['screened_per_run']:.0f}" if screening else "-"
        cpu = f"{screening['proxy_cpu_s_per_run']:.1f}" if screening else "-"
        out.append(f"| {label} | {rejected:.1f} | {screened} | {cpu} |")
    return out


def markdown_report(results: dict[str, Any], pngs: dict[str, str] | None = None) -> str:
    """The results as markdown: one table per benchmark, the pairwise tests, and the plots."""
    s = results["settings"]
    marks: list[str] = s["checkpoints"]
    lines = [
        "# Proposer comparison on NAS benchmarks",
        "",
        f"{s['seeds']} seeds (fewer where a row says so) x {s['budget']} evaluations per run; "
        f"{s['tasks']} runs in {s['elapsed_s']:.0f} s with {s['workers']} worker processes. "
        "Best-so-far is the table value of the incumbent; cells give the median over seeds and its 95 % "
        "bootstrap interval. Regret = table optimum - best-so-far (points). Rank percentile = % of the "
        "table strictly better than the final incumbent. Duplicates and invalid proposals count against the "
        "budget.",
    ]
    for check in results.get("checks", {}).values():
        if isinstance(check, dict) and "text" in check:
            lines += ["", f"- {check['text']}"]
    for bench, entry in results["benchmarks"].items():
        info = entry["info"]
        lines += [
            "",
            f"## {bench}",
            "",
            f"{info['table_size']:,} architectures; optimum {info['optimum']:.2f} %, top 1 % from "
            f"{info['top1pct_threshold']:.2f} %, table mean {info['table_mean']:.2f} %. "
            f"Accuracy: {info.get('accuracy_source', 'see the evaluator')}.",
            "",
        ]
        if info.get("macs_cap") is not None:
            lines[-1:-1] = [
                "",
                f"Capped at {info['macs_cap'] / 1e6:.1f} M MACs: {info['table_size']:,} of the "
                f"{info['table_size_uncapped']:,} architectures; the optimum, the top 1 % and the rank "
                "percentiles are inside the cap. The proposers get the cap as the search's hard constraint; "
                "a proposal over it is rejected without using an evaluation.",
            ]
        head = (
            ["proposer", "seeds"]
            + [f"best@{m}" for m in marks]
            + [
                f"regret@{marks[-1]}",
                "rank pct",
                "evals to top 1 % (reached)",
                "dup/run",
                "invalid/run",
                "ms/proposal",
                "tokens",
                "cost $",
            ]
        )
        lines += markdown_table(head, [])
        lines += [_row(label, row, marks) for label, row in entry["proposers"].items()]
        extra = _cap_and_screening_rows(entry["proposers"])
        if extra:
            lines += [
                "",
                "| proposer | rejected over the cap/run | candidates screened/run | proxy CPU s/run |",
                "|---|---|---|---|",
                *extra,
            ]
        if entry["tests"]:
            lines += [
                "",
                "Mann-Whitney U (two-sided) on best-so-far; A12 = P(a beats b); p Holm-adjusted over the "
                "pairs at each budget.",
                "",
                *pair_tests_table(entry["tests"]),
            ]
        if pngs and bench in pngs:
            lines += ["", f"![{bench}]({pngs[bench]})"]
    return "\n".join(lines) + "\n"


def write_outputs(
    results: dict[str, Any], out_dir: str | Path, name: str = "compare_proposers", plots: bool = True
) -> list[Path]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>_<benchmark>.png`` per benchmark; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    pngs: dict[str, str] = {}
    if plots:
        for bench, entry in results["benchmarks"].items():
            path = out / f"{name}_{bench}.png"
            plot_benchmark(bench, entry, path)
            pngs[bench], written = path.name, [*written, path]
    js = out / f"{name}.json"
    js.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    md = out / f"{name}.md"
    md.write_text(markdown_report(results, pngs))
    return [js, md, *written]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
