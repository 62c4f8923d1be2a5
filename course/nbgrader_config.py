"""nbgrader configuration for the Rank to LoRA course — usable as is.

Every numbered notebook ``notebooks/NN_name.ipynb`` is one assignment named ``NN_name``.
Layout (all relative to this folder, the course directory):

    source/NN_name/NN_name.ipynb     instructor version: copied from notebooks/ by `make student`
    ../student/NN_name/NN_name.ipynb student copy (nbgrader's "release" folder), made by `make student`
    submitted/<student>/NN_name/     what students handed in (`nbgrader collect`, `zip_collect` or by hand)
    autograded/, feedback/           written by `nbgrader autograde` / `nbgrader generate_feedback`
    gradebook.db                     the grades

Run nbgrader from this folder (``cd course``) — see README.md, "For instructors".
"""
import os
import sys

from nbgrader.converters import Autograde, GenerateAssignment
from nbgrader.preprocessors import ClearSolutions, Execute

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from nbgrader_plugins import ShowSolutionCells, SteadyExecute  # noqa: E402  (kept next to this file)

c = get_config()  # noqa: F821  (provided by nbgrader when it loads this file)

c.CourseDirectory.course_id = "rank-to-lora"
c.CourseDirectory.root = HERE
# Student copies go to the repository's student/ folder (git-ignored), next to notebooks/.
c.CourseDirectory.release_directory = os.path.join(os.path.dirname(HERE), "student")

# nbgrader's own student-copy pipeline, plus one step: unfold the (now stubbed) solution cells,
# which the course notebooks keep folded (jupyter.source_hidden) for self-study.
_steps = list(GenerateAssignment.class_traits()["preprocessors"].default())
_steps.insert(_steps.index(ClearSolutions) + 1, ShowSolutionCells)
c.GenerateAssignment.preprocessors = _steps

# Autograding executes whole chapters: nbgrader's Execute step, replaced by SteadyExecute, which
# does not sit idle until the cell timeout when the kernel client misses a message (see
# nbgrader_plugins.py). Some cells train a model for a while on a CPU, so allow more than
# nbgrader's default of 30 s per cell.
c.Autograde.autograde_preprocessors = [
    SteadyExecute if step is Execute else step
    for step in Autograde.class_traits()["autograde_preprocessors"].default()
]
c.Execute.timeout = 600
