"""About 2 minutes (106-130 s on 2 shared cores: up() ~40 s, the browser and the run ~60 s, down() ~10-20 s): the
Airflow UI in a real browser, from the login page to a successful flights_ingest run.

Nothing is mocked. The module starts the whole stack with ``pipelines.ops.stack.up`` (``make up``) on a fresh
PIPELINE_HOME with free ports and the embedded profile: the real API server with the React UI and the simple auth
manager, the scheduler (LocalExecutor, SQLite), the DAG processor, the triggerer and the SMTP server. Debian's
headless Chromium (``/usr/bin/chromium``, driven by Playwright; never Playwright's own browser download) then does
what a person does:

* an unauthenticated visit lands on the login page; signing in as ``admin`` with the home's password works;
* the DAG list leads to ``flights_ingest``, whose docs (the DAG file's docstring) are shown;
* the Trigger form renders the DAG's params as typed, described date fields; the logical date is set to the
  partition's day (the DAG ends in 2013: a run dated after its end_date gets no task instances at all), start and
  end date are typed into the form, "Unpause flights_ingest on trigger" stays checked, and the run is triggered;
* the run page is polled until the run succeeds.

The REST API (a JWT from ``POST /auth/token``) then confirms the run's conf holds the typed dates and that the DAG
was unpaused, the lake has the validated partition, and ``pipelines.ops.stack.down`` really stops every process (no pid
of ``$PIPELINE_HOME/run`` nor any process of its group is left alive).

Screenshots of each stage go to ``$TEST_ARTEFACTS`` (default ``.pipeline_home/test-artefacts/airflow-ui/``, git
ignored) and survive the test; when a stage fails, ``failed-<stage>.png`` and ``.html`` of the page are saved there
before the error is raised. The tmp PIPELINE_HOME (Airflow's logs) is named in the failure message.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.ops.airflow_api import AirflowClient
from pipelines.ops.stack import down, names, up

pytestmark = pytest.mark.e2e

DAG_ID = "flights_ingest"
DAY = "2013-01-07"
DOC_TEXT = "the daily flight and weather feed"
# The DAG's params as the trigger form must show them: (param, title in dags/flights_ingest.py).
PARAMS = (("start_date", "Start date"), ("end_date", "End date"))
SHOTS = ("01-login.png", "02-dag-docs.png", "03-trigger-form.png", "04-run-success.png")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 240
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Stack:
    """The running stack of this module: its settings, where the UI is and the admin's credentials."""

    settings: Settings
    ui: str
    user: str
    password: str

    @property
    def home(self) -> Path:
        return self.settings.pipeline_home

    @property
    def client(self) -> AirflowClient:
        return AirflowClient(self.ui, self.user, self.password)

    def get(self, path: str) -> Any:
        return self.client.request("GET", path)


def artefacts_dir() -> Path:
    return Path(os.environ.get("TEST_ARTEFACTS") or PROJECT_ROOT / ".pipeline_home" / "test-artefacts" / "airflow-ui")


def _recorded_pids(settings: Settings) -> dict[str, int]:
    """``{name: pid}`` of every pid file of the home (``pipelines.core.processes`` writes a JSON record)."""
    return {path.stem: int(json.loads(path.read_text())["pid"])
            for path in sorted((settings.pipeline_home / "run").glob("*.pid"))}


def _alive(pid: int) -> bool:
    """The process, or any process of its group (each stack process leads its own session), still exists."""
    try:  # up() started them from this process: reap one that exited, or it stays a zombie "alive" to kill
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    for probe in (os.kill, os.killpg):
        try:
            probe(pid, 0)
            return True
        except ProcessLookupError:
            continue
        except PermissionError:
            return True
    return False


