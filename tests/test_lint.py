"""The repository checks itself: `make lint` (tools/notebook_lint.py) passes and catches what it should,
no tracked file reaches outside the repository, and notebooks diff readably with nbdime."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import install_cell  # noqa: E402
import notebook_lint  # noqa: E402

URL = "https://github.com/example-owner/example-course"


def test_make_lint_passes():
    """What `make lint` runs, on the course's notebooks."""
    proc = subprocess.run([sys.executable, "tools/notebook_lint.py", "notebooks"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def code(source: str, count: int | None, outputs: list | None = None, tags: list | None = None) -> dict:
    return {"cell_type": "code", "execution_count": count, "id": f"c{count}", "source": source,
            "metadata": {"tags": tags} if tags else {}, "outputs": outputs or []}


def good_notebook() -> dict:
    cells = [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# 99 · A chapter"},
             install_cell.install_cell(URL)]
    cells += [code("from lora_edu import setup_notebook\nrng = setup_notebook(seed=0)", 1),
              code("print(1 + 1)", 2, [{"output_type": "stream", "name": "stdout", "text": "2\n"}]),
              code("# NBVAL_IGNORE_OUTPUT\nprint(device)", 3),
              code("x = 2", 4)]
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


def test_lint_accepts_a_good_notebook():
    assert notebook_lint.lint_notebook(good_notebook(), URL) == []


def _break(change) -> list[str]:
    nb = good_notebook()
    change(nb)
    return notebook_lint.lint_notebook(nb, URL)


@pytest.mark.parametrize("change, expected", [
    (lambda nb: nb["cells"][3]["outputs"].append({"output_type": "error", "ename": "ValueError", "evalue": "bad",
                                                  "traceback": []}), "stores an error: ValueError"),
    (lambda nb: nb["cells"][3].update(execution_count=None), "never executed"),
    (lambda nb: nb["cells"][4].update(execution_count=7), "execution counts are not"),
    (lambda nb: nb["cells"][3]["outputs"].append({"output_type": "stream", "name": "stdout",
                                                  "text": "saved to /home/alice/course/x.pt\n"}), "machine path"),
    (lambda nb: nb["cells"][3]["outputs"].append({"output_type": "stream", "name": "stdout",
                                                  "text": "C:\\Users\\bob\\x.pt\n"}), "machine path"),
    (lambda nb: nb["cells"][5].update(source='open("../benchmarks/results/a.json")'), "builds a path with ../"),
    (lambda nb: nb["cells"][5].update(source='Path(lora_edu.__file__).parents[1] / "benchmarks"'),
     "lora_edu.__file__"),
    (lambda nb: nb["cells"][5].update(source="# NBVAL_SKIP\nx = 2"), "NBVAL_SKIP or NBVAL_IGNORE_OUTPUT"),
    (lambda nb: nb["cells"].pop(1), "has no install cell"),
    (lambda nb: nb["cells"][1].update(source="import os"), "not the current one"),
    (lambda nb: nb["cells"].insert(1, nb["cells"].pop(2)), "first code cell is cell 1"),
    (lambda nb: nb["cells"][1].update(outputs=[{"output_type": "stream", "name": "stdout", "text": "hi"}]),
     "stores output"),
    (lambda nb: nb["metadata"]["kernelspec"].update(name="conda-env"), "kernelspec"),
    (lambda nb: nb.update(cells=nb["cells"][:1]), "has no code cells"),
])
def test_lint_catches(change, expected):
    problems = _break(change)
    assert any(expected in p for p in problems), problems


def test_lint_does_not_count_the_install_cell_in_the_quarter():
    """Four cells, one ignored: at the limit, although the install cell is nbval-skipped too."""
    assert not [p for p in _break(lambda nb: None) if "NBVAL" in p]


def test_lint_command_reports_and_fails(tmp_path):
    nb = good_notebook()
    nb["cells"][3]["execution_count"] = None
    (tmp_path / "01_x.ipynb").write_text(json.dumps(nb))
    (tmp_path / "02_y.ipynb").write_text("{not json")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "notebook_lint.py"), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "01_x.ipynb: cell 3 was never executed" in proc.stdout
    assert "02_y.ipynb: cannot be read as notebook JSON" in proc.stdout
    assert "2 notebooks, " in proc.stdout


def tracked_text_files() -> list[Path]:
    if (ROOT / ".git").exists() and shutil.which("git"):
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
        paths = [ROOT / n for n in names.decode().split("\0") if n]
    else:
        skip = {".venv", ".git", "build", "student", "tests/artifacts"}
        paths = [p for p in ROOT.rglob("*") if p.is_file() and p.relative_to(ROOT).parts[0] not in skip]
    return [p for p in paths if p.is_file() and p.suffix not in {".safetensors", ".png", ".whl"}]


def test_no_tracked_file_reaches_outside_the_repository():
    """The repository stands alone: no file names the team's folder next to it, or this machine's paths."""
    team_folder = ".." + "/shared"  # spelled in two parts, so this file does not match itself
    outside = [team_folder, "/work/" + "shared", "/work/" + "main", "/work/" + "wt/"]
    found = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}: {needle}" for needle in outside if needle in text]
    assert not found, "files that refer to places outside the repository:\n" + "\n".join(found)


