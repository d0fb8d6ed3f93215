"""Background processes by pid file (pipelines.core.processes): a pid is only ours while the process that has it is the
one that was started (create time and command line, checked with psutil); anything else is never signalled."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipelines.core.processes import running, start_process, stop_process
from pipelines.core.settings import Settings


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process this home did not start (``sleep 60``), as another program that got a reused pid."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def _pid_file(settings: Settings, name: str) -> Path:
    path = settings.pipeline_home / "run" / f"{name}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _sleeper(settings: Settings, name: str = "sleeper") -> subprocess.Popen[bytes]:
    return start_process(settings, name, [sys.executable, "-c", "import time; time.sleep(60)"], 4321)


def test_start_records_the_identity_and_stop_stops(settings: Settings) -> None:
    process = _sleeper(settings)
    record = json.loads(_pid_file(settings, "sleeper").read_text())
    seen = psutil.Process(process.pid)
    assert record["pid"] == process.pid and record["port"] == 4321
    assert record["create_time"] == pytest.approx(seen.create_time(), abs=1.0)
    assert record["cmdline"] == [sys.executable, "-c", "import time; time.sleep(60)"] == seen.cmdline()
    assert running(settings, "sleeper") == {"pid": process.pid, "port": 4321}

    assert stop_process(settings, "sleeper", timeout_s=10) is True

    assert not seen.is_running()  # ended (and reaped by the stop: it was this process's child)
    assert running(settings, "sleeper") is None
    assert not _pid_file(settings, "sleeper").exists()
    assert stop_process(settings, "sleeper") is False


def test_a_process_that_rewrote_its_title_is_still_ours(settings: Settings) -> None:
    """Airflow's API server and Celery workers set their process title: the executable still identifies them."""
    pytest.importorskip("setproctitle")  # installed with Airflow, the reason for this case
    code = "import setproctitle, time; setproctitle.setproctitle('airflow api_server -- port:1'); time.sleep(60)"
    process = start_process(settings, "titled", [sys.executable, "-c", code], 1)
    try:
        recorded = json.loads(_pid_file(settings, "titled").read_text())["cmdline"]
        deadline = time.monotonic() + 30
        while psutil.Process(process.pid).cmdline() == recorded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert psutil.Process(process.pid).cmdline() != recorded
        assert running(settings, "titled") == {"pid": process.pid, "port": 1}
        seen = psutil.Process(process.pid)
        assert stop_process(settings, "titled", timeout_s=10) is True
        assert not seen.is_running()
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.parametrize("mismatch", ["create_time", "command"])
def test_a_pid_reused_by_another_program_is_not_running_and_is_never_signalled(
    settings: Settings, stranger: subprocess.Popen[bytes], mismatch: str
) -> None:
    seen = psutil.Process(stranger.pid)
    record = {"pid": stranger.pid, "port": 4321, "create_time": seen.create_time(), "cmdline": seen.cmdline(),
              "exe": seen.exe()}
    if mismatch == "create_time":  # the process this home started ended an hour ago; sleep got its pid since
        record["create_time"] -= 3600
    else:  # a start time that matches, but another program
        record |= {"cmdline": [sys.executable, "-m", "pipelines.ops.mail_server"], "exe": sys.executable}
    path = _pid_file(settings, "mail")
    path.write_text(json.dumps(record))

    assert running(settings, "mail") is None
    assert not path.exists()  # stale: removed
    path.write_text(json.dumps(record))
    assert stop_process(settings, "mail", timeout_s=1) is False

    assert stranger.poll() is None and seen.is_running() and seen.status() != psutil.STATUS_ZOMBIE
    assert not path.exists()


def test_an_old_format_pid_file_is_stale_and_never_signalled(settings: Settings,
                                                             stranger: subprocess.Popen[bytes]) -> None:
    """``pid port`` records no identity: the pid may be anyone's by now."""
    path = _pid_file(settings, "mail")
    path.write_text(f"{stranger.pid} 8025\n")

    assert running(settings, "mail") is None
    assert not path.exists()
    path.write_text(f"{stranger.pid} 8025\n")
    assert stop_process(settings, "mail", timeout_s=1) is False

    assert stranger.poll() is None
    assert not path.exists()


def test_a_process_that_ended_is_not_running(settings: Settings) -> None:
    process = _sleeper(settings)
    process.kill()
    process.wait(timeout=10)

    assert running(settings, "sleeper") is None
    assert stop_process(settings, "sleeper") is False
