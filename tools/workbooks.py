"""Learner workbooks: the copy of each chapter a learner works in, written once and never overwritten.

What ``make workbooks`` (and, first, ``make lab``) runs::

    python tools/workbooks.py                    # write the missing workbooks, say which are out of date
    python tools/workbooks.py --reset 01 [03]    # move workbook/01_*.ipynb to workbook/backups/, write a fresh one
    python tools/workbooks.py --check            # the chapters' convention problems (exit 1 if any)

For every chapter ``notebooks/NN_name.ipynb`` (the instructor's source of truth) the workbook
``workbook/NN_name.ipynb`` is the same notebook, changed where exercises are:

- the setup cell calls ``setup_notebook(..., workbook=True)``: checks print ✅ / ❌ / ⏳ and never stop
  *Run All* (``lora_edu.checks``);
- each exercise cell keeps what is outside its solution markers — the natural starting line
  (``rank_of_A = None``), a function's signature and docstring, whose body becomes
  ``raise NotImplementedError()`` — unfolded, editable, with no output;
- the check cell follows as it is, minus hidden tests (as nbgrader removes them), locked, with no output;
- after the check, the model solution as a folded markdown cell (``<details>``): it shows only when
  the learner opens it, and being markdown it never runs by accident;
- every other cell keeps its stored outputs, so figures show before anything runs.

A workbook records which version of its chapter it was made from (``source_digest``: a hash of the
chapter's cell types and sources, which ``git checkout`` and re-executing outputs do not change). When
the chapter changes, ``make workbooks`` and ``make lab`` say so and how to get the new version; only
``--reset`` replaces a workbook, after moving the old file to ``workbook/backups/``. Nothing here ever
deletes or overwrites a learner's file.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lora_edu import progress  # noqa: E402  (the metadata contract: keys and cell roles)
from tools.assignments import chapter_notebooks  # noqa: E402
from tools.conventions import (SETUP_CALL, SOLUTION, HIDDEN_TESTS, STARTING_LINE, is_solution,  # noqa: E402
                               is_test, problems, region_bodies, replace_regions)

NOTEBOOKS = ROOT / "notebooks"
WORKBOOK = ROOT / "workbook"
BACKUPS = "backups"  # sub-folder of the workbook folder
FORMAT = 1
STUB = ("# Your code here: replace the line below.", "raise NotImplementedError()")
HIDDEN_VIEW = ("source_hidden", "outputs_hidden")


# ---------------------------------------------------------------------------------------------
# One chapter -> its workbook (pure functions: no files)


def source_digest(nb) -> str:
    """A hash of the chapter's cell types and sources: changes when its text or code does, not its outputs."""
    h = hashlib.sha256()
    for cell in nb.cells:
        h.update(json.dumps([cell.cell_type, cell.source]).encode())
    return h.hexdigest()


def workbook_setup(source: str) -> str:
    """The setup cell's ``setup_notebook(...)`` call with ``workbook=True`` added (kept if already there)."""
    def add(match: re.Match) -> str:
        args = match.group(1).strip()
        if re.search(r"\bworkbook\s*=", args):
            return match.group(0)
        return f"setup_notebook({args + ', ' if args else ''}workbook=True)"

    return SETUP_CALL.sub(add, source, count=1)


def exercise_stub(source: str) -> str:
    """A solution cell as the learner gets it: every solution gone, a function body raising NotImplementedError."""
    def stub(indent: str, body: list[str]) -> list[str]:
        return [indent + line for line in STUB] if indent else []

    return replace_regions(source, SOLUTION, stub).rstrip("\n")


def model_solution(source: str) -> str:
    """The course's answer: the solution cell without its markers and without starting lines it overwrites."""
    answer = "\n".join(line for _, body in region_bodies(source) for line in body)
    kept = replace_regions(source, SOLUTION, lambda indent, body: body).split("\n")
    return "\n".join(line for line in kept
                     if not ((m := STARTING_LINE.match(line)) and re.search(rf"\b{m.group(1)}\b", answer))).strip("\n")


def solution_markdown(source: str, number: int) -> str:
    """A markdown cell that shows the model solution of exercise ``number`` only when opened."""
    code = model_solution(source)
    fence = "~~~~" if "```" in code else "```"
    return (f"<details>\n<summary>💡 Model solution of exercise {number}: open it once you have tried "
            f"(one way to do it)</summary>\n\n{fence}python\n{code}\n{fence}\n\n</details>")


def _role(cell, role: str, grade_id: str, number: int) -> None:
    cell.metadata[progress.KEY] = {"role": role, "exercise": grade_id, "number": number}


def _clear(cell) -> None:
    cell.outputs = []
    cell.execution_count = None
    cell.metadata.pop("execution", None)


