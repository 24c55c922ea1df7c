"""Progress on stderr: a count, a share and an ETA, for studies and for one long run.

On a terminal the line is redrawn in place; piped (a log file, CI), a full line is written at
most every ``every`` seconds, so a log shows where a long study stands without a flood.
Nothing is shown for work that ends within ``after`` seconds.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO


def duration(seconds: float) -> str:
    """4 s, 1 min 05 s, 2 h 03 min."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """``Progress(total, "comparing", unit="runs")``; ``update(n)`` after n more are done;
    ``close()`` ends the line.  ``total`` may be inf (unknown): then no share and no ETA."""

    def __init__(self, total: float, label: str, unit: str = "runs", stream: IO[str] | None = None,
                 after: float = 1.0, every: float = 10.0, clock=time.monotonic):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.after, self.every, self.clock = after, every, clock
        self.start = clock()
        self.done = 0
        self.failed = 0
        self.last_shown = None
        self.shown = False
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def text(self) -> str:
        elapsed = self.clock() - self.start
        count = f"{self.done:,}" + (f"/{int(self.total):,}" if math.isfinite(self.total) else "")
        parts = [f"{self.label}: {count} {self.unit}"]
        if math.isfinite(self.total) and self.total > 0:
            parts.append(f"{100 * self.done / self.total:.0f}%")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if math.isfinite(self.total) and 0 < self.done < self.total:
            parts.append(f"ETA {duration(elapsed / self.done * (self.total - self.done))}")
        parts.append(f"{duration(elapsed)} elapsed")
        return ", ".join(parts)

    def update(self, n: int = 1, failed: int = 0) -> None:
        self.done += n
        self.failed += failed
        now = self.clock()
        if now - self.start < self.after:
            return
        if self.tty or self.last_shown is None or now - self.last_shown >= self.every:
            self._show(now)

    def _show(self, now: float) -> None:
        try:
            if self.tty:
                self.stream.write("\r\033[K" + self.text())
            else:
                self.stream.write(self.text() + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is not worth failing for
            return
        self.shown = True
        self.last_shown = now

    def close(self) -> None:
        """End the line (a terminal's) with the final count, if anything was shown."""
        if self.shown:
            try:
                self.stream.write(("\r\033[K" if self.tty else "") + self.text() + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
