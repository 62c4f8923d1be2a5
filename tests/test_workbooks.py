"""Learner workbooks (tools/workbooks.py) and the progress table (lora_edu.progress), for every chapter.

Static checks, per chapter, need no kernel: the chapter follows the conventions a workbook relies on
(tools/conventions.py names each violation), and its workbook holds no solution line and no hidden test,
keeps the learner's starting lines, the check cells and every other cell's outputs, and offers the model
solution folded after the check.

The runtime checks execute each chapter's workbook **once**, with probes injected after every exercise
(marked in the cell metadata under ``PROBE``). At its own place each check first runs on the untouched
exercise, exactly as in a fresh workbook (claim: ⏳ not answered, no ✅). Then the probes run the course's
solution from ``notebooks/`` (claim: ✅) and a known wrong answer (claim: ❌ with its feedback) through
the same check. Then the chapter goes on: after even-numbered exercises (1st, 3rd, ...) from the untouched
state again (the exercise cell re-run, every name the probes added removed, the random generators
restored), after odd-numbered ones with the wrong answer left in place. So the rest of the chapter runs
both after unanswered and after wrong exercises, and the whole run must end with no error output (claim:
Run All reaches the end). Names that a later cell takes from an exercise cell are found statically
(``test_chapter_follows_the_workbook_conventions``), whatever state the run leaves them in.

A known wrong answer is the course's own answer, changed: each starting-line name (``x = None``) is
perturbed (a number or an array × 2 + 1, a string or a set extended, ...), and each function
the cell defines returns its result perturbed the same way. ``KNOWN_WRONG`` overrides that with a typical
slip and the feedback it must get. The file tests run ``tools/workbooks.py`` as ``make workbooks`` does,
on temporary folders.
"""
from __future__ import annotations

import ast
import datetime as dt
import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lora_edu import progress  # noqa: E402
from tools import conventions, nbauthor, workbooks  # noqa: E402
from tools.assignments import chapter_notebooks  # noqa: E402

CHAPTERS = chapter_notebooks()
NAMES = [p.stem for p in CHAPTERS]
by_chapter = pytest.mark.parametrize("name", NAMES)
PROBE = "workbook_test"  # cell metadata of the injected probe cells: {"state": ..., "exercise": ...}
MAKE_ENV = {"LORA_EDU_DEVICE": "cpu", "IPYKERNEL_CELL_NAME": "<IPY-INPUT>", "PYTHONHASHSEED": "0",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
# grade id -> (a typical wrong answer, a piece of the feedback it must get)
KNOWN_WRONG = {
    # the check reads the picture word inside a phrase, so the generated "plane (changed)" is still right
    "ch01-picture": ('column_space = "line"', "columns 1 and 2 point in different directions"),
    "ch00-batch-forward": ("def lora_forward_batch(X, W0, A, B, alpha, r):\n"
                           "    return X @ W0.T + alpha * (X @ A.T @ B.T)  # the seed's scaling", "as the seed blog post does"),
}


def instructor(name: str):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def role(cell) -> str | None:
    return cell.get("metadata", {}).get(progress.KEY, {}).get("role")


def outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}\n")
        else:
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Static: the chapter and its workbook, no kernel


@by_chapter
def test_chapter_follows_the_workbook_conventions(name):
    found = conventions.problems(instructor(name))
    assert not found, (f"notebooks/{name}.ipynb breaks the exercise conventions that its workbook relies on "
                       "(CONTRIBUTING.md, Exercises):\n  - " + "\n  - ".join(found))


