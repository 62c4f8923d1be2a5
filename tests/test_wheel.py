"""`pip install .` gives a learner everything the notebooks need: the wheel test.

1. Build the wheel from a copy of the *tracked* files (what a fresh clone has), and check what it holds:
   every module of ``lora_edu`` (``lora_edu.checks`` included), the shipped checkpoint
   (``lora_edu/data/*.safetensors``), every recorded result (``benchmarks/results/*.json`` as
   ``lora_edu/recorded/``), both licence files, the licence expression and the repository URL.
2. Make a fresh virtual environment with only that wheel, its runtime dependencies (pinned by
   constraints.txt; torch is the CPU wheel on local disk) and ipykernel.
3. Copy each chapter to its own empty temporary folder and execute it there, with a kernel of that
   environment (driven by this environment's nbclient), on the CPU: no cell may fail, and a last cell
   added to the copy shows that ``lora_edu`` and its recorded results came from the installed wheel,
   not from this checkout, and the install cell (``tools/install_cell.py``; added to the copy if the
   notebook lacks it) printed nothing.

Two notebooks run at a time, each kernel on one thread (``OMP_NUM_THREADS=1``), which on a 2-core
machine takes about half the time of one at a time; one at a time under ``make test``, whose other
test process (pytest-xdist) already uses the second core. ``LORA_EDU_WHEEL_JOBS=<n>`` changes the number;
``LORA_EDU_WHEEL_NOTEBOOKS=<folder>`` runs the notebooks of another folder (a scratch copy) instead.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import install_cell  # noqa: E402

NOTEBOOK_DIR = Path(os.environ.get("LORA_EDU_WHEEL_NOTEBOOKS") or ROOT / "notebooks")
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "lora-edu-wheel"
CELL_TIMEOUT_S = 600
JOBS = int(os.environ.get("LORA_EDU_WHEEL_JOBS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"))
PROBE = ("import json as _json, lora_edu as _lora_edu, lora_edu.results as _results\n"
         "print(_json.dumps({'package': _lora_edu.__file__, 'results': str(_results.results_dir())}))")

pytestmark = pytest.mark.slow


def tracked_files() -> list[str]:
    """The repository's files as a fresh clone has them (git's list; a walk without git)."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]
    skip = {".venv", ".git", "build", "student", "tests/artifacts", ".pytest_cache"}
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
            if p.is_file() and not any(str(p.relative_to(ROOT)).startswith(s) for s in skip)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("clone")
    for rel in tracked_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    # pip's isolated build gets the setuptools that pyproject.toml's [build-system] asks for
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)],
                   check=True)
    (found,) = out.glob("lora_edu-*.whl")
    return found


def test_wheel_holds_everything_the_notebooks_read(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "lora_edu").rglob("*.py")}
    assert modules - names == set(), f"modules missing from the wheel: {sorted(modules - names)}"
    assert "lora_edu/checks/__init__.py" in names
    checkpoints = {f"lora_edu/data/{p.name}" for p in (ROOT / "lora_edu" / "data").glob("*.safetensors")}
    assert checkpoints and checkpoints <= names
    tracked = set(tracked_files())
    recorded = {f"lora_edu/recorded/{Path(p).name}" for p in tracked
                if p.startswith("benchmarks/results/") and p.endswith(".json")}
    assert recorded and recorded <= names, f"recorded results missing: {sorted(recorded - names)}"
    assert not [n for n in names if n.startswith(("tests/", "tools/", "notebooks/", "benchmarks/"))]