def _assert_stopped(settings: Settings, pids: dict[str, int], grace_s: float = 15) -> None:
    missing = set(names(settings)) - set(pids)
    assert not missing, f"up() left no pid file for {sorted(missing)}: {pids}"
    pids = {**pids, **_recorded_pids(settings)}  # and any pid file down() left behind
    deadline = time.monotonic() + grace_s
    while (alive := {name: pid for name, pid in pids.items() if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"still running after down(): {alive}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, free_port: Any) -> Iterator[Stack]:
    """The stack, started by ``up()`` on a fresh embedded home; ``down()`` always runs afterwards and must stop
    every process it started."""
    home = tmp_path_factory.mktemp("airflow_ui") / "home"
    with pytest.MonkeyPatch.context() as env:
        # The embedded profile: no setting (lake, S3, Feast, MLflow, Optuna...) and no Airflow variable of the
        # calling shell may leak into the stack.
        settings_variables = {field.upper() for field in Settings.model_fields}
        for name in list(os.environ):
            if name.upper() in settings_variables or name.startswith(("AIRFLOW", "STACK_")):
                env.delenv(name)
        env.setenv("PIPELINE_HOME", str(home))
        env.setenv("AIRFLOW_PORT", str(free_port(3)))
        env.setenv("SMTP_PORT", str(free_port()))
        env.setenv("SERVICE_PORT", str(free_port(3)))
        env.setenv("GX_ANALYTICS_ENABLED", "false")
        settings = get_settings()
        try:
            started = up(settings=settings)
            yield Stack(settings, started["ui"], started["user"], started["password"])
        finally:
            pids = _recorded_pids(settings)
            down(settings=settings)
        _assert_stopped(settings, pids)


@pytest.fixture(scope="module")
def artefacts() -> Path:
    """Where the screenshots go; this test's earlier files are removed first, so what is there is this run's."""
    folder = artefacts_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for path in [*(folder / name for name in SHOTS), *folder.glob("failed-*")]:
        path.unlink(missing_ok=True)
    return folder


@pytest.fixture
def page(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            tab = context.new_page()
            tab.set_default_timeout(30_000)
            yield tab
        finally:
            browser.close()


@contextmanager
def stage(page: Any, artefacts: Path, name: str, stack: Stack) -> Iterator[None]:
    """On any failure inside: save a screenshot and the HTML of the page as ``failed-<name>.*``, then re-raise."""
    try:
        yield
    except BaseException as error:
        saved = []
        try:
            page.screenshot(path=str(artefacts / f"failed-{name}.png"), full_page=True)
            saved.append(f"failed-{name}.png")
            (artefacts / f"failed-{name}.html").write_text(page.content())
            saved.append(f"failed-{name}.html")
        except Exception as capture_error:  # the page may be gone; the original error matters more
            saved.append(f"(capture failed: {capture_error})")
        if hasattr(error, "add_note"):
            error.add_note(f"stage {name!r} failed at {page.url}; saved {saved} in {artefacts}; "
                           f"Airflow's logs: {stack.home / 'logs'}")
        raise


def _shot(page: Any, artefacts: Path, name: str) -> None:
    page.screenshot(path=str(artefacts / name), full_page=True)


def _wait_for_dag(stack: Stack, timeout_s: float = 180) -> dict:
    """The DAG processor parses the dags folder after up(); the UI lists the DAG once it is serialized."""
    (details,) = stack.client.wait_for_dags([DAG_ID], timeout_s)
    return details


def _run_state(stack: Stack, run_id: str) -> str:
    return str(stack.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")["state"])


def test_trigger_flights_ingest_from_the_ui(stack: Stack, page: Any, artefacts: Path) -> None:
    from playwright.sync_api import expect

    details = _wait_for_dag(stack)
    expect.set_options(timeout=30_000)

    with stage(page, artefacts, "login", stack):
        page.goto(stack.ui + "/")
        expect(page).to_have_url(re.compile(r"/auth/login"))
        expect(page.get_by_text("Sign into Airflow")).to_be_visible()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        _shot(page, artefacts, SHOTS[0])
        page.get_by_label("Username").fill(stack.user)
        page.get_by_label("Password").fill(stack.password)
        page.get_by_role("button", name="Sign in").click()
        expect(page).not_to_have_url(re.compile(r"/auth/login"))
        expect(page.get_by_role("link", name="Dags", exact=True)).to_be_visible()

    with stage(page, artefacts, "dag-docs", stack):
        page.get_by_role("link", name="Dags", exact=True).click()
        page.get_by_role("link", name=DAG_ID, exact=True).first.click()
        expect(page).to_have_url(re.compile(rf"/dags/{DAG_ID}(/|\?|$)"))
        expect(page.get_by_role("heading", name=DAG_ID, exact=True)).to_be_visible()
        page.get_by_role("button", name="Dag Docs").click()
        docs = page.get_by_role("dialog").filter(has=page.get_by_text("Dag Documentation", exact=True))
        expect(docs).to_be_visible()
        expect(docs).to_contain_text(DOC_TEXT)
        expect(docs.get_by_role("heading", name=re.compile(DOC_TEXT))).to_be_visible()  # markdown, rendered
        _shot(page, artefacts, SHOTS[1])
        docs.get_by_role("button", name="Close").click()
        expect(docs).to_be_hidden()

    with stage(page, artefacts, "trigger-form", stack):
        page.get_by_role("button", name="Trigger Dag").click()
        form = page.get_by_role("dialog").filter(
            has=page.get_by_role("heading", name=re.compile(rf"Trigger Dag\s*-\s*{DAG_ID}")))
        expect(form).to_be_visible()
        expect(form.get_by_role("radio", name="Single Run")).to_be_checked()
        parameters = form.get_by_role("button", name="Run Parameters")
        if parameters.get_attribute("aria-expanded") != "true":
            parameters.click()
        # The logical date: the partition's day (the date-time picker takes typed YYYY/MM/DD and HH:mm).
        form.get_by_test_id("datetime-input").click()
        picker = page.get_by_role("dialog").filter(has=page.get_by_placeholder("YYYY/MM/DD"))
        picker.get_by_placeholder("YYYY/MM/DD").fill(DAY.replace("-", "/"))
        picker.get_by_placeholder("YYYY/MM/DD").press("Enter")
        picker.get_by_placeholder("HH:mm").fill("00:00")
        picker.get_by_placeholder("HH:mm").press("Enter")
        form.get_by_role("heading", name=re.compile("Trigger Dag")).click()  # closes the picker, not the form
        expect(form.get_by_test_id("datetime-input")).to_have_text(re.compile(r"Jan 07, 2013 00:00"))
        # Typed, described params: a date input per param, under its title, described by its description.
        for param, title in PARAMS:
            described = details["params"][param]
            description = described.get("description") or described["schema"].get("description")
            assert description, described
            field = form.get_by_role("group").filter(has=page.get_by_text(title, exact=True))
            expect(field).to_have_count(1)
            expect(field).to_contain_text(description)
            date_input = field.locator(f"input[name='element_{param}']")
            expect(date_input).to_have_attribute("type", "date")
            expect(date_input).to_have_accessible_description(description)
            date_input.fill(DAY)
            expect(date_input).to_have_value(DAY)
        unpause = form.get_by_role("checkbox", name=f"Unpause {DAG_ID} on trigger")
        expect(unpause).to_be_checked()
        _shot(page, artefacts, SHOTS[2])
        form.get_by_role("button", name="Trigger", exact=True).click()
        # The UI may render the toast twice for a moment (its enter animation): any one of them will do.
        expect(page.get_by_text("Dag Run Triggered").first).to_be_visible()
        expect(page).to_have_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/?]+"))

    opened = re.search(rf"/dags/{DAG_ID}/runs/([^/?]+)", page.url)
    assert opened, page.url
    run_id = unquote(opened.group(1))
    with stage(page, artefacts, "run", stack):
        badge = page.get_by_test_id("header-card").get_by_test_id("state-badge")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            expect(badge).to_be_visible()
            if badge.inner_text().strip() == "Success":
                break
            state = _run_state(stack, run_id)  # fail fast: the UI would keep showing "Failed"
            assert state not in {"failed"}, f"run {run_id} ended {state}"
            assert time.monotonic() < deadline, f"run {run_id} not successful within {RUN_TIMEOUT_S}s ({state})"
            time.sleep(5)
            page.reload()
        expect(page.get_by_test_id("header-card")).to_contain_text("2013-01-07 00:00:00")  # its logical date
        _shot(page, artefacts, SHOTS[3])

    runs = {run["dag_run_id"]: run for run in stack.get(f"/dags/{DAG_ID}/dagRuns")["dag_runs"]}
    run = runs[run_id]
    assert run["state"] == "success"
    assert run["conf"] == {"start_date": DAY, "end_date": DAY}
    assert run["logical_date"].startswith(DAY)
    assert run["run_type"] == "manual"
    assert run["triggering_user_name"] == stack.user
    assert stack.get(f"/dags/{DAG_ID}")["is_paused"] is False  # "Unpause on trigger" did
    instances = stack.get(f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances")
    assert sorted(ti["state"] for ti in instances["task_instances"]) == ["success"] * 5

    partition = stack.home / "lake" / "validated" / "flights" / f"date={DAY}" / "data.parquet"
    assert partition.is_file() and partition.stat().st_size > 0, partition

    for name in SHOTS:
        shot = artefacts / name
        assert shot.is_file() and shot.stat().st_size > 1000, shot
        assert shot.read_bytes()[:8] == PNG_SIGNATURE, shot
