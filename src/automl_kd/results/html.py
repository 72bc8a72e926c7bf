"""``automl-kd report``: one self-contained HTML page for a study, with its PNGs written beside it.

The page embeds every image as a ``data:`` URI, so the HTML file alone can be mailed or attached to an issue; the
same PNGs are written next to it for slides and papers. The page leads with the answer (the best student, beside
its teacher and its cross-entropy-alone twin, its size, latency, KD gain and ONNX file) and ends with the config.

Its sections are the report panels of :data:`PANELS`, in order: each a stable id, a title and a render function
that takes the :class:`ReportContext` and returns the section's HTML. A new panel is one entry there (and its
render function); the nav, the sections and :data:`SECTIONS` follow from it. All text from the study (configs, LLM
answers, failure reasons) is HTML-escaped: a transcript may hold anything.

Example::

    study = load_study(None, Path("runs/quick"), None)
    page = write_report(study, Path("runs/quick"))   # runs/quick/report/index.html
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from automl_kd.manager import PluginManager, get_plugin_manager
from automl_kd.proposer import ATTR_META
from automl_kd.results.leaderboard import trial_state
from automl_kd.storage.urls import display_url
from automl_kd.trial_attrs import metrics_of

from . import leaderboard, plots
from .best_student import best_student

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5em 3em;
       color: #1d1d1f; }
nav a { margin-right: 1em; }
h1 { margin-bottom: 0.2em; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f4f4f6; }
td.l, th.l { text-align: left; }
pre { background: #f7f7f9; padding: 0.7em; overflow-x: auto; white-space: pre-wrap; font-size: 12px; }
img { max-width: 100%; border: 1px solid #eee; }
.msg { border-left: 4px solid #999; margin: 0.4em 0; padding: 0.1em 0.7em; }
.msg.system { border-color: #8e8e93; } .msg.user { border-color: #0a84ff; } .msg.assistant { border-color: #30d158; }
.role { font-weight: 600; font-size: 12px; text-transform: uppercase; color: #555; }
.muted { color: #777; }
#summary { border: 2px solid #0a84ff; border-radius: 8px; background: #f5f9ff; padding: 0 1.2em 0.8em; }
#summary h2 { margin-top: 0.6em; }
#summary .answer { font-size: 17px; margin: 0.3em 0 0.4em; }
#summary .pair { display: flex; flex-wrap: wrap; gap: 0.2em 2em; align-items: flex-start; }
#summary .arch { flex: 1; min-width: 18em; } #summary .arch pre { margin: 0.2em 0 0; }
#summary dl { display: grid; grid-template-columns: 8em 1fr; gap: 0.2em 1em; margin: 0.4em 0 0; }
#summary dt { font-weight: 600; color: #333; } #summary dd { margin: 0; }
#summary pre { background: #fff; padding: 0.4em 0.7em; }
#summary table { background: #fff; }
.hint { color: #8a5a00; }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes included, so it is safe inside attributes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, key: str = "") -> str:
    """A leaderboard cell: thousands separators for counts, two decimals for floats."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (
        isinstance(value, float) and key in ("params", "macs") and value.is_integer()
    ):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
    return str(value)


def find_gallery(run_dir: Path) -> list[Path]:
    """The IG gallery PNGs another step wrote into the run directory (``ig_gallery.png``, ``*gallery*.png``)."""
    found = sorted({*run_dir.glob("ig_gallery.png"), *run_dir.glob("*gallery*.png")})
    return [p for p in found if p.is_file()]


def find_messages(obj: Any) -> list[list[dict[str, Any]]]:
    """Every list of ``{role, content}`` chat messages anywhere inside a JSON value, outermost first.

    The LLM proposer stores its transcript under keys of its own choosing; the report only relies on this shape.
    """
    found: list[list[dict[str, Any]]] = []

    def is_chat(v: Any) -> bool:
        return (
            isinstance(v, list)
            and bool(v)
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in v)
        )

    def walk(v: Any) -> None:
        if is_chat(v):
            found.append(v)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(obj)
    return found


