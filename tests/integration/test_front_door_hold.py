"""The front door holds a slot out of traffic while the keeper ends and restarts it (real HAProxy, a real HTTP
server on the slot's port): no request reaches the slot meanwhile, so none is sent on a connection the ending
worker is closing, and the slot is back in rotation afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from pipelines.core.processes import free_port, stop_process
from pipelines.core.settings import Settings, get_settings
from pipelines.deploy.front_door import FRONT, held_out_of_traffic, slot_health, slot_port, start_front


class _Slot(BaseHTTPRequestHandler):
    seen: list[str] = []

    def _answer(self) -> None:
        _Slot.seen.append(self.path)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *args: Any) -> None:  # quiet
        pass


def _wait_up(settings: Settings) -> None:
    deadline = time.monotonic() + 15
    while slot_health(settings).get("blue") != "UP":
        assert time.monotonic() < deadline, slot_health(settings)
        time.sleep(0.1)


@pytest.fixture
def front(home: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("SERVICE_PORT", str(free_port(span=3)))
    settings = get_settings()
    server = ThreadingHTTPServer(("127.0.0.1", slot_port(settings, "blue")), _Slot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start_front(settings, "blue")
    try:
        _wait_up(settings)
        yield settings
    finally:
        stop_process(settings, FRONT)
        server.shutdown()


def test_a_held_slot_gets_no_request_and_comes_back(front: Settings) -> None:
    url = f"http://127.0.0.1:{front.service_port}/predict"
    assert requests.post(url, json={}, timeout=5).status_code == 200
    with held_out_of_traffic(front, "blue"):
        assert slot_health(front)["blue"] == "MAINT"
        seen = len(_Slot.seen)
        answers = [requests.post(url, json={}, timeout=5).status_code for _ in range(5)]
        assert answers == [503] * 5  # the front door answers; the slot gets nothing
        assert [path for path in _Slot.seen[seen:] if path == "/predict"] == []
    _wait_up(front)  # back in rotation: taken back at once (a check may be in flight: it settles within seconds)
    assert requests.post(url, json={}, timeout=5).status_code == 200


def test_holding_a_slot_without_a_front_door_does_nothing(settings: Settings) -> None:
    with held_out_of_traffic(settings, "blue"):  # no HAProxy socket: the keeper restarts the slot all the same
        pass
