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
"""
from __future__ import annotations

import types
from queue import Empty
from time import monotonic
from typing import Any

from jupyter_core.utils import run_sync
from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Float


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
