"""Validation with Great Expectations 1.x, and the promote-or-quarantine decision it drives.

The suites live in ``great_expectations/`` (one per feed table, same name as its checkpoint and data asset); each
expectation carries a GX ``severity``. ``validate_partition`` runs a raw partition through its checkpoint and writes a
verdict next to it; ``promote_partition`` acts on that verdict:

* any *critical* failure: the partition and its verdict go to ``quarantine/``; ``validated/`` keeps what it had;
* only *warning* failures: promoted to ``validated/``, the warnings recorded in its ``validation.json``;
* clean: promoted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from pipelines.core.lake import Lake, partition_key, reference_key
from pipelines.ingest.parse import raw_key
from pipelines.ingest.schemas import table_schema

if TYPE_CHECKING:
    from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

Status = Literal["passed", "warned", "quarantined"]
VERDICT_FILE = "validation.json"
GX_DATASOURCE = "lake"
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
"""As the checkpoints ask (``great_expectations/checkpoints/``)."""
DATA_FILE = "data.parquet"


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in words a person can act on."""

    expectation: str
    severity: str
    description: str
    column: str | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)
    observed: Any = None
    error: str | None = None

    def sentence(self) -> str:
        target = f"{self.expectation}({self.column})" if self.column else self.expectation
        if self.error:
            return f"{target}: could not be evaluated: {self.error}"
        if self.unexpected_count is not None:
            share = f" ({self.unexpected_percent:.1f}%)" if self.unexpected_percent is not None else ""
            sample = f", e.g. {self.examples[:3]}" if self.examples else ""
            return f"{target}: {self.unexpected_count} rows{share} failed{sample} -- {self.description}"
        return f"{target}: observed {self.observed!r} -- {self.description}"


