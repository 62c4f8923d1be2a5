"""Shared pytest configuration: the `gpu` marker skips (with a reason) where CUDA is missing, and the
headless Chromium of tests/test_browser.py and tests/test_site.py.

Playwright's sync API runs an event loop in the test process for as long as ``sync_playwright()`` is
open. A second ``sync_playwright()`` then fails ("using Playwright Sync API inside the asyncio loop"), and
so does any ``asyncio.run`` of a later test (tests/test_assignments.py has some). So the browser lives
for one test module only (fixture ``chromium``): it is closed before the next module starts, whatever
order the modules run in (pytest-xdist hands each process its own order)."""
from __future__ import annotations

import pytest


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


@pytest.fixture(scope="module")
def chromium(chromium_path):
    """A headless Chromium (a Playwright ``Browser``) for one test module; its tests open contexts in it."""
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM_FLAGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
