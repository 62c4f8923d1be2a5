"""nbgrader plugins for the Rank to LoRA course, used by ``nbgrader_config.py`` next to this file.

- :class:`ShowSolutionCells` (``nbgrader generate_assignment``): unfolds solution cells in student
  copies. The course notebooks fold every exercise's solution cell (cell metadata
  ``"jupyter": {"source_hidden": true}``) so that a learner working from ``notebooks/`` can try an
  exercise before seeing the answer. In a student copy the solution has become a stub
  (``# YOUR CODE HERE`` / ``raise NotImplementedError()``), and a folded stub would hide the very
  place a student has to write in.
- :class:`SteadyExecute` (``nbgrader autograde``): nbgrader's ``Execute`` with a kernel client that
  does not stall. With the installed jupyter_client / pyzmq, a client waiting for a kernel message
  sometimes misses that it has arrived and only notices when its wait times out; it happens most
  after ipywidgets cells (jupyter/nbclient issue #312). nbgrader would then sit idle for the whole
  cell timeout (600 s here) before going on, with no error. ``SteadyExecute`` waits in short
  slices and looks again after each, so a missed wake-up costs at most ``poll_interval`` seconds.
- :class:`GradeExecute` (``nbgrader autograde``, what ``make grade`` runs): ``SteadyExecute`` made
  for code nobody has read. Its kernel runs in a sandbox (``sandbox.py``); a cell may run
  ``timeout`` seconds and the whole notebook ``notebook_timeout`` seconds; what a cell prints is
  capped as it arrives; a kernel that dies or hangs ends the run instead of the batch; the
  exercise checks are put back in ``"grade"`` mode before every cell. Every cell that did not
  finish carries an error output (so nbgrader scores its test 0), and a "Grading notes" cell at
  the top of the notebook says in plain words what happened.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import types
from queue import Empty
from time import monotonic
from typing import Any

from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader import utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Float, Integer, default

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sandbox import MiB, SandboxKernelManager, probe  # noqa: E402  (kept next to this file)


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


async def sliced_get_msg(channel: Any, timeout: float | None = None, interval: float = 0.5) -> dict:
    """``channel.get_msg(timeout)`` for a jupyter_client async ZMQ channel, polling in slices.

    Each slice of at most ``interval`` seconds asks the socket afresh whether a message is
    waiting, so a message whose arrival the previous poll missed is picked up within
    ``interval`` seconds. Raises ``queue.Empty`` once ``timeout`` seconds pass with no message
    (``timeout=None``: wait for ever), as ``get_msg`` does.
    """
    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval}")
    deadline = None if timeout is None else monotonic() + timeout
    while True:
        step = interval if deadline is None else max(0.0, min(interval, deadline - monotonic()))
        if await channel.socket.poll(int(step * 1000)):
            return await channel._recv()
        if deadline is not None and monotonic() >= deadline:
            raise Empty


def steady_channels(kc: Any, interval: float = 0.5) -> Any:
    """Make the shell and IOPub channels of kernel client ``kc`` wait with :func:`sliced_get_msg`.

    Used by :class:`SteadyExecute` and by ``tools/run_notebooks.py`` (``make notebooks``). Channels
    that are not jupyter_client's async ZMQ ones are left as they are. Returns ``kc``.
    """
    for channel in (kc.shell_channel, kc.iopub_channel):
        if not (hasattr(channel, "socket") and hasattr(channel, "_recv")):
            continue
        async def get_msg(chan, timeout=None, _interval=interval):
            return await sliced_get_msg(chan, timeout, _interval)
        channel.get_msg = types.MethodType(get_msg, channel)
    return kc


class SteadyExecute(Execute):
    """nbgrader's ``Execute`` whose kernel client re-polls its sockets every ``poll_interval`` s.

    Configured like ``Execute`` (``c.Execute.timeout`` etc. apply); only the way the client
    waits for the shell and IOPub messages of the kernel changes.
    """

    poll_interval = Float(0.5, help="Seconds between fresh checks for a kernel message.").tag(config=True)

    async def async_start_new_kernel_client(self):
        return steady_channels(await super().async_start_new_kernel_client(), self.poll_interval)

    # nbclient binds the blocking wrapper to the base class's coroutine: re-bind it to ours.
    start_new_kernel_client = run_sync(async_start_new_kernel_client)


# The error names GradeExecute writes into cells that did not finish (tools/grade.py reads them back).
TIME_LIMIT_ERRORS = ("CellTimeoutError", "NotebookTimeoutError")
STOPPED_ERRORS = ("DeadKernelError", "NotRun")
NOTES_TAG = "grading-notes"  # metadata key of the "Grading notes" cell

# Sent to every grading kernel before the notebook: before each cell, exercise checks go back to
# "grade" mode (a failing check raises), whatever a submission's cells set (a learner's workbook
# copy says setup_notebook(workbook=True), whose checks would print instead of raising).
GRADE_MODE_PRELUDE = """\
def _rank_to_lora_grade_mode(*_):
    import sys
    checks = sys.modules.get("lora_edu.checks")
    if checks is not None:
        checks.set_mode("grade")
