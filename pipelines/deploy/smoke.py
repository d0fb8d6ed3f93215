"""The smoke test a new slot must pass before it gets traffic: health, the served version, golden requests answered
as the registry's model answers them, a 4xx for a bad request, and a latency burst.
"""

from __future__ import annotations

import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import requests

from pipelines.core.settings import Settings
from pipelines.deploy.service import DeployError, smoke_token
from pipelines.serving.contract import SMOKE_TEST_HEADER


@dataclass(frozen=True)
class SmokePolicy:
    """What a new slot must show before it gets traffic."""

    golden_flights: int = 20
    """Real flights of the latest validated day, scored by the slot and by the registry's model in this process
    on the same online features; the answers must agree within ``tolerance``."""
    tolerance: float = 1e-4
    burst_requests: int = 200
    burst_concurrency: int = 8
    p99_budget_ms: float = 250.0
    """Single-flight p99 during the burst. Loose on purpose: the old slot is serving beside it on the same cores
    (``smoke_test`` takes it from the settings' ``smoke_p99_budget_ms``)."""


GOLDEN_TRIES = 3
"""Golden requests asked while the online store keeps changing under them (see ``_golden_answer``)."""


# ---- smoke test --------------------------------------------------------------------------------------------


def golden_requests(settings: Settings, count: int) -> list[dict[str, Any]]:
    """Real flights of the latest validated day, as callers send them."""
    from pipelines.core.lake import open_lake, partition_key
    from pipelines.serving.contract import requests_from_flights

    lake = open_lake(settings)
    days = lake.partitions("validated", "flights")
    if not days:
        raise DeployError("no validated flights in the lake to smoke-test with")
    flights = lake.read_parquet(partition_key("validated", "flights", days[-1], "data.parquet"))
    return requests_from_flights(flights.sample(n=min(count, len(flights)), random_state=0).sort_index())


def _golden_features(settings: Settings, flights: list[dict[str, Any]]) -> Any:
    """The online store's features of ``flights`` now, as the slot reads them."""
    from pipelines.features.store import online_features
    from pipelines.serving.contract import FlightRequest, flight_entities

    return online_features(flight_entities([FlightRequest(**flight) for flight in flights]), settings)


def _expected(settings: Settings, version: str, features: Any) -> list[float]:
    """What the registry's model ``version`` answers on ``features``, computed in this process: the slot must
    agree, or it runs other code, another model or other features."""
    from pipelines.registry.model_files import load_registered

    model = load_registered(settings, version).model
    return [float(p) for p in model.predict_proba(features)]


def _golden_answer(http: Any, settings: Settings, url: str,
                   flights: list[dict[str, Any]]) -> tuple[requests.Response, Any, int]:
    """The slot's answer to the golden request and the features it must have read: the store's features read just
    before and just after the request. Production keeps writing to the online store (the day's operations pushes, a
    materialization), so a read after the request alone can differ from what the slot read; when before and after
    differ, the store moved during the request, and it is asked again (up to ``GOLDEN_TRIES`` times).
    Returns the response, the features after it, and the tries."""
    tries = 0
    while True:
        tries += 1
        before = _golden_features(settings, flights)
        response = http.post(f"{url}/predict", json={"flights": flights}, timeout=30)
        after = _golden_features(settings, flights)
        if response.status_code != 200 or before.equals(after) or tries == GOLDEN_TRIES:
            return response, after, tries


def smoke_test(settings: Settings, url: str, version: str, policy: SmokePolicy | None = None) -> dict[str, Any]:
    """Checks on a slot before it gets traffic; ``failures`` lists each one that failed, in words."""
    policy = policy or SmokePolicy(p99_budget_ms=settings.smoke_p99_budget_ms)
    failures: list[str] = []
    checks: dict[str, Any] = {}
    with requests.Session() as http:
        http.headers.update(settings.service_headers)
        http.headers[SMOKE_TEST_HEADER] = smoke_token(settings)  # answered, not logged as traffic
        for path in ("/healthz", "/readyz"):
            status = http.get(f"{url}{path}", timeout=10).status_code
            checks[path] = status
            if status != 200:
                failures.append(f"GET {path} answered {status}")
        served = http.post(f"{url}/model", json={}, timeout=10).json().get("version")
        checks["model_version"] = served
        if served != version:
            failures.append(f"/model says version {served}, expected {version}")

        flights = golden_requests(settings, policy.golden_flights)
        response, features, tries = _golden_answer(http, settings, url, flights)
        if response.status_code != 200:
            failures.append(f"golden request answered {response.status_code}: {response.text[:300]}")
        else:
            answers = response.json()
            got = [a["probability"] for a in answers]
            expected = _expected(settings, version, features)
            worst = max(abs(g - e) for g, e in zip(got, expected, strict=True))
            checks["golden"] = {"flights": len(flights), "max_abs_difference": worst, "tries": tries,
                                "mean_probability": round(statistics.fmean(got), 4)}
            if not all(0.0 <= p <= 1.0 and math.isfinite(p) for p in got):
                failures.append("golden answers include probabilities outside [0, 1]")
            if worst > policy.tolerance:
                failures.append(f"golden answers differ from the registry model by up to {worst:.6f} "
                                f"(tolerance {policy.tolerance})")
            if any(a["model_version"] != version for a in answers):
                failures.append("golden answers name another model version")
        bad = http.post(f"{url}/predict", json={"flights": [flights[0] | {"dest": "XXX"}]}, timeout=10)
        checks["bad_request"] = bad.status_code
        if bad.status_code != 400 or "dest" not in bad.text:
            failures.append(f"an unknown airport answered {bad.status_code}, expected a 400 naming 'dest'")

    burst = _burst(url, flights, policy, settings.service_headers | {SMOKE_TEST_HEADER: smoke_token(settings)})
    checks["burst"] = burst
    if burst["errors"]:
        failures.append(f"{burst['errors']} of {policy.burst_requests} burst requests failed")
    if burst["p99_ms"] > policy.p99_budget_ms:
        failures.append(f"burst p99 {burst['p99_ms']:.1f} ms is over the budget of {policy.p99_budget_ms:.1f} ms")
    return {"passed": not failures, "failures": failures, "checks": checks, "policy": asdict(policy)}


def _burst(url: str, flights: list[dict[str, Any]], policy: SmokePolicy, headers: dict[str, str]) -> dict[str, Any]:
    """``burst_requests`` single-flight requests from ``burst_concurrency`` clients: latency and errors."""
    bodies = [{"flights": [flights[i % len(flights)]]} for i in range(policy.burst_requests)]
    per_client = [bodies[i::policy.burst_concurrency] for i in range(policy.burst_concurrency)]

    def client(batch: list[dict[str, Any]]) -> tuple[list[float], int]:
        latencies, errors = [], 0
        with requests.Session() as http:
            http.headers.update(headers)
            for body in batch:
                started = time.perf_counter()
                try:
                    ok = http.post(f"{url}/predict", json=body, timeout=10).status_code == 200
                except requests.RequestException:
                    ok = False
                latencies.append((time.perf_counter() - started) * 1000)
                errors += not ok
        return latencies, errors

    with ThreadPoolExecutor(policy.burst_concurrency) as pool:
        results = list(pool.map(client, per_client))
    latencies = sorted(ms for batch, _ in results for ms in batch)
    return {"requests": len(latencies), "errors": sum(errors for _, errors in results),
            "p50_ms": round(latencies[len(latencies) // 2], 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)], 2)}
