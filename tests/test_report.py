"""The HTML report, rendered by a real headless browser (Debian's chromium), and the numbers behind its plots."""

from __future__ import annotations

import html as html_lib
import json
import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import small_mbv2_options
from distill_support import STUDENT_SPACE, TEACHER_SPACE

from automl_kd import Search, load_config
from automl_kd.cli import main
from automl_kd.results.baseline import run_ce_baseline
from automl_kd.results.export import export_student
from automl_kd.results.finalize import final_dir, finalize
from automl_kd.results.html import PANELS, SECTIONS, TITLES, Panel, find_messages, write_report
from automl_kd.results.leaderboard import (
    ATTR_TEACHER,
    best_so_far,
    ce_baselines,
    front_2d,
    kd_verdict,
    leaderboard,
)

EVIL = "<script>window.pwned = 1</script>"


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "this test needs Debian's `chromium` package (apt-get install chromium); `make test` installs it"
    )


def browse(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run headless chromium on ``page`` with no network, no profile and no background services."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    out = subprocess.run(
        [chromium(), *flags, *extra, page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


class DomSections(HTMLParser):
    """Collects, per ``<section id>``: its text, its tags, and the ``src`` of its images."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.text: dict[str, str] = {}
        self.tags: dict[str, list[str]] = {}
        self.images: dict[str, list[str]] = {}
        self.current = ""
        self.scripts = 0
        self.nav: list[str] = []
        self.in_nav = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "nav":
            self.in_nav = True
        if self.in_nav and tag == "a":
            self.nav.append(str(a.get("href")))
        if tag == "section" and a.get("id"):
            self.current = str(a["id"])
            self.order.append(self.current)
        if self.current:
            self.tags.setdefault(self.current, []).append(tag)
            if tag == "img":
                self.images.setdefault(self.current, []).append(str(a.get("src")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.current = ""
        if tag == "nav":
            self.in_nav = False

    def handle_data(self, data: str) -> None:
        if self.current:
            self.text[self.current] = self.text.get(self.current, "") + data


def make_study(tmp_path: Path, pm: Any, *, multi: bool = True) -> tuple[optuna.Study, Path]:
    """Two proposers taking turns on one study (instant formula evaluator), plus an LLM trial and a failure."""
    run_dir = tmp_path / "run"
    raw: dict[str, Any] = {
        "name": "rep",
        "run_dir": str(run_dir),
        "space": {"name": "mbv2", "options": small_mbv2_options()},
        "evaluator": {"name": "formula", "options": {"epochs": 2}},
        "search": {
            "n_trials": 4,
            "proposer": {"name": "random"},
            "objectives": ["val_acc", "params", "latency"] if multi else ["val_acc"],
        },
    }
    Search(load_config(raw), pm=pm).run()
    raw["search"] = {
        **raw["search"],
        "n_trials": 8,
        "proposer": {"name": "optuna", "options": {"sampler": "tpe"}},
    }
    search = Search(load_config(raw), pm=pm)
    study = search.run()

    dists = search.space.distributions()
    params = search.space.sample(random.Random(7))
    meta = {
        "llm_tokens_prompt": 1200,
        "llm_tokens_completion": 80,
        "model": "test-model",
        "transcript": {
            "messages": [
                {"role": "system", "content": "You are an expert in neural architecture design."},
                {"role": "user", "content": "Propose a network. History: trial 3 gives 91.2 %."},
                {"role": "assistant", "content": f'{{"s0_width": 1.0}} {EVIL}'},
            ],
            "calls": [{"prompt_tokens": 1200, "completion_tokens": 80, "cached": False}],
        },
    }
    values = [93.5, 5000.0, 0.2] if multi else [93.5]
    study.add_trial(
        optuna.trial.create_trial(
            params=params,
            distributions=dists,
            values=values,
            user_attrs={
                "val_acc": 93.5,
                "test_acc": 92.0,
                "params": 5000,
                "macs": 200_000,
                "latency_ms_b1": 0.2,
                "latency_device": EVIL,
                "proposer": "llm",
                "outcome": "complete",
                "augmenters": [{"name": "kd", "options": {"alpha": 0.5, "temperature": 2.5}}],
                "loss_terms": {"ce": 1.25, "kd": 0.4, "total": 0.82},
                "val_acc_curve": [60.0, 85.0, 93.5],
            },
            system_attrs={"automl_kd:proposal_meta": meta},
        )
    )
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL,
            params=params,
            distributions=dists,
            user_attrs={"outcome": "failed", "fail_reason": "RuntimeError: <b>boom</b>", "proposer": "llm"},
        )
    )
    return study, run_dir


def write_gallery(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(6, 2))
    for i, ax in enumerate(axes):
        ax.imshow(np.random.default_rng(i).random((8, 8)), cmap="inferno")
        ax.axis("off")
    fig.savefig(path, dpi=60)
    plt.close(fig)


def test_report_renders_every_section_in_headless_chromium(tmp_path: Path, pm: Any) -> None:
    study, run_dir = make_study(tmp_path, pm)
    write_gallery(run_dir / "ig_gallery.png")
    page = write_report(study, run_dir)
    assert page == run_dir / "report" / "index.html"
    for png in ("pareto.png", "curves.png", "loss_terms.png", "ig_gallery.png"):
        assert (page.parent / png).stat().st_size > 1000, png

    dom = DomSections()
    dom.feed(browse(page, tmp_path, "--dump-dom").stdout)
    assert dom.order == list(SECTIONS) and dom.nav == [f"#{s}" for s in SECTIONS]
    assert dom.order[0] == "summary" and dom.order[-1] == "config"  # the answer first, the YAML last
    assert dom.scripts == 0  # the LLM's "<script>" stayed text
    assert EVIL in dom.text["llm-transcripts"] and "test-model" in dom.text["llm-transcripts"]
    assert (
        "You are an expert" in dom.text["llm-transcripts"] and "1,280 tokens" in dom.text["llm-transcripts"]
    )
    assert "<b>boom</b>" in dom.text["leaderboard"] and "b" not in dom.tags["leaderboard"]
    # the leaderboard (header + 9 completed trials) and the other trials (header + the failure)
    assert dom.tags["leaderboard"].count("tr") == (1 + 9) + (1 + 1)
    for proposer in ("random", "optuna", "llm"):
        assert proposer in dom.text["leaderboard"]
    assert "name: rep" in dom.text["config"] and "latency" in dom.text["config"]
    assert "kd" in dom.text["loss-terms"] and "0.82" in dom.text["loss-terms"]
    assert "no trial finalized" in dom.text["final"]
    for section in ("pareto", "curves", "gallery", "loss-terms"):
        assert dom.images[section] and all(
            s.startswith("data:image/png;base64,") for s in dom.images[section]
        )

    # the card: the LLM's 93.5 % trial beats every formula-scored one (those stay under 86 %)
    best = leaderboard(study, top=1)[0]
    card = dom.text["summary"]
    assert best["val_acc"] == 93.5 and best["proposer"] == "llm"
    number, run = best["trial"], str(run_dir)
    for fact in (
        f"Trial {number} (proposer llm) is the best of 9 completed trial(s)",
        "93.50 %",
        "92.00",  # test accuracy, in its column
        "test % (report only)",
        "5,000 parameters, 200,000 MACs",
        "0.20 ms at batch 1",
        "stage0 w",  # the architecture in the space's own text form
        "none: this study trains its students without a teacher",
        "not measured: search.ce_baseline: best retrains",  # the LLM trial recorded a kd augmenter
        f"not finalized yet: run automl-kd finalize --run-dir {run} --trial {number}",
        f"not exported yet: run automl-kd finalize --run-dir {run} --trial {number}, then automl-kd export "
        f"--run-dir {run} --trial {number}",
    ):
        assert fact in card, fact
    assert EVIL in card  # a study's text (here the latency device) stays text in the card too

    # the card is on the first screen: its box, measured by the browser, lies inside a 1280 x 800 viewport
    box = card_box(page, tmp_path)
    assert 0 < box["top"] < box["bottom"] <= box["vh"] and box["bottom"] - box["top"] > 150, box

    import numpy as np
    from PIL import Image

    top = tmp_path / "top.png"
    browse(page, tmp_path, f"--screenshot={top}", "--window-size=1280,800")
    px = np.asarray(Image.open(top).convert("RGB")).astype(int)
    # the card's blue frame (#0a84ff) painted on the first screen: its top and bottom edges, rows of blue
    blue = (np.abs(px - np.array([10, 132, 255])).max(axis=2) < 40).sum(axis=1)
    edges = np.flatnonzero(blue > 600)
    assert len(edges) >= 2 and edges[-1] - edges[0] > 150, edges

    shot = tmp_path / "shot.png"
    browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.shape == (2400, 1280, 3)
    ink = (px < 250).any(axis=2).mean()  # share of non-white pixels: text, tables, plots
    colored = int((px.max(axis=2) - px.min(axis=2) > 80).sum())  # the plots' coloured markers and lines
    assert ink > 0.05 and colored > 2000, (ink, colored)


def card_box(page: Path, tmp: Path) -> dict[str, float]:
    """The summary card's bounding box in a 1280 x 800 window, as the browser lays it out (a copy of the page with
    a probe script: the report itself has none)."""
    probe = page.with_name("probe.html")
    script = (
        "<script>var r = document.getElementById('summary').getBoundingClientRect();"
        "document.body.setAttribute('data-box', JSON.stringify("
        "{top: r.top, bottom: r.bottom, vh: window.innerHeight}));</script>"
    )
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = browse(probe, tmp, "--dump-dom", "--window-size=1280,800").stdout
    probe.unlink()
    start = dom.index('data-box="') + len('data-box="')
    return dict(json.loads(html_lib.unescape(dom[start : dom.index('"', start)])))


def test_report_cli_on_a_plain_study(tmp_path: Path, pm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, run_dir = make_study(tmp_path, pm, multi=False)
    out_dir = tmp_path / "elsewhere"
    assert main(["report", "--run-dir", str(run_dir), "--out", str(out_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["report"] == str(out_dir / "index.html")
    html = (out_dir / "index.html").read_text()
    assert "no IG overlay in this study" in html
    assert 'id="llm-trial-' in html and "&lt;script&gt;" in html and EVIL not in html
    assert "study&#x27;s own front" not in html  # single objective: no multi-objective front
    assert main(["report", "--run-dir", str(tmp_path / "nothing")]) == 2
    assert "no study database" in capsys.readouterr().err


def test_fronts_curves_and_transcript_discovery() -> None:
    pts = [(0, 90.0, 10.0), (1, 80.0, 5.0), (2, 85.0, 20.0), (3, 90.0, 10.0), (4, 95.0, 30.0), (5, 70.0, 5.0)]
    assert sorted(front_2d(pts)) == [0, 1, 3, 4]  # 2 is dominated by 0, 5 by 1; 0 and 3 tie exactly
    meta = {"a": {"messages": [{"role": "user", "content": "hi"}]}, "calls": [{"role": "x"}], "n": 3}
    assert find_messages(meta) == [[{"role": "user", "content": "hi"}]]

    study = optuna.create_study(directions=["maximize"])
    for number, (proposer, acc) in enumerate([("a", 50.0), ("b", 70.0), ("a", 60.0), ("b", 65.0)]):
        study.add_trial(
            optuna.trial.create_trial(value=acc, user_attrs={"val_acc": acc, "proposer": proposer})
        )
        assert study.trials[-1].number == number
    curves = best_so_far(study)
    assert curves["a"] == [(0, 50.0), (2, 60.0)] and curves["b"] == [(1, 70.0), (3, 70.0)]
    assert curves["all"] == [(0, 50.0), (1, 70.0), (2, 70.0), (3, 70.0)]


TINY_TRAIN = {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 4, "latency": False}


def distilled_run(run_dir: Path) -> dict[str, Any]:
    """Two students of a tiny real KD search on Fashion-MNIST (a 1-epoch teacher), the best one's CE baseline."""
    return {
        "name": "card",
        "run_dir": str(run_dir),
        "data": {"train_size": 600, "test_size": 200, "val_fraction": 0.2, "crop_padding": 0, "flip": False},
        "space": {"name": "mbv2", "options": {**STUDENT_SPACE, "widths": [0.5, 1.0]}},
        "search": {"n_trials": 2, "proposer": {"name": "random"}, "ce_baseline": "best"},
        "evaluator": {"name": "train", "options": TINY_TRAIN},
        "teacher": {
            "space": "mbv2",
            "space_options": TEACHER_SPACE,
            "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 4, "crop_padding": 0},
        },
        "augmenters": [{"name": "kd", "options": {"alpha": 0.5, "temperature": 4.0}}],
    }


def card_text(page: Path) -> str:
    dom = DomSections()
    dom.feed(page.read_text())
    assert dom.order[0] == "summary" and dom.order[-1] == "config"
    return dom.text["summary"]


@pytest.mark.slow
def test_the_card_puts_a_distilled_student_beside_its_teacher_its_ce_twin_and_its_onnx_file(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "kd"
    study = Search(load_config(distilled_run(run_dir))).run()
    best = leaderboard(study, top=1)[0]
    number, run = best["trial"], str(run_dir)

    # right after the search: the teacher and the KD gain are not measured yet, and the card says how to get them
    card = card_text(write_report(study, run_dir))
    assert f"Trial {number} (proposer random)" in card and f"{best['val_acc']:.2f} %" in card
    assert "in the config; its accuracy is not measured yet" in card
    assert "KD gainnot measured: search.ce_baseline: best retrains" in card
    assert "not measured (the evaluator's latency option measures it)" in card  # latency: false

    # the CE-alone baseline stores the teacher's score and the KD gain: the card shows the stored numbers
    run_ce_baseline(study, "best")
    teacher, base = study.user_attrs[ATTR_TEACHER], ce_baselines(study)[number]
    best = leaderboard(study, top=1)[0]
    card = card_text(write_report(study, run_dir))
    assert (
        f"{teacher['val_acc']:.2f} % validation, {teacher['params']:,} parameters (source: {teacher['source']})"
        in card
    )
    assert (
        f"teacher{teacher['val_acc']:.2f}{teacher['test_acc']:.2f}{teacher['params']:,}" in card
    )  # table row
    ce_row = (
        f"the same architecture, cross-entropy alone{base['val_acc']:.2f}{base['test_acc']:.2f}"
        f"{best['params']:,}"
    )
    assert ce_row in card
    verdict = kd_verdict(best["kd_gain"], base["noise_band"])
    gain = (
        f"{best['kd_gain']:+.2f} points (distilled minus cross-entropy alone, validation accuracy); noise band "
        f"+/-{base['noise_band']:.2f} points on {base['n_val']:,} validation images: "
        f"{'within' if verdict == 'no difference shown' else 'beyond'} it, {verdict}"
    )
    assert gain in card
    assert f"not exported yet: run automl-kd finalize --run-dir {run} --trial {number}, then" in card

    # finalized and exported: the card names the ONNX file and the finalized student's scores
    rec = finalize(run_dir, trial=number, epochs=1)
    export_student(final_dir(run_dir, number), formats=["onnx"])
    card = card_text(write_report(study, run_dir))
    onnx = final_dir(run_dir, number) / "export" / "model.onnx"
    assert onnx.is_file() and f"ONNX file{onnx} (checked against torch: max abs diff" in card
    m = rec["metrics"]
    assert f"the same student finalized (1 epoch){m['val_acc']:.2f}{m['test_acc']:.2f}" in card
    assert rec["architecture"] in card and "not finalized" not in card and "not exported" not in card


def test_the_panel_list_is_the_page(tmp_path: Path, pm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nav and sections come from PANELS alone: a panel added there (here, by the test) is linked and rendered."""
    assert tuple(p.id for p in PANELS) == SECTIONS and list(TITLES) == list(SECTIONS)
    assert len(set(SECTIONS)) == len(SECTIONS)
    study, run_dir = make_study(tmp_path, pm, multi=False)
    extra = Panel("extra", "Extra <panel>", lambda ctx: f"<p>{len(ctx.study.trials)} trials</p>")
    import automl_kd.results.html as report_html

    monkeypatch.setattr(report_html, "PANELS", (*PANELS[:1], extra, *PANELS[1:]))
    text = write_report(study, run_dir).read_text()
    dom = DomSections()
    dom.feed(text)
    assert dom.order == ["summary", "extra", *SECTIONS[1:]] and dom.nav == [f"#{s}" for s in dom.order]
    assert dom.text["extra"] == "Extra <panel>10 trials" and "Extra &lt;panel&gt;" in text


def test_the_card_says_what_is_not_known(tmp_path: Path) -> None:
    """A study from elsewhere: no teacher, no augmenter, no size or latency, a space this machine lacks."""
    study = optuna.create_study(directions=["maximize"])
    study.set_user_attr("config", {"name": "plain", "space": {"name": "no-such-space", "options": {}}})
    page = card_text(write_report(study, tmp_path))
    assert "no completed trial yet" in page

    dist: dict[str, optuna.distributions.BaseDistribution] = {
        "width": optuna.distributions.CategoricalDistribution([8, 16])
    }
    study.add_trial(
        optuna.trial.create_trial(
            params={"width": 16}, distributions=dist, value=71.25, user_attrs={"val_acc": 71.25}
        )
    )
    card = card_text(write_report(study, tmp_path))
    for fact in (
        "Trial 0 (proposer ?) is the best of 1 completed trial(s) by validation accuracy: 71.25 %",
        'Architecture{"width": 16}',  # the space cannot be built here: the parameters as JSON
        "Teachernone: this study trains its students without a teacher",
        "KD gainnone: no teacher and no augmenter, so nothing was distilled",
        "Sizenot measured",
        "Latencynot measured",
    ):
        assert fact in card, fact
