"""The emails the owners get, composed as plain parts: a subject that says what happened, an HTML body, the files
to attach. Pure functions with no Airflow import; the DAG layer (``dags/_notifiers.py``) sends the parts through
Airflow's SMTP connection.

* ``monitoring_email``: after every monitoring run, from its summary (drift, quality against training, traffic,
  retraining) with the HTML report attached, or named by its path or URI when it is over the size cap.
* ``failure_email``: when a task fails for good, with the failed expectations of a critical validation failure.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipelines.core.settings import Settings, get_settings

SUBJECT_PREFIX = "[flight_delay]"
# How many features the monitoring email lists; the report has all of them.
TOP_FEATURES = 10
# check_quarantine's message (pipelines.validation.steps, from Verdict.reason): a header per partition, one item per
# failure.
_QUARANTINED = re.compile(r"^(?P<table>\w+) (?P<date>\d{4}-\d{2}-\d{2}) quarantined\b")
_ITEM = re.compile(r"^\s+- (?P<item>.+)$")


@dataclass(frozen=True)
class EmailParts:
    """One email as the SMTP hook takes it: recipients, subject, HTML body and local files to attach."""

    to: list[str]
    subject: str
    html: str
    mail_from: str
    attachments: list[Path] = field(default_factory=list)
    # Reports that were not attached (too large, or not a local file), with the reason, as the body names them.
    not_attached: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """A small JSON-able record of what was sent (an XCom, a log line)."""
        return {"to": self.to, "subject": self.subject, "attachments": [p.name for p in self.attachments],
                "not_attached": self.not_attached}


# Formatting


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _share(value: Any) -> str:
    return "n/a" if value is None else f"{float(value) * 100:.1f}%"


def _delta(value: Any, reference: Any, digits: int = 3) -> str:
    if value is None or reference is None:
        return ""
    return f" ({float(value) - float(reference):+.{digits}f})"


def _bytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB" if size >= 1024 * 1024 else f"{size / 1024:.1f} KiB"


def _day(moment: date | datetime | str | None) -> str:
    if moment is None:
        return "no date"
    if isinstance(moment, datetime | date):
        return moment.isoformat()[:10]
    return str(moment)[:10]


def _table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    cell = 'style="padding:2px 10px;border-bottom:1px solid #ddd;text-align:left"'
    head = "".join(f"<th {cell}>{_e(h)}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td {cell}>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table style="border-collapse:collapse">{"<tr>" + head + "</tr>" if head else ""}{body}</table>'


def _page(title: str, sections: Iterable[str]) -> str:
    return ("<!DOCTYPE html><html><body style=\"font-family:sans-serif\">"
            f"<h2>{_e(title)}</h2>{''.join(sections)}</body></html>")


# Monitoring


def _local_path(location: str | Path) -> Path | None:
    """A report location as a local file, or None for a remote URI (s3://...)."""
    if isinstance(location, Path):
        return location
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if len(parsed.scheme) <= 1:  # a bare path (or a Windows drive letter)
        return Path(location)
    return None


def _attachments(report_paths: Iterable[str | Path], cap: int) -> tuple[list[Path], list[tuple[str, str]]]:
    """Attach the reports (in the order given) while their total size stays within ``cap`` bytes; name the rest
    with the reason. Returns (attached, [(location, reason)])."""
    attached: list[Path] = []
    named: list[tuple[str, str]] = []
    used = 0
    for location in report_paths:
        path = _local_path(location)
        if path is None:
            named.append((str(location), "not a local file"))
        elif not path.is_file():
            named.append((str(location), "not found"))
        elif used + (size := path.stat().st_size) > cap:
            named.append((str(path), f"{_bytes(size)}, over the {_bytes(cap)} attachment cap"))
        else:
            attached.append(path)
            used += size
    return attached, named


def drift_counts(summary: Mapping[str, Any]) -> tuple[int, int]:
    """(features drifted, features tested). ``drifted_features`` may list every feature or only some: the counts
    come from ``drifted_count`` / ``tested_features`` (or ``feature_count``) when the summary has them, else from
    that list."""
    features = summary.get("drifted_features") or []
    drifted = summary.get("drifted_count")
    if drifted is None:
        drifted = sum(1 for feature in features if feature.get("drifted"))
    total = next((summary[key] for key in ("tested_features", "feature_count") if summary.get(key) is not None),
                 len(features))
    return int(drifted), int(total)


def _not_measured(summary: Mapping[str, Any]) -> bool:
    """Drift was not measured (no served traffic): the summary says ``drift_share: None``."""
    return "drift_share" in summary and summary["drift_share"] is None and not summary.get("drift_detected")


def _drift_rank(feature: Mapping[str, Any]) -> tuple[bool, float]:
    """Drifted features first, then by score, relative to the feature's threshold when it has one."""
    score = float(feature.get("score") or 0)
    threshold = feature.get("threshold")
    return not feature.get("drifted"), -(score / float(threshold) if threshold else score)


def monitoring_subject(summary: Mapping[str, Any]) -> str:
    day = _day(summary.get("date"))
    drifted, total = drift_counts(summary)
    prediction = summary.get("prediction_drift") or {}
    retrain = summary.get("retrain") or {}
    if summary.get("drift_detected"):
        subject = f"{SUBJECT_PREFIX} DRIFT on {day}: {drifted} of {total} features drifted"
        if prediction.get("drifted"):
            subject += ", predictions drifted"
        return subject + (", retraining requested" if retrain.get("requested") else ", no retraining")
    subject = f"{SUBJECT_PREFIX} {'drift not measured' if _not_measured(summary) else 'no drift'} on {day}"
    if prediction.get("drifted"):
        subject += ", but predictions drifted"
    return subject + (", retraining requested" if retrain.get("requested") else "")


def monitoring_email(summary: Mapping[str, Any], report_paths: Iterable[str | Path], owners: Sequence[str] | None,
                     settings: Settings | None = None) -> EmailParts:
    """The email after a monitoring run. ``summary`` is the run's summary dict (``date``, ``drift_detected``,
    ``drift_share``, ``drifted_features`` [{feature, score, drifted}], ``prediction_drift`` {score, drifted},
    ``quality`` {labelled_flights, roc_auc, training_roc_auc, brier, training_brier}, ``traffic`` {predictions,
    flights}, ``retrain`` {requested, reasons}); any part but ``date`` may be missing. ``report_paths``: the
    report files or URIs, attached in that order while they fit in ``email_attachment_max_bytes`` together."""
    settings = settings or get_settings()
    owners = list(owners or settings.owners)
    subject = monitoring_subject(summary)
    drifted, total = drift_counts(summary)
    prediction = summary.get("prediction_drift") or {}
    sections = []

    drift_rows: list[tuple[str, str]] = []
    if summary.get("model_version") is not None:
        drift_rows.append(("model version", str(summary["model_version"])))
    drift_rows += [
        ("dataset drift", "not measured" if _not_measured(summary)
         else "DETECTED" if summary.get("drift_detected") else "not detected"),
        ("drift share", _share(summary.get("drift_share"))),
        ("features drifted", f"{drifted} of {total}"),
    ]
    if prediction:
        method = f"{prediction['method']} " if prediction.get("method") else ""
        threshold = f", threshold {_number(prediction['threshold'])}" if prediction.get("threshold") else ""
        drift_rows.append(("prediction drift", f"{'DRIFTED' if prediction.get('drifted') else 'not drifted'} "
                                               f"({method}score {_number(prediction.get('score'))}{threshold})"))
    sections.append("<h3>Drift against the champion's training data</h3>" + _table(drift_rows))

    features = sorted(summary.get("drifted_features") or [], key=_drift_rank)[:TOP_FEATURES]
    if features:
        # method and threshold columns only when the summary has them
        extra = [key for key in ("method", "threshold") if any(f.get(key) is not None for f in features)]
        sections.append("<h3>Most drifted features</h3>" + _table(
            [(f.get("feature"), *(_number(f.get(key)) for key in extra), _number(f.get("score")),
              "drifted" if f.get("drifted") else "") for f in features],
            header=("feature", *extra, "drift score", "")))
    untested = summary.get("untested_features") or []
    if untested:
        items = "".join(f"<li>{_e(f.get('feature'))}: {_e(f.get('reason', ''))}</li>" for f in untested)
        sections.append(f"<p>Not tested:</p><ul>{items}</ul>")

    quality = summary.get("quality") or {}
    labelled = quality.get("labelled_flights", summary.get("labelled_flights"))
    if quality.get("roc_auc") is None and quality.get("brier") is None:
        sections.append("<h3>Quality against training</h3><p>Not judged: too few of the outcomes have arrived"
                        f" (labelled flights: {_number(labelled)}).</p>")
    else:
        window = quality.get("window") or {}
        span = f"{window.get('start_date')} .. {window.get('end_date')}" if window else ""
        sections.append("<h3>Quality against training</h3>" + _table([
            ("labelled flights", _number(labelled), span),
            ("ROC AUC", _number(quality.get("roc_auc")),
             f"training {_number(quality.get('training_roc_auc'))}"
             f"{_delta(quality.get('roc_auc'), quality.get('training_roc_auc'))}"),
            ("Brier score", _number(quality.get("brier")),
             f"training {_number(quality.get('training_brier'))}"
             f"{_delta(quality.get('brier'), quality.get('training_brier'))}"),
        ], header=("", "this day", "")))

    traffic = summary.get("traffic") or {}
    if traffic:
        sections.append("<h3>Traffic</h3>" + _table([
            ("predictions served", _number(traffic.get("predictions"))),
            ("flights served", _number(traffic.get("flights"))),
            *([("model versions", ", ".join(f"v{k}: {_number(v)}" for k, v in traffic["model_versions"].items()))]
              if traffic.get("model_versions") else []),
        ]))

    retrain = summary.get("retrain") or {}
    if retrain:
        reasons = "".join(f"<li>{_e(reason)}</li>" for reason in retrain.get("reasons") or [])
        sections.append(f"<h3>Retraining</h3><p>{'Requested' if retrain.get('requested') else 'Not requested'}."
                        f"</p>{f'<ul>{reasons}</ul>' if reasons else ''}")

    attached, named = _attachments(report_paths, settings.email_attachment_max_bytes)
    report_items = [f"<li>attached: {_e(path.name)}</li>" for path in attached]
    report_items += [f"<li>{_e(location)} (not attached: {_e(reason)})</li>" for location, reason in named]
    if report_items:
        sections.append(f"<h3>Report</h3><ul>{''.join(report_items)}</ul>")

    return EmailParts(to=owners, subject=subject, html=_page(subject, sections), mail_from=settings.mail_from,
                      attachments=attached, not_attached=[f"{location} ({reason})" for location, reason in named])


# Failures


def failed_expectations(error: BaseException | str | None) -> list[str] | None:
    """The failed expectations behind a critical validation failure, else None: a ``failed_expectations``
    attribute anywhere on the exception's chain, else the items of check_quarantine's message
    (``"weather 2013-12-31: expect_table_row_count_to_be_between: observed 0 -- ..."``)."""
    seen: list[BaseException] = []
    current = error if isinstance(error, BaseException) else None
    while current is not None and current not in seen:
        listed = getattr(current, "failed_expectations", None)
        if isinstance(listed, list | tuple):
            return [str(item) for item in listed]
        seen.append(current)
        current = current.__cause__ or current.__context__
    texts = [str(e) for e in seen] if seen else [str(error)] if error is not None else []
    for text in texts:
        items: list[str] = []
        partition = None
        for line in text.splitlines():
            if header := _QUARANTINED.match(line):
                partition = f"{header['table']} {header['date']}"
            elif partition and (item := _ITEM.match(line)):
                items.append(f"{partition}: {item['item'].strip()}")
            elif line.strip():
                partition = None
        if items:
            return items
    return None


def failure_email(dag_id: str, task_id: str, logical_date: date | datetime | str | None,
                  error: BaseException | str | None, failed_expectations: Sequence[str] | None = None, *,
                  owners: Sequence[str] | None = None, settings: Settings | None = None, run_id: str | None = None,
                  try_number: int | None = None, log_url: str | None = None) -> EmailParts:
    """The email when a task has failed for good (after its last retry)."""
    settings = settings or get_settings()
    owners = list(owners or settings.owners)
    subject = f"{SUBJECT_PREFIX} FAILED {dag_id}.{task_id} on {_day(logical_date)}"
    if failed_expectations:
        count = len(failed_expectations)
        subject += f": {count} critical expectation{'s' if count != 1 else ''} failed"
    rows: list[tuple[str, Any]] = [("DAG", dag_id), ("task", task_id),
                                   ("date", logical_date if logical_date is not None else "none")]
    if run_id:
        rows.append(("run", run_id))
    if try_number is not None:
        rows.append(("attempt", try_number))
    sections = [_table(rows)]
    if failed_expectations:
        items = "".join(f"<li>{_e(item)}</li>" for item in failed_expectations)
        sections.append(f"<h3>Failed critical expectations</h3><ul>{items}</ul><p>The partitions are in "
                        "<code>quarantine/</code> with their validation results; <code>validated/</code> kept what "
                        "it had.</p>")
    if error is None:
        described = "no exception was recorded (the task was killed, or timed out)"
    elif isinstance(error, BaseException):
        described = f"{type(error).__name__}: {error}"
    else:
        described = str(error)
    sections.append(f"<h3>Error</h3><pre style=\"white-space:pre-wrap\">{_e(described)}</pre>")
    if log_url:
        sections.append(f'<p>Log: <a href="{_e(log_url)}">{_e(log_url)}</a></p>')
    return EmailParts(to=owners, subject=subject, html=_page(subject, sections), mail_from=settings.mail_from)
