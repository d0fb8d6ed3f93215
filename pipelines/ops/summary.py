"""What a window of the lake holds after a run, for people: counts, rows, warnings, quarantines, Data Docs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from pipelines.core.lake import open_lake
from pipelines.core.names import FEED_TABLES
from pipelines.core.settings import Settings, get_settings
from pipelines.validation.partition import Verdict, verdict_key


def summarize(days: Iterable[date], settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    lake = open_lake(settings)
    days = list(days)
    tables: dict[str, dict[str, Any]] = {}
    for table in FEED_TABLES:
        stats: dict[str, Any] = {"validated": 0, "warned": 0, "quarantined": 0, "missing": 0, "rows": 0,
                                 "warnings": {}, "quarantines": {}}
        for day in days:
            quarantine = verdict_key("quarantine", table, day)
            validated = verdict_key("validated", table, day)
            if lake.exists(validated):
                verdict = Verdict.from_json(lake.read_text(validated))
                stats["validated"] += 1
                stats["rows"] += verdict.rows
                if verdict.status == "warned":
                    stats["warned"] += 1
                    stats["warnings"][day.isoformat()] = verdict.reason()
            if lake.exists(quarantine):
                stats["quarantined"] += 1
                stats["quarantines"][day.isoformat()] = Verdict.from_json(lake.read_text(quarantine)).reason()
            elif not lake.exists(validated):
                stats["missing"] += 1
        tables[table] = stats
    return {
        "window": {"start": days[0].isoformat(), "end": days[-1].isoformat(), "days": len(days)},
        "lake": lake.uri,
        "tables": tables,
        "data_docs": str(settings.data_docs_index) if settings.data_docs_index.exists() else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    window = summary["window"]
    lines = [f"Window {window['start']} .. {window['end']} ({window['days']} days), lake {summary['lake']}",
             f"  {'table':<10}{'validated':>10}{'warned':>8}{'quarantined':>13}{'missing':>9}{'rows':>10}"]
    for table, s in summary["tables"].items():
        lines.append(f"  {table:<10}{s['validated']:>10}{s['warned']:>8}{s['quarantined']:>13}{s['missing']:>9}"
                     f"{s['rows']:>10,}")
    for s in summary["tables"].values():
        for reason in list(s["warnings"].values()) + list(s["quarantines"].values()):
            lines.append("  " + reason.replace("\n", "\n  "))
    lines.append(f"  Data Docs: {summary['data_docs'] or 'not built yet'}")
    return "\n".join(lines)