@dataclass(frozen=True)
class Verdict:
    table: str
    date: str
    status: Status
    rows: int
    failures: list[Failure]
    gx_run_id: str | None = None
    run_key: str | None = None
    raw_sha256: str | None = None
    """The SHA-256 of the raw partition's bytes this verdict judged: promotion acts only on those bytes."""

    @property
    def critical(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "critical"]

    @property
    def warnings(self) -> list[Failure]:
        return [f for f in self.failures if f.severity != "critical"]

    def reason(self) -> str:
        chosen = self.critical if self.status == "quarantined" else self.warnings
        if not chosen:
            return f"{self.table} {self.date}: all expectations met ({self.rows} rows)"
        evaluated = [f for f in chosen if not f.error]
        unevaluated = [f for f in chosen if f.error]
        lines = [f"  - {f.sentence()}" for f in evaluated]
        if unevaluated:
            # Usually one cause (a missing column) behind many expectations: say it once.
            columns = sorted({f.column for f in unevaluated if f.column})
            lines.append(f"  - {len(unevaluated)} expectations could not be evaluated"
                         f"{' on ' + ', '.join(columns) if columns else ''}: {unevaluated[0].error}")
        body = "\n".join(lines)
        return f"{self.table} {self.date} {self.status} ({self.rows} rows), {len(chosen)} failed:\n{body}"

    def to_json(self, gx_result: dict[str, Any] | None = None, **extra: Any) -> str:
        body: dict[str, Any] = asdict(self) | {"reason": self.reason()} | extra
        if gx_result is not None:
            body["gx_result"] = gx_result
        return json.dumps(body, indent=2, default=str, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        body = json.loads(text)
        return cls(
            table=body["table"], date=body["date"], status=body["status"], rows=body["rows"],
            failures=[Failure(**f) for f in body["failures"]], gx_run_id=body.get("gx_run_id"),
            run_key=body.get("run_key"), raw_sha256=body.get("raw_sha256"),
        )


def verdict_key(zone: str, table: str, day: date) -> str:
    return partition_key(zone, table, day, VERDICT_FILE)


@lru_cache(maxsize=4)
def _context(gx_root: Path, output_dir: Path) -> Any:
    import great_expectations as gx

    output_dir.mkdir(parents=True, exist_ok=True)
    return gx.get_context(mode="file", context_root_dir=str(gx_root),
                          runtime_environment={"gx_output_dir": str(output_dir)})


def gx_context(settings: Settings) -> Any:
    """The committed GX project, writing its results and Data Docs into the home folder."""
    return _context(settings.gx_root.resolve(), settings.gx_output_dir.resolve())


VOLUME_HISTORY_DAYS = 7
VOLUME_SHARES = (0.4, 0.6)
"""A day below these shares of the median volume of the previous ``VOLUME_HISTORY_DAYS`` days is quarantined, or
warned about: 2013's lowest clean day was 64% of its week (Thanksgiving); a tenth of a day is a partial delivery."""
VOLUME_WITHOUT_HISTORY = (1, 600)
_ROWS_SEEN: dict[tuple[str, str, date], int] = {}
"""Rows of the partitions this process judged good (passed or warned), so a window validated in one task (before
any of it is promoted) has its history."""


def _volume_floors(lake: Lake, table: str, day: date) -> tuple[int, int]:
    """The critical and warning minimum row counts of ``table`` on ``day``, from the recent good days' volume."""
    counts = []
    for back in range(1, VOLUME_HISTORY_DAYS + 1):
        previous = day - timedelta(days=back)
        rows = _ROWS_SEEN.get((lake.uri, table, previous))
        if rows is None and lake.exists(key := verdict_key("validated", table, previous)):
            rows = int(json.loads(lake.read_text(key))["rows"])
        if rows is not None:
            counts.append(rows)
    if not counts:
        return VOLUME_WITHOUT_HISTORY
    median = statistics.median(counts)
    critical, warning = (max(1, math.ceil(share * median)) for share in VOLUME_SHARES)
    return critical, warning


def _shared_parameters(lake: Lake) -> dict[str, Any]:
    """The suites' parameters every day shares: the codes of the reference tables."""
    airlines = lake.read_parquet(reference_key("airlines"))
    airports = lake.read_parquet(reference_key("airports"))
    return {"airline_codes": sorted(airlines["carrier"].dropna().unique().tolist()),
            "airport_codes": sorted(airports["faa"].dropna().unique().tolist())}


def _day_parameters(lake: Lake, table: str, day: date) -> dict[str, Any]:
    """The suites' parameters of one day: its date and its volume floors."""
    min_rows_critical, min_rows_warning = _volume_floors(lake, table, day)
    return {"partition_year": day.year, "partition_month": day.month, "partition_day": day.day,
            "min_rows_critical": min_rows_critical, "min_rows_warning": min_rows_warning}


def _parameters(lake: Lake, table: str, day: date, frame: pd.DataFrame, suite: Any) -> dict[str, Any]:
    return narrowed(_shared_parameters(lake), frame, suite) | _day_parameters(lake, table, day)


def narrowed(parameters: dict[str, Any], frame: pd.DataFrame, suite: Any) -> dict[str, Any]:
    """``parameters`` with each code list a suite checks values against (``value_set``) cut to the codes that occur
    in the columns it checks: the same rows are in the set, the same are not. Why: GX copies an expectation's
    whole configuration many times per run, and the airports' 1,458 codes made the one destination check cost
    more than the other 43 flights expectations together."""
    columns: dict[str, set[str]] = {}
    for expectation in suite.expectations:
        kwargs = expectation.configuration.kwargs
        value_set = kwargs.get("value_set")
        if isinstance(value_set, dict) and "$PARAMETER" in value_set and "column" in kwargs:
            columns.setdefault(value_set["$PARAMETER"], set()).add(kwargs["column"])
    out = dict(parameters)
    for name, checked in columns.items():
        if name in out and checked <= set(frame.columns):
            present = set(pd.unique(frame[sorted(checked)].to_numpy().ravel()))
            out[name] = [code for code in out[name] if code in present]
    return out


def _failure(result: Any) -> Failure:
    config = result.expectation_config
    kwargs = config.kwargs
    body = result.result or {}
    error = None
    info = result.exception_info or {}
    if "raised_exception" not in info:  # GX 1.x keys metric errors by metric id
        info = next((v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")), {})
    if info.get("raised_exception"):
        error = (str(info.get("exception_message", "")).strip().splitlines() or ["(no message)"])[0][:300]
    column = kwargs.get("column") or (",".join(kwargs["column_list"]) if kwargs.get("column_list") else None)
    observed = body.get("observed_value")
    if isinstance(observed, list) and config.type == "expect_table_columns_to_match_set":
        # Say which columns are missing or extra, not the whole observed list.
        details = body.get("details", {}).get("mismatched", {})
        observed = {k: v for k, v in details.items() if v} or observed
    return Failure(
        expectation=config.type,
        severity=str(getattr(config, "severity", None) or "critical").split(".")[-1].lower(),
        description=config.description or "",
        column=column,
        unexpected_count=body.get("unexpected_count"),
        unexpected_percent=body.get("unexpected_percent"),
        examples=[_plain(v) for v in body.get("partial_unexpected_list") or []][:5],
        observed=_plain(observed),
        error=error,
    )


def _plain(value: Any) -> Any:
    """JSON-friendly copy of GX result values (numpy scalars, timestamps)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _clock_minutes(hhmm: pd.Series) -> pd.Series:
    return (hhmm // 100) * 60 + hhmm % 100


def with_consistency_columns(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame GX judges: for flights, how far each delay is from what its clock times say (``_dep_delay_off_times``
    and ``_arr_delay_off_times``, minutes modulo a day, 0 when they agree, empty when a value is missing), so the
    suite can hold the redundant fields to each other. Only the judged copy has them: the lake's data does not."""
    if table != "flights":
        return frame
    judged = frame.copy()
    for leg in ("dep", "arr"):
        columns = [f"{leg}_time", f"sched_{leg}_time", f"{leg}_delay"]
        if set(columns) <= set(frame.columns):  # a missing column is the column-set expectation's to name
            actual, scheduled, delay = (pd.to_numeric(frame[c], errors="coerce") for c in columns)
            judged[f"_{leg}_delay_off_times"] = (_clock_minutes(actual) - _clock_minutes(scheduled) - delay) % 1440
        else:
            judged[f"_{leg}_delay_off_times"] = float("nan")
    return judged


def _read_raw(lake: Lake, table: str, day: date) -> tuple[bytes, pd.DataFrame]:
    """The raw partition's bytes and the frame GX judges (with the consistency columns)."""
    source = raw_key(table, day)
    if not lake.exists(source):
        raise FileNotFoundError(f"no raw partition for {table} on {day}: expected {lake.url(source)}; run ingest first")
    raw = lake.read_bytes(source)
    return raw, with_consistency_columns(table, pd.read_parquet(io.BytesIO(raw)))


def _run_name(run_key: str | None, table: str, day: date) -> str:
    # The run key becomes GX's run name, so results in the store and Data Docs trace back to the DAG run
    # (GX store keys may not contain '/'); retention reads the date at its end.
    return f"{run_key or 'manual'}|{table}|{day.isoformat()}".replace("/", "|")


def _status(failures: list[Failure]) -> Status:
    if any(f.severity == "critical" for f in failures):
        return "quarantined"
    return "warned" if failures else "passed"


def _record(lake: Lake, verdict: Verdict, gx_result: dict[str, Any], **extra: Any) -> Verdict:
    """Write ``verdict`` beside its raw partition and remember a good day's rows for the next days' volume floors."""
    lake.write_text(verdict_key("raw", verdict.table, date.fromisoformat(verdict.date)),
                    verdict.to_json(gx_result=gx_result, **extra))
    seen = (lake.uri, verdict.table, date.fromisoformat(verdict.date))
    if verdict.status == "quarantined":
        _ROWS_SEEN.pop(seen, None)
    else:
        _ROWS_SEEN[seen] = verdict.rows
    log.log(logging.WARNING if verdict.failures else logging.DEBUG, verdict.reason())
    return verdict


def validate_partition(lake: Lake, settings: Settings, table: str, day: date, run_key: str | None = None,
                       result_ids: list[Any] | None = None) -> Verdict:
    """Run the table's checkpoint on the raw partition and write the verdict beside it.

    The GX result's identifier is appended to ``result_ids`` when given, so Data Docs can be built for just
    these results.
    """
    table_schema(table)  # fail early on an unknown table name
    raw, frame = _read_raw(lake, table, day)
    from great_expectations.core.run_identifier import RunIdentifier

    context = gx_context(settings)
    checkpoint = context.checkpoints.get(table)
    parameters = _parameters(lake, table, day, frame, context.suites.get(table))
    run = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters,
                         run_id=RunIdentifier(run_name=_run_name(run_key, table, day)))
    (identifier, suite_result), = run.run_results.items()
    if result_ids is not None:
        result_ids.append(identifier)
    failures = [_failure(r) for r in suite_result.results if not r.success]
    verdict = Verdict(table=table, date=day.isoformat(), status=_status(failures), rows=len(frame), failures=failures,
                      gx_run_id=f"{identifier.run_id.run_name}@{identifier.run_id.run_time}", run_key=run_key,
                      raw_sha256=hashlib.sha256(raw).hexdigest())
    return _record(lake, verdict, suite_result.to_json_dict())


def _store_result(context: Any, result: Any, suite_name: str, run_name: str, batch_id: str) -> Any:
    """Keep a result of ``Batch.validate`` (which stores nothing) in the GX results store, as a checkpoint run keeps
    its own, so Data Docs render it; returns its identifier."""
    from datetime import UTC, datetime

    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
    result.meta["run_id"] = run_id
    result.meta["validation_time"] = run_id.run_time
    suite = ExpectationSuiteIdentifier(name=suite_name)
    identifier = ValidationResultIdentifier(batch_identifier=batch_id, expectation_suite_identifier=suite,
                                            run_id=run_id)
    context.validation_results_store.store_validation_results(
        suite_validation_result=result, suite_validation_result_identifier=identifier,
        expectation_suite_identifier=suite)
    return identifier


def validate_days(lake: Lake, settings: Settings, table: str, days: list[date], run_key: str | None = None,
                  result_ids: list[Any] | None = None) -> list[Verdict]:
    """Every day of ``days`` judged by the table's suite with the verdict a ``validate_partition`` of each gives, in
    few GX runs (``pipelines.validation.window``): consecutive days a window at a time, a failing window halved
    down to the days that fail, which get their full checkpoint run. Verdicts in date order."""
    from pipelines.validation.window import bisect, split_suite, stack, windows

    table_schema(table)
    days = sorted(days)
    read = {day: _read_raw(lake, table, day) for day in days}
    frames = {day: frame for day, (_, frame) in read.items()}
    context = gx_context(settings)
    batches = context.data_sources.get(GX_DATASOURCE).get_asset(table).get_batch_definition(table)
    full_suite = context.suites.get(table)
    shared = narrowed(_shared_parameters(lake), pd.concat(frames.values()) if frames else pd.DataFrame(), full_suite)
    day_parameters = set(_day_parameters(lake, table, days[0])) if days else set()
    suite = split_suite(full_suite, day_parameters)
    verdicts: dict[date, Verdict] = {}

    def alone(day: date) -> None:
        verdicts[day] = validate_partition(lake, settings, table, day, run_key=run_key, result_ids=result_ids)

    def passes(window: list[date]) -> bool:
        before = {day: _ROWS_SEEN.get((lake.uri, table, day)) for day in window}
        parameters, per_day = {}, {}
        for day in window:  # in date order: a day's volume floors count the earlier days judged good so far
            parameters[day] = shared | _day_parameters(lake, table, day)
            result = batches.get_batch(batch_parameters={"dataframe": frames[day]}).validate(
                suite.per_day, expectation_parameters=parameters[day], result_format=RESULT_FORMAT) \
                if suite.per_day.expectations else None
            per_day[day] = result
            failures = [_failure(r) for r in (result.results if result else []) if not r.success]
            if _status(failures) == "quarantined":
                _ROWS_SEEN.pop((lake.uri, table, day), None)
            else:
                _ROWS_SEEN[(lake.uri, table, day)] = len(frames[day])
        batch = batches.get_batch(batch_parameters={"dataframe": stack({d: frames[d] for d in window}, parameters,
                                                                       day_parameters)})
        screen = batch.validate(suite.screen, expectation_parameters=shared, result_format=RESULT_FORMAT)
        if not screen.success:
            log.info("%s %s..%s: the window's screen failed on %s; judging it in halves", table, window[0],
                     window[-1], ", ".join(sorted({r.expectation_config.type for r in screen.results
                                                   if not r.success})))
            for day, rows in before.items():  # undo the optimistic volume history
                _ROWS_SEEN.pop((lake.uri, table, day), None)
                if rows is not None:
                    _ROWS_SEEN[(lake.uri, table, day)] = rows
            return False
        name = _run_name(run_key, table, window[-1]).replace(f"|{window[-1]}", f"|{window[0]}_to|{window[-1]}")
        identifier = _store_result(context, screen, suite.screen.name, name, batch.id)
        if result_ids is not None:
            result_ids.append(identifier)
        for day in window:
            result = per_day[day]
            failures = [_failure(r) for r in (result.results if result else []) if not r.success]
            verdict = Verdict(table=table, date=day.isoformat(), status=_status(failures), rows=len(frames[day]),
                              failures=failures, gx_run_id=f"{name}@{identifier.run_id.run_time}",
                              run_key=run_key, raw_sha256=hashlib.sha256(read[day][0]).hexdigest())
            verdicts[day] = _record(lake, verdict, result.to_json_dict() if result else {},
                                    window={"first": window[0].isoformat(), "last": window[-1].isoformat(),
                                            "screened": len(suite.screen.expectations),
                                            "per_day": suite.per_day_names})
        return True

    for window in windows(days, frames):
        bisect(window, passes, alone)
    return [verdicts[day] for day in days]


def content_hash(frame: pd.DataFrame) -> str:
    """Hash of the rows and column names, independent of Parquet writer details."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


class StaleVerdict(RuntimeError):
    """The raw partition is not the bytes its verdict judged (it changed after validation): validate it again."""


def promote_partition(lake: Lake, table: str, day: date) -> Verdict:
    """Act on the raw partition's verdict: promote to ``validated/`` or move to ``quarantine/``. Only the bytes the
    verdict judged: a raw partition that changed since (a re-landed or re-ingested day) raises ``StaleVerdict``
    and nothing moves."""
    source_verdict = verdict_key("raw", table, day)
    if not lake.exists(source_verdict):
        raise FileNotFoundError(f"{table} {day} has no verdict at {lake.url(source_verdict)}; run validate first")
    verdict_text = lake.read_text(source_verdict)
    verdict = Verdict.from_json(verdict_text)
    raw = lake.read_bytes(raw_key(table, day))
    now = hashlib.sha256(raw).hexdigest()
    if verdict.raw_sha256 != now:
        judged = f"sha256 {verdict.raw_sha256[:12]}" if verdict.raw_sha256 else "bytes it did not record"
        raise StaleVerdict(f"{table} {day}: the raw partition changed after validation (the verdict judged "
                           f"{judged}, the partition is now sha256 {now[:12]}); validate it again before promoting")
    if verdict.status == "quarantined":
        # The validated partition (if any) stays exactly as it was: bad input never replaces good data.
        lake.write_bytes(partition_key("quarantine", table, day, DATA_FILE), raw)
        lake.write_text(verdict_key("quarantine", table, day), verdict_text)
        return verdict
    schema = table_schema(table)
    frame = pd.read_parquet(io.BytesIO(raw))[list(schema.columns)].astype(schema.dtypes)
    digest = content_hash(frame)
    lake.write_parquet(partition_key("validated", table, day, DATA_FILE), frame)
    lake.write_text(verdict_key("validated", table, day),
                    verdict.to_json(content_hash=digest, dropped_columns=_extra_columns(verdict)))
    # A good delivery supersedes an earlier bad one for the same day.
    lake.delete_prefix(f"quarantine/{table}/date={day.isoformat()}/")
    return verdict


def _extra_columns(verdict: Verdict) -> list[str]:
    for failure in verdict.failures:
        if failure.expectation == "expect_table_columns_to_match_set" and isinstance(failure.observed, dict):
            return sorted(failure.observed.get("unexpected", []))
    return []


def build_data_docs(settings: Settings, result_ids: list[Any] | None = None) -> Path:
    """Render Data Docs pages for ``result_ids`` (all stored results when None) and rebuild the index."""
    gx_context(settings).build_data_docs(resource_identifiers=result_ids or None)
    return settings.data_docs_index
