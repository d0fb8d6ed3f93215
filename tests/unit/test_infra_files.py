"""The deployment files in infra/ agree with the code: infra/compose.yaml, infra/helm/airflow-values.yaml and
infra/postgres-init.sql against infra/prod.env.example and the queues of dags/flight_delay_training.py.

Neither file can be started here (no Docker engine, no cluster); these checks keep them from drifting, and every
image they name (infra/k8s/ too) at a version."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

# The variables whose production value names a host: each must be pointed at a compose service.
HOST_VARIABLES = ["LAKE_URI", "S3_ENDPOINT_URL", "EXPERIMENT_TRACKING_URI", "FEAST_REGISTRY_URL", "FEAST_REDIS",
                  "OPTUNA_STORAGE", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL"]


def _prod_env() -> dict[str, str]:
    lines = (INFRA / "prod.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#"))


def _yaml(name: str) -> dict[str, Any]:
    data = yaml.safe_load((INFRA / name).read_text())
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml("compose.yaml")


@pytest.fixture(scope="module")
def helm() -> dict[str, Any]:
    return _yaml("helm/airflow-values.yaml")


def _airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith("airflow-")}


def _env_files(service: dict[str, Any]) -> list[str]:
    files = service.get("env_file", [])
    files = [files] if isinstance(files, str | dict) else files
    return [f["path"] if isinstance(f, dict) else f for f in files]


def _dag_queues() -> set[str]:
    text = (ROOT / "dags" / "flight_delay_training.py").read_text()
    return set(re.findall(r"""queue\s*=\s*["']([\w.-]+)["']""", text))


def test_prod_env_example_parses() -> None:
    env = _prod_env()
    assert set(HOST_VARIABLES) <= set(env)


def test_every_airflow_service_shares_the_common_env(compose: dict[str, Any]) -> None:
    common = compose["x-airflow-common"]
    services = _airflow_services(compose)
    expected = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer", "airflow-worker", "airflow-worker-training"}
    assert expected <= set(services)
    for name, service in services.items():
        assert "prod.env" in _env_files(service), name
        assert service["environment"].items() >= common["environment"].items(), name
        assert service["image"] == common["image"], name


def test_prod_env_reaches_the_containers_with_service_hosts(compose: dict[str, Any]) -> None:
    common = compose["x-airflow-common"]["environment"]
    assert "prod.env" in _env_files(compose["x-airflow-common"])
    # Every value that points at this machine in the example is overridden, without 127.0.0.1 or localhost.
    local = [name for name, value in _prod_env().items() if "127.0.0.1" in value or "localhost" in value]
    for name in set(local) | set(HOST_VARIABLES):
        assert name in common, f"{name} not overridden in x-airflow-common"
        assert not re.search(r"127\.0\.0\.1|localhost", str(common[name])), f"{name}={common[name]}"
    services = set(compose["services"])
    for name in HOST_VARIABLES:
        if "://" in common[name] and not common[name].startswith("s3://"):
            host = re.match(r"[\w+.-]+://(?:[^@/]*@)?([\w.-]+)", common[name]).group(1)
            assert host in services, f"{name} points at {host}, not a compose service"
    assert common["FEAST_REDIS"].split(":")[0] in services
    assert common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert "AIRFLOW_CONN_SMTP_DEFAULT" in common and common["PIPELINE_HOME"].startswith("/")
    # The model service reads the same settings.
    serving = compose["services"]["model-service"]
    assert "prod.env" in _env_files(serving)
    assert all(serving["environment"][name] == common[name] for name in HOST_VARIABLES if name.startswith(
        ("LAKE", "S3", "EXPERIMENT", "FEAST")))


def test_no_secret_is_written_into_compose() -> None:
    text = (INFRA / "compose.yaml").read_text()
    secret_values = {v for k, v in _prod_env().items() if re.search("SECRET|KEY_ID|PASSWORD", k)}
    for value in secret_values:
        assert value not in text
    assert not re.search(r"postgresql\+psycopg://[^@\s]*:[^@\s]*@", text), "a password inside a database URL"


def _compose_queues(compose: dict[str, Any]) -> set[str]:
    queues: set[str] = set()
    for name, service in _airflow_services(compose).items():
        command = service.get("command")
        command = " ".join(command) if isinstance(command, list) else str(command or "")
        if "celery worker" in command:
            match = re.search(r"(?:--queues|-q)[ =]([\w.,-]+)", command)
            assert match, f"{name} consumes no explicit queue"
            queues |= set(match.group(1).split(","))
    return queues


def _helm_queues(helm: dict[str, Any]) -> set[str]:
    celery = helm["workers"]["celery"]
    queues = set(celery["queue"].split(","))
    for worker_set in celery.get("sets", []):
        queues |= set(worker_set["queue"].split(","))
    return queues


def test_the_training_queue_has_workers(compose: dict[str, Any], helm: dict[str, Any]) -> None:
    assert _dag_queues() == {"training"}, "dags/flight_delay_training.py's queues changed: update infra/"
    expected = _dag_queues() | {"default"}  # tasks without a queue go to Airflow's default queue
    assert _compose_queues(compose) == expected
    assert _helm_queues(helm) == expected
    training = compose["services"]["airflow-worker-training"]
    assert "--concurrency 1" in " ".join(training["command"])


def test_helm_values_say_celery_with_external_services(helm: dict[str, Any]) -> None:
    assert helm["executor"] == "CeleryExecutor"
    assert helm["postgresql"]["enabled"] is False
    assert helm["data"]["metadataSecretName"] and helm["jwtSecretName"]
    assert "flight-delay-env" in helm["extraEnvFrom"]
    assert helm["dags"]["gitSync"]["enabled"] is True and helm["dags"]["gitSync"]["subPath"] == "dags"
    gpu = [s for s in helm["workers"]["celery"]["sets"] if s["queue"] == "training"]
    assert gpu and gpu[0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_postgres_init_creates_the_databases_of_the_urls() -> None:
    urls = [v for v in _prod_env().values() if re.match(r"(?:db\+)?postgresql", v)]
    wanted = {urlsplit(url).path.strip("/") for url in urls}
    assert wanted == {"airflow", "mlflow", "mlflow_auth", "feast", "optuna"}
    sql = (INFRA / "postgres-init.sql").read_text()
    created = set(re.findall(r"^\s*CREATE DATABASE\s+\"?(\w+)", sql, re.IGNORECASE | re.MULTILINE))
    assert wanted <= created


def _images(node: Any) -> Iterator[str]:
    """Every image a YAML document names: `image:` values, and Helm's `repository:` with its `tag:`."""
    if isinstance(node, dict):
        if isinstance(node.get("repository"), str):
            yield node["repository"] + (f":{node['tag']}" if node.get("tag") else "")
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def test_every_image_is_pinned_to_a_version() -> None:
    files = [INFRA / "compose.yaml", *sorted((INFRA / "helm").glob("*.yaml")), *sorted((INFRA / "k8s").glob("*.yaml"))]
    images = [(path.name, image) for path in files for doc in yaml.safe_load_all(path.read_text())
              for image in _images(doc)]
    assert len(images) >= 10
    for name, image in images:
        image = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", image)  # compose: the default of ${VARIABLE:-default}
        if "@sha256:" in image:
            continue
        last = image.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else ""
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is `latest`"
        # a bare major (postgres:16, redis:7-alpine) moves like `latest` does
        bare_major = r"v?\d+(-(alpine|bookworm|bullseye|trixie|slim|jammy|noble)[\w.-]*)?"
        assert not re.fullmatch(bare_major, tag), f"{name}: {image} names only a major version"


def test_every_network_client_of_the_production_profile_has_a_timeout() -> None:
    """A service that does not answer is an error within seconds, not a hang: PostgreSQL (every URL, connect
    timeout), MLflow's tracking server (request timeout and tries), Redis (connect and read timeouts, no client
    retries; asserted against a dead port in tests/integration/test_service_http.py), SMTP (the connection's
    timeout), S3 (below)."""
    env = _prod_env()
    postgres = {name: value for name, value in env.items() if "postgresql" in value}
    assert len(postgres) >= 6
    assert all("connect_timeout=10" in value for value in postgres.values()), postgres
    compose = (INFRA / "compose.yaml").read_text()
    assert all("connect_timeout=10" in url for url in re.findall(r"postgresql\+psycopg://\S+", compose))
    assert int(env["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30 and int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 3
    profile = (ROOT / "feature_repo" / "profiles" / "production.yaml").read_text()
    assert "socket_connect_timeout=1,socket_timeout=1,retry=null" in profile


def test_the_s3_lake_client_has_connect_and_read_timeouts() -> None:
    from pipelines.core.lake import S3_CONNECT_TIMEOUT_S, S3_READ_TIMEOUT_S, S3Lake

    config = S3Lake("s3://bucket/prefix", endpoint_url="http://127.0.0.1:9").client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (S3_CONNECT_TIMEOUT_S, S3_READ_TIMEOUT_S) == (5, 60)
    assert config.retries["total_max_attempts"] == 3 and config.retries["mode"] == "standard"


def test_the_owners_mail_connection_has_a_timeout() -> None:
    import json

    from pipelines.core.settings import Settings
    from pipelines.ops.mail_server import smtp_connection

    extra = json.loads(smtp_connection(Settings()))["extra"]
    assert extra["timeout"] == 30 and extra["retry_limit"] == 2
