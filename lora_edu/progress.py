"""How far a learner is: the exercises of each workbook, done ✅ / wrong ❌ / not tried yet ⏳.

A learner works in ``workbook/NN_name.ipynb``, the copies that ``make workbooks`` writes (see
``tools/workbooks.py``). This module reads what those files store — the outputs of each exercise's
check cell, as JupyterLab last saved them — and runs nothing::

    from lora_edu.progress import show_progress
    show_progress(".")          # in a notebook inside workbook/
    python -m lora_edu.progress workbook      # what `make progress` runs

The state of one exercise is read from the last saved output of its check cell: a line starting
with ``❌`` (or an error) means wrong, otherwise ``⏳`` means not answered yet, otherwise ``✅``
means done; a check cell that was never run (or was deleted) counts as not tried, and of two copies of
a check cell the later one counts. A workbook that cannot be read
(a broken save, not JSON) is reported by name, never with a traceback.

The metadata written by ``tools/workbooks.py`` and read here (the one place that defines it):

- notebook: ``metadata["lora_edu"]["workbook"]`` = ``{"chapter", "source", "source_digest", "format"}``;
- cell: ``metadata["lora_edu"]`` = ``{"role": "exercise" | "check" | "solution", "exercise": <grade id>,
  "number": <1, 2, ...>}``.
"""
from __future__ import annotations

import json
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

KEY = "lora_edu"  # the metadata key, in the notebook's and in each cell's metadata
WORKBOOK = "workbook"  # metadata[KEY][WORKBOOK] marks a notebook as a learner's workbook
EXERCISE, CHECK, SOLUTION = "exercise", "check", "solution"  # cell roles
DONE, WRONG, TODO = "✅", "❌", "⏳"
CHAPTER_FILE = re.compile(r"^\d\d_[A-Za-z0-9_]+\.ipynb$")
NOT_A_WORKBOOK = "is not a workbook written by `make workbooks`"
WIDTH = 100  # characters per line of the messages (JupyterLab breaks longer output lines mid-word)


@dataclass
class ChapterProgress:
    """One workbook: its chapter and, per exercise in order, ``DONE``, ``WRONG`` or ``TODO``."""

    chapter: str  # "01_rank"
    marks: list[str] = field(default_factory=list)
    problem: str | None = None  # why the file could not be read; None when it could

    def count(self, mark: str) -> int:
        return self.marks.count(mark)


def chapter_files(folder: str | Path) -> list[Path]:
    """The ``NN_name.ipynb`` files in ``folder``, in chapter order (backups in sub-folders are not)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.ipynb") if CHAPTER_FILE.match(p.name)) if folder.is_dir() else []


def is_workbook(nb: dict) -> bool:
    """Whether a notebook (as read from JSON) is a learner's workbook written by ``make workbooks``."""
    meta = nb.get("metadata") if isinstance(nb, dict) else None
    return isinstance(meta, dict) and isinstance(meta.get(KEY), dict) and WORKBOOK in meta[KEY]


def _text(cell: dict) -> tuple[str, bool]:
    """The stored text of a cell's outputs, and whether one of them is an error."""
    parts, error = [], False
    for out in cell.get("outputs", []) or []:
        if not isinstance(out, dict):
            continue
        if out.get("output_type") == "error":
            error = True
        text = out.get("text") if out.get("output_type") == "stream" else (out.get("data") or {}).get("text/plain")
        parts.append("".join(text) if isinstance(text, list) else str(text or ""))
    return "".join(parts), error


def check_state(cell: dict) -> str:
    """``DONE``, ``WRONG`` or ``TODO`` from the stored outputs of one check cell."""
    text, error = _text(cell)
    lines = [line.lstrip() for line in text.splitlines()]
    if error or any(line.startswith(WRONG) for line in lines):
        return WRONG
    if any(line.startswith(TODO) for line in lines):
        return TODO
    return DONE if any(line.startswith(DONE) for line in lines) else TODO


