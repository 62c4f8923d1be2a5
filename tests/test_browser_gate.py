"""The browser test's rule for a machine without chromium: skip with advice, but fail under CI=true.

Runs tests/test_browser.py in a subprocess whose PATH holds no chromium (so it works the same on a
machine with or without a browser) and reads pytest's verdict.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_browser_test(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(tmp_path)  # an empty folder: no chromium on PATH
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_browser.py"), "-k", "00_welcome"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", [None])
def test_without_chromium_the_browser_test_is_skipped_with_advice(tmp_path, ci):
    result = run_browser_test(tmp_path, ci)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "apt-get install chromium" in result.stdout and "never `playwright install`" in result.stdout


@pytest.mark.parametrize("ci", ["true"])
def test_without_chromium_under_ci_the_browser_test_fails(tmp_path, ci):
    result = run_browser_test(tmp_path, ci)
    assert result.returncode != 0
    assert "browser test cannot run under CI=true" in result.stdout
    assert "chromium is not on PATH" in result.stdout


def test_a_browser_module_leaves_no_event_loop_to_the_modules_after_it(tmp_path):
    """Under pytest-xdist a process may run tests/test_site.py (headless Chromium through Playwright's sync
    API) before tests/test_assignments.py, whose tests call ``asyncio.run``. While a ``sync_playwright()``
    is open its event loop counts as running, and ``asyncio.run`` fails; with a browser kept for the whole
    session both of these tests failed. The browser now closes with its module (tests/conftest.py)."""
    if subprocess.run(["which", "chromium"], capture_output=True).returncode != 0:
        pytest.skip("needs chromium (tests/test_browser.py says how to install it)")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                             str(ROOT / "tests" / "test_site.py"), str(ROOT / "tests" / "test_assignments.py"),
                             "-k", "test_page_in_chromium and index or test_sliced_get_msg"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout, result.stdout[-2000:]