# -- what every panel renders from ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportContext:
    """What a panel's render function gets: the study, its run directory (finalized students, IG galleries), the
    folder the page and its PNGs are written to, and the plugin manager (to name architectures in their space's
    own text form)."""

    study: optuna.Study
    run_dir: Path
    out: Path
    pm: PluginManager


@dataclass(frozen=True)
class Panel:
    """One section of the page: a stable ``id`` (the anchor ``index.html#id``), its title, and ``render``, which
    returns the section's HTML (every study-provided text escaped with :func:`esc`)."""

    id: str
    title: str
    render: Callable[[ReportContext], str]


# -- sections ---------------------------------------------------------------------------------------------------
def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], left: Iterable[int] = ()) -> str:
    """A table whose cells are already-escaped HTML; ``left`` are the indices of left-aligned columns."""
    lefts = set(left)
    head = "".join(f'<th class="{"l" if i in lefts else ""}">{h}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i in lefts else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<p><img src="data:image/png;base64,{data}" alt="{esc(alt)}"><br>'
        f'<a class="muted" href="{esc(path.name)}">{esc(path.name)}</a></p>'
    )


def _config_section(ctx: ReportContext) -> str:
    study = ctx.study
    cfg = study.user_attrs.get("config")
    if not isinstance(cfg, dict):
        return '<p class="muted">this study stored no config</p>'
    text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=100)
    objectives = ", ".join(str(o) for o in study.user_attrs.get("objectives") or ["val_acc"])
    return f"<p>objectives: {esc(objectives)}</p><pre>{esc(text)}</pre>"


