"""The small chart in the daily monitoring email: the last 30 days of the served model, one point per day, from the
monitoring summaries (``pipelines.monitoring.report``).

* drift share: the share of tested features that drifted, with the policy's threshold (at or above it the day
  drifted); days over it in red.
* ROC AUC: the served model's, on the matured labels of the trailing window the summary judged (``quality``), with
  the training figure and the line under which the drop is a quality drop (training minus ``roc_auc_drop``).
* traffic: predictions served per day (flights scheduled, when the summaries carry them, as a line).

``history_chart`` is pure (summaries in, PNG bytes out; 640x360 px, about 30 KB), drawn without pyplot (Agg), so
it is safe in workers and threads. ``write_history_chart`` reads the summaries from the lake and writes the PNG to a
local folder, for the email to attach and its HTML to show inline (``cid:`` + the file's name).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from pipelines.core.settings import Settings
from pipelines.monitoring.retrain import MonitoringPolicy

HISTORY_DAYS = 30
WIDTH_PX, HEIGHT_PX, DPI = 640, 360, 100
_DRIFTED, _LINE, _MUTED = "#c0392b", "#1f77b4", "#7f7f7f"


def chart_name(day: date | str) -> str:
    """The chart's file name, also its Content-ID in the email (``cid:monitoring_2013-07-15.png``)."""
    return f"monitoring_{str(day)[:10]}.png"


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def history_chart(history: Sequence[Mapping[str, Any]], policy: MonitoringPolicy | None = None,
                  days: int = HISTORY_DAYS) -> bytes:
    """PNG of the ``days`` days ending with the latest summary in ``history`` (monitoring summaries, any order;
    a day without one is a gap): drift share against ``policy.drift_share``, ROC AUC against training and its
    allowed drop, predictions served."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    policy = policy or MonitoringPolicy()
    by_day = {date.fromisoformat(str(s["date"])[:10]): s for s in history}
    end = max(by_day, default=None)
    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    drift, quality, traffic = figure.subplots(3, 1, sharex=True)
    for axes in (drift, quality, traffic):
        axes.tick_params(labelsize=7, length=2)
        axes.grid(axis="y", linewidth=0.3)
    if end is None:
        figure.text(0.5, 0.5, "no monitoring days yet", ha="center", va="center", color=_MUTED)
        return figure_png(figure)

    days_shown = [end - timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    rows = [by_day.get(day, {}) for day in days_shown]
    span = [datetime.combine(day, time()) for day in days_shown]  # datetimes: half days are drawn too
    qualities = [row.get("quality") or {} for row in rows]
    traffics = [row.get("traffic") or {} for row in rows]

    share = [_number(row.get("drift_share")) for row in rows]
    over = [s if s >= policy.drift_share else float("nan") for s in share]
    drift.plot(span, share, marker="o", markersize=2.5, linewidth=1, color=_LINE)
    drift.plot(span, over, linestyle="none", marker="o", markersize=3.5, color=_DRIFTED)
    drift.axhline(policy.drift_share, color=_DRIFTED, linestyle="--", linewidth=0.8)
    drift.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    drift.set_ylim(0, max(0.5, *(s for s in share if not math.isnan(s))) * 1.05)
    _label(drift, f"drift share (threshold {policy.drift_share:.0%})")

    auc = [_number(q.get("roc_auc")) for q in qualities]
    training = [_number(q.get("training_roc_auc")) for q in qualities]
    floor = [t - policy.roc_auc_drop for t in training]
    quality.plot(span, auc, marker="o", markersize=2.5, linewidth=1, color=_LINE)
    quality.plot(span, [a if a <= f else float("nan") for a, f in zip(auc, floor, strict=True)], linestyle="none",
                 marker="o", markersize=3.5, color=_DRIFTED)
    # per day (the training figure changes with the model), so one day or a gap shows too
    half = timedelta(hours=12)
    quality.hlines(training, [d - half for d in span], [d + half for d in span], linewidth=0.8, linestyles=":",
                   color=_MUTED)
    quality.hlines(floor, [d - half for d in span], [d + half for d in span], linewidth=0.8, linestyles="--",
                   color=_DRIFTED)
    _label(quality, f"ROC AUC on matured labels (training dotted, a drop of {policy.roc_auc_drop:.2f} dashed)")
    shown = [v for v in (*auc, *training, *floor) if not math.isnan(v)]
    if shown:
        quality.set_ylim(min(shown) - 0.02, max(shown) + 0.02)
    else:
        quality.text(0.5, 0.45, "not judged yet: too few matured labels", transform=quality.transAxes,
                     ha="center", va="center", fontsize=7, color=_MUTED)
        quality.set_ylim(0.5, 0.9)

    served = [float(t.get("predictions", t.get("flights")) or 0) for t in traffics]
    traffic.bar(span, served, width=0.8, color=_LINE, alpha=0.7)
    if any(t.get("scheduled") is not None for t in traffics):
        traffic.plot(span, [_number(t.get("scheduled")) for t in traffics], linewidth=0.8, color=_MUTED)
    _label(traffic, "predictions served per day")
    traffic.set_ylim(0, max(1.0, *served) * 1.25)
    traffic.set_xticks(span[::-7])  # weekly, ending on the day itself
    traffic.xaxis.set_major_formatter(DateFormatter("%b %d"))
    traffic.set_xlim(span[0] - timedelta(days=1), span[-1] + timedelta(days=1))
    return figure_png(figure)


def _label(axes: Any, text: str) -> None:
    axes.set_title(text, fontsize=7, loc="left", pad=2)


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes, at the charts' resolution."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_history_chart(summary: Mapping[str, Any], folder: Path, settings: Settings | None = None,
                        policy: MonitoringPolicy | None = None) -> Path:
    """The chart for ``summary``'s day, from the summaries of the ``HISTORY_DAYS`` days ending with it
    (``monitoring_history``; ``summary`` stands for its own day), written to ``folder/chart_name(day)``: a local
    file whatever the lake is, for the SMTP hook to attach."""
    from pipelines.monitoring.notifications import policy_of
    from pipelines.monitoring.report import monitoring_history

    day = date.fromisoformat(str(summary["date"])[:10])
    history = [s for s in monitoring_history(settings, before=day + timedelta(days=1), lookback_days=HISTORY_DAYS)
               if str(s["date"])[:10] != day.isoformat()]
    path = Path(folder) / chart_name(day)
    path.write_bytes(history_chart([*history, summary], policy or policy_of(summary)))
    return path
