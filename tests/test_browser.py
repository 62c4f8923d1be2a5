"""Every notebook, run the way a learner runs it: JupyterLab in a real (headless) Chromium.

One JupyterLab server for the whole session, started like ``make lab`` does (``tools/lab.py``'s
:func:`lab_command`: 127.0.0.1, its own free port, a token, a fresh workspaces directory, the repository
as root). For each numbered notebook (``notebooks/[0-9][0-9]_*.ipynb``, so new chapters are covered
automatically) the test opens it at ``/lab/workspaces/<name>/tree/notebooks/<notebook>``, waits for the
kernel to be attached, connected and idle, clears the stored outputs, runs every cell through the Run menu
("Run All Cells"), waits until the kernel is idle and no cell is pending, and then checks:

- no error output anywhere — in a cell, or inside a widget's Output area — naming the notebook and cell;
- every cell that stores a figure in the ``.ipynb`` shows one in the browser (a loaded ``<img>``);
- every ipywidgets output renders as a widget view (one closed on purpose, like a tqdm bar with
  ``leave=False``, need not), every slider has a label, and moving the first slider of each slider cell
  with the keyboard (one arrow-key step, a second if the first changes nothing) changes that cell's output;
- the notebook file on disk is left untouched (the test server turns autosave off).

A screenshot of the whole notebook goes to ``tests/artifacts/browser/<notebook>.png``, the browser
console's errors and warnings to ``<notebook>.console.txt`` beside it, and the timings to ``timings.json``.

A learner's workbook gets its own test (``test_a_learner_answers_an_exercise_in_a_workbook``): chapter 00's
workbook, written by ``tools/workbooks.py`` into ``tests/artifacts/browser-workbook/``, runs to the end with
⏳ in its check; an answer typed into the exercise cell with the keyboard and run with Shift+Enter gets ✅,
a wrong one ❌ with its hint, and a click opens the folded model solution. A screenshot of each state goes to
``tests/artifacts/browser/workbook-00_welcome-<state>.png``.

The test server gets its own JupyterLab settings (a fresh ``--LabApp.user_settings_dir``, so nobody's
personal settings leak in, and ``--LabApp.app_settings_dir`` with an ``overrides.json``): the course's
``lab/overrides.json`` (no news pop-up) plus, for the test only, autosave off and notebook windowing off
(``windowingMode: none``). JupyterLab 4 otherwise leaves far-off-screen cells out of the DOM, which
would hide outputs from the checks and from the screenshot; with windowing off every cell is in the
DOM, which is slower for huge notebooks but changes nothing a learner sees.

Needs Debian's chromium (``apt-get install chromium``; never ``playwright install``) and the Python
``playwright`` package. Without them the test is skipped with that advice — except under ``CI=true``,
where a missing browser fails the run. ``LORA_EDU_BROWSER_TIMEOUT=<seconds>`` changes the time allowed for
"Run All Cells" per notebook (240 s). ``LORA_EDU_BROWSER_NOTEBOOKS=<folder>`` points the test at another
folder of notebooks (how the test itself was checked against notebooks with errors and broken sliders).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lora_edu import progress  # noqa: E402
from tools import workbooks  # noqa: E402
from tools.lab import NOTEBOOKS, free_port, lab_command  # noqa: E402

pytestmark = pytest.mark.browser

NOTEBOOK_DIR = Path(os.environ.get("LORA_EDU_BROWSER_NOTEBOOKS") or NOTEBOOKS).resolve()
NOTEBOOK_PATHS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
HELPERS_JS = Path(__file__).with_name("browser_helpers.js")

# "Run All Cells" on one notebook: each is meant to take under 60 s on 2 cores; a slow machine may raise it.
RUN_TIMEOUT_S = float(os.environ.get("LORA_EDU_BROWSER_TIMEOUT", "240"))
OPEN_TIMEOUT_S = 120     # JupyterLab loaded, the notebook open, its kernel started and idle
WIDGET_TIMEOUT_S = 30    # widget views to render after the run
SLIDER_TIMEOUT_S = 30    # a slider's output to change after one arrow-key step
POLL_MS = 250            # wait_for_function needs an explicit polling interval in headless Chromium

VIEWPORT = {"width": 1280, "height": 900}
MAX_SCREENSHOT_HEIGHT = 30000

# JupyterLab settings for the test server only, on top of the course's lab/overrides.json.
TEST_SETTINGS = {
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none", "scrollPastEnd": False},
}
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


@pytest.fixture(scope="session")
def lab(chromium_path, tmp_path_factory):
    """One JupyterLab for all notebooks, started as `make lab` starts it, with test-only settings."""
    tmp = tmp_path_factory.mktemp("browser-lab")
    settings_dir = tmp / "settings"
    settings_dir.mkdir()
    overrides = json.loads((ROOT / "lab" / "overrides.json").read_text())
    for plugin, values in TEST_SETTINGS.items():
        overrides.setdefault(plugin, {}).update(values)
    (settings_dir / "overrides.json").write_text(json.dumps(overrides, indent=2))

    port, token = free_port(), secrets.token_hex(16)
    cmd = lab_command(port, token, browser=False, workspaces_dir=str(tmp / "workspaces"), open_file=None)
    root = ROOT  # as `make lab`: the repository, so notebooks/ and the workbooks are both reachable
    if NOTEBOOK_DIR != NOTEBOOKS:
        root = NOTEBOOK_DIR
        cmd = [f"--ServerApp.root_dir={NOTEBOOK_DIR}" if c.startswith("--ServerApp.root_dir=") else c for c in cmd]
    cmd += [f"--LabApp.app_settings_dir={settings_dir}", f"--LabApp.user_settings_dir={tmp / 'user-settings'}",
            "--LabApp.expose_app_in_browser=True"]
    log_path = tmp / "lab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if _get(f"{base}/api/status?token={token}")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"JupyterLab did not answer within 90 s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    # The server must really use the settings above (news pop-up off, windowing off, autosave off).
    for plugin, key, want in [("@jupyterlab/apputils-extension:notification", "fetchNews", "false"),
                              ("@jupyterlab/notebook-extension:tracker", "windowingMode", "none"),
                              ("@jupyterlab/docmanager-extension:plugin", "autosave", False)]:
        status, body = _get(f"{base}/lab/api/settings/{plugin}?token={token}")
        if status == 200:  # overrides become the schema's defaults; user settings (none here) would win
            answer = json.loads(body)
            got = answer["settings"].get(key, answer["schema"]["properties"][key].get("default"))
        else:
            got = f"HTTP {status}"
        if got != want:
            proc.kill()
            pytest.fail(f"the test's JupyterLab ignores its settings overrides: {plugin} {key} = {got!r}, want {want!r}")
    yield {"base": base, "token": token, "log": log_path, "root": root}
    # Shut down any kernel a failed test left running, so that stopping the server is quick and clean.
    status, body = _get(f"{base}/api/kernels?token={token}")
    for kernel in json.loads(body) if status == 200 else []:
        request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=20).close()
        except (urllib.error.URLError, TimeoutError):
            pass
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser_context(chromium):
    # One context for all notebooks: its HTTP cache keeps JupyterLab's scripts between pages.
    context = chromium.new_context(viewport=VIEWPORT)
    context.add_init_script(path=str(HELPERS_JS))
    yield context
    context.close()


@pytest.fixture(scope="session")
def timings():
    results: dict[str, dict[str, float]] = {}
    yield results
    if results:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.json").write_text(json.dumps(results, indent=2) + "\n")


def _stored_figure_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of the cells whose stored outputs hold an image (a figure the learner should see)."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            and any(m in out.get("data", {}) for out in cell.get("outputs", []) for m in IMAGE_MIMES)]


def _describe(nb: nbformat.NotebookNode, index: int) -> str:
    first = nb.cells[index].source.strip().splitlines()[:1] if index < len(nb.cells) else []
    return f"cell {index} ({first[0][:60]!r})" if first else f"cell {index}"


def _wait(page, what: str, expression: str, arg, timeout_s: float, explain=None):
    """page.wait_for_function with polling and a clear failure message on timeout."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(expression, arg=arg, polling=POLL_MS, timeout=timeout_s * 1000)
        return
    except PlaywrightTimeout:
        pass
    detail = explain() if explain else ""
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}. {detail}".strip(), pytrace=False)


