"""The package's import rules, every import counted (those inside functions too, which hide cycles): stages form
layers in pipeline order, nothing in the product imports Airflow, the DAGs, the benchmarks or the tests, the
DAG files define each Asset once and take run keys and windows from ``pipelines.core.runs``, and the Bento packs
exactly what serving imports. ``make lint`` checks the layers again with import-linter (``pyproject.toml``)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.deploy.bento import BENTOFILE, bento_sources, code_hash
from tests.helpers.imports import REPO, closure, first_party_graph, imported_names, module_path

LAYERS = ("core", "ingest", "validation", "features", "training", "registry", "serving", "deploy", "monitoring",
          "simulation", "ops", "cli")
"""Lowest first: a module may import its own package and those below it, never one above."""
SERVICE_ROOTS = ("services.flight_delay_service",)
"""What a model service runs: its module (it loads the registered model as data, unpickling nothing)."""


def _named_by_feast_yaml() -> tuple[str, ...]:
    """The modules of classes the Feast repo's yaml files name (engine, offline store, registry store): Feast
    imports them by name in the service too."""
    def strings(node: object) -> list[str]:
        if isinstance(node, dict):
            return [s for value in node.values() for s in strings(value)]
        return [node] if isinstance(node, str) else []

    named = {value.rsplit(".", 1)[0] for path in (REPO / "feature_repo").rglob("*.yaml")
             for value in strings(yaml.safe_load(path.read_text())) if value.startswith("pipelines.")}
    return tuple(sorted(named))


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "pipelines" and len(parts) > 1 and parts[1] in LAYERS else None


def test_every_package_of_pipelines_has_a_layer() -> None:
    packages = {p.name for p in (REPO / "pipelines").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - {"cli"}
    assert {p.stem for p in (REPO / "pipelines").glob("*.py")} == {"__init__", "__main__", "cli"}


def test_stages_import_only_their_own_layer_and_those_below() -> None:
    upward = [f"{module} -> {imported}" for module, imports in first_party_graph().items()
              for imported in imports
              if _layer(module) is not None and _layer(imported) is not None and _layer(imported) > _layer(module)]
    assert upward == []


def test_the_module_graph_has_no_cycle() -> None:
    graph = {m: {i for i in imports if i != m} for m, imports in first_party_graph().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                cycles.append([*path[path.index(imported):], imported] if imported in path else [module, imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("package", ["pipelines", "services"])
def test_the_product_imports_no_airflow_dags_benchmarks_or_tests(package: str) -> None:
    offending = {f"{path.relative_to(REPO)}: {name}" for path in (REPO / package).rglob("*.py")
                 for name in imported_names(path)
                 if name.split(".")[0] in ("airflow", "_notifiers", "_assets", "dags", "benchmarks", "tests")}
    assert offending == set()


def _dag_files() -> list[Path]:
    return sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))


def test_each_asset_is_defined_once_in_the_shared_module() -> None:
    for path in _dag_files():
        calls = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
                 and getattr(node.func, "id", None) in ("Asset", "AssetAlias")]
        assert calls == [], f"{path.name} defines an Asset; define it in dags/_assets.py"


def test_dag_files_take_run_keys_and_windows_from_core_and_parse_no_keys() -> None:
    for path in _dag_files():
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "split"], \
            f"{path.name} parses a key or path itself"
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)
                    and "dag_id" in ast.unparse(n)], f"{path.name} builds a run key itself"
        assert "pipelines.core.runs" in imported_names(path), f"{path.name} does not use pipelines.core.runs"


def _service_modules() -> set[str]:
    roots = (*SERVICE_ROOTS, *_named_by_feast_yaml())
    return {m for m in closure(roots, first_party_graph()) if m.split(".")[0] in ("pipelines", "services")}


def test_the_bento_packs_exactly_what_serving_imports() -> None:
    packed = {path.relative_to(REPO).as_posix() for path in bento_sources() if path.suffix == ".py"
              and path.parts[len(REPO.parts)] in ("pipelines", "services")}
    needed = {module_path(m).relative_to(REPO).as_posix() for m in _service_modules()}  # type: ignore[union-attr]
    assert packed == needed, (f"add to {BENTOFILE.name}: {sorted(needed - packed)}; "
                              f"remove from it: {sorted(packed - needed)}")


def test_serving_reaches_no_training_loop_tuning_monitoring_or_operations() -> None:
    heavy = ("pipelines.training.fit", "pipelines.training.tuning", "pipelines.training.steps",
             "pipelines.training.reference", "pipelines.registry.register", "pipelines.monitoring",
             "pipelines.ops", "pipelines.simulation", "pipelines.deploy", "pipelines.cli")
    assert sorted(m for m in _service_modules() if m.startswith(heavy)) == []


def test_editing_a_dag_or_a_benchmark_leaves_the_bento_tag_alone(tmp_path: Path) -> None:
    for folder in ("services", "pipelines", "feature_repo", "dags", "benchmarks"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_hash(tmp_path)
    assert before == code_hash()
    for edited in ("dags/flights_ingest.py", "benchmarks/serving.py", "pipelines/training/fit.py"):
        (tmp_path / edited).write_text((tmp_path / edited).read_text() + "\n# edited\n")
        assert code_hash(tmp_path) == before, f"editing {edited} changed the Bento's tag"
    (tmp_path / "pipelines/serving/predictor.py").write_text("# edited\n")
    assert code_hash(tmp_path) != before


def test_the_bentofile_names_only_files_that_exist() -> None:
    patterns = yaml.safe_load(BENTOFILE.read_text())["include"]
    assert [p for p in patterns if not list(REPO.glob(p))] == []
