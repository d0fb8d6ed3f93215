"""What the alert tests share: a real webhook receiver (an HTTP server on 127.0.0.1, a free port, in a thread) that
records every post and answers as told, and the context Airflow hands an ``on_failure_callback``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

from pipelines.core.processes import free_port


@dataclass(frozen=True)
class Answer:
    """One scripted answer: wait ``delay_s``, then ``status`` with ``body`` (and ``headers``)."""

    status: int = 200
    body: bytes = b"ok"
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Every post it got, in order; ``answers`` are used one per post, then 200 ``ok`` (Slack's answer)."""

    url: str
    posts: list[Post] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [post.json["text"] for post in self.posts]


@contextmanager
def webhook_receiver(*answers: Answer, path: str = "/services/T000/B000/secret") -> Iterator[Receiver]:
    """A receiver listening until the block ends; its ``url`` ends in ``path`` (a Slack-like secret path)."""
    port = free_port()
    receiver = Receiver(url=f"http://127.0.0.1:{port}{path}", answers=list(answers))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                receiver.posts.append(Post(self.path, dict(self.headers.items()), body))
                answer = receiver.answers.pop(0) if receiver.answers else Answer()
            time.sleep(answer.delay_s)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except OSError:  # the client gave up waiting (a timeout test)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def failure_context(error: BaseException | None, *, dag_id: str = "flights_ingest", task_id: str = "check_quarantine",
                    logical_date: datetime = datetime(2013, 12, 31, 5, tzinfo=UTC), try_number: int = 2,
                    log_url: str = "http://127.0.0.1:8080/dags/flights_ingest/runs/r/tasks/t?try_number=2"
                    ) -> dict[str, Any]:
    """What Airflow passes an ``on_failure_callback``, as much of it as ``notify_owners_on_failure`` reads."""
    run_id = f"scheduled__{logical_date.isoformat()}"
    ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=try_number, log_url=log_url)
    return {"ti": ti, "exception": error, "logical_date": logical_date, "dag_run": SimpleNamespace(run_after=None)}
