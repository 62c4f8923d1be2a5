"""The exercise feedback: right answers pass, typical slips get a message that names them."""
from __future__ import annotations

import numpy as np
import pytest

import lora_edu.checks as checks
from lora_edu.checks import Feedback, check_choice, check_integer, check_matrix, check_shape, require_answer
from lora_edu.checks.welcome import check_batch_forward


def test_feedback_is_an_assertion_error():
    assert issubclass(Feedback, AssertionError)


def test_missing_answer_is_named():
    with pytest.raises(checks.NotAnswered, match=r"`rank_A` has no answer yet \(it is still None\)"):
        require_answer(None, "rank_A")
    with pytest.raises(checks.NotAnswered, match=r"it is still \.\.\."):
        require_answer(..., "rank_A")
    assert issubclass(checks.NotAnswered, Feedback)  # nbgrader scores an unanswered exercise 0


@pytest.fixture
def workbook_mode():
    checks.set_mode("workbook")
    yield
    checks.set_mode("grade")


def _unanswered(X, W0, A, B, alpha, r):
    raise NotImplementedError()


def _wrong(X, W0, A, B, alpha, r):
    return X @ W0.T


def _right(X, W0, A, B, alpha, r):
    return X @ W0.T + (alpha / r) * (X @ A.T @ B.T)


def test_grade_mode_raises_for_unanswered_and_wrong_answers():
    assert checks.get_mode() == "grade"
    for unanswered in (None, ..., _unanswered, lambda *args: None):
        with pytest.raises(checks.NotAnswered):
            check_batch_forward(unanswered)
    with pytest.raises(Feedback, match="update is missing") as info:
        check_batch_forward(_wrong)
    assert not isinstance(info.value, checks.NotAnswered)


def test_workbook_mode_prints_one_line_and_never_raises(workbook_mode, capsys):
    for unanswered in (None, _unanswered):
        assert check_batch_forward(unanswered) is None
        out = capsys.readouterr().out
        assert out.startswith("⏳ Not answered yet.") and "✅" not in out and "❌" not in out
    check_batch_forward(_wrong)
    out = capsys.readouterr().out
    assert out.startswith("❌ ") and "update is missing" in out
    check_batch_forward(_right)
    assert capsys.readouterr().out.startswith("✅ Correct")


def _crashes(X, W0, A, B, alpha, r):
    return X @ W0.T + alpha / r * X["A"]  # a learner's slip: indexing an array with a string


def test_a_crashing_answer_raises_in_grade_mode():
    with pytest.raises(IndexError):
        check_batch_forward(_crashes)


def test_a_crashing_answer_is_wrong_in_workbook_mode_and_points_at_the_learners_line(workbook_mode, capsys):
    assert check_batch_forward(_crashes) is None  # Run All goes on
    out, err = capsys.readouterr()
    assert out.startswith("❌ Your answer raised IndexError: ") and "✅" not in out and "⏳" not in out
    assert all(len(line) <= checks.WIDTH for line in out.splitlines())
    # stderr shows the learner's own line, not the check's internals
    assert 'X["A"]' in err and "test_checks.py" in err
    assert "lora_edu/checks" not in err.replace("\\", "/")


def test_workbook_mode_only_the_outermost_check_prints(workbook_mode, capsys):
    @checks.exercise
    def outer(value):
        check_integer(value, 3, "value")  # a plain helper raises inside the wrapped check
        checks.passed("three")

    outer(4)
    assert capsys.readouterr().out.count("❌") == 1

    @checks.exercise
    def inner_crash(fn):
        return fn()

    @checks.exercise
    def outer_crash(fn):
        inner_crash(fn)  # the inner check re-raises; only the outermost one reports
        checks.passed("unreachable")

    outer_crash(lambda: 1 / 0)
    out = capsys.readouterr().out
    assert out.count("❌") == 1 and "ZeroDivisionError" in out and "✅" not in out


def test_set_mode_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode must be one of"):
        checks.set_mode("strict")
    assert checks.get_mode() == "grade"


def test_setup_notebook_chooses_the_mode_explicitly():
    from lora_edu import setup_notebook

    try:
        setup_notebook(seed=0, workbook=True)
        assert checks.get_mode() == "workbook"
        setup_notebook(seed=0)
        assert checks.get_mode() == "grade"
    finally:
        checks.set_mode("grade")


