"""The Assets that link the DAGs, each defined once. Not a DAG file: ``.airflowignore`` keeps the dag-processor
from parsing it; DAG files import it (Airflow puts the DAG folder on ``sys.path``).

* ``flights_ingest`` announces ``validated_flights`` / ``validated_weather`` through the alias
  ``validated_partitions`` (extra: the dates), so an asset gets an event only when partitions of it were promoted.
* ``flight_features`` runs on ``validated_flights`` and announces ``online_features_flight_delay_v1``.
* ``flight_delay_monitoring`` emits ``flight_delay_retrain_requests`` (extra: the training window) through the
  alias ``retrain_requested``, only on the days it asks for a retrain; ``flight_delay_training`` is scheduled on
  the asset; training announces ``flight_delay_trained_model``.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

VALIDATED_FLIGHTS = Asset(name="validated_flights", uri="file:///lake/validated/flights")
VALIDATED_WEATHER = Asset(name="validated_weather", uri="file:///lake/validated/weather")
VALIDATED_TABLES = {"flights": VALIDATED_FLIGHTS, "weather": VALIDATED_WEATHER}
VALIDATED_PARTITIONS = AssetAlias(name="validated_partitions")
ONLINE_FEATURES = Asset(name="online_features_flight_delay_v1", uri="feast://flight_delay/flight_delay_v1")
RETRAIN_REQUESTS = Asset(name="flight_delay_retrain_requests", uri="retrain://flight_delay_classifier")
RETRAIN_REQUESTED = AssetAlias(name="retrain_requested")
TRAINED_MODEL = Asset(name="flight_delay_trained_model", uri="mlflow://flight_delay/trained")
