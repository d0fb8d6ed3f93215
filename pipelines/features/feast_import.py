"""Feast without typeguard's run-time instrumentation, in every process that imports it through this package.

Feast decorates its classes with typeguard's ``@typechecked``, which, at import, parses and compiles the source of
the whole module again for every method it instruments (261 of them): half of ``import feast`` (2.5 of 5 s on
2 cores), paid by every Airflow task that touches features, the model service and the benchmarks. typeguard
documents the decorator as a development check that is a no-op in production (``python -O``); this makes it a
no-op for Feast (no other installed package uses typeguard) without also turning off Python's assertions. Our
calls into Feast are typed and checked by mypy, where the run-time checks' findings (a wrong argument type to a
Feast constructor) show first."""

from __future__ import annotations

from typing import Any

import typeguard


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """``typechecked`` that returns what it decorates (used bare or with options, as typeguard's is)."""
    return _unchecked if target is None else target


def without_typeguard_instrumentation() -> None:
    """Make ``typeguard.typechecked`` a no-op for the Feast modules imported from now on (idempotent)."""
    typeguard.typechecked = _unchecked
