"""What the images and set-up install: every imported distribution declared, and every one pinned.

pyproject.toml declares ranges; constraints.txt pins the versions that setup, CI and the images
install; the watchdog image installs only the list in ``[tool.compose-agent]``. These tests read the
sources' imports, so a new import without a declaration, or a declaration without a pin, fails here
rather than on a fresh machine or in next month's image build.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"gateway", "statuspanel", "watchdog", "tests"}


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_names(requirements: Iterable[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def imported_distributions(*folders: str) -> dict[str, set[str]]:
    """Each third-party distribution that the folders' modules import, with the files that import it."""
    modules: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in FIRST_PARTY and top not in sys.stdlib_module_names:
                        modules.setdefault(top, set()).add(str(path.relative_to(REPO)))
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for module, files in modules.items():
        assert module in owners, f"{module}, imported by {sorted(files)}, belongs to no installed distribution"
        for dist in owners[module]:
            found.setdefault(canonicalize_name(dist), set()).update(files)
    return found


def pins() -> dict[str, Version]:
    """constraints.txt as name -> pinned version (markers ignored: one pin per name)."""
    pinned: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"constraints.txt pins with ==, not {line!r}"
            pinned[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pinned


def test_every_distribution_the_packages_import_is_a_declared_dependency() -> None:
    declared = requirement_names(pyproject()["project"]["dependencies"])
    undeclared = {d: sorted(f) for d, f in imported_distributions("gateway", "statuspanel", "watchdog").items()}
    for name in declared:
        undeclared.pop(name, None)
    assert not undeclared, f"imported but not in [project].dependencies: {undeclared}"


def test_every_distribution_the_tests_import_is_declared_for_the_dev_extra() -> None:
    project = pyproject()["project"]
    declared = requirement_names([*project["dependencies"], *project["optional-dependencies"]["dev"]])
    undeclared = {d: sorted(f) for d, f in imported_distributions("tests").items() if d not in declared}
    assert not undeclared, f"imported by tests but declared nowhere: {undeclared}"


def test_the_watchdog_image_list_is_exactly_what_the_watchdog_imports_with_the_projects_ranges() -> None:
    listed = pyproject()["tool"]["compose-agent"]["watchdog-dependencies"]
    assert requirement_names(listed) == set(imported_distributions("watchdog"))
    project = {Requirement(r).name: str(Requirement(r)) for r in pyproject()["project"]["dependencies"]}
    for requirement in map(Requirement, listed):
        assert str(requirement) == project.get(requirement.name), f"{requirement} differs from [project].dependencies"


def test_constraints_pin_every_declared_requirement_within_its_range() -> None:
    project = pyproject()["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    pinned = pins()
    for requirement in map(Requirement, requirements):
        name = canonicalize_name(requirement.name)
        refresh = "run bash scripts/update-constraints.sh"
        assert name in pinned, f"{name} is not in constraints.txt: {refresh}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside {requirement}: {refresh}"
        )
