"""The search's progress bar on a terminal: trials done of the total, elapsed time, about how long is left and the
best so far. Where no terminal is attached (a log file, a pipe, a Ray job) there is no bar, only the lines."""

from __future__ import annotations

import sys
import time
from typing import IO

BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} trials |{bar}| {elapsed} elapsed{postfix}"


class ProgressBar:
    """A tqdm bar on ``stream`` (stderr) when it is a terminal; lines are printed above it, on stdout."""

    def __init__(self, total: int, done: int = 0, stream: IO[str] | None = None, min_interval: float = 1.0):
        stream = sys.stderr if stream is None else stream
        self.bar = None
        self.min_interval = min_interval
        self._drawn = 0.0
        if stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                desc="[peft-search]",
                file=stream,
                bar_format=BAR_FORMAT,
                dynamic_ncols=True,
                leave=False,
                mininterval=min_interval,
            )

    def say(self, line: str) -> None:
        """A line of the search's output, printed above the bar (or alone, without one)."""
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.write(line, file=sys.stdout)

    def update(self, done: int, postfix: str) -> None:
        """``done`` trials ended; ``postfix`` (time left, best so far) follows the elapsed time."""
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(postfix, refresh=False)
            self._draw()

    def tick(self) -> None:
        """Redraw the elapsed time (at most once per ``min_interval``); Tune calls it every step of its loop."""
        if self.bar is not None and time.monotonic() - self._drawn >= self.min_interval:
            self._draw()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
