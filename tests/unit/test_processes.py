"""Background processes by pid file (pipelines.core.processes): a pid is only ours while the process that has it is the
one that was started (create time and command line, checked with psutil); anything else is never signalled."""

from __future__ import annotations

import json
import os
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


def _ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2:].split()[19])


def test_a_step_of_the_wall_clock_does_not_disown_a_process(settings: Settings) -> None:
    """Create times move with the wall clock (the VM's clock stepped once and orphaned a bench's services): the
    start time in ticks since boot is the identity, and it does not move."""
    process = _sleeper(settings)
    path = _pid_file(settings, "sleeper")
    record = json.loads(path.read_text())
    assert record["start_ticks"] == _ticks(process.pid)
    path.write_text(json.dumps(record | {"create_time": record["create_time"] - 3600}))

    assert running(settings, "sleeper") == {"pid": process.pid, "port": 4321}
    assert stop_process(settings, "sleeper", timeout_s=10) is True
    assert process.wait(timeout=10) is not None


def test_a_reused_pid_leading_its_own_session_is_never_signalled(settings: Settings,
                                                                 stranger: subprocess.Popen[bytes]) -> None:
    """The recorded process started before the stranger that has its pid now (and the record, from before markers,
    names no marker: only the pid's identity decides)."""
    seen = psutil.Process(stranger.pid)
    record = {"pid": stranger.pid, "port": 4321, "create_time": seen.create_time() - 60,
              "start_ticks": _ticks(stranger.pid) - 6000, "cmdline": seen.cmdline(), "exe": seen.exe()}
    _pid_file(settings, "mail").write_text(json.dumps(record))

    assert running(settings, "mail") is None
    _pid_file(settings, "mail").write_text(json.dumps(record))
    assert stop_process(settings, "mail", timeout_s=1) is False
    assert stranger.poll() is None


def test_stopping_a_slot_whose_leader_was_killed_ends_its_orphaned_workers(settings: Settings) -> None:
    """As an operator found: the slot's supervisor killed with SIGKILL, its worker went on serving outside any
    management. The worker carries the start's marker in its environment: stop ends it."""
    worker = "import os, time; os.setsid(); time.sleep(120)"  # a session of its own, as a BentoML worker's
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(120)"
    leader = start_process(settings, "slot-blue", [sys.executable, "-c", code], 4321)
    deadline = time.monotonic() + 30
    while not psutil.Process(leader.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (worker,) = psutil.Process(leader.pid).children()
    leader.kill()
    leader.wait(timeout=10)
    assert running(settings, "slot-blue") is None and worker.is_running()  # the orphan serves on

    assert stop_process(settings, "slot-blue", timeout_s=10) is True

    worker.wait(timeout=10)
    assert not worker.is_running()
    assert stop_process(settings, "slot-blue") is False


def test_readiness_from_another_process_on_the_port_is_not_the_started_one(settings: Settings) -> None:
    """Something else (this test, standing in for an orphan) answers /readyz on the port: the start fails naming
    it, rather than reporting the new process ready."""
    import http.server
    import threading

    from pipelines.core.processes import free_port, wait_ready

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    process = _sleeper(settings)
    try:
        with pytest.raises(RuntimeError, match=rf"port {port} answers, but not .*pid {process.pid}.*"
                                               rf"also listening: pid {os.getpid()}"):
            wait_ready(f"http://127.0.0.1:{port}", process, timeout_s=30)
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=30)  # without a process to prove: any answer
    finally:
        server.shutdown()
        stop_process(settings, "sleeper", timeout_s=10)


def test_free_ports_come_from_below_the_ephemeral_range_with_their_span_free() -> None:
    """An ephemeral port (what binding port 0 gives) can be taken by any outgoing connection before the service
    that was meant to listen on it starts: a slot failed so with "Address already in use"."""
    import socket

    from pipelines.core.processes import EPHEMERAL_PORTS, LOWEST_PORT, free_port

    first_ephemeral = int(EPHEMERAL_PORTS.read_text().split()[0])
    for _ in range(20):
        port = free_port(3)
        assert LOWEST_PORT <= port and port + 2 < first_ephemeral
        for candidate in (port, port + 1, port + 2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", candidate))
