"""The course map and the notebook conventions every chapter follows (CONTRIBUTING.md)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lora_edu.course import CHAPTERS, available, course_map_markdown

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def src(cell: dict) -> str:
    return "".join(cell["source"])


def test_every_notebook_is_on_the_course_map():
    known = {c.notebook for c in CHAPTERS}
    assert {p.name for p in NOTEBOOKS} <= known


def test_course_map_links_only_existing_notebooks(tmp_path):
    (tmp_path / "00_welcome.ipynb").write_text("{}")
    table = course_map_markdown(tmp_path)
    assert "[Welcome](00_welcome.ipynb)" in table
    assert "Rank *(coming)*" in table and "(01_rank.ipynb)" not in table
    assert [c.number for c in available(tmp_path)] == ["00"]


def test_readme_course_map_matches_the_notebooks():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in readme, f"README's course map does not link {path.name}"
    for chapter in CHAPTERS:
        if not (ROOT / "notebooks" / chapter.notebook).exists():
            assert f"notebooks/{chapter.notebook}" not in readme, f"README links {chapter.notebook}, which does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_seeded(path):
    """The first code cell after the install cell (tools/install_cell.py) seeds everything."""
    code = [src(c) for c in cells(path) if c["cell_type"] == "code"
            and "install-lora-edu" not in c.get("metadata", {}).get("tags", [])]
    assert "setup_notebook(" in code[0], "the first code cell must call lora_edu.setup_notebook(seed=...)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_follow_the_nbgrader_markup(path):
    number = path.name[:2]
    graded, ids = 0, []
    previous_solution = False
    for cell in cells(path):
        meta = cell.get("metadata", {}).get("nbgrader")
        if not meta:
            previous_solution = False
            continue
        assert meta["schema_version"] == 3
        ids.append(meta["grade_id"])
        assert meta["grade_id"].startswith(f"ch{number}-"), f"grade_id {meta['grade_id']} should start ch{number}-"
        text = src(cell)
        if meta.get("solution"):
            assert "### BEGIN SOLUTION" in text and "### END SOLUTION" in text
            assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True, \
                f"solution cell {meta['grade_id']} should be collapsed (jupyter.source_hidden)"
            previous_solution = True
        elif meta.get("grade"):
            assert meta["locked"] is True and meta["points"] > 0
            assert previous_solution, f"test cell {meta['grade_id']} should follow its solution cell"
            assert re.search(r"\bcheck_\w+\(", text), f"test cell {meta['grade_id']} should call a lora_edu check"
            graded += 1
            previous_solution = False
    assert graded >= 1, "every notebook has at least one autograded exercise"
    assert len(ids) == len(set(ids)), "grade_ids must be unique within a notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_never_spells_an_nbgrader_delimiter(path):
    """nbgrader looks for its delimiters in every cell, prose included: a markdown cell that quotes one
    breaks `nbgrader generate_assignment` ("No end hidden tests statement found")."""
    delimiters = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
    nb = json.loads(path.read_text())
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"])
            found = [d for d in delimiters if d in text]
            assert not found, f"{path.name} cell {index}: markdown quotes {found}; write around the words"
