"""The chapter 01/02 exercise checks: right answers pass, typical wrong answers get a message that names the slip."""
from __future__ import annotations

import numpy as np
import pytest
import sympy

from lora_edu.checks import Feedback
from lora_edu.checks import rank as checks
from lora_edu.rank import exact_rank, row_echelon


def passes(capsys, fn, *args) -> str:
    fn(*args)
    out = capsys.readouterr().out
    assert out.startswith("✅ Correct"), out
    return out


# ----------------------------------------------------------------------------- the exercise data themselves


def test_exercise_matrices_have_the_properties_the_text_claims():
    C = np.array(checks.COMBINATION_MATRIX)
    assert exact_rank(C) == 2 and exact_rank(C[:, :2]) == 2
    assert exact_rank(checks.PICTURE_MATRIX) == 2
    assert sympy.Matrix(checks.DEPENDENCY_MATRIX).rank() == 2
    assert sympy.Matrix(checks.PIVOT_MATRIX).rref()[1] == row_echelon(checks.PIVOT_MATRIX).pivots
    L = checks.RANK_MATRIX
    assert row_echelon(L).rank == sympy.Matrix(L).rank() < min(len(L), len(L[0]))


# ----------------------------------------------------------------------------- chapter 01


def test_column_combination(capsys):
    passes(capsys, checks.check_column_combination, (-2, 1))
    passes(capsys, checks.check_column_combination, np.array([-2.0, 1.0]))


@pytest.mark.parametrize("answer, message", [
    (None, "no answer yet"),
    ((1, -2), "wrong order"),
    ((2, -1), "minus column 3"),
    ((1, 1), r"= \[5.0, 7.0, 9.0\], but column 3 is \[2.0, 1.0, 0.0\]"),
    ((1, 2, 3), "exactly 2 numbers"),
    ("two", "should be 2 numbers"),
])
def test_column_combination_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_column_combination(answer)


def test_column_space_picture(capsys):
    passes(capsys, checks.check_column_space_picture, "plane")
    passes(capsys, checks.check_column_space_picture, " Plane ")


@pytest.mark.parametrize("answer, message", [
    ("line", "multiple of one"),
    ("space", "three independent columns"),
    ("all of space", "three independent columns"),
    ("point", "zero matrix"),
    ("cube", "one of the words"),
    (2, "one of the words"),
    (None, "no answer yet"),
])
def test_column_space_picture_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_column_space_picture(answer)


def test_near_plane(capsys):
    passes(capsys, checks.check_near_plane, 3, 1.0)
    passes(capsys, checks.check_near_plane, 3, 1)


@pytest.mark.parametrize("rank, t, message", [
    (2, 1.0, "Close to the plane is not in the plane"),
    (None, 1.0, "rank_at_099` has no answer"),
    (3, None, "t_where_rank_drops` has no answer"),
    (3, 0.99, "still 0.0173 away"),
    (3, 0.5, "still 0.8660 away"),
    (3, 1.5, "outside the slider"),
    (3, "1", "should be a number"),
])
def test_near_plane_wrong(rank, t, message):
    with pytest.raises(Feedback, match=message):
        checks.check_near_plane(rank, t)


def test_row_rank(capsys):
    passes(capsys, checks.check_row_rank, 2)


@pytest.mark.parametrize("answer, message", [
    (3, "number of rows, not the number of independent rows"),
    (5, "number of columns"),
    (1, "too small"),
    (2.5, "whole number"),
])
def test_row_rank_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_row_rank(answer)


def test_product_bound(capsys):
    out = passes(capsys, checks.check_product_bound, 2)
    assert "LoRA" in out


@pytest.mark.parametrize("answer, message", [
    (6, "min\\(6, 9\\) bounds any"),
    (9, "combination of the 2 columns of B"),
    (54, "combination of the 2 columns of B"),
    (1, "too small"),
    (3, "too large"),
])
def test_product_bound_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_product_bound(answer)


def right_tol(M):
    return np.linalg.svd(M, compute_uv=False).max() * max(M.shape) * np.finfo(M.dtype).eps


def test_default_tol(capsys):
    passes(capsys, checks.check_default_tol, right_tol)
    passes(capsys, checks.check_default_tol, lambda M: np.array([right_tol(M)]))
    passes(capsys, checks.check_default_tol, right_tol, 3)


def _sv(M):
    return np.linalg.svd(M, compute_uv=False)


