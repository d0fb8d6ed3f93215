"""Feast imported through ``pipelines.features`` comes without typeguard's instrumentation (half of its import
time), and only then: each check runs in a fresh interpreter, since this one may have imported Feast already."""

from __future__ import annotations

import subprocess  # nosec B404 - this interpreter, a fixed script
import sys

import pytest

from pipelines.core.settings import PROJECT_ROOT

INSTRUMENTED = ("import feast.feature_service as m; "
                "print('check_argument_types_internal' in m.FeatureService.__init__.__code__.co_names)")


@pytest.mark.parametrize(("first", "instrumented"), [
    ("", "True"),  # Feast on its own: typeguard rewrites its methods (the check below can see it)
    ("import pipelines.features.store; ", "False"),
])
def test_feast_imported_through_the_features_package_is_not_instrumented(first: str, instrumented: str) -> None:
    result = subprocess.run([sys.executable, "-c", first + INSTRUMENTED], cwd=PROJECT_ROOT,  # nosec B603
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == instrumented


def test_the_no_op_decorator_returns_what_it_decorates_bare_or_with_options() -> None:
    from pipelines.features.feast_import import _unchecked

    def f(x: int) -> int:
        return x

    assert _unchecked(f) is f and _unchecked(collection_check_strategy=None)(f) is f
