"""The second alert path beside email: a chat message posted to an incoming webhook (Slack's JSON, ``{"text": ...}``,
which Mattermost, Rocket.Chat and most chat tools' Slack-compatible endpoints take too), so an SMTP outage does not
silence a failure. ``ALERT_WEBHOOK_URL`` turns it on (``pipelines.core.settings``); without it nothing is posted.

* ``post_webhook``: one JSON post with the standard library (no client dependency for one request), a timeout on
  every try, and a bounded retry (3 tries, 0.5 s then 1 s apart) on what a retry can fix: refused or dropped
  connections, timeouts, 5xx and 429. A 4xx is the URL's or the payload's fault: it fails at once. Redirects are
  not followed: urllib would turn a redirected POST into a GET and call the alert delivered.
* ``failure_alert``, ``monitoring_alert``, ``year_report_alert``: the text, from what the emails say
  (``pipelines.monitoring.notifications``): the same first line, the facts, where the report is.
* ``post_alert``: post a text to the configured URL, or do nothing when none is.

Pure of Airflow: ``dags/_notifiers.py`` sends each alert down both paths, each on its own.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipelines.core.settings import Settings, get_settings
from pipelines.monitoring.notifications import (
    error_text,
    failure_facts,
    failure_subject,
    monitoring_subject,
    year_report_subject,
)

log = logging.getLogger(__name__)

TRIES = 3
BACKOFF_S = 0.5  # then 1 s: a relay restarting is back within seconds; a longer outage is email's to cover
DEFAULT_TIMEOUT_S = 5.0
# Slack shows up to 40,000 characters of text but folds long messages; the error and the expectation list are
# clipped so the alert stays readable (the email and the task log have everything).
MAX_ERROR_CHARS = 1500
MAX_EXPECTATIONS = 10
USER_AGENT = "flight-delay-pipeline-alerts"


class WebhookError(RuntimeError):
    """The webhook did not take the alert: refused for good (4xx, a redirect) or still failing after the last try."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None  # the 3xx surfaces as an HTTPError: refused, never re-sent as a GET


_OPENER = urllib.request.build_opener(_NoRedirects)


