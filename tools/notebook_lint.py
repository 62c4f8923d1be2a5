"""Check the stored state of the course notebooks: what nbval, nbgrader or a learner would trip over.

Usage (what ``make lint`` runs; ``tests/test_lint.py`` runs it in ``make test``)::

    python tools/notebook_lint.py [FOLDER_OR_NOTEBOOK ...]     # default: notebooks/

Each numbered notebook (``NN_*.ipynb``) must

- be nbformat 4 JSON with a Python 3 kernelspec and code cells;
- start its code with the current install cell (``tools/install_cell.py``);
- have been executed top to bottom: every non-empty code cell has an execution count, and the counts
  are 1, 2, 3, ... in cell order (the install cell may be unexecuted: the tool inserts it that way);
- store no error output, except in a cell marked to raise (``NBVAL_RAISES_EXCEPTION`` / ``raises-exception``);
- show no path of the machine it ran on (``/home/...``, ``/tmp/...``, ``C:\\Users\\...``) in an output or
  in the widget state, and build no repository path in code, neither with ``../`` nor from
  ``lora_edu.__file__`` (read recorded results with ``lora_edu.results``: it works in a checkout and
  from an installed wheel);
- keep nbval's comparison for at least three quarters of its code cells (``NBVAL_IGNORE_OUTPUT`` and
  ``NBVAL_SKIP`` on at most a quarter; the install cell does not count).

Standard library only: it runs before the course environment exists. Exit status 1 when anything is wrong.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import install_cell  # noqa: E402  (tools/install_cell.py, also standard library only)

ROOT = Path(__file__).resolve().parents[1]
MAX_UNCOMPARED = 0.25
# Home and temporary folders of Linux, macOS and Windows, and a CI checkout's usual roots.
MACHINE_PATH = re.compile(r"(?<![\w.])(/home/[^/\s\"']+/|/Users/[^/\s\"']+/|/root/|/tmp/|/var/folders/|"
                          r"/private/var/|[A-Za-z]:\\\\?Users\\\\?|/work/|/builds/|/github/workspace/)")
PARENT_PATH = re.compile(r"""["']\.\./""")  # a string literal starting with ../ in code
# Path(lora_edu.__file__).parents[1] / ...: the checkout, which an installed wheel does not have
CHECKOUT_PATH = re.compile(r"__file__\)?\s*\)?\.(parents\s*\[|parent\b)")
UNCOMPARED = {"skip": ("NBVAL_SKIP", "nbval-skip"), "ignore": ("NBVAL_IGNORE_OUTPUT", "nbval-ignore-output")}
RAISES = ("NBVAL_RAISES_EXCEPTION", "raises-exception")


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _marked(cell: dict, marker: tuple[str, str]) -> bool:
    comment, tag = marker
    lines = (line.strip() for line in _source(cell).splitlines())
    in_comment = any(line.startswith("#") and line.lstrip("#").strip() == comment for line in lines)
    return in_comment or tag in cell.get("metadata", {}).get("tags", [])


def lint_notebook(nb: dict, url: str | None = None) -> list[str]:
    """The problems of one notebook (a parsed .ipynb), each naming the cell."""
    out: list[str] = []
    if nb.get("nbformat") != 4:
        return [f"is nbformat {nb.get('nbformat')}, not 4"]
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != "python3":
        out.append(f"kernelspec is {kernel!r}, not 'python3' (re-run: make notebooks NB=...)")
    cells = nb.get("cells", [])
    code = [(i, c) for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    if not code:
        return out + ["has no code cells"]
    out += install_cell.problems(nb, url)

    counts = []
    for i, cell in code:
        if install_cell.is_install_cell(cell):
            continue
        if _source(cell).strip():
            if cell.get("execution_count") is None:
                out.append(f"cell {i} was never executed (re-run: make notebooks NB=...)")
            else:
                counts.append((i, cell["execution_count"]))
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and not _marked(cell, RAISES):
                out.append(f"cell {i} stores an error: {output.get('ename')}: {str(output.get('evalue'))[:80]}")
            found = MACHINE_PATH.search(json.dumps(output, ensure_ascii=False))
            if found:
                out.append(f"cell {i} output shows a machine path ({found.group(0)}...): print a relative one")
        if PARENT_PATH.search(_source(cell)):
            out.append(f"cell {i} builds a path with ../: reach repository files through lora_edu "
                       "(lora_edu.results, lora_edu.data), the copy may run in another folder")
        if CHECKOUT_PATH.search(_source(cell)):
            out.append(f"cell {i} finds files from lora_edu.__file__'s folder: an installed lora_edu has no "
                       "checkout around it; read recorded results with lora_edu.results.load_results")
    start = 1 if not any(install_cell.is_install_cell(c) and c.get("execution_count") for _, c in code) else 2
    expected = list(range(start, start + len(counts)))
    if [n for _, n in counts] != expected:
        first = next(((i, n) for (i, n), e in zip(counts, expected) if n != e), counts[-1] if counts else None)
        out.append(f"execution counts are not {start}, {start + 1}, ... in cell order (cell {first[0]} has "
                   f"{first[1]}): run the whole notebook top to bottom (make notebooks NB=...)")

    widget_state = json.dumps(nb.get("metadata", {}).get("widgets", {}), ensure_ascii=False)
    found = MACHINE_PATH.search(widget_state)
    if found:
        out.append(f"the stored widget state shows a machine path ({found.group(0)}...)")

    counted = [c for _, c in code if not install_cell.is_install_cell(c)]
    uncompared = [c for c in counted if _marked(c, UNCOMPARED["skip"]) or _marked(c, UNCOMPARED["ignore"])]
    if counted and len(uncompared) > MAX_UNCOMPARED * len(counted):
        out.append(f"{len(uncompared)} of {len(counted)} code cells are NBVAL_SKIP or NBVAL_IGNORE_OUTPUT "
                   f"(more than {MAX_UNCOMPARED:.0%}): assert on the values in compared cells instead")
    return out


def lint_path(path: Path, url: str | None = None) -> list[str]:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return [f"cannot be read as notebook JSON: {err}"]
    return lint_notebook(nb, url)


def notebooks(targets: list[Path]) -> list[Path]:
    found: list[Path] = []
    for target in targets:
        if target.is_dir():
            found += sorted(target.glob("[0-9][0-9]_*.ipynb"))
        else:
            found.append(target)
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = notebooks([Path(a) for a in args] or [ROOT / "notebooks"])
    if not paths:
        print(f"notebook_lint: no NN_*.ipynb notebooks in {' '.join(args) or 'notebooks/'}")
        return 1
    url = install_cell.repository_url()
    bad = 0
    for path in paths:
        for problem in lint_path(path, url):
            print(f"{path}: {problem}")
            bad += 1
    print(f"notebook_lint: {len(paths)} notebooks, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
