"""Deployment pieces that need no running service: the Bento's pins and tag, the front door's configuration (checked
by HAProxy itself), and the deployment state after a process died."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.deploy.bento import bento_tag, code_hash
from pipelines.deploy.blue_green import read_state
from pipelines.deploy.front_door import _front_config, slot_port


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)", line.strip())
        if match:
            pins[match[1].lower().replace("_", "-")] = match[3]
    return pins


def _names(text: str) -> set[str]:
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return {re.split(r"[\[=<>~; ]", line)[0].lower().replace("_", "-") for line in lines if line}


def test_the_bentos_requirements_are_pinned_as_the_project_is() -> None:
    """`make lock` writes both files: every pin of the Bento is the lock's (torch, which the lock leaves to
    `make install`, is pyproject.toml's), and every package the service's code imports is pinned."""
    served = _pins((PROJECT_ROOT / "services" / "requirements.txt").read_text())
    project = _pins((PROJECT_ROOT / "requirements.lock").read_text())
    assert "torch" not in project
    project |= _pins("\n".join(re.findall(r'"(torch==[^"]+)"', (PROJECT_ROOT / "pyproject.toml").read_text())))
    assert "torch" in project
    assert served and {name: project.get(name) for name in served} == served
    wanted = _names((PROJECT_ROOT / "services" / "requirements.in").read_text())
    assert wanted and wanted <= set(served)


def test_bento_tag_names_the_model_version_and_the_code() -> None:
    assert code_hash() == code_hash() and re.fullmatch(r"[0-9a-f]{10}", code_hash())
    assert bento_tag("7") == f"flight_delay:v7-{code_hash()}"


@pytest.mark.parametrize("live", [None, "blue", "green"])
def test_haproxy_accepts_the_front_door_configuration(settings: Settings, live: str | None) -> None:
    config = _front_config(settings, live)
    path = settings.pipeline_home / "haproxy.cfg"
    path.write_text(config)
    checked = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-f", str(path)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    for slot in ("blue", "green"):
        line = next(line for line in config.splitlines() if line.strip().startswith(f"server {slot} "))
        assert f"127.0.0.1:{slot_port(settings, slot)}" in line
        assert line.endswith("disabled") == (slot != live)


def test_a_slot_whose_process_died_is_not_live(settings: Settings) -> None:
    deploy = settings.pipeline_home / "deploy"
    deploy.mkdir(parents=True)
    (deploy / "state.json").write_text(json.dumps({"live": "blue", "slots": {"blue": {"model_version": "1"}}}))
    run = settings.pipeline_home / "run"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / "slot-blue.pid").write_text(f"{dead.pid} 3001\n")
    assert read_state(settings) == {"live": None, "slots": {}}