def test_wheel_metadata_names_both_licences_and_the_repository(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
        licence_files = {Path(n).name for n in zf.namelist() if ".dist-info/licenses/" in n}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["License-Expression"] == project["license"] == "MIT AND CC-BY-4.0"
    assert licence_files == {"LICENSE", "LICENSE-CONTENT"}
    assert f"Repository, {project['urls']['Repository']}" in meta.get_all("Project-URL")
    assert meta["Version"] == project["version"]


@pytest.fixture(scope="module")
def wheel_env(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel, its runtime dependencies and ipykernel; returns its python."""
    env_dir = tmp_path_factory.mktemp("wheel_env") / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # this environment's pip installs into the new one (--python), skipping the .pyc compilation of torch
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-compile",
                    "-c", str(ROOT / "constraints.txt"), str(wheel), "ipykernel"], check=True)
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "list", "--format=json"],
                            check=True, capture_output=True, text=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "lora-edu" in installed or "lora_edu" in installed
    for dev_only in ("nbval", "nbgrader", "jupyterlab", "pytest", "hypothesis"):
        assert dev_only not in installed, f"{dev_only} should not be in the wheel's environment"
    return python


def _kernelspec(python: Path, jupyter_dir: Path) -> None:
    spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "lora_edu wheel", "language": "python",
            "env": {"LORA_EDU_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "PYTHONHASHSEED": "0"}}
    folder = jupyter_dir / "kernels" / KERNEL
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(spec))


DRIVER = """
import sys
from pathlib import Path
import nbformat
sys.path.insert(0, sys.argv[1])
from tools.run_notebooks import SteadyClient
path = Path(sys.argv[2])
nb = nbformat.read(path, as_version=4)
for cell in nb.cells:
    if cell.cell_type == "code" and ("NBVAL_RAISES_EXCEPTION" in cell.source
                                     or "raises-exception" in cell.metadata.get("tags", [])):
        cell.metadata["tags"] = sorted(set(cell.metadata.get("tags", [])) | {"raises-exception"})
SteadyClient(nb, timeout=int(sys.argv[4]), kernel_name=sys.argv[3],
             resources={"metadata": {"path": str(path.parent)}}).execute()
nbformat.write(nb, path)
"""


def _run_copy(notebook: Path, workdir: Path, env: dict) -> tuple[str, int, str]:
    """Execute a copy of ``notebook`` alone in ``workdir``; returns (name, returncode, stderr tail)."""
    copy = workdir / notebook.name
    nb = nbformat.read(notebook, as_version=4)
    install_cell.apply(nb)  # a no-op once the notebook has the current cell
    nb = nbformat.from_dict(nb)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nbformat.write(nb, copy)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT), str(copy), KERNEL, str(CELL_TIMEOUT_S)],
                          cwd=workdir, env=env, capture_output=True, text=True)
    return notebook.name, proc.returncode, proc.stderr[-3000:]


def test_every_notebook_runs_from_the_installed_wheel_in_an_empty_folder(wheel_env, tmp_path):
    _kernelspec(wheel_env, tmp_path / "jupyter")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LORA_EDU_RESULTS", "JUPYTER_PATH")}
    env["JUPYTER_PATH"] = str(tmp_path / "jupyter")
    folders = {}
    for nb in NOTEBOOKS:
        folders[nb.name] = tmp_path / nb.stem
        folders[nb.name].mkdir()
    with ThreadPoolExecutor(max_workers=max(1, JOBS)) as pool:
        results = list(pool.map(lambda nb: _run_copy(nb, folders[nb.name], env), NOTEBOOKS))
    failed = [f"{name}:\n{err}" for name, code, err in results if code != 0]
    assert not failed, "notebooks failed with the installed wheel:\n" + "\n\n".join(failed)

    site = wheel_env.parent.parent
    for nb in NOTEBOOKS:
        executed = nbformat.read(folders[nb.name] / nb.name, as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
                  and "raises-exception" not in c.metadata.get("tags", [])]
        assert not errors, f"{nb.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
        probe = json.loads(executed.cells[-1].outputs[0]["text"])
        assert Path(probe["package"]).is_relative_to(site), f"{nb.name} imported lora_edu from {probe['package']}"
        assert Path(probe["results"]).parts[-2:] == ("lora_edu", "recorded"), probe["results"]
        install = [c for c in executed.cells if "install-lora-edu" in c.metadata.get("tags", [])]
        assert len(install) == 1 and install[0].outputs == [], f"{nb.name}: the install cell printed something"
