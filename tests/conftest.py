"""Shared pytest configuration: the `gpu` marker skips (with a reason) where CUDA is missing, and the
headless Chromium of tests/test_browser.py and tests/test_site.py (``chromium_path``: where chromium is
missing, skip with advice, or fail under CI=true; ``chromium``: one browser per module).

Playwright's sync API runs an event loop in the test process for as long as ``sync_playwright()`` is
open. A second ``sync_playwright()`` then fails ("using Playwright Sync API inside the asyncio loop"), and
so does any ``asyncio.run`` of a later test (tests/test_assignments.py has some). So the browser lives
for one test module only (fixture ``chromium``): it is closed before the next module starts, whatever
order the modules run in (pytest-xdist hands each process its own order)."""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--disable-quic"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# The longest test files, longest first (2-5 minutes each on 2 cores). `make test` runs pytest-xdist with
# --dist loadfile --no-loadscope-reorder: whole files go to its two processes in collection order. xdist's
# default order (files with the most tests first) started these last, and the browser test then ran alone
# for minutes at the end: 16 minutes in all, against about 11 in this order.
LONGEST_FIRST = ("test_browser.py", "test_wheel.py", "test_assignments.py", "test_grading.py", "test_workbooks.py")


def _file_rank(item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_file_rank)  # stable: the order inside each file (and each notebook's cells) stays
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none found); run `pytest -m gpu` on a machine with one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def browser_problem() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return ("the Python package `playwright` is missing: run `make venv` "
                "(it is in the [test] extra; never `playwright install`)")
    if shutil.which("chromium") is None:
        return ("chromium is not on PATH: install Debian's with `sudo apt-get install chromium` "
                "(never `playwright install`), then rerun `make test`")
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    problem = browser_problem()
    if problem:
        if _under_ci():
            pytest.fail(f"browser test cannot run under CI=true: {problem}", pytrace=False)
        pytest.skip(f"browser test skipped: {problem}")
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def chromium(chromium_path):
    """A headless Chromium (a Playwright ``Browser``) for one test module; its tests open contexts in it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
