"""Files that a crash must not leave half-written, and a lock that processes share."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_held = threading.local()  # the lock files this thread holds, with how deep


class LockHeld(TimeoutError):
    """Another process held the lock for longer than the caller would wait."""


def write_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a reader, or whatever runs after a crash, finds the old content or the
    new, never a part: a temporary file in the same folder (one filesystem), renamed over ``path``. ``durable``:
    the file and then its folder are fsynced first, so the new content survives a crash of the machine too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def create_exclusively(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` only if nothing is there: False, and nothing changed, when something is. The bytes
    are written and fsynced under a temporary name first and then hard-linked to ``path`` (a link never replaces),
    so whoever reads ``path`` finds the whole content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


@contextmanager
def file_lock(path: Path, timeout_s: float, poll_s: float = 0.2) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (``flock``: shared by every process on the machine, released by the
    kernel if the holder dies). Re-entrant within a thread. Waits up to ``timeout_s`` for another holder, then
    raises ``LockHeld`` naming its pid (written into the file by whoever holds it)."""
    depths: dict[str, int] = _held.__dict__.setdefault("depths", {})
    key = str(path.resolve())
    if depths.get(key):
        depths[key] += 1
        try:
            yield
        finally:
            depths[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise LockHeld(f"{path} is held by process {holder} (waited {timeout_s:.0f}s)") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        depths[key] = 1
        try:
            yield
        finally:
            depths.pop(key, None)
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
