"""One DAG parsed from its file, as the dag-processor parses a bundle, with the embedded Airflow environment on a
throwaway home: the tests that run a task's body (or a sensor's poke) in their own process start from it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.ops.airflow_config import airflow_env

DAGS_DIR = PROJECT_ROOT / "dags"


@contextmanager
def parsed_dag(home: Path, dag_id: str) -> Iterator[Any]:
    """The DAG ``dag_id`` of ``dags/{dag_id}.py``, with Airflow's environment for ``home`` set while it is used."""
    env = airflow_env(Settings(pipeline_home=home))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if os.environ.get(name) != value:
                patch.setenv(name, value)
        from airflow.dag_processing.dagbag import BundleDagBag

        bag = BundleDagBag(dag_folder=str(DAGS_DIR / f"{dag_id}.py"), bundle_path=DAGS_DIR)
        assert bag.import_errors == {}
        yield bag.dags[dag_id]
