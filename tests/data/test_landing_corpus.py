"""The landing corpus: every known way a flights file arrives broken gets the outcome ``CORRUPTIONS`` promises.

Each case starts from a lake where the clean real 2013-01-02 day (and the day before) is already landed,
ingested, validated and promoted (built once per module, then copied into the test's own lake), drops one corpus
file as that day's landing file and runs ingest -> validate -> promote -> check_quarantine.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from datetime import date, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipelines.core.lake import Lake, open_lake, partition_key
from pipelines.core.names import FEED_TABLES
from pipelines.core.settings import Settings
from pipelines.ingest.parse import ingest_partition, raw_key
from pipelines.ingest.schemas import FLIGHTS, PARSE_ERRORS
from pipelines.simulation.corruption import CORRUPTIONS, Corruption
from pipelines.simulation.feed import land_day, land_file, land_reference
from pipelines.validation.partition import Failure, Verdict, content_hash, promote_partition, validate_partition
from pipelines.validation.steps import QuarantineError, check_quarantine, promote_partitions

CORPUS = Path(__file__).resolve().parent / "landing_corpus"
DAY = date(2013, 1, 2)
TABLE = "flights"
PARTITION = f"{TABLE}/{DAY.isoformat()}"
QUARANTINED = [kind for kind, c in CORRUPTIONS.items() if c.outcome == "quarantined"]
WARNED = [kind for kind, c in CORRUPTIONS.items() if c.outcome == "warned"]


def _corpus_file(kind: str) -> bytes:
    return (CORPUS / f"{kind}.csv").read_bytes()


def _partition(lake: Lake, zone: str) -> dict[str, bytes]:
    """File name -> bytes of every file in the flights 2013-01-02 partition of ``zone``."""
    prefix = f"{zone}/{TABLE}/date={DAY.isoformat()}/"
    return {key.removeprefix(prefix): lake.read_bytes(key) for key in lake.list_keys(prefix)}


def _target(failure: Failure) -> str:
    """How a failure is named in verdicts and in CORRUPTIONS: ``expectation(column)`` or the bare expectation."""
    return f"{failure.expectation}({failure.column})" if failure.column else failure.expectation


def _named(failures: list[Failure], expected: Corruption) -> list[Failure]:
    """The failures matching the expectation ``expected`` names, at the severity its outcome implies."""
    severity = "critical" if expected.outcome == "quarantined" else "warning"
    return [f for f in failures if _target(f) == expected.reason and f.severity == severity]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("landing_corpus_generate", CORPUS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clean_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake folder holding the clean real 2013-01-02 day (flights and weather) and the day before (the volume
    a day is judged against), run through the whole chain."""
    settings = Settings(pipeline_home=tmp_path_factory.mktemp("clean_home"), lake_uri=None, s3_endpoint_url=None)
    lake = open_lake(settings)
    land_reference(lake)
    for day in (DAY - timedelta(days=1), DAY):
        land_day(lake, day)
        for table in FEED_TABLES:
            ingest_partition(lake, table, day)
            verdict = validate_partition(lake, settings, table, day)
            assert verdict.status == "passed", verdict.reason()
            promote_partition(lake, table, day)
    return Path(settings.lake_root)


@pytest.fixture
def day_lake(clean_lake: Path, settings: Settings, lake: Lake) -> Lake:
    """This test's own lake, starting with the clean day validated."""
    shutil.copytree(clean_lake, settings.lake_root)
    return lake


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corpus_file_gets_its_outcome(kind: str, day_lake: Lake, settings: Settings) -> None:
    """A broken delivery never raises in ingest and gets the outcome and named expectation CORRUPTIONS lists."""
    expected = CORRUPTIONS[kind]
    good = _partition(day_lake, "validated")
    good_verdict = json.loads(good["validation.json"])
    assert good_verdict["status"] == "passed"
    assert good_verdict["content_hash"] == content_hash(
        day_lake.read_parquet(partition_key("validated", TABLE, DAY, "data.parquet")))

    content = _corpus_file(kind)
    land_file(day_lake, TABLE, DAY, content)
    ingest_partition(day_lake, TABLE, DAY)  # must not raise, whatever the bytes
    verdict = validate_partition(day_lake, settings, TABLE, DAY)
    promotion = promote_partitions([DAY], settings)

    assert verdict.status == expected.outcome, verdict.reason()
    named = _named(verdict.failures, expected)
    assert named, f"{expected.reason} ({expected.outcome}) not among the failures:\n{verdict.reason()}"

    if expected.outcome == "quarantined":
        _assert_quarantined(day_lake, verdict, expected, good, promotion)
    else:
        _assert_warned(day_lake, verdict, expected, content, promotion)