def make_workbook(nb, chapter: str):
    """The workbook of chapter notebook ``nb`` (named ``chapter``, e.g. ``"01_rank"``); ``nb`` is not changed."""
    wb = copy.deepcopy(nb)
    cells, number, pending, setup_done = [], 0, None, False
    for cell in wb.cells:
        if pending is not None and not is_test(cell):  # an exercise without a test cell (see conventions)
            cells.append(pending)
            pending = None
        if cell.cell_type == "code" and not setup_done and SETUP_CALL.search(cell.source):
            cell.source, setup_done = workbook_setup(cell.source), True
        if is_solution(cell):
            number += 1
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            solution = nbformat.v4.new_markdown_cell(solution_markdown(cell.source, number))
            if "id" in cell:  # nbformat 4.5: a stable id, derived from the exercise cell's
                solution.id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{cell.id}-solution")[-64:]
            else:
                solution.pop("id", None)
            _role(solution, progress.SOLUTION, grade_id, number)
            cell.source = exercise_stub(cell.source)
            _clear(cell)
            view = cell.metadata.pop("jupyter", {})
            view = {k: v for k, v in view.items() if k not in HIDDEN_VIEW}
            if view:
                cell.metadata["jupyter"] = view
            del cell.metadata["nbgrader"]
            cell.metadata["editable"] = True
            _role(cell, progress.EXERCISE, grade_id, number)
            cells.append(cell)
            pending = solution
            continue
        if is_test(cell):  # without its hidden tests, locked, no output (which could show what they checked)
            cell.source = replace_regions(cell.source, HIDDEN_TESTS, lambda indent, body: []).rstrip("\n")
            _clear(cell)
            cell.metadata.update(editable=False, deletable=False)
            cells.append(cell)
            if pending is not None:
                _role(cell, progress.CHECK, pending.metadata[progress.KEY]["exercise"], number)
                cells.append(pending)
                pending = None
            continue
        if cell.cell_type == "markdown" and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = replace_regions(cell.source, SOLUTION, lambda indent, body: ["*Your answer here.*"])
        cells.append(cell)
    if pending is not None:
        cells.append(pending)
    for cell in cells:
        cell.metadata.pop("nbgrader", None)  # a workbook is no nbgrader notebook
    wb.cells = cells
    wb.metadata[progress.KEY] = {progress.WORKBOOK: {
        "chapter": chapter, "source": f"notebooks/{chapter}.ipynb", "source_digest": source_digest(nb),
        "format": FORMAT}}
    return wb


# ---------------------------------------------------------------------------------------------
# Files: what is there, writing what is missing, resetting on request


@dataclass
class Workbook:
    chapter: str  # "01_rank"
    source: Path  # notebooks/01_rank.ipynb
    path: Path  # workbook/01_rank.ipynb
    state: str  # "missing" | "written" | "failed" | "current" | "outdated" | "unreadable" | "foreign"


def _show(path: Path) -> str:
    """``path`` relative to the repository (or the working folder) when it is inside it."""
    for base in (ROOT, Path.cwd()):
        try:
            return Path(path).resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return str(path)


def _state(source_nb, path: Path) -> str:
    if not path.exists():
        return "missing"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "unreadable"
    if not progress.is_workbook(stored):
        return "foreign"
    digest = stored["metadata"][progress.KEY][progress.WORKBOOK].get("source_digest")
    return "current" if digest == source_digest(source_nb) else "outdated"


def write_new(source_nb, chapter: str, path: Path) -> None:
    """Write the workbook of ``source_nb`` to ``path``, which must not exist (never overwrites)."""
    wb = make_workbook(source_nb, chapter)
    nbformat.validate(wb)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as fh:  # "x": fails rather than overwrite
        nbformat.write(wb, fh)


def update(notebook_dir: Path = NOTEBOOKS, workbook_dir: Path = WORKBOOK, out=print) -> list[Workbook]:
    """Write every missing workbook; report the ones that are out of date or unreadable. Returns them all."""
    found = []
    for source in chapter_notebooks(notebook_dir):
        nb = nbformat.read(source, as_version=4)
        path = Path(workbook_dir) / source.name
        state = _state(nb, path)
        if state == "missing":
            broken = problems(nb)
            if broken:
                out(f"warning: {source.name} breaks {len(broken)} exercise convention(s) that workbooks rely on "
                    f"(`python tools/workbooks.py --check` lists them); its workbook may misbehave there.")
            try:
                write_new(nb, source.stem, path)
                state = "written"
            except ValueError as exc:  # e.g. broken solution markers: the other chapters still get theirs
                out(f"could not write {_show(path)}: {source.name} has {exc}")
                state = "failed"
        found.append(Workbook(source.stem, source, path, state))
    out(report(found, Path(workbook_dir)))
    return found