@by_chapter
def test_workbook_holds_no_solution_line_and_no_hidden_test(name):
    nb = instructor(name)
    wb = workbooks.make_workbook(nb, name)
    secret, hidden, public = set(), set(), set()
    for cell in nb.cells:
        secret |= {line.strip() for _, body in conventions.region_bodies(cell.source) for line in body}
        hidden |= {line.strip() for _, body in conventions.region_bodies(cell.source, conventions.HIDDEN_TESTS)
                   for line in body}
        outside = conventions.replace_regions(cell.source, conventions.SOLUTION, lambda i, b: [])
        outside = conventions.replace_regions(outside, conventions.HIDDEN_TESTS, lambda i, b: [])
        public |= {line.strip() for line in outside.split("\n")}
    secret -= public | {""}
    hidden -= public | {""}
    assert any(conventions.is_solution(c) for c in nb.cells) == bool(secret), f"{name}: no solution code to hide"
    code_lines = {line.strip() for c in wb.cells if c.cell_type == "code" for line in c.source.split("\n")}
    all_lines = {line.strip() for c in wb.cells for line in c.source.split("\n")}
    assert not secret & code_lines, f"{name}: solution lines in a code cell of the workbook: {secret & code_lines}"
    assert not hidden & all_lines, f"{name}: hidden tests in the workbook: {hidden & all_lines}"
    text = "\n".join(c.source for c in wb.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS"):
        assert marker not in text
    assert not any("nbgrader" in c.metadata for c in wb.cells), "a workbook is not an nbgrader notebook"


@by_chapter
def test_workbook_cells_are_what_a_learner_needs(name):
    nb = instructor(name)
    wb = workbooks.make_workbook(nb, name)
    meta = wb.metadata[progress.KEY][progress.WORKBOOK]
    assert meta == {"chapter": name, "source": f"notebooks/{name}.ipynb", "format": workbooks.FORMAT,
                    "source_digest": workbooks.source_digest(nb)}
    nbformat.validate(wb)
    cells = iter(wb.cells)
    setup_seen, number = False, 0
    for theirs in nb.cells:
        mine = next(cells)
        if conventions.is_solution(theirs):
            number += 1
            grade_id = theirs.metadata["nbgrader"]["grade_id"]
            assert mine.metadata[progress.KEY] == {"role": "exercise", "exercise": grade_id, "number": number}
            assert not mine.metadata.get("jupyter", {}).get("source_hidden"), f"{grade_id}: unfold the learner's cell"
            assert mine.metadata.get("editable", True) and not mine.outputs and mine.execution_count is None
            kept = conventions.replace_regions(theirs.source, conventions.SOLUTION, lambda i, b: []).rstrip("\n")
            assert [line for line in mine.source.split("\n") if line.strip() not in workbooks.STUB] == \
                kept.split("\n"), f"{grade_id}: the starting lines, signature and docstring must stay"
            for indent, _ in conventions.region_bodies(theirs.source):
                if indent:
                    assert f"{indent}raise NotImplementedError()" in mine.source.split("\n")
        elif conventions.is_test(theirs):
            assert role(mine) == "check" and mine.metadata[progress.KEY]["number"] == number
            assert mine.source == conventions.replace_regions(
                theirs.source, conventions.HIDDEN_TESTS, lambda i, b: []).rstrip("\n")
            assert mine.metadata["editable"] is False and not mine.outputs and mine.execution_count is None
            solution = next(cells)
            assert solution.cell_type == "markdown" and role(solution) == "solution"
            assert solution.source.startswith("<details>\n<summary>") and "<details open" not in solution.source
            previous = [c for c in nb.cells if conventions.is_solution(c)][number - 1]
            for _, body in conventions.region_bodies(previous.source):
                assert all(line in solution.source for line in body), "the model solution shows the whole answer"
        elif theirs.cell_type == "code" and not setup_seen and conventions.SETUP_CALL.search(theirs.source):
            setup_seen = True
            assert "workbook=True" in mine.source and mine.source == workbooks.workbook_setup(theirs.source)
        else:
            assert mine == theirs, "an ordinary cell keeps its source and its outputs (figures show before running)"
    assert next(cells, None) is None


def test_stray_test_cells_and_markdown_answers_keep_nothing_secret():
    nb = tiny_chapter()
    stray = nbauthor.tests("assert 1 + 1 == 2\n### BEGIN HIDDEN TESTS\nassert secret()\n### END HIDDEN TESTS", "ch99-x")
    stray.outputs = [nbformat.v4.new_output("stream", name="stdout", text="checked secret()")]
    prose = nbauthor.md("Why? ### BEGIN SOLUTION\nBecause.\n### END SOLUTION", nbgrader={"solution": True})
    nb.cells += [stray, prose]
    wb = workbooks.make_workbook(nb, "99_tiny")
    assert wb.cells[-2].source == "assert 1 + 1 == 2" and not wb.cells[-2].outputs
    assert wb.cells[-2].metadata["editable"] is False and role(wb.cells[-2]) is None
    assert "Because" not in wb.cells[-1].source and "*Your answer here.*" in wb.cells[-1].source


def test_workbook_setup_adds_workbook_true_once():
    assert workbooks.workbook_setup("rng = setup_notebook(seed=0)  # seeds") == \
        "rng = setup_notebook(seed=0, workbook=True)  # seeds"
    assert workbooks.workbook_setup("setup_notebook()") == "setup_notebook(workbook=True)"
    assert workbooks.workbook_setup("setup_notebook(0, workbook=False)") == "setup_notebook(0, workbook=False)"
    assert workbooks.workbook_setup("from lora_edu import setup_notebook") == "from lora_edu import setup_notebook"


def tiny_chapter(answer_cell: str | None = None, later: str = "print(2 * 3)"):
    """A small chapter with a value exercise and a function exercise (tools/nbauthor.py's cells)."""
    cells = [nbauthor.md("# 99 · Tiny"),
             nbauthor.code("from lora_edu import setup_notebook\n\nrng = setup_notebook(seed=0)"),
             nbauthor.solution(answer_cell or "rank_of_A = None\n### BEGIN SOLUTION\nrank_of_A = 2\n### END SOLUTION",
                               "ch99-rank"),
             nbauthor.tests("from lora_edu.checks import check_integer, exercise, passed\n\n"
                            "exercise(check_integer)(rank_of_A, 2, 'rank_of_A')\n"
                            "### BEGIN HIDDEN TESTS\nassert rank_of_A == 2\n### END HIDDEN TESTS", "ch99-rank-test"),
             nbauthor.code(later),
             nbauthor.solution('def double(x):\n    """Twice x."""\n    ### BEGIN SOLUTION\n    return 2 * x\n'
                               "    ### END SOLUTION", "ch99-double"),
             nbauthor.tests("from lora_edu.checks import require_answer\n\n"
                            "exercise(lambda f: require_answer(f(2), 'double(2)') or passed('yes'))(double)",
                            "ch99-double-test")]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return nb


def test_conventions_name_each_violation_precisely():
    assert conventions.problems(tiny_chapter()) == []
    no_start = conventions.problems(tiny_chapter("### BEGIN SOLUTION\nrank_of_A = 2\n### END SOLUTION"))
    assert no_start == ["cell 2 (ch99-rank): the check reads `rank_of_A`, which only the solution sets; start the cell "
                        "with `rank_of_A = None` before the markers"]
    later_uses_answer = conventions.problems(tiny_chapter(later="print(rank_of_A + 1)"))
    assert len(later_uses_answer) == 1 and "cell 4 ('print(rank_of_A + 1)') uses `rank_of_A`, last set in exercise " \
        "cell 2 (ch99-rank) outside the solution markers" in later_uses_answer[0]
    helper = "rank_of_A = None\n### BEGIN SOLUTION\nhelper = 1\nrank_of_A = 2 * helper\n### END SOLUTION"
    only_solution = conventions.problems(tiny_chapter(helper, later="print(helper)"))
    assert only_solution == ["cell 4 ('print(helper)') uses `helper`, which only the solution of exercise cell 2 "
                             "(ch99-rank) defines: it does not exist in a workbook"]
    nb = tiny_chapter()
    nb.cells[2].source = "rank_of_A = None\n### BEGIN SOLUTION\nrank_of_A = 2\n"  # nbauthor would refuse it
    broken = conventions.problems(nb)
    assert broken == ["cell 2 (ch99-rank): solution markers are broken ('BEGIN SOLUTION' is never closed by "
                      "'END SOLUTION')"]
    with pytest.raises(ValueError, match="never closed"):
        workbooks.make_workbook(nb, "99_tiny")
    nb = tiny_chapter()
    nb.cells[1].source = "import numpy"
    assert conventions.problems(nb)[0].startswith("no `setup_notebook(...)` call before the first exercise")


def test_a_rebound_name_used_later_only_counts_from_its_last_binding():
    nb = tiny_chapter(later="rank_of_A = 5\nprint(rank_of_A)")  # an ordinary cell sets it again first
    assert conventions.problems(nb) == []
    names = conventions.cell_names("def f(x):\n    return x + d\nfor r in range(3):\n    f(r)\nd = 1")
    assert names.reads == {"range"} and names.binds == {"f", "r", "d"}


# ---------------------------------------------------------------------------------------------
# Runtime: each chapter's workbook executed once, with probes after each exercise


def _wb_perturb(value):
    """A value near the course's answer that is not the answer (see the module docstring)."""
    import numbers

    if isinstance(value, bool):
        return not value
    if isinstance(value, numbers.Number):  # far enough off for a check with a relative tolerance
        changed = value * 2 + 1
        return changed if changed != value else value + 1
    if isinstance(value, str):
        return value + " (changed)"
    if isinstance(value, (list, tuple)):
        return type(value)([_wb_perturb(v) for v in value]) if type(value) in (list, tuple) else \
            [_wb_perturb(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return type(value)(set(value) | {"(changed)"})
    if isinstance(value, dict):
        return {k: _wb_perturb(v) for k, v in value.items()}
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            return value * 2 + 1
        except Exception:  # noqa: BLE001 - e.g. a boolean tensor
            pass
    return _WbWrongAnswer()


class _WbWrongAnswer:
    """Stands for an answer of the wrong kind altogether (a class expected, say)."""

    def __repr__(self):
        return "<a wrong answer>"


def _wb_wrong_function(fn):
    """The learner's function, with every result perturbed."""
    def wrong(*args, **kwargs):
        return _wb_perturb(fn(*args, **kwargs))

    wrong.__name__, wrong.__doc__ = fn.__name__, fn.__doc__
    return wrong


def _wb_snapshot():
    """The notebook's names and random generators, before the probes of one exercise."""
    import random
    import sys

    import numpy as np

    saved = {"names": set(globals()), "random": random.getstate(), "numpy": np.random.get_state()}
    if "torch" in sys.modules:
        saved["torch"] = sys.modules["torch"].get_rng_state()
    if isinstance(globals().get("rng"), np.random.Generator):
        saved["rng"] = globals()["rng"].bit_generator.state
    return saved


def _wb_restore(saved, names):
    """Back to ``saved``: the random generators, and (``names=True``) no name the probes added."""
    import random
    import sys

    import numpy as np

    if names:
        for name in set(globals()) - saved["names"]:
            if not name.startswith("_"):
                del globals()[name]
    random.setstate(saved["random"])
    np.random.set_state(saved["numpy"])
    if "torch" in saved:
        sys.modules["torch"].set_rng_state(saved["torch"])
    if "rng" in saved:
        globals()["rng"].bit_generator.state = saved["rng"]


PROBE_HELPERS = (_wb_perturb, _WbWrongAnswer, _wb_wrong_function, _wb_snapshot, _wb_restore)


def right_answer(solution_source: str) -> str:
    """The course's answer as a learner would type it: the instructor's cell without the markers."""
    return conventions.replace_regions(solution_source, conventions.SOLUTION, lambda indent, body: body)


def wrong_answer(grade_id: str, solution_source: str) -> str:
    if grade_id in KNOWN_WRONG:
        return KNOWN_WRONG[grade_id][0]
    right = right_answer(solution_source)
    names = sorted(conventions.starting_names(solution_source))
    functions = [n.name for n in ast.parse(right).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    lines = [right, "# the course's answer, changed: a known wrong answer"]
    lines += [f"{n} = _wb_perturb({n})" for n in names]
    lines += [f"{f} = _wb_wrong_function({f})" for f in functions if f not in names]
    return "\n".join(lines)


def _probe(source: str, state: str, grade_id: str | None = None):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata[PROBE] = {"state": state, "exercise": grade_id}
    return cell


def probe_notebook(wb, nb):
    """The workbook ``wb`` with probes after each exercise (see the module docstring); ``nb`` is its chapter."""
    solutions = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells if conventions.is_solution(c)}
    cells, exercise_cell, count, helpers_in = [], None, 0, False
    for cell in wb.cells:
        cells.append(cell)
        if not helpers_in and cell.cell_type == "code" and "workbook=True" in cell.source:
            helpers = "\n\n".join(textwrap.dedent(inspect.getsource(f)) for f in PROBE_HELPERS)
            cells.append(_probe(helpers, "helpers"))
            helpers_in = True
        if role(cell) == "exercise":
            exercise_cell = cell
        if role(cell) != "check":
            continue
        grade_id = cell.metadata[progress.KEY]["exercise"]
        check = cell.source
        cells += [_probe("_wb_saved = _wb_snapshot()", "snapshot", grade_id),
                  _probe(right_answer(solutions[grade_id]), "right-answer", grade_id), _probe(check, "right", grade_id),
                  _probe(wrong_answer(grade_id, solutions[grade_id]), "wrong-answer", grade_id),
                  _probe(check, "wrong", grade_id)]
        if count % 2 == 0:  # the rest of the chapter runs from the untouched state
            cells += [_probe(exercise_cell.source, "untouched-again", grade_id),
                      _probe("_wb_restore(_wb_saved, names=True)", "restore", grade_id)]
        else:  # ... or with the wrong answer in place
            cells.append(_probe("_wb_restore(_wb_saved, names=False)", "restore", grade_id))
        count += 1
    out = nbformat.from_dict(wb)
    out.cells = cells
    return out


@dataclass
class Run:
    nb: nbformat.NotebookNode
    fresh: dict[str, str] = field(default_factory=dict)  # grade id -> the check's output, untouched exercise
    right: dict[str, str] = field(default_factory=dict)
    wrong: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # grade ids in the chapter's order


def _where(nb, index: int) -> str:
    cell = nb.cells[index]
    what = cell.metadata.get(PROBE, {}).get("state") or role(cell) or "cell"
    first = next((line for line in cell.source.split("\n") if line.strip()), "")
    return f"cell {index} [{what}] {first[:60]!r}"


def execute_chapter(name: str, folder: Path) -> Run:
    from tools.run_notebooks import SteadyClient

    wb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    nb = probe_notebook(wb, instructor(name))
    with mock.patch.dict(os.environ, MAKE_ENV):
        client = SteadyClient(nb, timeout=600, kernel_name="python3", allow_errors=True, record_timing=False,
                              resources={"metadata": {"path": str(folder)}})
        try:
            client.execute()
        except Exception as exc:  # noqa: BLE001 - a timeout: name the cell that was running
            ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
            running = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and i > max(ran, default=-1)
                            and c.source.strip()), None)
            where = _where(nb, running) if running is not None else "after the last cell"
            raise RuntimeError(f"{exc} The cell running then: {where}") from exc
    run = Run(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.execution_count is None and cell.source.strip():
            run.not_run.append(_where(nb, index))
        run.errors += [f"{_where(nb, index)}: {o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
        probe = cell.metadata.get(PROBE, {})
        if role(cell) == "check":
            grade_id = cell.metadata[progress.KEY]["exercise"]
            run.fresh[grade_id] = outputs_text(cell)
            run.order.append(grade_id)
        elif probe.get("state") in ("right", "wrong"):
            getattr(run, probe["state"])[probe["exercise"]] = outputs_text(cell)
    return run


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """``executed(name)``: the one run of chapter ``name``'s workbook (made on first use, then kept)."""
    folder = tmp_path_factory.mktemp("workbook")
    workbooks.update(ROOT / "notebooks", folder, out=lambda line: None)
    runs: dict[str, Run | BaseException] = {}

    def get(name: str) -> Run:
        if name not in runs:
            try:
                runs[name] = execute_chapter(name, folder)
            except Exception as exc:  # noqa: BLE001 - a timeout: report it in every test of the chapter
                runs[name] = exc
        if isinstance(runs[name], BaseException):
            pytest.fail(f"{name}: the workbook could not be executed: {runs[name]}", pytrace=False)
        return runs[name]

    return get


def _failing(run: Run, state: str, ok) -> list[str]:
    """``exercise: output`` for each exercise whose check output in ``state`` does not satisfy ``ok``."""
    outputs = getattr(run, state)
    return [f"{grade_id}: {outputs.get(grade_id)!r}" for grade_id in run.order if not ok(grade_id, outputs.get(grade_id, ""))]


@pytest.mark.slow
@by_chapter
def test_untouched_workbook_says_not_answered_and_shows_no_tick(name, executed):
    run = executed(name)
    assert run.order, f"{name} has no exercise"
    bad = _failing(run, "fresh", lambda _, text: "⏳ Not answered yet" in text and "✅" not in text and "❌" not in text)
    assert not bad, (f"{name}: in an untouched workbook each check must print ⏳ Not answered yet and nothing else. "
                     "Does the check call require_answer() on the answer (and on what the learner's function "
                     "returns), and let NotImplementedError through instead of catching it?\n  " + "\n  ".join(bad))


@pytest.mark.slow
@by_chapter
def test_the_course_solutions_pass_in_the_workbook(name, executed):
    bad = _failing(executed(name), "right", lambda _, text: "✅" in text and "❌" not in text and "⏳" not in text)
    assert not bad, f"{name}: the solutions from notebooks/ should pass their checks:\n  " + "\n  ".join(bad)


@pytest.mark.slow
@by_chapter
def test_known_wrong_answers_get_their_feedback(name, executed):
    def ok(grade_id: str, text: str) -> bool:
        hint = KNOWN_WRONG.get(grade_id, ("", ""))[1]
        return text.startswith("❌ ") and "✅" not in text and len(text.split()) > 4 and hint in " ".join(text.split())

    bad = _failing(executed(name), "wrong", ok)
    assert not bad, (f"{name}: a wrong answer should get ❌ and a message (and, in KNOWN_WRONG, its hint). Where "
                     "the generated wrong answer happens to pass, add a typical slip to KNOWN_WRONG:\n  "
                     + "\n  ".join(bad))


@pytest.mark.slow
@by_chapter
def test_workbook_runs_to_the_end_with_no_error(name, executed):
    run = executed(name)
    assert not run.errors, f"{name}: error output(s) in the workbook run:\n  " + "\n  ".join(run.errors[:10])
    assert not run.not_run, f"{name}: cells that never ran: {run.not_run[:5]}"


def test_probe_notebook_covers_each_exercise_in_three_states():
    nb = tiny_chapter()
    probes = probe_notebook(workbooks.make_workbook(nb, "99_tiny"), nb)
    states = [(c.metadata.get(PROBE) or {}).get("state") or role(c) for c in probes.cells]
    assert states.count("check") == states.count("right") == states.count("wrong") == 2
    assert states.count("untouched-again") == 1, "the 1st exercise continues untouched, the 2nd with a wrong answer"
    first = states.index("check")
    assert states[first - 1] == "exercise" and states[first + 1] == "snapshot", "the untouched check runs in place"
    wrong = [c.source for c in probes.cells if (c.metadata.get(PROBE) or {}).get("state") == "wrong-answer"]
    assert wrong[0].endswith("rank_of_A = _wb_perturb(rank_of_A)")
    assert wrong[1].endswith("double = _wb_wrong_function(double)")


def test_perturbed_answers_differ_from_the_answers():
    np = pytest.importorskip("numpy")
    for value in (0, 3, -1, 1.0, 0.0, -1.0, "plane", (1, 2), [0.5], {"P", "Q"}, True):
        assert _wb_perturb(value) != value
    assert _wb_perturb(134217728) == 268435457, "far off, even for a check with a relative tolerance"
    assert not np.allclose(_wb_perturb(np.eye(2)), np.eye(2))
    assert isinstance(_wb_perturb(type), _WbWrongAnswer)
    assert _wb_wrong_function(lambda x: 2 * x)(3) == 13


# ---------------------------------------------------------------------------------------------
# Files: `make workbooks`, `make reset-workbook`, `make progress` on temporary folders


def tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "workbooks.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def course(tmp_path):
    """notebooks/ with chapters 00 and 01 (copies) and an empty place for workbook/."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for source in CHAPTERS[:2]:
        shutil.copyfile(source, notebooks / source.name)
    return notebooks, tmp_path / "workbook"


def answer(path: Path, text: str) -> None:
    """What a learner does: type into the first exercise cell and save."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if role(c) == "exercise")
    cell.source += f"\n{text}"
    nbformat.write(nb, path)


@pytest.mark.skipif(len(CHAPTERS) < 2, reason="needs two chapters")
def test_make_workbooks_writes_each_chapter_once_and_keeps_a_learners_edit(course):
    notebooks, folder = course
    first = tool("--notebooks", str(notebooks), "--workbook", str(folder))
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in CHAPTERS[:2]]
    assert "Wrote 2 new workbooks" in first.stdout
    answer(folder / CHAPTERS[0].name, "# my own answer")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    second = tool("--notebooks", str(notebooks), "--workbook", str(folder))
    assert second.returncode == 0 and "Wrote" not in second.stdout
    assert "All 2 workbooks" in second.stdout and "up to date" in second.stdout
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "an existing workbook is never rewritten"
    (folder / CHAPTERS[1].name).unlink()  # a learner deletes one: the next run brings it back, the other stays
    third = tool("--notebooks", str(notebooks), "--workbook", str(folder))
    assert "Wrote 1 new workbook in" in third.stdout and (folder / CHAPTERS[1].name).exists()
    assert (folder / CHAPTERS[0].name).read_bytes() == before[CHAPTERS[0].name]


@pytest.mark.skipif(len(CHAPTERS) < 2, reason="needs two chapters")
def test_a_changed_chapter_is_reported_and_reset_keeps_a_backup(course):
    notebooks, folder = course
    workbooks.update(notebooks, folder, out=lambda line: None)
    changed, same = CHAPTERS[1], CHAPTERS[0]
    answer(folder / changed.name, "# my answer to keep")
    mine = (folder / changed.name).read_bytes()
    nb = nbformat.read(notebooks / changed.name, as_version=4)
    nb.cells[0].source += "\n\nA new paragraph."
    nbformat.write(nb, notebooks / changed.name)
    nb = nbformat.read(notebooks / same.name, as_version=4)  # outputs only: what re-executing changes
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = (cell.execution_count or 0) + 100
    nbformat.write(nb, notebooks / same.name)

    notice = tool("--notebooks", str(notebooks), "--workbook", str(folder))
    assert notice.returncode == 0
    assert "1 workbook is older than the chapter in notebooks/" in notice.stdout
    assert f"{changed.name}  (chapter" in notice.stdout and same.name not in notice.stdout
    assert f"make reset-workbook NB={changed.stem[:2]}" in notice.stdout
    assert (folder / changed.name).read_bytes() == mine, "reporting changes nothing"

    reset = tool("--notebooks", str(notebooks), "--workbook", str(folder), "--reset", changed.stem[:2])
    assert reset.returncode == 0, reset.stderr
    backups = list((folder / "backups").iterdir())
    assert len(backups) == 1 and re.fullmatch(rf"{changed.stem}\.\d{{8}}-\d{{6}}\.ipynb", backups[0].name)
    assert backups[0].read_bytes() == mine, "the old workbook, the learner's answer in it, is the backup"
    assert "# my answer to keep" not in (folder / changed.name).read_text()
    assert "Moved" in reset.stdout and "Wrote a fresh" in reset.stdout
    after = tool("--notebooks", str(notebooks), "--workbook", str(folder))
    assert "up to date" in after.stdout and "older" not in after.stdout


def test_reset_never_overwrites_a_backup_and_checks_every_name_first(course):
    notebooks, folder = course
    workbooks.update(notebooks, folder, out=lambda line: None)
    now = dt.datetime(2030, 1, 2, 3, 4, 5)
    quiet = dict(out=lambda line: None)
    first = workbooks.reset(["00"], notebooks, folder, now=now, **quiet)
    second = workbooks.reset(["00_welcome.ipynb"], notebooks, folder, now=now, **quiet)
    assert [p.name for p in first + second] == ["00_welcome.20300102-030405.ipynb", "00_welcome.20300102-030405-2.ipynb"]
    with pytest.raises(ValueError, match="no chapter '42'"):
        workbooks.reset(["01", "42"], notebooks, folder, now=now, **quiet)
    assert len(list((folder / "backups").iterdir())) == 2, "nothing moved when one name is wrong"
    result = tool("--notebooks", str(notebooks), "--workbook", str(folder), "--reset", "42")
    assert result.returncode == 2 and "no chapter '42'" in result.stderr


def test_find_chapter_understands_what_a_learner_types():
    chapters = [Path("notebooks/00_welcome.ipynb"), Path("notebooks/01_rank.ipynb")]
    for token in ("01", "1", "01_rank", "01_rank.ipynb", "workbook/01_rank.ipynb", "notebooks/01_rank.ipynb"):
        assert workbooks.find_chapter(token, chapters) == chapters[1]
    with pytest.raises(ValueError, match="one of 00_welcome, 01_rank"):
        workbooks.find_chapter("rank", chapters)


def test_a_broken_workbook_is_named_not_a_traceback(course):
    notebooks, folder = course
    workbooks.update(notebooks, folder, out=lambda line: None)
    broken = folder / CHAPTERS[0].name
    broken.write_text('{"cells": [')
    result = tool("--notebooks", str(notebooks), "--workbook", str(folder))
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr
    assert f"{CHAPTERS[0].name} cannot be read (not valid JSON" in result.stdout
    assert broken.read_text() == '{"cells": [', "left as it is: the learner may want to repair it"
    shown = subprocess.run([sys.executable, "-m", "lora_edu.progress", str(folder)], capture_output=True, text=True)
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr
    assert f"{CHAPTERS[0].stem}.ipynb is not a valid notebook (broken JSON at line 1" in shown.stdout


# ---------------------------------------------------------------------------------------------
# Progress


def _with_outputs(wb, texts: list[str | None]):
    """``wb`` with check cell k's stored output set to ``texts[k]`` (None: never run, "error": an error)."""
    checks = [c for c in wb.cells if role(c) == "check"]
    for cell, text in zip(checks, texts):
        if text == "error":
            cell.outputs = [nbformat.v4.new_output("error", ename="NameError", evalue="name 'x' is not defined",
                                                   traceback=[])]
        elif text is not None:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
            cell.execution_count = 1
    return wb


def test_check_state_reads_the_stored_lines():
    cell = nbformat.v4.new_code_cell("check(x)")
    assert progress.check_state(cell) == progress.TODO, "never run: not tried"
    for text, state in [("✅ Correct: yes\n", progress.DONE), ("❌ `x` = 3 is too large.\n", progress.WRONG),
                        ("⏳ Not answered yet. `x` has no answer yet\n", progress.TODO),
                        ("✅ Correct: a\n❌ but b\n", progress.WRONG), ("something else\n", progress.TODO)]:
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        assert progress.check_state(cell) == state, text
    assert progress.check_state({"outputs": [{"output_type": "error", "ename": "NameError"}]}) == progress.WRONG


def test_progress_table_counts_each_chapter(tmp_path):
    nb = tiny_chapter()
    for name, texts in [("98_first", ["✅ Correct: rank 2\n", "❌ `double(2)` is 5\n"]),
                        ("99_second", ["⏳ Not answered yet.\n", None])]:
        wb = _with_outputs(workbooks.make_workbook(nb, name), texts)
        nbformat.write(wb, tmp_path / f"{name}.ipynb")
    (tmp_path / "backups").mkdir()
    nbformat.write(workbooks.make_workbook(nb, "98_first"), tmp_path / "backups" / "98_first.20300101-000000.ipynb")
    report = progress.progress_report(tmp_path, label="workbook/")
    lines = report.splitlines()
    assert lines[0].startswith("Exercises in the workbooks of workbook/, as last saved")
    assert re.search(r"^  98_first\s+1/2\s+1\s+0\s+✅ ❌$", report, re.M), report
    assert re.search(r"^  99_second\s+0/2\s+0\s+2\s+⏳ ⏳$", report, re.M), report
    assert re.search(r"^  all chapters\s+1/4\s+1\s+2$", report, re.M), "backups are not counted: " + report
    assert str(tmp_path) not in report


def test_progress_counts_each_exercise_once_even_after_a_learner_edits_the_cells(tmp_path):
    wb = _with_outputs(workbooks.make_workbook(tiny_chapter(), "99_tiny"), ["❌ no\n", "✅ Correct: yes\n"])
    checks = [i for i, c in enumerate(wb.cells) if role(c) == "check"]
    copy = nbformat.from_dict(wb.cells[checks[0]])
    copy.id = "copied-by-the-learner"
    copy.outputs = [nbformat.v4.new_output("stream", name="stdout", text="✅ Correct: now right\n")]
    wb.cells.insert(checks[0] + 1, copy)  # the learner copied the first check and ran it again
    del wb.cells[checks[1] + 1]  # ... and deleted the second check cell
    nbformat.write(wb, tmp_path / "99_tiny.ipynb")
    assert progress.read_progress(tmp_path / "99_tiny.ipynb").marks == [progress.DONE, progress.TODO]


def test_progress_says_what_to_do_where_there_are_no_workbooks(tmp_path, capsys, monkeypatch):
    assert "No workbooks in nowhere/ yet. `make workbooks`" in progress.progress_report(tmp_path / "nowhere", "nowhere/")
    monkeypatch.chdir(tmp_path)
    assert "No workbooks in this folder yet" in progress.progress_report(".")
    # the course's own notebooks (the instructor's, answers included) are not workbooks
    report = progress.progress_report(ROOT / "notebooks", label="notebooks/")
    assert report.startswith("No workbooks in notebooks/: its notebooks are the course's own")
    progress.show_progress(tmp_path)
    assert capsys.readouterr().out.startswith("No workbooks in")


def test_fresh_workbooks_show_every_exercise_not_tried(tmp_path):
    workbooks.update(ROOT / "notebooks", tmp_path, out=lambda line: None)
    chapters = progress.folder_progress(tmp_path)
    assert [c.chapter for c in chapters] == NAMES
    for chapter, source in zip(chapters, CHAPTERS):
        exercises = sum(conventions.is_solution(c) for c in nbformat.read(source, as_version=4).cells)
        assert chapter.problem is None and chapter.marks == [progress.TODO] * exercises


# ---------------------------------------------------------------------------------------------
# The Makefile and git


def make_dry_run(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_targets_run_the_workbook_tools():
    assert "tools/workbooks.py" in make_dry_run("workbooks")
    assert "tools/workbooks.py --reset 01" in make_dry_run("reset-workbook", "NB=01")
    assert "-m lora_edu.progress workbook" in make_dry_run("progress")
    assert "tools/lab.py" in make_dry_run("lab")
    help_text = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    for target in ("make workbooks", "make reset-workbook NB=01", "make progress"):
        assert target in help_text


def test_reset_workbook_without_a_chapter_says_how():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(["make", "-s", "reset-workbook", "NB="], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0 and "make reset-workbook NB=01" in result.stdout + result.stderr


def test_make_clean_never_touches_the_workbooks():
    commands = make_dry_run("clean")
    for line in commands.splitlines():
        if line.startswith("rm "):
            assert "workbook" not in line
        elif line.startswith("find "):
            assert line.startswith("find . -path ./workbook -prune -o "), line


def test_workbooks_stay_out_of_git():
    assert "workbook/" in (ROOT / ".gitignore").read_text().split()
