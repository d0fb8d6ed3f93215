"""Shared fixtures: every test gets its own pipeline home, so nothing leaks into the next test."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.lake import Lake, open_lake
from pipelines.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh PIPELINE_HOME with the embedded (local) lake."""
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    for name in ("LAKE_URI", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def settings(home: Path) -> Settings:
    return get_settings()


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return open_lake(settings)