def _settled_widgets(page, name: str) -> list[dict]:
    """The widget outputs once every view has rendered (or failed to) and two looks in a row agree.

    Polled from Python: the page function is async, and wait_for_function does not await promises.
    The second look matters: views (and "Error displaying widget") appear a moment after their output.
    """
    deadline = time.monotonic() + WIDGET_TIMEOUT_S
    previous = None
    while True:
        state = page.evaluate("p => window.__course.widgets(p)", name)
        if state == previous and all(c["rendered"] >= c["expected"] or c["broken"] for c in state):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WIDGET_TIMEOUT_S} s waiting for the widget views in {name} to render: "
                        f"{json.dumps(state)}", pytrace=False)
        previous = state
        page.wait_for_timeout(500)


def _screenshot(page, name: str) -> Path:
    """The whole notebook in one PNG: grow the window to the notebook's height, then capture it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    geometry = page.evaluate("p => window.__course.contentHeight(p)", name)
    # the window's height minus the scrolling area's is the chrome around it (menus, toolbar, status bar)
    chrome = VIEWPORT["height"] - geometry["visible"]
    height = VIEWPORT["height"]
    for _ in range(4):  # a taller window can re-flow the notebook (it may grow a little): measure again
        if geometry["height"] <= geometry["visible"] or height >= MAX_SCREENSHOT_HEIGHT:
            break
        height = min(chrome + geometry["height"] + 2, MAX_SCREENSHOT_HEIGHT)
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        page.wait_for_timeout(500)  # let JupyterLab lay out the taller window
        geometry = page.evaluate("p => window.__course.contentHeight(p)", name)  # also back to the top
    path = ARTIFACTS / f"{Path(name).stem}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)
    return path


def _move_first_slider(page, name: str, nb, cell: int) -> str | None:
    """Press an arrow key on the cell's first slider; return a problem, or None if its output changed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    before = page.evaluate("([p, c]) => window.__course.snapshot(p, c)", [name, cell])
    for _ in range(2):  # one step may legitimately change nothing (e.g. a rank above the matrix's rank)
        info = page.evaluate("([p, c]) => window.__course.focusSlider(p, c)", [name, cell])
        if not info["focused"]:
            return f"{_describe(nb, cell)}: could not focus slider {info['label']!r} with the keyboard"
        at_max = info["value"] is not None and float(info["value"]) >= float(info["max"])
        page.keyboard.press("ArrowLeft" if at_max else "ArrowRight")
        _wait(page, f"slider {info['label']!r} in {_describe(nb, cell)} to move after an arrow key",
              "([p, c, v]) => window.__course.sliderValue(p, c) !== v", [name, cell, info["value"]], 10)
        try:
            page.wait_for_function(
                "([p, c, before]) => window.__course.runState(p).done && window.__course.snapshot(p, c) !== before",
                arg=[name, cell, before], polling=POLL_MS, timeout=SLIDER_TIMEOUT_S * 1000)
            return None
        except PlaywrightTimeout:
            continue
    value = page.evaluate("([p, c]) => window.__course.sliderValue(p, c)", [name, cell])
    return (f"{_describe(nb, cell)}: moving slider {info['label']!r} two steps (to {value}) did not change "
            f"the cell's output ({SLIDER_TIMEOUT_S} s allowed per step)")


