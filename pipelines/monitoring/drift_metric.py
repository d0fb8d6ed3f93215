"""The day's report as Evidently computes it, without the work whose output nobody sees.

* ``LeanValueDrift``: Evidently's ``ValueDrift`` (the same drift computation, score, method, threshold, test and JSON
  fields) that computes and draws its two plots (the column's mean over time, its distribution against the
  reference) only for a column that drifted; a column that did not keeps the one-line verdict Evidently writes above
  those plots.
* ``LeanDriftedColumnsCount``: Evidently's ``DriftedColumnsCount`` (the same count, share, test and JSON fields)
  counted from the report's ``LeanValueDrift`` verdicts instead of computing every column's drift a second time.
* ``LeanClassificationQuality``: the ``ClassificationQuality`` preset (the same metrics, values and page) whose
  metrics do not draw the pages the preset throws away.

Why: a day's report was mostly drawing and recomputing. Evidently 0.7 computes the plots' data (binned means,
histograms, correlations, on a copy of the whole frame per column) and draws both plotly figures for every column
inside the metric's calculation (no public switch), and ``DriftedColumnsCount`` runs the legacy
``DatasetDriftMetric``, which computes every column's drift again (with the same plots' data) and renders a page
that is discarded. A reader of the morning report opens the plots of the columns that drifted. Measured on
2013-04-03 (1 of 47 drifted), plots only for drifted columns: 3.3 s -> 1.4 s; on 2013-07-15 (9 of 47 drifted), the
plots' data only for drifted columns and the count from the verdicts: Evidently's drift run 2.2 s -> 0.7 s.

Built on Evidently's extension points (a metric class and the calculation it names; a preset's generated
metrics). A drifted column goes through the stock ``get_one_column_drift`` (on that column alone: nothing else of
the frame is read), so its result and plots are Evidently's; a column that did not drift runs the same stat test on
the same cleaned values (infinities and nulls dropped, as ``get_one_column_drift`` drops them). Pinned by
``requirements.lock``; ``tests/unit/test_monitoring.py`` checks the values, verdicts, tests and plots against the
stock metrics, so an Evidently upgrade that moves these internals fails there.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from evidently.core.metric_types import CountValue, Metric, MetricTestResult, SingleValue
from evidently.legacy.calculations.data_drift import ColumnDataDriftMetrics, DriftStatsField, get_one_column_drift
from evidently.legacy.calculations.stattests import get_stattest
from evidently.legacy.core import ColumnType
from evidently.legacy.metric_results import DatasetColumns, DatasetUtilityColumns
from evidently.legacy.options import ColorOptions
from evidently.legacy.options.base import Options
from evidently.legacy.options.data_drift import DataDriftOptions
from evidently.legacy.tests.base_test import TestStatus
from evidently.metrics import DriftedColumnsCount, ValueDrift
from evidently.metrics.classification import ADDITIONAL_WIDGET_MAPPING
from evidently.metrics.column_statistics import (
    DriftedColumnCalculation,
    ValueDriftBoundTest,
    ValueDriftCalculation,
    ValueDriftTest,
)
from evidently.presets import ClassificationQuality

if TYPE_CHECKING:
    import pandas as pd
    from evidently.core.container import MetricOrContainer
    from evidently.core.datasets import Dataset
    from evidently.core.report import Context


class LeanValueDrift(ValueDrift):
    """``ValueDrift`` whose plots are computed and drawn only for a column that drifted
    (``evidently:metric_v2:LeanValueDrift``)."""


class LeanDriftedColumnsCount(DriftedColumnsCount):
    """``DriftedColumnsCount`` of the report's ``LeanValueDrift`` columns, from their verdicts
    (``evidently:metric_v2:LeanDriftedColumnsCount``). Needs ``per_column_method`` and ``per_column_threshold`` for
    every column (they name the ``LeanValueDrift`` metrics it reads) and a report with ``include_tests``."""


def _column_drift(current: pd.DataFrame, reference: pd.DataFrame, column: str, column_type: ColumnType,
                  options: DataDriftOptions) -> ColumnDataDriftMetrics:
    """Evidently's ``get_one_column_drift`` of ``column``, the plots' data left out when the column did not drift."""
    stattest = options.get_feature_stattest_func(column, column_type.value)
    threshold = options.get_threshold(column, column_type.value)
    cleaned = [frame[column].replace([-np.inf, np.inf], np.nan).dropna() for frame in (reference, current)]
    if any(values.empty for values in cleaned):
        raise ValueError(f"An empty column '{column}' was provided for drift calculation.")
    test = get_stattest(cleaned[0], cleaned[1], column_type, stattest)
    verdict = test(cleaned[0], cleaned[1], column_type, threshold)
    if verdict.drifted:
        return get_one_column_drift(
            current_data=current[[column]], reference_data=reference[[column]], column_name=column,
            options=options, column_type=column_type, agg_data=True,
            dataset_columns=DatasetColumns(
                utility_columns=DatasetUtilityColumns(date=None, id=None, target=None, prediction=None),
                target_type=None, task=None, target_names=None,
                num_feature_names=[column] if column_type == ColumnType.Numerical else [],
                cat_feature_names=[column] if column_type == ColumnType.Categorical else [],
                text_feature_names=[column] if column_type == ColumnType.Text else [],
                datetime_feature_names=[column] if column_type == ColumnType.Datetime else []))
    empty = DriftStatsField(distribution=None, characteristic_examples=None, characteristic_words=None,
                            small_distribution=None, correlations=None)
    return ColumnDataDriftMetrics(column_name=column, column_type=column_type.value,
                                  stattest_name=test.display_name, drift_score=verdict.drift_score,
                                  drift_detected=False, stattest_threshold=verdict.actual_threshold,
                                  current=empty, reference=empty, scatter=None)


class LeanValueDriftCalculation(ValueDriftCalculation, ABC):
    # ABC among the bases keeps Evidently's __init_subclass__ from registering this class as the calculation of its
    # generic parameter, which is the stock ValueDrift: only LeanValueDrift is bound to it, below.
    def calculate(self, context: Context, current_data: Dataset, reference_data: Dataset | None) -> SingleValue:
        """The stock ``ValueDriftCalculation.calculate`` with ``_column_drift`` in place of ``get_one_column_drift``."""
        column = self.metric.column
        column_type = current_data.column(column).type
        if reference_data is None:
            raise ValueError("Reference data is required for Value Drift")
        options = DataDriftOptions(all_features_stattest=self.metric.method,
                                   all_features_threshold=self.metric.threshold, nbinsx=self.metric.nbinsx)
        drift = _column_drift(current_data.as_dataframe(), reference_data.as_dataframe(), column, column_type,
                              options)
        if self.metric.method is None:  # only when Evidently chose it
            self.resolve_parameter("method", drift.stattest_name)
        if self.metric.threshold is None:
            self.resolve_parameter("threshold", drift.stattest_threshold)
        result: SingleValue = self.result(drift.drift_score)
        # The stock renderer draws whatever plots' data the result holds: none for a column that did not drift.
        result.widget = self._render(drift, Options(), ColorOptions())
        if self.metric.tests is None and context.configuration.include_tests:
            result.set_tests([MetricTestResult(
                id="drift", name=f"Value Drift for column {column}",
                description=f"Drift score is {drift.drift_score:0.2f}. "
                            f"The drift detection method is {drift.stattest_name}. "
                            f"The drift threshold is {drift.stattest_threshold:0.2f}.",
                status=TestStatus.FAIL if drift.drift_detected else TestStatus.SUCCESS,
                metric_config=self.to_metric_config(), test_config={},
                bound_test=ValueDriftBoundTest(test=ValueDriftTest(), metric_fingerprint=self.to_metric().metric_id),
            )])
        return result


LeanValueDrift.__calculation_type__ = LeanValueDriftCalculation


class LeanDriftedColumnsCountCalculation(DriftedColumnCalculation, ABC):
    # The stock calculation's names (its widget's and tests' titles) with its calculation replaced; ABC keeps
    # Evidently from binding this class to a metric by itself (as for LeanValueDriftCalculation).
    def calculate(self, context: Context, current_data: Dataset, reference_data: Dataset | None) -> CountValue:
        # The report's own LeanValueDrift metrics (same column, method and threshold: the same metric id), so the
        # context computes each once, here or where the report lists it, whichever comes first.
        metric = self.metric
        columns = metric.columns or []
        methods, thresholds = metric.per_column_method or {}, metric.per_column_threshold or {}
        drifted = sum(_drifted(context.calculate_metric(
            LeanValueDrift(column=c, method=methods[c], threshold=thresholds[c]).to_calculation()), c)
            for c in columns)
        result: CountValue = self.result(drifted, drifted / len(columns) if columns else 0.0)
        return result


LeanDriftedColumnsCount.__calculation_type__ = LeanDriftedColumnsCountCalculation


def _drifted(result: Any, column: str) -> bool:
    if not result.tests:
        raise ValueError(f"LeanDriftedColumnsCount needs the drift test of '{column}': run the report with tests")
    return bool(result.tests[0].status == TestStatus.FAIL)


class LeanClassificationQuality(ClassificationQuality):
    """``ClassificationQuality`` whose metrics draw no page of their own: the same metrics, values and page.

    The preset's page is its own (the legacy quality table, and the confusion matrix and PR curve it is asked for);
    the pages of its metrics are thrown away, yet ``F1Score``, ``Precision`` and ``Recall`` compute and draw a
    confusion matrix (at the default threshold) and ``RocAuc`` a ROC curve for them: a quarter of the quality part.
    So the metrics it generates have those switches off (in Evidently's JSON their configs say so)."""

    def generate_metrics(self, context: Context) -> Sequence[MetricOrContainer]:
        metrics = super().generate_metrics(context)
        return [m.update(**{f: False for f in ADDITIONAL_WIDGET_MAPPING if getattr(m, f, False)})
                if isinstance(m, Metric) else m for m in metrics]
