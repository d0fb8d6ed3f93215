"""The freshness every answer states is read from Feast's registry off the request path, once per refresh however
many requests find it old. Before, every request that found the cached value old read the registry itself: up to
32 reads at concurrency 32, each with a rebuild of the online reader.

The registry read is a function here (counting its calls, held until the test lets it go): what is under test is
who calls it and who waits for it, not Feast. The Predictor's own read runs on a real registry in
tests/integration/test_serving_fast_path.py and test_service_http.py."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from pipelines.serving.freshness import FeatureFreshness


class HeldRead:
    """A registry read that counts its calls and, once ``hold()`` is called, waits for ``let_go()``."""

    def __init__(self) -> None:
        self.calls = 0
        self.started, self.gate = threading.Event(), threading.Event()
        self.gate.set()
        self.value = "2013-03-01T00:00:00+00:00"

    def hold(self) -> None:
        self.gate.clear()

    def let_go(self) -> None:
        self.gate.set()

    def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        assert self.gate.wait(timeout=30), "the test never let the read go"
        return self.value


def test_callers_never_wait_for_the_registry_and_it_is_read_once_per_refresh() -> None:
    read = HeldRead()
    freshness = FeatureFreshness(read, max_age_s=3600.0)  # read once at start
    assert read.calls == 1 and freshness.value() == read.value
    freshness.max_age_s = 0.0  # and old from now on
    read.started.clear()
    read.hold()
    read.value = "2013-03-02T00:00:00+00:00"
    # 32 concurrent requests find the value old while the one refresh is held: each gets the value it has at
    # once (they return while the read cannot finish), and the registry is read once, not 32 times.
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: freshness.value(), range(32)))
    assert answers == ["2013-03-01T00:00:00+00:00"] * 32
    assert read.started.wait(timeout=30)
    assert read.calls == 2
    read.let_go()
    for thread in threading.enumerate():
        if thread.name == "feature-freshness":
            thread.join(timeout=30)
    assert freshness.value() == "2013-03-02T00:00:00+00:00"


def test_a_failed_refresh_keeps_the_last_value_and_waits_before_the_next() -> None:
    calls = []

    def read() -> str:
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionError("registry down")
        return "2013-03-01T00:00:00+00:00"

    freshness = FeatureFreshness(read, max_age_s=3600.0)
    freshness.refresh()  # fails: logged, the old value kept
    assert freshness.value() == "2013-03-01T00:00:00+00:00"
    assert len(calls) == 2  # and the failure counts as a read: no new one before max_age_s
