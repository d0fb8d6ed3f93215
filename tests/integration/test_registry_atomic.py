"""The embedded profile's Feast registry is written whole (``pipelines.features.registry_store``): a process reading
it while another rewrites it sees the old registry or the new one, never an empty or half-written file. With Feast's
own ``FileRegistryStore`` this test's reader got "Wire format was corrupt" within 3 s here, and ``make year`` saw a
new slot's smoke test fail on "Feature service flight_delay_v1 does not exist"."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.repo_config import RegistryConfig

from pipelines.core.settings import Settings
from pipelines.features.registry_store import AtomicFileRegistryStore
from pipelines.features.store import apply_definitions, open_store

READ_S = 3.0


def _rewrite_forever(path: str, registry: bytes, stop: multiprocessing.synchronize.Event) -> None:
    store = AtomicFileRegistryStore(RegistryConfig(path=path), Path("/"))
    proto = RegistryProto()
    proto.ParseFromString(registry)
    while not stop.is_set():
        store.update_registry_proto(proto)


def test_the_store_opens_its_registry_through_the_atomic_store(settings: Settings) -> None:
    store = open_store(settings)
    assert isinstance(store.registry._registry_store, AtomicFileRegistryStore)  # type: ignore[attr-defined]


def test_a_reader_never_sees_a_registry_being_rewritten(settings: Settings) -> None:
    store = open_store(settings)
    apply_definitions(store)
    path = settings.pipeline_home / "feast" / "registry.db"
    registry, written = path.read_bytes(), path.stat().st_mtime_ns
    stop = multiprocessing.get_context("spawn").Event()
    writer = multiprocessing.get_context("spawn").Process(target=_rewrite_forever, args=(str(path), registry, stop))
    writer.start()
    reads, broken = 0, []
    try:
        started = time.monotonic() + 60  # the writer imports Feast first
        while path.stat().st_mtime_ns == written and time.monotonic() < started:
            time.sleep(0.05)
        deadline = time.monotonic() + READ_S
        while time.monotonic() < deadline:
            proto = RegistryProto()
            try:
                proto.ParseFromString(path.read_bytes())
            except Exception as error:  # a half-written file
                broken.append(repr(error))
                continue
            reads += 1
            if not proto.feature_services:  # an empty (truncated) file parses as an empty registry
                broken.append("no feature service")
    finally:
        stop.set()
        writer.join(timeout=30)
    assert reads > 100 and broken == [], (reads, broken[:3])
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
