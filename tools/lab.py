"""Start JupyterLab on the course: the one place that knows how ``make lab`` launches it.

``make lab`` runs this script. It first brings the learner's workbooks up to date the safe way
(``tools/workbooks.py``: write the missing ones, never overwrite one, say which are older than their
chapter), then starts JupyterLab bound to 127.0.0.1 with token authentication, rooted at the
repository (so that ``workbook/``, ``notebooks/`` and the README are all reachable) and opening
``workbook/00_welcome.ipynb``. The tests import :func:`lab_command` so that they start JupyterLab
exactly the same way.

Usage::

    python tools/lab.py [--port 8888] [--no-browser] [--allow-root]

The token is taken from ``$JUPYTER_TOKEN`` if set, otherwise a fresh random one; it is
never empty, and the URL with the token is printed before the server starts.
"""
from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
NOTEBOOKS = ROOT / "notebooks"
WORKBOOK = ROOT / "workbook"
FIRST_NOTEBOOK = "workbook/00_welcome.ipynb"  # relative to ROOT, JupyterLab's root folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_command(port: int, token: str, *, browser: bool = True, allow_root: bool | None = None,
                workspaces_dir: str | None = None, open_file: str | None = FIRST_NOTEBOOK) -> list[str]:
    """The JupyterLab command line for the course (run it with ``cwd=ROOT``).

    ``token`` must be non-empty: the course never turns authentication off.
    ``allow_root=None`` adds ``--allow-root`` only when running as root.
    ``open_file`` is relative to the repository, JupyterLab's root folder.
    """
    if not token:
        raise ValueError("token must be a non-empty string: the course never runs JupyterLab without a token")
    if allow_root is None:
        allow_root = hasattr(os, "geteuid") and os.geteuid() == 0
    cmd = [sys.executable, "-m", "jupyter", "lab",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--ServerApp.root_dir={ROOT}", f"--IdentityProvider.token={token}",
           f"--ServerApp.open_browser={browser}"]
    if allow_root:
        cmd.append("--allow-root")
    if workspaces_dir is not None:
        cmd.append(f"--LabApp.workspaces_dir={workspaces_dir}")
    if open_file:
        cmd.append(open_file)
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8888, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    parser.add_argument("--allow-root", action="store_true", help="allow running as root (auto-detected)")
    args = parser.parse_args(argv)
    from tools import workbooks

    workbooks.update(NOTEBOOKS, WORKBOOK)  # writes the missing ones; never overwrites a learner's file
    first = WORKBOOK / Path(FIRST_NOTEBOOK).name
    open_file = first.relative_to(ROOT).as_posix() if first.is_file() else None
    port = args.port or free_port()
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    url = f"http://127.0.0.1:{port}/lab/tree/{open_file or ''}?token={token}"
    print(f"\n  Rank to LoRA is starting. Open this URL in your browser (Ctrl-C to stop):\n\n    {url}\n", flush=True)
    cmd = lab_command(port, token, browser=not args.no_browser, allow_root=args.allow_root or None,
                      open_file=open_file)
    os.chdir(ROOT)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