def test_install_cell_tool_is_idempotent(tmp_path):
    nb = good_notebook()
    nb["cells"].pop(1)
    path = tmp_path / "01_x.ipynb"
    path.write_text(install_cell.dumps(nb))
    assert install_cell.main([str(path)]) == 0
    once = path.read_text()
    assert install_cell.main([str(path)]) == 0
    assert path.read_text() == once, "a second run changes nothing"
    assert install_cell.main(["--check", str(path)]) == 0
    first_code = next(c for c in json.loads(once)["cells"] if c["cell_type"] == "code")
    assert install_cell.is_install_cell(first_code)


def test_install_cell_tool_updates_an_old_cell_in_place(tmp_path):
    nb = good_notebook()
    nb["cells"][1]["source"] = "# an older install cell\n"
    nb["cells"].append(copy.deepcopy(nb["cells"][1]))  # and a stray second one
    assert install_cell.apply(nb, URL)
    assert [i for i, c in enumerate(nb["cells"]) if install_cell.is_install_cell(c)] == [1]
    assert "".join(nb["cells"][1]["source"]) == install_cell.cell_source(URL)
    assert not install_cell.apply(nb, URL)


# ------------------------------------------------------------------------------------ nbdime
def _git(repo: Path, *args: str, env: dict) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "color.ui=never",
                           *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_nbdime_git_driver_shows_a_readable_notebook_diff(tmp_path):
    """CONTRIBUTING's setup (the committed .gitattributes + `nbdime config-git --enable`) makes `git diff`
    of a notebook name cells and show changed lines, where git's own diff shows JSON."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", env=env)
    shutil.copy2(ROOT / ".gitattributes", repo / ".gitattributes")
    nb = good_notebook()
    (repo / "01_x.ipynb").write_text(install_cell.dumps(nb))
    _git(repo, "add", ".", env=env)
    _git(repo, "commit", "-qm", "first", env=env)
    subprocess.run([sys.executable, "-m", "nbdime", "config-git", "--enable"], cwd=repo, env=env, check=True,
                   capture_output=True)
    nb["cells"][3]["source"] = "print(2 + 2)"
    nb["cells"][3]["outputs"][0]["text"] = "4\n"
    (repo / "01_x.ipynb").write_text(install_cell.dumps(nb))

    readable = re.sub(r"\x1b\[[0-9;]*m", "", _git(repo, "diff", env=env))  # nbdime colours even into a pipe
    assert "## modified /cells/3/source" in readable
    assert re.search(r"^-\s*print\(1 \+ 1\)$", readable, re.MULTILINE), readable
    assert re.search(r"^\+\s*print\(2 \+ 2\)$", readable, re.MULTILINE), readable
    assert "/cells/3/outputs/0" in readable
    assert '"cell_type"' not in readable and '"execution_count"' not in readable
    raw = _git(repo, "diff", "--no-ext-diff", env=env)
    assert '"print(2 + 2)"' in raw and "## modified" not in raw