def _widget_problems(page, name: str, nb, widgets: list[dict]) -> list[str]:
    """Every widget output renders, every slider has a visible label, and one slider per cell works."""
    problems = []
    for cell in widgets:
        where = _describe(nb, cell["cell"])
        mine = [f"{where}: {text[:200]}" for text in cell["broken"]]
        if cell["rendered"] < cell["expected"]:
            mine.append(f"{where}: {cell['expected'] - cell['rendered']} widget output(s) did not render")
        for slider in cell["sliders"]:
            if not slider["label"]:
                mine.append(f"{where}: a slider without a label (give it a description=...)")
            elif not slider["visible"]:
                mine.append(f"{where}: slider {slider['label']!r} is not visible")
        if cell["sliders"] and not mine:
            if not cell["hasOutputWidget"]:
                mine.append(f"{where}: sliders with no output to change (use widgets.interact or interactive_output)")
            else:
                problem = _move_first_slider(page, name, nb, cell["cell"])
                if problem:
                    mine.append(problem)
        problems += mine
    return problems


def _error_report(nb, errors: list[dict]) -> str:
    return "\n".join(f"  {_describe(nb, e['cell'])} [{e['where']}]: {e['ename']}: {e['evalue']}" for e in errors)


def _open_and_run_all(page, lab, name: str, nb, page_errors: list[str]) -> tuple[float, float]:
    """Open notebook ``name`` (its path under JupyterLab's root), clear its outputs and *Run All Cells* from
    the Run menu; fail on any error output. Returns when it was open and when the run ended (monotonic s)."""
    page.goto(f"{lab['base']}/lab/workspaces/{Path(name).stem}/tree/{name}?token={lab['token']}")
    _wait(page, f"{name} to open with its kernel connected and idle",
          "p => window.__course.kernelReady(p)", name, OPEN_TIMEOUT_S,
          lambda: f"Kernel: {page.evaluate('p => window.__course && window.__course.kernelStatus(p)', name)}. "
                  f"Page errors: {page_errors[-3:]}. Server log: {lab['log']}")
    t_open = time.monotonic()

    # Start from a clean slate so that nothing stored in the file can pass for a fresh output.
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^\s*Run\s*$")).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()

    def still_running() -> str:
        state = page.evaluate("p => window.__course.runState(p)", name)
        pending = ", ".join(_describe(nb, i) for i in state["pending"][:3]) or "none"
        return (f"{name}: kernel {state['kernel']}; cells still pending [*]: {pending}; "
                f"{len(state['notRun'])} cell(s) not run yet. Each notebook should run in well under a minute.")

    _wait(page, f"'Run All Cells' to finish in {name}", "p => window.__course.runState(p).done",
          name, RUN_TIMEOUT_S, still_running)
    t_run = time.monotonic()
    errors = page.evaluate("p => window.__course.errors(p)", name)
    if errors:
        pytest.fail(f"{name}: error output(s) after Run All Cells:\n" + _error_report(nb, errors), pytrace=False)
    return t_open, t_run


