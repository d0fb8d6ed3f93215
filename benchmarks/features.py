"""The ``features`` section of ``make bench``: each figure beside stock Feast, on the same data, in the same run.

1. **Data, the year 2013.** The ingestion section has just landed, ingested, validated (GX) and promoted its window
   (the whole year by default) in the scratch home; any day of the year outside it goes through the same steps
   here. Then ``build_features`` for the whole year.
2. **Backfill materialization of the whole year into Redis**: the production profile (SQL registry in a SQLite file
   under the scratch home; Redis from ``BENCH_REDIS``, default ``127.0.0.1:6379``). Stock ``store.materialize``
   writes into db 14, ``materialize_features`` (the fast engine of ``pipelines.features.online_writer``) into
   db 15; both databases are flushed first, both stores warmed up on a one-hour window (imports, registry) before
   timing. Equality: every key and every hash field of both databases compared byte for byte, and a sample of
   flights read back through stock ``get_online_features`` from both.
3. The same on **SQLite** (the embedded profile, two online.db files), compared row for row.
4. **Training set** (``training_set``) for the 90-day demo window through stock Feast's DuckDB offline store and
   through ours (``pipelines.features.offline_asof``: the point-in-time join as ASOF joins), each in a fresh
   process: seconds, peak memory, and whether the two frames are identical.
5. **Pushes** of a real day's operations state (``bench_push``): the departures of ``PUSH_DAY`` through the tracker
   and Feast's push into the Redis store (SQLite without Redis), minute by minute online and hour by hour offline.
6. **Online reads** of ``flight_delay_v1`` (8 views + the python ODFV) from the Redis store: one flight per call
   and 100 flights per call, stock ``get_online_features(...).to_dict()`` (cached feature service) against
   ``online_reader.read_online``, interleaved call by call, every pair of results compared.
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.console import say
from pipelines.core.settings import Settings

YEAR = (date(2013, 1, 1), date(2013, 12, 31))
REDIS_DBS = {"stock": 14, "ours": 15}
TARGETS = {"materialize_year_seconds": 20.0, "training_set_seconds": 10.0, "online_1_p99_ms": 1.0,
           "online_100_p99_ms": 20.0}
SINGLE_CALLS = 2000
PUSH_DAY = date(2013, 7, 4)  # one of the sampled days of the online reads: they read its pushed state
VISIBILITY_EVERY = 10
BATCH_CALLS = 300
BATCH_SIZE = 100


def _timed(step: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = step(*args, **kwargs)
    return result, time.perf_counter() - started


# ------------------------------------------------------------------------------------------------------------------
# 1. the year's data
# ------------------------------------------------------------------------------------------------------------------


def prepare_year(settings: Settings, validated: tuple[date, date]) -> dict[str, Any]:
    from pipelines.core.dates import date_range
    from pipelines.features.steps import build_features
    from pipelines.ingest.steps import ingest_feed
    from pipelines.simulation.feed import land_feed
    from pipelines.validation.steps import promote_partitions, validate_partitions

    year = date_range(*YEAR)
    done = set(date_range(*validated))
    rest = [d for d in year if d not in done]
    started = time.perf_counter()
    if rest:
        land_feed(rest, settings)
        ingest_feed(rest, settings)
        validate_partitions(rest, settings)
        promote_partitions(rest, settings)
    prepare_s = time.perf_counter() - started
    built, build_s = _timed(build_features, year, settings)
    return {
        "days": len(year),
        "validated_by_gx": f"{min(done & set(year))}..{max(done & set(year))}" if done & set(year) else None,
        "validated_here": f"{rest[0]}..{rest[-1]} ({len(rest)} days)" if rest else None,
        "prepare_rest_seconds": round(prepare_s, 2),
        "build_features_seconds": round(build_s, 2),
        "feature_rows": built["rows"],
    }


# ------------------------------------------------------------------------------------------------------------------
# 2-3. materialization
# ------------------------------------------------------------------------------------------------------------------


def _redis_base() -> str:
    return os.environ.get("BENCH_REDIS", "127.0.0.1:6379")


def _redis(db: int) -> Any:
    from redis import Redis

    host, port = _redis_base().split(",")[0].split(":")
    return Redis(host=host, port=int(port), db=db)


def redis_available() -> bool:
    try:
        return bool(_redis(REDIS_DBS["ours"]).ping())
    except Exception:
        return False


def redis_settings(work: Path, name: str) -> Settings:
    return Settings(pipeline_home=work, feast_profile="production",
                    feast_registry_url=f"sqlite:///{work}/feast/registry_{name}.db",
                    feast_redis=f"{_redis_base()},db={REDIS_DBS[name]}")


def sqlite_settings(work: Path, name: str) -> Settings:
    return Settings(pipeline_home=work / f"sqlite_{name}", lake_uri=str(work / "lake"))


def _warm_up(settings: Settings, stock: bool) -> None:
    """Imports, registry and the first offline read, outside the timing: a one-hour window."""
    from pipelines.features.store import apply_definitions, open_store, windowed_views

    store = open_store(settings, stock=stock)
    apply_definitions(store)
    store.materialize(start_date=datetime(2013, 6, 1, 12), end_date=datetime(2013, 6, 1, 13),
                      feature_views=windowed_views(store.list_feature_views()))


def _materialize_pair(settings: dict[str, Settings], clear: Any) -> dict[str, Any]:
    from pipelines.core.dates import date_range
    from pipelines.features.store import materialize_features

    year = date_range(*YEAR)
    for name in ("stock", "ours"):
        _warm_up(settings[name], stock=name == "stock")
    clear()
    stock = materialize_features(year, settings["stock"], stock=True)
    ours = materialize_features(year, settings["ours"])
    views = ours["views"]
    read = sum(v["rows_read"] for v in views.values())
    written = sum(v["rows_written"] for v in views.values())

    def figures(run: dict[str, Any]) -> dict[str, Any]:
        return {"seconds": run["seconds"], "rows_read_per_s": round(read / run["seconds"]),
                "rows_written_per_s": round(written / run["seconds"])}

    return {"window": f"{stock['start']} .. {stock['end']}", "rows_read": read, "rows_written": written,
            "views": views, "stock": figures(stock), "ours": figures(ours),
            "speedup": round(stock["seconds"] / ours["seconds"], 2),
            "fast_path_views": sorted(n for n, v in views.items() if v["fast"])}


def compare_redis(stock_db: int, ours_db: int) -> dict[str, Any]:
    """Every key and every field of both databases, byte for byte."""
    a, b = _redis(stock_db), _redis(ours_db)
    keys_a, keys_b = set(a.scan_iter(count=10_000)), set(b.scan_iter(count=10_000))
    differing = 0
    keys = sorted(keys_a & keys_b)
    for start in range(0, len(keys), 10_000):
        with a.pipeline(transaction=False) as pa_, b.pipeline(transaction=False) as pb_:
            for key in keys[start:start + 10_000]:
                pa_.hgetall(key)
                pb_.hgetall(key)
            differing += sum(x != y for x, y in zip(pa_.execute(), pb_.execute(), strict=True))
    return {"keys_stock": len(keys_a), "keys_ours": len(keys_b), "keys_only_in_one": len(keys_a ^ keys_b),
            "differing_hashes": differing, "identical": keys_a == keys_b and differing == 0}


def compare_sqlite(stock_db: Path, ours_db: Path) -> dict[str, Any]:
    a, b = sqlite3.connect(stock_db), sqlite3.connect(ours_db)
    tables = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    names = [r[0] for r in a.execute(tables)]
    rows, identical = 0, names == [r[0] for r in b.execute(tables)]
    for name in names:
        query = (f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{name}" '
                 "ORDER BY entity_key, feature_name")
        got_a, got_b = a.execute(query).fetchall(), b.execute(query).fetchall()
        rows += len(got_a)
        identical = identical and got_a == got_b
    a.close()
    b.close()
    return {"tables": len(names), "rows": rows, "identical": identical}


def _sample_entities(settings: Settings, days: list[date]) -> list[dict[str, Any]]:
    from pipelines.core.lake import open_lake, partition_key
    from pipelines.features.store import ENTITY_COLUMNS, flight_entities

    lake = open_lake(settings)
    flights = pd.concat([lake.read_parquet(partition_key("validated", "flights", d, "data.parquet")) for d in days],
                        ignore_index=True)
    return list(flight_entities(flights)[ENTITY_COLUMNS].to_dict("records"))


def _same(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> bool:
    if list(a) != list(b):
        return False
    for name, values in a.items():
        for x, y in zip(values, b[name], strict=True):
            if type(x) is not type(y) or (x != y and not (x != x and y != y)):
                return False
    return True


def read_back_equal(settings: dict[str, Settings], rows: list[dict[str, Any]]) -> bool:
    """The same flights read through stock ``get_online_features`` from both online stores."""
    from pipelines.features.store import FEATURE_SERVICE, open_store

    results = []
    for name in ("stock", "ours"):
        store = open_store(settings[name])
        service = store.get_feature_service(FEATURE_SERVICE, allow_cache=True)
        results.append([store.get_online_features(features=service, entity_rows=rows[i:i + 500]).to_dict()
                        for i in range(0, len(rows), 500)])
    return all(_same(x, y) for x, y in zip(*results, strict=True))


# ------------------------------------------------------------------------------------------------------------------
# 5. pushes of the operations state
# ------------------------------------------------------------------------------------------------------------------


def bench_push(settings: Settings, day: date) -> dict[str, Any]:
    """A real day's departures through the operations tracker and Feast's push, as the replay pushes them: minute
    by minute online, hour by hour offline. Events per second end to end, rows per second into each store, and
    the delay from a push's start to its row read back online (every ``VISIBILITY_EVERY``-th push)."""
    from pipelines.core.lake import open_lake, partition_key
    from pipelines.features.operations import OperationsTracker, day_schedule, departure_events
    from pipelines.features.push import OnlinePush, push_offline
    from pipelines.features.store import apply_definitions, open_store

    store = open_store(settings)
    apply_definitions(store)
    push_online = OnlinePush(store)  # the views resolved once, as the replay's pusher keeps them
    flights = open_lake(settings).read_parquet(partition_key("validated", "flights", day, "data.parquet"))
    events = departure_events(flights)
    tracker = OperationsTracker(day, day_schedule(flights))
    minutes = pd.date_range(tracker.clock, tracker.clock + pd.Timedelta(hours=27), freq="min")
    online_s, offline_s, visible_s, tracker_s = [], 0.0, [], 0.0
    rows = {"online": 0, "offline": 0, "state": 0}
    hour: list[dict[str, pd.DataFrame]] = []
    for previous, minute in zip(minutes[:-1], minutes[1:], strict=True):
        tick = time.perf_counter()
        tracker.record(events[(events["event_time"] >= previous) & (events["event_time"] < minute)])
        frames = tracker.advance(minute)
        tracker_s += time.perf_counter() - tick
        if any(not f.empty for f in frames.values()):
            rows["state"] += sum(len(f) for f in frames.values())
            tick = time.perf_counter()
            rows["online"] += push_online(frames)
            online_s.append(time.perf_counter() - tick)
            if len(online_s) % VISIBILITY_EVERY == 0 and not frames["ops_origin"].empty:
                last = frames["ops_origin"].iloc[-1]
                visible_s.append(time.perf_counter() - tick + _read_back(store, last))
            hour.append(frames)
        if minute.minute == 0 and hour:
            tick = time.perf_counter()
            rows["offline"] += push_offline(store, {v: pd.concat([f[v] for f in hour]) for v in hour[0]})
            offline_s += time.perf_counter() - tick
            hour = []
    pushing = sum(online_s) + offline_s + tracker_s
    return {"day": day.isoformat(), "store": store.config.online_store.type, "departures": len(events),
            "state_rows": rows["state"], "pushes": len(online_s), "online_rows": rows["online"],
            "offline_rows": rows["offline"],
            "events_per_s": round(len(events) / pushing), "state_rows_per_s": round(rows["state"] / pushing),
            "online_rows_per_s": round(rows["online"] / sum(online_s)),
            "offline_rows_per_s": round(rows["offline"] / offline_s),
            "online_push": _percentiles(online_s), "push_to_visible": _percentiles(visible_s),
            "tracker_seconds": round(tracker_s, 2)}


