"""`make lab` starts JupyterLab bound to 127.0.0.1 with token authentication: start it the same way
(tools/lab.py's command line, a free port, a token) and check that the API needs the token. Before it
starts, `make lab` writes the learner's missing workbooks (never overwriting one) and opens
workbook/00_welcome.ipynb, with the repository as JupyterLab's root."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import lab  # noqa: E402
from tools.lab import free_port, lab_command  # noqa: E402


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def running_lab(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    # open a file relative to the root, as `make lab` opens workbook/00_welcome.ipynb (which a clean
    # checkout does not have before `make workbooks`)
    cmd = lab_command(port, token, browser=False, workspaces_dir=str(tmp_path / "workspaces"),
                      open_file="notebooks/00_welcome.ipynb")
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited early:\n{(tmp_path / 'lab.log').read_text()}")
        try:
            _status(f"{base}/api/status?token={token}")
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"JupyterLab did not answer within 60 s:\n{(tmp_path / 'lab.log').read_text()}")
    yield base, token, tmp_path / "lab.log"
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_lab_answers_with_token_and_refuses_without(running_lab):
    base, token, log = running_lab
    assert _status(f"{base}/api/status?token={token}") == 200
    assert _status(f"{base}/api/status") == 403
    assert _status(f"{base}/api/status?token=wrong{token}") == 403
    # the repository is the root: the course's notebooks (and, once written, the workbooks) are reachable
    assert _status(f"{base}/api/contents/notebooks/00_welcome.ipynb?token={token}") == 200
    with urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=5) as response:
        listing = {item["name"] for item in json.load(response)["content"]}
    assert {"notebooks", "README.md"} <= listing and ".venv" not in listing


def test_lab_command_refuses_an_empty_token():
    with pytest.raises(ValueError, match="token"):
        lab_command(8888, "")


def test_lab_command_binds_to_localhost_and_opens_the_welcome_workbook():
    cmd = lab_command(8888, "abc", browser=False, allow_root=False)
    assert "--ServerApp.ip=127.0.0.1" in cmd
    assert "--IdentityProvider.token=abc" in cmd
    assert f"--ServerApp.root_dir={ROOT}" in cmd
    assert cmd[-1] == "workbook/00_welcome.ipynb"
    assert "--allow-root" not in cmd
    assert "--allow-root" in lab_command(8888, "abc", allow_root=True)


def test_make_lab_writes_the_workbooks_first_and_never_overwrites_one(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for source in sorted(lab.NOTEBOOKS.glob("0[01]_*.ipynb")):
        shutil.copyfile(source, notebooks / source.name)
    started = []
    monkeypatch.setattr(lab, "ROOT", tmp_path)
    monkeypatch.setattr(lab, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(lab, "WORKBOOK", tmp_path / "workbook")
    monkeypatch.setattr(lab.os, "execv", lambda path, cmd: started.append(cmd))
    monkeypatch.setattr(lab.os, "chdir", lambda path: started.append(path))
    monkeypatch.setenv("JUPYTER_TOKEN", "t0ken")

    lab.main(["--port", "9999", "--no-browser"])
    written = sorted(p.name for p in (tmp_path / "workbook").glob("*.ipynb"))
    assert written == sorted(p.name for p in notebooks.iterdir()) and written[0] == "00_welcome.ipynb"
    assert started[0] == tmp_path and started[1][-1] == "workbook/00_welcome.ipynb"
    assert f"--ServerApp.root_dir={tmp_path}" in started[1]
    out = capsys.readouterr().out
    assert "Wrote 2 new workbooks" in out and "http://127.0.0.1:9999/lab/tree/workbook/00_welcome.ipynb?token=t0ken" in out

    mine = tmp_path / "workbook" / "00_welcome.ipynb"
    mine.write_text(mine.read_text().replace("raise NotImplementedError()", "return 42"))
    edited = mine.read_bytes()
    lab.main(["--port", "9999", "--no-browser"])
    assert mine.read_bytes() == edited, "a second `make lab` keeps the learner's work"
    assert "up to date" in capsys.readouterr().out
