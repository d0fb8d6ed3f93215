"""The ``serving`` section of ``make bench``: the model service under load beside a bare BentoML service serving the
same model, in the same run, and where a request's time goes.

1. **A champion of the bench's own** in the scratch home: a quick model trained by the pipeline's steps
   (``train_pipeline``, one trial, a few epochs), registered and promoted, and the window materialized into the
   embedded (SQLite) online store.
2. **Two services**: ours (``services/flight_delay_service.py``: validation, online features, model, prediction
   log) deployed as ``make serve`` does (its Bento in a slot behind the HAProxy front door, on a free port block)
   and loaded both in its slot and through the front door, and the bare one (``benchmarks/bare_service.py``: the
   same registered version, the same BentoML settings, the model input sent ready-made) on a free port. Both
   must give the same probability for the flight. The targets are judged on the slot: the front door is the
   deployment's, and its cost is reported beside.
3. **Load**: ``wrk`` (C, one thread: it leaves the server its CPU, which a Python load generator would not on two
   cores), the same real single-flight request from the lake over and over, at concurrency 1, 8 and 32 for
   ``DURATION_S`` each after a warm-up, the two services alternating. A Lua ``done`` hook prints requests/s,
   p50/p99 and the non-2xx and socket error counts as JSON. The service processes' CPU time per request is read
   from ``/proc`` around each run. Then ``BATCH_FLIGHTS`` flights per request at ``BATCH_CONCURRENCY``, ours in its
   slot beside bare. Targets (``TARGETS``), judged in the slot at concurrency 8 and 32: at least 0.90 of bare's
   throughput and a p99 at most 1.2 times bare's.
4. **Where the time goes**: one request's stages timed in this process for ``BREAKDOWN_FLIGHTS`` real flights,
   the columns path the service runs beside the frame path it ran before (its functions are still there for
   batch callers); both must give the same probabilities. What is left of the server's CPU per
   request after ``Predictor.predict`` is BentoML: HTTP, the request's validation, JSON out, access log.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import requests

from benchmarks.console import say
from pipelines.core.settings import Settings

CONCURRENCY = (1, 8, 32)
DURATION_S = 10
WARMUP_S = 3
BREAKDOWN_FLIGHTS = 500
TARGETS = {"throughput_vs_bare": 0.90, "p99_vs_bare": 1.2}
"""Judged in the slot at concurrency 8 and 32: at least 0.90 of bare's requests/s, a p99 at most 1.2 times bare's."""
JUDGED_AT = ("8", "32")
BATCH_FLIGHTS = 100
BATCH_CONCURRENCY = 8
RUN_KEY = "bench/serving"
BARE_SERVICE = "benchmarks.bare_service:BareModelService"

# wrk's script: POST the body file named after ``--``; count non-2xx answers; print the run's figures as JSON.
WRK_SCRIPT = r"""
non2xx = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    '\n{"requests": %d, "duration_s": %.3f, "requests_per_s": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
    '"max_ms": %.3f, "non_2xx": %d, "errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000, bad,
    e.connect, e.read, e.write, e.timeout))
end
"""


# ------------------------------------------------------------------------------------------------------------------
# 1. the champion and a real flight
# ------------------------------------------------------------------------------------------------------------------


def prepare_champion(settings: Settings, days: list[date]) -> dict[str, Any]:
    """Materialize the window online (which applies the Feast definitions), then train, register and promote a
    quick model; returns its version."""
    from pipelines.features.store import materialize_features
    from pipelines.registry.gate import promote_model
    from pipelines.registry.register import alias_version, register_model
    from pipelines.training.steps import train_pipeline

    started = time.perf_counter()
    materialize_features(days, settings)
    train_pipeline(days, RUN_KEY, settings, trials=1, max_epochs=3, valid_days=7, test_days=7)
    register_model(RUN_KEY, settings)
    decision = promote_model(RUN_KEY, settings)["decision"]
    if decision != "promote":
        raise RuntimeError(f"the bench's model was not promoted ({decision}): nothing to serve")
    return {"version": alias_version("champion", settings), "seconds": round(time.perf_counter() - started, 1)}


def real_flights(settings: Settings, day: date, limit: int) -> list[dict[str, Any]]:
    """Request bodies of the day's validated flights that have a plane, in schedule order."""
    from pipelines.core.lake import open_lake, partition_key
    from pipelines.serving.contract import requests_from_flights

    flights = open_lake(settings).read_parquet(partition_key("validated", "flights", day, "data.parquet"))
    flights = flights[flights["tailnum"].notna()].sort_values(["time_hour", "minute", "carrier", "flight"])
    return requests_from_flights(flights.head(limit))


