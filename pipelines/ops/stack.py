"""``make up`` / ``make down``: the running pipeline, as processes of this machine.

Airflow 3 (API server with the UI, scheduler, DAG processor, triggerer, and Celery workers when the executor is
Celery), the SMTP server the owners' emails go through, and the model service when a champion exists. In the
production profile (``make up ENV_FILE=infra/prod.env``) the services the environment file names on 127.0.0.1
are started here too, as local stand-ins for the managed ones: the S3 API (moto's server) and the MLflow
tracking server (PostgreSQL backend, artifacts on S3); their PostgreSQL databases and S3 buckets are created when
missing. A service the file names elsewhere (a managed database, AWS itself) is used as it is.

Every process is started detached, with its pid in ``$PIPELINE_HOME/run/`` and its output in
``$PIPELINE_HOME/logs/``; ``make down`` stops each one by its pid. Starting is idempotent: what already runs is
kept. Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import requests

from pipelines.core.processes import running, start_process, stop_process
from pipelines.core.settings import Settings, get_settings, read_env_file
from pipelines.ops.airflow_config import ADMIN, POOLS, admin_password, airflow_env, api_url

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# /api/v2/monitor/health names these components; the API server answering is the first one.
HEALTH_KEYS = {"airflow-scheduler": "scheduler", "airflow-dag-processor": "dag_processor",
               "airflow-triggerer": "triggerer"}


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and where its log is."""


@dataclass(frozen=True)
class Process:
    """One process of the stack: its name (pid file and log), its command, its port (0: none) and its check."""

    name: str
    command: list[str]
    port: int = 0
    ready: Callable[[], bool] | None = None


def _is_local(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url).removeprefix("db+")).hostname in LOCAL_HOSTS


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _answers(url: str, ok: Callable[[requests.Response], bool] = lambda r: r.status_code < 500) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return ok(requests.get(url, timeout=3))
        except requests.RequestException:
            return False
    return check


def _log_says(settings: Settings, name: str, text: str) -> Callable[[], bool]:
    path = settings.pipeline_home / "logs" / f"{name}.log"
    start = path.stat().st_size if path.exists() else 0

    def check() -> bool:
        if not path.exists():
            return False
        with path.open("rb") as source:
            source.seek(start)
            return text.encode() in source.read()
    return check


def _healthy(settings: Settings, key: str) -> Callable[[], bool]:
    def ok(response: requests.Response) -> bool:
        return response.status_code == 200 and response.json().get(key, {}).get("status") == "healthy"
    return _answers(f"{api_url(settings)}/api/v2/monitor/health", ok)


def celery_queues(env: Mapping[str, str]) -> list[str]:
    """The Celery workers to start (``STACK_CELERY_WORKERS``: one entry per worker, the queues it consumes, e.g.
    ``default default,training training``); none unless the executor is Celery."""
    if "CeleryExecutor" not in env.get("AIRFLOW__CORE__EXECUTOR", ""):
        return []
    return env.get("STACK_CELERY_WORKERS", "default default,training").split()


def worker_name(number: int) -> str:
    return f"airflow-worker-{number}"


def airflow_processes(settings: Settings, env: Mapping[str, str]) -> list[Process]:
    airflow = str(BIN / "airflow")
    commands = {name: [airflow, name.removeprefix("airflow-")] for name in HEALTH_KEYS}
    if env.get("AIRFLOW__CORE__EXECUTOR") == "LocalExecutor":  # its tasks fork from the scheduler: preload for them
        commands["airflow-scheduler"] = [str(BIN / "python"), "-m", "pipelines.ops.scheduler"]
    processes = [
        Process("airflow-api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port",
                                       str(settings.airflow_port), "--workers", "1"], settings.airflow_port,
                _answers(f"{api_url(settings)}/api/v2/monitor/health", lambda r: r.status_code == 200)),
        *(Process(name, commands[name], ready=_healthy(settings, key)) for name, key in HEALTH_KEYS.items()),
    ]
    for number, queues in enumerate(celery_queues(env), 1):
        name = worker_name(number)
        # Task logs are files the API server reads from this machine, so no worker serves logs of its own.
        command = [airflow, "celery", "worker", "--queues", queues, "--celery-hostname", f"{name}@%h",
                   "--skip-serve-logs"]
        processes.append(Process(name, command, ready=_log_says(settings, name, " ready.")))
    return processes


