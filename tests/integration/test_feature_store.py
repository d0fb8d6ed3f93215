"""Feast on the embedded profile over real validated days: no leakage, point-in-time joins, no training/serving
skew, the training set, and materialization of exactly the run window.

One lake for the module: 2013-01-01..12 landed, ingested, validated (GX) and promoted, feature tables built and the
whole window materialized into SQLite. A test that needs another online store gets its own PIPELINE_HOME on the same
lake (``LAKE_URI``); a test that changes data works on a copy of ``validated/``. Nothing touches the shared store.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.core.dates import LOCAL_TZ, date_range
from pipelines.core.lake import open_lake, partition_key
from pipelines.core.settings import Settings
from pipelines.features.operations import operations_tables
from pipelines.features.push import push_online
from pipelines.features.steps import build_features, feature_key
from pipelines.features.store import (
    ENTITY_COLUMNS,
    FEATURE_SERVICE,
    apply_definitions,
    flight_entities,
    materialize_features,
    online_features,
    open_store,
    run_window,
    training_set,
)
from pipelines.features.tables import PREDICTION_LEAD, WEATHER_FEATURES
from pipelines.ingest.steps import ingest_feed
from pipelines.simulation.feed import land_feed
from pipelines.training.columns import OPERATIONS_COLUMNS
from pipelines.validation.steps import promote_partitions, validate_partitions

DAYS = date_range(date(2013, 1, 1), date(2013, 1, 12))
DAY = date(2013, 1, 9)  # the day whose flights are predicted
LATER_DAY = date(2013, 1, 12)  # its schedule is published after DAY's run window ends
LABEL = "disrupted"
NOT_FEATURES = [*ENTITY_COLUMNS, "event_timestamp", LABEL]
CARRIER_STATS = [f"carrier_{stat}_{w}d" for w in (7, 28)
                 for stat in ("flights", "disruption_rate", "cancel_rate", "mean_arr_delay")]
OUTCOMES = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]


def _settings(home: Path, lake_uri: str | None = None) -> Settings:
    """An embedded profile whatever the caller's environment says."""
    return Settings(pipeline_home=home, lake_uri=lake_uri, s3_endpoint_url=None, feast_profile="embedded",
                    feast_registry_url=None, feast_redis=None)


@dataclass(frozen=True)
class Built:
    """The module's lake with features built and materialized, and a folder for further homes."""

    settings: Settings
    root: Path

    def on_same_lake(self, name: str) -> Settings:
        """Another PIPELINE_HOME (own registry and online store) reading this lake."""
        return _settings(self.root / name, lake_uri=self.settings.lake_root)

    def copy(self, name: str) -> Settings:
        """Another PIPELINE_HOME whose lake is a copy of this lake's validated and reference zones."""
        settings = _settings(self.root / name)
        for zone in ("validated", "reference"):
            shutil.copytree(Path(self.settings.lake_root) / zone, Path(settings.lake_root) / zone)
        return settings


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Real days through the ingestion chain, then build_features and materialize_features over them."""
    root = tmp_path_factory.mktemp("feature_store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPELINE_HOME", str(root / "base"))
        patch.setenv("GX_ANALYTICS_ENABLED", "false")
        for name in ("LAKE_URI", "S3_ENDPOINT_URL", "FEAST_PROFILE", "FEAST_REGISTRY_URL", "FEAST_REDIS"):
            patch.delenv(name, raising=False)
        for name in ("FEAST_HOME", "FEATURES_URI"):  # open_store writes them: restored after the module
            patch.setenv(name, "unset")
        settings = _settings(root / "base")
        land_feed(DAYS, settings)
        ingest_feed(DAYS, settings)
        validate_partitions(DAYS, settings)
        promotion = promote_partitions(DAYS, settings)
        assert promotion["quarantined"] == {}, promotion["quarantined"]
        build_features(DAYS, settings)
        materialize_features(DAYS, settings)
        yield Built(settings=settings, root=root)


@pytest.fixture(scope="module")
def flights(built: Built) -> pd.DataFrame:
    """The validated flights of DAY."""
    return _validated(built.settings, "flights", [DAY])


@pytest.fixture(scope="module")
def training(built: Built) -> pd.DataFrame:
    """The training set of DAY from the module's lake."""
    return training_set([DAY], built.settings)


def _validated(settings: Settings, table: str, days: list[date]) -> pd.DataFrame:
    lake = open_lake(settings)
    return pd.concat([lake.read_parquet(partition_key("validated", table, d, "data.parquet")) for d in days],
                     ignore_index=True)


def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in NOT_FEATURES]


