"""The model service's Bento: built once per model version and packed code, tagged ``flight_delay:v{version}-{hash}``.

What it packs is the bentofile's ``include`` list (``services/bentofile.yaml``): the service and the modules it
imports, nothing else, so its hash moves only when serving code does."""

from __future__ import annotations

import hashlib
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


def bento_tag(version: str) -> str:
    return f"{BENTO_NAME}:v{version}-{code_hash()}"


def build_bento(settings: Settings, version: str) -> str:
    """The Bento of model ``version`` and the current code, built once (``bentoml build``; about 4 s)."""
    tag = bento_tag(version)
    store = settings.pipeline_home / "bentoml" / "bentos" / BENTO_NAME / tag.split(":", 1)[1]
    if (store / "bento.yaml").exists():
        log.info("bento %s already built", tag)
        return tag
    command = [str(Path(sys.executable).parent / "bentoml"), "build", "-f", str(BENTOFILE), "--version",
               tag.split(":", 1)[1], "--arg", f"model_version={version}", "--label", f"model_version={version}",
               "--output", "tag", str(PROJECT_ROOT)]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=service_env(settings), capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        raise DeployError(f"bentoml build failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    log.info("built bento %s", tag)
    return tag
