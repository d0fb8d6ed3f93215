"""The flight-disruption pipeline: orchestrator-free steps, settings, storage and a CLI (``python -m pipelines``)."""
