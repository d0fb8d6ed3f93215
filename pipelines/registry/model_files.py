"""A registered model as data: what the model service (and the gate) load of a version is its ``MLmodel`` (YAML,
read with ``safe_load``) and the one weights file it names (``torch.load(weights_only=True)``: tensors and plain
values only), never the pickled pyfunc wrapper beside them (``python_model.pkl``), which MLflow would unpickle and
so run whatever code it holds. A version whose files are not what registration writes (another flavour, a loader
module of its own, a weights path outside the model, a weights file that needs code to load) is refused with
``UnexpectedModel`` naming what is wrong.

``fetch_model_files`` copies a version's two files and its registry record (version, run id, tags, aliases) into a
folder; ``load_model_files`` loads such a folder. A Bento packs that folder as a BentoML model
(``pipelines.deploy.bento``), so a built Bento starts with the registry down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.core.names import CHAMPION, MODEL_NAME
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

MLMODEL = "MLmodel"
RECORD = "registry.json"
PYFUNC_LOADER = "mlflow.pyfunc.model"
"""The loader module of a ``PythonModel`` logged by registration; any other is a model this code did not write."""
WEIGHTS_ARTIFACT = "model"
"""The artifact name registration gives ``model.pt`` (``mlflow.pyfunc.log_model(artifacts={"model": ...})``)."""


def packed_model_tag(version: str, run_id: str) -> str:
    """The BentoML model holding version ``version``'s files, which the Bento of that version carries. The run id
    is in it because a version number names a model only within one registry: a home whose registry was replaced
    (or two registries sharing a home's BentoML store) has another ``v1``."""
    return f"{MODEL_NAME}:v{version}-{run_id[:12]}"


def registered_run_id(settings: Settings, version: str) -> str:
    """The MLflow run that logged version ``version`` of the registered model."""
    from mlflow import MlflowClient

    from pipelines.training.tracking import use_tracking

    use_tracking(settings)
    return str(MlflowClient().get_model_version(MODEL_NAME, version).run_id)


class UnexpectedModel(ValueError):
    """A registered version whose files are not the ones registration writes: not loaded."""


@dataclass
class ChampionModel:
    """A registered version, loaded: its number, the trained model, and its registry tags and aliases."""

    version: str
    model: Any
    tags: dict[str, str]
    aliases: list[str]


def weights_path(mlmodel: dict[str, Any]) -> str:
    """The weights file's path inside the model, from its ``MLmodel``; ``UnexpectedModel`` unless the model is the
    pyfunc registration writes with its weights inside it."""
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != {"python_function"}:
        raise UnexpectedModel(f"expected only the python_function flavour, found {sorted(flavors or {})}")
    pyfunc = flavors["python_function"]
    if pyfunc.get("loader_module") != PYFUNC_LOADER:
        raise UnexpectedModel(f"expected the loader module {PYFUNC_LOADER}, found {pyfunc.get('loader_module')!r}")
    path = ((pyfunc.get("artifacts") or {}).get(WEIGHTS_ARTIFACT) or {}).get("path")
    if not isinstance(path, str) or not path.endswith(".pt"):
        raise UnexpectedModel(f"expected a {WEIGHTS_ARTIFACT!r} artifact with a .pt file, found {path!r}")
    parts = PurePosixPath(path)
    if parts.is_absolute() or ".." in parts.parts:
        raise UnexpectedModel(f"the weights path {path!r} leaves the model's folder")
    return path


def _read_mlmodel(folder: Path) -> dict[str, Any]:
    import yaml

    loaded = yaml.safe_load((folder / MLMODEL).read_text())
    if not isinstance(loaded, dict):
        raise UnexpectedModel(f"{folder / MLMODEL} is not a mapping")
    return loaded


def fetch_model_files(settings: Settings, version: str | None, into: Path) -> Path:
    """Copy version ``version`` (else the ``champion``) of the registered model into ``into``: its ``MLmodel``,
    the weights file it names, and ``registry.json`` (version, run id, tags, aliases). Returns ``into``."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.training.tracking import use_tracking

    use_tracking(settings)
    client = MlflowClient()
    found = (client.get_model_version(MODEL_NAME, version) if version
             else client.get_model_version_by_alias(MODEL_NAME, CHAMPION))
    uri = f"models:/{MODEL_NAME}/{found.version}"
    into.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{MLMODEL}", dst_path=str(into))
    path = weights_path(_read_mlmodel(into))  # judged before anything else is fetched
    mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{path}", dst_path=str(into))  # keeps its folders
    record = {"version": str(found.version), "run_id": found.run_id, "tags": dict(found.tags),
              "aliases": list(found.aliases)}
    (into / RECORD).write_text(json.dumps(record, indent=1))
    return into


def load_model_files(folder: Path) -> ChampionModel:
    """The model in ``folder`` (as ``fetch_model_files`` writes it), loaded as data."""
    # bandit B403: only for the error torch's weights-only loader raises; nothing is unpickled here
    import pickle  # nosec B403

    from pipelines.training.model import TrainedModel

    path = weights_path(_read_mlmodel(folder))
    record = json.loads((folder / RECORD).read_text())
    try:
        model = TrainedModel.from_bytes((folder / path).read_bytes())  # torch.load(weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnexpectedModel(f"version {record.get('version')}: {path} holds more than weights and plain values "
                              f"(refused by torch's weights-only loader: {str(error).splitlines()[0]})") from None
    return ChampionModel(version=str(record["version"]), model=model, tags=dict(record.get("tags") or {}),
                         aliases=list(record.get("aliases") or []))


def load_registered(settings: Settings, version: str | None = None) -> ChampionModel:
    """Version ``version`` (else the ``champion``) loaded from the registry as data."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="registered-model-") as folder:
        return load_model_files(fetch_model_files(settings, version, Path(folder)))
