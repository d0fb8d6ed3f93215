#!/usr/bin/env bash
# The production profile on this machine, as local processes: PostgreSQL and Redis (already running here), the S3
# API (moto's server) and the MLflow tracking server, Airflow 3 with the CeleryExecutor (API server and UI,
# scheduler, DAG processor, triggerer, three Celery workers), the SMTP server and the model service.
#
#   infra/local-stack.sh up [ENV_FILE]      start it (what runs already is kept); prints the UI and its login
#   infra/local-stack.sh status [ENV_FILE]  which processes run
#   infra/local-stack.sh down [ENV_FILE]    stop every process it started, by process id
#
# ENV_FILE defaults to infra/prod.env, made from infra/prod.env.example the first time (with fresh secrets).
# The same as `make up ENV_FILE=infra/prod.env`; the work is done by pipelines/ops/stack.py.
set -euo pipefail
cd "$(dirname "$0")/.."
command=${1:-up}
env_file=${2:-infra/prod.env}
if [ ! -f "$env_file" ]; then
    # Fresh secrets for this machine (the local S3 server takes any key pair); the example's placeholders are refused.
    token() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
    sed -e "s/^AIRFLOW__API_AUTH__JWT_SECRET=.*/AIRFLOW__API_AUTH__JWT_SECRET=$(token)/" \
        -e "s/^SERVICE_TOKEN=.*/SERVICE_TOKEN=$(token)/" \
        -e "s/^PGPASSWORD=.*/PGPASSWORD=$(token)/" \
        -e "s/^MLFLOW_TRACKING_PASSWORD=.*/MLFLOW_TRACKING_PASSWORD=$(token)/" \
        -e "s/^MLFLOW_FLASK_SERVER_SECRET_KEY=.*/MLFLOW_FLASK_SERVER_SECRET_KEY=$(token)/" \
        -e "s/^AWS_ACCESS_KEY_ID=.*/AWS_ACCESS_KEY_ID=$(token)/" \
        -e "s/^AWS_SECRET_ACCESS_KEY=.*/AWS_SECRET_ACCESS_KEY=$(token)/" infra/prod.env.example > "$env_file"
    chmod 600 "$env_file"
    echo "Created $env_file from infra/prod.env.example; set its secrets for anything beyond this machine."
fi
make --no-print-directory install
case "$command" in
    up) exec .venv/bin/python -m pipelines --env-file "$env_file" up ;;
    down) exec .venv/bin/python -m pipelines --env-file "$env_file" down ;;
    status) exec .venv/bin/python -m pipelines --env-file "$env_file" stack-status ;;
    *) echo "usage: $0 up|status|down [ENV_FILE]" >&2; exit 2 ;;
esac
