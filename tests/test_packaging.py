"""The two environments (pip via pyproject.toml, conda via environment.yml) list the same packages,
and the constraints file pins what make installs."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_packages() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(data["dependencies"])
    for extra in data["optional-dependencies"].values():
        reqs += extra
    return {_name(r) for r in reqs}


def environment_packages() -> tuple[set[str], list[str]]:
    """(package names, pip-section lines) from environment.yml's dependencies, read without a YAML library."""
    names, pip_lines = set(), []
    section = None
    for raw in (ROOT / "environment.yml").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw.startswith(" "):
            section = line.rstrip(":").strip()
            continue
        if section != "dependencies" or not line.strip().startswith("- "):
            continue
        item = line.strip()[2:].strip()
        if item == "pip:":
            continue
        if raw.startswith("      "):  # nested under `- pip:`
            pip_lines.append(item)
        name = _name(item)
        name = CONDA_TO_PIP.get(name, name)
        if name not in NOT_PACKAGES:
            names.add(name)
    return names, pip_lines


def test_environment_yml_and_pyproject_name_the_same_packages():
    conda, _ = environment_packages()
    pip = pyproject_packages()
    assert conda == pip, (f"only in environment.yml: {sorted(conda - pip)}; "
                          f"only in pyproject.toml: {sorted(pip - conda)}")


def test_environment_yml_does_not_install_the_checkout():
    _, pip_lines = environment_packages()
    assert not any(line.startswith("-e") or line == "." for line in pip_lines), \
        "repo2docker builds environment.yml before the repo is copied in: install lora_edu in postBuild"
    post_build = (ROOT / "postBuild").read_text()
    assert "pip install" in post_build and "-e ." in post_build


def test_environment_yml_uses_conda_forge_and_python_311():
    text = (ROOT / "environment.yml").read_text()
    assert "- conda-forge" in text and "python=3.11" in text


def test_constraints_pin_every_direct_requirement_exactly():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    missing = pyproject_packages() - set(pins)
    assert not missing, f"constraints.txt does not pin {sorted(missing)}"
    assert pins["torch"] == "2.13.0", "torch 2.13.0 is the CPU wheel on local disk; see constraints.txt"


@pytest.mark.parametrize("target", ["lab:", "test:", "notebooks:", "clean:"])
def test_makefile_has_the_documented_targets(target):
    assert re.search(rf"^{target}", (ROOT / "Makefile").read_text(), re.MULTILINE)
