"""Helpers for writing course notebooks from a Python script (authoring aid, optional).

The ``.ipynb`` files in ``notebooks/`` are the source of truth; this module only makes it
easy to create or rewrite one with the course's conventions (see CONTRIBUTING.md):

    from tools.nbauthor import md, code, solution, tests, write
    cells = [md("# 01 · Rank"), code("from lora_edu import setup_notebook\\nrng = setup_notebook(0)"),
             solution("def f(x):\\n    ### BEGIN SOLUTION\\n    return x\\n    ### END SOLUTION", "ch01-f"),
             tests("check_f(f)", "ch01-f-test", points=1)]
    write("notebooks/01_rank.ipynb", cells)

then ``make notebooks NB=notebooks/01_rank.ipynb`` to execute it and store the outputs.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SCHEMA = 3


def _clean(src: str) -> str:
    return textwrap.dedent(src).strip("\n")


def md(src: str, **metadata) -> nbformat.NotebookNode:
    """A markdown cell."""
    return new_markdown_cell(_clean(src), metadata=metadata)


def code(src: str, tags: list[str] | None = None, **metadata) -> nbformat.NotebookNode:
    """An ordinary code cell (``tags`` e.g. ``["raises-exception"]``)."""
    if tags:
        metadata["tags"] = tags
    return new_code_cell(_clean(src), metadata=metadata)


def solution(src: str, grade_id: str, hidden: bool = True) -> nbformat.NotebookNode:
    """An exercise's solution cell: the answer between ``### BEGIN SOLUTION`` / ``### END SOLUTION``.

    Collapsed in JupyterLab by default (``hidden=True``) so a learner can try first.
    """
    src = _clean(src)
    if "### BEGIN SOLUTION" not in src or "### END SOLUTION" not in src:
        raise ValueError(f"solution cell {grade_id!r} needs ### BEGIN SOLUTION / ### END SOLUTION markers")
    meta = {"nbgrader": {"grade": False, "grade_id": grade_id, "locked": False,
                         "schema_version": SCHEMA, "solution": True, "task": False}}
    if hidden:
        meta["jupyter"] = {"source_hidden": True}
    return new_code_cell(src, metadata=meta)


def tests(src: str, grade_id: str, points: int = 1) -> nbformat.NotebookNode:
    """An autograded, locked test cell worth ``points``; may hold ``### BEGIN HIDDEN TESTS`` blocks."""
    if points <= 0:
        raise ValueError("points must be positive")
    meta = {"nbgrader": {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
                         "schema_version": SCHEMA, "solution": False, "task": False}}
    return new_code_cell(_clean(src), metadata=meta)


def write(path: str | Path, cells: list[nbformat.NotebookNode]) -> Path:
    """Write a new, unexecuted notebook with the course's kernel metadata."""
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    ids = [c.metadata["nbgrader"]["grade_id"] for c in cells if "nbgrader" in c.metadata]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ValueError(f"duplicate grade_id(s): {sorted(dupes)}")
    path = Path(path)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path
