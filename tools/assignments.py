"""Classroom assignments: every numbered notebook in notebooks/ is one nbgrader assignment.

What ``make student`` runs::

    python tools/assignments.py [--course-dir course]

1. copies each ``notebooks/NN_name.ipynb`` to ``course/source/NN_name/NN_name.ipynb`` — nbgrader's
   layout for instructor versions — and removes numbered folders there whose notebook is gone;
2. runs ``nbgrader generate_assignment`` (nbgrader itself, with ``course/nbgrader_config.py``)
   for all of them, which writes the student copies to ``student/NN_name/NN_name.ipynb`` —
   solutions replaced by ``raise NotImplementedError()``, hidden tests and outputs removed — and
   records the assignments and their test cells in ``course/gradebook.db`` for autograding.

A chapter added later is picked up by the next ``make student`` without any change here.
The tests (tests/test_assignments.py) use the same functions on a temporary course directory.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COURSE = ROOT / "course"
CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"
# nbgrader treats the assignment argument as a file glob: this one matches every chapter folder.
ASSIGNMENT_GLOB = "[0-9][0-9]_*"
_CHAPTER_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+$")


def chapter_notebooks(notebook_dir: str | Path = NOTEBOOKS) -> list[Path]:
    """The course notebooks ``NN_name.ipynb`` in ``notebook_dir``, in chapter order."""
    return sorted(p for p in Path(notebook_dir).glob(CHAPTER_GLOB) if _CHAPTER_NAME.match(p.stem))


def assignment_id(notebook: str | Path) -> str:
    """The nbgrader assignment a notebook becomes: its file name without ``.ipynb`` (``01_rank``)."""
    return Path(notebook).stem


def prepare_source(course_dir: str | Path = COURSE, notebooks: list[Path] | None = None) -> list[str]:
    """Copy every chapter notebook to ``<course_dir>/source/NN_name/NN_name.ipynb``.

    Numbered folders in ``source/`` whose notebook no longer exists are removed, so that a renamed
    chapter does not linger as a stale assignment; anything else there is left alone.
    Returns the assignment ids, in chapter order.
    """
    notebooks = chapter_notebooks() if notebooks is None else notebooks
    source = Path(course_dir) / "source"
    source.mkdir(parents=True, exist_ok=True)
    ids = [assignment_id(nb) for nb in notebooks]
    for folder in source.iterdir():
        if folder.is_dir() and _CHAPTER_NAME.match(folder.name) and folder.name not in ids:
            shutil.rmtree(folder)
    for nb, name in zip(notebooks, ids):
        target = source / name
        target.mkdir(exist_ok=True)
        for old in target.glob("*.ipynb"):
            if old.name != nb.name:
                old.unlink()
        shutil.copyfile(nb, target / nb.name)
    return ids


def nbgrader_command() -> list[str]:
    """The nbgrader executable of the running environment (``.venv/bin/nbgrader`` under make)."""
    script = Path(sys.executable).parent / "nbgrader"
    return [str(script)] if script.exists() else [sys.executable, "-m", "nbgrader"]


def nbgrader_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the environment's ``bin/`` first on PATH.

    nbgrader's gradebook runs the ``alembic`` executable found on PATH, so nbgrader needs its own
    environment's ``bin/`` there — what ``source .venv/bin/activate`` does for an instructor.
    """
    env = dict(os.environ if env is None else env)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]) if env.get("PATH") else bin_dir
    return env


def run_nbgrader(args: list[str], course_dir: str | Path = COURSE, env: dict[str, str] | None = None,
                 check: bool = True) -> subprocess.CompletedProcess:
    """Run ``nbgrader <args>`` from ``course_dir`` (where nbgrader_config.py is), as an instructor would."""
    proc = subprocess.run(nbgrader_command() + list(args), cwd=course_dir, env=nbgrader_env(env),
                          text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed with exit code {proc.returncode}:\n"
                           f"{proc.stdout}\n{proc.stderr}")
    return proc


def generate_student_copies(course_dir: str | Path = COURSE, env: dict[str, str] | None = None) -> str:
    """``nbgrader generate_assignment`` for every chapter in ``source/`` (``--force``: rebuild copies)."""
    proc = run_nbgrader(["generate_assignment", ASSIGNMENT_GLOB, "--force"], course_dir, env=env)
    return proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--course-dir", default=str(COURSE), help="the nbgrader course directory (default: course/)")
    parser.add_argument("--verbose", action="store_true", help="show nbgrader's log")
    args = parser.parse_args(argv)
    course_dir = Path(args.course_dir).resolve()
    ids = prepare_source(course_dir)
    if not ids:
        print(f"no chapter notebooks ({CHAPTER_GLOB}) in {NOTEBOOKS}", file=sys.stderr)
        return 1
    log = generate_student_copies(course_dir)
    if args.verbose:
        print(log)
    release = course_dir.parent / "student"
    for name in ids:
        copies = sorted((release / name).glob("*.ipynb"))
        if not copies:
            print(f"nbgrader made no student copy of {name}; its log:\n{log}", file=sys.stderr)
            return 1
        for copy in copies:
            print(f"student copy: {copy.relative_to(course_dir.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