def _start(settings: Settings, process: Process, env: Mapping[str, str], say: Callable[[str], None],
           timeout_s: float = 180) -> dict[str, Any]:
    """Start ``process`` unless it runs; wait until its check passes; say which."""
    current = running(settings, process.name)
    if current is not None:
        say(f"{process.name}: running (pid {current['pid']})")
        return {"name": process.name, "pid": current["pid"], "started": False}
    started = start_process(settings, process.name, process.command, process.port, dict(env))
    deadline = time.monotonic() + timeout_s
    log_file = settings.pipeline_home / "logs" / f"{process.name}.log"
    while process.ready is not None and not process.ready():
        if started.poll() is not None:
            stop_process(settings, process.name)
            raise StackError(f"{process.name} exited with code {started.returncode}; see {log_file}")
        if time.monotonic() > deadline:
            raise StackError(f"{process.name} was not ready within {timeout_s:.0f}s; see {log_file}")
        time.sleep(0.5)
    say(f"{process.name}: started (pid {started.pid})")
    return {"name": process.name, "pid": started.pid, "started": True}


def _local_postgres(url: str) -> SplitResult | None:
    """The parts of ``url`` when it names a database on this machine's PostgreSQL, else None."""
    parts = urlsplit(url.removeprefix("db+"))
    return parts if parts.scheme.startswith("postgresql") and _is_local(url) and parts.path.strip("/") else None


def ensure_databases(env: Mapping[str, str]) -> list[str]:
    """Create the PostgreSQL roles and databases that the profile's URLs name on this machine, when missing: each
    role with the profile's password (``PGPASSWORD``, or the URL's), each database owned by its URL's role,
    through the local superuser (``STACK_POSTGRES_ADMIN``, default postgres). A role that exists keeps its
    password. Returns the databases created."""
    import psycopg
    from psycopg import sql

    targets = set()
    for value in env.values():
        if parts := _local_postgres(value):
            targets.add((parts.hostname, parts.port or 5432, parts.username or "postgres",
                         unquote(parts.password or env.get("PGPASSWORD", "")), parts.path.strip("/")))
    admin_user = env.get("STACK_POSTGRES_ADMIN", "postgres")
    created = []
    for host, port, user, password, name in sorted(targets):
        with psycopg.connect(host=host, port=port, user=admin_user, dbname="postgres", autocommit=True,
                             connect_timeout=10) as admin:
            if user != admin_user and not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                                        (user,)).fetchone():
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user),
                                                                                  sql.Literal(password)))
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                             sql.Identifier(user)))
                created.append(name)
    return created


def drop_database(url: str, admin_user: str = "postgres") -> bool:
    """Drop the local PostgreSQL database ``url`` names, closing its connections, through the local superuser.
    Returns whether it existed."""
    import psycopg
    from psycopg import sql

    parts = _local_postgres(url)
    if parts is None:
        shown = urlsplit(url)  # without the credentials
        raise StackError(f"not a local PostgreSQL database: {shown.scheme}://{shown.hostname}{shown.path}")
    name = parts.path.strip("/")
    with psycopg.connect(host=parts.hostname, port=parts.port or 5432, user=admin_user, dbname="postgres",
                         autocommit=True, connect_timeout=10) as admin:
        existed = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return existed