def report(workbooks: list[Workbook], workbook_dir: Path) -> str:
    """What a learner should know about their workbooks, in a few lines."""
    folder = _show(workbook_dir).rstrip("/") + "/"
    lines = []
    written = [w for w in workbooks if w.state == "written"]
    if written:
        lines.append(f"Wrote {len(written)} new workbook{'s' if len(written) != 1 else ''} in {folder}: "
                     + ", ".join(w.path.name for w in written))
    outdated = [w for w in workbooks if w.state == "outdated"]
    if outdated:
        lines.append(f"{len(outdated)} workbook{'s are' if len(outdated) != 1 else ' is'} older than "
                     "the chapter in notebooks/ (your work in them is kept as it is):")
        lines += [f"  {_show(w.path)}  (chapter {_show(w.source)} has changed)" for w in outdated]
        numbers = " ".join(w.chapter[:2] for w in outdated)
        lines.append(f"  To get the new version: make reset-workbook NB={numbers.split()[0]}"
                     + (f"  (or NB=\"{numbers}\" for all of them)" if len(outdated) > 1 else "")
                     + f". The old file moves to {folder}{BACKUPS}/ first, so your answers stay there.")
    for w in workbooks:
        if w.state == "unreadable":
            lines.append(f"{_show(w.path)} cannot be read (not valid JSON, perhaps a broken save): JupyterLab's "
                         f"last checkpoint is in {folder}.ipynb_checkpoints/; make reset-workbook NB={w.chapter[:2]} "
                         f"moves it to {folder}{BACKUPS}/ and writes a fresh copy.")
        elif w.state == "foreign":
            lines.append(f"{_show(w.path)} was not written by `make workbooks` and is left alone; "
                         f"make reset-workbook NB={w.chapter[:2]} moves it to {folder}{BACKUPS}/ and writes the "
                         "workbook.")
    if not lines or all(w.state in ("current", "written") for w in workbooks):
        lines.append(f"All {len(workbooks)} workbooks in {folder} are up to date with notebooks/. "
                     f"Open {folder}00_welcome.ipynb to start; `make progress` shows how far you are.")
    return "\n".join(lines)


def find_chapter(token: str, chapters: list[Path]) -> Path:
    """The chapter a learner means by ``01``, ``1``, ``01_rank``, ``01_rank.ipynb`` or a path to either copy."""
    name = Path(token.strip()).name
    stem = name[:-len(".ipynb")] if name.endswith(".ipynb") else name
    if stem.isdigit():
        stem = f"{int(stem):02d}"
    matches = [c for c in chapters if c.stem == stem or c.stem.split("_")[0] == stem]
    if len(matches) != 1:
        known = ", ".join(c.stem for c in chapters)
        raise ValueError(f"no chapter {token!r}: use its number or name, one of {known}")
    return matches[0]


def reset(tokens: list[str], notebook_dir: Path = NOTEBOOKS, workbook_dir: Path = WORKBOOK,
          now: _dt.datetime | None = None, out=print) -> list[Path]:
    """Move each named workbook to ``<workbook_dir>/backups/NN_name.<time>.ipynb``, then write a fresh one.

    Returns the backup files (a workbook that did not exist yet is simply written). Never deletes.
    """
    chapters = chapter_notebooks(notebook_dir)
    targets = [find_chapter(t, chapters) for t in tokens]  # every name checked before anything moves
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    backups = []
    for source in targets:
        path = Path(workbook_dir) / source.name
        if path.exists():
            folder = Path(workbook_dir) / BACKUPS
            folder.mkdir(parents=True, exist_ok=True)
            backup, n = folder / f"{source.stem}.{stamp}.ipynb", 1
            while backup.exists():
                n += 1
                backup = folder / f"{source.stem}.{stamp}-{n}.ipynb"
            os.rename(path, backup)
            backups.append(backup)
            out(f"Moved {_show(path)} to {_show(backup)} (your old answers are there).")
        write_new(nbformat.read(source, as_version=4), source.stem, path)
        out(f"Wrote a fresh {_show(path)} from {_show(source)}.")
    return backups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", default=str(NOTEBOOKS), help="the chapters (default: notebooks/)")
    parser.add_argument("--workbook", default=str(WORKBOOK), help="the learner's folder (default: workbook/)")
    parser.add_argument("--reset", nargs="+", metavar="NB", help="chapters to back up and write afresh (01 or 01_rank)")
    parser.add_argument("--check", action="store_true", help="list each chapter's convention problems; exit 1 if any")
    args = parser.parse_args(argv)
    notebook_dir, workbook_dir = Path(args.notebooks), Path(args.workbook)
    if args.check:
        bad = 0
        for source in chapter_notebooks(notebook_dir):
            for problem in problems(nbformat.read(source, as_version=4)):
                print(f"{source.name}: {problem}")
                bad += 1
        return 1 if bad else 0
    if args.reset:
        tokens = [t for token in args.reset for t in token.split()]
        if not tokens:
            print("say which chapter: make reset-workbook NB=01", file=sys.stderr)
            return 2
        try:
            reset(tokens, notebook_dir, workbook_dir)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        return 0
    update(notebook_dir, workbook_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