# ------------------------------------------------------------------------------------------------------------------
# 2. the services
# ------------------------------------------------------------------------------------------------------------------


@contextmanager
def running_services(settings: Settings) -> Iterator[dict[str, dict[str, Any]]]:
    """Ours deployed as ``make serve`` deploys it (its Bento in a slot behind the HAProxy front door, on a free
    port block), measured both in its slot (``ours``) and through the front door (``front``), and the bare
    service on a free port; all resolving the scratch registry's ``champion``, stopped on the way out, also on
    failure."""
    from pipelines.core.processes import free_port, running
    from pipelines.deploy.blue_green import deploy_service, stop_all
    from pipelines.deploy.service import start_service, stop_service

    deployed = settings.model_copy(update={"service_port": free_port(3)})
    with ExitStack() as stack:
        stack.callback(stop_all, deployed)
        record = deploy_service(deployed)
        slot = running(deployed, f"slot-{record['slot']}") or {}
        ours = {"url": f"http://127.0.0.1:{slot.get('port')}", "pid": slot.get("pid")}
        stack.callback(stop_service, settings, name="bare")
        bare = start_service(settings, port=free_port(), name="bare", target=BARE_SERVICE)
        yield {"ours": ours, "front": {"url": record["url"]}, "bare": bare}


def _post(url: str, body: dict[str, Any]) -> Any:
    response = requests.post(f"{url}/predict", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


# ------------------------------------------------------------------------------------------------------------------
# 3. load
# ------------------------------------------------------------------------------------------------------------------


def _tree_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of ``pid`` and its descendants (a ``bentoml serve`` and its workers, which BentoML
    starts in sessions of their own), from ``/proc``; None off Linux."""
    if pid is None or not Path("/proc").is_dir():
        return None
    parents, ticks = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        child = int(stat.parent.name)
        # After the command name: state, ppid, ...; utime and stime are fields 14 and 15 of the line.
        parents[child], ticks[child] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, grew = {pid}, True
    while grew:
        grown = tree | {child for child, parent in parents.items() if parent in tree}
        grew, tree = grown != tree, grown
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def run_wrk(wrk: str, script: Path, url: str, body: Path, connections: int, seconds: int,
            pid: int | None = None) -> dict[str, Any]:
    """One wrk run against ``url``'s ``/predict``; adds the server's and wrk's CPU milliseconds per request."""
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
               f"{url}/predict", "--", str(body)]
    server_before = _tree_cpu_seconds(pid)
    own = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_after = _tree_cpu_seconds(pid)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    n = max(1, figures["requests"])
    if server_before is not None and server_after is not None:
        figures["server_cpu_ms_per_request"] = round(1000 * (server_after - server_before) / n, 3)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (own.ru_utime + own.ru_stime)
    figures["wrk_cpu_ms_per_request"] = round(1000 * wrk_cpu / n, 3)
    figures["load_average_1m"] = round(os.getloadavg()[0], 2)  # the machine's other work during the run
    return figures