def ensure_buckets(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """Create the S3 buckets of the lake and of MLflow's artifacts, when missing."""
    from pipelines.core.lake import open_lake

    buckets = {urlsplit(value).netloc for value in (settings.lake_root, env.get("MLFLOW_ARTIFACTS_DESTINATION", ""))
               if value.startswith("s3://")}
    client = open_lake(settings).client  # type: ignore[attr-defined]
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for bucket in sorted(buckets - existing):
        client.create_bucket(Bucket=bucket)
    return sorted(buckets - existing)


def service_processes(settings: Settings, env: Mapping[str, str]) -> list[Process]:
    """The local stand-ins of the managed services the profile names on this machine."""
    processes = []
    if settings.s3_endpoint_url and _is_local(settings.s3_endpoint_url):
        port = _port_of(settings.s3_endpoint_url)
        processes.append(Process("s3", [str(BIN / "python"), "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                        str(port)], port, _answers(settings.s3_endpoint_url + "/")))
    tracking = settings.experiment_tracking_uri or ""
    if tracking.startswith("http") and _is_local(tracking):
        port = _port_of(tracking)
        command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                   "--backend-store-uri", env["MLFLOW_BACKEND_STORE_URI"], "--serve-artifacts",
                   "--artifacts-destination", env["MLFLOW_ARTIFACTS_DESTINATION"]]
        if env.get("MLFLOW_TRACKING_PASSWORD"):  # every call but /health needs the profile's user (401 else)
            command += ["--app-name", "basic-auth"]
        processes.append(Process("mlflow", command, port, _answers(f"{tracking}/health",
                                                                   lambda r: r.status_code == 200)))
    return processes


def _process_env(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    process_env = dict(env)
    if settings.s3_endpoint_url:  # MLflow's server writes artifacts to the same S3 API as the lake
        process_env.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    if process_env.get("MLFLOW_TRACKING_PASSWORD"):
        process_env |= mlflow_auth_env(settings, process_env)
    return process_env


def mlflow_auth_env(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """What MLflow's basic-auth server reads: its config file (``write_mlflow_auth_config`` writes it) and its
    admin, who is the profile's tracking user (``MLFLOW_TRACKING_USERNAME`` and ``_PASSWORD``, which every MLflow
    client of the pipeline sends)."""
    return {"MLFLOW_AUTH_CONFIG_PATH": str(settings.pipeline_home / "run" / "mlflow-auth.ini"),
            "MLFLOW_AUTH_ADMIN_USERNAME": env.get("MLFLOW_TRACKING_USERNAME", "pipeline"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": env["MLFLOW_TRACKING_PASSWORD"]}


def write_mlflow_auth_config(settings: Settings, env: Mapping[str, str]) -> None:
    """The basic-auth server's config at ``MLFLOW_AUTH_CONFIG_PATH``: the users' database (the profile's, else a
    file in the home) and nobody but the admin allowed anything."""
    config = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    config.parent.mkdir(parents=True, exist_ok=True)
    database = env.get("MLFLOW_AUTH_DATABASE_URI") or f"sqlite:///{settings.pipeline_home / 'mlflow-auth.db'}"
    # Credentials checked once a minute per user, not hashed again on every call (one server worker: nothing stale).
    config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                      f"database_uri = {database}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      "grant_default_workspace_access = false\nauth_cache_ttl_seconds = 60\n")


# Values that only say "put a secret here": a profile carrying one of them (or an empty secret) does not start.
_PLACEHOLDERS = re.compile(r"change[-_ ]?me|placeholder|your[-_]|<.*>|^x+$|^(secret|password|admin|todo)$", re.I)
# The secrets a profile must set, and those it may set (checked when present).
REQUIRED_SECRETS = ("AIRFLOW__API_AUTH__JWT_SECRET", "SERVICE_TOKEN")
OPTIONAL_SECRETS = ("AIRFLOW__CORE__FERNET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SMTP_PASSWORD",
                    "AIRFLOW__SMTP__SMTP_PASSWORD", "PGPASSWORD", "MLFLOW_TRACKING_PASSWORD",
                    "MLFLOW_FLASK_SERVER_SECRET_KEY")
# A tracking server over HTTP runs MLflow's basic auth: these must then be set (and real).
TRACKING_SERVER_SECRETS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
JWT_SECRET_MIN_LENGTH = 32


def refuse_placeholder_secrets(profile: Mapping[str, str]) -> None:
    """A profile (the production one: ``make up ENV_FILE=...``) with an empty or placeholder secret is refused,
    naming every such variable: a JWT secret, the model service's token, Fernet key, S3 key, SMTP password, the
    MLflow server's user, password and Flask key (when tracking goes to a server),
    PostgreSQL's password (``PGPASSWORD``, when a PostgreSQL URL carries none), or the password inside a connection
    URL (databases, brokers, the SMTP connection)."""
    problems = []
    for name in REQUIRED_SECRETS:
        value = profile.get(name, "").strip()
        if not value or _PLACEHOLDERS.search(value) or len(value) < JWT_SECRET_MIN_LENGTH:
            problems.append(f"{name} (empty, a placeholder or shorter than {JWT_SECRET_MIN_LENGTH} characters)")
    for name in OPTIONAL_SECRETS:
        if name in profile and (not profile[name].strip() or _PLACEHOLDERS.search(profile[name].strip())):
            problems.append(f"{name} (empty or a placeholder)")
    urls = {name: urlsplit(value.removeprefix("db+")) for name, value in profile.items()}
    passwordless = [name for name, url in urls.items() if url.scheme.startswith("postgresql") and url.password is None]
    pgpassword = profile.get("PGPASSWORD", "").strip()
    if passwordless and (not pgpassword or _PLACEHOLDERS.search(pgpassword)):
        problems.append(f"PGPASSWORD (empty or a placeholder; the PostgreSQL URLs {', '.join(passwordless)} carry "
                        "no password of their own)")
    if profile.get("EXPERIMENT_TRACKING_URI", "").startswith("http"):
        problems += [f"{name} (the MLflow tracking server needs it)" for name in TRACKING_SERVER_SECRETS
                     if not profile.get(name, "").strip()]
        if 0 < len(profile.get("MLFLOW_TRACKING_PASSWORD", "").strip()) < 12:
            problems.append("MLFLOW_TRACKING_PASSWORD (MLflow's server takes no password under 12 characters)")
    if profile.get("LAKE_URI", "").startswith("s3://"):
        problems += [f"{name} (the S3 lake needs it)" for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
                     if name not in profile]
    for name, value in profile.items():
        try:
            password = urlsplit(value).password if "://" in value else None
        except ValueError:  # not a URL after all
            password = None
        if password is not None and (not password or _PLACEHOLDERS.search(unquote(password))):
            problems.append(f"{name} (the password in its URL is empty or a placeholder)")
    if problems:
        raise StackError("the profile sets no real secret for: " + "; ".join(problems)
                         + ". Set them (infra/prod.env.example says where each is used); nothing was started.")


def up(profile: Mapping[str, str] | None = None, settings: Settings | None = None,
       say: Callable[[str], None] = log.info, local: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start the stack (what already runs is kept) and return where everything is. A profile with a placeholder
    or empty secret is refused before anything starts. ``local``: settings a command picks for this machine over
    the embedded ones (``make year``'s metadata database on the local PostgreSQL, trust auth); not a profile, so
    not held to the production profile's secrets, and a profile's own values win over it."""
    if profile:
        refuse_placeholder_secrets(profile)
    settings = settings or get_settings()
    env = _process_env(settings, airflow_env(settings, {**(local or {}), **(profile or {})}))
    if created := ensure_databases(env):
        say(f"Created PostgreSQL databases: {', '.join(created)}")
    if "MLFLOW_AUTH_CONFIG_PATH" in env:
        write_mlflow_auth_config(settings, env)
    started = [_start(settings, process, env, say) for process in service_processes(settings, env)]
    if settings.lake_root.startswith("s3://") and (created := ensure_buckets(settings, env)):
        say(f"Created S3 buckets: {', '.join(created)}")

    from pipelines.ops.mail_server import start_mail_server

    mail = start_mail_server(settings)
    say(f"mail server: {mail['host']}:{mail['port']}, messages in {mail['folder']}/")
    say("Preparing Airflow's metadata database...")
    # bandit B603: the venv's airflow, no shell
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True)  # nosec B603
    if migrate.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}{migrate.stderr[-2000:]}")
    for pool, (slots, description) in POOLS.items():
        # bandit B603: the venv's airflow, no shell
        made = subprocess.run([str(BIN / "airflow"), "pools", "set", pool, str(slots), description], env=env,  # nosec B603
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise StackError(f"airflow pools set {pool} failed:\n{made.stdout[-2000:]}{made.stderr[-2000:]}")
    started += [_start(settings, process, env, say) for process in airflow_processes(settings, env)]
    service = _serve_champion(settings, say)
    password = admin_password(settings)
    say(f"Airflow UI: {api_url(settings)}  (log in as {ADMIN} / {password}; the password is kept in "
        f"{settings.pipeline_home / 'airflow' / 'passwords.json'})")
    return {"ui": api_url(settings), "user": ADMIN, "password": password, "processes": started,
            "mail": mail, "service": service, "executor": env["AIRFLOW__CORE__EXECUTOR"]}


def _serve_champion(settings: Settings, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The model service when a champion exists (the training DAG's deploy_service deploys later ones)."""
    from pipelines.deploy.blue_green import deploy_service
    from pipelines.deploy.service import DeployError

    try:
        service = deploy_service(settings)
    except DeployError as error:
        say(f"model service: not started ({error}); the training DAG deploys the champion after a promotion")
        return None
    say(f"model service: {service['url']} serves version {service['model_version']}")
    return service


def names(settings: Settings, profile: Mapping[str, str] | None = None) -> list[str]:
    """Every process this stack may run, in the order ``up`` starts them."""
    env = _process_env(settings, airflow_env(settings, profile))
    from pipelines.ops.mail_server import PROCESS as MAIL

    return [p.name for p in service_processes(settings, env)] + [MAIL] + \
        [p.name for p in airflow_processes(settings, env)]


def down(profile: Mapping[str, str] | None = None, settings: Settings | None = None) -> list[str]:
    """Stop what ``up`` started, by process id, last started first (Airflow, with the tasks it runs, before the model
    service: a deploy task still running after the service was stopped started a slot again); the names of those
    that were running."""
    from pipelines.deploy.blue_green import stop_all

    settings = settings or get_settings()
    airflow = [p.name for p in airflow_processes(settings, _process_env(settings, airflow_env(settings, profile)))]
    # Workers the pid files know of beyond the profile's count (the profile changed since) are stopped too.
    workers = sorted(path.stem for path in (settings.pipeline_home / "run").glob("airflow-worker-*.pid"))
    stopped = [name for name in dict.fromkeys([*workers, *reversed(airflow)])
               if stop_process(settings, name, timeout_s=60)]
    # The slots, front door and keeper a deployment started (also by hand), while the lake and the registry they
    # flush to are still up; then the mail server and the stand-ins of the managed services.
    stop_all(settings)
    rest = [name for name in reversed(names(settings, profile)) if name not in airflow]
    return stopped + [name for name in rest if stop_process(settings, name, timeout_s=60)]


def status(profile: Mapping[str, str] | None = None, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    return {name: running(settings, name) for name in names(settings, profile)}


def apply_profile(path: Path | None) -> dict[str, str]:
    """Read a profile's environment file into this process's environment (so the settings see it)."""
    if path is None:
        return {}
    profile = read_env_file(path)
    os.environ.update(profile)
    return profile
