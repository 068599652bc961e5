"""Progress bars that suit both a terminal and a log file.

On a terminal a bar is tqdm's, redrawn in place. When stderr is not a terminal (a job scheduler's log file, a pipe),
a redrawn bar would be thousands of carriage-return updates on one line; there the same bar prints a plain line at
its start, at most every LOG_SECONDS, and at its end, each ending in a newline.
"""

import re
import sys
from typing import TextIO

from tqdm.auto import tqdm

LOG_SECONDS = 60.0


# The cursor moves tqdm writes around a bar that is not the first (nested, or closed with leave=False).
CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Lines:
    """A stream for tqdm that turns its redraws into whole lines: carriage returns and cursor moves dropped, blank
    redraws skipped."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = CURSOR_MOVES.sub("", text.replace("\r", "")).strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, **options) -> tqdm:
    """tqdm(iterable, **options), drawn in place on a terminal and as a few plain lines elsewhere."""
    if not options.get("disable") and not sys.stderr.isatty():
        options |= {"file": Lines(sys.stderr), "mininterval": LOG_SECONDS, "ncols": 100, "ascii": True}
    return tqdm(iterable, **options)
