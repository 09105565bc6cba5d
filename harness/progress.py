"""Progress of long work, on stderr (stdout and ``--json`` stay clean).

On a terminal: a rich bar. Off a terminal (CI logs, pipes, files): a plain line about every ``interval``
seconds (default 15; ``$HARNESS_PROGRESS_INTERVAL``) saying what, how far, how fast and how long is left::

    minilm: nfcorpus corpus: 1216/3633 texts (33%), 4.1 texts/s, 4m57s elapsed, ~9m50s left

and a last line when it ends, if it printed any. A line is printed when work advances past the interval, and
also while a single step runs long (a watchdog thread), so a log never goes quiet for minutes. Work that
ends within the interval prints nothing.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Literal, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True)
INTERVAL_ENV = "HARNESS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 15.0


def on_terminal() -> bool:
    """Whether stderr is a terminal a person watches: bars there, plain lines elsewhere. ``isatty`` and not rich's
    ``is_terminal``, which ``FORCE_COLOR`` (set by some CI systems) turns on in a log."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def default_interval() -> float:
    try:
        return max(float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class PlainProgress:
    """Counts work and prints a status line at most every ``interval`` s while it advances, and from a watchdog
    thread when one step outlasts the interval. ``advance(n)`` is cheap (a clock read)."""

    def __init__(self, description: str, total: int | None, interval: float, stream: TextIO | None = None,
                 unit: str = "", clock: Callable[[], float] = time.monotonic):
        self.description, self.total, self.interval, self.unit = description, total, interval, unit
        self.stream, self.clock = stream, clock
        self.n = 0
        self.start = self.last = clock()
        self.printed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def __enter__(self) -> Callable[[int], None]:
        if self.interval > 0:
            self._watchdog = threading.Thread(target=self._watch, name="harness-progress", daemon=True)
            self._watchdog.start()
        return self.advance

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
        if self.printed:
            self.emit(done=exc_type is None)
        return False

    def advance(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.interval:
            self.emit()

    def _watch(self) -> None:
        while not self._stop.wait(max(self.interval - (self.clock() - self.last), 0.001)):
            if self.clock() - self.last >= self.interval:
                self.emit()

    def line(self, done: bool | None = None) -> str:
        elapsed = self.clock() - self.start
        unit = f" {self.unit}" if self.unit else ""
        how_far = f"{self.n}/{self.total}{unit}" if self.total else f"{self.n}{unit}"
        if self.total:
            how_far += f" ({100 * self.n / self.total:.0f}%)"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        one = self.unit[:-1] if self.unit.endswith("s") else (self.unit or "item")  # "s per epoch", not "per epochs"
        speed = "none done yet" if not self.n else f"{rate:.1f}{unit}/s" if rate >= 0.1 else f"{elapsed / self.n:.1f} s per {one}"
        if done is True:
            return f"{self.description}: done, {how_far} in {_duration(elapsed)}, {speed}"
        if done is False:
            return f"{self.description}: stopped at {how_far} after {_duration(elapsed)}"
        left = f"~{_duration((self.total - self.n) / rate)} left" if self.total and rate > 0 else "time left unknown"
        return f"{self.description}: {how_far}, {speed}, {_duration(elapsed)} elapsed, {left}"

    def emit(self, done: bool | None = None) -> None:
        with self._lock:
            text = self.line(done)
            self.last = self.clock()
            self.printed += 1
            stream = self.stream or sys.stderr
            stream.write(text + "\n")  # one write: lines from parallel worker processes do not interleave
            stream.flush()


@contextmanager
def progress_bar(description: str, total: int, *, unit: str = "", interval: float | None = None,
                 stream: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """``with progress_bar("encoding", n) as advance: advance(k)``.

    A rich bar on a terminal; elsewhere (or when ``stream`` is given) plain lines every ``interval`` seconds
    (default ``$HARNESS_PROGRESS_INTERVAL`` or 15) to ``stream`` (default stderr)."""
    if stream is None and on_terminal():
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=stderr, transient=True) as progress:
            task = progress.add_task(description, total=total)

            def step(n: int = 1) -> None:
                progress.advance(task, n)

            yield step
        return
    with PlainProgress(description, total, default_interval() if interval is None else interval, stream, unit) as advance:
        yield advance
