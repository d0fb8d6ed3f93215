"""The serving bench's load generator plumbing: the wrk script's JSON, non-2xx counting, CPU accounting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from benchmarks import serving as B


@pytest.fixture
def tiny_server() -> Iterator[dict[str, Any]]:
    """An HTTP/1.1 server on a free port answering every third POST with a 503; it records the bodies."""
    seen: dict[str, Any] = {"bodies": [], "types": set(), "failed": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                seen["bodies"].append(body)
                seen["types"].add(self.headers["Content-Type"])
                status = 503 if len(seen["bodies"]) % 3 == 0 else 200
                seen["failed"] += status != 200
            answer = b"[0.25]"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield seen
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_posts_the_body_and_reports_figures_and_non_2xx(tiny_server: dict[str, Any], tmp_path: Path) -> None:
    script, body = tmp_path / "post.lua", tmp_path / "body.json"
    script.write_text(B.WRK_SCRIPT)
    body.write_text(json.dumps({"flights": [{"carrier": "B6"}]}))
    figures = B.run_wrk(str(shutil.which("wrk")), script, tiny_server["url"], body, connections=2, seconds=1,
                        pid=os.getpid())
    assert figures["requests"] > 10 and figures["requests_per_s"] > 10
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert set(figures["errors"]) == {"connect", "read", "write", "timeout"}
    assert set(tiny_server["bodies"]) == {body.read_bytes()} and tiny_server["types"] == {"application/json"}
    # wrk counts the answers it read in time; the server may have sent one or two more as the run ended.
    assert 0 < figures["non_2xx"] <= tiny_server["failed"] <= figures["non_2xx"] + 2
    assert figures["server_cpu_ms_per_request"] >= 0 and figures["wrk_cpu_ms_per_request"] > 0


def test_cpu_of_a_process_tree_includes_its_children() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {busy!r}]); "
                               "time.sleep(30)"], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while (B._tree_cpu_seconds(parent.pid) or 0) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (B._tree_cpu_seconds(parent.pid) or 0) >= 0.5  # the child's busy half second, and the parent's
    finally:
        os.killpg(parent.pid, 9)
        parent.wait()
    assert B._tree_cpu_seconds(None) is None


def test_timed_stages_chain_results_and_collect_times() -> None:
    times: dict[str, list[float]] = {}
    stages: list[B.Stage] = [("double", lambda x: 2 * x), ("plus one", lambda x: x + 1)]
    assert B._timed_stages(stages, 5, times) == 11 and B._timed_stages(stages, 1, times) == 3
    assert list(times) == ["double", "plus one"] and all(len(v) == 2 and min(v) >= 0 for v in times.values())
