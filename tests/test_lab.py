"""`make lab` starts JupyterLab bound to 127.0.0.1 with token authentication: start it the same way
(tools/lab.py's command line, a free port, a token) and check that the API needs the token."""
from __future__ import annotations

import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.lab import NOTEBOOKS, free_port, lab_command  # noqa: E402


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def running_lab(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    cmd = lab_command(port, token, browser=False, workspaces_dir=str(tmp_path / "workspaces"))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=NOTEBOOKS, stdout=log, stderr=subprocess.STDOUT)
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
    # the first notebook is served from the course folder
    assert _status(f"{base}/api/contents/00_welcome.ipynb?token={token}") == 200


def test_lab_command_refuses_an_empty_token():
    with pytest.raises(ValueError, match="token"):
        lab_command(8888, "")


def test_lab_command_binds_to_localhost_and_opens_the_welcome_notebook():
    cmd = lab_command(8888, "abc", browser=False, allow_root=False)
    assert "--ServerApp.ip=127.0.0.1" in cmd
    assert "--IdentityProvider.token=abc" in cmd
    assert cmd[-1] == "00_welcome.ipynb"
    assert "--allow-root" not in cmd
    assert "--allow-root" in lab_command(8888, "abc", allow_root=True)
