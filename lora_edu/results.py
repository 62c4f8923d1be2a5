"""Recorded results the notebooks read (GPU benchmarks and sweeps), wherever the course is installed.

The benchmark scripts write JSON files to ``benchmarks/results/`` in a checkout of the repository.
A notebook should never build that path itself: it calls :func:`load_results` (or
:func:`results_dir`), which finds the files

1. in the folder named by the environment variable ``LORA_EDU_RESULTS``, if it is set;
2. in the checkout's ``benchmarks/results/`` when ``lora_edu`` is imported from a clone
   (``make lab``, ``pip install -e .``);
3. in the installed package (``lora_edu/recorded/``), where a wheel built from the
   repository carries the same files (``pip install .``).

Example::

    from lora_edu.results import load_results
    runs = load_results("finetune_*.json")   # a list of dicts, sorted by file name
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_CHECKOUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
_PACKAGED = Path(__file__).resolve().parent / "recorded"


def results_dir() -> Path:
    """The folder that holds the recorded results (see the module docstring for the search order).

    Raises ``FileNotFoundError`` naming every place it looked when none exists.
    """
    override = os.environ.get("LORA_EDU_RESULTS")
    candidates = [Path(override)] if override else []
    candidates += [_CHECKOUT, _PACKAGED]
    for folder in candidates:
        if folder.is_dir():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no recorded results found (looked in {looked}); set LORA_EDU_RESULTS to the folder "
                            "that holds the benchmark JSON files")


def load_results(pattern: str = "*.json") -> list[dict[str, Any]]:
    """Every recorded result whose file name matches ``pattern`` (a glob), parsed, sorted by file name.

    Each dict gets a ``"_file"`` key with the file's name, so a notebook can say where a number
    came from. Returns an empty list when nothing matches.
    """
    if not isinstance(pattern, str) or not pattern or "/" in pattern or "\\" in pattern:
        raise ValueError(f"pattern must be a file-name glob such as 'finetune_*.json', got {pattern!r}")
    out = []
    for path in sorted(results_dir().glob(pattern)):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = {**data, "_file": path.name}
        out.append(data)
    return out


def load_result(name: str) -> dict[str, Any]:
    """One recorded result by its exact file name, e.g. ``load_result("nvidia-h200.json")``.

    Raises ``FileNotFoundError`` naming the folder and the files that are there.
    """
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or any(c in name for c in "*?["):
        raise ValueError(f"name must be one file name such as 'nvidia-h200.json', got {name!r}")
    folder = results_dir()
    path = folder / name
    if not path.is_file():
        there = ", ".join(sorted(p.name for p in folder.glob("*.json"))) or "none"
        raise FileNotFoundError(f"no recorded result {name!r} in {folder} (files there: {there})")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {**data, "_file": path.name} if isinstance(data, dict) else data
