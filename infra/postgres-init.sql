-- The production profile's databases on one PostgreSQL server (infra/compose.yaml mounts this file into
-- /docker-entrypoint-initdb.d/, which the postgres image runs once, on an empty data directory).
-- The names are those in infra/prod.env.example's URLs (tests/unit/test_infra_files.py keeps them in step):
--   airflow  Airflow metadata and the Celery result backend  (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, ..._RESULT_BACKEND)
--   mlflow   the MLflow tracking server's backend store      (mlflow server --backend-store-uri)
--   mlflow_auth  the users of the tracking server's basic auth (MLFLOW_AUTH_DATABASE_URI)
--   feast    Feast's SQL registry                            (FEAST_REGISTRY_URL)
--   optuna   the Optuna studies shared by the tuning workers (OPTUNA_STORAGE)
-- On a managed server (RDS, Cloud SQL, ...) run the same statements once; separate roles per database are a
-- sensible hardening (CREATE ROLE ... LOGIN PASSWORD ...; CREATE DATABASE ... OWNER ...), not required by the code.

CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE feast;
CREATE DATABASE optuna;
