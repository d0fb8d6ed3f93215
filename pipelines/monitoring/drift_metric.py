"""``LeanValueDrift``: Evidently's ``ValueDrift`` (the same drift computation, score, method, threshold, test and JSON
fields) whose widget draws its two plots (the column's mean over time, its distribution against the reference) only
for a column that drifted; a column that did not keeps the one-line verdict Evidently writes above those plots.

Why: drawing is most of a day's report. Evidently 0.7 draws both plotly figures for every column inside the metric's
calculation (no public switch), about 0.035 s a column, 1.7 of the 3.3 s a day's report took with 47 features, and
a reader of the morning report opens the plots of the columns that drifted. Measured on 2013-04-03 (1 of 47
drifted): 3.3 s -> 1.4 s.

Built on Evidently's extension point for metrics (a metric class and the calculation it names); the calculation is
the stock ``ValueDriftCalculation`` with its ``_render`` given a result without the plots' data when the column did
not drift. Pinned by ``requirements.lock``; ``tests/unit/test_monitoring.py`` checks the verdicts and the plots
against the stock metric, so an Evidently upgrade that moves these internals fails there.
"""

from __future__ import annotations

from abc import ABC
from typing import Any

from evidently.metrics import ValueDrift
from evidently.metrics.column_statistics import ValueDriftCalculation


class LeanValueDrift(ValueDrift):
    """``ValueDrift`` that plots only a drifted column (serialized as ``evidently:metric_v2:LeanValueDrift``)."""


class LeanValueDriftCalculation(ValueDriftCalculation, ABC):
    # ABC among the bases keeps Evidently's __init_subclass__ from registering this class as the calculation of its
    # generic parameter, which is the stock ValueDrift: only LeanValueDrift is bound to it, below.
    def _render(self, result: Any, options: Any, color_options: Any) -> Any:
        if not result.drift_detected:
            result = result.copy(update={"scatter": None,
                                         "current": result.current.copy(update={"distribution": None})})
        return super()._render(result, options, color_options)


LeanValueDrift.__calculation_type__ = LeanValueDriftCalculation
