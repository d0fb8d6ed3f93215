"""DAG files stay cheap to parse: the dag-processor re-imports them every few seconds, so the heavy ML stack is
imported inside tasks, never at the top of a DAG file.

Each check runs in a fresh interpreter, so modules already imported by this test session cannot hide (or fake)
an import made by a DAG file.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.ops.airflow_config import airflow_env

DAGS_DIR = PROJECT_ROOT / "dags"


def _ignored(path: Path) -> bool:
    """Whether dags/.airflowignore (glob syntax) keeps the dag-processor off ``path``: helpers, not DAG files."""
    ignore = DAGS_DIR / ".airflowignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)


DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not _ignored(p))
HEAVY_PACKAGES = ["feast", "torch", "great_expectations", "mlflow", "evidently", "bentoml"]
# Generous on purpose: a guard against heavy top-level code (seconds), not a benchmark (milliseconds today).
PARSE_BUDGET_S = 5.0

# argv: DAG file, JSON list of package names, report path. Reports which of the packages the import loaded.
# The file's folder goes on sys.path, as Airflow puts a DAG bundle's (DAG files import their helpers from it).
IMPORT_DAG_FILE = """
import importlib.util, json, os, sys
path, packages, report = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path.append(os.path.dirname(path))
spec = importlib.util.spec_from_file_location("dag_file_under_test", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(packages))
with open(report, "w") as sink:
    json.dump({"loaded": loaded}, sink)
"""

# argv: DAG folder, report path. Airflow itself is imported before the clock starts; the folder is parsed as the
# dag-processor parses a bundle.
TIME_DAGBAG = """
import json, sys, time
from airflow.dag_processing.dagbag import BundleDagBag
started = time.perf_counter()
bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=sys.argv[1])
seconds = time.perf_counter() - started
with open(sys.argv[2], "w") as sink:
    json.dump({"seconds": seconds, "dags": sorted(bag.dag_ids), "errors": sorted(bag.import_errors)}, sink)
"""


def _fresh_python(script: str, args: list[str], home: Path) -> dict[str, Any]:
    """Run ``script`` in a new interpreter with the embedded Airflow env on ``home``; return its JSON report."""
    report = home / "report.json"
    env = airflow_env(Settings(pipeline_home=home))
    result = subprocess.run([sys.executable, "-c", script, *args, str(report)], env=env, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return json.loads(report.read_text())


def test_the_check_sees_an_import_made_by_the_file(tmp_path: Path) -> None:
    """Control: the same script does report a package the imported file pulls in."""
    probe = tmp_path / "probe.py"
    probe.write_text("import email.mime.text\n")

    report = _fresh_python(IMPORT_DAG_FILE, [str(probe), json.dumps(["email", "tomllib"])], tmp_path)

    assert report["loaded"] == ["email"]


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_file_does_not_import_the_ml_stack(tmp_path: Path, path: Path) -> None:
    report = _fresh_python(IMPORT_DAG_FILE, [str(path), json.dumps(HEAVY_PACKAGES)], tmp_path)

    assert report["loaded"] == [], f"{path.name} imports {report['loaded']} at parse time; import it inside the task"


def test_dag_folder_parses_within_budget(tmp_path: Path) -> None:
    report = _fresh_python(TIME_DAGBAG, [str(DAGS_DIR)], tmp_path)

    assert report["errors"] == []
    assert report["dags"] == sorted(p.stem for p in DAG_FILES)
    assert report["seconds"] < PARSE_BUDGET_S, f"parsing dags/ took {report['seconds']:.1f}s"
