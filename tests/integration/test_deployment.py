"""Deployment for real: Bentos built with ``bentoml build``, blue and green slots started with ``bentoml serve``, the
HAProxy front door switched through its runtime API, over the shared real-data champion. While versions change,
clients keep sending requests through the front door the whole time, and every one of them must be answered.

The tests run in order on one deployment: another registry's version 1 built in the same home, first deploy, its
Bento started with the registry down, a no-op redeploy, a new version under load, a rollback by hand under load, a
failed smoke test that rolls back by itself, and slots killed under load (every answer still in the prediction
log)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import requests
import yaml
from mlflow import MlflowClient

from pipelines.core.names import MODEL_NAME
from pipelines.core.processes import running
from pipelines.core.settings import Settings
from pipelines.deploy.bento import build_bento, code_hash
from pipelines.deploy.blue_green import deploy_service, read_state, rollback_deployment, status, stop_all
from pipelines.deploy.service import DeployError, start_service, stop_service
from pipelines.deploy.smoke import SmokePolicy
from pipelines.registry.gate import GatePolicy, promote_model
from pipelines.registry.model_files import RECORD, fetch_model_files, registered_run_id
from pipelines.registry.pyfunc import FlightDelayModel
from pipelines.registry.register import alias_version, register_model
from pipelines.serving.contract import requests_from_flights
from pipelines.training.model import TrainedModel
from pipelines.training.steps import train_pipeline
from pipelines.training.tracking import use_tracking

pytestmark = pytest.mark.integration

SECOND_RUN_KEY = "deployment-test/second"


class Traffic:
    """Clients posting one real flight at a time through the front door, each on its own keep-alive connection,
    recording every answer's status and model version (or the exception) in order."""

    def __init__(self, url: str, flight: dict[str, Any], clients: int = 2, pause_s: float = 0.01) -> None:
        self.url, self.body, self.pause_s = url, {"flights": [flight]}, pause_s
        self.answers: list[list[tuple[int, str | None]]] = [[] for _ in range(clients)]
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, index: int) -> None:
        with requests.Session() as http:
            while not self._stop.is_set():
                try:
                    response = http.post(f"{self.url}/predict", json=self.body, timeout=30)
                    version = response.json()[0]["model_version"] if response.status_code == 200 else None
                    self.answers[index].append((response.status_code, version))
                except Exception as error:  # a lost request: refused, reset, timed out or garbled
                    self.failures.append(f"client {index}: {type(error).__name__}: {error}")
                time.sleep(self.pause_s)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        time.sleep(1.0)  # traffic is flowing before the change starts
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1.0)  # and keeps flowing after it
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def versions(self, client: int) -> list[str | None]:
        """The versions one client saw, with repeats collapsed: ["1", "2"] is one clean switch."""
        seen: list[str | None] = []
        for _, version in self.answers[client]:
            if not seen or seen[-1] != version:
                seen.append(version)
        return seen

    @property
    def statuses(self) -> set[int]:
        return {status for answers in self.answers for status, _ in answers}

    @property
    def answered(self) -> list[int]:
        """Every answer's status, client after client."""
        return [code for answers in self.answers for code, _ in answers]

    @property
    def total(self) -> int:
        return sum(len(answers) for answers in self.answers)


@pytest.fixture(scope="module")
def deployment(champion_settings: Settings, free_port: Callable[..., int]) -> Iterator[dict[str, Any]]:
    # Batches of the prediction log every 2 s (not 30), so a test can wait for what its traffic logged. The smoke
    # test's p99 budget is loose here: on a busy CI machine a burst beside the traffic clients hit 256 ms against
    # the default 250 ms. That the budget is enforced is shown with an impossible one below.
    settings = champion_settings.model_copy(update={"service_port": free_port(3), "prediction_log_max_age_s": 2.0,
                                                    "smoke_p99_budget_ms": 5000.0})
    frame = pd.read_parquet(settings.pipeline_home / "lake" / "validated" / "flights" / "date=2013-02-27"
                            / "data.parquet")
    state: dict[str, Any] = {"settings": settings, "url": f"http://127.0.0.1:{settings.service_port}",
                             "flight": requests_from_flights(frame.head(1))[0]}
    yield state
    stop_all(settings)


