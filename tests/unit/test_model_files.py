"""What the service accepts of a registered model's files (``pipelines.registry.model_files``): the pyfunc that
registration writes, its weights inside it, as data. Registered versions whose load would run code:
tests/integration/test_model_files.py."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.registry.model_files import RECORD, UnexpectedModel, load_model_files, weights_path


def _mlmodel(**pyfunc: Any) -> dict[str, Any]:
    return {"flavors": {"python_function": {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl",
                                            "artifacts": {"model": {"path": "artifacts/model.pt"}}} | pyfunc}}


def test_the_weights_path_of_what_registration_writes() -> None:
    assert weights_path(_mlmodel()) == "artifacts/model.pt"


@pytest.mark.parametrize(("mlmodel", "named"), [
    ({"flavors": {"python_function": {}, "sklearn": {}}}, "only the python_function flavour"),
    ({"flavors": {"sklearn": {"pickled_model": "model.pkl"}}}, "only the python_function flavour"),
    (_mlmodel(loader_module="evil.loader"), "evil.loader"),
    (_mlmodel(artifacts={"model": {"path": "../../etc/model.pt"}}), "leaves the model's folder"),
    (_mlmodel(artifacts={"model": {"path": "/abs/model.pt"}}), "leaves the model's folder"),
    (_mlmodel(artifacts={"model": {"path": "artifacts/model.pkl"}}), "a .pt file"),
    (_mlmodel(artifacts={}), "a .pt file"),
    ([], "only the python_function flavour"),
])
def test_anything_else_is_refused_naming_what_is_wrong(mlmodel: Any, named: str) -> None:
    with pytest.raises(UnexpectedModel, match=named.replace(".", r"\.").replace("(", r"\(")):
        weights_path(mlmodel)


class _Trap:
    """Unpickling this creates the file it names: what a weights file holding code would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_weights_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "ran"
    (tmp_path / "artifacts").mkdir()
    buffer = io.BytesIO()
    torch.save({"format": 1, "state_dict": _Trap(marker)}, buffer)
    (tmp_path / "artifacts" / "model.pt").write_bytes(buffer.getvalue())
    (tmp_path / "MLmodel").write_text(yaml.safe_dump(_mlmodel()))
    (tmp_path / RECORD).write_text(json.dumps({"version": "9", "tags": {}, "aliases": []}))
    with pytest.raises(UnexpectedModel, match="version 9: artifacts/model.pt holds more than weights"):
        load_model_files(tmp_path)
    assert not marker.exists()
