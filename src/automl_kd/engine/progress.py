"""Progress display for a search: live rich progress on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from optuna.trial import FrozenTrial
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from automl_kd.trial_attrs import metrics_of

from .outcome import TrialOutcome


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class PlainProgress:
    """One line per event, for logs and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.best: float | None = None
        self.t0 = time.monotonic()
        self.target = 0
        self.done0 = 0
        self.done = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def started(self, search: Any, target: int, done: int) -> None:
        self.t0 = time.monotonic()
        self.target, self.done0, self.done = target, done, done
        best = [
            t.user_attrs.get("val_acc")
            for t in search.study.get_trials(deepcopy=False)
            if TrialOutcome.of(t) == TrialOutcome.COMPLETE
        ]
        self.best = max((b for b in best if b is not None), default=None)
        self._print(
            f"study {search.study_name!r}: {done}/{target} trials finished, storage in {search.run_dir}"
        )

    def trial_started(self, number: int) -> None:
        self._print(f"trial {number}: started")

    def epoch_done(self, number: int, epoch: int, value: float) -> None:
        self._print(f"trial {number}: epoch {epoch + 1} val_acc={value:.2f}%")

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.t0
        new = self.done - self.done0
        left = self.target - self.done
        eta = elapsed / new * left if new > 0 else None
        return f"elapsed {_fmt_s(elapsed)}" + (f", eta {_fmt_s(eta)}" if eta is not None else "")

    def trial_finished(self, t: FrozenTrial) -> None:
        outcome = TrialOutcome.of(t)
        if outcome.counts:
            self.done += 1
        attrs = metrics_of(t.user_attrs)
        val = attrs.get("val_acc")
        if outcome == TrialOutcome.COMPLETE and val is not None and (self.best is None or val > self.best):
            self.best = val
        detail = f" val_acc={val:.2f}%" if isinstance(val, int | float) else ""
        if "params" in attrs:
            detail += f" params={attrs['params']:,}"
        if t.user_attrs.get("fail_reason"):
            detail += f" reason: {t.user_attrs['fail_reason']}"
        best = f"{self.best:.2f}%" if self.best is not None else "-"
        self._print(
            f"trial {t.number}: {outcome}{detail} | {self.done}/{self.target} done, best {best}, "
            f"{self._eta()}"
        )

    def finished(self, search: Any) -> None:
        self._print(f"search finished ({getattr(search, 'stop_reason', 'done')}), {self._eta()}")


class RichProgress(PlainProgress):
    """A live progress bar: trials done, best so far, elapsed and ETA, the current trial's epoch."""

    def __init__(self) -> None:
        super().__init__()

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}"),
            console=self.console,
            transient=False,
        )
        self.task: Any = None

    def _print(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def started(self, search: Any, target: int, done: int) -> None:
        super().started(search, target, done)
        self.bar.start()
        best = f"{self.best:.2f}%" if self.best is not None else "-"
        self.task = self.bar.add_task("trials", total=target, completed=done, best=best, current="")

    def trial_started(self, number: int) -> None:
        self.bar.update(self.task, current=f"trial {number}: training")

    def epoch_done(self, number: int, epoch: int, value: float) -> None:
        self.bar.update(self.task, current=f"trial {number}: epoch {epoch + 1} val {value:.2f}%")

    def trial_finished(self, t: FrozenTrial) -> None:
        super().trial_finished(t)
        best = f"{self.best:.2f}%" if self.best is not None else "-"
        self.bar.update(self.task, completed=self.done, best=best, current="")

    def finished(self, search: Any) -> None:
        self.bar.stop()
        super().finished(search)


def make_progress(json_mode: bool = False) -> PlainProgress:
    return RichProgress() if sys.stderr.isatty() else PlainProgress()
