"""The prediction log's write-ahead journal: every row the service answers is appended to a local file before the
answer goes out, so a slot killed outright (SIGKILL, the OOM killer) loses no prediction it had buffered for the
lake; the next process to look (the slot restarted, or the other slot) writes the rows a dead process left.

A journal is a folder of segments, ``segment-<UTC time>-<random>.jsonl``, one JSON object per line. A process owns
the segment it appends to and each segment whose batch it is still writing, holding an exclusive ``flock`` on it;
the kernel drops the lock when the process dies, however it dies, which is how an orphan is told from a segment in
use. A segment is deleted once its batch is in the lake (or the spool). Appends are flushed to the operating system
(a killed process loses nothing), not fsynced (a power cut may lose the last seconds: an fsync a request would cost
milliseconds).

The batch of a segment is written under keys named after the segment, so writing an orphan a second time (a
process that died after its batch reached the lake, before it deleted the segment) rewrites the same objects:
nothing is written twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "segment-", ".jsonl"


@dataclass
class Segment:
    """One journal file, open and locked by this process: ``name`` also names its batch's objects in the lake."""

    name: str
    path: Path
    file: IO[str]


class Journal:
    """Appends rows to the current segment; ``rotate`` hands over the rows' segment when their batch is taken."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._current: Segment | None = None

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Rows of one answer, on the operating system's side before the answer goes out (call under the
        prediction log's lock, so segments follow the batches)."""
        if self._current is None:
            self._current = self._open()
        self._current.file.write("".join(json.dumps(row, separators=(",", ":"), default=_encode) + "\n"
                                         for row in rows))
        self._current.file.flush()

    def rotate(self) -> Segment | None:
        """The segment holding the rows appended so far (None when there were none); the next rows start a new one.
        It stays locked until ``done``."""
        segment, self._current = self._current, None
        return segment

    def done(self, segment: Segment) -> None:
        """The segment's batch is in the lake or the spool: forget it."""
        segment.path.unlink(missing_ok=True)
        segment.file.close()  # closing drops the lock

    def release(self, segment: Segment) -> None:
        """Give the segment up without deleting it: its rows are written by whoever takes it next."""
        segment.file.close()

    def take_orphans(self) -> list[tuple[Segment, list[dict[str, Any]]]]:
        """Segments no live process holds (left by one that died), locked for this process, with their rows. A last
        line cut off by the kill is skipped: its request was never answered."""
        taken = []
        for path in sorted(self.folder.glob(f"{PREFIX}*{SUFFIX}")):
            if self._current is not None and path == self._current.path:
                continue
            try:
                handle = path.open("r+", encoding="utf-8")
            except FileNotFoundError:  # written and deleted by its owner meanwhile
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process holds it
                handle.close()
                continue
            if not path.exists():  # deleted between our open and our lock: its owner finished it
                handle.close()
                continue
            taken.append((Segment(path.name[len(PREFIX):-len(SUFFIX)], path, handle), _rows(handle, path)))
        return taken

    def _open(self) -> Segment:
        """A new segment, locked before it has its name: another process's ``take_orphans`` never sees it unlocked."""
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        path = self.folder / f"{PREFIX}{name}{SUFFIX}"
        opening = self.folder / f".opening-{name}"
        handle = opening.open("a", encoding="utf-8")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        opening.rename(path)  # the lock is on the file, whatever its name
        return Segment(name, path, handle)


def _encode(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"the journal cannot write {type(value).__name__}")


def _rows(handle: IO[str], path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(handle.read().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("prediction journal: %s line %d is cut off (its process died writing it); skipped",
                        path.name, number)
            continue
        if "served_at" in row:
            row["served_at"] = datetime.fromisoformat(row["served_at"])
        rows.append(row)
    return rows