@pytest.mark.skipif(not NOTEBOOK_PATHS, reason=f"no numbered notebooks in {NOTEBOOK_DIR}")
@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_notebook_runs_in_jupyterlab(path, lab, browser_context, timings):
    name = path.relative_to(lab["root"]).as_posix()  # JupyterLab's path: notebooks/00_welcome.ipynb
    nb = nbformat.read(path, as_version=4)
    on_disk = path.read_bytes()
    page = browser_context.new_page()
    page.set_default_timeout(60_000)
    page_errors: list[str] = []   # uncaught exceptions in JupyterLab's JavaScript
    console: list[str] = []       # the browser console's errors and warnings
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on("console", lambda msg: console.append(f"[{msg.type}] {msg.text}") if msg.type in ("error", "warning") else None)
    t0 = time.monotonic()
    try:
        t_open, t_run = _open_and_run_all(page, lab, name, nb, page_errors)

        # Figures: every cell that stores an image must show a loaded <img> in the browser too.
        images = page.evaluate("p => window.__course.images(p)", name)
        missing = [i for i in _stored_figure_cells(nb) if images[str(i)]["loaded"] == 0]
        if missing:
            pytest.fail(f"{name}: no figure rendered in " + ", ".join(_describe(nb, i) for i in missing), pytrace=False)

        # Widgets: every widget output renders; every slider has a label; moving one changes its output.
        problems = _widget_problems(page, name, nb, _settled_widgets(page, name))
        errors = page.evaluate("p => window.__course.errors(p)", name)
        if errors:
            problems.append("error output(s) after moving the sliders:\n" + _error_report(nb, errors))
        if problems:
            pytest.fail(f"{name}: widget problem(s):\n  " + "\n  ".join(problems), pytrace=False)
        t_checks = time.monotonic()
    finally:
        try:  # a screenshot of what the learner would see, pass or fail
            if page.evaluate("p => !!(window.__course && window.__course.panel(p))", name):
                _screenshot(page, name)
                page.evaluate("p => window.__course.shutdown(p)", name)
        except Exception as exc:  # noqa: BLE001 - never hide the test's own failure
            print(f"no screenshot of {name}: {exc}")
        finally:
            page.close()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / f"{path.stem}.console.txt").write_text(
                "".join(f"[pageerror] {e}\n" for e in page_errors) + "".join(f"{m}\n" for m in console))
    timings[path.name] = {"open_s": round(t_open - t0, 1), "run_all_s": round(t_run - t_open, 1),
                     "checks_s": round(t_checks - t_run, 1), "total_s": round(time.monotonic() - t0, 1)}
    assert path.read_bytes() == on_disk, f"{name} was modified on disk by the browser run (autosave should be off)"


# ---------------------------------------------------------------------------------------------
# A learner in a workbook: type an answer with the keyboard, run it, read the check, open the solution

