"""Classroom grading under real conditions: ``make grade`` on a batch of broken and hostile submissions.

One temporary course directory holds one short chapter (``00_welcome``: one exercise, a function,
1 point), made by the same code as ``make student``. A batch of pretend students hands it in; a
single ``make grade A=00_welcome`` grades them all (fixture ``batch``), with short time limits so
that the infinite loop costs seconds. Then the tests check each student's score and message, the
gradebook, every file outside the students' own folders, the exports, the feedback, and that grading
again changes nothing.

The sandbox needs bubblewrap (``bwrap``): without it these tests are skipped with advice, except
under ``CI=true``, where they fail (``test_without_bwrap_*`` check both, in a subprocess).
The unit tests at the top run no notebook.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "course"))
import sandbox  # noqa: E402
from nbgrader_plugins import NOTES_TAG, GradeExecute, describe_exit  # noqa: E402
from tools import assignments, grade  # noqa: E402

CHAPTER = "00_welcome"
SOLUTION = "ch00-batch-forward"
TEST = "ch00-batch-forward-test"
COURSE_FILES = ("nbgrader_config.py", "nbgrader_plugins.py", "sandbox.py")
CELL_LIMIT, NOTEBOOK_LIMIT = 20, 120  # the batch's limits (the course's own are larger)
RIGHT = "def lora_forward_batch(X, W0, A, B, alpha, r):\n    return X @ W0.T + (alpha / r) * (X @ A.T @ B.T)"
WRONG = "def lora_forward_batch(X, W0, A, B, alpha, r):\n    return X @ W0.T + X @ A.T @ B.T"  # no alpha / r


def bwrap_problem() -> str | None:
    return sandbox.probe()


def require_sandbox() -> None:
    """Skip (with advice) where bubblewrap cannot run; under CI=true, fail instead."""
    problem = bwrap_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the grading tests cannot run under CI=true: {problem}. .ci/run installs bubblewrap "
                    "(`apt-get install bubblewrap`).", pytrace=False)
    pytest.skip(f"needs the grading sandbox: {problem}. Install it with `sudo apt-get install bubblewrap`.")


# ---------------------------------------------------------------------------------------------
# Unit tests: finding, reading and rebuilding submissions (no kernel)


def tiny_reference() -> nbformat.NotebookNode:
    """A two-exercise course notebook, as course/source holds it (solutions in place)."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})

    def code(source, cid, **nbgrader):
        cell = nbformat.v4.new_code_cell(source, id=cid)
        if nbgrader:
            cell.metadata["nbgrader"] = {"schema_version": 3, "task": False, "locked": False, **nbgrader}
        return cell

    nb.cells = [
        code("from lora_edu import setup_notebook\nrng = setup_notebook(seed=0)", "setup"),
        code("x = None\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "sol-x", solution=True, grade=False,
             grade_id="ex-x"),
        code("assert x == 2\n### BEGIN HIDDEN TESTS\nassert x + 1 == 3\n### END HIDDEN TESTS", "test-x",
             solution=False, grade=True, grade_id="ex-x-test", points=1, locked=True),
        nbformat.v4.new_markdown_cell("Between the exercises.", id="prose"),
        code("def f(a):\n    ### BEGIN SOLUTION\n    return 2 * a\n    ### END SOLUTION", "sol-f", solution=True,
             grade=False, grade_id="ex-f"),
        code("assert f(3) == 6", "test-f", solution=False, grade=True, grade_id="ex-f-test", points=2, locked=True),
    ]
    return nb


