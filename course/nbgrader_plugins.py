"""An nbgrader preprocessor for the Rank to LoRA course: unfold solution cells in student copies.

The course notebooks fold every exercise's solution cell (cell metadata
``"jupyter": {"source_hidden": true}``) so that a learner working from ``notebooks/`` can try an
exercise before seeing the answer. In a student copy the solution has been replaced by a stub
(``# YOUR CODE HERE`` / ``raise NotImplementedError()``), and a folded stub would hide the very
place a student has to write in. ``nbgrader_config.py`` adds :class:`ShowSolutionCells` to
``nbgrader generate_assignment``'s preprocessors, right after nbgrader's own ``ClearSolutions``.
"""
from __future__ import annotations

from typing import Any

from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor


class ShowSolutionCells(NbGraderPreprocessor):
    """Remove ``jupyter.source_hidden`` / ``jupyter.outputs_hidden`` from nbgrader solution cells.

    Only cells marked ``nbgrader.solution`` are touched; any other folded cell stays folded, and
    the rest of each cell's metadata is kept as it is. Disable with
    ``c.ShowSolutionCells.enabled = False``.
    """

    hidden_keys = ("source_hidden", "outputs_hidden")

    def preprocess_cell(self, cell: NotebookNode, resources: dict[str, Any],
                        index: int) -> tuple[NotebookNode, dict[str, Any]]:
        if utils.is_solution(cell) and "jupyter" in cell.metadata:
            view = cell.metadata["jupyter"]
            for key in self.hidden_keys:
                view.pop(key, None)
            if not view:
                del cell.metadata["jupyter"]
        return cell, resources
