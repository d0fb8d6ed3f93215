"""Feature building, the Feast store and its fast paths.

Feast is imported only by this package's modules (and the feature definitions they load), all after this file, so
it is imported without typeguard's instrumentation (``feast_import``: half of ``import feast``'s time)."""

from pipelines.features.feast_import import without_typeguard_instrumentation

without_typeguard_instrumentation()
