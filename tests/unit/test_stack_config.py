"""The profile switch: environment files, Airflow's configuration for a home, and what the stack would start."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings, read_env_file
from pipelines.ops.airflow_config import NUMERIC_THREADS, admin_password, airflow_env, passwords_file
from pipelines.ops.stack import airflow_processes, celery_queues, names, service_processes

EXAMPLE = PROJECT_ROOT / "infra" / "prod.env.example"


def test_env_file_reads_values_quotes_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text("# a comment\n\nA=1\nexport B='two words'\nC=\"x=y\"\nPIPELINE_HOME=state/home\n")
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "x=y",
                                   "PIPELINE_HOME": str(PROJECT_ROOT / "state" / "home")}


def test_env_file_is_read_by_dotenv_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """python-dotenv's syntax (inline comments, spaces around ``=``, multi-line quoted values); ``${NAME}`` is kept
    as written, never expanded from the file or the caller's environment."""
    monkeypatch.setenv("SECRET_PART", "from-the-shell")
    path = tmp_path / "x.env"
    path.write_text("A = 1  # the first\nB=\"line one\nline two\"\nC=pa$$word${SECRET_PART}\nD='${A}'\nE=\n"
                    "PIPELINE_HOME=/abs/home\n")
    assert read_env_file(path) == {"A": "1", "B": "line one\nline two", "C": "pa$$word${SECRET_PART}",
                                   "D": "${A}", "E": "", "PIPELINE_HOME": "/abs/home"}


@pytest.mark.parametrize(("text", "line"), [("A=1\nnot an assignment\n", 2), ("A=1\n\n# c\nB\n", 4),
                                            ("A=1\nB='never closed\n", 2)])
def test_env_file_refuses_a_line_that_is_not_an_assignment(tmp_path: Path, text: str, line: int) -> None:
    """dotenv only logs and skips such a line; here it is an error naming the file and the line."""
    path = tmp_path / "x.env"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"x.env:{line}: expected NAME=value"):
        read_env_file(path)


def test_the_production_example_is_the_production_profile(tmp_path: Path) -> None:
    profile = read_env_file(EXAMPLE) | {"PIPELINE_HOME": str(tmp_path)}  # not the example's home in the checkout
    settings = Settings(**{k.lower(): v for k, v in profile.items() if k.lower() in Settings.model_fields})
    assert settings.feast_profile == "production" and settings.lake_root.startswith("s3://")
    assert settings.optuna_url.startswith("postgresql") and settings.tracking_uri.startswith("http://")
    env = airflow_env(settings, profile)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert celery_queues(env) == ["default", "default,training", "training"]
    started = [p.name for p in service_processes(settings, env)]
    assert started == ["s3", "mlflow"], "the S3 API and MLflow server it names on 127.0.0.1 are started here"
    assert names(settings, profile)[-3:] == ["airflow-worker-1", "airflow-worker-2", "airflow-worker-3"]


