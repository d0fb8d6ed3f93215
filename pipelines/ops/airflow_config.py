"""Airflow's configuration for this home, as environment variables: what ``make run`` (``airflow dags test``),
``make up`` (the scheduler, the API server with the UI, the DAG processor, the triggerer, the Celery workers) and
the tests give every Airflow process.

The embedded profile is the base: SQLite metadata, the LocalExecutor, logs and secrets under
``$PIPELINE_HOME/airflow``. A profile's environment file (``infra/prod.env``) replaces any of it: PostgreSQL
metadata, the CeleryExecutor and its broker, a JWT secret from the company's secret store. Nothing here imports
Airflow.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

from pipelines.core.names import ONLINE_STORE_POOL
from pipelines.core.settings import PROJECT_ROOT, Settings

ADMIN = "admin"
# The pools the DAGs name (a task in a pool that does not exist is never scheduled): name -> (slots, description).
POOLS = {ONLINE_STORE_POOL: (1, "Writers of the online store: a monitoring replay or a materialization, one at a time")}


def airflow_home(settings: Settings) -> Path:
    return settings.pipeline_home / "airflow"


def passwords_file(settings: Settings) -> Path:
    """The simple auth manager's users and passwords (``{"admin": "..."}``), created with a random password."""
    return airflow_home(settings) / "passwords.json"


def _private(path: Path, make: Callable[[], str]) -> str:
    """The content of ``path``, written with ``make()`` the first time, readable by its owner only (mode 600)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make())
    return path.read_text()


def admin_password(settings: Settings) -> str:
    """The UI's ``admin`` password: generated once per home, kept in ``passwords_file``."""
    content = _private(passwords_file(settings), lambda: json.dumps({ADMIN: secrets.token_urlsafe(12)}) + "\n")
    return str(json.loads(content)[ADMIN])


def _home_secret(settings: Settings) -> str:
    """A JWT secret generated once per home: the API server and every worker must sign and check with the same
    one (tasks authenticate to the Execution API with it)."""
    return _private(airflow_home(settings) / "jwt_secret", lambda: secrets.token_urlsafe(48)).strip()


def api_url(settings: Settings) -> str:
    """The API server (REST API, UI and the workers' Execution API)."""
    return f"http://127.0.0.1:{settings.airflow_port}"


NUMERIC_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""One thread per task process for the numeric libraries (unless the environment or a profile says otherwise):
many tasks share few cores, and OpenBLAS's own threads, spinning against each other and the other tasks, made a
dot product of 10,000 numbers take 0.9-14 ms instead of 2 us on 2 busy cores (each sklearn or scipy call pays it).
Torch's training threads are set apart (``pipelines.training.network.CPU_THREADS``)."""


def airflow_env(settings: Settings, profile: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Airflow process of this home: the embedded profile, then ``profile`` (a profile's
    environment file, already read) over it."""
    from pipelines.ops.mail_server import smtp_connection

    home = airflow_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "PIPELINE_HOME": str(settings.pipeline_home),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # Tasks at once on this machine (the LocalExecutor keeps that many worker processes; Airflow's 32 are
        # idle weight on a laptop): a training, two ingest runs, the features, and two monitoring runs (one of
        # them mostly a sensor waiting for the other's replay). The production profile sets its own.
        "AIRFLOW__CORE__PARALLELISM": "6",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # The UI and REST API: authentication on, one user (admin) whose password is in passwords_file.
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
        "AIRFLOW__API__BASE_URL": api_url(settings),
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        # Task logs are files under AIRFLOW_HOME that the API server reads itself (every process is on this
        # machine); the log servers of the scheduler and triggerer take the two ports after the API server's.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.airflow_port + 1),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.airflow_port + 2),
        "AIRFLOW__API_AUTH__JWT_SECRET": _home_secret(settings),
        # A new DAG file is picked up within 30 s (the default is 5 minutes).
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "GX_ANALYTICS_ENABLED": "false",
        "AIRFLOW_CONN_SMTP_DEFAULT": smtp_connection(settings),
    })
    for name in NUMERIC_THREADS:
        env.setdefault(name, "1")
    env.update(profile or {})
    return env