def _rewrite(settings: Settings, table: str, days: list[date], change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Replace validated partitions of ``days`` with ``change`` applied (types kept)."""
    lake = open_lake(settings)
    for day in days:
        key = partition_key("validated", table, day, "data.parquet")
        frame = lake.read_parquet(key)
        lake.write_parquet(key, change(frame.copy()).astype(frame.dtypes))


def _worse_outcomes(frame: pd.DataFrame) -> pd.DataFrame:
    """Every flight 600 minutes late, every fifth cancelled: outcomes only, the schedule untouched."""
    frame[["dep_delay", "arr_delay"]] = 600.0
    cancelled = frame.index % 5 == 0
    for column in OUTCOMES:
        frame.loc[cancelled, column] = pd.NA
    return frame


def _rebuilt_training_set(settings: Settings) -> pd.DataFrame:
    """Rebuild every feature table from ``settings``' lake, apply, and return DAY's training set."""
    build_features(DAYS, settings)
    apply_definitions(open_store(settings))
    return training_set([DAY], settings)


def _value(value: Any) -> Any:
    """One comparable value: None for every kind of null, plain Python scalars otherwise."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _differences(left: pd.DataFrame, right: pd.DataFrame, columns: list[str], key: str = "flight_id") -> dict[str, str]:
    """Per column, the keys whose values differ (nulls equal nulls, numbers compared exactly)."""
    left, right = left.set_index(key).sort_index(), right.set_index(key).sort_index()
    assert left.index.equals(right.index), "the two frames hold different keys"
    found = {}
    for column in columns:
        bad = [(k, a, b) for k, a, b in zip(left.index, map(_value, left[column]), map(_value, right[column]),
                                            strict=True) if a != b]
        if bad:
            found[column] = f"{len(bad)} differ, e.g. {bad[:3]}"
    return found


def _local_day(timestamps: pd.Series) -> pd.Series:
    return timestamps.dt.tz_convert(LOCAL_TZ).dt.tz_localize(None).dt.normalize()


# Leakage: outcomes after the prediction time never reach the features


def test_outcomes_at_or_after_prediction_time_change_no_feature(built: Built, training: pd.DataFrame) -> None:
    """Flights of DAY and later all late or cancelled, later weather changed: DAY's features are the same."""
    changed = built.copy("leak")
    future = [d for d in DAYS if d >= DAY]
    _rewrite(changed, "flights", future, _worse_outcomes)
    _rewrite(changed, "weather", [d for d in DAYS if d > DAY],
             lambda w: w.assign(**{c: w[c] + 50 for c in WEATHER_FEATURES}))

    rebuilt = _rebuilt_training_set(changed)

    # The same-day operations state is made of DAY's departures before each prediction time, which this change
    # moves too (every flight 600 minutes later): its leakage rule is proven event by event, with its own positive
    # control, in tests/unit/test_operations.py.
    features = [c for c in _features(training) if c not in OPERATIONS_COLUMNS]
    assert _differences(training, rebuilt, features) == {}
    assert rebuilt[LABEL].eq(1).all() and training[LABEL].eq(0).any()  # the change did reach the label


def test_outcomes_two_days_before_do_change_carrier_stats(built: Built, training: pd.DataFrame) -> None:
    """Positive control: the leakage test can fail, since outcomes of DAY-2 are published before DAY."""
    changed = built.copy("control")
    _rewrite(changed, "flights", [DAY - timedelta(days=2)], _worse_outcomes)

    rebuilt = _rebuilt_training_set(changed)

    earlier = _validated(built.settings, "flights", [DAY - timedelta(days=2)])
    on_time = earlier[earlier["arr_delay"] < 15]  # flights the change turns into disruptions
    flew = training["carrier"].isin(set(on_time["carrier"]))
    assert flew.sum() > 0.9 * len(training)
    differs = _differences(training[flew], rebuilt[flew], CARRIER_STATS)
    assert set(differs) == {c for c in CARRIER_STATS if "flights" not in c}  # volumes do not change, outcomes do
    moved = (rebuilt[flew]["carrier_disruption_rate_7d"].to_numpy() != training[flew][
        "carrier_disruption_rate_7d"].to_numpy())
    assert moved.all()
    untouched = [*WEATHER_FEATURES, "origin_hour_departures", "origin_day_departures", "plane_seats", "dep_hour"]
    assert _differences(training, rebuilt, untouched) == {}


# Point in time


def test_carrier_stats_come_from_a_day_before_the_flight(built: Built, training: pd.DataFrame) -> None:
    """Stats of day S are published S+1 06:00 New York time: a flight predicted at or after 06:00 sees yesterday's,
    one predicted earlier the day before's; recomputed here from the validated flights themselves."""
    prediction = training["event_timestamp"].dt.tz_convert(LOCAL_TZ).dt.tz_localize(None)
    stats_day = (prediction - pd.Timedelta(hours=6)).dt.normalize() - pd.Timedelta(days=1)
    assert (stats_day < _local_day(training["scheduled_departure"])).all()
    assert set(stats_day) == {pd.Timestamp(DAY - timedelta(days=1)), pd.Timestamp(DAY - timedelta(days=2))}

    history = _validated(built.settings, "flights", [d for d in DAYS if d < DAY])
    history = history.assign(day=pd.to_datetime(history[["year", "month", "day"]].astype("int64")),
                             bad=(history["arr_delay"].isna() | (history["arr_delay"] >= 15)).astype(int),
                             gone=history["dep_time"].isna().astype(int))
    for (carrier, day), rows in training.groupby(["carrier", stats_day]):
        window = history[(history["carrier"] == carrier) & history["day"].between(day - pd.Timedelta(days=6), day)]
        assert (rows["carrier_flights_7d"] == len(window)).all(), (carrier, day)
        assert rows["carrier_disruption_rate_7d"].to_numpy() == pytest.approx(window["bad"].mean())
        assert rows["carrier_cancel_rate_7d"].to_numpy() == pytest.approx(window["gone"].mean())


def test_weather_is_the_latest_observation_at_most_three_hours_before_prediction(
    built: Built, training: pd.DataFrame
) -> None:
    weather = _validated(built.settings, "weather", [DAY - timedelta(days=1), DAY])
    observed = weather[["origin", "time_hour", *WEATHER_FEATURES]].astype({"time_hour": "datetime64[us, UTC]"})
    flights = training.sort_values("event_timestamp")
    expected = pd.merge_asof(flights[["flight_id", "origin", "event_timestamp"]], observed.sort_values("time_hour"),
                             left_on="event_timestamp", right_on="time_hour", by="origin", direction="backward",
                             tolerance=pd.Timedelta(hours=3))

    assert expected["time_hour"].notna().mean() > 0.95
    age = expected["event_timestamp"] - expected["time_hour"]
    assert ((age >= pd.Timedelta(0)) & (age <= pd.Timedelta(hours=3)))[expected["time_hour"].notna()].all()
    assert _differences(flights, expected, WEATHER_FEATURES) == {}


# Training set


def test_training_set_has_one_labelled_row_per_validated_flight(flights: pd.DataFrame, training: pd.DataFrame) -> None:
    from pipelines.features.tables import flight_id

    assert len(training) == len(flights)
    assert not training["flight_id"].duplicated().any()
    assert sorted(training["flight_id"]) == sorted(flight_id(flights))

    source = flights.assign(flight_id=flight_id(flights)).set_index("flight_id").loc[training["flight_id"]]
    cancelled = source["dep_time"].isna()
    diverted = ~cancelled & source["arr_delay"].isna()
    expected = ((source["arr_delay"] >= 15) | cancelled | diverted).astype("int64")
    assert training[LABEL].isin([0, 1]).all()
    assert training[LABEL].tolist() == expected.tolist()
    assert 0 < training[LABEL].mean() < 1


def test_prediction_time_is_two_hours_before_scheduled_departure(flights: pd.DataFrame, training: pd.DataFrame) -> None:
    from pipelines.features.tables import flight_id

    assert (training["scheduled_departure"] - training["event_timestamp"] == PREDICTION_LEAD).all()
    assert PREDICTION_LEAD == pd.Timedelta(hours=2)
    # Independently of time_hour: the local scheduled departure is the feed's sched_dep_time (hhmm).
    hhmm = flights.assign(flight_id=flight_id(flights)).set_index("flight_id").loc[training["flight_id"],
                                                                                    "sched_dep_time"]
    local = training["scheduled_departure"].dt.tz_convert(LOCAL_TZ)
    assert (local.dt.hour * 100 + local.dt.minute).tolist() == hhmm.astype("int64").tolist()
    assert (_local_day(training["scheduled_departure"]) == pd.Timestamp(DAY)).all()


# Training/serving skew


@pytest.mark.parametrize("local_time", ["06:00", "13:00"], ids=["at_stats_publication", "afternoon"])
def test_online_features_equal_historical_features_at_the_materialization_end(
    built: Built, flights: pd.DataFrame, local_time: str
) -> None:
    """Materialized exactly up to t, the online store serves what get_historical_features gives at t, for every
    feature of the service (06:00 is the instant yesterday's statistics are published: both sides include it)."""
    t = pd.Timestamp(f"{DAY} {local_time}").tz_localize(LOCAL_TZ).tz_convert("UTC")
    entities = flight_entities(flights)
    sample = entities[entities["event_timestamp"].between(t - pd.Timedelta(minutes=59), t)]
    assert len(sample) >= 20 and sample["origin"].nunique() == 3
    settings = built.on_same_lake(f"skew-{local_time.replace(':', '')}")
    store = open_store(settings)
    apply_definitions(store)
    store.materialize(start_date=run_window(DAYS)[0], end_date=t.to_pydatetime())
    # The operations views are never materialized: their state up to t is pushed, as the replay pushes it.
    state = operations_tables(flights, DAY)
    push_online(store, {view: rows[rows["event_timestamp"] <= t] for view, rows in state.items()})

    online = online_features(sample, store=store)
    service = store.get_feature_service(FEATURE_SERVICE)
    at_t = sample[ENTITY_COLUMNS].assign(event_timestamp=t)
    historical = store.get_historical_features(entity_df=at_t, features=service).to_df()

    names = [f.name for projection in service.feature_view_projections for f in projection.features]
    assert len(names) == 31 + len(OPERATIONS_COLUMNS)
    assert _differences(online, historical, names) == {}
    assert online[["temp", "origin_day_departures", "carrier_flights_7d", "route_flights_28d",
                   "ops_origin_departed", "ops_carrier_pending"]].notna().all().all()
    assert online["plane_type"].notna().mean() > 0.5  # some tail numbers are missing from the planes table


# Materialization


def _online_rows(settings: Settings) -> dict[str, int]:
    with sqlite3.connect(settings.pipeline_home / "feast" / "online.db") as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}