def _served_version(deployment: dict[str, Any]) -> str:
    response = requests.post(f"{deployment['url']}/predict", json={"flights": [deployment["flight"]]}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()[0]["model_version"])


def _history(settings: Settings) -> list[dict[str, Any]]:
    lines = (settings.pipeline_home / "deploy" / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _register_inverted_champion(settings: Settings, folder: Path) -> Settings:
    """A registry of its own in ``folder`` whose version 1 is the champion with its calibration's slope negated
    (probabilities turned around), logged as registration logs a model; the same home, so the same BentoML store."""
    files = fetch_model_files(settings, "1", folder / "champion")
    weights = files / "artifacts" / "model.pt"
    model = TrainedModel.from_bytes(weights.read_bytes())
    model.calibration = (-model.calibration[0], model.calibration[1])
    weights.write_bytes(model.to_bytes())
    own = settings.model_copy(update={"experiment_tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
                                      "experiment_artifacts_uri": (folder / "artifacts").as_uri()})
    mlflow.set_tracking_uri(own.tracking_uri)
    experiment = mlflow.create_experiment("inverted", artifact_location=own.artifact_location)
    with mlflow.start_run(experiment_id=experiment):
        wrapper = FlightDelayModel()
        info = mlflow.pyfunc.log_model(name="model", python_model=wrapper, artifacts={"model": str(weights)})
    assert str(mlflow.register_model(info.model_uri, MODEL_NAME).version) == "1"
    return own


def _packed_run(settings: Settings, tag: str) -> str:
    """The MLflow run of the model the built Bento ``tag`` carries (its ``packed_model``, in the home's store)."""
    store = settings.pipeline_home / "bentoml"
    built = yaml.safe_load((store / "bentos" / "flight_delay" / tag.split(":")[1] / "bento.yaml").read_text())
    name, version = built["args"]["packed_model"].split(":")
    return str(json.loads((store / "models" / name / version / RECORD).read_text())["run_id"])


def test_another_registrys_version_1_in_the_same_home_is_another_bento(deployment: dict[str, Any]) -> None:
    """A version number names a model only within its registry: a home that held another registry (replaced, or
    the training e2e's beside this champion's) must not serve that registry's Bento for this one's version 1."""
    settings = deployment["settings"]
    with tempfile.TemporaryDirectory(prefix="other-registry-") as folder:
        try:
            other = _register_inverted_champion(settings, Path(folder))
            other_tag = build_bento(other, "1")
            other_run = registered_run_id(other, "1")
        finally:
            use_tracking(settings)  # the process-wide tracking URI back for the next tests
    tag = build_bento(settings, "1")
    assert tag != other_tag
    assert _packed_run(settings, other_tag) == other_run
    assert _packed_run(settings, tag) == registered_run_id(settings, "1") != other_run


def test_first_deploy_serves_the_champion_through_the_front_door(deployment: dict[str, Any]) -> None:
    settings = deployment["settings"]
    record = deploy_service(settings)
    assert record["status"] == "live" and record["model_version"] == "1" and record["previous"] is None
    run = registered_run_id(settings, "1")
    assert record["bento"] == f"flight_delay:v1-{run[:8]}-{code_hash()}"
    bento = settings.pipeline_home / "bentoml" / "bentos" / "flight_delay" / record["bento"].split(":")[1]
    assert f"flight_delay_classifier:v1-{run[:12]}" in (bento / "bento.yaml").read_text()
    assert (bento / "env" / "docker" / "Dockerfile").exists()
    smoke = record["smoke_test"]
    assert smoke["passed"] and smoke["checks"]["golden"]["max_abs_difference"] < 1e-4
    assert smoke["checks"]["burst"]["errors"] == 0 and smoke["checks"]["bad_request"] == 400
    assert _served_version(deployment) == "1"
    info = requests.post(f"{deployment['url']}/model", json={}, timeout=10).json()
    assert info["version"] == "1" and "champion" in info["aliases"]
    use_tracking(settings)
    tags = MlflowClient().get_model_version(MODEL_NAME, "1").tags
    assert tags["deployment.status"] == "live" and tags["deployment.bento"] == record["bento"]
    assert _history(settings)[-1]["status"] == "live"


def test_a_built_bento_carries_its_model_and_starts_with_the_registry_down(deployment: dict[str, Any],
                                                                          free_port: Callable[..., int]) -> None:
    """The live slot's Bento started once more with the registry pointed at a port where nothing listens (one
    try, a 2 s timeout: a service that asked the registry would fail to start): it answers from the model it
    carries."""
    settings = deployment["settings"]
    bento = read_state(settings)["slots"][read_state(settings)["live"]]["bento"]
    unreachable = settings.model_copy(update={"experiment_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        service = start_service(unreachable, free_port(), name="registry-down", target=bento)
    try:
        answer = requests.post(f"{service['url']}/predict", json={"flights": [deployment["flight"]]}, timeout=30)
        assert answer.status_code == 200 and answer.json()[0]["model_version"] == "1", answer.text
    finally:
        stop_service(settings, name="registry-down")


def test_deploying_what_is_live_changes_nothing(deployment: dict[str, Any]) -> None:
    settings = deployment["settings"]
    before = read_state(settings)
    pids = {slot: running(settings, f"slot-{slot}") for slot in before["slots"]}
    again = deploy_service(settings)
    assert again["status"] == "unchanged" and again["slot"] == before["live"]
    assert {slot: running(settings, f"slot-{slot}") for slot in before["slots"]} == pids


def test_new_version_goes_live_under_load_without_losing_a_request(deployment: dict[str, Any],
                                                                   real_days: list) -> None:
    settings = deployment["settings"]
    train_pipeline(real_days, SECOND_RUN_KEY, settings, trials=1, max_epochs=2, valid_days=7, test_days=7)
    register_model(SECOND_RUN_KEY, settings)
    # The gate is not under test here: a permissive policy makes version 2 the champion whatever it scores.
    permissive = GatePolicy(roc_auc_floor=0.0, roc_auc_tolerance=1.0, brier_tolerance=1.0)
    assert promote_model(SECOND_RUN_KEY, settings, permissive)["decision"] == "promote"
    live_before = read_state(settings)["live"]

    with Traffic(deployment["url"], deployment["flight"]) as traffic:
        record = deploy_service(settings)

    assert record["status"] == "live" and record["model_version"] == "2" and record["slot"] != live_before
    assert traffic.failures == [] and traffic.statuses == {200}, traffic.failures[:5]
    assert traffic.total > 50
    for client in range(len(traffic.answers)):
        assert traffic.versions(client) == ["1", "2"], traffic.versions(client)
    state = read_state(settings)
    assert state["slots"][live_before]["model_version"] == "1", "the previous slot stays up for a rollback"


def test_rollback_by_hand_switches_back_at_once_under_load(deployment: dict[str, Any]) -> None:
    settings = deployment["settings"]
    standby = next(slot for slot in read_state(settings)["slots"] if slot != read_state(settings)["live"])
    with Traffic(deployment["url"], deployment["flight"]) as traffic:
        result = rollback_deployment(settings)
    assert result["aliases"] == {"champion": "1", "rolled_back": "2"}
    assert result["service"]["slot"] == standby and result["service"]["reason"].startswith("rollback by hand")
    assert traffic.failures == [] and traffic.statuses == {200}
    for client in range(len(traffic.answers)):
        assert traffic.versions(client) == ["2", "1"]
    assert alias_version("champion", settings) == "1" and _served_version(deployment) == "1"


def test_failed_smoke_test_rolls_back_by_itself_and_says_why(deployment: dict[str, Any]) -> None:
    settings = deployment["settings"]
    client = MlflowClient()
    use_tracking(settings)
    # Version 2 promoted again, as the gate would: champion 2, previous champion 1 (the one serving).
    client.set_registered_model_alias(MODEL_NAME, "previous_champion", "1")
    client.set_registered_model_alias(MODEL_NAME, "champion", "2")
    live = read_state(settings)["live"]
    impossible = SmokePolicy(p99_budget_ms=0.001)

    with Traffic(deployment["url"], deployment["flight"]) as traffic, \
            pytest.raises(DeployError, match=r"failed its smoke test \(burst p99 .* over the budget.*version 1 is "
                                             r"still serving"):
        deploy_service(settings, policy=impossible)

    assert traffic.failures == [] and traffic.statuses == {200}
    assert all(traffic.versions(client) == ["1"] for client in range(len(traffic.answers)))
    assert read_state(settings)["live"] == live and _served_version(deployment) == "1"
    assert alias_version("champion", settings) == "1", "the registry says again what is served"
    record = _history(settings)[-1]
    assert record["status"] == "rolled_back" and "over the budget" in record["reason"]
    assert record["aliases"] == {"champion": "1", "rolled_back": "2"}
    failed_slot = "green" if live == "blue" else "blue"
    assert running(settings, f"slot-{failed_slot}") is None
    assert client.get_model_version(MODEL_NAME, "2").tags["deployment.status"] == "rolled_back"


# --- a slot dies under load ------------------------------------------------------------------------------------------

# How a client sees a request cut off by its worker's death: the connection closed before the answer's headers,
# or after them with the body missing.
CUT_OFF = ("Connection aborted", "IncompleteRead")
RECOVERY_BOUND_S = 120  # a hang bound, not a target: a restart takes ~10-20 s here (bentoml serve loading the model)


def _kill_slot(settings: Settings, slot: str, whole_session: bool) -> None:
    """SIGKILL the slot's supervisor only (its worker orphaned, as an operator once did) or every process of the
    slot, its BentoML worker (a session of its own) too: a crash, or the OOM killer, where no process gets to flush
    what it buffered."""
    from pipelines.core.processes import _members, _pid_file, _read_pid_file

    pid = running(settings, f"slot-{slot}")["pid"]  # type: ignore[index]
    if whole_session:
        record = _read_pid_file(_pid_file(settings, f"slot-{slot}"))
        assert record is not None
        for process in _members(record):
            process.send_signal(signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)


def _kill_under_load(deployment: dict[str, Any], slot: str, whole_session: bool,
                     ) -> tuple[Traffic, str | None, dict[str, Any]]:
    """Kill ``slot`` while clients send requests through the front door; the traffic, what status said 1.5 s
    after the kill, and the keeper's restart record."""
    settings = deployment["settings"]
    since = len(_history(settings))
    with Traffic(deployment["url"], deployment["flight"]) as traffic:
        _kill_slot(settings, slot, whole_session)
        time.sleep(1.5)
        degraded = status(settings)["degraded"]
        restart = _wait_restarted(settings, slot, since)
        time.sleep(1.0)
    print(f"slot {slot} killed ({'whole session' if whole_session else 'supervisor only'}): "
          f"{traffic.answered.count(200)} answered 200, {len(traffic.answered) - traffic.answered.count(200)} not "
          f"(statuses {sorted(set(traffic.answered))}), {len(traffic.failures)} failed; "
          f"restart {restart['restart_s']} s")
    return traffic, degraded, restart


def _wait_restarted(settings: Settings, slot: str, since: int) -> dict[str, Any]:
    """The keeper's record of the slot's restart (history.jsonl after line ``since``), once the front door sees it
    up again."""
    from pipelines.deploy.front_door import slot_health

    deadline = time.monotonic() + RECOVERY_BOUND_S
    while time.monotonic() < deadline:
        restarts = [r for r in _history(settings)[since:] if r.get("slot") == slot and r.get("status") == "restarted"]
        if restarts and slot_health(settings).get(slot) == "UP":
            return restarts[0]
        time.sleep(0.25)
    raise AssertionError(f"slot {slot} was not restarted within {RECOVERY_BOUND_S}s: {_history(settings)[since:]}")


def test_a_lone_slot_killed_under_load_is_restarted_by_the_keeper(deployment: dict[str, Any]) -> None:
    """After the failed smoke test one slot serves and no other runs: its supervisor is killed with SIGKILL under
    load (its worker orphaned). The front door has nothing else to send to (503 meanwhile); the keeper ends the
    orphan and restarts the slot from the same Bento; the service answers again and status said degraded."""
    settings = deployment["settings"]
    live = read_state(settings)["live"]
    assert set(read_state(settings)["slots"]) == {live} and status(settings)["keeper"] is not None
    traffic, degraded, restart = _kill_under_load(deployment, live, whole_session=False)
    assert degraded is not None and degraded.startswith(f"live slot {live} is"), degraded
    assert restart["live"] and restart["model_version"] == "1" and restart["restart_s"] < RECOVERY_BOUND_S
    assert traffic.failures == [], traffic.failures[:3]  # the front door answered every request, 503 meanwhile
    assert set(traffic.answered) <= {200, 503} and traffic.answered[-1] == 200
    assert status(settings)["degraded"] is None and _served_version(deployment) == "1"


def test_the_live_slot_crashing_under_load_fails_over_to_the_other_slot(deployment: dict[str, Any]) -> None:
    """Two slots: version 2 live, version 1 the standby. The live slot's whole process tree dies under load
    (SIGKILL, the worker too: nothing flushed): the front door marks it down on the first refused connection and
    sends everything to the standby; the keeper restarts the dead slot and traffic returns to it."""
    settings = deployment["settings"]
    live = deploy_service(settings, version="2")["slot"]
    started = pd.Timestamp.now(tz="UTC")
    traffic, degraded, restart = _kill_under_load(deployment, live, whole_session=True)
    ended = pd.Timestamp.now(tz="UTC")
    assert degraded is not None and "(version 1) serves meanwhile" in degraded, degraded
    # A request inside the worker when it dies is answered by nobody: its client sees the connection closed
    # (HAProxy resends no POST), before the answer's headers or, when the kill falls between the worker's two
    # writes, after them (an incomplete body: a CI run saw one). At most the one each client had in flight;
    # every other is answered 200.
    assert len(traffic.failures) <= len(traffic.answers), traffic.failures
    assert all(any(cut in failure for cut in CUT_OFF) for failure in traffic.failures), traffic.failures
    assert set(traffic.answered) == {200}, sorted(set(traffic.answered))
    for client in range(len(traffic.answers)):
        assert traffic.versions(client) == ["2", "1", "2"], traffic.versions(client)
    assert status(settings)["degraded"] is None
    # Every answer is in the prediction log once, those the killed slot had buffered too (its journal, written
    # by the next process that looked: the standby at its tick or the slot restarted). A request cut off may be
    # logged too: its rows are journaled before the answer goes out.
    answered = traffic.answered.count(200)
    logged = _logged_between(settings, started, ended)
    deadline = time.monotonic() + 60  # batches every 2 s; generous for a busy machine
    while logged < answered and time.monotonic() < deadline:
        time.sleep(1.0)
        logged = _logged_between(settings, started, ended)
    print(f"after the kill: {answered} answered, {len(traffic.failures)} cut off, {logged} in the prediction log")
    assert answered <= logged <= answered + len(traffic.failures), f"{answered} answered, {logged} logged"


def _logged_between(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> int:
    """Rows the prediction log holds for the test flight's day served between ``start`` and ``end``."""
    from datetime import date

    from pipelines.core.lake import open_lake
    from pipelines.serving.prediction_log import read_prediction_log

    frame = read_prediction_log(open_lake(settings), date(2013, 2, 27))
    return int(frame["served_at"].between(start, end).sum()) if len(frame) else 0