def check_webhook_url(url: str) -> str:
    """``url`` when it is http(s) with a host; ``ValueError`` otherwise. urllib also opens ``file:`` and ``ftp:``
    URLs: a mistyped setting must not read or send anything but an HTTP request. The error names the scheme only
    (the rest of a webhook URL is often its secret)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a webhook URL must be http:// or https:// with a host, got one with scheme "
                         f"{parts.scheme!r}" + ("" if parts.hostname else " and no host"))
    return url.strip()


def _retryable(error: BaseException) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code == 429 or error.code >= 500
    # refused, reset, DNS, timeouts (socket.timeout is OSError), a garbled status line
    return isinstance(error, OSError | http.client.HTTPException)


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        body = error.read(200).decode("utf-8", "replace").strip() if error.fp is not None else ""
        return f"HTTP {error.code} {error.reason}" + (f": {body}" if body else "")
    if isinstance(error, urllib.error.URLError):
        return f"{type(error.reason).__name__}: {error.reason}"
    return f"{type(error).__name__}: {error}"


def post_webhook(url: str, text: str, *, blocks: Sequence[Mapping[str, Any]] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, tries: int = TRIES,
                 backoff_s: float = BACKOFF_S) -> dict[str, Any]:
    """POST ``{"text": text}`` (and ``blocks`` when given: Slack shows them and uses ``text`` as the notification)
    to ``url`` as JSON. ``timeout_s`` bounds each connect and each read; up to ``tries`` tries, ``backoff_s`` then
    twice that apart, on connection errors, timeouts, 5xx and 429. Returns the host, the status and the tries it
    took (never the URL: it is a secret); raises ``WebhookError`` when the webhook did not take it, ``ValueError``
    for a URL that is not http(s)."""
    url = check_webhook_url(url)
    if tries < 1:
        raise ValueError(f"tries must be 1 or more, got {tries}")
    host = urlsplit(url).hostname
    payload: dict[str, Any] = {"text": text}
    if blocks:
        payload["blocks"] = list(blocks)
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT})
    for attempt in range(1, tries + 1):
        try:
            with _OPENER.open(request, timeout=timeout_s) as response:
                response.read()
                status = int(response.status)
            log.info("alert posted to the webhook at %s (HTTP %d, try %d)", host, status, attempt)
            return {"host": host, "status": status, "tries": attempt}
        except Exception as error:
            if not _retryable(error):
                raise WebhookError(f"the webhook at {host} did not take the alert: {_describe(error)}") from error
            if attempt == tries:
                raise WebhookError(f"the webhook at {host} failed {tries} tries; the last: "
                                   f"{_describe(error)}") from error
            pause = backoff_s * 2 ** (attempt - 1)
            log.warning("webhook at %s, try %d of %d: %s; again in %.1f s", host, attempt, tries,
                        _describe(error), pause)
            time.sleep(pause)
    raise AssertionError("unreachable: the last try returns or raises")


def post_alert(text: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """Post ``text`` to ``ALERT_WEBHOOK_URL`` with its timeout; None (nothing posted) when no webhook is set."""
    settings = settings or get_settings()
    if settings.alert_webhook_url is None:
        return None
    return post_webhook(settings.alert_webhook_url.get_secret_value(), text,
                        timeout_s=settings.alert_webhook_timeout_s)


# The text: Slack's mrkdwn (*bold*, `code`, <url|label>); &, < and > in what we quote are escaped as Slack asks.


def escape(value: Any) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _locations(reports: Iterable[str | Path]) -> list[str]:
    return [f"• `{escape(location)}`" for location in reports]


def failure_alert(dag_id: str, task_id: str, logical_date: date | datetime | str | None,
                  error: BaseException | str | None, failed_expectations: Sequence[str] | None = None, *,
                  run_id: str | None = None, try_number: int | None = None, log_url: str | None = None) -> str:
    """A task failed for good: the email's subject as the first line, then DAG, task, date, run and attempt, the
    error, the failed critical expectations (the first ``MAX_EXPECTATIONS``) and the log's URL."""
    lines = [f"*{escape(failure_subject(dag_id, task_id, logical_date, failed_expectations))}*",
             " · ".join(f"{label}: {escape(value)}" for label, value in
                        failure_facts(dag_id, task_id, logical_date, run_id=run_id, try_number=try_number))]
    lines.append(f"Error:\n```{escape(_clip(error_text(error), MAX_ERROR_CHARS))}```")
    if failed_expectations:
        lines.append("Failed critical expectations (the partitions are in `quarantine/`):")
        lines += [f"• {escape(item)}" for item in failed_expectations[:MAX_EXPECTATIONS]]
        if len(failed_expectations) > MAX_EXPECTATIONS:
            lines.append(f"• and {len(failed_expectations) - MAX_EXPECTATIONS} more (in the email)")
    if log_url:
        lines.append(f"Log: <{log_url}>")
    return "\n".join(lines)


def monitoring_alert(summary: Mapping[str, Any], report_paths: Iterable[str | Path]) -> str:
    """After a monitoring run: the email's subject (the date, then whether anything needs a person and what), and
    where the full report is in the lake."""
    lines = [f"*{escape(monitoring_subject(summary))}*"]
    locations = _locations(report_paths)
    if locations:
        lines += ["Report (in the lake; the email has the figures and the 30-day chart):", *locations]
    return "\n".join(lines)


def year_report_alert(report: Mapping[str, Any]) -> str:
    """The year report is built: the email's subject and where the report is."""
    lines = [f"*{escape(year_report_subject(report))}*"]
    paths = report.get("paths") or {}
    locations = _locations(str(paths[name]) for name in ("html", "summary") if name in paths)
    if locations:
        lines += ["Report (in the lake):", *locations]
    return "\n".join(lines)
