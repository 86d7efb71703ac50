"""Live progress on the console for long work: counted work (a tqdm bar on a terminal, one line
per step otherwise, so a log file stays readable) and a federated run's rounds and phases, read
from its `metrics.jsonl` while Flower runs it in other processes."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def eta(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left at the rate so far; None before the first step."""
    if done <= 0 or total <= done:
        return None if done <= 0 else 0.0
    return elapsed / done * (total - done)


class Counter:
    """`done / total` of one piece of work. On a terminal a tqdm bar; elsewhere one line per
    `every`-th step and the last, each with elapsed time and ETA."""

    def __init__(self, total: int, label: str, unit: str, *, stream: TextIO | None = None, every: int | None = None,
                 enabled: bool = True):
        self.total, self.label, self.unit, self.done = int(total), label, unit, 0
        self.stream = stream if stream is not None else sys.stderr
        self.every = every or max(1, self.total // 20)  # about 20 lines for the whole piece of work
        self.started = time.monotonic()
        self.enabled = enabled and self.total > 0
        self.bar = None
        if self.enabled and _is_tty(self.stream):
            try:
                from tqdm.auto import tqdm
            except ImportError:  # the project depends on tqdm; a stripped install still gets lines
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=self.total, desc=label, unit=unit, file=self.stream)

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        before, self.done = self.done, min(self.total, self.done + n)
        if self.bar is not None:
            self.bar.update(self.done - before)
        elif self.done == self.total or self.done // self.every > before // self.every:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        left = eta(self.done, self.total, elapsed)
        tail = f", ETA {duration(left)}" if left else ""
        return (f"[{self.label}] {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f} %), "
                f"elapsed {duration(elapsed)}{tail}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---- a federated run, from its metrics.jsonl ---------------------------------------------------
PHASE_NAMES = {"normative": "normative model", "prior_residuals": "prior residuals", "voxelwise": "voxel-wise baseline",
               "survival": "survival model"}


def round_line(entry: dict, rounds: int, sites: int, elapsed: float, rounds_done_here: int,
               first_round: int) -> str:
    """One DAE round: round, loss, sites answered, elapsed and the ETA of the remaining rounds at
    this run's own rate (a resumed run counts only the rounds it trained)."""
    loss = entry.get("train_loss_mean")
    loss_text = f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "loss withheld (private sites)"
    answered = len(entry.get("sites") or [])
    left = eta(rounds_done_here, rounds - first_round + 1, elapsed)
    tail = f", ETA of training {duration(left)}" if left else ""
    return (f"[federation] round {entry.get('round')}/{rounds}: {loss_text}, {answered}/{sites} sites answered, "
            f"elapsed {duration(elapsed)}{tail}")


def phase_line(entry: dict, sites: int, elapsed: float) -> str:
    name = PHASE_NAMES.get(str(entry.get("phase")), str(entry.get("phase")))
    answered = len(entry.get("sites") or [])
    extra = ""
    if isinstance(entry.get("n_controls"), (int, float)):
        extra = f", {entry['n_controls']:.0f} controls"
    return f"[federation] {name} done: {answered}/{sites} sites answered{extra}, elapsed {duration(elapsed)}"


class RunWatcher:
    """Prints each new `metrics.jsonl` entry of `run_dir` as a progress line while a run goes on
    elsewhere (a thread polling the file, which the server replaces atomically)."""

    def __init__(self, run_dir: str | Path, rounds: int, sites: int, log: Callable[[str], None] = print,
                 interval: float = 2.0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.rounds, self.sites, self.log, self.interval = rounds, sites, log, interval
        self.seen = len(self._entries())  # a resumed run's earlier entries are not news
        self.started = time.monotonic()
        self.rounds_here = 0
        self.first_round: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ndae-progress", daemon=True)

    def _entries(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except OSError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return entries

    def poll(self) -> None:
        entries = self._entries()
        if len(entries) < self.seen:  # truncated (a resumed run drops rounds after its checkpoint)
            self.seen = len(entries)
        for entry in entries[self.seen:]:
            elapsed = time.monotonic() - self.started
            if entry.get("phase") == "dae":
                self.rounds_here += 1
                if self.first_round is None:
                    self.first_round = int(entry.get("round") or 1)
                self.log(round_line(entry, self.rounds, self.sites, elapsed, self.rounds_here, self.first_round))
            else:
                self.log(phase_line(entry, self.sites, elapsed))
        self.seen = len(entries)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "RunWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # what came in since the last poll