def released(reference: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What students get: nbgrader's release of the reference (stubs, no hidden tests)."""
    nb = grade.stub_solutions(reference)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.source = grade._visible_part(cell.source)
    return nb


def answered(nb, **answers) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    return nb


def sources(nb) -> list[str]:
    return [c.source for c in nb.cells]


def test_rebuild_takes_only_the_students_exercise_cells():
    reference = grade.stub_solutions(tiny_reference())
    submission = answered(released(tiny_reference()), **{"ex-x": "x = None\nx = 2", "ex-f": "def f(a):\n    return a"})
    submission.cells[0].source = "from lora_edu import setup_notebook\nrng = setup_notebook(seed=0, workbook=True)"
    submission.cells[2].source = "pass"  # edited test
    rebuilt, notes = grade.rebuild(submission, reference)
    assert sources(rebuilt)[1:] == [reference.cells[0].source, "x = None\nx = 2", tiny_reference().cells[2].source,
                                    "Between the exercises.", "def f(a):\n    return a", "assert f(3) == 6"]
    assert rebuilt.cells[0].metadata[NOTES_TAG] and "ex-x-test` had been changed" in rebuilt.cells[0].source
    assert "1 of the course's own cells (not exercises) had been changed" in " ".join(notes)
    assert [c.get("id") for c in rebuilt.cells[1:]] == [c.get("id") for c in reference.cells]
    assert [c.metadata.get("nbgrader") for c in rebuilt.cells[1:]] == [c.metadata.get("nbgrader") for c in reference.cells]


def test_rebuild_never_hands_out_the_instructors_solution():
    reference = grade.stub_solutions(tiny_reference())
    rebuilt, notes = grade.rebuild(nbformat.v4.new_notebook(), reference)  # an empty notebook
    text = "\n".join(sources(rebuilt))
    assert "x = 2" not in text and "return 2 * a" not in text and text.count("raise NotImplementedError()") == 2
    assert "`ex-x` is not in your notebook" in " ".join(notes) and "had been deleted" in " ".join(notes)


def test_rebuild_finds_exercises_whose_metadata_and_ids_were_changed():
    reference = grade.stub_solutions(tiny_reference())
    submission = answered(released(tiny_reference()), **{"ex-f": "def f(a):\n    return 2 * a"})
    for cell in submission.cells:
        cell.metadata.pop("nbgrader", None)
        cell["id"] = "changed-" + cell["id"]
    submission.cells[1].source = "x = None\nx = 2"
    del submission.cells[5]  # and a test cell deleted
    rebuilt, notes = grade.rebuild(submission, reference)
    assert sources(rebuilt)[2] == "x = None\nx = 2" and sources(rebuilt)[5] == "def f(a):\n    return 2 * a"
    assert sources(rebuilt)[6] == "assert f(3) == 6"
    assert "found by its first line, `x = None`" in " ".join(notes)
    assert "found by its first line, `def f(a):`" in " ".join(notes)


def test_rebuild_keeps_added_cells_in_place_as_ordinary_cells():
    reference = grade.stub_solutions(tiny_reference())
    submission = answered(released(tiny_reference()), **{"ex-f": "def f(a):\n    return helper(a)"})
    helper = nbformat.v4.new_code_cell("def helper(a):\n    return 2 * a", id="mine")
    helper.metadata["nbgrader"] = {"grade": True, "grade_id": "fake", "points": 100, "solution": False}
    submission.cells.insert(4, helper)  # after the prose, before the exercise
    rebuilt, notes = grade.rebuild(submission, reference)
    k = sources(rebuilt).index(helper.source)
    assert sources(rebuilt)[k - 1] == "Between the exercises." and sources(rebuilt)[k + 1].startswith("def f(a):")
    assert "nbgrader" not in rebuilt.cells[k].metadata, "an added cell can never be graded"
    assert "1 cell you added" in " ".join(notes) and "(1 had nbgrader metadata" in " ".join(notes)
    nbformat.validate(rebuilt)


def test_rebuild_shows_a_students_markdown_as_text_only():
    reference = grade.stub_solutions(tiny_reference())
    submission = released(tiny_reference())
    evil = 'Look: <img src=x onerror="alert(1)"> ```` fence ````'
    submission.cells.append(nbformat.v4.new_markdown_cell(evil))
    submission.cells.append(nbformat.v4.new_raw_cell("<script>alert(2)</script>"))
    rebuilt, _ = grade.rebuild(submission, reference)
    shown_cells = rebuilt.cells[-2:]
    assert [c.cell_type for c in shown_cells] == ["markdown", "markdown"]
    assert shown_cells[0].source == f"`````text\n{evil}\n`````", "a fence longer than any backtick run in it"
    assert shown_cells[1].source == "```text\n<script>alert(2)</script>\n```"
    assert grade.shown("<img src=x onerror=`a`>.txt") == "?img src=x onerror=?a??.txt"


def test_untouched_submission_rebuilds_to_the_release_without_notes():
    reference = grade.stub_solutions(tiny_reference())
    rebuilt, notes = grade.rebuild(released(tiny_reference()), reference)
    assert notes == [] and sources(rebuilt) == sources(reference)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def test_find_notebook_in_every_kind_of_folder(tmp_path):
    nb = nbformat.writes(nbformat.v4.new_notebook())
    a = tmp_path / "a"
    write(a / "01_rank.ipynb", nb)
    write(a / "notes.txt", "x")
    write(a / ".ipynb_checkpoints" / "01_rank-checkpoint.ipynb", nb)
    found = grade.find_notebook(a, "01_rank")
    assert found.path == a / "01_rank.ipynb" and "notes.txt" in found.notes[0]

    b = write(tmp_path / "b" / "sub" / "my copy.ipynb", nb).parents[1]
    found = grade.find_notebook(b, "01_rank")
    assert found.path == b / "sub" / "my copy.ipynb" and "not `01_rank.ipynb`" in found.notes[0]

    c = tmp_path / "c"
    write(c / "x.ipynb", nb), write(c / "y.ipynb", nb)
    found = grade.find_notebook(c, "01_rank")
    assert found.path is None and "Several notebooks" in found.problem

    d = tmp_path / "d"
    d.mkdir()
    (d / "01_rank.ipynb").symlink_to(a / "01_rank.ipynb")
    found = grade.find_notebook(d, "01_rank")
    assert found.path is None and "is a link" in found.problem

    e = tmp_path / "e"
    e.mkdir()
    assert "No notebook was handed in" in grade.find_notebook(e, "01_rank").problem


def test_read_submission_says_what_is_wrong(tmp_path, monkeypatch):
    good = nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]))
    assert grade.read_submission(write(tmp_path / "ok.ipynb", good))[0] is not None
    nb, problem = grade.read_submission(write(tmp_path / "cut.ipynb", good[: len(good) // 2]))
    assert nb is None and "not a valid notebook: its JSON breaks at line" in problem
    assert "not a notebook (it has no cells)" in grade.read_submission(write(tmp_path / "list.ipynb", "[1, 2]"))[1]
    assert "not a text file" in grade.read_submission(write(tmp_path / "bin.ipynb", b"\xff\xfe\x00"))[1]
    monkeypatch.setattr(grade, "MAX_NOTEBOOK_BYTES", 10)
    assert "more than the" in grade.read_submission(tmp_path / "ok.ipynb")[1]


def graded_cells(*cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for k, (outputs, grade_cell) in enumerate(cells):
        cell = nbformat.v4.new_code_cell("", id=f"c{k}")
        cell.outputs = [nbformat.from_dict(o) for o in outputs]
        cell.metadata["nbgrader"] = ({"grade": True, "grade_id": f"t{k}", "points": 1, "solution": False}
                                     if grade_cell else {"solution": True, "grade": False, "grade_id": f"s{k}"})
        nb.cells.append(cell)
    return nb


def error(name, value=""):
    return {"output_type": "error", "ename": name, "evalue": value, "traceback": []}


def test_question_results_name_what_happened_to_each_exercise():
    nb = graded_cells(([], False), ([], True),
                      ([], False), ([error("NotAnswered", "`f` has no answer yet")], True),
                      ([], False), ([error("Feedback", "wrong shape\nmore")], True),
                      ([error("KeyboardInterrupt"), error("CellTimeoutError", "ran longer")], False),
                      ([error("NameError")], True),
                      ([error("DeadKernelError", "died")], False), ([error("NotRun", "not run")], True),
                      ([], False), ([{"output_type": "stream", "name": "stderr", "text": "warn"}], True),
                      ([], False), ([error("ZeroDivisionError", "division by zero")], True))
    scores = {"t1": (1.0, 1.0), "t3": (0.0, 1.0), "t5": (0.0, 1.0), "t7": (0.0, 1.0), "t9": (0.0, 1.0),
              "t11": (0.0, 1.0), "t13": (0.0, 1.0)}
    rows = grade.question_results(nb, scores)
    assert [r["status"] for r in rows] == ["correct", "not answered", "wrong", "timed out", "kernel died",
                                          "wrote to stderr", "error"]
    assert rows[2]["detail"] == "Feedback: wrong shape" and rows[3]["detail"] == "CellTimeoutError: ran longer"


def test_review_flags_point_at_code_worth_reading():
    nb = grade.stub_solutions(tiny_reference())
    assert grade.review_flags(nb) == []
    nb.cells[1].source = "import lora_edu.checks\nlora_edu.checks.set_mode('workbook')\nget_ipython().events"
    assert grade.review_flags(nb) == ["get_ipython", "set_mode / workbook mode"]
    nb.cells[0].source = "import socket"  # a course cell: not the student's code
    assert "network" not in grade.review_flags(nb)


def test_describe_exit_reads_bwraps_status():
    assert describe_exit(1) == "it exited with status 1"
    assert describe_exit(139) == "killed by SIGSEGV: a crash in compiled code"
    assert describe_exit(-9).startswith("killed by SIGKILL") and describe_exit(None) == "it stopped answering"


# ---------------------------------------------------------------------------------------------
# The sandbox and the configuration


def test_sandbox_shows_the_course_environment_but_not_the_course(tmp_path):
    paths = sandbox.course_paths()
    assert sys.prefix in paths or any(sys.prefix.startswith(p + os.sep) for p in paths)
    assert str(ROOT / "lora_edu") in paths
    for secret in (ROOT, ROOT / "course", ROOT / "notebooks", ROOT / "student", Path.home()):
        assert str(secret) not in paths, f"{secret} must not be visible to student code"
    ipc = str(tmp_path)
    cmd = sandbox.sandbox_command(["python", "-m", "ipykernel_launcher"], ipc, env={"A": "1"},
                                  memory_limit=1, address_limit=2, file_size_limit=3, tmp_size=4)
    assert {"--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--clearenv"} <= set(cmd)
    assert "--share-net" not in cmd and cmd[cmd.index("--cap-drop") + 1] == "ALL"
    binds = [cmd[i + 2] for i, a in enumerate(cmd) if a == "--bind"]
    assert binds == [ipc], "the kernel's socket folder is the only writable host folder"
    assert cmd[-3:] == ["--", "python", "-m", "ipykernel_launcher"][-3:]


def run_in_sandbox(code: str, folder: Path, timeout: float = 60, ro_paths: list[str] | None = None
                   ) -> subprocess.CompletedProcess:
    """``python -c code`` in the grading sandbox (with the course's limits), ``folder`` as its private folder;
    ``ro_paths``: the host folders it sees (default: the course's, :func:`sandbox.course_paths`)."""
    cmd = sandbox.sandbox_command([sys.executable, "-c", code], str(folder), env=sandbox.sandbox_env(dict(os.environ)),
                                  memory_limit=2 * sandbox.GiB, address_limit=64 * sandbox.GiB,
                                  file_size_limit=16 * sandbox.MiB, tmp_size=None, ro_paths=ro_paths)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=folder)


def test_a_course_under_tmp_is_visible_in_the_sandbox(tmp_path):
    """A checkout under /tmp (a CI clone in /tmp/...) is bound after the sandbox's own /tmp, not hidden by
    it: before, every grading test failed in a clone under /tmp."""
    require_sandbox()
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="clone-") as clone:
        course = Path(clone) / "lora_edu"
        course.mkdir()
        (course / "marker.txt").write_text("seen")
        paths = [*sandbox.course_paths(), str(course)]
        out = run_in_sandbox(f"print(open({str(course / 'marker.txt')!r}).read())", tmp_path, ro_paths=paths)
    assert out.returncode == 0 and out.stdout.strip() == "seen", out.stderr[-2000:]


def test_processes_in_the_sandbox_meet_on_localhost(tmp_path):
    """Chapter 08's two processes meet on ``localhost`` (torchrun --standalone). Before the sandbox had an
    /etc/hosts of its own, ``localhost`` did not resolve there, and the chapter's cells waited 120 s each."""
    require_sandbox()
    code = ("import socket\n"
            "server = socket.create_server(('localhost', 0))\n"
            "client = socket.create_connection(('localhost', server.getsockname()[1]), timeout=5)\n"
            "peer, _ = server.accept(); client.sendall(b'hello'); print(peer.recv(5).decode(), socket.getfqdn())\n"
            "print(socket.getaddrinfo(socket.gethostname(), 0)[0][4][0])")
    out = run_in_sandbox(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["hello", "localhost", "127.0.0.1"]


def test_sandbox_env_keeps_no_secrets():
    env = sandbox.sandbox_env({"AWS_SECRET_ACCESS_KEY": "x", "GITHUB_TOKEN": "y", "LANG": "C.UTF-8",
                               "LORA_EDU_DEVICE": "cuda", "HOME": "/root", "JPY_PARENT_PID": "7"})
    assert not {"AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "JPY_PARENT_PID"} & set(env)
    assert env["LORA_EDU_DEVICE"] == "cpu" and env["HOME"] == sandbox.INSIDE_HOME and env["LANG"] == "C.UTF-8"


def load_course_config():
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("nbgrader_config.py", path=str(ROOT / "course")).load_config()


def test_course_config_grades_in_the_sandbox_with_limits():
    cfg = load_course_config()
    assert GradeExecute in [s for s in cfg.Autograde.autograde_preprocessors if s.__name__ == "GradeExecute"]
    assert cfg.SandboxKernelManager.sandbox == "bwrap"
    cell, notebook = grade.course_limits(ROOT / "course")
    assert 30 <= cell <= 300 < 600, "a cell limit far below nbgrader's 600 s"
    assert cell < notebook <= 1800
    executor = GradeExecute(config=cfg)
    assert executor.timeout == cell and executor.notebook_timeout == notebook
    assert issubclass(executor.kernel_manager_class, sandbox.SandboxKernelManager)
    assert cfg.SandboxKernelManager.memory_limit >= 2 * sandbox.GiB


def test_makefile_grade_target_and_clean_spare_the_submissions():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^grade: venv\n\t\$\(BIN\)/python tools/grade.py \$\(A\) --course-dir \$\(COURSE\)", makefile, re.M)
    clean = re.search(r"^clean:\n((?:\t.*\n)+)", makefile, re.M).group(1)
    for kept in ("course/submitted", "course/autograded", "course/feedback", "gradebook", "course/grading", "course "):
        assert kept not in clean, f"make clean must not remove {kept}"


def test_ci_installs_bubblewrap():
    assert re.search(r"need\+=\(bubblewrap\)", (ROOT / ".ci" / "run").read_text())


@pytest.mark.parametrize("ci", [None, "true"])
def test_without_bwrap_the_grading_tests_skip_with_advice_or_fail_under_ci(tmp_path, ci):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(tmp_path)  # an empty folder: no bwrap on PATH
    if ci is not None:
        env["CI"] = ci
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             str(Path(__file__)), "-k", "test_honest_full_marks"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert time.monotonic() - started < 300
    if ci is None:
        assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout + result.stderr
        assert "sudo apt-get install bubblewrap" in result.stdout
    else:
        assert result.returncode != 0 and "cannot run under CI=true" in result.stdout, result.stdout
        assert "bwrap` is not installed" in result.stdout


# ---------------------------------------------------------------------------------------------
# GradeExecute on its own: limits a notebook reaches only by running (sandboxed kernels, no torch)


def execute(sources: list[str], **limits) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb, _ = GradeExecute(**limits).preprocess(nb, {"metadata": {"path": str(ROOT)}})
    return nb


def enames(cell) -> list[str]:
    return [o.ename for o in cell.get("outputs", []) if o.output_type == "error"]


@pytest.mark.slow
def test_a_kernel_that_ignores_interrupts_is_ended_and_the_rest_marked_not_run():
    require_sandbox()
    nb = execute(["import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", "print(1)"],
                 timeout=2)
    notes, stuck, after = nb.cells
    assert notes.metadata[NOTES_TAG] and "did not stop when interrupted" in notes.source
    assert enames(stuck) == ["CellTimeoutError"] and enames(after) == ["NotRun"]


@pytest.mark.slow
def test_a_crash_in_compiled_code_is_reported_with_its_signal():
    require_sandbox()
    notes, crash, after = execute(["import ctypes\nctypes.string_at(0)", "print(1)"], timeout=30).cells
    assert enames(crash) == ["DeadKernelError"] and "SIGSEGV" in crash.outputs[-1].evalue
    assert enames(after) == ["NotRun"] and "died in code cell 1" in notes.source


@pytest.mark.slow
def test_notebook_limit_stops_the_notebook_and_memory_is_capped():
    require_sandbox()
    nb = execute(["x = bytearray(4 * 1024 ** 3)", "import time\ntime.sleep(60)", "print(1)"],
                 timeout=30, notebook_timeout=6)
    notes, memory, sleep, after = nb.cells
    assert enames(memory) == ["MemoryError"], "4 GiB is above the sandbox's 3 GiB data limit"
    assert enames(sleep) == ["KeyboardInterrupt", "NotebookTimeoutError"] and enames(after) == ["NotRun"]
    assert "limit for a whole notebook" in notes.source


# ---------------------------------------------------------------------------------------------
# The batch: make grade on pretend students


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _gradebook_dump(db: Path) -> dict[str, list]:
    """The gradebook's tables that autograding must never change (the assignment and its cells)."""
    with sqlite3.connect(db) as con:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY id").fetchall()
                for t in ("assignment", "notebook", "grade_cells", "solution_cells", "source_cell")}


class Listener:
    """A TCP server on the host's loopback: a student that reaches it has the network."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.5)
        self.port, self.connections, self.stop = self.sock.getsockname()[1], 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


@dataclass
class Batch:
    base: Path
    course: Path
    run: subprocess.CompletedProcess
    seconds: float
    before: dict[str, str]
    after: dict[str, str]
    gradebook_before: dict
    records: dict
    lms: dict[str, dict]
    questions: list[dict]
    listener_connections: int
    host_marker: Path
    rerun: subprocess.CompletedProcess | None = None


def make_grade(course: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """``make grade`` as an instructor runs it (with the environment of this test run)."""
    venv = Path(sys.prefix)
    cmd = ["make", "-s", "-C", str(ROOT), f"VENV={venv}", "-o", str(venv / ".installed"),
           "-o", str(venv / "share/jupyter/lab/settings/overrides.json"), "grade", f"A={CHAPTER}",
           f"COURSE={course}", "GRADE_ARGS=" + " ".join([f"--cell-timeout {CELL_LIMIT}",
                                                          f"--notebook-timeout {NOTEBOOK_LIMIT}", *args])]
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(course.parent / "jupyter-config"))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def with_markdown(nb: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    nb.cells.append(nbformat.v4.new_markdown_cell(text))
    return nb


def students(released_nb: nbformat.NotebookNode, course: Path, port: int, marker: Path) -> dict[str, object]:
    """The pretend students: {id: notebook, or raw text for a file that is not one}."""
    def with_solution(source: str, nb=released_nb):
        return answered(nb, **{SOLUTION: source})

    deleted = with_solution(WRONG)
    deleted.cells = [c for c in deleted.cells if c.metadata.get("nbgrader", {}).get("grade_id") != TEST]
    edited = with_solution(WRONG)
    for cell in edited.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == TEST:
            cell.source = "pass  # no test here"
    other = course / "submitted" / "honest" / CHAPTER / f"{CHAPTER}.ipynb"
    intruder = RIGHT + f"""

import os, glob
for what, act in [
    ("write gradebook", lambda: open({str(course / 'gradebook.db')!r}, "ab").write(b"x")),
    ("read source", lambda: open({str(course / 'source' / CHAPTER / f'{CHAPTER}.ipynb')!r}).read()),
    ("read notebooks", lambda: open({str(ROOT / 'notebooks' / f'{CHAPTER}.ipynb')!r}).read()),
    ("write other student", lambda: open({str(other)!r}, "w").write("{{}}")),
    ("write host tmp", lambda: open({str(marker)!r}, "w").write("x")),
    ("list course", lambda: os.listdir({str(course)!r})),
]:
    try:
        act()
        print("INTRUDER", what, "SUCCEEDED")
    except OSError as exc:
        print("INTRUDER", what, "failed:", type(exc).__name__)
from IPython.display import HTML, display
display(HTML("<script>window.intruder = 1</script><b>bold</b>"))
"""
    network = RIGHT + f"""

import socket
for host, port in [("127.0.0.1", {port}), ("1.1.1.1", 53)]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        print("NETWORK", host, "REACHED")
    except OSError as exc:
        print("NETWORK", host, "failed:", type(exc).__name__)
"""
    renamed = with_solution(RIGHT)
    for cell in renamed.cells:  # metadata stripped, ids changed: found by the `def` line
        cell.metadata.pop("nbgrader", None)
        cell["id"] = "x" + cell["id"]
    # Workbook mode twice: in the setup cell (the course's own cell is graded instead) and in the
    # answer itself (the checks go back to "grade" mode before every cell): a wrong answer scores 0.
    workbook = with_solution(WRONG + "\nimport lora_edu.checks\nlora_edu.checks.set_mode('workbook')")
    workbook.cells = [nbformat.from_dict(dict(c, source=c.source.replace("setup_notebook(seed=0)",
                                                                           "setup_notebook(seed=0, workbook=True)")))
                      for c in workbook.cells]
    text = nbformat.writes(with_solution(RIGHT))
    return {
        "honest": with_solution(RIGHT),
        "untouched": released_nb,
        "loop": with_solution("def lora_forward_batch(X, W0, A, B, alpha, r):\n    while True:\n        pass"),
        "exits": with_solution(RIGHT + "\nimport os\nos._exit(1)"),
        "chatty": with_solution(RIGHT + "\nprint('x' * 10_000_000)"),
        "broken_json": text[: len(text) // 2],
        "no_test": deleted,
        "edited_test": edited,
        "intruder": with_markdown(with_solution(intruder), '<img src="x" onerror="window.intruder = 2">'),
        "network": with_solution(network),
        "renamed": renamed,
        "workbook": workbook,
        "memory": with_solution("def lora_forward_batch(X, W0, A, B, alpha, r):\n"
                                "    hog = bytearray(4 * 1024 ** 3)\n    return X @ W0.T + (alpha / r) * (X @ A.T @ B.T)"),
    }


# student: (score, outcome, status of the one exercise)
EXPECTED = {
    "honest": (1, "graded", "correct"),
    "untouched": (0, "graded", "not answered"),
    "loop": (0, "timed out", "timed out"),
    "exits": (0, "failed", "kernel died"),
    "chatty": (1, "graded", "correct"),
    "broken_json": (0, "failed", "invalid"),
    "no_test": (0, "graded", "wrong"),
    "edited_test": (0, "graded", "wrong"),
    "intruder": (1, "graded", "correct"),
    "network": (1, "graded", "correct"),
    "renamed": (1, "graded", "correct"),
    "workbook": (0, "graded", "wrong"),
    "memory": (0, "graded", "error"),
    "empty": (0, "failed", "missing"),  # a folder with no notebook
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Batch:
    require_sandbox()
    base = tmp_path_factory.mktemp("grading")
    course = base / "course"
    course.mkdir()
    for name in COURSE_FILES:
        shutil.copyfile(ROOT / "course" / name, course / name)
    env = assignments.nbgrader_env(dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "jupyter-config")))
    assignments.prepare_source(course, [ROOT / "notebooks" / f"{CHAPTER}.ipynb"])
    assignments.generate_student_copies(course, env)
    released_nb = nbformat.read(base / "student" / CHAPTER / f"{CHAPTER}.ipynb", as_version=4)

    listener = Listener()
    marker = Path("/tmp") / f"grading-test-marker-{os.getpid()}"
    for student, nb in students(released_nb, course, listener.port, marker).items():
        folder = course / "submitted" / student / CHAPTER
        folder.mkdir(parents=True)
        name = "my work (final).ipynb" if student == "renamed" else f"{CHAPTER}.ipynb"
        (folder / name).write_text(nb if isinstance(nb, str) else nbformat.writes(nb), encoding="utf-8")
    # Extra files that must not be used: a package that would make every check pass.
    write(course / "submitted" / "renamed" / CHAPTER / "lora_edu" / "checks" / "welcome.py",
          "def check_batch_forward(*a, **k):\n    pass\n")
    write(course / "submitted" / "renamed" / CHAPTER / "lora_edu" / "__init__.py", "")
    write(course / "submitted" / "workbook" / CHAPTER / "timestamp.txt", "2030-01-01 12:00:00.000000 UTC")
    write(course / "submitted" / "empty" / CHAPTER / "notes.txt", "I could not finish, sorry")

    before, gradebook_before = _tree(base), _gradebook_dump(course / "gradebook.db")
    started = time.monotonic()
    try:
        run = make_grade(course)
    finally:
        listener.close()
    seconds = time.monotonic() - started
    assert run.returncode == 0, f"make grade failed:\n{run.stdout}\n{run.stderr}"
    with (course / "grades_lms.csv").open(newline="") as fh:
        lms = {row["student_id"]: row for row in csv.DictReader(fh)}
    with (course / "grades_by_question.csv").open(newline="") as fh:
        questions = list(csv.DictReader(fh))
    records = json.loads((course / "grading" / f"{CHAPTER}.json").read_text())["students"]
    print(run.stdout, f"\nmake grade took {seconds:.0f} s")  # shown with -s: the hostile batch's grading time
    return Batch(base, course, run, seconds, before, _tree(base), gradebook_before, records, lms, questions,
                 listener.connections, marker)


@pytest.mark.slow
def test_honest_full_marks(batch):
    assert batch.lms["honest"]["00_welcome"] == "1" and batch.records["honest"]["outcome"] == "graded"


@pytest.mark.slow
@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_student_gets_the_expected_score_and_a_message(batch, student):
    score, outcome, status = EXPECTED[student]
    record = batch.records[student]
    assert (record["score"], record["outcome"]) == (score, outcome), record
    assert [q["status"] for q in record["questions"]] == [status], record
    assert batch.lms[student]["00_welcome"] == str(score)
    feedback = batch.course / "feedback" / student / CHAPTER / f"{CHAPTER}.html"
    assert feedback.exists(), f"no feedback for {student}"
    if outcome != "graded":
        message = record["message"].split(": ", 1)[-1][:40]  # without the error's name
        assert message and message in html_text(feedback), f"the feedback does not say: {message}"


def html_text(path: Path) -> str:
    """The text of an HTML page, tags removed."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


@pytest.mark.slow
def test_summary_names_the_timed_out_and_failed(batch):
    out = batch.run.stdout
    assert re.search(r"graded\s+10: ", out) and re.search(r"timed out\s+1: loop 0/1 \(CellTimeoutError", out)
    failed = re.search(r"failed\s+3: (.*(\n\s{14}.*)*)", out).group(1)
    assert "empty 0/1 (No notebook was handed in: the folder has no `00_welcome.ipynb`.)" in failed
    assert "broken_json 0/1 (`00_welcome.ipynb` is not a valid notebook" in failed
    assert "exits 0/1 (DeadKernelError: The Python kernel died while running this cell (it exited with status 1)" in failed
    assert re.search(r"worth a look: .*exits \(os._exit / signal\).*intruder \(.*files by absolute path", out)


@pytest.mark.slow
def test_messages_explain_the_broken_submissions(batch):
    notes = {s: " ".join(r["notes"]) for s, r in batch.records.items()}
    assert "`ch00-batch-forward-test` had been deleted" in notes["no_test"]
    assert "`ch00-batch-forward-test` had been changed" in notes["edited_test"]
    assert "named `my work (final).ipynb`" in notes["renamed"] and "lora_edu/checks/welcome.py" in notes["renamed"]
    assert "found by its first line" in notes["renamed"]
    assert "longer than 20 s, the limit for one cell" in notes["loop"]
    assert "died in code cell `ch00-batch-forward`" in notes["exits"] and "were not run" in notes["exits"]
    assert "printed more than this notebook keeps" in notes["chatty"]
    assert "1 of the course's own cells" in notes["workbook"]
    assert "JSON breaks at line" in batch.records["broken_json"]["message"]


@pytest.mark.slow
def test_huge_output_is_capped_in_the_graded_notebook_and_the_feedback(batch):
    graded = batch.course / "autograded" / "chatty" / CHAPTER / f"{CHAPTER}.ipynb"
    feedback = batch.course / "feedback" / "chatty" / CHAPTER / f"{CHAPTER}.html"
    honest = batch.course / "autograded" / "honest" / CHAPTER / f"{CHAPTER}.ipynb"
    assert graded.stat().st_size < honest.stat().st_size + 200_000, "10 MB printed, at most ~100 kB kept"
    assert feedback.stat().st_size < 2_000_000
    assert "output cut here" in graded.read_text()


@pytest.mark.slow
def test_feedback_never_carries_a_submissions_scripts(batch):
    page = (batch.course / "feedback" / "intruder" / CHAPTER / f"{CHAPTER}.html").read_text(encoding="utf-8")
    assert "<b>bold</b>" in page, "the submission's HTML output is shown"
    # ... but none of its scripts or event handlers, as tags (as text, escaped, they may be shown).
    assert not re.search(r"<script[^>]*>[^<]*window\.intruder", page)
    assert not re.search(r"<[a-z]+[^>]*\son\w+=[\"']?window\.intruder", page)
    assert "&lt;img src=&quot;x&quot; onerror" in page or '&lt;img src="x" onerror' in page, \
        "the added Markdown cell is shown as text"


@pytest.mark.slow
def test_make_grade_says_what_is_missing(batch, tmp_path, capsys):
    assert grade.main(["00_nope", "--course-dir", str(batch.course)]) == 2
    err = capsys.readouterr().err
    assert "unknown assignment '00_nope'" in err and "the gradebook has: 00_welcome" in err
    assert grade.main(["00_welcome", "--course-dir", str(tmp_path)]) == 2
    assert "run `make student` first" in capsys.readouterr().err
    assert grade.main(["00_welcome", "--course-dir", str(batch.course), "--student", "nobody"]) == 2
    assert "no submission of 00_welcome from nobody" in capsys.readouterr().err


@pytest.mark.slow
def test_student_code_cannot_reach_the_course_the_host_or_the_network(batch):
    intruder = (batch.course / "autograded" / "intruder" / CHAPTER / f"{CHAPTER}.ipynb").read_text()
    attempts = dict(re.findall(r"INTRUDER (.+?) (failed|SUCCEEDED)", intruder))
    assert len(attempts) == 6, attempts
    # /tmp in the sandbox is the kernel's own: the write works there, and never reaches the host's /tmp.
    assert attempts.pop("write host tmp") == "SUCCEEDED" and not batch.host_marker.exists()
    assert set(attempts.values()) == {"failed"}, attempts
    network = (batch.course / "autograded" / "network" / CHAPTER / f"{CHAPTER}.ipynb").read_text()
    assert re.findall(r"NETWORK (\S+) (failed|REACHED)", network) == [("127.0.0.1", "failed"), ("1.1.1.1", "failed")]
    assert batch.listener_connections == 0, "student code reached a server on the grader's loopback"


@pytest.mark.slow
def test_gradebook_intact_and_nothing_outside_the_students_folders_changed(batch):
    with sqlite3.connect(batch.course / "gradebook.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert sorted(r[0] for r in con.execute("SELECT id FROM student")) == sorted(EXPECTED)
    assert _gradebook_dump(batch.course / "gradebook.db") == batch.gradebook_before
    generated = ("course/autograded/", "course/feedback/", "course/grading/", "course/gradebook.db",
                 "course/grades.csv", "course/grades_by_question.csv", "course/grades_lms.csv", "jupyter-config/")
    changed = {p for p in set(batch.before) | set(batch.after) if batch.before.get(p) != batch.after.get(p)}
    assert {p for p in changed if not p.startswith(generated)} == set(), "make grade changed files it must not"
    assert all(p.startswith(("course/autograded/", "course/feedback/")) is False or p.split("/")[2] in EXPECTED
               for p in changed)
    assert not [p for p in batch.after if p.startswith("course/submitted/") and batch.after[p] != batch.before.get(p)]


@pytest.mark.slow
def test_exports_one_row_per_student_and_exercise_and_per_student(batch):
    assert len(batch.questions) == len(EXPECTED)
    by_student = {row["student_id"]: row for row in batch.questions}
    for student, (score, _, status) in EXPECTED.items():
        row = by_student[student]
        assert (row["assignment"], row["grade_id"], row["score"], row["max_score"], row["status"]) == \
            (CHAPTER, TEST, str(score), "1", status)
        assert row["timed_out"] == ("yes" if status == "timed out" else "")
    assert by_student["memory"]["error"].startswith("MemoryError")
    with (batch.course / "grades_lms.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["student_id", CHAPTER, "total"]
    assert {s: row["total"] for s, row in batch.lms.items()} == {s: str(e[0]) for s, e in EXPECTED.items()}
    with (batch.course / "grades.csv").open(newline="") as fh:
        nbgrader_rows = {row["student_id"]: float(row["score"]) for row in csv.DictReader(fh)}
    assert nbgrader_rows == {s: float(e[0]) for s, e in EXPECTED.items()}


@pytest.mark.slow
def test_grading_again_changes_nothing(batch):
    before = {p: h for p, h in _tree(batch.base).items() if not p.startswith("course/grading/")}
    # What `make student` runs, on this course: new student copies, never a submission touched.
    env = assignments.nbgrader_env(dict(os.environ, JUPYTER_CONFIG_DIR=str(batch.base / "jupyter-config")))
    assignments.prepare_source(batch.course, [ROOT / "notebooks" / f"{CHAPTER}.ipynb"])
    assignments.generate_student_copies(batch.course, env)
    assert {p: h for p, h in _tree(batch.base).items() if p.startswith("course/submitted/")} == \
        {p: h for p, h in before.items() if p.startswith("course/submitted/")}
    again = make_grade(batch.course)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{len(EXPECTED)} unchanged since the last grading" in again.stdout
    forced = make_grade(batch.course, "--force", "--student honest")
    assert forced.returncode == 0 and re.search(r"graded\s+1: honest 1/1", forced.stdout), forced.stdout
    after = {p: h for p, h in _tree(batch.base).items() if not p.startswith("course/grading/")}
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    # Only the re-run student's files are rewritten (nbgrader stamps them), the gradebook (times),
    # and the student copy and source (`make student` rebuilt them); the exports come out the same.
    assert all("/honest/" in p or p in ("course/gradebook.db",) or p.startswith(("student/", "course/source/"))
               for p in changed), changed
