"""Feast's offline store (DuckDB, through ibis) reading feature tables from the lake on S3.

DuckDB reads ``s3://`` through its ``httpfs`` extension, which it would download from the internet the first
time; the extension comes instead from its PyPI wheel (``duckdb-extension-httpfs``, the same version as
``duckdb``) and is installed into DuckDB's extension folder once. The endpoint and credentials are those boto3
resolves for the lake (``S3_ENDPOINT_URL``, the standard AWS variables or profile), given to DuckDB as a secret of
the process's default ibis connection, which is the one Feast's DuckDB offline store reads through.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.core.settings import Settings

log = logging.getLogger(__name__)


def _extension_file() -> Path:
    import duckdb
    import duckdb_extension_httpfs

    folder = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    files = sorted(folder.glob("httpfs.duckdb_extension"))
    if not files:
        raise RuntimeError(f"duckdb-extension-httpfs has no build for DuckDB {duckdb.__version__} in {folder}: "
                           "install the duckdb-extension-httpfs release that matches duckdb (requirements.lock)")
    return files[0]


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def configure_duckdb_s3(settings: Settings) -> None:
    """Let this process's DuckDB (Feast's offline store) read the settings' S3 lake."""
    import boto3
    import ibis

    connection = ibis.get_backend()
    installed = connection.raw_sql(
        "SELECT installed FROM duckdb_extensions() WHERE extension_name = 'httpfs'").fetchone()
    if not (installed and installed[0]):
        connection.raw_sql(f"INSTALL {_quoted(str(_extension_file()))}")
    connection.raw_sql("LOAD httpfs")
    session = boto3.session.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise RuntimeError("no AWS credentials for the S3 lake (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or a profile)")
    frozen = credentials.get_frozen_credentials()
    options = {"KEY_ID": frozen.access_key, "SECRET": frozen.secret_key,
               "REGION": session.region_name or "us-east-1"}
    if frozen.token:
        options["SESSION_TOKEN"] = frozen.token
    fields = ", ".join(f"{name} {_quoted(value)}" for name, value in options.items())
    if settings.s3_endpoint_url:  # an S3-compatible server: path-style URLs on its host and port
        endpoint = urlsplit(settings.s3_endpoint_url)
        fields += (f", ENDPOINT {_quoted(endpoint.netloc)}, URL_STYLE 'path', "
                   f"USE_SSL {'true' if endpoint.scheme == 'https' else 'false'}")
    connection.raw_sql(f"CREATE OR REPLACE SECRET flight_delay_lake (TYPE s3, {fields})")
    log.debug("DuckDB reads the lake on S3 (%s)", settings.s3_endpoint_url or "AWS")