def _assert_quarantined(lake: Lake, verdict: Verdict, expected: Corruption, good: dict[str, bytes],
                        promotion: dict[str, Any]) -> None:
    assert PARTITION in promotion["quarantined"] and PARTITION not in promotion["validated"]
    quarantine = _partition(lake, "quarantine")
    assert set(quarantine) == {"data.parquet", "validation.json"}
    body = json.loads(quarantine["validation.json"])
    assert body["status"] == "quarantined"
    assert (body["table"], body["date"]) == (TABLE, DAY.isoformat())
    assert f"- {expected.reason}: " in body["reason"]
    # The rejected partition is kept as delivered, for inspection.
    assert quarantine["data.parquet"] == lake.read_bytes(raw_key(TABLE, DAY))
    # The good partition is left byte for byte as it was.
    assert _partition(lake, "validated") == good

    with pytest.raises(QuarantineError) as raised:
        check_quarantine(promotion)
    message = str(raised.value)
    assert f"{TABLE} {DAY.isoformat()} quarantined ({verdict.rows} rows)" in message
    recorded = Verdict.from_json(quarantine["validation.json"])  # what promotion reports from
    for failure in _named(recorded.failures, expected):
        assert failure.sentence() in message  # the expectation with its counts (or observed value)
        if failure.unexpected_count is not None:
            assert f"{expected.reason}: {failure.unexpected_count} rows" in message


def _assert_warned(lake: Lake, verdict: Verdict, expected: Corruption, content: bytes,
                   promotion: dict[str, Any]) -> None:
    assert PARTITION in promotion["warned"] and PARTITION in promotion["validated"]
    assert PARTITION not in promotion["quarantined"]
    check_quarantine(promotion)  # warnings never fail the run
    assert _partition(lake, "quarantine") == {}

    validated = _partition(lake, "validated")
    assert set(validated) == {"data.parquet", "validation.json"}
    body = json.loads(validated["validation.json"])
    assert body["status"] == "warned"
    assert f"- {expected.reason}: " in body["reason"]
    failures = [Failure(**f) for f in body["failures"]]
    assert _named(failures, expected)
    assert all(f.severity != "critical" for f in failures)

    frame = lake.read_parquet(partition_key("validated", TABLE, DAY, "data.parquet"))
    assert list(frame.columns) == list(FLIGHTS.columns)
    assert PARSE_ERRORS not in frame.columns
    assert {c: str(t) for c, t in frame.dtypes.items()} == FLIGHTS.dtypes
    rows = len(content.decode("utf-8").splitlines()) - 1
    assert len(frame) == verdict.rows == body["rows"] == rows
    assert body["content_hash"] == content_hash(frame)
    header = content.decode("utf-8").split("\n", 1)[0].split(",")
    assert body["dropped_columns"] == sorted(set(header) - set(FLIGHTS.columns))


def test_corpus_has_one_file_per_kind() -> None:
    assert sorted(p.stem for p in CORPUS.glob("*.csv")) == sorted(CORRUPTIONS)


def test_corpus_files_match_generator() -> None:
    """The committed files are exactly what generate.py writes now (rerun it after changing corruption.py)."""
    built = _generator().build()
    assert sorted(built) == sorted(CORRUPTIONS)
    stale = [kind for kind, content in built.items() if _corpus_file(kind) != content]
    assert not stale, f"run `.venv/bin/python tests/data/landing_corpus/generate.py`; out of date: {stale}"


def test_corpus_is_binary_exact() -> None:
    """Files whose point is their bytes survived as bytes (no line-ending or encoding conversion)."""
    assert _corpus_file("empty_file") == b""
    wrong_encoding = _corpus_file("wrong_encoding")
    assert wrong_encoding[:2] in (b"\xff\xfe", b"\xfe\xff")
    assert wrong_encoding.decode("utf-16").startswith("year,month,day,")
    assert not _corpus_file("truncated").endswith(b"\n")
    assert b"\r" not in _corpus_file("short_day")


def test_readme_lists_every_kind() -> None:
    """The README table gives each kind's outcome and named expectation as CORRUPTIONS does."""
    rows: dict[str, list[str]] = {}
    for line in (CORPUS / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = cells
    assert sorted(rows) == sorted(CORRUPTIONS)
    for kind, corruption in CORRUPTIONS.items():
        _, _, outcome, reason = rows[kind]
        assert outcome == corruption.outcome, kind
        assert reason == f"`{corruption.reason}`", kind