def test_materialize_features_twice_gives_the_same_online_store(built: Built) -> None:
    settings = built.on_same_lake("twice")
    sample = flight_entities(_validated(built.settings, "flights", DAYS[-3:])).sample(200, random_state=7)

    materialize_features(DAYS, settings)
    first, rows = online_features(sample, settings), _online_rows(settings)
    materialize_features(DAYS, settings)

    assert _differences(first, online_features(sample, settings), _features(first)) == {}
    assert _online_rows(settings) == rows
    assert first["carrier_flights_7d"].notna().all()


def test_a_view_being_materialized_keeps_serving_its_last_values(built: Built) -> None:
    """A bug, found by make year: materializing marks each view MATERIALIZING in the registry, and Feast refused
    online reads of it until the run ended, so the model service answered 503 (a new slot failed its smoke test
    while a day was being materialized). A server that reads the registry mid-run keeps serving the last values."""
    from feast.feature_view import FeatureViewState

    settings = built.on_same_lake("materializing")
    materialize_features([DAY], settings)
    sample = flight_entities(_validated(built.settings, "flights", [DAY])).sample(50, random_state=3)
    before = online_features(sample, settings)
    materializer = open_store(settings)  # as store.materialize marks it, committed to the shared registry
    view = materializer.get_feature_view("weather_hourly")
    view.state = FeatureViewState.MATERIALIZING
    materializer.registry.apply_feature_view(view, materializer.project, commit=True)

    server = open_store(settings)  # a server reading the registry now
    assert server.get_feature_view("weather_hourly").state == FeatureViewState.MATERIALIZING
    assert _differences(online_features(sample, store=server), before, _features(before)) == {}
    weather = _online(settings, [f"weather_hourly:{c}" for c in WEATHER_FEATURES[:2]], [{"origin": "JFK"}])
    assert weather[WEATHER_FEATURES[0]].notna().all()  # stock Feast's read path too