def test_embedded_airflow_has_auth_on_and_no_celery(settings: Settings) -> None:
    env = airflow_env(settings)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and not celery_queues(env)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    assert [p.name for p in airflow_processes(settings, env)] == [
        "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
    assert not service_processes(settings, env)


def test_profile_values_win_over_the_embedded_base(settings: Settings) -> None:
    env = airflow_env(settings, {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "STACK_CELERY_WORKERS": "a b,c"})
    assert celery_queues(env) == ["a", "b,c"]


def test_the_admin_password_and_jwt_secret_are_made_once_and_kept_private(settings: Settings) -> None:
    password = admin_password(settings)
    assert len(password) >= 12 and admin_password(settings) == password
    assert stat.S_IMODE(passwords_file(settings).stat().st_mode) == 0o600
    secret = airflow_env(settings)["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(secret) >= 48 and airflow_env(settings)["AIRFLOW__API_AUTH__JWT_SECRET"] == secret


def test_the_local_executor_scheduler_preloads_what_its_forked_tasks_import(settings: Settings) -> None:
    """LocalExecutor tasks fork from the scheduler: it starts through pipelines.ops.scheduler, which imports the
    heavy libraries once; under Celery the scheduler runs no task and is Airflow's own command."""
    local = {p.name: p.command for p in airflow_processes(settings, airflow_env(settings))}
    assert local["airflow-scheduler"][1:] == ["-m", "pipelines.ops.scheduler"]
    assert local["airflow-dag-processor"][1:] == ["dag-processor"]
    celery = airflow_env(settings, {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})
    assert {p.name: p.command for p in airflow_processes(settings, celery)}["airflow-scheduler"][1:] == ["scheduler"]


def test_preloading_starts_no_thread_so_forking_after_it_is_safe() -> None:
    """A fresh interpreter (this session's imports cannot hide one): after the preload, only the main thread."""
    import subprocess
    import sys

    code = ("import threading\nfrom pipelines.ops.scheduler import PRELOADED, preload\npreload()\n"
            "import sys\nassert all(name in sys.modules for name in PRELOADED)\n"
            "print(sorted(t.name for t in threading.enumerate()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env={"GX_ANALYTICS_ENABLED": "false", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['MainThread']"


def _example_with(**values: str) -> dict[str, str]:
    """infra/prod.env.example as shipped, with the given values set."""
    return read_env_file(EXAMPLE) | values


REAL = {"AIRFLOW__API_AUTH__JWT_SECRET": "q" * 16 + "Z3x9" * 8, "SERVICE_TOKEN": "Vb7" * 12, "PGPASSWORD": "Lq4Wd9zK2m",
        "AWS_ACCESS_KEY_ID": "AKIA4EXAMPLE7Q", "AWS_SECRET_ACCESS_KEY": "k9Vd2mQ8rT1wL5yN0pB3",
        "MLFLOW_TRACKING_PASSWORD": "Hq2Zt8Wm4Kd1", "MLFLOW_FLASK_SERVER_SECRET_KEY": "pX7Rv3Nc9Ls2Bq6"}


def test_the_shipped_example_profile_is_refused_naming_each_placeholder_secret() -> None:
    from pipelines.ops.stack import StackError, refuse_placeholder_secrets, up

    with pytest.raises(StackError) as refused:
        refuse_placeholder_secrets(_example_with())
    message = str(refused.value)
    for name in ("AIRFLOW__API_AUTH__JWT_SECRET", "SERVICE_TOKEN", "PGPASSWORD", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert name in message
    assert "nothing was started" in message
    with pytest.raises(StackError, match="AIRFLOW__API_AUTH__JWT_SECRET"):
        up(_example_with(AIRFLOW__API_AUTH__JWT_SECRET=""))  # before any process starts


@pytest.mark.parametrize(("name", "value"), [
    ("AIRFLOW__API_AUTH__JWT_SECRET", "too-short-but-real-7Qx"),
    ("SERVICE_TOKEN", ""),
    ("AIRFLOW__CORE__FERNET_KEY", ""),
    ("AWS_SECRET_ACCESS_KEY", "<your secret key>"),
    ("MLFLOW_BACKEND_STORE_URI", "postgresql+psycopg://mlflow:changeme@127.0.0.1:5432/mlflow"),
    ("AIRFLOW_CONN_SMTP_DEFAULT", "smtp://relay:password@mail.example.com:587"),
    ("MLFLOW_TRACKING_PASSWORD", "change-me"),
    ("MLFLOW_TRACKING_PASSWORD", "Short7Pw"),
    ("MLFLOW_TRACKING_USERNAME", ""),
    ("MLFLOW_FLASK_SERVER_SECRET_KEY", ""),
])
def test_one_placeholder_secret_is_enough_to_refuse(name: str, value: str) -> None:
    from pipelines.ops.stack import StackError, refuse_placeholder_secrets

    with pytest.raises(StackError, match=name):
        refuse_placeholder_secrets(_example_with(**(REAL | {name: value})))


def test_a_profile_with_real_secrets_passes() -> None:
    from pipelines.ops.stack import refuse_placeholder_secrets

    refuse_placeholder_secrets(_example_with(**REAL, MLFLOW_BACKEND_STORE_URI=(
        "postgresql+psycopg://mlflow:Tq8%40vL2zR9@127.0.0.1:5432/mlflow?connect_timeout=10")))


def test_postgresql_urls_without_a_password_need_a_real_pgpassword() -> None:
    from pipelines.ops.stack import StackError, refuse_placeholder_secrets

    profile = _example_with(**REAL)
    assert all("pipeline@" in v for v in profile.values() if v.startswith(("postgresql", "db+postgresql")))
    for missing in ({"PGPASSWORD": ""}, {"PGPASSWORD": "change-me"}):
        with pytest.raises(StackError, match="PGPASSWORD .*AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            refuse_placeholder_secrets(profile | missing)
    without = {k: v for k, v in profile.items() if k != "PGPASSWORD"}
    with pytest.raises(StackError, match="PGPASSWORD"):
        refuse_placeholder_secrets(without)


def test_the_tracking_server_runs_basic_auth_with_the_profiles_user(tmp_path: Path) -> None:
    """With a tracking password in the profile, MLflow's server starts with ``--app-name basic-auth``, its admin
    the profile's tracking user, its users' database the profile's, and nobody else allowed anything. (The 401
    without credentials, live: tests/e2e/test_production_profile.py.)"""
    import configparser

    from pipelines.core.settings import Settings
    from pipelines.ops.stack import _process_env, service_processes, write_mlflow_auth_config

    settings = Settings(pipeline_home=tmp_path, experiment_tracking_uri="http://127.0.0.1:5999")
    profile = _example_with(**REAL)
    env = _process_env(settings, profile)
    [mlflow] = [p for p in service_processes(settings, env) if p.name == "mlflow"]
    assert mlflow.command[-2:] == ["--app-name", "basic-auth"]
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "pipeline" == profile["MLFLOW_TRACKING_USERNAME"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == REAL["MLFLOW_TRACKING_PASSWORD"]
    write_mlflow_auth_config(settings, env)
    config = configparser.ConfigParser()
    config.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert config["mlflow"]["database_uri"] == profile["MLFLOW_AUTH_DATABASE_URI"]
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    without = _process_env(settings, {k: v for k, v in profile.items() if k != "MLFLOW_TRACKING_PASSWORD"})
    assert "--app-name" not in next(p for p in service_processes(settings, without) if p.name == "mlflow").command


def test_task_processes_run_numeric_libraries_on_one_thread_unless_told_otherwise(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NUMERIC_THREADS:
        monkeypatch.delenv(name, raising=False)
    assert {name: airflow_env(settings)[name] for name in NUMERIC_THREADS} == dict.fromkeys(NUMERIC_THREADS, "1")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    assert airflow_env(settings)["OPENBLAS_NUM_THREADS"] == "4"
    assert airflow_env(settings, {"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "2"


def test_down_stops_airflow_and_its_tasks_before_the_model_service(settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A deploy task still running when ``make down`` had stopped the service started a slot again. The order is
    what this checks (stops are recorded, not done: tests/unit/test_processes.py stops real ones): Airflow
    with its tasks first, then the slots while the lake and registry they flush to are up, then the rest."""
    import pipelines.deploy.blue_green as blue_green
    import pipelines.ops.stack as stack

    calls: list[str] = []
    monkeypatch.setattr(stack, "stop_process", lambda _settings, name, timeout_s: calls.append(name) or True)
    monkeypatch.setattr(blue_green, "stop_all", lambda _settings: calls.append("model service"))
    stopped = stack.down(None, settings)
    assert calls == ["airflow-triggerer", "airflow-dag-processor", "airflow-scheduler", "airflow-api-server",
                     "model service", "mail"]
    assert stopped == [name for name in calls if name != "model service"]
