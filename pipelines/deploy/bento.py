"""The model service's Bento: built once per model version and packed code, tagged
``flight_delay:v{version}-{run}-{code}``: the registered version, the first 8 hex digits of the MLflow run that
logged it (a version number alone names a model only within one registry), and the hash of the code it packs.

What it packs is the bentofile's ``include`` list (``services/bentofile.yaml``): the service and the modules it
imports, nothing else, so its hash moves only when serving code does."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.deploy.service import DeployError, service_env

log = logging.getLogger(__name__)
BENTOFILE = PROJECT_ROOT / "services" / "bentofile.yaml"
BENTO_NAME = "flight_delay"


def bento_sources(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files the Bento packs: the bentofile's ``include`` patterns expanded under ``root``."""
    import yaml

    patterns = yaml.safe_load((root / BENTOFILE.relative_to(PROJECT_ROOT)).read_text())["include"]
    return sorted({path for pattern in patterns for path in root.glob(pattern) if path.is_file()})


def code_hash(root: Path = PROJECT_ROOT) -> str:
    """sha256 over the files the Bento packs (names and contents), first 10 hex digits: part of the Bento's tag,
    so a change to what the service runs makes a new Bento and nothing else does."""
    digest = hashlib.sha256()
    for path in bento_sources(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:10]


def bento_tag(version: str, run_id: str) -> str:
    return f"{BENTO_NAME}:v{version}-{run_id[:8]}-{code_hash()}"


def build_bento(settings: Settings, version: str) -> str:
    """The Bento of model ``version`` and the current code, carrying the model (built once, in a process of its own
    with the home's BentoML store: ``python -m pipelines.deploy.bento``; about 10 s)."""
    from pipelines.registry.model_files import registered_run_id

    run_id = registered_run_id(settings, version)
    tag = bento_tag(version, run_id)
    store = settings.pipeline_home / "bentoml" / "bentos" / BENTO_NAME / tag.split(":", 1)[1]
    if (store / "bento.yaml").exists():
        log.info("bento %s already built", tag)
        return tag
    command = [sys.executable, "-m", "pipelines.deploy.bento", version, run_id, tag.split(":", 1)[1]]
    # bandit B603: this Python, no shell
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=service_env(settings), capture_output=True, text=True,  # nosec B603
                            timeout=300)
    if result.returncode != 0:
        raise DeployError(f"building bento {tag} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    log.info("built bento %s", tag)
    return tag


def pack_model(settings: Settings, version: str, run_id: str) -> str:
    """Version ``version``'s files (``pipelines.registry.model_files``) as a BentoML model in this process's
    store, made once per version and run; refused before it is packed if they are not what registration writes."""
    import shutil
    import tempfile

    import bentoml
    from bentoml.exceptions import NotFound

    from pipelines.registry.model_files import RECORD, fetch_model_files, load_model_files, packed_model_tag

    tag = packed_model_tag(version, run_id)
    try:
        bentoml.models.get(tag)
        return tag
    except NotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="packed-model-") as folder:
        fetched = json.loads((fetch_model_files(settings, version, Path(folder)) / RECORD).read_text())
        if fetched["run_id"] != run_id:
            raise DeployError(f"version {version} is run {fetched['run_id']} in the registry, not {run_id}")
        loaded = load_model_files(Path(folder))
        with bentoml.models.create(tag, labels={"model_version": version},
                                   metadata={"aliases_when_packed": ",".join(loaded.aliases)}) as model:
            shutil.copytree(folder, model.path, dirs_exist_ok=True)
    return tag


def _pack_and_build(version: str, run_id: str, bento_version: str) -> None:
    """``bentoml build`` of the bentofile with the model packed first (run with the home's ``BENTOML_HOME``)."""
    import bentoml

    from pipelines.core.settings import get_settings

    packed = pack_model(get_settings(), version, run_id)
    bentoml.bentos.build_bentofile(str(BENTOFILE), version=bento_version, build_ctx=str(PROJECT_ROOT),
                                   args={"packed_model": packed},
                                   labels={"model_version": version, "run_id": run_id})


if __name__ == "__main__":
    _pack_and_build(*sys.argv[1:4])
