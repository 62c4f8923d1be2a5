"""nbgrader configuration for the Rank to LoRA course — usable as is.

Every numbered notebook ``notebooks/NN_name.ipynb`` is one assignment named ``NN_name``.
Layout (all relative to this folder, the course directory):

    source/NN_name/NN_name.ipynb     instructor version: copied from notebooks/ by `make student`
    ../student/NN_name/NN_name.ipynb student copy (nbgrader's "release" folder), made by `make student`
    submitted/<student>/NN_name/     what students handed in (`nbgrader collect`, `zip_collect` or by hand)
    autograded/, feedback/           written by `nbgrader autograde` / `nbgrader generate_feedback`
    gradebook.db                     the grades
    grading/NN_name.json             what `make grade` found for each submission (tools/grade.py)

Run `make grade A=NN_name` from the repository, or nbgrader from this folder (``cd course``) — see
README.md, "For instructors". Autograding runs each notebook in a bubblewrap sandbox with the time
limits, output caps and memory limit set below (sandbox.py, nbgrader_plugins.py).
"""
import os
import sys

from nbgrader.converters import Autograde, GenerateAssignment
from nbgrader.preprocessors import ClearSolutions, Execute

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from nbgrader_plugins import GradeExecute, ShowSolutionCells  # noqa: E402  (kept next to this file)
from sandbox import GiB, MiB  # noqa: E402

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

# Autograding executes whole chapters of code nobody has read: nbgrader's Execute step, replaced by
# GradeExecute (nbgrader_plugins.py), which starts the kernel in a bubblewrap sandbox (sandbox.py),
# stops a cell after `timeout` seconds and a notebook after `notebook_timeout` seconds, caps what is
# kept of the outputs, survives a kernel that dies, and does not sit idle when the kernel client
# misses a message (SteadyExecute).
c.Autograde.autograde_preprocessors = [
    GradeExecute if step is Execute else step
    for step in Autograde.class_traits()["autograde_preprocessors"].default()
]
# Time limits, measured with `python tools/grade.py --time-cells` (README, "For instructors"): the
# slowest honest cell of any chapter (06's rank sweep) needs 12-13 s of CPU; on a 2-core machine it took
# 15 s nearly idle and 48 s running ~10 busy processes; the slowest notebook (06) 47 s and 138 s.
# The limits leave room for a slower or busier machine and a correct but less efficient answer.
c.GradeExecute.timeout = 120  # seconds, one cell
c.GradeExecute.notebook_timeout = 300  # seconds, the whole notebook (kernel start included)
# What is kept of the outputs (an honest chapter stores < 1 MB; its largest cell < 0.4 MB).
c.GradeExecute.max_cell_text = 100_000  # characters of printed text per cell
c.GradeExecute.max_cell_output = 2 * MiB  # bytes per cell (text, images, HTML)
c.GradeExecute.max_notebook_output = 8 * MiB  # bytes per notebook
# The sandbox: "bwrap" (bubblewrap, required by `make grade`) or "off" (trusted code only).
c.SandboxKernelManager.sandbox = "bwrap"
c.SandboxKernelManager.memory_limit = 3 * GiB  # data memory of the kernel (a chapter needs < 0.6 GiB)
c.SandboxKernelManager.tmp_size = 512 * MiB  # its private /tmp
c.SandboxKernelManager.threads = 1  # numerical threads: times that do not blow up on a busy machine
# A test cell deleted from a submission is put back (make grade rebuilds every submission anyway).
c.OverwriteCells.add_missing_cells = True
# Feedback pages show what a submission printed: never its scripts (the page may be opened by you).
c.HTMLExporter.sanitize_html = True
