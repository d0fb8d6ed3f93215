"""flight_delay_training through real Airflow (``airflow dags test`` on SQLite), on the session's real 2013 data
(validated flights and weather, feature tables, Feast registry): a manual run with a window, a few trials and few
epochs. Verified where the results live: the run's task states, the Optuna study in its SQLite storage, the MLflow
runs (tuning parent, nested trials, final run with test metrics and plots), the lake's model and evaluation, and
the asset event; then the registry: the first model promoted with its lineage and deployed (served through the
front door on a port of the test's own), a rerun registering nothing, a second weekly run gated against the
champion and deployed only when promoted, and a rollback by hand."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import requests

from pipelines.core.names import MODEL_NAME
from pipelines.core.runs import run_slug
from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.deploy.blue_green import rollback_deployment, stop_all
from pipelines.ops.airflow_config import airflow_env
from pipelines.registry.pyfunc import model_input
from pipelines.registry.register import register_model
from pipelines.serving.contract import requests_from_flights
from pipelines.training.datasets import read_splits
from pipelines.training.steps import load_model, read_evaluation
from pipelines.training.tracking import KIND_TAG, RUN_KEY_TAG, use_tracking
from pipelines.training.tuning import study_name

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).parent / "airflow")
CONF = {"start_date": "2013-01-01", "end_date": "2013-02-28", "trials": 3, "max_epochs": 4, "valid_days": 5,
        "test_days": 5, "time_budget_minutes": 10}
DAG_ID = "flight_delay_training"


def _airflow(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIRFLOW, *args], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=540)


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}; output ends:\n{result.stdout[-4000:]}"


def _query(env: dict[str, str], sql: str, *args: Any) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{Path(env['AIRFLOW_HOME']) / 'airflow.db'}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def trained(real_data: Settings, free_port: Callable[..., int]) -> Iterator[dict[str, Any]]:
    """One manual run of the DAG; returns the Airflow env and the run key the tasks used. The deploy task serves
    on a port block of the test's own; everything it started is stopped afterwards."""
    port = free_port(3)
    # The smoke test's latency budget made generous: this test checks the chain, and a busy CI machine's burst
    # p99 reached 286 ms against the product's 250 ms (the deploy failed and every test of this file with it).
    env = airflow_env(real_data) | {"SERVICE_PORT": str(port), "SMOKE_P99_BUDGET_MS": "5000"}
    served = real_data.model_copy(update={"service_port": port})
    try:  # what the deploy task started is stopped even when the run fails
        migrated = _airflow(["db", "migrate"], env)
        assert migrated.returncode == 0, _tail(migrated)
        # The first weekly run's moment, Monday 06:00 in New York: not before the DAG's start (2013-04-01 there).
        result = _airflow(["dags", "test", DAG_ID, "2013-04-01T10:00:00+00:00", "-c", json.dumps(CONF)], env)
        assert result.returncode == 0, _tail(result)
        (run,) = _query(env, "SELECT run_id, state FROM dag_run WHERE dag_id = ? AND logical_date LIKE "
                        "'2013-04-01%'", DAG_ID)
        yield {"env": env, "run_id": run["run_id"], "state": run["state"], "served": served,
               "run_key": f"{DAG_ID}/2013-04-01T10:00:00+00:00/{run['run_id']}"}
    finally:
        stop_all(served)


def _served_version(trained: dict[str, Any], real_data: Settings) -> str:
    """The model version the front door answers with for a real flight."""
    frame = pd.read_parquet(real_data.pipeline_home / "lake" / "validated" / "flights" / "date=2013-02-27"
                            / "data.parquet")
    response = requests.post(f"http://127.0.0.1:{trained['served'].service_port}/predict",
                             json={"flights": requests_from_flights(frame.head(1))}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()[0]["model_version"])


def _task_state(trained: dict[str, Any], run_id: str, task_id: str) -> str:
    (row,) = _query(trained["env"], "SELECT state FROM task_instance WHERE run_id = ? AND task_id = ?", run_id,
                    task_id)
    return str(row["state"])


def test_every_task_succeeds(trained: dict[str, Any]) -> None:
    assert trained["state"] == "success"
    rows = _query(trained["env"], "SELECT task_id, map_index, state FROM task_instance WHERE run_id = ?",
                  trained["run_id"])
    assert sorted((r["task_id"], r["map_index"], r["state"]) for r in rows) == [
        ("build_training_set", -1, "success"), ("deploy_service", -1, "success"), ("evaluate_model", -1, "success"),
        ("promote_model", -1, "success"),
        ("register_model", -1, "success"), ("start_tuning", -1, "success"), ("train_final_model", -1, "success"),
        ("tune_hyperparameters", 0, "success"), ("wait_for_window", -1, "success")]


def test_study_holds_the_requested_trials(trained: dict[str, Any], real_data: Settings) -> None:
    study = optuna.load_study(study_name=study_name(trained["run_key"]), storage=real_data.optuna_url)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == CONF["trials"]
    assert all(0 < len(t.intermediate_values) <= CONF["max_epochs"] for t in finished)