def _read_back(store: Any, row: pd.Series) -> float:
    """Seconds until the pushed row of ``ops_origin`` reads back online with its value."""
    started = time.perf_counter()
    while True:
        got = store.get_online_features(features=["ops_origin:ops_origin_departed"],
                                        entity_rows=[{"origin_day": row["origin_day"]}]).to_dict()
        if got["ops_origin_departed"] == [int(row["ops_origin_departed"])]:
            return time.perf_counter() - started
        if time.perf_counter() - started > 10:
            raise RuntimeError(f"a pushed row of {row['origin_day']} was not visible online after 10 s")


# ------------------------------------------------------------------------------------------------------------------
# 6. online reads
# ------------------------------------------------------------------------------------------------------------------


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def bench_online(settings: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from pipelines.features.online_reader import read_online, reader_for
    from pipelines.features.store import FEATURE_SERVICE, open_store

    store = open_store(settings)
    service = store.get_feature_service(FEATURE_SERVICE, allow_cache=True)

    def stock(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return store.get_online_features(features=service, entity_rows=batch).to_dict()

    def ours(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return read_online(store, FEATURE_SERVICE, batch)

    first = {}
    for name, read in (("stock", stock), ("ours", ours)):
        _, first[name] = _timed(read, rows[:1])
    out: dict[str, Any] = {"store": store.config.online_store.type, "fast_reader": reader_for(store, FEATURE_SERVICE)
                           is not None, "first_call_ms": {k: round(v * 1000, 1) for k, v in first.items()}}
    rng = np.random.default_rng(2013)
    for label, size, calls in (("1_flight", 1, SINGLE_CALLS), (f"{BATCH_SIZE}_flights", BATCH_SIZE, BATCH_CALLS)):
        times: dict[str, list[float]] = {"stock": [], "ours": []}
        equal = True
        for call in range(calls):
            at = int(rng.integers(0, len(rows) - size))
            batch = rows[at:at + size]
            got = {}
            # Alternate which goes first, so neither always runs on a warmer cache.
            order = (("stock", stock), ("ours", ours)) if call % 2 == 0 else (("ours", ours), ("stock", stock))
            for name, read in order:
                got[name], seconds = _timed(read, batch)
                times[name].append(seconds)
            equal = equal and _same(got["stock"], got["ours"])
        out[label] = {"calls": calls, "stock": _percentiles(times["stock"]), "ours": _percentiles(times["ours"]),
                      "identical_results": equal}
    return out


# ------------------------------------------------------------------------------------------------------------------
# the section
# ------------------------------------------------------------------------------------------------------------------


def bench_features(scratch: Settings, validated: tuple[date, date], demo: tuple[date, date]) -> dict[str, Any]:
    from pipelines.core.dates import date_range
    from pipelines.features.store import apply_definitions, open_store

    work = scratch.pipeline_home
    out: dict[str, Any] = {"year": f"{YEAR[0]}..{YEAR[1]}", "data": prepare_year(scratch, validated),
                           "targets": TARGETS}
    sample = _sample_entities(scratch, [date(2013, 3, 15), date(2013, 7, 4), date(2013, 12, 31)])

    if redis_available():
        redis = {name: redis_settings(work, name) for name in REDIS_DBS}

        def flush() -> None:
            for db in REDIS_DBS.values():
                _redis(db).flushdb()

        result = _materialize_pair(redis, flush)
        result["equality"] = compare_redis(REDIS_DBS["stock"], REDIS_DBS["ours"])
        result["equality"]["read_back_identical"] = read_back_equal(redis, sample)
        result["store"] = f"redis {_redis_base()} (stock db {REDIS_DBS['stock']}, ours db {REDIS_DBS['ours']})"
        out["materialize_redis"] = result
        online_settings = redis["ours"]
    else:
        out["materialize_redis"] = {"skipped": f"no Redis at {_redis_base()} (set BENCH_REDIS)"}
        online_settings = None

    lite = {name: sqlite_settings(work, name) for name in ("stock", "ours")}
    result = _materialize_pair(lite, lambda: None)
    result["equality"] = compare_sqlite(*(s.pipeline_home / "feast" / "online.db" for s in lite.values()))
    result["equality"]["read_back_identical"] = read_back_equal(lite, sample)
    out["materialize_sqlite"] = result

    days = date_range(*demo)
    apply_definitions(open_store(scratch))  # the embedded registry, as flight_features leaves it
    out["training_set"] = bench_training_set(days, scratch)

    out["push"] = bench_push(online_settings or lite["ours"], PUSH_DAY)
    out["online"] = bench_online(online_settings or lite["ours"], sample)
    out["targets_met"] = _targets_met(out)
    return out


def _training_set_in_child(days: list[date], settings: Settings, stock: bool) -> dict[str, Any]:
    """``training_set`` in this (fresh) process: its seconds, peak resident memory and a digest of the frame."""
    import resource

    from pipelines.features.store import training_set

    frame, seconds = _timed(training_set, days, settings, stock=stock)
    return {"rows": len(frame), "columns": frame.shape[1], "seconds": round(seconds, 2),
            "rows_per_s": round(len(frame) / seconds),
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "digest": int(pd.util.hash_pandas_object(frame, index=True).sum())}


def bench_training_set(days: list[date], settings: Settings) -> dict[str, Any]:
    """The demo window's training set through stock Feast's offline store and through ours (the ASOF joins of
    ``pipelines.features.offline_asof``), each in a fresh process so its peak memory is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    runs = {}
    for name, stock in (("stock", True), ("ours", False)):
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs[name] = pool.submit(_training_set_in_child, days, settings, stock).result()
    return {"window": f"{days[0]}..{days[-1]}", "rows": runs["ours"]["rows"], "columns": runs["ours"]["columns"],
            "seconds": runs["ours"]["seconds"], "rows_per_s": runs["ours"]["rows_per_s"], **runs,
            "speedup": round(runs["stock"]["seconds"] / runs["ours"]["seconds"], 2),
            "memory_ratio": round(runs["ours"]["peak_mb"] / runs["stock"]["peak_mb"], 3),
            "identical": runs["stock"]["digest"] == runs["ours"]["digest"]}


def _targets_met(out: dict[str, Any]) -> dict[str, bool]:
    met = {}
    redis = out.get("materialize_redis", {})
    if "ours" in redis:
        met["materialize_year_within_20s"] = redis["ours"]["seconds"] <= TARGETS["materialize_year_seconds"]
        met["materialize_not_slower_than_stock"] = redis["ours"]["seconds"] <= redis["stock"]["seconds"]
        met["materialize_identical_to_stock"] = bool(redis["equality"]["identical"]
                                                     and redis["equality"]["read_back_identical"])
    met["training_set_under_10s"] = out["training_set"]["seconds"] < TARGETS["training_set_seconds"]
    online = out["online"]
    met["online_1_flight_p99_under_1ms"] = online["1_flight"]["ours"]["p99_ms"] < TARGETS["online_1_p99_ms"]
    met["online_100_flights_p99_under_20ms"] = (online[f"{BATCH_SIZE}_flights"]["ours"]["p99_ms"]
                                                < TARGETS["online_100_p99_ms"])
    return met


def print_features(out: dict[str, Any]) -> None:
    data = out["data"]
    say(f"Features, year {out['year']} ({sum(data['feature_rows'].values()):,} feature rows; built in "
        f"{data['build_features_seconds']}s; validated by the ingestion section {data['validated_by_gx']}, here "
        f"{data['validated_here']})")
    say(f"  {'materialize (whole year)':<34}{'stock s':>9}{'ours s':>9}{'speedup':>9}"
        f"{'read rows/s stock':>19}{'ours':>10}{'written rows/s stock':>22}{'ours':>10}  identical")
    for key, label in (("materialize_redis", "redis"), ("materialize_sqlite", "sqlite")):
        run = out.get(key, {})
        if "ours" not in run:
            say(f"  {label:<34}{run.get('skipped', '-')}")
            continue
        same = run["equality"]["identical"] and run["equality"]["read_back_identical"]
        name = f"{label} ({run['rows_read']:,} read, {run['rows_written']:,} written)"
        say(f"  {name:<34}{run['stock']['seconds']:>9}{run['ours']['seconds']:>9}{run['speedup']:>8}x"
            f"{run['stock']['rows_read_per_s']:>19,}{run['ours']['rows_read_per_s']:>10,}"
            f"{run['stock']['rows_written_per_s']:>22,}{run['ours']['rows_written_per_s']:>10,}  {same}")
    ts = out["training_set"]
    say(f"  training_set {ts['window']}: {ts['rows']:,} rows x {ts['columns']} columns: stock "
        f"{ts['stock']['seconds']}s, peak {ts['stock']['peak_mb']:,} MB; ours (ASOF joins) {ts['ours']['seconds']}s, "
        f"peak {ts['ours']['peak_mb']:,} MB ({ts['speedup']}x, memory x{ts['memory_ratio']}); identical "
        f"{ts['identical']}")
    push = out["push"]
    say(f"  push of the operations state, {push['day']} ({push['store']}): {push['departures']:,} departures -> "
        f"{push['state_rows']:,} state rows in {push['pushes']:,} pushes; {push['events_per_s']:,} events/s end to "
        f"end, {push['online_rows_per_s']:,} rows/s online, {push['offline_rows_per_s']:,} rows/s offline")
    say(f"    one online push p50 {push['online_push']['p50_ms']} ms, p99 {push['online_push']['p99_ms']} ms; "
        f"push to visible online p50 {push['push_to_visible']['p50_ms']} ms, p99 "
        f"{push['push_to_visible']['p99_ms']} ms")
    online = out["online"]
    say(f"  online read, flight_delay_v1 ({online['store']}; first call stock {online['first_call_ms']['stock']} ms, "
        f"ours {online['first_call_ms']['ours']} ms)")
    say(f"    {'':<14}{'stock p50':>11}{'p99':>9}{'ours p50':>11}{'p99':>9}  identical")
    for label in ("1_flight", f"{BATCH_SIZE}_flights"):
        row = online[label]
        say(f"    {label:<14}{row['stock']['p50_ms']:>11}{row['stock']['p99_ms']:>9}{row['ours']['p50_ms']:>11}"
            f"{row['ours']['p99_ms']:>9}  {row['identical_results']}")
    say(f"  targets met: {out['targets_met']}")