WORKBOOK_CHAPTER = "00_welcome"  # one function exercise: lora_forward_batch
RIGHT_LINE = "return X @ W0.T + (alpha / r) * (X @ A.T @ B.T)"
WRONG_LINE = "return X @ W0.T + alpha * (X @ A.T @ B.T)"  # the seed's scaling
WRONG_HINT = "as the seed blog post does"


def _replace_line(page, cell: int, old_text: str, new_text: str) -> None:
    """Click on the line holding ``old_text`` in a cell's editor, select it with the keyboard, type ``new_text``."""
    page.locator(f'[data-course-cell="{cell}"] .cm-line', has_text=old_text).click()
    page.keyboard.press("End")
    page.keyboard.press("Shift+Home")  # to the end of the indentation: the indentation stays
    page.keyboard.type(new_text)


def _run_and_read(page, name: str, exercise: int, check: int, mark: str) -> str:
    """Shift+Enter on the exercise cell and on the check below it; wait for ``mark`` in the check's output."""
    page.keyboard.press("Shift+Enter")  # runs the exercise cell and moves to the check cell
    page.keyboard.press("Shift+Enter")
    _wait(page, f"{mark} in the check cell of {name}",
          "([p, c, m]) => window.__course.runState(p).done && window.__course.outputText(p, c).includes(m)",
          [name, check, mark], 60, lambda: f"output: {page.evaluate('([p, c]) => window.__course.outputText(p, c)', [name, check])!r}")
    return page.evaluate("([p, c]) => window.__course.outputText(p, c)", [name, check])


def _shot(page, name: str, cell: int, state: str) -> Path:
    """A screenshot of the window with ``cell`` in view: what the learner sees in that state."""
    page.locator(f'[data-course-cell="{cell}"]').scroll_into_view_if_needed()
    path = ARTIFACTS / f"workbook-{Path(name).stem}-{state}.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


@pytest.mark.skipif(NOTEBOOK_DIR != NOTEBOOKS, reason="the workbook test uses the course's own notebooks/")
def test_a_learner_answers_an_exercise_in_a_workbook(lab, browser_context):
    source = NOTEBOOKS / f"{WORKBOOK_CHAPTER}.ipynb"
    if not source.exists():
        pytest.skip(f"no {source.name}")
    folder = ARTIFACTS.parent / "browser-workbook"  # under the lab's root; never the learner's workbook/
    shutil.rmtree(folder, ignore_errors=True)
    workbooks.write_new(nbformat.read(source, as_version=4), WORKBOOK_CHAPTER, folder / source.name)
    wb = nbformat.read(folder / source.name, as_version=4)
    roles = [c.metadata.get(progress.KEY, {}).get("role") for c in wb.cells]
    exercise, check, solution = roles.index("exercise"), roles.index("check"), roles.index("solution")
    assert (check, solution) == (exercise + 1, exercise + 2)
    name = (folder / source.name).relative_to(lab["root"]).as_posix()
    page = browser_context.new_page()
    page.set_default_timeout(60_000)
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        _open_and_run_all(page, lab, name, wb, page_errors)  # Run All reaches the end: no error output
        page.evaluate("p => window.__course.markCells(p)", name)
        fresh = page.evaluate("([p, c]) => window.__course.outputText(p, c)", [name, check])
        assert "⏳ Not answered yet" in fresh and "✅" not in fresh, fresh
        assert not page.locator(f'[data-course-cell="{solution}"] details[open]').count(), "the solution starts folded"
        _shot(page, name, check, "1-not-answered")

        _replace_line(page, exercise, "raise NotImplementedError()", RIGHT_LINE)
        right = _run_and_read(page, name, exercise, check, "✅")
        assert right.lstrip().startswith("✅ Correct") and "❌" not in right
        _shot(page, name, check, "2-right")

        _replace_line(page, exercise, RIGHT_LINE, WRONG_LINE)
        wrong = _run_and_read(page, name, exercise, check, "❌")
        assert WRONG_HINT in " ".join(wrong.split()) and "✅" not in wrong
        _shot(page, name, check, "3-wrong")

        page.locator(f'[data-course-cell="{solution}"] summary').click()
        code = page.locator(f'[data-course-cell="{solution}"] details[open] pre')
        code.wait_for(state="visible")
        assert RIGHT_LINE in code.inner_text()
        _shot(page, name, solution, "4-solution")
        assert not page.evaluate("p => window.__course.errors(p)", name), "no error output at any point"
    finally:
        try:
            page.evaluate("p => window.__course.shutdown(p)", name)
        finally:
            page.close()
