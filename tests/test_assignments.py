"""Classroom assignments (nbgrader): student copies, autograding and export, for every chapter.

One temporary course directory is built once for this module (fixture ``classroom``) with the
repository's own ``course/nbgrader_config.py`` and the same code as ``make student``
(``tools/assignments.py``). Two pretend students hand in work:

- ``instructor``  every chapter: the instructor notebooks themselves  -> full points, no error anywhere;
- ``partial``     the student copies of the first two chapters with two or more exercises, with the
                  course's solution typed into every other solution cell (the odd ones in one chapter,
                  the even ones in the other, so a later exercise is solved while an earlier one is
                  not)                                                  -> exactly the solved exercises'
                  points, zero for the others, whose test cells fail with the stub's error or the check's
                  NotAnswered/Feedback, and no error in any cell that is not an exercise.

All submissions are graded by a single ``nbgrader autograde`` run (in the grading sandbox) and read
back from ``nbgrader export`` (the CSV an instructor gets) and the gradebook — never from
``nbgrader validate``, which exits 0 even when tests fail. Each chapter runs once here, two short ones
twice. An untouched copy of *every* chapter is not graded here: that no cell outside an exercise
uses a learner's answer is checked chapter by chapter by tests/test_workbooks.py (an untouched
workbook runs to its end with no error, its exercises left at their starting values), and
tests/test_grading.py grades an untouched submission (0 points, "not answered"); running every
chapter a second time here cost about 2 minutes of CI.
"""
from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "course"))
import sandbox  # noqa: E402
from nbgrader_plugins import GradeExecute, ShowSolutionCells, SteadyExecute, sliced_get_msg  # noqa: E402
from tools import assignments  # noqa: E402
from tools import nbauthor  # noqa: E402

