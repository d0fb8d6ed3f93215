"""How a DAG says no to a run it cannot serve. Not a DAG file: ``.airflowignore`` keeps the dag-processor from
parsing it; DAG files import it (Airflow puts the DAG folder on ``sys.path``).

A person who triggers a run for a day the simulated feed does not hold (the UI form's default logical date, now,
is years past 2013) gets a failed run whose log says why and which dates to use, never a silent green run; a
scheduled run past the feed's end (the DAGs keep their schedule, the feed ends with 2013) is skipped with the same
words: nothing is wrong, there is nothing to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException


def refuse(context: Mapping[str, Any], error: Exception) -> NoReturn:
    """Skip a scheduled run, fail any other (manual, backfill, asset-triggered) without retries, with ``error``'s
    message."""
    run_type = getattr(context.get("dag_run"), "run_type", None)
    if getattr(run_type, "value", run_type) == "scheduled":  # an enum in a task (str() gives its class's name)
        raise AirflowSkipException(str(error)) from error
    raise AirflowFailException(str(error)) from error
