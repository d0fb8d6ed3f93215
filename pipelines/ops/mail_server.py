"""The embedded profile's mail server: a real SMTP server on localhost (aiosmtpd) that keeps every message it
receives as one ``.eml`` file in ``$PIPELINE_HOME/mail/``.

Airflow's ``smtp_default`` connection points at it (``smtp_connection``, set by
``pipelines.ops.airflow_config.airflow_env``), so the owners' emails go through the same SMTP provider code as in
production, where the connection names the company relay instead. The handler is aiosmtpd's own ``Message``
handler, which parses each message and adds the envelope as headers (``X-Peer``, ``X-MailFrom``, ``X-RcptTo``: Bcc
recipients are in no other header); ``FolderHandler`` only writes it out, headers unfolded and CRLF line ends as on
the wire, under a temporary name that is then renamed, with file names that sort by arrival. (aiosmtpd's
``Mailbox`` handler would write a Maildir instead: files without ``.eml`` under ``new/``, named so that they do not
sort by arrival.)

``start_mail_server`` runs it as the background process ``mail`` of the home (pipelines.core.processes);
``python -m pipelines mail-server`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import email.message
import email.policy
import json
import logging
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.handlers import Message

from pipelines.core.processes import running, start_process, stop_process
from pipelines.core.settings import Settings, get_settings

log = logging.getLogger("pipelines.ops.mail_server")  # the same name when run as __main__

PROCESS = "mail"
# Base64 makes an attachment a third larger; the emails stay far below this (the monitoring one, chart included,
# is tens of kB: its report is named, not attached).
DATA_SIZE_LIMIT = 64 * 1024 * 1024


class FolderHandler(Message):
    """aiosmtpd handler: each message received becomes one ``.eml`` file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self._last_ns = 0
        self._lock = threading.Lock()

    def _name(self) -> str:
        with self._lock:  # strictly increasing within the process, even if the clock steps back
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            ns = self._last_ns
        moment = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
        return f"{moment:%Y%m%dT%H%M%S}.{ns % 1_000_000_000:09d}Z-{os.getpid()}.eml"

    def handle_message(self, message: email.message.Message) -> None:
        """Called by ``Message.handle_DATA`` with the parsed message, envelope headers added."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self._name()
        temporary = self.folder / f".{name}.tmp"
        with temporary.open("wb") as sink:
            # maxheaderlen=0: headers as received, not refolded; mangle_from_=False: no ">From " in bodies.
            BytesGenerator(sink, mangle_from_=False, maxheaderlen=0).flatten(message, linesep="\r\n")
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, self.folder / name)
        log.info("received a message from %s for %s -> %s", message["X-MailFrom"], message["X-RcptTo"], name)


def serve(host: str, port: int, folder: Path, stop: threading.Event | None = None) -> None:
    """Run the server in this process until SIGTERM or SIGINT (or ``stop`` is set)."""
    from aiosmtpd.controller import Controller

    stop = stop or threading.Event()
    controller = Controller(FolderHandler(folder), hostname=host, port=port, data_size_limit=DATA_SIZE_LIMIT,
                            enable_SMTPUTF8=True, ready_timeout=30,
                            server_hostname="localhost")  # not socket.getfqdn(): no DNS lookup at start
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    controller.start()
    log.info("mail server on %s:%d, messages into %s", host, port, folder)
    try:
        stop.wait()
    finally:
        controller.stop()
        log.info("mail server on %s:%d stopped", host, port)


def _accepts(host: str, port: int) -> bool:
    try:
        with smtplib.SMTP(host, port, timeout=5) as client:
            return client.noop()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


def wait_accepting(host: str, port: int, process: subprocess.Popen[bytes] | None = None,
                   timeout_s: float = 30) -> None:
    """Block until an SMTP client gets a greeting and a 250 to NOOP from ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the mail server exited with code {process.returncode}")
        if _accepts(host, port):
            return
        time.sleep(0.1)
    raise TimeoutError(f"the mail server at {host}:{port} did not accept connections within {timeout_s:.0f}s")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def start_mail_server(settings: Settings | None = None, timeout_s: float = 30) -> dict[str, Any]:
    """Make sure this home's mail server runs on ``smtp_host:smtp_port`` (started in the background when it does
    not) and accepts connections. Refuses a port another program holds: mail sent there would not land here."""
    settings = settings or get_settings()
    host, port, folder = settings.smtp_host, settings.smtp_port, settings.mail_folder
    described = {"host": host, "port": port, "folder": str(folder),
                 "log": str(settings.pipeline_home / "logs" / f"{PROCESS}.log")}
    current = running(settings, PROCESS)
    if current is not None and current["port"] == port and _accepts(host, port):
        return described | {"pid": current["pid"], "started": False}
    stop_process(settings, PROCESS)
    if not _port_free(host, port):
        raise RuntimeError(f"{host}:{port} is in use by another program; set SMTP_PORT to a free port for this "
                           "home's mail server")
    command = [sys.executable, "-m", "pipelines.ops.mail_server", "--host", host, "--port", str(port),
               "--folder", str(folder)]
    process = start_process(settings, PROCESS, command, port)
    try:
        wait_accepting(host, port, process, timeout_s)
    except Exception:
        stop_process(settings, PROCESS)
        raise
    log.info("mail server ready on %s:%d (pid %d), messages in %s", host, port, process.pid, folder)
    return described | {"pid": process.pid, "started": True}


def stop_mail_server(settings: Settings | None = None) -> bool:
    """Stop this home's mail server; False when it was not running. The messages stay."""
    return stop_process(settings or get_settings(), PROCESS)


def message_files(settings: Settings | None = None) -> list[Path]:
    """The received messages' files, oldest first."""
    folder = (settings or get_settings()).mail_folder
    return sorted(folder.glob("[!.]*.eml")) if folder.is_dir() else []


def read_message(path: Path) -> EmailMessage:
    with path.open("rb") as source:
        message = BytesParser(policy=email.policy.default).parse(source)
    if not isinstance(message, EmailMessage):  # policy.default parses to EmailMessage
        raise TypeError(f"{path} did not parse to an EmailMessage")
    return message


def read_messages(settings: Settings | None = None) -> list[EmailMessage]:
    """Every message the home's mail server received, oldest first."""
    return [read_message(path) for path in message_files(settings)]


def smtp_connection(settings: Settings | None = None) -> str:
    """Airflow's ``smtp_default`` connection to this mail server, in the JSON form of ``AIRFLOW_CONN_*``: plain SMTP
    (the provider's ``disable_ssl`` and ``disable_tls`` extras: no SMTPS, no STARTTLS), no login (the hook logs in
    only with a login and a password), the sender from ``mail_from``."""
    settings = settings or get_settings()
    return json.dumps({
        "conn_type": "smtp", "host": settings.smtp_host, "port": settings.smtp_port,
        "extra": {"from_email": settings.mail_from, "disable_ssl": True, "disable_tls": True, "timeout": 30,
                  "retry_limit": 2},
    })


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m pipelines.ops.mail_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=settings.smtp_host)
    parser.add_argument("--port", type=int, default=settings.smtp_port)
    parser.add_argument("--folder", type=Path, default=settings.mail_folder)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command log
    serve(args.host, args.port, args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
