"""The emails the owners get, composed as plain parts: a subject that says what happened, an HTML body, the files
to attach. Pure functions with no Airflow import; the DAG layer (``dags/_notifiers.py``) sends the parts through
Airflow's SMTP connection.

* ``monitoring_email``: after every monitoring run, from its summary. The first line (and the subject) says
  whether anything needs a person (``needs_attention`` defines what does); then a small chart of the last 30 days
  shown inline (``pipelines.monitoring.daily_chart``), drift, quality against training, traffic, retraining, and
  where the full report is in the lake. The report itself is not attached: the message stays well under 1 MB.
* ``failure_email``: when a task fails for good, with the failed expectations of a critical validation failure.
* ``year_report_email``: when the year report is built (``pipelines.monitoring.year_report``): its headline figures,
  its main chart inline, and where the report is in the lake.

The chat alerts (``pipelines.monitoring.webhook``), the second path beside email, reuse the subjects and the
failure's facts composed here, so both paths say the same.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipelines.core.dates import LOCAL_TZ
from pipelines.core.settings import Settings, get_settings
from pipelines.monitoring.retrain import MonitoringPolicy

SUBJECT_PREFIX = "[flight_delay]"
# How many features the monitoring email lists; the report has all of them.
TOP_FEATURES = 10
# check_quarantine's message (pipelines.validation.steps, from Verdict.reason): a header per partition, one item per
# failure.
_QUARANTINED = re.compile(r"^(?P<table>\w+) (?P<date>\d{4}-\d{2}-\d{2}) quarantined\b")
_ITEM = re.compile(r"^\s+- (?P<item>.+)$")


@dataclass(frozen=True)
class EmailParts:
    """One email as the SMTP hook takes it: recipients, subject, HTML body and local files to attach (the hook gives
    each the Content-ID ``<file name>``, so the body can show an attached image with ``cid:file name``)."""

    to: list[str]
    subject: str
    html: str
    mail_from: str
    attachments: list[Path] = field(default_factory=list)
    # The full reports the body names by path or URI (never attached).
    reports: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """A small JSON-able record of what was sent (an XCom, a log line)."""
        return {"to": self.to, "subject": self.subject, "attachments": [p.name for p in self.attachments],
                "reports": self.reports}


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


def _aware(moment: date | datetime | str) -> datetime | None:
    """``moment`` as a time-zone-aware datetime, when it is one (or its ISO text)."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return None
    return moment if isinstance(moment, datetime) and moment.tzinfo else None


def _day(moment: date | datetime | str | None) -> str:
    """The New York date of a run's moment (the data's clock: 05:00 UTC is midnight there in winter)."""
    if moment is None:
        return "no date"
    if (aware := _aware(moment)) is not None:
        return aware.astimezone(ZoneInfo(LOCAL_TZ)).date().isoformat()
    if isinstance(moment, datetime | date):
        return moment.isoformat()[:10]
    return str(moment)[:10]


def _moment(moment: date | datetime | str) -> str:
    """A run's moment for a person: New York local time, with the UTC instant Airflow shows."""
    if (aware := _aware(moment)) is None:
        return str(moment)
    local = aware.astimezone(ZoneInfo(LOCAL_TZ))
    return f"{local:%Y-%m-%d %H:%M %Z} ({aware.astimezone(UTC).isoformat()})"


