"""Progress bars in a log file: a few whole lines, no carriage returns (docs/architecture.md, genkit.progress)."""

import contextlib
import io

import tqdm.std

from genkit import progress as module
from genkit.progress import progress


def test_a_bar_writes_a_few_plain_lines_when_stderr_is_not_a_terminal(monkeypatch):
    stream = io.StringIO()  # not a terminal: isatty() is False
    clock = iter(range(0, 10_000, 7))  # seconds, 7 a tick: 1000 updates span about 7000 s
    monkeypatch.setattr(tqdm.std, "time", lambda: float(next(clock)))  # the clock each bar reads
    with contextlib.redirect_stderr(stream), progress(total=1000, desc="sampling", unit="sample") as bar:
        for _ in range(1000):
            bar.update(1)
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert lines[0].startswith("sampling:") and "1000/1000" in lines[-1]
    # A line at the start, at most one a LOG_SECONDS of the 7000 s, and the last: not one an update.
    assert 3 <= len(lines) <= 7000 / module.LOG_SECONDS + 3, len(lines)


def test_a_disabled_bar_writes_nothing():
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        for _ in progress(range(100), desc="quiet", disable=True):
            pass
    assert stream.getvalue() == ""


def test_nested_bars_leave_no_cursor_moves_in_a_log():
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream), progress(range(2), desc="outer") as outer:
        for _ in outer:
            for _ in progress(range(3), desc="inner", leave=False, position=1):
                pass
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert all(line.startswith(("outer:", "inner:")) for line in text.splitlines()), text