@pytest.mark.parametrize("wrong, message", [
    (lambda M: _sv(M).max() * min(M.shape) * np.finfo(M.dtype).eps, r"min\(m, n\) instead of max"),
    (lambda M: _sv(M).min() * max(M.shape) * np.finfo(M.dtype).eps, "smallest singular value"),
    (lambda M: _sv(M).max() * np.finfo(M.dtype).eps, "no factor max"),
    (lambda M: max(M.shape) * np.finfo(M.dtype).eps, "no singular value"),
    (lambda M: _sv(M).max() * max(M.shape) * np.finfo(float).eps, "float64's eps for a float32"),
    (lambda M: np.abs(M).max() * max(M.shape) * np.finfo(M.dtype).eps, "largest entry"),
    (lambda M: 1e-10, "The formula is"),
    (lambda M: _sv(M), "should return one number"),
    (lambda M: None, "forget the `return`"),
    (None, "no answer yet"),
    (3.0, "should be a function"),
])
def test_default_tol_wrong(wrong, message):
    with pytest.raises(Feedback, match=message):
        checks.check_default_tol(wrong)


# ----------------------------------------------------------------------------- chapter 02


def test_next_step_state_is_what_the_text_shows():
    assert checks.next_step_state() == sympy.Matrix([[1, 2, -1], [0, 3, 3], [0, 6, 5]])


@pytest.mark.parametrize("answer", ["R3 <- R3 - 2*R2", "R3 = R3 - 2 R2", "R3 <- -2*R2 + R3", "r3 <- r3 + (-2)*r2"])
def test_next_step(capsys, answer):
    passes(capsys, checks.check_next_step, answer)


@pytest.mark.parametrize("answer, message", [
    ("R3 <- R3 + 2*R2", "entry below the second pivot is 12"),
    ("R3 <- R3 - 3*R2", "entry below the second pivot is -3"),
    ("R3 <- R3 - (1/2)*R2", "multiplier is"),
    ("R3 <- R3 - 6*R1", "uses R1"),
    ("R2 <- R2 - 3*R1", "R1 and R2 are finished"),
    ("R2 <-> R3", "not needed"),
    ("R2 <- (1/3)*R2", "below"),
    ("R4 <- R4 - R2", "only 3 rows"),
    ("subtract 2 R2 from R3", "Cannot read"),
    (None, "no answer yet"),
])
def test_next_step_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_next_step(answer)


def test_rref_choice(capsys):
    passes(capsys, checks.check_rref_choice, {"P", "Q"})
    passes(capsys, checks.check_rref_choice, ["q", "p"])
    passes(capsys, checks.check_rref_choice, "P, Q")


@pytest.mark.parametrize("answer, message", [
    ({"P", "Q", "R"}, "R is not in RREF: its second pivot is 2"),
    ({"P", "Q", "S"}, "step to the right"),
    ({"P", "Q", "T"}, "zero row is above"),
    ({"P", "Q", "U"}, "1 above the pivot"),
    ({"P"}, "Q is in RREF too"),
    (set(), "P is in RREF too"),
    ({"P", "Z"}, "not among the matrices"),
    (None, "no answer yet"),
    (5, "should be a set of names"),
])
def test_rref_choice_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_rref_choice(answer)


def test_pivots(capsys):
    passes(capsys, checks.check_pivots, (0, 2, 3))
    passes(capsys, checks.check_pivots, [3, 0, 2])


@pytest.mark.parametrize("answer, message", [
    ((1, 3, 4), "counted from 1"),
    ((0, 1, 2), "Column 1 .* is not a pivot column"),
    ((0, 2), "missing"),
    (3, "not how many"),
    ("abc", "tuple of column indices"),
    (None, "no answer yet"),
])
def test_pivots_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_pivots(answer)


def test_rank_answer(capsys):
    passes(capsys, checks.check_rank_answer, 3)


@pytest.mark.parametrize("answer, message", [
    (4, "number of rows.*count the pivots"),
    (5, r"at most min\(4, 5\) = 4"),
    (2, "too small"),
    ("3", "whole number"),
])
def test_rank_answer_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_rank_answer(answer)


def test_rref_dependency(capsys):
    out = passes(capsys, checks.check_rref_dependency, (2, -1))
    assert "2·column 1 - 1·column 2" in out


@pytest.mark.parametrize("answer, message", [
    ((0, 2), "along a row"),
    ((-2, 1), "wrong signs"),
    ((-1, 2), "Swapped"),
    ((1, 1), "Look at column 3 of the RREF"),
    ((2,), "exactly 2 numbers"),
])
def test_rref_dependency_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_rref_dependency(answer)


def test_float_pivots_choice(capsys):
    passes(capsys, checks.check_float_pivots_choice, "c")
    passes(capsys, checks.check_float_pivots_choice, " C ")


@pytest.mark.parametrize("answer, message", [
    ("a", "rounding almost never produces an exact 0"),
    ("b", "warning, not a verdict"),
    ("d", "not one of the choices"),
    (None, "no answer yet"),
])
def test_float_pivots_choice_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_float_pivots_choice(answer)
