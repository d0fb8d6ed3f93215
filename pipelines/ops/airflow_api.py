"""A small client of Airflow 3's REST API (``/api/v2``): log in, unpause, trigger a DAG run with params, create a
backfill, clear a run, wait, read task instances. What a person does from the UI, for ``make year`` and the
end-to-end tests. Dates are New York days: a date given for a logical date means its local midnight, the start of
that day's data interval."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import requests

from pipelines.core.dates import local_midnight

log = logging.getLogger(__name__)

FINISHED = {"success", "failed"}
BACKFILL_ATTEMPTS = 8
IDEMPOTENT_RETRIES = 3


class AirflowApiError(RuntimeError):
    """The API refused a request or a run did not finish as expected; the message carries the API's answer."""


PAGE = 100
"""Airflow's REST API page size (``[api] maximum_page_limit``'s default): a larger ``limit`` is cut to it."""


@dataclass
class AirflowClient:
    """Airflow's REST API at ``url``, logged in as ``user`` (a JWT from ``/auth/token``, renewed when refused)."""

    url: str
    user: str
    password: str
    _session: requests.Session = field(default_factory=requests.Session, repr=False)

    def _login(self) -> None:
        answer = self._session.post(f"{self.url}/auth/token", json={"username": self.user, "password": self.password},
                                    timeout=30)
        if answer.status_code >= 400:
            raise AirflowApiError(f"login as {self.user} failed: {answer.status_code} {answer.text[:300]}")
        self._session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if "Authorization" not in self._session.headers:
            self._login()
        answer = self._session.request(method, f"{self.url}/api/v2{path}", timeout=60, **kwargs)
        if answer.status_code == 401:  # the token expired
            self._login()
            answer = self._session.request(method, f"{self.url}/api/v2{path}", timeout=60, **kwargs)
        for attempt in range(1, IDEMPOTENT_RETRIES + 1):  # a busy metadata database: reads and idempotent writes
            if answer.status_code not in (500, 503) or method not in ("GET", "PATCH", "PUT"):
                break
            log.warning("%s %s: %s, asking again", method, path, answer.status_code)
            time.sleep(attempt)
            answer = self._session.request(method, f"{self.url}/api/v2{path}", timeout=60, **kwargs)
        if answer.status_code >= 400:
            raise AirflowApiError(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json() if answer.content else None

    def every(self, path: str, key: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item of a listing, page by page: the API answers at most ``PAGE`` items a request, whatever
        ``limit`` asks (a year's runs are several hundred)."""
        items: list[dict[str, Any]] = []
        while True:
            answer = self.request("GET", path, params={**(params or {}), "limit": PAGE, "offset": len(items)})
            items += answer[key]
            if not answer[key] or len(items) >= int(answer["total_entries"]):
                return items

    def wait_for_dags(self, dag_ids: list[str] | tuple[str, ...], timeout_s: float = 180) -> list[dict[str, Any]]:
        """The DAGs' details once the DAG processor has parsed them (it starts with the stack, then parses)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return [self.request("GET", f"/dags/{dag_id}/details") for dag_id in dag_ids]
            except AirflowApiError as error:
                if time.monotonic() > deadline:
                    raise AirflowApiError(f"not parsed within {timeout_s:.0f}s: {error}") from None
                time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, logical_date: date | datetime, conf: dict[str, Any] | None = None) -> str:
        """Start a run of ``dag_id`` with ``conf`` as its params; its run id. A date is that New York day's
        midnight."""
        when = logical_date if isinstance(logical_date, datetime) else local_midnight(logical_date)
        run = self.request("POST", f"/dags/{dag_id}/dagRuns",
                           json={"logical_date": when.isoformat(), "conf": conf or {}})
        log.info("triggered %s %s with %s", dag_id, run["dag_run_id"], conf)
        return str(run["dag_run_id"])

    def backfills(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's backfills, oldest first (``completed_at`` is None while one runs)."""
        return self.every("/backfills", "backfills", {"dag_id": dag_id, "order_by": "id"})

    def backfill(self, dag_id: str, first: date, last: date, conf: dict[str, Any] | None = None,
                 max_active_runs: int = 1, reprocess: str = "failed") -> dict[str, Any]:
        """A backfill of the New York days ``first`` .. ``last``: the scheduler runs them in date order, at most
        ``max_active_runs`` at once; a day with a successful run is not run again (``reprocess``: "failed" reruns
        failed ones, "none" none, "completed" all)."""
        body = {"dag_id": dag_id, "from_date": local_midnight(first).isoformat(),
                "to_date": local_midnight(last).isoformat(), "max_active_runs": max_active_runs,
                "reprocess_behavior": reprocess, "dag_run_conf": conf or {}}
        for attempt in range(1, BACKFILL_ATTEMPTS + 1):
            try:
                backfill = dict(self.request("POST", "/backfills", json=body))
                break
            except AirflowApiError as error:
                # On SQLite the API refuses to create a backfill while the scheduler writes (503, "Database is
                # locked"): nothing was created, so asking again is safe.
                if ": 503 " not in str(error) or attempt == BACKFILL_ATTEMPTS:
                    raise
                log.warning("backfill of %s refused (%s), asking again", dag_id, error)
                time.sleep(2 * attempt)
        log.info("backfill %s of %s for %s .. %s", backfill["id"], dag_id, first, last)
        return backfill

    def clear(self, dag_id: str, run_id: str) -> list[str]:
        """Clear every task instance of the run (the UI's *Clear*, whole run): the scheduler runs it again. The
        cleared task ids."""
        answer = self.request("POST", f"/dags/{dag_id}/clearTaskInstances",
                              json={"dry_run": False, "dag_run_id": run_id, "only_failed": False,
                                    "reset_dag_runs": True, "include_downstream": True})
        return [ti["task_id"] for ti in answer.get("task_instances", [])]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}"))

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.every(f"/dags/{dag_id}/dagRuns", "dag_runs", {"order_by": "run_after"})

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return list(answer["task_instances"])

    def wait(self, dag_id: str, run_id: str, timeout_s: float = 900, poll_s: float = 3) -> dict[str, Any]:
        """Wait until the run finishes; the run. Raises when it failed or took longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (run := self.run(dag_id, run_id))["state"] not in FINISHED:
            if time.monotonic() > deadline:
                raise AirflowApiError(f"{dag_id} {run_id} still {run['state']} after {timeout_s:.0f}s: "
                                      f"{self._states(dag_id, run_id)}")
            time.sleep(poll_s)
        if run["state"] != "success":
            raise AirflowApiError(f"{dag_id} {run_id} {run['state']}: {self._states(dag_id, run_id)}")
        return run

    def _states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {f"{ti['task_id']}[{ti['map_index']}]" if ti["map_index"] >= 0 else ti["task_id"]: str(ti["state"])
                for ti in self.task_instances(dag_id, run_id)}