def load_runs(wrk: str, work: Path, services: dict[str, dict[str, Any]],
              bodies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every concurrency against both services after a warm-up of each; which goes first alternates, so a change
    in the machine's other load does not always fall on the same one."""
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    files = {}
    for name, body in bodies.items():
        files[name] = work / f"{name}_body.json"
        files[name].write_text(json.dumps(body))
    for name, service in services.items():
        run_wrk(wrk, script, service["url"], files[name], 8, WARMUP_S)
    runs: dict[str, dict[str, Any]] = {}
    for i, connections in enumerate(CONCURRENCY):
        order = list(services) if i % 2 == 0 else list(reversed(services))
        pair = {name: run_wrk(wrk, script, services[name]["url"], files[name], connections, DURATION_S,
                              services[name].get("pid")) for name in order}
        runs[str(connections)] = {name: pair[name] for name in services}
    return runs


# ------------------------------------------------------------------------------------------------------------------
# 4. where the time goes
# ------------------------------------------------------------------------------------------------------------------


Stage = tuple[str, Callable[[Any], Any]]


def _timed_stages(stages: list[Stage], value: Any, into: dict[str, list[float]]) -> Any:
    """Run ``stages`` in order, each on the previous one's result, adding each one's seconds to ``into``."""
    for name, stage in stages:
        started = time.perf_counter()
        value = stage(value)
        into.setdefault(name, []).append(time.perf_counter() - started)
    return value


def request_breakdown(settings: Settings, version: str, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Median milliseconds per stage of a one-flight request, the columns path (now) and the frame path (before),
    on the same flights, model and store; whether their probabilities are identical."""
    from pipelines.features.store import online_feature_columns, online_features
    from pipelines.registry.model_files import load_registered
    from pipelines.serving.contract import FlightRequest, entity_columns, flight_entities
    from pipelines.serving.predictor import Predictor

    predictor = Predictor(settings, champion=load_registered(settings, version))
    model, store = predictor.champion.model, predictor.store
    validate: Stage = ("request validation (pydantic)", lambda body: [FlightRequest(**body)])

    def answer_and_log(state: dict[str, Any]) -> dict[str, Any]:
        answers = predictor.answers(state["entities"], state["p"].tolist())
        predictor.log.add(predictor.log_records(state["requests"], answers, state["p"].tolist(), state["features"]))
        return state

    now: list[Stage] = [
        validate,
        ("entity keys", lambda reqs: {"requests": reqs, "entities": entity_columns(reqs)}),
        ("online read", lambda s: s | {"features": online_feature_columns(s["entities"], store=store)}),
        ("preprocessing", lambda s: s | {"encoded": model.preprocessor.transform_columns(s["features"])}),
        ("network forward + calibration", lambda s: s | {"p": model.online_probabilities(*s["encoded"])}),
        ("answer + log record", answer_and_log),
    ]
    before: list[Stage] = [
        validate,
        ("entity keys", lambda reqs: {"entities": flight_entities(reqs)}),
        ("online read", lambda s: s | {"features": online_features(s["entities"], store=store)}),
        ("preprocessing", lambda s: s | {"encoded": model.preprocessor.transform(s["features"])}),
        ("network built per call", lambda s: s | {"net": model.network()}),
        ("network forward + calibration", lambda s: s | {"p": model.probabilities(*s["encoded"])}),
        ("log record: features .to_json()", lambda s: s | {"json": s["features"].iloc[0].to_json()}),
    ]
    # One path at a time over all flights: interleaving them flight by flight would run each stage with the other
    # path's data in the caches (the frame path's pandas calls tripled the forward pass's time that way).
    times: dict[str, dict[str, list[float]]] = {"now": {}, "before": {}}
    total: list[Stage] = [("total (Predictor.predict)", lambda body: predictor.predict([FlightRequest(**body)]))]
    new = [_timed_stages(now, body, times["now"])["p"] for body in bodies]
    old = [_timed_stages(before, body, times["before"])["p"] for body in bodies]
    for body in bodies:
        _timed_stages(total, body, times["now"])
    predictor.log.flush()
    # The columns path scores in numpy, the frame path in torch: the same to float32 precision.
    same = all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(new, old, strict=True))

    def medians(stages: dict[str, list[float]]) -> dict[str, float]:
        return {name: round(1000 * float(np.median(seconds)), 4) for name, seconds in stages.items()}

    out = {path: medians(stages) for path, stages in times.items()}
    out["before"]["total (sum of stages)"] = round(sum(out["before"].values()), 4)
    return {"flights": len(bodies), "ms_median": out, "same_probabilities": same}


# ------------------------------------------------------------------------------------------------------------------
# the section
# ------------------------------------------------------------------------------------------------------------------


def bench_serving(settings: Settings, days: list[date]) -> dict[str, Any]:
    """The whole section on the bench's scratch home (``days``: the window to train on and serve)."""
    from pipelines.features.store import online_feature_columns, open_store
    from pipelines.serving.contract import FlightRequest, entity_columns
    from pipelines.serving.prediction_log import feature_json

    wrk = shutil.which("wrk")
    if wrk is None:
        return {"skipped": "wrk is not installed (Debian: apt-get install wrk)"}
    champion = prepare_champion(settings, days)
    flights = real_flights(settings, days[-1], BREAKDOWN_FLIGHTS)
    flight = flights[len(flights) // 2]
    store = open_store(settings)
    features = online_feature_columns(entity_columns([FlightRequest(**flight)]), store=store)
    bodies = {"ours": {"flights": [flight]}, "front": {"flights": [flight]},
              "bare": {"rows": [json.loads(feature_json(features, 0))]}}
    batch = flights[:BATCH_FLIGHTS]
    batch_features = online_feature_columns(entity_columns([FlightRequest(**f) for f in batch]), store=store)
    batch_bodies = {"ours": {"flights": batch},
                    "bare": {"rows": [json.loads(feature_json(batch_features, i)) for i in range(len(batch))]}}
    breakdown = request_breakdown(settings, champion["version"], flights)

    work = settings.pipeline_home / "bench_serving"
    work.mkdir(parents=True, exist_ok=True)
    with running_services(settings) as services:
        answers = {name: _post(service["url"], bodies[name]) for name, service in services.items()}
        served_version = requests.post(f"{services['ours']['url']}/model", json={}, timeout=30).json()["version"]
        same = round(answers["bare"][0], 6) == answers["ours"][0]["probability"]
        if not same or served_version != champion["version"]:
            raise RuntimeError(f"the services disagree: {answers} (version {served_version}, "
                               f"champion {champion['version']})")
        runs = load_runs(wrk, work, services, bodies)
        batches = batch_runs(wrk, work, {name: services[name] for name in batch_bodies}, batch_bodies)

    out = {"model": champion | {"served": served_version}, "flight": flight,
           "probability": answers["ours"][0]["probability"], "duration_s": DURATION_S, "warmup_s": WARMUP_S,
           "load_generator": "wrk, 1 thread, one connection per concurrent request", "runs": runs,
           "ratio_ours_to_bare": {c: round(r["ours"]["requests_per_s"] / r["bare"]["requests_per_s"], 3)
                                  for c, r in runs.items()},
           "ratio_front_to_bare": {c: round(r["front"]["requests_per_s"] / r["bare"]["requests_per_s"], 3)
                                   for c, r in runs.items()},
           "p99_ratio_ours_to_bare": {c: round(r["ours"]["p99_ms"] / r["bare"]["p99_ms"], 3)
                                      for c, r in runs.items()},
           "cpu_ratio_ours_to_bare": _cpu_ratios(runs), "breakdown": breakdown,
           "batch": {"flights_per_request": len(batch), "concurrency": BATCH_CONCURRENCY, "runs": batches,
                     "ratio_ours_to_bare": round(batches["ours"]["requests_per_s"]
                                                 / batches["bare"]["requests_per_s"], 3)}}
    out["bentoml_cpu_ms_per_request"] = _bentoml_share(runs["1"], breakdown)
    out["targets"] = TARGETS
    out["targets_met"] = {
        **{f"throughput_vs_bare_at_{c}": out["ratio_ours_to_bare"][c] >= TARGETS["throughput_vs_bare"]
           for c in JUDGED_AT},
        **{f"p99_vs_bare_at_{c}": out["p99_ratio_ours_to_bare"][c] <= TARGETS["p99_vs_bare"] for c in JUDGED_AT}}
    return out


def batch_runs(wrk: str, work: Path, services: dict[str, dict[str, Any]],
               bodies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``BATCH_FLIGHTS`` flights per request at ``BATCH_CONCURRENCY``, ours in its slot beside bare."""
    script = work / "post.lua"
    runs = {}
    for name, body in bodies.items():
        path = work / f"{name}_batch_body.json"
        path.write_text(json.dumps(body))
        runs[name] = run_wrk(wrk, script, services[name]["url"], path, BATCH_CONCURRENCY, DURATION_S,
                             services[name].get("pid"))
        runs[name]["flights_per_s"] = round(runs[name]["requests_per_s"] * len(next(iter(body.values()))))
    return runs


def _cpu_ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float] | None:
    """Bare over our server CPU per request: the throughput ratio when each service has a core to itself, which
    the machine's other work moves far less than the measured one."""
    if any("server_cpu_ms_per_request" not in run for pair in runs.values() for run in pair.values()):
        return None
    return {c: round(r["bare"]["server_cpu_ms_per_request"] / r["ours"]["server_cpu_ms_per_request"], 3)
            for c, r in runs.items()}


def _bentoml_share(run: dict[str, dict[str, Any]], breakdown: dict[str, Any]) -> dict[str, float] | None:
    """Server CPU per request at concurrency 1 minus what the request's own work costs in-process: BentoML's part
    (HTTP, validation, JSON, access log, the worker's event loop and thread hand-off)."""
    if "server_cpu_ms_per_request" not in run["ours"]:
        return None
    now = breakdown["ms_median"]["now"]
    model = now["preprocessing"] + now["network forward + calibration"]
    return {"ours": round(run["ours"]["server_cpu_ms_per_request"] - now["total (Predictor.predict)"], 3),
            "bare": round(run["bare"]["server_cpu_ms_per_request"] - model, 3)}


def print_serving(out: dict[str, Any]) -> None:
    if "skipped" in out:
        say(f"Serving: skipped ({out['skipped']})")
        return
    flight = out["flight"]
    say(f"Serving, one flight per POST /predict ({flight['carrier']}{flight['flight']} {flight['origin']}-"
        f"{flight['dest']} {flight['scheduled_departure']}), model version {out['model']['version']}, "
        f"{out['load_generator']}, {out['duration_s']}s per run")
    say(f"  {'concurrency':<13}{'service':<9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'non-2xx':>9}"
        f"{'errors':>8}{'server CPU ms/req':>19}{'wrk CPU ms/req':>16}")
    for connections, pair in out["runs"].items():
        for name, run in pair.items():
            say(f"  {connections:<13}{name:<9}{run['requests_per_s']:>8,.0f}{run['p50_ms']:>9.2f}{run['p99_ms']:>9.2f}"
                f"{run['max_ms']:>9.1f}{run['non_2xx']:>9}{sum(run['errors'].values()):>8}"
                f"{run.get('server_cpu_ms_per_request', '-'):>19}{run['wrk_cpu_ms_per_request']:>16}")
    ratios = ", ".join(f"c={c} {r}" for c, r in out["ratio_ours_to_bare"].items())
    say(f"  throughput ours (in its slot) / bare: {ratios}")
    ratios = ", ".join(f"c={c} {r}" for c, r in out["p99_ratio_ours_to_bare"].items())
    say(f"  p99 ours (in its slot) / bare: {ratios}")
    ratios = ", ".join(f"c={c} {r}" for c, r in out["ratio_front_to_bare"].items())
    say(f"  throughput through the HAProxy front door / bare: {ratios}")
    batch = out["batch"]
    say(f"  {batch['flights_per_request']} flights per request at c={batch['concurrency']}: "
        + ", ".join(f"{name} {run['requests_per_s']:,.0f} req/s ({run['flights_per_s']:,} flights/s, p99 "
                    f"{run['p99_ms']:.1f} ms)" for name, run in batch["runs"].items())
        + f"; ours / bare {batch['ratio_ours_to_bare']}")
    if out["cpu_ratio_ours_to_bare"]:
        ratios = ", ".join(f"c={c} {r}" for c, r in out["cpu_ratio_ours_to_bare"].items())
        say(f"  server CPU per request bare / ours (the ratio on otherwise idle cores): {ratios}")
    loads = [run["load_average_1m"] for pair in out["runs"].values() for run in pair.values()]
    say(f"  the machine's 1-minute load average during the runs: {min(loads)} to {max(loads)} "
        f"(above ~1, other work shared the cores with server and wrk)")
    breakdown = out["breakdown"]
    say(f"  one request in-process, median ms over {breakdown['flights']} flights "
        f"(same probabilities: {breakdown['same_probabilities']}):")
    now, before = breakdown["ms_median"]["now"], breakdown["ms_median"]["before"]
    say(f"    {'stage':<34}{'now':>9}{'before':>9}")
    for stage in dict.fromkeys([*before, *now]):
        say(f"    {stage:<34}{now.get(stage, '-'):>9}{before.get(stage, '-'):>9}")
    if out["bentoml_cpu_ms_per_request"]:
        share = out["bentoml_cpu_ms_per_request"]
        say(f"    BentoML's own CPU per request (server CPU at c=1 minus the work above): ours {share['ours']} ms, "
            f"bare {share['bare']} ms")
    say(f"  targets {out['targets']}: met {out['targets_met']}")
