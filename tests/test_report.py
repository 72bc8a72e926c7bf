"""The HTML report, rendered by a real headless browser (Debian's chromium), and the numbers behind its plots."""

from __future__ import annotations

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

from automl_kd import Search, load_config
from automl_kd.cli import main
from automl_kd.results.html import SECTIONS, find_messages, write_report
from automl_kd.results.leaderboard import best_so_far, front_2d

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

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
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
    assert dom.order == list(SECTIONS)
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

    shot = tmp_path / "shot.png"
    browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.shape == (2400, 1280, 3)
    ink = (px < 250).any(axis=2).mean()  # share of non-white pixels: text, tables, plots
    colored = int((px.max(axis=2) - px.min(axis=2) > 80).sum())  # the plots' coloured markers and lines
    assert ink > 0.05 and colored > 2000, (ink, colored)


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
