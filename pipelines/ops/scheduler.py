"""``python -m pipelines.ops.scheduler``: Airflow's scheduler, started with the pipeline's heavy libraries already
imported, for the LocalExecutor.

The LocalExecutor forks its workers from the scheduler, and each worker forks a process per task: whatever the
scheduler imported before, every task inherits without importing it again. Our tasks import Feast (about 2.5 s
here without typeguard's instrumentation), Great Expectations and Evidently (about 4 s each), torch and MLflow at
their start, a cost paid again by every task of every run, which dominated the short daily tasks of ``make year``.
Importing them here once moves that cost to the scheduler's start. Nothing is initialised (no thread, connection or
store is created by these imports; checked by ``tests/unit/test_stack_config.py``), so the forks are safe. The
modules are shared copy-on-write between the processes.

With the CeleryExecutor the scheduler runs no task: ``make up`` starts the plain ``airflow scheduler`` there.
"""

from __future__ import annotations

import importlib
import logging
import runpy
import sys
import time

# pipelines.features before feast: Feast comes without typeguard's instrumentation (pipelines.features.feast_import)
PRELOADED = ("pandas", "pyarrow", "duckdb", "sklearn", "torch", "pipelines.features", "feast", "great_expectations",
             "evidently", "mlflow", "optuna")


def preload(modules: tuple[str, ...] = PRELOADED) -> float:
    """Import ``modules``; the seconds it took."""
    started = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    return time.perf_counter() - started


def main() -> None:
    seconds = preload()
    logging.getLogger(__name__).warning("preloaded %s for the tasks in %.1fs", ", ".join(PRELOADED), seconds)
    sys.argv = ["airflow", "scheduler", *sys.argv[1:]]
    runpy.run_module("airflow", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