def _table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    cell = 'style="padding:2px 10px;border-bottom:1px solid #ddd;text-align:left"'
    head = "".join(f"<th {cell}>{_e(h)}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td {cell}>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table style="border-collapse:collapse">{"<tr>" + head + "</tr>" if head else ""}{body}</table>'


def _page(title: str, sections: Iterable[str]) -> str:
    return ("<!DOCTYPE html><html><body style=\"font-family:sans-serif\">"
            f"<h2>{_e(title)}</h2>{''.join(sections)}</body></html>")


# Monitoring


def policy_of(summary: Mapping[str, Any]) -> MonitoringPolicy:
    """The policy the day was judged by (``summary["policy"]``, as ``build_report`` stores it), else the defaults."""
    stored = summary.get("policy") or {}
    return MonitoringPolicy(**{f.name: stored[f.name] for f in fields(MonitoringPolicy) if f.name in stored})


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
    """Drift was not measured: no drift share (``build_report`` writes ``drift_share: None`` on a day without scored
    traffic; a summary without the key has no measurement either)."""
    return summary.get("drift_share") is None and not summary.get("drift_detected")


def _quality_judged(quality: Mapping[str, Any]) -> bool:
    return quality.get("roc_auc") is not None or quality.get("brier") is not None


def _drift_rank(feature: Mapping[str, Any]) -> tuple[bool, float]:
    """Drifted features first, then by score, relative to the feature's threshold when it has one."""
    score = float(feature.get("score") or 0)
    threshold = feature.get("threshold")
    return not feature.get("drifted"), -(score / float(threshold) if threshold else score)


def needs_attention(summary: Mapping[str, Any], policy: MonitoringPolicy | None = None) -> list[str]:
    """What in the day needs a person, in words, in this order; empty when nothing does. Exactly these, with
    the thresholds of ``policy`` (default: the one the summary was judged by):

    * traffic short: fewer flights served than ``min_served_flights`` (none at all included: drift is then not
      acted on), or fewer than were scheduled when the summary says how many (``traffic.scheduled``);
    * drift not measured: the summary has no drift share (no scored traffic);
    * drift detected: the drift share at or above ``drift_share`` (``drift_detected``, as ``build_report`` judged);
    * predictions drifted: the score's distribution drifted from training (``prediction_drift.drifted``);
    * a quality drop, on a window that was judged (``quality`` not None): ROC AUC ``roc_auc_drop`` or more below
      the training ROC AUC, or Brier score ``brier_rise`` or more above the training Brier score;
    * retraining requested (``retrain.requested``).
    """
    policy = policy or policy_of(summary)
    items: list[str] = []
    traffic = summary.get("traffic") or {}
    served = traffic.get("flights", traffic.get("predictions"))
    if served is not None:
        flights, scheduled = int(served), traffic.get("scheduled")
        if flights == 0:
            items.append("no flights served")
        elif flights < policy.min_served_flights:
            items.append(f"only {flights:,} flights served (under {policy.min_served_flights:,})")
        elif scheduled is not None and flights < int(scheduled):
            items.append(f"{flights:,} of {int(scheduled):,} scheduled flights served")
    if _not_measured(summary):
        items.append("drift not measured")
    elif summary.get("drift_detected"):
        drifted, total = drift_counts(summary)
        items.append(f"drift on {drifted} of {total} features")
    if (summary.get("prediction_drift") or {}).get("drifted"):
        items.append("predictions drifted")
    quality = summary.get("quality") or {}
    auc, training_auc = quality.get("roc_auc"), quality.get("training_roc_auc")
    if auc is not None and training_auc is not None and training_auc - auc >= policy.roc_auc_drop:
        items.append(f"ROC AUC {auc:.3f}, {training_auc - auc:.3f} below training")
    brier, training_brier = quality.get("brier"), quality.get("training_brier")
    if brier is not None and training_brier is not None and brier - training_brier >= policy.brier_rise:
        items.append(f"Brier score {brier:.3f}, {brier - training_brier:.3f} above training")
    if (summary.get("retrain") or {}).get("requested"):
        items.append("retraining requested")
    return items


def monitoring_headline(summary: Mapping[str, Any], policy: MonitoringPolicy | None = None) -> str:
    """The email's first line (and its subject after the date): "Action needed: ..." with what needs a person
    (``needs_attention``), else "Nothing needs you: ..." with the day's state in brief."""
    policy = policy or policy_of(summary)
    items = needs_attention(summary, policy)
    retrain = summary.get("retrain") or {}
    if items:
        if retrain and not retrain.get("requested"):
            # triggers without a request: decide_retrain held it back (cooldown)
            items.append("no retraining (cooldown)" if retrain.get("triggers") else "no retraining")
        return "Action needed: " + ", ".join(items)
    drifted, total = drift_counts(summary)
    state = [f"no drift ({drifted} of {total} features, under the {policy.drift_share:.0%} threshold)" if drifted
             else "no drift"]
    quality = summary.get("quality") or {}
    if _quality_judged(quality):
        state.append("quality within bounds")
    else:
        labelled = quality.get("labelled_flights", summary.get("labelled_flights"))
        state.append("quality not judged yet" + (f" ({labelled:,} labelled flights)" if labelled is not None else ""))
    flights = (summary.get("traffic") or {}).get("flights")
    if flights is not None:
        state.append(f"{int(flights):,} flights served")
    return "Nothing needs you: " + ", ".join(state)


def monitoring_subject(summary: Mapping[str, Any], policy: MonitoringPolicy | None = None) -> str:
    return f"{SUBJECT_PREFIX} {_day(summary.get('date'))} {monitoring_headline(summary, policy)}"


def monitoring_email(summary: Mapping[str, Any], report_paths: Iterable[str | Path], owners: Sequence[str] | None,
                     settings: Settings | None = None, *, chart: Path | None = None,
                     policy: MonitoringPolicy | None = None) -> EmailParts:
    """The email after a monitoring run: its first line says whether anything needs a person
    (``monitoring_headline``), then the last 30 days as an inline chart, the drift, quality, traffic and retraining
    figures, and where the full report is. ``summary`` is the run's summary dict (``date``, ``drift_detected``,
    ``drift_share``, ``drifted_features`` [{feature, score, drifted}], ``prediction_drift`` {score, drifted},
    ``quality`` {labelled_flights, roc_auc, training_roc_auc, brier, training_brier}, ``traffic`` {predictions,
    flights}, ``retrain`` {requested, reasons}, ``policy``); any part but ``date`` may be missing.
    ``report_paths``: the report files or URIs, named in the body, never attached (the HTML report is ~8 MB).
    ``chart``: a local PNG (``pipelines.monitoring.daily_chart``), attached and shown inline by its Content-ID,
    which Airflow's SMTP hook sets to the file's name."""
    settings = settings or get_settings()
    policy = policy or policy_of(summary)
    owners = list(owners or settings.owners)
    headline = monitoring_headline(summary, policy)
    subject = monitoring_subject(summary, policy)
    drifted, total = drift_counts(summary)
    prediction = summary.get("prediction_drift") or {}
    version = f", model version {_e(summary['model_version'])}" if summary.get("model_version") is not None else ""
    sections = [f"<p>Daily monitoring of {_e(_day(summary.get('date')))}{version}.</p>"]

    if chart is not None:
        sections.append(
            f'<p><img src="cid:{_e(chart.name)}" width="640" height="360" alt="drift share, ROC AUC and traffic over '
            f'the last 30 days"><br><small>Last 30 days: drift share (dashed: the threshold), ROC AUC on matured '
            f'labels (dotted: training; dashed: the allowed drop), predictions served.</small></p>')

    drift_rows: list[tuple[str, str]] = [
        ("dataset drift", "not measured" if _not_measured(summary)
         else "DETECTED" if summary.get("drift_detected") else "not detected"),
        ("drift share", f"{_share(summary.get('drift_share'))} (threshold {policy.drift_share:.0%})"),
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
    if not _quality_judged(quality):
        sections.append("<h3>Quality against training</h3><p>Not judged: too few of the outcomes have arrived"
                        f" (labelled flights: {_number(labelled)}, at least {policy.min_labelled_flights:,} "
                        "needed).</p>")
    else:
        window = quality.get("window") or {}
        span = f"{window.get('start_date')} .. {window.get('end_date')}" if window else ""
        sections.append("<h3>Quality against training</h3>" + _table([
            ("labelled flights", _number(labelled), span),
            ("ROC AUC", _number(quality.get("roc_auc")),
             f"training {_number(quality.get('training_roc_auc'))}"
             f"{_delta(quality.get('roc_auc'), quality.get('training_roc_auc'))}; a drop of "
             f"{policy.roc_auc_drop:.2f} or more needs you"),
            ("Brier score", _number(quality.get("brier")),
             f"training {_number(quality.get('training_brier'))}"
             f"{_delta(quality.get('brier'), quality.get('training_brier'))}; a rise of "
             f"{policy.brier_rise:.2f} or more needs you"),
        ], header=("", "window", "")))

    traffic = summary.get("traffic") or {}
    if traffic:
        sections.append("<h3>Traffic</h3>" + _table([
            ("predictions served", _number(traffic.get("predictions"))),
            ("flights served", _number(traffic.get("flights"))),
            *([("flights scheduled", _number(traffic["scheduled"]))] if traffic.get("scheduled") is not None else []),
            *([("model versions", ", ".join(f"v{k}: {_number(v)}" for k, v in traffic["model_versions"].items()))]
              if traffic.get("model_versions") else []),
        ]))

    retrain = summary.get("retrain") or {}
    if retrain:
        reasons = "".join(f"<li>{_e(reason)}</li>" for reason in retrain.get("reasons") or [])
        sections.append(f"<h3>Retraining</h3><p>{'Requested' if retrain.get('requested') else 'Not requested'}."
                        f"</p>{f'<ul>{reasons}</ul>' if reasons else ''}")

    reports = [str(location) for location in report_paths]
    if reports:
        items = "".join(f"<li><code>{_e(location)}</code></li>" for location in reports)
        sections.append("<h3>Full report</h3><p>In the lake, not attached (Evidently's HTML report is several MB):"
                        f"</p><ul>{items}</ul>")

    return EmailParts(to=owners, subject=subject, html=_page(headline, sections), mail_from=settings.mail_from,
                      attachments=[chart] if chart is not None else [], reports=reports)


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


def failure_subject(dag_id: str, task_id: str, logical_date: date | datetime | str | None,
                    failed_expectations: Sequence[str] | None = None) -> str:
    """What failed, where and on which day, and how many critical expectations: the email's subject and the chat
    alert's first line (``pipelines.monitoring.webhook``), so both say the same."""
    subject = f"{SUBJECT_PREFIX} FAILED {dag_id}.{task_id} on {_day(logical_date)}"
    if failed_expectations:
        count = len(failed_expectations)
        subject += f": {count} critical expectation{'s' if count != 1 else ''} failed"
    return subject


def failure_facts(dag_id: str, task_id: str, logical_date: date | datetime | str | None, *,
                  run_id: str | None = None, try_number: int | None = None) -> list[tuple[str, Any]]:
    """The failed task's facts as (label, value) rows: DAG, task, date (New York time and UTC), run, attempt."""
    rows: list[tuple[str, Any]] = [("DAG", dag_id), ("task", task_id),
                                   ("date", _moment(logical_date) if logical_date is not None else "none")]
    if run_id:
        rows.append(("run", run_id))
    if try_number is not None:
        rows.append(("attempt", try_number))
    return rows


def error_text(error: BaseException | str | None) -> str:
    """The error in one string: the exception's type and message, or why there is none."""
    if error is None:
        return "no exception was recorded (the task was killed, or timed out)"
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


def failure_email(dag_id: str, task_id: str, logical_date: date | datetime | str | None,
                  error: BaseException | str | None, failed_expectations: Sequence[str] | None = None, *,
                  owners: Sequence[str] | None = None, settings: Settings | None = None, run_id: str | None = None,
                  try_number: int | None = None, log_url: str | None = None) -> EmailParts:
    """The email when a task has failed for good (after its last retry)."""
    settings = settings or get_settings()
    owners = list(owners or settings.owners)
    subject = failure_subject(dag_id, task_id, logical_date, failed_expectations)
    sections = [_table(failure_facts(dag_id, task_id, logical_date, run_id=run_id, try_number=try_number))]
    if failed_expectations:
        items = "".join(f"<li>{_e(item)}</li>" for item in failed_expectations)
        sections.append(f"<h3>Failed critical expectations</h3><ul>{items}</ul><p>The partitions are in "
                        "<code>quarantine/</code> with their validation results; <code>validated/</code> kept what "
                        "it had.</p>")
    sections.append(f"<h3>Error</h3><pre style=\"white-space:pre-wrap\">{_e(error_text(error))}</pre>")
    if log_url:
        sections.append(f'<p>Log: <a href="{_e(log_url)}">{_e(log_url)}</a></p>')
    return EmailParts(to=owners, subject=subject, html=_page(subject, sections), mail_from=settings.mail_from)


# The year report


def year_report_subject(report: Mapping[str, Any]) -> str:
    return f"{SUBJECT_PREFIX} year report {report['first']} .. {report['last']}: {report['headline']}"


def year_report_email(report: Mapping[str, Any], settings: Settings | None = None, *, chart: Path | None = None,
                      owners: Sequence[str] | None = None) -> EmailParts:
    """The email when the year report is built (``pipelines.monitoring.year_report.build_year_report``'s summary):
    the headline figures (days, flights served against the feed, quarantines, retrains and promotions, the live
    model's mean weekly ROC AUC against the frozen first champion's), ``chart`` (a local PNG, the report's main
    chart) attached and shown inline by its Content-ID, and where the report is in the lake (named, never
    attached)."""
    settings = settings or get_settings()
    owners = list(owners or settings.owners)
    days, traffic, quality = report["days"], report["traffic"], report["quality"]
    retrains, drift, frozen = report["retrains"], report["drift"], report.get("frozen") or {}
    sections = [f"<p>Production from {_e(report['first'])} to {_e(report['last'])}: the year report is in the lake."
                "</p>"]
    if chart is not None:
        sections.append(f'<p><img src="cid:{_e(chart.name)}" width="800" height="600" alt="flights served, drift '
                        f'share and weekly ROC AUC of the live and the frozen model"><br><small>Flights served per '
                        f'day (triangles: quarantined days), drift share per day against its threshold, ROC AUC per '
                        f'ISO week of the live model and of the frozen first champion scored on the same flights '
                        f'(dotted: promotions).</small></p>')
    served = _number(traffic.get("flights"))
    if traffic.get("scheduled"):
        served += (f" ({_number(traffic.get('served_on_counted_days'))} of {_number(traffic['scheduled'])} in the "
                   f"feed, on the {traffic.get('days_with_feed_count')} days that counted it)")
    quarantined = ", ".join(f"{q['date']} ({q['state']})" for q in report.get("quarantines") or []) or "none"
    live, shadow = quality.get("live") or {}, quality.get("frozen") or {}
    rows: list[tuple[str, str]] = [
        ("days monitored", f"{days['monitored']} of {days['total']} ({days.get('labelled', 0)} with matured labels)"),
        ("flights served", served),
        ("quarantined days", f"{days['quarantined']}: {quarantined}"),
        ("drift", f"{drift['days_over_threshold']} of {drift['days_measured']} measured days at or over the "
                  f"threshold, retraining requested on {len(drift.get('requests') or [])}"),
        ("retrains", f"{retrains['count']}, {retrains['promoted']} promoted"
                     + (" (" + ", ".join(f"{k}: {v}" for k, v in retrains["by_trigger"].items()) + ")"
                        if retrains.get("by_trigger") else "")),
        ("mean weekly ROC AUC", f"live {_number(live.get('mean_roc_auc'))}, frozen "
                                f"{_number(shadow.get('mean_roc_auc'))} (over {quality.get('paired_weeks', 0)} "
                                "weeks of matured labels)"),
        ("mean weekly Brier score", f"live {_number(live.get('mean_brier'))}, frozen "
                                    f"{_number(shadow.get('mean_brier'))}"),
    ]
    if frozen:
        rows.append(("frozen model", f"version {frozen.get('version')}, run {frozen.get('run_key')}"
                     + (f": not scored ({frozen['error']})" if frozen.get("error") else "")))
    backtest = report.get("backtest") or {}
    if backtest.get("available"):
        pooled = {r["policy"]: r for r in backtest.get("table") or [] if r.get("month") == "all"}
        rows.append(("backtest, April-December", ", ".join(
            f"{policy} ROC AUC {_number(r.get('roc_auc'), 4)}, Brier {_number(r.get('brier'), 4)}"
            for policy, r in pooled.items()) or "no pooled row"))
    else:
        rows.append(("backtest", "not run yet: python -m pipelines backtest"))
    sections.append("<h3>The figures</h3>" + _table(rows))
    reports = [str(report["paths"][name]) for name in ("html", "summary") if name in (report.get("paths") or {})]
    if reports:
        items = "".join(f"<li><code>{_e(location)}</code></li>" for location in reports)
        sections.append("<h3>The report</h3><p>In the lake, not attached (traffic and quarantines, drift, every "
                        f"retrain with the gate's reasons and its deployments, live against frozen week by week, "
                        f"what retraining is worth):</p><ul>{items}</ul>")
    return EmailParts(to=owners, subject=year_report_subject(report), html=_page(report["headline"], sections),
                      mail_from=settings.mail_from, attachments=[chart] if chart is not None else [], reports=reports)
