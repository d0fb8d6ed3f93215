"""``make bench`` prints its tables and little else: what libraries and child processes write goes to the log."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from benchmarks.console import quiet_console, say


def test_only_the_bench_s_own_lines_reach_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "bench" / "bench.log"
    with quiet_console(log_file):
        print("a library's print")  # noqa: T201 - the noise under test
        warnings.warn("a library's warning", DeprecationWarning, stacklevel=1)
        logging.getLogger("feast").warning("a library's log line")
        subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
        say("| the table |")
    say("after the block")
    terminal = capfd.readouterr()
    assert "| the table |" in terminal.out and "after the block" in terminal.out
    assert "library" not in terminal.out + terminal.err and "child" not in terminal.out + terminal.err
    logged = log_file.read_text()
    assert "a library's print" in logged and "a child process" in logged and "| the table |" not in logged
