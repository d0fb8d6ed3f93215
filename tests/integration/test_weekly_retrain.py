"""A scheduled weekly retrain runs no search (``trials`` 0, as ``make year``'s ``WEEKLY``): the new window is trained
with the champion's hyperparameters, read back from the champion's MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.settings import Settings
from tests.helpers.homes import copy_champion_home

pytestmark = pytest.mark.integration


def test_the_champions_parameters_read_back_as_they_were_trained(champion_settings: Settings) -> None:
    from pipelines.registry.register import champion_params
    from pipelines.training.fit import DEFAULT_PARAMS

    # The fixture's champion ran one trial, the defaults (enqueued first): the same values, of the same types.
    params = champion_params(champion_settings)
    assert params == DEFAULT_PARAMS
    assert [type(params[k]) for k in DEFAULT_PARAMS] == [type(v) for v in DEFAULT_PARAMS.values()]


def test_a_retrain_without_trials_trains_with_the_parameters_it_is_given(champion_settings: Settings, real_days: list,
                                                                         tmp_path: Path) -> None:
    from pipelines.registry.register import champion_params
    from pipelines.training.fit import DEFAULT_PARAMS
    from pipelines.training.steps import train_pipeline

    settings = copy_champion_home(champion_settings, tmp_path / "home",
                                  experiment_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  experiment_artifacts_uri=(tmp_path / "artifacts").as_uri(),
                                  optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert champion_params(settings) is None  # a registry of its own, with no champion yet
    from pipelines.features.store import apply_definitions, open_store

    apply_definitions(open_store(settings))  # the copy's own Feast registry (not copied)
    untuned = {"hidden_sizes": [16], "dropout": 0.25, "members": 1}
    result = train_pipeline(real_days, "weekly-test/2013-03-01", settings, trials=0, max_epochs=2, valid_days=7,
                            test_days=7, untuned=untuned)
    assert result["tuning"]["trials"] == {}  # no trial ran
    assert result["model"]["params"] == DEFAULT_PARAMS | untuned