CHAPTERS = assignments.chapter_notebooks()
CHAPTER_IDS = [assignments.assignment_id(p) for p in CHAPTERS]
COURSE_FILES = ("nbgrader_config.py", "nbgrader_plugins.py", "sandbox.py")
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
# How a test cell of an untouched student copy may fail: the stub's NotImplementedError, or a
# check's Feedback (an AssertionError), NotAnswered above all ("`rank_of_A` has no answer yet ...").
FAILURES = {"NotImplementedError", "AssertionError", "Feedback", "NotAnswered"}
# The environment the Makefile exports to `make test` and `make notebooks`.
MAKE_ENV = {"LORA_EDU_DEVICE": "cpu", "IPYKERNEL_CELL_NAME": "<IPY-INPUT>", "PYTHONHASHSEED": "0",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


# ---------------------------------------------------------------------------------------------
# Reading exercises out of a notebook


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def regions(source: str, begin: str, end: str) -> list[list[str]]:
    """The lines strictly between each ``begin`` / ``end`` marker pair."""
    found, current = [], None
    for line in source.split("\n"):
        if begin in line:
            current = []
        elif end in line and current is not None:
            found.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return found


def solution_regions(source: str) -> list[list[str]]:
    return regions(source, "BEGIN SOLUTION", "END SOLUTION")


def hidden_regions(source: str) -> list[list[str]]:
    return regions(source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def strip_regions(source: str, begin: str, end: str) -> list[str]:
    """The lines outside ``begin`` ... ``end`` regions (markers removed)."""
    kept, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif not inside:
            kept.append(line)
    return kept


@dataclass(frozen=True)
class Exercise:
    solution_id: str
    test_id: str
    points: float


def exercises(nb) -> list[Exercise]:
    """Each solution cell with the autograded test cell that follows it (CONTRIBUTING.md)."""
    found, pending = [], None
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            pending = meta["grade_id"]
        elif meta.get("grade") and pending is not None:
            found.append(Exercise(pending, meta["grade_id"], float(meta["points"])))
            pending = None
    return found


def total_points(nb) -> float:
    return sum(float(nbgrader_meta(c)["points"]) for c in nb.cells if nbgrader_meta(c).get("grade"))


def insert_solutions(student_source: str, instructor_source: str) -> str:
    """What a student who found the answer does: replace each stub with the course's solution."""
    answers = solution_regions(instructor_source)
    lines, out, used, i = student_source.split("\n"), [], 0, 0
    while i < len(lines):
        if lines[i].strip() == STUB[0] and i + 1 < len(lines) and lines[i + 1].strip() == STUB[1]:
            assert used < len(answers), "the student copy has more stubs than the solution has regions"
            out.extend(answers[used])
            used += 1
            i += 2
        else:
            out.append(lines[i])
            i += 1
    assert used == len(answers), f"found {used} stubs for {len(answers)} solution regions"
    return "\n".join(out)


def partial_plan(notebooks: dict[str, nbformat.NotebookNode]) -> dict[str, set[str]]:
    """Which solution cells the ``partial`` student answers: in the first two chapters with at least
    two exercises, the 1st, 3rd, ... exercise of one and the 2nd, 4th, ... of the other (so a
    later exercise is solved while an earlier one is not). With no such chapter: the chapter with
    the most exercises, its 1st, 3rd, ... exercise."""
    many = [name for name, nb in notebooks.items() if len(exercises(nb)) >= 2][:2]
    if not many:
        many = [max(notebooks, key=lambda name: len(exercises(notebooks[name])))]
    plan = {}
    for parity, name in enumerate(many):
        plan[name] = {ex.solution_id for k, ex in enumerate(exercises(notebooks[name])) if k % 2 == parity}
    return plan


# ---------------------------------------------------------------------------------------------
# The classroom: one temporary course directory, graded once


@dataclass
class Classroom:
    base: Path
    course: Path
    instructor: dict[str, nbformat.NotebookNode]  # assignment id -> instructor notebook
    student: dict[str, nbformat.NotebookNode]  # assignment id -> released student copy
    plan: dict[str, set[str]]  # partial submission: assignment id -> solution ids answered
    grades: dict[tuple[str, str], dict[str, str]]  # (student, assignment) -> export CSV row
    cell_scores: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    chapters: list[str] = field(default_factory=list)  # the chapters graded in this session
    log: str = ""

    def autograded(self, student: str, name: str) -> nbformat.NotebookNode:
        return nbformat.read(self.course / "autograded" / student / name / f"{name}.ipynb", as_version=4)


def grading_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in MAKE_ENV.items():
        env.setdefault(key, value)
    # Only the course's configuration: not an nbgrader_config.py in the user's ~/.jupyter.
    env["JUPYTER_CONFIG_DIR"] = str(base / "jupyter-config")
    return env


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """Run nbgrader's Python API in ``env`` (its gradebook calls the ``alembic`` executable on PATH)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def submit(course: Path, student: str, name: str, nb: nbformat.NotebookNode) -> None:
    folder = course / "submitted" / student / name
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")


def chapters_to_grade(request) -> list[Path]:
    """Every chapter, unless the session selected tests of only some (``-k 01_rank``): then those."""
    names = set()
    for item in request.session.items:  # nbval's notebook cells are items too, without .module or .callspec
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "module", None) is request.module and "name" in params:
            names.add(params["name"])
    return [p for p in CHAPTERS if assignments.assignment_id(p) in names] or CHAPTERS


def sandbox_args() -> list[str]:
    """Grade in the course's sandbox (bubblewrap), as instructors do. Where bwrap cannot run, the round
    trip still runs, without the sandbox, except under CI=true (tests/test_grading.py tests the sandbox)."""
    problem = sandbox.probe()
    if problem is None:
        return []
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the assignment round trip cannot run under CI=true: {problem}", pytrace=False)
    return ["--SandboxKernelManager.sandbox=off"]


@pytest.fixture(scope="module")
def classroom(tmp_path_factory, request) -> Classroom:
    if not CHAPTERS:
        pytest.skip("no chapter notebooks in notebooks/")
    chapters = chapters_to_grade(request)
    base = tmp_path_factory.mktemp("classroom")
    course = base / "course"
    course.mkdir()
    for name in COURSE_FILES:  # the repository's course directory, as an instructor has it
        shutil.copyfile(ROOT / "course" / name, course / name)
    env = grading_env(base)
    env = assignments.nbgrader_env(env)

    ids = assignments.prepare_source(course, chapters)
    log = assignments.generate_student_copies(course, env)
    instructor = {n: nbformat.read(course / "source" / n / f"{n}.ipynb", as_version=4) for n in ids}
    student = {n: nbformat.read(base / "student" / n / f"{n}.ipynb", as_version=4) for n in ids}

    plan = partial_plan(instructor)
    for name in ids:
        submit(course, "instructor", name, instructor[name])
    for name, answered in plan.items():
        nb = nbformat.from_dict(student[name])
        for cell, original in zip(nb.cells, instructor[name].cells):
            if nbgrader_meta(cell).get("grade_id") in answered:
                cell.source = insert_solutions(cell.source, original.source)
        submit(course, "partial", name, nb)

    proc = assignments.run_nbgrader(["autograde", assignments.ASSIGNMENT_GLOB, *sandbox_args()], course, env, check=False)
    log += proc.stdout + proc.stderr
    if proc.returncode != 0 or "ERROR" in log:
        errors = "\n".join(line for line in log.splitlines() if "ERROR" in line)
        pytest.fail(f"nbgrader autograde failed (exit code {proc.returncode}):\n{errors}\n...\n{log[-3000:]}")
    csv_path = base / "grades.csv"
    assignments.run_nbgrader(["export", "--to", str(csv_path)], course, env)
    with csv_path.open(newline="") as fh:
        grades = {(row["student_id"], row["assignment"]): row for row in csv.DictReader(fh)}

    from nbgrader.api import Gradebook, MissingEntry

    scores = {}
    with environment(env), Gradebook(f"sqlite:///{course / 'gradebook.db'}", "rank-to-lora") as gb:
        for (who, name) in grades:
            try:
                notebook = gb.find_submission_notebook(name, name, who)
            except MissingEntry:  # export lists every student for every assignment
                continue
            scores[who, name] = {g.name: g.score for g in notebook.grades}
    return Classroom(base, course, instructor, student, plan, grades, scores, [p.stem for p in chapters], log)


# ---------------------------------------------------------------------------------------------
# The custom preprocessor and the configuration (no notebook runs)


def tiny_notebook() -> nbformat.NotebookNode:
    cells = [nbauthor.md("# tiny"),
             nbauthor.code("x = 1", **{"jupyter": {"source_hidden": True}}),  # folded, but not an exercise
             nbauthor.solution("y = None\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION", "ch99-y"),
             nbauthor.tests("assert y == 2", "ch99-y-test"),
             nbauthor.solution("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION", "ch99-f", hidden=False)]
    cells[2].metadata["jupyter"]["outputs_hidden"] = True
    cells[2].metadata["tags"] = ["keep-me"]
    return nbformat.v4.new_notebook(cells=cells)


def test_show_solution_cells_unfolds_solution_cells_only():
    nb = tiny_notebook()
    assert nb.cells[2].metadata["jupyter"]["source_hidden"] is True
    out, _ = ShowSolutionCells().preprocess(nb, {})
    assert "jupyter" not in out.cells[2].metadata, "the solution cell should be unfolded (source and outputs)"
    assert out.cells[2].metadata["tags"] == ["keep-me"] and out.cells[2].metadata["nbgrader"]["solution"]
    assert out.cells[1].metadata["jupyter"] == {"source_hidden": True}, "a non-exercise folded cell stays folded"
    assert "jupyter" not in out.cells[3].metadata and "jupyter" not in out.cells[4].metadata
    assert [c.source for c in out.cells] == [c.source for c in tiny_notebook().cells], "sources are not its business"


def test_show_solution_cells_keeps_other_view_settings_and_can_be_disabled():
    nb = tiny_notebook()
    nb.cells[2].metadata["jupyter"]["some_future_key"] = 1
    out, _ = ShowSolutionCells().preprocess(nb, {})
    assert out.cells[2].metadata["jupyter"] == {"some_future_key": 1}

    nb = tiny_notebook()
    out, _ = ShowSolutionCells(enabled=False)(nb, {})  # nbconvert skips a disabled preprocessor
    assert out.cells[2].metadata["jupyter"]["source_hidden"] is True


def load_course_config():
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("nbgrader_config.py", path=str(ROOT / "course")).load_config()


def test_course_config_runs_nbgrader_pipeline_plus_show_solutions():
    from nbgrader.converters import GenerateAssignment
    from nbgrader.preprocessors import ClearSolutions

    cfg = load_course_config()
    steps = cfg.GenerateAssignment.preprocessors
    default = GenerateAssignment.class_traits()["preprocessors"].default()
    assert [s for s in steps if s is not ShowSolutionCells] == default, "nbgrader's own steps must all stay"
    assert [s.__name__ for s in steps].count("ShowSolutionCells") == 1
    assert steps.index(ClearSolutions) + 1 == [s.__name__ for s in steps].index("ShowSolutionCells")
    assert Path(cfg.CourseDirectory.root) == ROOT / "course"
    assert Path(cfg.CourseDirectory.release_directory) == ROOT / "student"
    assert cfg.CourseDirectory.course_id == "rank-to-lora"


def test_course_config_autogrades_with_grade_execute():
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    cfg = load_course_config()
    steps = cfg.Autograde.autograde_preprocessors
    default = Autograde.class_traits()["autograde_preprocessors"].default()
    assert [GradeExecute if s is Execute else s for s in default] == [
        GradeExecute if s.__name__ == "GradeExecute" else s for s in steps], "nbgrader's other steps all stay"
    executor = GradeExecute(config=cfg)
    assert executor.timeout == cfg.GradeExecute.timeout and executor.allow_errors, "Execute's settings apply"
    assert issubclass(GradeExecute, SteadyExecute), "it waits for kernel messages in short slices"
    assert SteadyExecute.start_new_kernel_client is not Execute.start_new_kernel_client


class FakeSocket:
    """A socket whose poll misses a waiting message ``misses`` times, then sees it."""

    def __init__(self, misses: int, message: bool = True):
        self.misses, self.message, self.polls = misses, message, []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        if not self.message:
            await asyncio.sleep(timeout_ms / 1000)
            return 0
        if self.misses:
            self.misses -= 1
            return 0
        return 1


class FakeChannel:
    def __init__(self, socket):
        self.socket = socket

    async def _recv(self):
        return {"msg_type": "execute_reply"}


def test_sliced_get_msg_finds_a_message_a_poll_missed():
    socket = FakeSocket(misses=2)
    msg = asyncio.run(sliced_get_msg(FakeChannel(socket), timeout=600, interval=0.5))
    assert msg == {"msg_type": "execute_reply"}
    assert socket.polls == [500, 500, 500], "three short polls, not one of 600 s"
    socket = FakeSocket(misses=1)
    assert asyncio.run(sliced_get_msg(FakeChannel(socket), timeout=None, interval=0.25))
    assert socket.polls == [250, 250]


def test_sliced_get_msg_still_times_out():
    socket = FakeSocket(misses=0, message=False)
    with pytest.raises(Empty):
        asyncio.run(sliced_get_msg(FakeChannel(socket), timeout=0.05, interval=0.02))
    assert len(socket.polls) >= 2 and max(socket.polls) <= 20
    with pytest.raises(ValueError, match="interval"):
        asyncio.run(sliced_get_msg(FakeChannel(socket), timeout=1, interval=0))


def test_prepare_source_copies_every_chapter_and_drops_stale_ones(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in ("00_welcome", "01_rank", "draft", "1_bad"):
        (notebooks / f"{name}.ipynb").write_text(name)
    course = tmp_path / "course"
    (course / "source" / "05_renamed").mkdir(parents=True)
    (course / "source" / "my_own_exam").mkdir()
    (course / "source" / "01_rank").mkdir()
    (course / "source" / "01_rank" / "old_name.ipynb").write_text("old")

    found = assignments.chapter_notebooks(notebooks)
    assert [p.name for p in found] == ["00_welcome.ipynb", "01_rank.ipynb"]
    assert assignments.prepare_source(course, found) == ["00_welcome", "01_rank"]
    source = course / "source"
    assert sorted(p.name for p in source.iterdir()) == ["00_welcome", "01_rank", "my_own_exam"]
    assert [p.name for p in (source / "01_rank").iterdir()] == ["01_rank.ipynb"]
    assert (source / "00_welcome" / "00_welcome.ipynb").read_text() == "00_welcome"


def test_makefile_student_target_runs_the_assignment_tool():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^student: venv\n\t\$\(BIN\)/python tools/assignments.py", makefile, re.M)


# ---------------------------------------------------------------------------------------------
# The round trip (slow: runs every chapter through nbgrader)

by_chapter = pytest.mark.parametrize("name", CHAPTER_IDS)


@pytest.mark.slow
def test_every_chapter_is_an_assignment_with_a_student_copy(classroom):
    expected_ids = classroom.chapters  # all of CHAPTER_IDS unless `-k` picked some chapters
    released = sorted(p.relative_to(classroom.base / "student").as_posix()
                      for p in (classroom.base / "student").glob("*/*.ipynb"))
    assert released == [f"{name}/{name}.ipynb" for name in expected_ids]
    from nbgrader.api import Gradebook

    with environment(assignments.nbgrader_env(grading_env(classroom.base))), \
            Gradebook(f"sqlite:///{classroom.course / 'gradebook.db'}", "rank-to-lora") as gb:
        assert sorted(a.name for a in gb.assignments) == expected_ids
        for name in expected_ids:
            graded = sorted(c.name for c in gb.find_notebook(name, name).grade_cells)
            expected = sorted(nbgrader_meta(c)["grade_id"] for c in classroom.instructor[name].cells
                              if nbgrader_meta(c).get("grade"))
            assert graded == expected


@pytest.mark.slow
@by_chapter
def test_student_copy_has_no_solution_code_and_no_hidden_tests(classroom, name):
    teacher, copy = classroom.instructor[name], classroom.student[name]
    secret_solution, secret_tests, public = set(), set(), set()
    for cell in teacher.cells:
        for region in solution_regions(cell.source):
            secret_solution |= {line.strip() for line in region}
        for region in hidden_regions(cell.source):
            secret_tests |= {line.strip() for line in region}
        outside = strip_regions(cell.source, "BEGIN SOLUTION", "END SOLUTION")
        outside = strip_regions("\n".join(outside), "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
        public |= {line.strip() for line in outside}
    assert secret_solution, f"{name} has no solution code to hide"
    # A line is secret if it appears only inside solution / hidden-test regions of the instructor notebook.
    secret_solution -= public | {""}
    secret_tests -= public | {""}
    student_lines = {line.strip() for cell in copy.cells for line in cell.source.split("\n")}
    assert not secret_solution & student_lines, f"solution code in the student copy: {secret_solution & student_lines}"
    assert not secret_tests & student_lines, f"hidden tests in the student copy: {secret_tests & student_lines}"
    text = nbformat.writes(copy)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
        assert marker not in text
    # Stored outputs would give answers away too (the instructor's hidden tests print what they checked).
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in copy.cells if c.cell_type == "code")


@pytest.mark.slow
@by_chapter
def test_student_copy_keeps_the_chapter_and_unfolds_each_stub(classroom, name):
    teacher, copy = classroom.instructor[name], classroom.student[name]
    assert len(copy.cells) == len(teacher.cells)
    for mine, theirs in zip(copy.cells, teacher.cells):
        meta = nbgrader_meta(theirs)
        if meta.get("solution"):
            assert "jupyter" not in mine.metadata or not mine.metadata["jupyter"].get("source_hidden"), \
                f"{meta['grade_id']}: a student must see the stub (jupyter.source_hidden should be gone)"
            assert mine.source.count(STUB[1]) == len(solution_regions(theirs.source)) >= 1
            kept = strip_regions(theirs.source, "BEGIN SOLUTION", "END SOLUTION")
            assert [line for line in mine.source.split("\n") if line.strip() not in STUB] == kept, \
                "everything outside the solution markers (e.g. `x = None`, the def line) must stay"
        elif meta.get("grade"):
            assert mine.metadata["editable"] is False and mine.metadata["deletable"] is False, "test cells are locked"
            assert mine.source.split("\n") == strip_regions(theirs.source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
            assert re.search(r"\bcheck_\w+\(", mine.source), "the visible test calls a check: feedback for students"
        else:
            assert mine.source == theirs.source
            assert mine.metadata.get("jupyter") == theirs.metadata.get("jupyter")


@pytest.mark.slow
@by_chapter
def test_instructor_notebook_gets_full_points(classroom, name):
    teacher = classroom.instructor[name]
    row = classroom.grades["instructor", name]
    assert float(row["max_score"]) == total_points(teacher) > 0
    assert float(row["score"]) == float(row["max_score"]), f"instructor version of {name}: {row}"
    for ex in exercises(teacher):
        assert classroom.cell_scores["instructor", name][ex.test_id] == ex.points
    graded = classroom.autograded("instructor", name)
    errors = [(c.metadata.get("nbgrader", {}).get("grade_id", i), o.ename)
              for i, c in enumerate(graded.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, f"the instructor version of {name} raised errors under autograde: {errors}"


@pytest.mark.slow
def test_unanswered_exercises_score_zero_and_only_their_cells_fail(classroom):
    assert classroom.plan
    for name, answered in classroom.plan.items():
        graded = classroom.autograded("partial", name)
        assert len(graded.cells) == len(classroom.instructor[name].cells)
        unanswered = {ex.test_id for ex in exercises(classroom.instructor[name]) if ex.solution_id not in answered}
        assert unanswered, f"{name}: the plan leaves no exercise unanswered"
        for index, cell in enumerate(graded.cells):
            if cell.cell_type != "code":
                continue
            meta = nbgrader_meta(cell)
            errors = [o for o in cell.outputs if o.output_type == "error"]
            label = f"{name} " + meta.get("grade_id", f"cell {index}: {cell.source[:60]!r}")
            if meta.get("grade") and meta["grade_id"] in unanswered:
                assert errors, f"test cell {label} passes with its exercise unanswered"
                assert errors[0].ename in FAILURES, \
                    f"test cell {label} should fail with NotImplementedError or a check's Feedback, not " \
                    f"{errors[0].ename}: {errors[0].evalue}"
                assert classroom.cell_scores["partial", name][meta["grade_id"]] == 0
            elif meta.get("solution") and meta["grade_id"] not in answered:
                assert all(e.ename == "NotImplementedError" for e in errors), f"{label}: {[e.ename for e in errors]}"
            else:
                assert not errors, f"{label} fails in the partly solved copy ({errors[0].ename}: " \
                                   f"{errors[0].evalue}) — does it use a learner's answer?"


@pytest.mark.slow
def test_partly_solved_copy_gets_exactly_the_solved_exercises_points(classroom):
    assert classroom.plan
    for name, answered in classroom.plan.items():
        expected = {ex.test_id: (ex.points if ex.solution_id in answered else 0.0)
                    for ex in exercises(classroom.instructor[name])}
        got = {test_id: classroom.cell_scores["partial", name][test_id] for test_id in expected}
        assert got == expected, f"{name}: answered {sorted(answered)}"
        assert float(classroom.grades["partial", name]["score"]) == sum(expected.values())
    assert {who for who, _ in classroom.grades} == {"instructor", "partial"}
