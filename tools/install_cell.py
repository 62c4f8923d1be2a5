"""The install cell: the first code cell of every chapter, which installs ``lora_edu`` where it is missing.

A learner who opens a chapter in a hosted notebook service (Colab and the like: a kernel with torch, no
course package) runs this cell first; everywhere else (``make lab``, ``pip install``, Binder, nbval,
nbgrader, the learner's workbook copies) ``lora_edu`` is importable and the cell prints nothing.

The cell is identified by its tag ``install-lora-edu``; it also carries nbval's ``nbval-skip`` tag, so the
notebook tests never run pip. Its source is generated here, from the repository URL in pyproject.toml
(``[project.urls] Repository``), so a move of the repository is one edit there plus a run of this tool.

Usage::

    python tools/install_cell.py                 # insert or update the cell in notebooks/[0-9][0-9]_*.ipynb
    python tools/install_cell.py --check         # exit 1 (naming the notebooks) where the cell is missing or old
    python tools/install_cell.py path/to/x.ipynb # only these notebooks

Idempotent: a notebook that already has the current cell, in the right place, is not rewritten.
Standard library only (``make lint`` imports it without the course environment).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "install-lora-edu"
NBVAL_TAG = "nbval-skip"
CELL_ID = "install-lora-edu"

SOURCE = '''\
# Hosted notebook services (Colab, ...) start without this course's package: this cell installs it.
# In the course environment (make lab, pip install, Binder) lora_edu is already there and it does nothing.
import importlib, importlib.util, subprocess, sys

if importlib.util.find_spec("lora_edu") is None:
    print("installing lora_edu from {url} (a minute or two) ...")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "lora_edu @ git+{url}"])
    importlib.invalidate_caches()'''


def repository_url(root: Path = ROOT) -> str:
    """The repository's URL: ``[project.urls] Repository`` in ``root/pyproject.toml``."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[project\.urls\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    match = section and re.search(r'^Repository\s*=\s*"([^"]+)"', section.group(1), re.MULTILINE)
    if not match:
        raise ValueError(f"{root / 'pyproject.toml'} has no [project.urls] Repository = \"https://...\"")
    url = match.group(1).rstrip("/")
    if not re.fullmatch(r"https://[\w.-]+/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"pyproject.toml's Repository URL should look like https://host/owner/name, got {url!r}")
    return url


def cell_source(url: str | None = None) -> str:
    """The install cell's source, for ``url`` (default: pyproject.toml's repository)."""
    return SOURCE.format(url=url or repository_url())


def install_cell(url: str | None = None) -> dict:
    """The whole cell, as nbformat 4.5 stores it (not executed: no count, no output)."""
    return {"cell_type": "code", "execution_count": None, "id": CELL_ID,
            "metadata": {"tags": [TAG, NBVAL_TAG]}, "outputs": [],
            "source": cell_source(url).splitlines(keepends=True)}


def is_install_cell(cell: dict) -> bool:
    """True for the install cell (by its tag)."""
    return cell.get("cell_type") == "code" and TAG in cell.get("metadata", {}).get("tags", [])


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def problems(nb: dict, url: str | None = None) -> list[str]:
    """What is wrong with the notebook's install cell (an empty list when it is current)."""
    url = url or repository_url()
    cells = nb.get("cells", [])
    found = [i for i, c in enumerate(cells) if is_install_cell(c)]
    code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    if not found:
        return ["has no install cell (run: python tools/install_cell.py)"]
    out = []
    if len(found) > 1:
        out.append(f"has {len(found)} install cells (cells {found}); keep one")
    i = found[0]
    if code and code[0] != i:
        out.append(f"install cell is cell {i}, but the first code cell is cell {code[0]}")
    cell = cells[i]
    if _text(cell.get("source", "")) != cell_source(url):
        out.append("install cell's source is not the current one (run: python tools/install_cell.py)")
    if sorted(cell.get("metadata", {}).get("tags", [])) != sorted([TAG, NBVAL_TAG]):
        out.append(f"install cell's tags should be {[TAG, NBVAL_TAG]}")
    if cell.get("outputs"):
        out.append("install cell stores output (it must print nothing where lora_edu is installed)")
    return out


def apply(nb: dict, url: str | None = None) -> bool:
    """Insert or update the install cell in ``nb`` (a notebook as a dict); True when ``nb`` changed."""
    url = url or repository_url()
    if not problems(nb, url):
        return False
    cells = nb.setdefault("cells", [])
    kept = [c for c in cells if not is_install_cell(c)]
    # the install cell's id must be unique: give a clashing cell (there should be none) another one
    for c in kept:
        if c.get("id") == CELL_ID:
            c["id"] = CELL_ID + "-moved"
    first_code = next((i for i, c in enumerate(kept) if c.get("cell_type") == "code"), len(kept))
    kept.insert(first_code, install_cell(url))
    nb["cells"] = kept
    return True


def dumps(nb: dict) -> str:
    """JSON as nbformat writes it (so an unchanged notebook stays byte-identical)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a cell is missing or old")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    url = repository_url()
    bad = 0
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        if args.check:
            for problem in problems(nb, url):
                print(f"{path}: {problem}")
                bad += 1
        elif apply(nb, url):
            path.write_text(dumps(nb), encoding="utf-8")
            print(f"{path}: install cell written")
    if args.check:
        print(f"install_cell: {len(paths)} notebooks, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
