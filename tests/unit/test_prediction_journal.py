"""The prediction log's journal: a process killed outright (SIGKILL: no ``flush``, no ``finally``) loses none of
the rows it answered and had not yet written; whoever starts next writes them, once. Real processes, a real local
lake and real file locks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import date, datetime
from pathlib import Path

from pipelines.core.lake import LocalLake
from pipelines.serving.journal import Journal
from pipelines.serving.prediction_log import PredictionLog, read_prediction_log

DAY = date(2013, 7, 4)


def _rows(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"request_id": f"r{i}", "served_at": datetime(2026, 12, 4, 6, 0, i % 60), "flight_date": DAY.isoformat(),
             "flight_id": f"f{i}", "probability": 0.25} for i in range(start, start + n)]


def _logged(lake: LocalLake) -> list[str]:
    frame = read_prediction_log(lake, DAY)
    return sorted(frame["request_id"]) if len(frame) else []


def _killed_after_answering(tmp_path: Path, rows: int) -> None:
    """A process that buffers ``rows`` (a batch far from due, the ticker far from its age) and is SIGKILLed."""
    script = textwrap.dedent(f"""
        import os, signal
        from datetime import datetime
        from pathlib import Path
        from pipelines.core.lake import LocalLake
        from pipelines.serving.prediction_log import PredictionLog
        log = PredictionLog(LocalLake({str(tmp_path / "lake")!r}), batch_rows=100_000, max_age_s=3600,
                            background=True, journal=Path({str(tmp_path / "journal")!r}))
        for i in range({rows}):  # one answer at a time, as requests come
            log.add([{{"request_id": f"r{{i}}", "served_at": datetime(2026, 12, 4, 6, 0, i % 60),
                      "flight_date": "{DAY.isoformat()}", "flight_id": f"f{{i}}", "probability": 0.25}}])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_rows_a_killed_process_had_buffered_are_written_by_the_next(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake")
    _killed_after_answering(tmp_path, rows=250)
    assert _logged(lake) == []  # the batch never reached the lake: without the journal, these rows were lost
    after = PredictionLog(lake, batch_rows=1000, journal=tmp_path / "journal")
    assert _logged(lake) == sorted(f"r{i}" for i in range(250))
    assert after.counts["recovered"] == 250 and after.counts["written"] == 250
    assert not list((tmp_path / "journal").glob("segment-*"))
    frame = read_prediction_log(lake, DAY)
    assert str(frame["served_at"].dtype) == "datetime64[ns, UTC]"  # as the live path writes it


def test_a_segment_written_twice_lands_once(tmp_path: Path) -> None:
    """A process that died after its batch reached the lake and before it deleted the segment: the next writes
    the segment again, under the same keys, so the lake holds each row once."""
    lake = LocalLake(tmp_path / "lake")
    _killed_after_answering(tmp_path, rows=30)
    [segment] = (tmp_path / "journal").glob("segment-*")
    kept = shutil.copy(segment, tmp_path / "kept.jsonl")
    PredictionLog(lake, journal=tmp_path / "journal")
    shutil.copy(kept, segment)  # as if never deleted
    again = PredictionLog(lake, journal=tmp_path / "journal")
    assert again.counts["recovered"] == 30
    assert _logged(lake) == sorted(f"r{i}" for i in range(30))


def test_a_live_process_keeps_its_segment(tmp_path: Path) -> None:
    """A slot starting beside a live one (blue beside green) takes no segment the live one holds: its lock says
    it is in use."""
    lake = LocalLake(tmp_path / "lake")
    live = PredictionLog(lake, batch_rows=1000, journal=tmp_path / "journal")
    live.add(_rows(5))
    starting = PredictionLog(lake, batch_rows=1000, journal=tmp_path / "journal")
    assert starting.counts["recovered"] == 0 and _logged(lake) == []
    live.flush()
    assert _logged(lake) == sorted(f"r{i}" for i in range(5))
    assert not list((tmp_path / "journal").glob("segment-*"))


def test_a_line_cut_off_by_the_kill_is_skipped(tmp_path: Path) -> None:
    """The kill can land inside a write: that request was never answered, so its row is dropped, the rest kept."""
    lake = LocalLake(tmp_path / "lake")
    _killed_after_answering(tmp_path, rows=20)
    [segment] = (tmp_path / "journal").glob("segment-*")
    with segment.open("a") as handle:
        handle.write('{"request_id":"r99","served_at":"2026-')
    after = PredictionLog(lake, journal=tmp_path / "journal")
    assert after.counts["recovered"] == 20 and _logged(lake) == sorted(f"r{i}" for i in range(20))


def test_rows_neither_the_lake_nor_the_spool_took_stay_journaled_at_shutdown(tmp_path: Path) -> None:
    """With the lake down and no spool, shutdown used to count the held rows lost; with a journal they wait for
    the next process."""

    class DownLake(LocalLake):
        def write_bytes(self, key: str, data: bytes) -> None:
            raise ConnectionError("lake unreachable")

    first = PredictionLog(DownLake(tmp_path / "lake"), batch_rows=3, retry_delays_s=(),
                          journal=tmp_path / "journal")
    first.add(_rows(3))
    first.flush()
    assert first.counts["lost"] == 0
    assert len(list((tmp_path / "journal").glob("segment-*"))) == 1
    lake = LocalLake(tmp_path / "lake")
    second = PredictionLog(lake, journal=tmp_path / "journal")
    assert second.counts["recovered"] == 3 and _logged(lake) == ["r0", "r1", "r2"]


def test_an_empty_journal_folder_is_made_and_left_clean(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    assert journal.take_orphans() == [] and journal.rotate() is None
    journal.append(_rows(1))
    segment = journal.rotate()
    assert segment is not None and segment.path.exists()
    journal.done(segment)
    assert not list((tmp_path / "journal").iterdir())