@dataclass(frozen=True)
class Window:
    """A fresh online store holding only DAY's run window."""

    settings: Settings
    end: pd.Timestamp


@pytest.fixture(scope="module")
def window(built: Built) -> Window:
    settings = built.on_same_lake("window")
    result = materialize_features([DAY], settings)
    return Window(settings=settings, end=pd.Timestamp(result["end"]).tz_convert("UTC"))


def _online(settings: Settings, features: list[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    return open_store(settings).get_online_features(features=features, entity_rows=rows).to_df()


def test_run_window_serves_the_latest_weather_inside_it_not_later(built: Built, window: Window) -> None:
    weather = _validated(built.settings, "weather", DAYS)
    inside = weather[weather["time_hour"] <= window.end].sort_values("time_hour").groupby("origin").tail(1)
    assert (weather["time_hour"] > window.end + pd.Timedelta(days=2)).any()  # later weather exists offline

    online = _online(window.settings, [f"weather_hourly:{c}" for c in WEATHER_FEATURES],
                     [{"origin": o} for o in inside["origin"]])

    assert _differences(online, inside, WEATHER_FEATURES, key="origin") == {}
    last = weather.sort_values("time_hour").groupby("origin").tail(1)
    assert _differences(online, last, WEATHER_FEATURES, key="origin") != {}


def test_run_window_serves_its_own_statistics_and_schedules_only(built: Built, window: Window) -> None:
    lake = open_lake(built.settings)
    stats = lake.read_parquet(feature_key("carrier_stats", DAY))
    online = _online(window.settings, [f"carrier_stats:{c}" for c in CARRIER_STATS],
                     [{"carrier": c} for c in stats["carrier"]])
    assert _differences(online, stats, CARRIER_STATS, key="carrier") == {}

    schedule = ["flight_schedule:origin_day_departures"]
    own = _validated(built.settings, "flights", [DAY]).pipe(flight_entities)
    later = _validated(built.settings, "flights", [LATER_DAY]).pipe(flight_entities)
    assert _online(window.settings, schedule, [{"flight_id": f} for f in own["flight_id"]]
                   )["origin_day_departures"].notna().all()
    assert _online(window.settings, schedule, [{"flight_id": f} for f in later["flight_id"]]
                   )["origin_day_departures"].isna().all()


def test_run_window_serves_the_plane_attributes_its_flights_need(built: Built, window: Window) -> None:
    own = flight_entities(_validated(built.settings, "flights", [DAY]))
    known = own[own["tailnum"].isin(set(open_lake(built.settings).read_parquet(
        feature_key("plane_attributes", date(2012, 12, 31)))["tailnum"]))].head(50)
    online = online_features(known, window.settings)
    assert online["plane_seats"].notna().all()



def test_rerunning_an_earlier_day_keeps_the_latest_values_online(built: Built) -> None:
    settings = built.on_same_lake("rerun")
    materialize_features(DAYS, settings)
    latest = open_lake(built.settings).read_parquet(feature_key("carrier_stats", DAYS[-1]))

    materialize_features([DAYS[2]], settings)

    online = _online(settings, [f"carrier_stats:{c}" for c in CARRIER_STATS],
                     [{"carrier": c} for c in latest["carrier"]])
    assert _differences(online, latest, CARRIER_STATS, key="carrier") == {}


def _online_content(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(settings.pipeline_home / "feast" / "online.db") as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall()) for table in tables}


def test_loading_the_days_rows_hour_by_hour_serves_what_materializing_every_view_each_hour_serves(
        built: Built) -> None:
    """The replay reads a day's rows of the windowed views once and loads, hour by hour, only the views with rows
    stamped in the hour's window (``WindowLoads``, ``views_with_rows``). After every hour the online store must hold
    exactly what Feast's ``materialize`` of every windowed view each hour leaves in it, and the registry records the
    window loaded."""
    from pipelines.features.store import WindowLoads, windowed_views
    from pipelines.simulation.replay import views_with_rows

    every, only = built.on_same_lake("every_view_hourly"), built.on_same_lake("views_with_rows_hourly")
    stores = {}
    for settings in (every, only):
        stores[settings.pipeline_home] = store = open_store(settings)
        apply_definitions(store)
    every_store, only_store = stores[every.pipeline_home], stores[only.pipeline_home]
    views = windowed_views(every_store.list_feature_views())
    start = pd.Timestamp(run_window([DAY])[0]).tz_convert("UTC")
    hours = [start.floor("h") + pd.Timedelta(hours=n, seconds=1) for n in range(1, 31)]
    loads = WindowLoads(only_store, views, start.to_pydatetime(), hours[-1].to_pydatetime())
    assert sorted(loads.stamps) == sorted(views) and all(len(times) for times in loads.stamps.values())

    loaded, skipped, written = start, 0, 0
    for until in hours:
        every_store.materialize(start_date=loaded.to_pydatetime(), end_date=until.to_pydatetime(),
                                feature_views=views)
        if due := views_with_rows(loads.stamps, loaded, until):
            written += loads.load(due, loaded, until)
        skipped += len(views) - len(due)
        assert _online_content(only) == _online_content(every), f"after the hour ending {until}"
        loaded = until
    assert skipped > len(hours) and written > 0  # most hours load the weather alone
    loads.record()
    weather = open_store(only).get_feature_view("weather_hourly")
    assert weather.materialization_intervals[-1] == (start.to_pydatetime(), hours[-1].to_pydatetime())