def test_check_shape_recognises_a_transpose():
    with pytest.raises(Feedback, match="transposed"):
        check_shape(np.zeros((3, 2)), (2, 3), "B")
    with pytest.raises(Feedback, match=r"shape \(4,\)"):
        check_shape(np.zeros(4), (2, 3), "B")


def test_check_matrix_names_scaling_and_transpose_slips():
    M = np.arange(9.0).reshape(3, 3) + 1
    check_matrix(M.copy(), M, "M")
    with pytest.raises(Feedback, match="times 2"):
        check_matrix(2 * M, M, "M")
    with pytest.raises(Feedback, match="transpose"):
        check_matrix(M.T, M, "M")
    with pytest.raises(Feedback, match="wrong values"):
        check_matrix(M + np.eye(3), M, "M")
    with pytest.raises(Feedback, match="NaN"):
        check_matrix(M * np.nan, M, "M")
    with pytest.raises(Feedback, match="cannot be read"):
        check_matrix([[1, "a"], [2, 3]], np.eye(2), "M")


def test_check_matrix_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    check_matrix(torch.eye(2), np.eye(2), "I")


def test_check_integer():
    assert check_integer(3, 3, "r") == 3
    assert check_integer(np.int64(3), 3, "r") == 3
    assert check_integer(3.0, 3, "r") == 3
    with pytest.raises(Feedback, match="too large"):
        check_integer(4, 3, "r")
    with pytest.raises(Feedback, match="too small"):
        check_integer(2, 3, "r")
    with pytest.raises(Feedback, match="whole number"):
        check_integer(2.5, 3, "r")
    with pytest.raises(Feedback, match="whole number"):
        check_integer(True, 1, "r")


def test_check_choice_explains_the_wrong_option():
    options = {"a": "a is wrong because...", "b": "", "c": ""}
    assert check_choice("b", "b", "q", options) == "b"
    with pytest.raises(Feedback, match="a is wrong because"):
        check_choice("a", "b", "q", options)
    with pytest.raises(Feedback, match="not one of the choices"):
        check_choice("z", "b", "q", options)


def right(X, W0, A, B, alpha, r):
    return X @ W0.T + (alpha / r) * (X @ A.T @ B.T)


@pytest.mark.parametrize("wrong, message", [
    (lambda X, W0, A, B, alpha, r: X @ W0.T, "update is missing"),
    (lambda X, W0, A, B, alpha, r: X @ W0.T + X @ A.T @ B.T, "without the scaling"),
    (lambda X, W0, A, B, alpha, r: X @ W0.T + alpha * (X @ A.T @ B.T), "as the seed blog post does"),
    (lambda X, W0, A, B, alpha, r: X @ W0 + (alpha / r) * (X @ A.T @ B.T), "missing or extra `.T`"),
    (lambda X, W0, A, B, alpha, r: right(X, W0, A, B, alpha, r).T, "transposed"),
    (lambda X, W0, A, B, alpha, r: right(X, W0, A, B, alpha, r) + 1, "wrong values"),
    (None, "no answer yet"),
])
def test_batch_forward_check_discriminates(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_batch_forward(wrong)


def test_batch_forward_check_passes_the_right_answer(capsys):
    check_batch_forward(right)
    check_batch_forward(right, seed=2, sizes=(1, 2, 8, 1))
    assert capsys.readouterr().out.count("Correct") == 2


def test_passed_wraps_long_lines_without_breaking_words(capsys):
    words = [f"word{i}" for i in range(60)]
    checks.passed(" ".join(words))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) > 1 and all(len(line) <= checks.WIDTH for line in lines)
    assert out.split() == ["✅", "Correct:", *words]  # every word whole, in order
    assert all(line.startswith("   ") for line in lines[1:])


def test_passed_prints_a_repeat_once_per_notebook_cell(monkeypatch, capsys):
    cell = {"n": 1}
    monkeypatch.setattr(checks, "_cell_id", lambda: cell["n"])
    checks.passed("the same")
    checks.passed("the same")        # a hidden test repeating the visible one: left out
    checks.passed("something else")
    cell["n"] = 2
    checks.passed("something else")  # the next cell prints it again
    assert capsys.readouterr().out.count("✅ Correct") == 3


def test_passed_repeats_outside_ipython(monkeypatch, capsys):
    monkeypatch.setattr(checks, "_cell_id", lambda: None)
    checks.passed("again")
    checks.passed("again")
    assert capsys.readouterr().out.count("✅ Correct") == 2
