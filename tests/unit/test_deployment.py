"""Deployment pieces that need no running service: the Bento's pins and tag, the front door's configuration (checked
by HAProxy itself), the deployment state after a process died or a crash mid-write, and the deploy lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.core.files import file_lock
from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.deploy import blue_green
from pipelines.deploy.bento import bento_tag, code_hash
from pipelines.deploy.blue_green import deploy_service, read_state, rollback_deployment, stop_all
from pipelines.deploy.front_door import _write_front_config, deploy_dir, slot_port
from pipelines.deploy.service import DeployError
from tests.helpers.locks import hold_lock


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
    assert bento_tag("7", "0a1b2c3d4e5f") == f"flight_delay:v7-0a1b2c3d-{code_hash()}"


@pytest.mark.parametrize("live", [None, "blue", "green"])
def test_haproxy_accepts_the_front_door_configuration(settings: Settings, live: str | None) -> None:
    path = _write_front_config(settings, live)
    config = path.read_text()
    checked = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-f", str(path)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # Each slot's backend: the slot, health-checked, and the other as its backup; the map picks the live one.
    for slot in ("blue", "green"):
        other = "green" if slot == "blue" else "blue"
        backend = config.split(f"backend via_{slot}\n")[1].split("\n\n")[0].splitlines()
        assert backend == [f"    server {slot} 127.0.0.1:{slot_port(settings, slot)} check",
                           f"    server {other} 127.0.0.1:{slot_port(settings, other)} check backup"]
    assert (path.parent / "live.map").read_text() == f"live via_{live or 'blue'}\n"
    assert "option httpchk GET /readyz" in config and "on-error mark-down" in config


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


def test_a_deploy_while_another_runs_waits_then_refuses_naming_it(settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blue_green, "DEPLOY_LOCK_TIMEOUT_S", 0.5)
    holder = hold_lock(deploy_dir(settings) / "deploy.lock")
    try:
        for step in (lambda: deploy_service(settings, version="1"), lambda: rollback_deployment(settings),
                     lambda: stop_all(settings)):
            with pytest.raises(DeployError, match=f"another deployment is under way.*process {holder.pid}"):
                step()
    finally:
        holder.kill()
        holder.wait()
    assert stop_all(settings)  # the kernel released the dead holder's lock


def test_the_lock_is_reentrant_within_a_thread(tmp_path: Path) -> None:
    with file_lock(tmp_path / "x.lock", 1), file_lock(tmp_path / "x.lock", 1):
        pass
    with file_lock(tmp_path / "x.lock", 1):  # and released after
        pass


def test_a_crash_while_writing_the_state_leaves_the_last_good_one(settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"live": None, "slots": {}, "note": "last good"}
    blue_green._write_state(settings, good)
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd)))
    blue_green._write_state(settings, good)
    assert len(fsynced) == 2  # the file, then its folder

    def crash(*_: object) -> None:
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        blue_green._write_state(settings, {"live": "blue", "slots": {"blue": {}}})
    assert json.loads((deploy_dir(settings) / "state.json").read_text()) == good
    assert [p.name for p in deploy_dir(settings).iterdir() if p.name.startswith(".")] == []  # no half file left
