"""Execute the course notebooks in place, storing their outputs exactly as nbval will see them.

Usage (what ``make notebooks`` runs)::

    python tools/run_notebooks.py [notebooks/01_rank.ipynb ...]

Each notebook runs top to bottom in a fresh kernel of the current environment, with the
notebook's folder as working directory — the same kernel, folder and environment
variables (exported by the Makefile: LORA_EDU_DEVICE, IPYKERNEL_CELL_NAME, PYTHONHASHSEED)
that ``make test`` gives nbval. An error in a cell not marked ``NBVAL_RAISES_EXCEPTION``
stops with a non-zero exit and leaves the notebook file untouched.

The kernel client polls in short slices (``steady_channels`` from ``course/nbgrader_plugins.py``):
nbclient's own wait sometimes misses a message after ipywidgets cells and sits out the whole
cell timeout (jupyter/nbclient issue #312).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
try:
    from course.nbgrader_plugins import steady_channels  # needs nbgrader (the test extra)
except ImportError:  # e.g. a GPU machine with only nbclient/ipykernel: nbclient's own waiting
    def steady_channels(kc):
        return kc


class SteadyClient(NotebookClient):
    """``NotebookClient`` whose kernel client re-polls its sockets every half second."""

    async def async_start_new_kernel_client(self):
        return steady_channels(await super().async_start_new_kernel_client())

    start_new_kernel_client = run_sync(async_start_new_kernel_client)


def execute(path: Path, timeout: int = 600) -> float:
    """Execute one notebook in place; returns the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata.pop("execution", None)
            tags = set(cell.metadata.get("tags", []))
            if "NBVAL_RAISES_EXCEPTION" in cell.source or "raises-exception" in tags:
                tags.add("raises-exception")  # nbclient's own marker for "this error is expected"
                cell.metadata["tags"] = sorted(tags)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    client = SteadyClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        elapsed = execute(path.resolve())
        print(f"executed {path} in {elapsed:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
