"""Where ``make bench`` writes: its tables to the terminal, everything else (library warnings, Feast's coloured
materialization progress, the steps' logs, the servers it starts) to a log file, unless ``--verbose``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

_console: TextIO | None = None  # the terminal while quiet_console holds the process's stdout and stderr


def say(text: str = "") -> None:
    """A line of the bench's own output: to the terminal, whatever else is redirected."""
    print(text, file=_console or sys.stdout, flush=True)  # noqa: T201 - the command's output


@contextmanager
def quiet_console(log_file: Path) -> Iterator[None]:
    """Send file descriptors 1 and 2 (Python's prints and warnings, the logs, C libraries, child processes) to
    ``log_file`` while the block runs; ``say`` still reaches the terminal."""
    global _console
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)  # the terminal, restored after
    console = os.fdopen(os.dup(1), "w", buffering=1)
    streams = sys.stdout, sys.stderr
    with log_file.open("a", buffering=1) as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        sys.stdout = sys.stderr = sink  # Python's own writers too, wherever sys.stdout pointed before
        _console = console
        try:
            yield
        finally:
            sink.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            _console = None
            console.close()