get_ipython().events.register("pre_run_cell", _rank_to_lora_grade_mode)
"""


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    return len(json.dumps(value, default=str))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(status: int | None) -> str:
    """A kernel's exit status in words (bwrap reports a child killed by signal N as 128 + N)."""
    if status is None:
        return "it stopped answering"
    if status < 0 or status > 128:
        number = -status if status < 0 else status - 128
        name = _signal_name(number)
        hint = {"SIGSEGV": ": a crash in compiled code", "SIGKILL": ": killed, often for using too much memory",
                "SIGABRT": ": aborted, often a failed memory allocation in compiled code"}.get(name, "")
        return f"killed by {name}{hint}"
    return f"it exited with status {status}"


_PROBED: dict[tuple[str, str], str | None] = {}


def _sandbox_problem(mode: str, bwrap: str) -> str | None:
    """Why the sandbox cannot start (None if it can, or if it is off); probed once per process."""
    if mode == "off":
        return None
    if (mode, bwrap) not in _PROBED:
        _PROBED[mode, bwrap] = probe(bwrap)
    return _PROBED[mode, bwrap]


class GradeExecute(SteadyExecute):
    """``SteadyExecute`` for grading: sandboxed kernel, time limits, output caps (see the module docstring).

    ``timeout`` (seconds, per cell), ``notebook_timeout`` (seconds, the whole notebook, kernel start
    included) and the output caps are set in ``nbgrader_config.py``; the sandbox and its memory
    limit through ``c.SandboxKernelManager``.
    """

    notebook_timeout = Integer(600, help="Seconds the whole notebook may run; later cells are not run.").tag(config=True)
    max_cell_text = Integer(100_000, help="Characters of printed text kept per cell.").tag(config=True)
    max_cell_output = Integer(2 * MiB, help="Bytes of output (text, images, HTML) kept per cell.").tag(config=True)
    max_notebook_output = Integer(8 * MiB, help="Bytes of output kept for the whole notebook.").tag(config=True)
    max_scratch = Integer(64 * MiB, help="Bytes a sandboxed kernel may leave in its socket folder.").tag(config=True)

    @default("kernel_manager_class")
    def _km_default(self):
        return SandboxKernelManager

    @default("shutdown_kernel")
    def _shutdown_default(self):
        return "immediate"

    @default("iopub_timeout")
    def _iopub_timeout_default(self):
        return 10  # seconds for a cell's last outputs to arrive after its reply

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", SandboxKernelManager)
        super().__init__(*args, **kwargs)

    # -- the notebook ------------------------------------------------------------------------

    def preprocess(self, nb: NotebookNode, resources: dict | None = None, km=None):
        if km is None and issubclass(self.kernel_manager_class, SandboxKernelManager):
            problem = _sandbox_problem(self.config.SandboxKernelManager.get("sandbox", "bwrap"),
                                       self.config.SandboxKernelManager.get("bwrap", "bwrap"))
            if problem:
                raise RuntimeError(f"cannot isolate student code: {problem}. Fix that, or (for code you trust) "
                                   "set c.SandboxKernelManager.sandbox = 'off'.")
        self._deadline = monotonic() + self.notebook_timeout
        self._stopped: str | None = None  # why the remaining cells are not run
        self._notes: list[str] = []
        self._prelude_sent = False
        self._cell_budget: float | None = None
        self._out_bytes = 0
        self._cut: set[int] = set()
        self._cell_bytes: dict[int, int] = {}
        self._cell_text: dict[int, int] = {}
        self._kill_reason: str | None = None
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        self._code_number = {i: n for n, i in enumerate(code, 1)}
        try:
            nb, resources = super().preprocess(nb, resources, km)
        finally:
            self._write_notes(self.nb)
            self.nb.metadata.pop("widgets", None)  # live widget models: not graded, and unbounded in size
        return nb, resources

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int):
        if cell.cell_type != "code" or not cell.source.strip():
            return cell, resources
        if self._stopped is None and monotonic() >= self._deadline:
            self._stopped = (f"the notebook reached its time limit ({self.notebook_timeout} s) before code cell "
                             f"{self._label(cell, index)}")
            self._notes.append(f"⏱ The notebook ran longer than {self.notebook_timeout} s, the limit for a whole "
                               f"notebook: code cell {self._label(cell, index)} and the cells after it were not run, "
                               "and their exercises score 0.")
        if self._stopped is not None:
            self._mark(cell, "NotRun", f"This cell was not run: {self._stopped}.")
            return cell, resources
        remaining = self._deadline - monotonic()
        whole_notebook = remaining < self.timeout
        self._cell_budget = max(1.0, min(float(self.timeout), remaining))
        if whole_notebook:
            self.error_on_timeout = self._error(
                "NotebookTimeoutError", f"The notebook ran longer than {self.notebook_timeout} s, the limit for a "
                "whole notebook: this cell was stopped, and the cells after it were not run.")
        else:
            self.error_on_timeout = self._error(
                "CellTimeoutError", f"This cell ran longer than {self.timeout} s, the limit for one cell, and was "
                "stopped.")
        try:
            if not self._prelude_sent:
                self._prelude_sent = True
                run_sync(self._async_prelude)()
            cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            status = self.km.exit_status() if hasattr(self.km, "exit_status") else None
            why = self._kill_reason or describe_exit(status)
            self._mark(cell, "DeadKernelError", f"The Python kernel died while running this cell ({why}).")
            self._stopped = f"the kernel died in code cell {self._label(cell, index)}"
            self._notes.append(f"💥 The Python kernel died in code cell {self._label(cell, index)} ({why}): the cells "
                               "after it were not run, and their exercises score 0.")
            return cell, resources
        except CellTimeoutError:
            # Interrupted after its time limit, the kernel did not stop (it ignores KeyboardInterrupt,
            # or is stuck in compiled code): end it.
            run_sync(self._async_kill)()
            name = "NotebookTimeoutError" if whole_notebook else "CellTimeoutError"
            limit = f"{self.notebook_timeout} s for the notebook" if whole_notebook else f"{self.timeout} s for one cell"
            self._mark(cell, name, f"This cell ran past its time limit ({limit}) and did not stop when "
                                   "interrupted, so its kernel was ended.")
            self._stopped = f"the kernel was ended after code cell {self._label(cell, index)} ran past its time limit"
            self._notes.append(f"⏱ Code cell {self._label(cell, index)} ran past its time limit ({limit}) and did not "
                               "stop when interrupted: the cells after it were not run, and their exercises score 0.")
            return cell, resources
        finally:
            self._cell_budget = None
        errors = {o.get("ename") for o in cell.outputs if o.output_type == "error"}
        if "CellTimeoutError" in errors:
            self._notes.append(f"⏱ Code cell {self._label(cell, index)} ran longer than {self.timeout} s, the limit for "
                               "one cell, and was stopped; the cells after it still ran.")
        elif "NotebookTimeoutError" in errors:
            self._stopped = (f"the notebook reached its time limit ({self.notebook_timeout} s) in code cell "
                             f"{self._label(cell, index)}")
            self._notes.append(f"⏱ The notebook ran longer than {self.notebook_timeout} s, the limit for a whole "
                               f"notebook: code cell {self._label(cell, index)} was stopped and the cells after it were "
                               "not run; their exercises score 0.")
        return cell, resources

    async def _async_prelude(self) -> None:
        msg_id = await ensure_async(self.kc.execute(GRADE_MODE_PRELUDE, silent=True, store_history=False))
        await self.async_wait_for_reply(msg_id)

    async def _async_kill(self) -> None:
        try:
            await ensure_async(self.km.shutdown_kernel(now=True))
        except Exception as exc:  # already gone
            self.log.warning("could not end the kernel: %s", exc)

    def _get_timeout(self, cell: NotebookNode | None) -> int | None:
        if self._cell_budget is None or cell is None:
            return super()._get_timeout(cell)
        return max(1, int(math.ceil(self._cell_budget)))

    async def _async_check_alive(self) -> None:
        scratch = getattr(self.km, "scratch_bytes", None)
        if scratch is not None and scratch() > self.max_scratch:
            self._kill_reason = f"it wrote more than {self.max_scratch // MiB} MiB to its private folder"
            await self._async_kill()
        await super()._async_check_alive()

    # -- outputs -------------------------------------------------------------------------------

    def _label(self, cell: NotebookNode, index: int) -> str:
        """How a student finds the cell: its exercise id, or its number among the code cells and first line."""
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        first = next((line.strip() for line in cell.source.split("\n") if line.strip()), "")
        first = first if len(first) <= 40 else first[:37] + "..."
        first = re.sub(r"[^\w .,:;=()\[\]{}+*/-]", "?", first)  # student code, shown in Markdown: no HTML
        return f"`{grade_id}`" if grade_id else f"{self._code_number.get(index, index + 1)} (`{first}`)"

    @staticmethod
    def _error(name: str, message: str) -> dict:
        return {"ename": name, "evalue": message, "traceback": [f"\x1b[0;31m{name}\x1b[0m: {message}"]}

    def _mark(self, cell: NotebookNode, name: str, message: str) -> None:
        cell.setdefault("outputs", []).append(from_dict({"output_type": "error", **self._error(name, message)}))

    def _write_notes(self, nb: NotebookNode) -> None:
        cut = sorted(self._cut)
        if cut:
            labels = ", ".join(self._label(self.nb.cells[i], i) for i in cut if i < len(self.nb.cells))
            self._notes.append(f"✂ Code cell{'s' if len(cut) > 1 else ''} {labels} printed "
                               f"more than this notebook keeps ({self.max_cell_text // 1000} kB of text, "
                               f"{self.max_cell_output // MiB} MiB of output per cell, "
                               f"{self.max_notebook_output // MiB} MiB in all): the rest was dropped.")
        if not self._notes:
            return
        text = "\n".join(f"- {note}" for note in self._notes)
        for cell in nb.cells:
            if cell.cell_type == "markdown" and cell.metadata.get(NOTES_TAG):
                cell.source = cell.source.rstrip("\n") + "\n" + text
                return
        nb.cells.insert(0, from_dict({"cell_type": "markdown", "id": "grading-notes", "metadata": {NOTES_TAG: True},
                                      "source": "**Grading notes**\n\n" + text}))

    def _keep(self, cell_index: int, size: int, text: int) -> tuple[bool, int]:
        """Whether an output of ``size`` bytes (``text`` of them printed text) fits; else how much text does."""
        used, used_text = self._cell_bytes.get(cell_index, 0), self._cell_text.get(cell_index, 0)
        room = min(self.max_cell_output - used, self.max_notebook_output - self._out_bytes)
        text_room = min(room, self.max_cell_text - used_text)
        if size <= room and text <= text_room:
            self._cell_bytes[cell_index] = used + size
            self._cell_text[cell_index] = used_text + text
            self._out_bytes += size
            return True, 0
        return False, max(0, text_room) if text else 0

    def _cut_note(self, outs: list, cell_index: int) -> None:
        if cell_index not in self._cut:
            self._cut.add(cell_index)
            outs.append(from_dict({"output_type": "stream", "name": "stdout",
                                   "text": "\n[... output cut here: the rest of what this cell printed is not "
                                           "kept (grading limit) ...]\n"}))

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int):
        if cell_index in self._cut:
            return None
        content, kind = msg["content"], msg["msg_type"]
        if kind == "stream":
            text = content.get("text", "")
            fits, room = self._keep(cell_index, len(text), len(text))
            if not fits:
                if room:
                    content["text"] = text[:room]
                    self._keep(cell_index, room, room)
                    super().output(outs, msg, display_id, cell_index)
                self._cut_note(outs, cell_index)
                return None
        elif kind == "error":  # kept, but never a huge one
            content["evalue"] = str(content.get("evalue", ""))[:5000]
            content["traceback"] = [line[:5000] for line in content.get("traceback", [])[:200]]
        else:
            data = content.get("data", {})
            text = sum(len(v) for k, v in data.items() if k == "text/plain" and isinstance(v, str))
            fits, _ = self._keep(cell_index, sum(_size(v) for v in data.values()), text)
            if not fits:
                self._cut_note(outs, cell_index)
                return None
        return super().output(outs, msg, display_id, cell_index)

    def _update_display_id(self, display_id: str, msg: dict) -> None:
        if sum(_size(v) for v in msg["content"].get("data", {}).values()) > self.max_cell_output:
            return  # an update larger than a whole cell may hold is dropped
        super()._update_display_id(display_id, msg)