def _leaderboard_section(ctx: ReportContext) -> str:
    study = ctx.study
    rows = leaderboard.leaderboard(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    front = set(leaderboard.pareto_numbers(study))
    baselines = leaderboard.ce_baselines(study)
    # latency columns for whichever batch sizes the evaluator measured (1 and 64 by default)
    batch_sizes = sorted(
        {int(k[len("latency_ms_b") :]) for t in trials.values() for k in t.user_attrs if _latency_key(k)}
    )
    cols = [
        ("val_acc", "val %"),
        *([("ce_val_acc", "CE alone val %"), ("kd_gain", "KD gain")] if baselines else []),
        ("test_acc", "test %"),
        ("params", "params"),
        ("macs", "MACs"),
        ("compression_factor", "CF"),
        *[(f"latency_ms_b{b}", f"ms@{b}") for b in batch_sizes or [1, 64]],
        ("wall_clock_s", "wall s"),
    ]
    body = []
    for r in rows:
        t = trials[r["trial"]]
        r = {**r, **{k: metrics_of(t.user_attrs).get(k) for k, _ in cols if k not in r}}
        augs = ", ".join(
            str(a.get("name")) for a in t.user_attrs.get("augmenters") or [] if isinstance(a, dict)
        )
        arch = json.dumps(t.params, separators=(",", ":"))
        mark = " *" if r["trial"] in front else ""
        body.append(
            [str(r["rank"]), f"{r['trial']}{mark}", esc(r["proposer"])]
            + [esc(_signed(r.get(k)) if k == "kd_gain" else fmt(r.get(k), k)) for k, _ in cols]
            + [esc(augs or "none"), f"<details><summary>params</summary><code>{esc(arch)}</code></details>"]
        )
    heads = ["#", "trial", "proposer", *[h for _, h in cols], "augmenters", "architecture"]
    left = (2, len(heads) - 2, len(heads) - 1)
    out = [
        "<p>Completed trials ranked by validation accuracy; test accuracy is shown for the report only and was "
        "never used to choose. " + ("* = on the study's Pareto front." if front else "") + "</p>",
        _baseline_note(baselines, study.user_attrs.get(leaderboard.ATTR_TEACHER)),
        _table(heads, body, left=left) if body else '<p class="muted">no completed trials</p>',
    ]
    others = [t for t in trials.values() if trial_state(t) != "complete"]
    if others:
        rows_o = [
            [
                str(t.number),
                esc(trial_state(t)),
                esc(t.user_attrs.get("proposer", "")),
                esc(t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason") or ""),
            ]
            for t in others
        ]
        out.append(
            "<h3>Other trials</h3>" + _table(["trial", "state", "proposer", "reason"], rows_o, (1, 2, 3))
        )
    return "".join(out)


def _signed(v: Any) -> str:
    return f"{v:+.2f}" if isinstance(v, int | float) and not isinstance(v, bool) else ""


def _baseline_note(baselines: dict[int, dict[str, Any]], teacher: Any) -> str:
    """What the CE-alone column means, the mean KD gain over the trials that have one, and the teacher's score."""
    if not baselines:
        return ""
    if isinstance(teacher, dict) and isinstance(teacher.get("val_acc"), int | float):
        n = teacher.get("params")
        size = f", {n:,} parameters" if isinstance(n, int) else ""
        taught = f" The teacher scores {teacher['val_acc']:.2f} % on the validation split{size}."
    else:
        taught = ""
    gains = [float(b["kd_gain"]) for b in baselines.values() if isinstance(b.get("kd_gain"), int | float)]
    bands = [
        float(b["noise_band"]) for b in baselines.values() if isinstance(b.get("noise_band"), int | float)
    ]
    band = f" Noise band: +/-{max(bands):.2f} points." if bands else ""
    mean = (
        f" Mean KD gain over {len(gains)} trial(s): {sum(gains) / len(gains):+.2f} points." if gains else ""
    )
    return (
        "<p><b>CE alone</b>: the same architecture, seed and training settings retrained with cross-entropy only "
        "(no teacher, no augmenter; <code>search.ce_baseline</code>); <b>KD gain</b> = distilled minus CE alone "
        "validation accuracy, in points (one seed each: a gain inside two standard errors of the difference on "
        f"the validation split, the noise band, shows nothing).{mean}{band}"
        f"{esc(taught)}</p>"
    )


def _latency_key(key: str) -> bool:
    return key.startswith("latency_ms_b") and key[len("latency_ms_b") :].isdigit()


def _pareto_section(ctx: ReportContext) -> str:
    study = ctx.study
    png = plots.plot_pareto(study, ctx.out / "pareto.png")
    parts = [_img(png, "validation accuracy against params, MACs and latency")]
    rows = []
    for key, label, _ in leaderboard.COST_AXES:
        pts = leaderboard.cost_points(study, key)
        front = leaderboard.front_2d(pts)
        rows.append([esc(label), esc(", ".join(str(n) for n in sorted(front)) or "-")])
    parts.append(_table(["accuracy against", "trials on the front"], rows, left=(0, 1)))
    if len(study.directions) > 1:
        objectives = ", ".join(str(o) for o in study.user_attrs.get("objectives") or [])
        numbers = ", ".join(str(n) for n in leaderboard.pareto_numbers(study)) or "-"
        parts.append(f"<p>The study's own front over ({esc(objectives)}): trials {esc(numbers)}.</p>")
    return "".join(parts)


def _curves_section(ctx: ReportContext) -> str:
    png = plots.plot_curves(ctx.study, ctx.out / "curves.png")
    return _img(png, "best validation accuracy so far per proposer, and per-trial curves")


def _gallery_section(ctx: ReportContext) -> str:
    gallery = []
    for src in find_gallery(ctx.run_dir):
        dst = ctx.out / src.name
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        gallery.append(_img(dst, f"integrated-gradients overlays: {src.name}"))
    return "".join(gallery) or '<p class="muted">no IG overlay in this study</p>'


def _loss_terms_section(ctx: ReportContext) -> str:
    study = ctx.study
    png = plots.plot_loss_terms(study, ctx.out / "loss_terms.png")
    names, rows = leaderboard.loss_term_rows(study)
    if not rows:
        return '<p class="muted">no trial recorded loss terms (only training evaluators do)</p>'
    body = [
        [str(r["trial"]), esc(r["state"]), esc(", ".join(r["augmenters"]) or "none")]
        + [esc(fmt(r["terms"].get(n))) for n in names]
        for r in rows
    ]
    text = (
        "<p>Each term's unweighted mean over the trial's last epoch; <code>total</code> is the weighted sum that "
        "was optimised.</p>"
    )
    return (
        text
        + (_img(png, "loss terms per trial") if png else "")
        + _table(["trial", "state", "augmenters", *map(esc, names)], body, left=(1, 2))
    )


def _transcript(meta: dict[str, Any]) -> str:
    chats = find_messages(meta)
    scalars = {k: v for k, v in meta.items() if not isinstance(v, dict | list)}
    parts = []
    if scalars:
        parts.append(_table(["key", "value"], [[esc(k), esc(v)] for k, v in scalars.items()], left=(0, 1)))
    for i, chat in enumerate(chats):
        if len(chats) > 1:
            parts.append(f"<h4>conversation {i + 1}</h4>")
        for m in chat:
            role = str(m.get("role"))
            content = m.get("content")
            text = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
            parts.append(
                f'<div class="msg {esc(role)}"><div class="role">{esc(role)}</div><pre>{esc(text)}</pre></div>'
            )
    rest = {k: v for k, v in meta.items() if k not in scalars}
    if rest:
        dump = json.dumps(rest, indent=2, default=str, ensure_ascii=False)
        label = "raw record" if chats else "record"
        parts.append(f"<details><summary>{label}</summary><pre>{esc(dump)}</pre></details>")
    return "".join(parts)


def _llm_section(ctx: ReportContext) -> str:
    parts = []
    for t in ctx.study.get_trials(deepcopy=False):
        meta = t.system_attrs.get(ATTR_META)
        if not isinstance(meta, dict) or not meta:
            continue
        model = meta.get("model") or meta.get("llm_model") or ""
        tokens = sum(int(meta.get(k) or 0) for k in ("llm_tokens_prompt", "llm_tokens_completion"))
        summary = f"trial {t.number} ({esc(trial_state(t))})"
        if model:
            summary += f", model {esc(model)}"
        if tokens:
            summary += f", {tokens:,} tokens"
        parts.append(
            f'<details id="llm-trial-{t.number}"><summary>{summary}</summary>{_transcript(meta)}</details>'
        )
    if not parts:
        return '<p class="muted">no LLM-proposed trials in this study</p>'
    return f"<p>{len(parts)} trial(s) proposed by an LLM; click one to read its transcript.</p>" + "".join(
        parts
    )


def _final_section(ctx: ReportContext) -> str:
    rows = []
    for rec_path in sorted((ctx.run_dir / "final").glob("trial-*/final.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            continue
        m = rec.get("metrics", {})
        exported = (rec_path.parent / "export" / "model_card.json").is_file()
        rows.append(
            [
                esc(rec.get("trial")),
                esc(rec.get("train", {}).get("epochs")),
                esc(fmt(m.get("val_acc"))),
                esc(fmt(m.get("test_acc"))),
                esc(fmt(m.get("params"), "params")),
                esc(fmt(m.get("macs"), "macs")),
                esc(fmt(m.get("latency_ms_b1"))),
                "yes" if exported else "no",
            ]
        )
    if not rows:
        return '<p class="muted">no trial finalized yet (<code>automl-kd finalize --run-dir DIR</code>)</p>'
    heads = ["trial", "epochs", "val %", "test %", "params", "MACs", "ms@1", "exported"]
    return _table(heads, rows)


# -- the answer first ------------------------------------------------------------------------------------------
def _summary_section(ctx: ReportContext) -> str:
    """The card a reader came for (:mod:`automl_kd.results.best_student`): the best student beside its teacher and
    its cross-entropy-alone twin, its architecture, and one line per fact (a hint where a fact is not known)."""
    best = best_student(ctx.study, ctx.run_dir, ctx.pm)
    if best is None:
        return '<p class="muted">no completed trial yet: the best student appears here once a trial completes</p>'
    size = f", {best.params:,} parameters" if best.params is not None else ""
    acc = f"{best.val_acc:.2f} %" if best.val_acc is not None else "not measured"
    headline = (
        f'<p class="answer">Trial <b>{best.trial}</b> (proposer {esc(best.proposer)}) is the best of '
        f"{best.completed} completed trial(s) by validation accuracy: <b>{esc(acc)}</b> on the validation "
        f"split{esc(size)}.</p>"
    )
    rows = [
        [esc(s.label), _score(s.val_acc), _score(s.test_acc), esc(fmt(s.params, "params"))]
        for s in best.scores
    ]
    # test accuracy for the report only: the search and this ranking never saw it
    scores = _table(["", "val %", "test % (report only)", "params"], rows, left=(0,))
    arch = f'<div class="arch"><b>Architecture</b><pre>{esc(best.architecture)}</pre></div>'
    facts = "".join(
        f"<dt>{esc(f.label)}</dt><dd>{_marked(f.text) if f.known else _hint(_marked(f.text))}</dd>"
        for f in best.facts
    )
    return f'{headline}<div class="pair">{scores}{arch}</div><dl>{facts}</dl>'


def _score(v: float | None) -> str:
    return esc("not measured" if v is None else fmt(v))


def _marked(text: str) -> str:
    """Escaped ``text`` with its backtick-quoted commands and config keys as code."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(text))


def _hint(html_text: str) -> str:
    """An already-escaped hint: what is missing and the command that gives it."""
    return f'<span class="hint">{html_text}</span>'


# -- the page ---------------------------------------------------------------------------------------------------
#: the page's panels, in order: the answer first, the configuration last. A new panel is one entry here.
PANELS: tuple[Panel, ...] = (
    Panel("summary", "Best student", _summary_section),
    Panel("leaderboard", "Leaderboard", _leaderboard_section),
    Panel("pareto", "Pareto front", _pareto_section),
    Panel("curves", "Search curves", _curves_section),
    Panel("gallery", "Integrated-gradients gallery", _gallery_section),
    Panel("loss-terms", "Loss terms", _loss_terms_section),
    Panel("llm-transcripts", "LLM transcripts", _llm_section),
    Panel("final", "Finalized students", _final_section),
    Panel("config", "Configuration", _config_section),
)
#: section ids of the page, in order (from :data:`PANELS`)
SECTIONS = tuple(p.id for p in PANELS)
#: section titles by id (from :data:`PANELS`)
TITLES = {p.id: p.title for p in PANELS}


def write_report(
    study: optuna.Study,
    run_dir: Path,
    out_dir: Path | None = None,
    *,
    source: str | None = None,
    pm: PluginManager | None = None,
) -> Path:
    """Write ``index.html`` and its PNGs into ``out_dir`` (default ``run_dir/report``); return the page's path."""
    out = out_dir or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    ctx = ReportContext(study=study, run_dir=run_dir, out=out, pm=pm or get_plugin_manager())
    body = {p.id: p.render(ctx) for p in PANELS}

    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[trial_state(t)] = counts.get(trial_state(t), 0) + 1
    nav = "".join(f'<a href="#{esc(p.id)}">{esc(p.title)}</a>' for p in PANELS)
    sections = "".join(
        f'<section id="{esc(p.id)}"><h2>{esc(p.title)}</h2>{body[p.id]}</section>' for p in PANELS
    )
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    shown = display_url(source) if source else str(run_dir)  # never the storage's password
    counts_text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials"
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>automl-kd: {esc(study.study_name)}</title>'
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>automl-kd study {esc(study.study_name)}</h1>"
        f'<p class="muted">storage {esc(shown)}; {esc(counts_text)}; directions '
        f"{esc(', '.join(d.name.lower() for d in study.directions))}; generated {esc(stamp)}</p>"
        f"<nav>{nav}</nav></header>{sections}</body></html>\n"
    )
    path = out / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # a reader (a browser refreshing) never sees half a page
    return path
