"""``make grade A=01_rank``: grade every submission of one assignment in one command, safely.

What it runs::

    python tools/grade.py 01_rank [--student alice] [--force] [--cell-timeout S] [--notebook-timeout S]
    python tools/grade.py --time-cells [notebooks/06_lora_finetuning.ipynb ...]   # measure, grade nothing

For each folder ``course/submitted/<student>/<assignment>/`` (README, "For instructors"):

1. **find and read the notebook**: ``<assignment>.ipynb``, or the one notebook there under another
   name; none, several, a link, an oversized or unreadable file (not JSON, not a notebook) ends
   that submission with a score of 0 and a message saying why and what to do;
2. **rebuild it on the course's version** (``course/source/``): only the student's exercise
   (solution) cells are taken, found by their nbgrader id, else by their cell id, else by their
   first line; every other cell is the course's own, so deleted or edited test cells, changed
   cell ids or nbgrader metadata and a workbook-mode setup cell change nothing. Cells the student
   added are kept as ordinary cells. Extra files in the folder are not used. What was found goes
   into a "Grading notes" cell at the top of the graded notebook;
3. **autograde** the rebuilt copy (staged in a temporary folder: nothing in ``course/submitted/``
   is ever written) with nbgrader's autograde (``--force``), one student at a time, in this process,
   with the course's configuration: a sandboxed kernel, time limits and output caps
   (``course/nbgrader_config.py``);
4. **read back** each exercise's score (gradebook) and what happened to it (the graded notebook);
5. then **feedback** for everyone (``nbgrader generate_feedback``, or a short page when nothing
   could be run), the **exports** (``course/grades.csv`` from ``nbgrader export``,
   ``course/grades_by_question.csv`` and ``course/grades_lms.csv``), and a **summary**: graded,
   timed out, failed, with names, and code worth a look.

A submission graded before, whose file, course version and limits have not changed since, is not
run again (``--force`` re-runs it): re-running ``make grade`` gives the same grades.
The record of every grading is ``course/grading/<assignment>.json``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import hashlib
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "course"))
from nbgrader_plugins import NOTES_TAG, STOPPED_ERRORS, TIME_LIMIT_ERRORS  # noqa: E402
from tools import assignments  # noqa: E402

COURSE = ROOT / "course"
MAX_NOTEBOOK_BYTES = 50 * 1024 ** 2  # a course notebook with outputs is under 1 MB
# Student ids and assignment ids become nbgrader arguments, which nbgrader reads as file globs.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")
# The environment that `make` exports to the notebooks (as for `make notebooks` and nbval).
MAKE_ENV = {"LORA_EDU_DEVICE": "cpu", "IPYKERNEL_CELL_NAME": "<IPY-INPUT>", "PYTHONHASHSEED": "0",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
# Code in a submission that an instructor may want to read: nothing here is forbidden, and honest
# work rarely needs it (flags only; they change no score).
REVIEW_PATTERNS = {
    "get_ipython": r"\bget_ipython\b",
    "set_mode / workbook mode": r"\bset_mode\b|workbook\s*=\s*True",
    "changes lora_edu": r"lora_edu[\w.]*\.\w+\s*=[^=]|\bsetattr\s*\(\s*(lora_edu|checks)",
    "sys.modules / builtins": r"\bsys\.modules\b|\bbuiltins\b|__builtins__",
    "os._exit / signal": r"\bos\._exit\b|\bsignal\.\w+\(",
    "subprocess / os.system": r"\bsubprocess\b|\bos\.(system|popen|exec\w*|fork)\b",
    "ctypes": r"\bctypes\b",
    "network": r"\bsocket\b|\burllib\b|\brequests\.|\bhttp\.client\b",
    "files by absolute path": r"""open\(\s*[rbf]*['"](/|\.\./)|Path\(\s*['"]/""",
    "exec / eval": r"\b(exec|eval|compile)\s*\(",
}


# ---------------------------------------------------------------------------------------------
# 1. Finding and reading a submission


@dataclass
class Found:
    """What is in one submission folder: the notebook to grade (or why there is none)."""
    path: Path | None
    problem: str = ""  # why nothing can be graded (the student's message)
    notes: list[str] = field(default_factory=list)  # what else was there


def find_notebook(folder: Path, assignment: str) -> Found:
    """The notebook to grade in ``folder``: ``<assignment>.ipynb``, else the only notebook there (at any
    depth). Links are never followed, hidden files and folders (``.ipynb_checkpoints``) are skipped."""
    expected = f"{assignment}.ipynb"
    notebooks, others, links = [], [], []
    for here, dirs, files in os.walk(folder, followlinks=False):
        rel = Path(here).relative_to(folder)
        links += [shown(str(rel / d)) for d in dirs if os.path.islink(os.path.join(here, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(here, d)))
        for name in sorted(files):
            path = Path(here) / name
            if name.startswith(".") or (name == "timestamp.txt" and rel == Path(".")):
                continue
            if path.is_symlink():
                links.append(shown(str(rel / name)))
            elif name.endswith(".ipynb"):
                notebooks.append(path)
            else:
                others.append(shown(str(rel / name)))
    notes = []
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        notes.append(f"Only the notebook is graded: the other files you handed in were not used ({listed}).")
    if links:
        notes.append(f"Links are not followed: {', '.join(links[:5])} {'was' if len(links) == 1 else 'were'} not used.")
    top = folder / expected
    if top in notebooks:
        if len(notebooks) > 1:
            notes.append(f"Graded `{expected}`; the other notebooks in your folder were not "
                         f"({', '.join(shown(str(p.relative_to(folder))) for p in notebooks if p != top)}).")
        return Found(top, notes=notes)
    if len(notebooks) == 1:
        notes.insert(0, f"Your notebook is named `{shown(str(notebooks[0].relative_to(folder)))}`, not `{expected}`: "
                        "it was graded all the same. Keep the name you were given next time.")
        return Found(notebooks[0], notes=notes)
    if not notebooks:
        link = f" (`{expected}` is a link: hand in the file itself)" if expected in links else ""
        return Found(None, f"No notebook was handed in: the folder has no `{expected}`{link}.", notes)
    names = ", ".join(f"`{shown(str(p.relative_to(folder)))}`" for p in notebooks)
    return Found(None, f"Several notebooks were handed in ({names}) and none is named `{expected}`: "
                       f"hand in one notebook, named `{expected}`.", notes)


def read_submission(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """The notebook in ``path``, or None and the reason, in words for the student."""
    name = shown(path.name)
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        return None, (f"`{name}` is {size / 1024 ** 2:.0f} MB, more than the {MAX_NOTEBOOK_BYTES // 1024 ** 2} MB "
                      "a notebook may have: clear its outputs (Edit → Clear Outputs of All Cells), save, hand it in again.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"`{name}` is not a text file (byte {exc.start} is not UTF-8): is it really a notebook?"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, (f"`{name}` is not a valid notebook: its JSON breaks at line {exc.lineno}, column "
                      f"{exc.colno} ({exc.msg}). It may have been cut short or edited by hand: open your own copy "
                      "in JupyterLab, save it, and hand it in again.")
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        return None, f"`{name}` is JSON, but not a notebook (it has no cells)."
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat's errors for odd versions and structures
        return None, f"`{name}` is not a notebook that Jupyter can read ({type(exc).__name__}: {str(exc)[:200]})."
    if not isinstance(nb.get("cells"), list):
        return None, f"`{name}` is not a notebook that Jupyter can read (its cells are not a list)."
    return nb, ""


# ---------------------------------------------------------------------------------------------
# 2. Rebuilding a submission on the course's version


def _meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def stub_solutions(reference: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The reference notebook as handed out: solutions replaced by nbgrader's stub."""
    from nbgrader.preprocessors import ClearSolutions

    nb, _ = ClearSolutions().preprocess(copy.deepcopy(reference), {})
    return nb


def _signature(stub_source: str) -> str:
    """The first line of a stubbed solution cell that is not the stub (``def f(...):``, ``x = None``)."""
    for line in stub_source.split("\n"):
        if line.strip() and line.strip() not in ("# YOUR CODE HERE", "raise NotImplementedError()") \
                and not line.strip().startswith("#"):
            return line.strip()
    return ""


def rebuild(submission: nbformat.NotebookNode, reference: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The notebook to grade: ``reference`` (the course's version, solutions stubbed) with the student's
    exercise cells and the cells the student added. Returns it and notes for the student.

    Nothing of the submission but cell sources is used: every nbgrader field, cell id, test cell,
    and every cell of the course comes from ``reference``.
    """
    cells = [c for c in submission.get("cells", []) if isinstance(c, dict)]
    used: set[int] = set()
    notes: list[str] = []

    def pick(predicate) -> int | None:
        for k, cell in enumerate(cells):
            if k not in used and predicate(cell):
                return k
        return None

    by_ref: dict[int, int] = {}  # reference index -> submission index
    changed_tests, missing_tests, changed_course = [], [], 0
    for i, ref in enumerate(reference.cells):
        meta, cell_id = _meta(ref), ref.get("id")
        if meta.get("solution"):
            gid = meta["grade_id"]
            k = pick(lambda c: _meta(c).get("grade_id") == gid and c.get("cell_type") == ref.cell_type)
            how = ""
            if k is None and cell_id:
                k = pick(lambda c: c.get("id") == cell_id and c.get("cell_type") == ref.cell_type)
                how = "its cell id"
            signature = _signature(ref.source)
            if k is None and signature:
                k = pick(lambda c: c.get("cell_type") == ref.cell_type and not _meta(c).get("grade")
                         and signature in (line.strip() for line in _source(c).split("\n")))
                how = f"its first line, `{signature}`"
            if k is None:
                notes.append(f"The exercise cell `{gid}` is not in your notebook (deleted, or its nbgrader "
                             "metadata was changed): that exercise was graded as unanswered.")
            else:
                if how:
                    notes.append(f"The exercise cell `{gid}` had lost its nbgrader metadata: it was found by {how}.")
                used.add(k)
                by_ref[i] = k
        elif meta.get("grade") or meta.get("task") or meta.get("locked"):
            gid = meta.get("grade_id")
            texts = (ref.source.strip(), _visible_part(ref.source))
            k = pick(lambda c: gid is not None and _meta(c).get("grade_id") == gid)
            if k is None and cell_id:
                k = pick(lambda c: c.get("id") == cell_id)
            if k is None:
                k = pick(lambda c: _source(c).strip() in texts)
            if k is None:
                missing_tests.append(gid)
            else:
                used.add(k)
                by_ref[i] = k
                if _source(cells[k]).strip() not in texts:
                    changed_tests.append(gid)
        else:
            k = pick(lambda c: cell_id is not None and c.get("id") == cell_id and not _meta(c))
            if k is None:
                k = pick(lambda c: c.get("cell_type") == ref.cell_type and _source(c).strip() == ref.source.strip())
            if k is not None:
                used.add(k)
                by_ref[i] = k
                if _source(cells[k]).strip() != ref.source.strip():
                    changed_course += 1
    if missing_tests:
        notes.append(f"Test cell{'s' if len(missing_tests) > 1 else ''} {', '.join(f'`{g}`' for g in missing_tests)} "
                     "had been deleted: the course's version was put back and graded.")
    if changed_tests:
        notes.append(f"Test cell{'s' if len(changed_tests) > 1 else ''} {', '.join(f'`{g}`' for g in changed_tests)} "
                     "had been changed: the course's version was graded instead.")
    if changed_course:
        notes.append(f"{changed_course} of the course's own cells (not exercises) had been changed: they ran "
                     "as handed out.")

    # The cells the student added, each after the course cell it followed in the submission.
    after: dict[int, list] = {}
    last = -1
    where = {k: i for i, k in by_ref.items()}
    stripped = 0
    for k, cell in enumerate(cells):
        if k in where:
            last = where[k]
            continue
        if cell.get("cell_type") not in ("code", "markdown", "raw"):
            continue
        if _meta(cell):
            stripped += 1
        if cell["cell_type"] == "code":
            new = nbformat.v4.new_code_cell(_source(cell))
        else:  # shown as text: a student's HTML must not reach your browser through feedback or formgrader
            new = nbformat.v4.new_markdown_cell(verbatim(_source(cell)))
        new.metadata["grading_added"] = True
        after.setdefault(last, []).append(new)
    added = sum(len(v) for v in after.values())
    if added:
        notes.append(f"{added} cell{'s' if added > 1 else ''} you added to the notebook ran too, as ordinary "
                     "cells" + (f" ({stripped} had nbgrader metadata, which was removed)." if stripped else "."))

    out = nbformat.v4.new_notebook(metadata=copy.deepcopy(reference.metadata))
    out.cells = list(after.get(-1, []))
    for i, ref in enumerate(reference.cells):
        cell = copy.deepcopy(ref)
        if _meta(ref).get("solution") and i in by_ref:
            cell.source = _source(cells[by_ref[i]])
            if cell.cell_type != "code":  # a written answer: its markdown renders, its HTML does not
                cell.source = cell.source.replace("<", "&lt;").replace(">", "&gt;")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        out.cells.append(cell)
        out.cells.extend(after.get(i, []))
    for n, cell in enumerate(out.cells):  # the same ids on every run: grading is repeatable
        if cell.metadata.get("grading_added"):
            cell["id"] = f"added-{n}"
    if notes:
        out.cells.insert(0, nbformat.v4.new_markdown_cell(
            "**Grading notes**\n\n" + "\n".join(f"- {note}" for note in notes), metadata={NOTES_TAG: True},
            id="grading-notes"))
    return out, notes


def verbatim(text: str) -> str:
    """Markdown that shows ``text`` exactly as written: a fenced block no backtick run in it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def shown(name: str) -> str:
    """A file name from a submission, safe inside the Markdown of a note (no HTML, no backticks)."""
    return re.sub(r"[^\w .,()+=/-]", "?", name)[:120]


def _visible_part(source: str) -> str:
    """A test cell as students see it: the hidden tests removed (what nbgrader's release does)."""
    kept, hidden = [], False
    for line in source.split("\n"):
        if "BEGIN HIDDEN TESTS" in line:
            hidden = True
        elif "END HIDDEN TESTS" in line:
            hidden = False
        elif not hidden:
            kept.append(line)
    return "\n".join(kept).strip()


def review_flags(nb: nbformat.NotebookNode) -> list[str]:
    """Which of :data:`REVIEW_PATTERNS` the student's own cells (exercises, added cells) contain."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code"
                     and (_meta(c).get("solution") or c.metadata.get("grading_added")))
    return [name for name, pattern in REVIEW_PATTERNS.items() if re.search(pattern, code)]


# ---------------------------------------------------------------------------------------------
# 3-4. Running nbgrader, reading back the grades


@dataclass
class Limits:
    cell: int
    notebook: int
    sandbox: bool


def course_limits(course: Path) -> tuple[int, int]:
    """The per-cell and per-notebook time limits that ``course/nbgrader_config.py`` sets."""
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    return int(cfg.GradeExecute.timeout), int(cfg.GradeExecute.notebook_timeout)


def grading_env() -> dict[str, str]:
    env = assignments.nbgrader_env()
    for key, value in MAKE_ENV.items():
        env.setdefault(key, value)
    return env


def gradebook(course: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{course / 'gradebook.db'}", "rank-to-lora")


def submission_scores(course: Path, assignment: str, student: str) -> dict[str, tuple[float | None, float]] | None:
    """{grade id: (score, max score)} of a student's submission in the gradebook; None if there is none."""
    from nbgrader.api import MissingEntry

    with gradebook(course) as gb:
        try:
            submission = gb.find_submission(assignment, student)
        except MissingEntry:
            return None
        return {g.name: (g.score, g.max_score) for nb in submission.notebooks for g in nb.grades}


def record_zero(course: Path, assignment: str, student: str) -> None:
    """Give every exercise of a submission that could not run a score of 0 (manual grades stay)."""
    with gradebook(course) as gb:
        gb.update_or_create_student(student)
        submission = gb.update_or_create_submission(assignment, student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                grade.auto_score = 0.0
                grade.needs_manual_grade = False
        gb.db.commit()


def _errors(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def _first_line(error: dict) -> str:
    value = str(error.get("evalue", "")).strip().split("\n")[0]
    return f"{error.get('ename')}: {value}"[:300] if value else str(error.get("ename"))


def question_results(graded: nbformat.NotebookNode, scores: dict) -> list[dict]:
    """One row per autograded test cell: its score and what happened (status, detail)."""
    rows, solution = [], None
    for cell in graded.cells:
        meta = _meta(cell)
        if meta.get("solution") and not meta.get("grade"):
            solution = cell
        if not meta.get("grade"):
            continue
        gid = meta["grade_id"]
        score, top = scores.get(gid, (None, float(meta.get("points", 0))))
        errors, before = _errors(cell), _errors(solution) if solution is not None else []
        names = {e.get("ename") for e in errors + before}
        stopped = [e for e in before + errors if e.get("ename") in TIME_LIMIT_ERRORS + STOPPED_ERRORS]
        if names & set(TIME_LIMIT_ERRORS):
            status = "timed out"
        elif stopped:
            status = "not run" if stopped[0].get("ename") == "NotRun" else "kernel died"
        elif score is not None and top and score >= top:
            status = "correct"
        elif errors and errors[0].get("ename") in ("NotAnswered", "NotImplementedError"):
            status = "not answered"
        elif errors and errors[0].get("ename") in ("Feedback", "AssertionError"):
            status = "wrong"
        elif errors:
            status = "error"
        elif any(o.get("output_type") == "stream" and o.get("name") == "stderr" for o in cell.get("outputs", [])):
            status = "wrote to stderr"
        elif score is None:
            status = "needs manual grading"
        else:
            status = "partial"
        detail = _first_line(stopped[0]) if stopped else _first_line(errors[0]) if errors else ""
        rows.append({"grade_id": gid, "score": score, "max_score": top, "status": status, "detail": detail})
        solution = None
    return rows


class Nbgrader:
    """nbgrader's own autograde, feedback and export, run in this process with the course's
    configuration (``nbgrader_config.py``) and the limits of this run: one start-up for the batch."""

    def __init__(self, course: Path, limits: Limits, staged: Path):
        import logging

        from nbgrader.apps.api import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory
        from traitlets.config.loader import PyFileConfigLoader

        cfg = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
        cfg.CourseDirectory.root = str(course)
        cfg.CourseDirectory.submitted_directory = str(staged)  # the rebuilt copies, never course/submitted
        cfg.GradeExecute.timeout, cfg.GradeExecute.notebook_timeout = limits.cell, limits.notebook
        if not limits.sandbox:
            cfg.SandboxKernelManager.sandbox = "off"
        self.log = logging.getLogger("make-grade.nbgrader")
        self.log.propagate = False  # nbgrader's log goes to each result, not over the progress bar
        self.log.setLevel(logging.INFO)
        self.api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
        self.api.log = self.log
        self.config = cfg

    @staticmethod
    def _checked(result: dict) -> dict:
        if "KeyboardInterrupt" in result.get("error", "").strip().split("\n")[-1]:
            raise KeyboardInterrupt  # nbgrader's capture_log catches everything, Ctrl-C included
        return result

    def autograde(self, assignment: str, student: str) -> tuple[bool, str]:
        """``nbgrader autograde --force`` of one staged submission: (success, the log's ERROR lines)."""
        result = self._checked(self.api.autograde(assignment, student, force=True, create=True))
        text = result.get("log", "") + "\n" + result.get("error", "")
        errors = [line for line in text.splitlines() if line.startswith("[ERROR]") or re.match(r"^\w+Error:", line)]
        return bool(result.get("success")), "\n".join(errors[-12:])

    def feedback(self, assignment: str) -> str:
        """``nbgrader generate_feedback --force`` for every graded notebook of ``assignment``: its errors."""
        result = self._checked(self.api.generate_feedback(assignment, force=True))
        return "" if result.get("success") else result.get("log", "") + result.get("error", "")

    def export(self, path: Path) -> None:
        """What ``nbgrader export`` writes: one row per student and assignment."""
        from nbgrader.plugins import CsvExportPlugin

        with gradebook(Path(self.api.coursedir.root)) as gb:
            CsvExportPlugin(config=self.config, to=str(path)).export(gb)


# ---------------------------------------------------------------------------------------------
# Grading one submission


@dataclass
class Result:
    student: str
    outcome: str  # "graded", "timed out" or "failed"
    score: float = 0.0
    max_score: float = 0.0
    message: str = ""  # one line for the summary
    notes: list[str] = field(default_factory=list)
    questions: list[dict] = field(default_factory=list)
    review: list[str] = field(default_factory=list)
    seconds: float = 0.0
    fingerprint: str = ""
    graded_at: str = ""
    notebook: str = ""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(folder: Path, base: str) -> str:
    """What a submission folder holds (names, sizes, times; the notebooks' content), plus ``base``
    (the chapter version and the limits): equal fingerprints grade to equal results."""
    digest = hashlib.sha256(base.encode())
    for here, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(here) / name
            info = path.lstat()
            digest.update(f"{path.relative_to(folder)}:{info.st_size}:{info.st_mtime_ns}:{info.st_mode}".encode())
            if name.endswith(".ipynb") and path.is_file() and not path.is_symlink():
                digest.update(_sha(path).encode())
    return digest.hexdigest()


def _max_points(course: Path, assignment: str) -> tuple[float, list[tuple[str, float]]]:
    with gradebook(course) as gb:
        cells = [(c.name, float(c.max_score)) for nb in gb.find_assignment(assignment).notebooks for c in nb.grade_cells]
    return sum(p for _, p in cells), cells


def grade_one(course: Path, assignment: str, student: str, reference: nbformat.NotebookNode,
              staging: Path, nbgrader: Nbgrader, fingerprint_base: str) -> Result:
    started = time.monotonic()
    total, cells = _max_points(course, assignment)
    result = Result(student, "failed", 0.0, total, graded_at=datetime.datetime.now().isoformat(timespec="seconds"))
    folder = course / "submitted" / student / assignment
    autograded = course / "autograded" / student / assignment
    zero_rows = [{"grade_id": g, "score": 0.0, "max_score": p, "status": "missing", "detail": ""} for g, p in cells]

    def fail(message: str, status: str = "missing") -> Result:
        shutil.rmtree(autograded, ignore_errors=True)  # no stale graded copy of an older submission
        record_zero(course, assignment, student)
        result.outcome, result.message = "failed", message
        result.questions = [{**row, "status": status, "detail": message[:300]} for row in zero_rows]
        result.seconds = time.monotonic() - started
        return result

    result.fingerprint = fingerprint(folder, fingerprint_base)
    found = find_notebook(folder, assignment)
    result.notes = list(found.notes)
    if found.path is None:
        return fail(found.problem)
    result.notebook = str(found.path.relative_to(folder))
    nb, problem = read_submission(found.path)
    if nb is None:
        return fail(problem, status="invalid")
    rebuilt, notes = rebuild(nb, reference)
    result.notes = result.notes + notes
    if found.notes:  # the folder's notes belong in the graded notebook too
        if rebuilt.cells and rebuilt.cells[0].metadata.get(NOTES_TAG):
            rebuilt.cells[0].source += "\n" + "\n".join(f"- {n}" for n in found.notes)
        else:
            rebuilt.cells.insert(0, nbformat.v4.new_markdown_cell(
                "**Grading notes**\n\n" + "\n".join(f"- {n}" for n in found.notes), metadata={NOTES_TAG: True},
                id="grading-notes"))
    result.review = review_flags(rebuilt)

    stage = staging / student / assignment
    stage.mkdir(parents=True, exist_ok=True)
    nbformat.write(rebuilt, stage / f"{assignment}.ipynb")
    stamp = folder / "timestamp.txt"
    if stamp.is_file() and not stamp.is_symlink() and stamp.stat().st_size < 1000:
        shutil.copyfile(stamp, stage / "timestamp.txt")
    success, errors = nbgrader.autograde(assignment, student)
    shutil.rmtree(stage, ignore_errors=True)
    graded_path = autograded / f"{assignment}.ipynb"
    scores = submission_scores(course, assignment, student) or {}
    if not success or not graded_path.exists() or not scores:
        result.fingerprint = ""  # the grader's failure, not the submission's: try again next time
        why = errors.strip().splitlines()[-1] if errors.strip() else "no graded notebook"
        return fail(f"This notebook could not be graded: nbgrader stopped with an error ({why[:300]}). "
                    "The instructor has the log.", status="error")

    graded = nbformat.read(graded_path, as_version=4)
    result.questions = question_results(graded, scores)
    result.score = sum(float(q["score"] or 0) for q in result.questions)
    statuses = [q["status"] for q in result.questions]
    notes_cell = next((c for c in graded.cells if c.cell_type == "markdown" and c.metadata.get(NOTES_TAG)), None)
    stopped = [e for c in graded.cells for e in _errors(c) if e.get("ename") in TIME_LIMIT_ERRORS + ("DeadKernelError",)]
    if any(e.get("ename") in TIME_LIMIT_ERRORS for e in stopped):
        result.outcome = "timed out"
    elif stopped:
        result.outcome = "failed"
    else:
        result.outcome = "graded"
    if stopped:
        result.message = _first_line(stopped[0])
    else:
        result.message = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    if notes_cell is not None:
        result.notes = [line[2:] for line in notes_cell.source.split("\n") if line.startswith("- ")]
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------
# 5. Feedback, exports, summary


def failure_page(student: str, assignment: str, result: Result) -> str:
    """The feedback page of a submission that could not be run."""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(assignment)}: feedback for "
            f"{html.escape(student)}</title></head><body style='font-family: sans-serif; max-width: 50em'>"
            f"<h1>{html.escape(assignment)}</h1><p><b>Score: {result.score:g} / {result.max_score:g}</b></p>"
            f"<p>{html.escape(result.message)}</p>" + (f"<ul>{notes}</ul>" if notes else "") + "</body></html>\n")


def write_feedback(course: Path, assignment: str, results: list[Result], nbgrader: Nbgrader) -> str:
    """nbgrader's feedback for every graded notebook of ``assignment``; a short page for the others."""
    errors = nbgrader.feedback(assignment)
    for result in results:
        if not (course / "autograded" / result.student / assignment / f"{assignment}.ipynb").exists():
            folder = course / "feedback" / result.student / assignment
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            (folder / f"{assignment}.html").write_text(failure_page(result.student, assignment, result), encoding="utf-8")
    return errors


def load_records(course: Path) -> dict[str, dict]:
    """Every assignment's grading record: {assignment: {"students": {student: record}, ...}}."""
    records = {}
    for path in sorted((course / "grading").glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
    return records


def save_record(course: Path, assignment: str, limits: Limits, results: dict[str, Result]) -> None:
    folder = course / "grading"
    folder.mkdir(exist_ok=True)
    data = {"assignment": assignment,
            "limits": {"cell_seconds": limits.cell, "notebook_seconds": limits.notebook, "sandbox": limits.sandbox},
            "students": {s: asdict(r) for s, r in sorted(results.items())}}
    tmp = folder / f".{assignment}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(folder / f"{assignment}.json")


def write_exports(course: Path) -> tuple[Path, Path]:
    """``grades_by_question.csv`` (one row per student × exercise) and ``grades_lms.csv`` (one row per
    student, one column per assignment), from the gradebook and the grading records."""
    from nbgrader.api import MissingEntry

    records = load_records(course)
    by_question, totals = [], {}
    with gradebook(course) as gb:
        names = sorted(a.name for a in gb.assignments)
        students = sorted(s.id for s in gb.students)
        for assignment in names:
            status = {s: {q["grade_id"]: q for q in r.get("questions", [])}
                      for s, r in records.get(assignment, {}).get("students", {}).items()}
            for student in students:
                try:
                    submission = gb.find_submission(assignment, student)
                except MissingEntry:
                    continue
                totals[student, assignment] = submission.score
                for notebook in submission.notebooks:
                    for grade in sorted(notebook.grades, key=lambda g: g.cell.name if g.cell else g.name):
                        q = status.get(student, {}).get(grade.name, {})
                        by_question.append({
                            "student_id": student, "assignment": assignment, "notebook": notebook.name,
                            "grade_id": grade.name, "score": _num(grade.score), "max_score": _num(grade.max_score),
                            "status": q.get("status", ""), "timed_out": "yes" if q.get("status") == "timed out" else "",
                            "error": q.get("detail", "") if q.get("status") not in ("correct", "") else ""})
    questions = course / "grades_by_question.csv"
    with questions.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["student_id", "assignment", "notebook", "grade_id", "score", "max_score",
                                     "status", "timed_out", "error"])
        writer.writeheader()
        writer.writerows(by_question)
    lms = course / "grades_lms.csv"
    with lms.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["student_id", *names, "total"])
        for student in students:
            row = [_num(totals[student, a]) if (student, a) in totals else "" for a in names]
            writer.writerow([student, *row, _num(sum(totals.get((student, a), 0.0) for a in names))])
    return questions, lms


def _num(value) -> str:
    if value is None:
        return ""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def summary(assignment: str, results: list[Result], kept: list[str], absent: list[str], limits: Limits,
            seconds: float) -> str:
    def who(items: list[Result], detail: bool) -> str:
        parts = [f"{r.student} {r.score:g}/{r.max_score:g}" + (f" ({r.message})" if detail and r.message else "")
                 for r in items]
        return ("\n" + " " * 14).join(parts) if detail else ", ".join(parts)

    lines = [f"{assignment}: {len(results)} submission{'s' if len(results) != 1 else ''} in {seconds:.0f} s "
             f"(limits: {limits.cell} s per cell, {limits.notebook} s per notebook; "
             f"{'sandbox: bubblewrap' if limits.sandbox else 'NO SANDBOX'})"]
    for outcome, detail in (("graded", False), ("timed out", True), ("failed", True)):
        items = [r for r in results if r.outcome == outcome]
        lines.append(f"  {outcome:<10} {len(items):>2}" + (f": {who(items, detail)}" if items else ""))
    if kept:
        lines.append(f"  (of these, {len(kept)} unchanged since the last grading and not run again: "
                     f"{', '.join(kept)}; --force re-runs them)")
    flagged = [r for r in results if r.review]
    if flagged:
        lines.append("  worth a look: " + "; ".join(f"{r.student} ({', '.join(r.review)})" for r in flagged))
    if absent:
        lines.append(f"  no submission: {', '.join(absent)}")
    return "\n".join(lines)


class Progress:
    """A progress bar over students on a terminal (tqdm); one line per student otherwise."""

    def __init__(self, total: int, label: str):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="student", file=sys.stderr)
        self.total, self.done, self.label = total, 0, label

    def start(self, student: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(student)

    def finish(self, result: Result, kept: bool = False) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        else:
            how = "unchanged" if kept else f"{result.seconds:.0f} s"
            print(f"[{self.done}/{self.total}] {result.student}: {result.outcome}, {result.score:g}/{result.max_score:g}"
                  f" ({how})", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------


_CPU_CLOCK = """\
import time as _grading_time
_grading_cpu = []
get_ipython().events.register("pre_run_cell", lambda *_: _grading_cpu.append([_grading_time.process_time(), None]))
get_ipython().events.register("post_run_cell", lambda *_: _grading_cpu and _grading_cpu[-1].__setitem__(1, _grading_time.process_time()))
"""
_REPORT = """\
import json
print(open("/proc/self/status").read())
print("CPU", json.dumps([b - a for a, b in _grading_cpu[:-1]]))
"""


def time_cells(notebooks: list[Path]) -> list[dict]:
    """Run each notebook as autograding does (sandbox, no time limit); time every cell, read peak memory.

    What ``python tools/grade.py --time-cells`` prints, to choose the limits in nbgrader_config.py:
    for each cell its wall time and the CPU time of the kernel (all its threads). On a busy machine
    the wall time grows with the load (printed too); the CPU time much less.
    """
    from nbgrader_plugins import GradeExecute

    class Timed(GradeExecute):
        def preprocess_cell(self, cell, resources, index):
            start = time.monotonic()
            out = super().preprocess_cell(cell, resources, index)
            if cell.cell_type == "code" and cell.source.strip():
                self.cell_times.append((time.monotonic() - start, index, cell.source.strip().split("\n")[0][:50]))
            return out

    rows = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        nb.cells.insert(0, nbformat.v4.new_code_cell(_CPU_CLOCK))
        nb.cells.append(nbformat.v4.new_code_cell(_REPORT))
        executor = Timed(timeout=3600, notebook_timeout=3600)
        executor.cell_times = []
        load = os.getloadavg()[0]
        start = time.monotonic()
        nb, _ = executor.preprocess(nb, {"metadata": {"path": str(path.parent)}})
        total = time.monotonic() - start
        report = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []))
        memory = {k: int(v.split()[0]) // 1024 for k, v in re.findall(r"^(VmHWM|VmData):\s+(\d+ kB)", report, re.M)}
        found = re.search(r"^CPU (.*)$", report, re.M)
        cpu = json.loads(found.group(1)) if found else []
        errors = [f"{i}: {e.get('ename')}" for i, c in enumerate(nb.cells[1:-1], 1) for e in _errors(c)]
        cells = [(wall, index, src, cpu[k] if k < len(cpu) else None)
                 for k, (wall, index, src) in enumerate(executor.cell_times[1:-1])]
        slowest = sorted(cells, reverse=True)[:2]
        row = {"notebook": path.name, "total_s": round(total, 1), "cpu_s": round(sum(c for c in cpu), 1),
               "slowest": [{"cell": i, "source": src, "wall_s": round(w, 1), "cpu_s": round(c, 1) if c else None}
                           for w, i, src, c in slowest],
               "peak_rss_mb": memory.get("VmHWM"), "peak_data_mb": memory.get("VmData"),
               "load": [round(load, 1), round(os.getloadavg()[0], 1)], "errors": errors}
        rows.append(row)
        print(f"{path.name}: {total:.1f} s ({row['cpu_s']} s CPU); slowest cells "
              + ", ".join(f"{c['wall_s']} s ({c['cpu_s']} s CPU; cell {c['cell']}: {c['source']!r})" for c in row["slowest"])
              + f"; peak memory {row['peak_rss_mb']} MB resident, {row['peak_data_mb']} MB data; load average "
              f"{row['load'][0]} -> {row['load'][1]}" + (f"; ERRORS {errors}" if errors else ""), flush=True)
    return rows


def submissions(course: Path, assignment: str) -> tuple[list[str], list[str]]:
    """The student ids with a folder for ``assignment`` (sorted), and the folder names that are not ids."""
    good, bad = [], []
    root = course / "submitted"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_symlink() or not (folder / assignment).is_dir() or (folder / assignment).is_symlink():
            continue
        (good if _ID.match(folder.name) else bad).append(folder.name)
    return good, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("assignment", nargs="?", help="the assignment to grade, e.g. 01_rank")
    parser.add_argument("--course-dir", default=str(COURSE), help="the nbgrader course directory (default: course/)")
    parser.add_argument("--student", action="append", help="grade only this student (repeatable)")
    parser.add_argument("--force", action="store_true", help="re-run submissions graded before, even unchanged")
    parser.add_argument("--cell-timeout", type=int, help="seconds one cell may run (default: nbgrader_config.py)")
    parser.add_argument("--notebook-timeout", type=int, help="seconds a whole notebook may run (default: nbgrader_config.py)")
    parser.add_argument("--no-sandbox", action="store_true",
                        help="run student code WITHOUT isolation (only for submissions you trust)")
    parser.add_argument("--time-cells", nargs="*", metavar="NOTEBOOK",
                        help="no grading: time every cell of these notebooks (default: every chapter) in the sandbox")
    args = parser.parse_args(argv)
    if args.time_cells is not None:
        time_cells([Path(p) for p in args.time_cells] or assignments.chapter_notebooks())
        return 0
    course = Path(args.course_dir).resolve()
    os.environ.update(grading_env())  # the gradebook's alembic on PATH, the notebooks' variables

    if not (course / "gradebook.db").exists():
        print(f"no gradebook in {course}: run `make student` first (README, For instructors).", file=sys.stderr)
        return 2
    with gradebook(course) as gb:
        known = sorted(a.name for a in gb.assignments)
    if not args.assignment or args.assignment not in known:
        what = f"unknown assignment {args.assignment!r}" if args.assignment else "which assignment?"
        print(f"{what} — usage: make grade A=<assignment>; the gradebook has: {', '.join(known) or 'none'}",
              file=sys.stderr)
        return 2
    assignment = args.assignment
    source = course / "source" / assignment / f"{assignment}.ipynb"
    if not source.exists():
        print(f"{source} is missing: run `make student` first.", file=sys.stderr)
        return 2
    cell, notebook = course_limits(course)
    limits = Limits(args.cell_timeout or cell, args.notebook_timeout or notebook, not args.no_sandbox)
    if limits.sandbox:
        from sandbox import probe

        problem = probe()
        if problem:
            print(f"cannot isolate student code: {problem}.\nmake grade runs submissions only in the sandbox "
                  "(README, For instructors); `GRADE_ARGS=--no-sandbox` runs them without it, for code you trust.",
                  file=sys.stderr)
            return 2
    else:
        print("WARNING: grading without the sandbox: student code can read and write what you can.", file=sys.stderr)

    students, bad = submissions(course, assignment)
    if args.student:
        missing = sorted(set(args.student) - set(students))
        if missing:
            print(f"no submission of {assignment} from {', '.join(missing)}", file=sys.stderr)
            return 2
        students = [s for s in students if s in args.student]
    for name in bad:
        print(f"skipped course/submitted/{name}/: not a usable student id (letters, digits, _ . @ + -)",
              file=sys.stderr)

    reference = stub_solutions(nbformat.read(source, as_version=4))
    fingerprint_base = f"{_sha(source)}:{limits.cell}:{limits.notebook}:{limits.sandbox}"
    previous = {s: Result(**r) for s, r in load_records(course).get(assignment, {}).get("students", {}).items()}
    done: dict[str, Result] = dict(previous)
    results, kept = [], []
    started = time.monotonic()
    progress = Progress(len(students), f"grading {assignment}")
    with tempfile.TemporaryDirectory(prefix="grading-") as tmp:
        nbgrader = Nbgrader(course, limits, Path(tmp))
        for student in students:
            progress.start(student)
            old = previous.get(student)
            if not args.force and old is not None and _unchanged(course, assignment, student, old, fingerprint_base):
                results.append(old)
                kept.append(student)
                progress.finish(old, kept=True)
                continue
            try:
                result = grade_one(course, assignment, student, reference, Path(tmp), nbgrader, fingerprint_base)
            except Exception as exc:  # a bug here must not stop the batch either
                result = Result(student, "failed", message=f"grading failed: {type(exc).__name__}: {exc}"[:300])
                try:
                    record_zero(course, assignment, student)
                    result.max_score = _max_points(course, assignment)[0]
                except Exception:
                    pass
            results.append(result)
            done[student] = result
            save_record(course, assignment, limits, done)
            progress.finish(result)
        progress.close()
        feedback_errors = write_feedback(course, assignment, results, nbgrader)
        nbgrader.export(course / "grades.csv")
    questions, lms = write_exports(course)
    with gradebook(course) as gb:
        everyone = sorted(s.id for s in gb.students)
    absent = [s for s in everyone if s not in students and not (course / "submitted" / s / assignment).exists()]
    print(summary(assignment, results, kept, absent, limits, time.monotonic() - started))
    print(f"feedback: {course.name}/feedback/<student>/{assignment}/{assignment}.html")
    print(f"grades:   {course.name}/grades.csv, {questions.relative_to(course.parent)}, {lms.relative_to(course.parent)}")
    if feedback_errors:
        print("nbgrader generate_feedback reported errors:\n" + feedback_errors[-2000:], file=sys.stderr)
        return 1
    return 0


def _unchanged(course: Path, assignment: str, student: str, old: Result, fingerprint_base: str) -> bool:
    """Whether a submission graded before holds the same files, graded the same way, with its grades in place."""
    folder = course / "submitted" / student / assignment
    if not old.fingerprint or fingerprint(folder, fingerprint_base) != old.fingerprint:
        return False
    scores = submission_scores(course, assignment, student)
    graded = (course / "autograded" / student / assignment / f"{assignment}.ipynb").exists()
    return scores is not None and (graded or old.outcome == "failed") and \
        abs(sum(s or 0 for s, _ in scores.values()) - old.score) < 1e-9


if __name__ == "__main__":
    sys.exit(main())