def test_mlflow_has_tuning_trials_and_the_final_run(trained: dict[str, Any], real_data: Settings) -> None:
    experiment = use_tracking(real_data)
    runs = mlflow.search_runs(experiment_ids=[experiment], output_format="list",
                              filter_string=f"tags.`{RUN_KEY_TAG}` = '{trained['run_key']}'")
    by_kind: dict[str, list[Any]] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags[KIND_TAG], []).append(run)
    assert {kind: len(found) for kind, found in by_kind.items()} == {"tuning": 1, "trial": 3, "final": 1}
    parent = by_kind["tuning"][0]
    assert {run.data.tags["mlflow.parentRunId"] for run in by_kind["trial"]} == {parent.info.run_id}
    assert "best_valid_log_loss" in parent.data.metrics and "best_lr" in parent.data.params

    final = by_kind["final"][0]
    for name in ("test_roc_auc", "test_pr_auc", "test_log_loss", "test_brier", "logistic_regression_test_roc_auc",
                 "base_rate_test_brier"):
        assert name in final.data.metrics, name
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(final.info.run_id, "evaluation")}
    assert {"evaluation/calibration.png", "evaluation/evaluation.json"} <= artifacts


def test_model_and_evaluation_are_in_the_lake(trained: dict[str, Any], real_data: Settings) -> None:
    evaluation = read_evaluation(trained["run_key"], real_data)
    assert set(evaluation["metrics"]) == {"network", "base_rate", "logistic_regression"}
    network, base = evaluation["metrics"]["network"], evaluation["metrics"]["base_rate"]
    assert base["roc_auc"] == pytest.approx(0.5)
    assert network["roc_auc"] > 0.6 and network["n"] == base["n"] > 1000
    assert evaluation["test_window"][0].startswith("2013-02-24")


def test_trained_model_is_announced(trained: dict[str, Any]) -> None:
    rows = _query(trained["env"], "SELECT asset.name AS name FROM asset_event JOIN asset ON asset.id = "
                                  "asset_event.asset_id WHERE asset_event.source_dag_id = ? AND "
                                  "asset_event.source_run_id = ?", DAG_ID, trained["run_id"])
    assert [row["name"] for row in rows] == ["flight_delay_trained_model"]


def test_first_model_is_registered_with_lineage_and_promoted(trained: dict[str, Any], real_data: Settings) -> None:
    use_tracking(real_data)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert version.tags[RUN_KEY_TAG] == trained["run_key"]
    assert version.tags["lineage.window"] == "2013-01-01..2013-02-28"
    assert version.tags["lineage.partitions"] == "59" and version.tags["lineage.feature_service"] == "flight_delay_v1"
    assert version.tags["lineage.validation_runs"] and len(version.tags["lineage.training_set_sha256"]) == 64
    assert version.tags["lineage.optuna_study"] == study_name(trained["run_key"])
    assert version.tags["gate.decision"] == "promote"
    decision = json.loads((real_data.pipeline_home / "lake" / "models" / run_slug(trained["run_key"])
                           / "promotion.json").read_text())
    assert decision["decision"] == "promote" and decision["champion_version"] is None
    assert "no champion yet" in " ".join(decision["reasons"])

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    test = read_splits(trained["run_key"], real_data)["test"]
    expected = load_model(trained["run_key"], real_data).predict_proba(test)
    np.testing.assert_allclose(model.predict(model_input(test)), expected, rtol=1e-6)


def test_promoted_model_is_served_at_the_front_door(trained: dict[str, Any], real_data: Settings) -> None:
    assert _served_version(trained, real_data) == "1"


def test_rerun_of_a_run_key_registers_nothing_new(trained: dict[str, Any], real_data: Settings) -> None:
    use_tracking(real_data)
    before = len(mlflow.MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'"))
    again = register_model(trained["run_key"], real_data)
    assert again["registered"] is False
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")) == before


def test_second_run_is_gated_against_the_champion(trained: dict[str, Any], real_data: Settings) -> None:
    """A later weekly run: a new version, judged against the champion on its own test window."""
    result = _airflow(["dags", "test", DAG_ID, "2013-04-08", "-c", json.dumps(CONF | {"trials": 2})], trained["env"])
    assert result.returncode == 0, _tail(result)
    use_tracking(real_data)
    client = mlflow.MlflowClient()
    second = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    first = client.get_model_version(MODEL_NAME, "1")
    assert str(second.version) != str(first.version)
    assert second.tags["gate.champion_version"] == str(first.version)
    decision = json.loads((real_data.pipeline_home / "lake" / "models" / run_slug(second.tags[RUN_KEY_TAG])
                           / "promotion.json").read_text())
    assert any("bootstrap" in reason or "interval" in reason for reason in decision["reasons"])
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    (run,) = _query(trained["env"], "SELECT run_id FROM dag_run WHERE dag_id = ? AND logical_date LIKE "
                                    "'2013-04-08%'", DAG_ID)
    deployed = _task_state(trained, run["run_id"], "deploy_service")
    if decision["decision"] == "promote":
        assert str(champion.version) == str(second.version)
        assert str(client.get_model_version_by_alias(MODEL_NAME, "previous_champion").version) == str(first.version)
        assert deployed == "success" and _served_version(trained, real_data) == str(second.version)
    else:
        assert str(champion.version) == str(first.version)
        assert deployed == "skipped" and _served_version(trained, real_data) == str(first.version)


def test_rollback_makes_the_previous_champion_champion_again(trained: dict[str, Any], real_data: Settings) -> None:
    """After the second run (the test above): roll back by hand when it was promoted, else there is nothing to do.
    The front door serves version 1 again either way."""
    use_tracking(real_data)
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    if str(champion.version) == "1":
        with pytest.raises(RuntimeError, match="no previous champion"):
            rollback_deployment(trained["served"])
    else:
        rolled = rollback_deployment(trained["served"])
        assert rolled["aliases"] == {"champion": "1", "rolled_back": str(champion.version)}
        assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
        assert "rolled_back_at" in client.get_model_version(MODEL_NAME, str(champion.version)).tags
    assert _served_version(trained, real_data) == "1"
