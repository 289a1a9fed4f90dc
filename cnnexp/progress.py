"""What a run prints while it trains, by ``verbose`` level (each level adds to the one below):

- 0: nothing per epoch (the model summary and the final test figures still print);
- 1: one summary line per epoch (losses, accuracies, lr, images/s);
- 2: a live bar for the running epoch (images/s, running loss and accuracy, ETA), redrawn in
  place with ``\\r`` -- only when the output is a terminal, so log files and pipes never see it;
- 3: the seed post's lines, ``--- Epoch N ---`` and ``[Step N] Past N steps: ...`` every
  ``log_every`` optimizer steps.

``None`` picks 2 on a terminal and 1 otherwise. Lines go through ``log`` (the logging
setup sends them to the console and to ``cnnexp.log``); the bar is written to the terminal
stream directly and cleared before every line, so the two never interleave.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, TextIO

REDRAW_SECONDS = 0.1  # at most ~10 bar redraws a second


def resolve(verbose: int | None, stream: TextIO | None = None) -> int:
    """The effective level: ``None`` -> 2 on a terminal, 1 otherwise."""
    if verbose is not None:
        return int(verbose)
    return 2 if is_terminal(stream or sys.stdout) else 1


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{max(seconds, 0):.1f}s"


class Progress:
    """Receives the training loop's events and prints what ``verbose`` asks for."""

    def __init__(self, verbose: int | None = 1, log: Callable[[str], None] = print,
                 stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.level = resolve(verbose, self.stream)
        self.log = log
        self.live = self.level >= 2 and is_terminal(self.stream)  # the bar needs a terminal
        self.steps = self.level >= 3
        self._shown = 0  # characters of the bar on screen (0: none)
        self._next = 0.0

    # lines ------------------------------------------------------------------
    def line(self, text: str) -> None:
        self.clear()
        self.log(text)

    def epoch_start(self, epoch: int, epochs: int, n: int) -> None:
        self.epoch, self.epochs, self.n = epoch, epochs, n
        self.t0, self._next = time.perf_counter(), 0.0
        if self.steps:
            self.line(f"--- Epoch {epoch + 1} ---")

    def step_line(self, step: int, steps: int, loss: float, acc: float) -> None:
        if self.steps:
            self.line(f"[Step {step}] Past {steps} steps: Average Loss {loss:.3f} | Accuracy: {round(100 * acc)}%")

    def epoch_end(self, summary: str) -> None:
        if self.level >= 1:
            self.line(summary)
        else:
            self.clear()

    # the bar ----------------------------------------------------------------
    def update(self, done: int, loss_sum: float, correct: int, seen: int, final: bool = False) -> None:
        """Redraw the bar (``done`` of ``n`` images; running sums over ``seen`` images)."""
        now = time.perf_counter()
        if not self.live or (now < self._next and not final):
            return
        self._next = now + REDRAW_SECONDS
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        eta = (self.n - done) / rate if rate > 0 else 0.0
        head = f"Epoch {self.epoch + 1}/{self.epochs} "
        tail = (f" {done:,}/{self.n:,} {rate:,.0f} img/s loss {loss_sum / max(seen, 1):.3f} "
                f"acc {100 * correct / max(seen, 1):.1f}% " + (f"in {_duration(elapsed)}" if final
                                                               else f"ETA {_duration(eta)}"))
        width = shutil.get_terminal_size((80, 24)).columns - 1
        room = width - len(head) - len(tail) - 2
        if room >= 10:
            fill = int(room * done / max(self.n, 1))
            text = f"{head}[{'=' * fill}{'.' * (room - fill)}]{tail}"
        else:
            text = (head + tail)[:width]
        self.stream.write("\r" + text + " " * max(self._shown - len(text), 0))
        self.stream.flush()
        self._shown = len(text)

    def clear(self) -> None:
        """Remove the bar from the screen (before a line is printed)."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