def read_progress(path: str | Path) -> ChapterProgress:
    """The progress stored in one workbook file (``problem`` says why, if it cannot be read)."""
    path = Path(path)
    result = ChapterProgress(path.stem)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        result.problem = f"cannot be read ({exc.__class__.__name__})"
        return result
    except json.JSONDecodeError as exc:
        result.problem = f"is not a valid notebook (broken JSON at line {exc.lineno}, column {exc.colno})"
        return result
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        result.problem = "is not a notebook (no list of cells)"
        return result
    if not is_workbook(nb):
        result.problem = NOT_A_WORKBOOK
        return result
    states: dict[str, str] = {}  # exercise -> state, in the chapter's order
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get(KEY, {}) if isinstance(cell, dict) else {}
        if not isinstance(meta, dict) or "exercise" not in meta:
            continue
        states.setdefault(str(meta["exercise"]), TODO)  # an exercise whose check cell was deleted: not done
        if meta.get("role") == CHECK:  # a copied check cell: the last one counts
            states[str(meta["exercise"])] = check_state(cell)
    result.marks = list(states.values())
    return result


def folder_progress(folder: str | Path) -> list[ChapterProgress]:
    """The progress of every chapter file in ``folder``, in chapter order."""
    return [read_progress(p) for p in chapter_files(folder)]


def _fill(text: str) -> str:
    return textwrap.fill(text, width=WIDTH, break_long_words=False, break_on_hyphens=False)


def _fix_hint(chapter: str) -> str:
    return (f"your last good save may be in .ipynb_checkpoints/; `make reset-workbook NB={chapter[:2]}` "
            "moves this file to workbook/backups/ and writes a fresh copy")


def progress_report(folder: str | Path = ".", label: str | None = None) -> str:
    """The progress table of the workbooks in ``folder`` as text (what :func:`show_progress` prints).

    ``label`` names the folder in the text (default: ``"this folder"`` for ``"."``, else the path as given).
    """
    label = label or ("this folder" if str(folder) in ("", ".") else str(folder))
    chapters = folder_progress(folder)
    if not chapters:
        return _fill(f"No workbooks in {label} yet. `make workbooks` (or `make lab`) writes your own copy of "
                     "every chapter to workbook/.")
    if all(c.problem == NOT_A_WORKBOOK for c in chapters):
        return _fill(f"No workbooks in {label}: its notebooks are the course's own, with the answers in them. "
                     "Your copies are in workbook/ (`make workbooks` or `make lab` writes them): open "
                     "workbook/00_welcome.ipynb and run this cell there, or run `make progress`.")
    width = max(len("all chapters"), *(len(c.chapter) for c in chapters))
    lines = [f"Exercises in the workbooks of {label}, as last saved (Ctrl+S saves your latest runs):",
             "", f"  {'chapter':<{width}}   done  wrong  to do"]
    done = wrong = todo = 0
    for c in chapters:
        if c.problem:
            lines.append(textwrap.fill(f"{c.chapter:<{width}}   {c.chapter}.ipynb {c.problem}: {_fix_hint(c.chapter)}",
                                       width=WIDTH, initial_indent="  ", subsequent_indent=" " * (width + 5),
                                       break_long_words=False, break_on_hyphens=False))
            continue
        d, w, t = c.count(DONE), c.count(WRONG), c.count(TODO)
        done, wrong, todo = done + d, wrong + w, todo + t
        lines.append(f"  {c.chapter:<{width}}  {f'{d}/{len(c.marks)}':>5}  {w:>5}  {t:>5}   {' '.join(c.marks)}".rstrip())
    total = done + wrong + todo
    lines.append(f"  {'all chapters':<{width}}  {f'{done}/{total}':>5}  {wrong:>5}  {todo:>5}")
    lines += ["", f"{DONE} done   {WRONG} wrong: read the check's message   {TODO} not tried yet"]
    return "\n".join(lines)


def show_progress(folder: str | Path = ".", label: str | None = None) -> None:
    """Print the per-chapter table of exercises done / wrong / not tried (see :func:`progress_report`)."""
    print(progress_report(folder, label))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = argv[0] if argv else "workbook"
    show_progress(folder, label=f"{folder.rstrip('/')}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
