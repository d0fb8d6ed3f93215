"""The embedded mail server's handler (pipelines.ops.mail_server.FolderHandler, aiosmtpd's ``Message`` handler),
served in this process on a free port: what one received message looks like as a ``.eml`` file."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.handlers import Message

from pipelines.ops.mail_server import FolderHandler, read_message, serve, wait_accepting


@pytest.fixture
def server(tmp_path: Path, free_port: Callable[..., int]) -> Iterator[tuple[int, Path]]:
    port, folder = free_port(), tmp_path / "mail"
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=("127.0.0.1", port, folder, stop), daemon=True)
    thread.start()
    try:
        wait_accepting("127.0.0.1", port, timeout_s=30)
        yield port, folder
    finally:
        stop.set()
        thread.join(timeout=30)


def test_the_handler_is_aiosmtpds_message_handler() -> None:
    assert issubclass(FolderHandler, Message)


def test_one_eml_file_per_message_with_the_envelope_recipients(server: tuple[int, Path]) -> None:
    port, folder = server
    subject = "[flight_delay] a subject long enough that a generator folding at 78 characters would split it in two"
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "pipeline@example.com", "owner@example.com", subject
    message.set_content("Verspätung: 17 Minuten\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(message, to_addrs=["owner@example.com", "hidden@example.com"])  # the second is a Bcc
        client.sendmail("a@example.com", ["b@example.com"], "Subject: second\r\n\r\nbody\r\n")

    files = sorted(folder.iterdir())
    assert [path.suffix for path in files] == [".eml", ".eml"] and not [p for p in files if p.name.startswith(".")]

    first, second = (read_message(path) for path in files)
    assert first["X-RcptTo"] == "owner@example.com, hidden@example.com"
    assert first["X-MailFrom"] == "pipeline@example.com"
    assert first["Subject"] == subject and first.get_content() == "Verspätung: 17 Minuten\n"
    assert second["Subject"] == "second" and second["X-RcptTo"] == "b@example.com"
    # The file is what was sent (headers as folded by the sender, CRLF line ends, the 8-bit body), with the envelope
    # headers after the message's own.
    head, _, body = message.as_bytes(policy=message.policy.clone(linesep="\r\n")).partition(b"\r\n\r\n")
    raw_head, _, raw_body = files[0].read_bytes().partition(b"\r\n\r\n")
    assert raw_body == body
    assert raw_head.startswith(head + b"\r\n")
    assert raw_head.removeprefix(head + b"\r\n").split(b"\r\n")[1:] == [
        b"X-MailFrom: pipeline@example.com", b"X-RcptTo: owner@example.com, hidden@example.com"]
