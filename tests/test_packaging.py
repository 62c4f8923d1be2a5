"""The two environments (pip via pyproject.toml, conda via environment.yml) list the same packages, the
constraints file pins what make installs, the package's layout puts everything in the wheel, and every
notebook starts with the install cell that hosted notebook services need (tools/install_cell.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import lora_edu.results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import install_cell  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
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


@pytest.mark.parametrize("target", ["lab:", "test:", "notebooks:", "clean:", "lint:", "site:"])
def test_makefile_has_the_documented_targets(target):
    assert re.search(rf"^{target}", (ROOT / "Makefile").read_text(), re.MULTILINE)


def test_every_subpackage_is_in_the_explicit_package_list():
    """[tool.setuptools] packages is a list (it maps benchmarks/results into the wheel): a new subpackage
    of lora_edu must be added there, or the wheel silently lacks it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lora_edu").rglob("__init__.py")}
    assert on_disk <= set(setuptools["packages"]), f"add {sorted(on_disk - set(setuptools['packages']))}"
    assert setuptools["package-dir"] == {"lora_edu.recorded": "benchmarks/results"}
    assert setuptools["package-data"]["lora_edu.recorded"] == ["*.json"]


def test_a_checkout_reads_its_own_results_first(monkeypatch):
    """In a clone (make venv's editable install) lora_edu.results reads benchmarks/results/, not package data."""
    monkeypatch.delenv("LORA_EDU_RESULTS", raising=False)
    assert lora_edu.results.results_dir() == ROOT / "benchmarks" / "results"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_the_current_install_cell(path):
    problems = install_cell.problems(json.loads(path.read_text(encoding="utf-8")))
    assert not problems, f"{path.name}: {problems}; run: python tools/install_cell.py"


def _run_cell(tmp_path: Path, *python_flags: str) -> subprocess.CompletedProcess:
    """Run the install cell's code in a fresh Python, with pip replaced by a recorder."""
    script = ("import json, subprocess, sys\n"
              "calls = []\n"
              "subprocess.check_call = lambda args, **kw: calls.append(args) or 0\n"
              f"exec({install_cell.cell_source()!r})\n"
              "sys.stderr.write('PIP ' + json.dumps(calls))\n")
    return subprocess.run([sys.executable, *python_flags, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, check=True)


def test_install_cell_prints_nothing_where_lora_edu_is_installed(tmp_path):
    proc = _run_cell(tmp_path)
    assert proc.stdout == ""
    assert proc.stderr == "PIP []", "the install cell must not run pip where lora_edu is importable"


def test_install_cell_installs_from_the_repository_where_lora_edu_is_missing(tmp_path):
    """-I -S: no site-packages (so no lora_edu), as in a hosted notebook before the cell runs."""
    proc = _run_cell(tmp_path, "-I", "-S")
    url = install_cell.repository_url()
    assert proc.stdout.startswith(f"installing lora_edu from {url}")
    calls = json.loads(proc.stderr.removeprefix("PIP "))
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", f"lora_edu @ git+{url}"]]


def test_install_cell_is_skipped_by_nbval_and_ignored_by_nbgrader():
    cell = install_cell.install_cell()
    assert "nbval-skip" in cell["metadata"]["tags"] and "nbgrader" not in cell["metadata"]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert "BEGIN SOLUTION" not in install_cell.cell_source() and "HIDDEN TESTS" not in install_cell.cell_source()
