"""The chapter 01/02 exercise checks: right answers pass, typical wrong answers get a message that names the slip."""
from __future__ import annotations

import numpy as np
import pytest
import sympy

from fractions import Fraction

from lora_edu.checks import Feedback, NotAnswered
from lora_edu.checks import rank as checks
from lora_edu.rank import apply_steps, default_tolerance, exact_rank, numeric_rank, parse_step, row_echelon


def passes(capsys, fn, *args) -> str:
    fn(*args)
    out = capsys.readouterr().out
    assert out.startswith("✅ Correct"), out
    return " ".join(out.split())  # the line as written, without the wrapping at 110 characters


# ----------------------------------------------------------------------------- the exercise data themselves


def test_exercise_matrices_have_the_properties_the_text_claims():
    C = np.array(checks.COMBINATION_MATRIX)
    assert exact_rank(C) == 2 and exact_rank(C[:, :2]) == 2
    assert exact_rank(checks.PICTURE_MATRIX) == 2
    assert sympy.Matrix(checks.DEPENDENCY_MATRIX).rank() == 2
    assert sympy.Matrix(checks.PIVOT_MATRIX).rref()[1] == row_echelon(checks.PIVOT_MATRIX).pivots
    L = checks.RANK_MATRIX
    assert row_echelon(L).rank == sympy.Matrix(L).rank() < min(len(L), len(L[0]))
    # "A 3×5 matrix whose columns span a plane": the example the row-rank check computes on
    assert np.shape(checks.ROW_RANK_EXAMPLE) == checks.ROW_RANK_SHAPE == (3, 5)
    assert sympy.Matrix(checks.ROW_RANK_EXAMPLE).rank() == 2
    # "close, but not in": the third column (2, 3, s) lies in the plane of a1, a2 only at s = 5
    assert checks._near_plane_root() == 5
    n = np.cross(*checks.NEAR_PLANE_COLUMNS)
    assert n @ [2, 3, 5] == 0 and sympy.Matrix(checks.near_plane_matrix(5)).rank() == 2
    assert sympy.Matrix(checks.near_plane_matrix(5 + checks.NEAR_PLANE_NUDGE)).rank() == 3
    assert checks.near_plane_matrix(Fraction(5)) == checks.near_plane_matrix(5)


def test_measured_matrix_is_low_rank_plus_errors_with_a_gap():
    clean, errors = checks._measured_parts()
    X = checks.measured_matrix()
    assert X.shape == checks.MEASURED_SHAPE and np.array_equal(X, clean + errors)
    assert np.array_equal(checks.measured_matrix(), X)  # the same matrix every call
    assert np.allclose(np.linalg.svd(clean, compute_uv=False)[:3], checks.MEASURED_SINGULAR_VALUES)
    assert numeric_rank(clean) == 3 and numeric_rank(X) == min(X.shape)  # the default tolerance counts the errors
    (m, n), s = X.shape, checks.MEASUREMENT_ERROR
    assert abs(errors.std() / s - 1) < 0.2  # errors of size s
    spread = s * (np.sqrt(m) + np.sqrt(n))  # the message's estimate of the errors' largest singular value
    assert 0.5 * spread < np.linalg.svd(errors, compute_uv=False)[0] < spread
    S = np.linalg.svd(X, compute_uv=False)
    assert S[2] / S[3] > 8 and S[3] < spread < S[2] / 5  # a clear gap: tol = 1e-2 works, 1e-3 and 1e-1 do not
    assert numeric_rank(X, tol=1e-2) == 3 and numeric_rank(X, tol=1e-3) > 3 and numeric_rank(X, tol=1e-1) == 2


def test_messages_name_the_dependencies_computed_from_the_matrices():
    assert checks._dependencies(checks.PICTURE_MATRIX) == {2: "column 3 = column 1 + column 2"}
    assert checks._dependencies(checks.PIVOT_MATRIX) == {1: "column 2 = 2·column 1",
                                                         4: "column 5 = column 1 + 2·column 4"}
    assert checks._dependencies(checks.DEPENDENCY_MATRIX) == {2: "column 3 = 2·column 1 - column 2",
                                                              3: "column 4 = -column 1 + 3·column 2"}
    for M, deps in [(checks.PIVOT_MATRIX, {1: (2,), 4: (1, 0, 2)}),
                    (checks.DEPENDENCY_MATRIX, {2: (2, -1), 3: (-1, 3)})]:
        A = np.array(M)  # the dependencies really hold, on the original matrix
        pivots = row_echelon(M).pivots
        for j, coeffs in deps.items():
            assert np.array_equal(A[:, j], sum(c * A[:, p] for c, p in zip(coeffs, pivots)))


# ----------------------------------------------------------------------------- chapter 01


def test_column_combination(capsys):
    passes(capsys, checks.check_column_combination, (-2, 1))
    passes(capsys, checks.check_column_combination, np.array([-2.0, 1.0]))


@pytest.mark.parametrize("answer, message", [
    (None, "no answer yet"),
    ((1, -2), "wrong order"),
    ((2, -1), "minus column 3"),
    ((1, 1), r"= \(5, 7, 9\), but column 3 is \(2, 1, 0\)"),
    # printed [2.0000001000000003, 1.0000002000000001, 2.9999999995311555e-07] before
    ((-1.9999999, 1), r"-1.9999999·column 1 \+ 1·column 2 = \(2, 1, 3e-07\), but column 3 is \(2, 1, 0\)"),
    ((1, 2, 3), "exactly 2 numbers"),
    ("two", "should be 2 numbers"),
])
def test_column_combination_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_column_combination(answer)


@pytest.mark.parametrize("answer", ["plane", " Plane ", "a plane", "2D plane", "A 2-D plane", "the plane",
                                    # rejected before ("should be one of the words"):
                                    "plane through the origin", "a plane in R^3", "2-dimensional", "two-dimensional",
                                    "2D", "a 2-dimensional subspace"])
def test_column_space_picture(capsys, answer):
    out = passes(capsys, checks.check_column_space_picture, answer)
    assert "column 3 = column 1 + column 2" in out  # computed from PICTURE_MATRIX's RREF


@pytest.mark.parametrize("answer, message", [
    ("line", "multiple of one"),
    ("space", "three independent columns"),
    ("all of space", "three independent columns, but column 3 = column 1 \\+ column 2"),
    ("the whole space", "three independent columns"),
    ("a line", "multiple of one"),
    ("point", "zero matrix"),
    ("cube", "one of the words"),
    ("not a plane", "one of the words"),
    ("isn't a line", "one of the words"),
    ("plane or line", "one of the words"),
    ("3-dimensional", "three independent columns"),
    (2, "is a number — a dimension"),  # "should be one of the words" before
    ("2", "is a number — a dimension"),
    (2.0, "is a number — a dimension"),
    ("R^2", "names a whole space R\\^k.*live in R³"),
    ("ℝ²", "names a whole space"),
    (None, "no answer yet"),
])
def test_column_space_picture_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_column_space_picture(answer)


@pytest.mark.parametrize("s, rank", [(5, 3), (5.0, 3), (Fraction(5), 3.0), (np.float64(5), np.int64(3)),
                                     (sympy.Integer(5), sympy.Integer(3)), (np.array(5.0), 3)])
def test_near_plane(capsys, s, rank):
    out = passes(capsys, checks.check_near_plane, s, rank)
    assert "only at s = 5 (rank 2)" in out and "at s = 5.001 it is 0.000577 away" in out and "rank 3" in out


@pytest.mark.parametrize("s, rank, message", [
    (5, 2, "Close to the plane is not in the plane: at s = 5.001 the third column is still 0.000577 away"),
    (None, 3, "s_in_plane` has no answer"),
    (5, None, "rank_just_off` has no answer"),
    (4.99, 3, "still 0.00577 away"),
    (-5, 3, r"still 5.77 away.*n = a1 × a2 = \(-1, -1, 1\)"),
    (1, 3, "still 2.31 away"),
    (5 + 1e-12, 3, "still 5.77e-13 away from the plane of columns 1 and 2 — tiny, but not zero"),
    (Fraction(4999, 1000), 3, "still 0.000577 away"),
    ("5", 3, "should be a number"),
    (True, 3, "should be a number"),
    (float("inf"), 3, "finite number"),
    (5, 2.5, "whole number"),
])
def test_near_plane_wrong(s, rank, message):
    with pytest.raises(Feedback, match=message):
        checks.check_near_plane(s, rank)


def test_row_rank(capsys):
    passes(capsys, checks.check_row_rank, 2)


@pytest.mark.parametrize("answer", [2, 2.0, np.int64(2), sympy.Integer(2), np.array(2)])
def test_row_rank_accepts_every_integer_type(capsys, answer):
    out = passes(capsys, checks.check_row_rank, answer)
    assert "inside R⁵" in out and "inside R³" in out


@pytest.mark.parametrize("answer, message", [
    (3, "number of rows, not the number of independent rows"),
    (5, "number of columns"),
    (1, "too small"),
    (2.5, "whole number"),
    (np.array([2, 2]), "one whole number, not an array"),
])
def test_row_rank_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_row_rank(answer)


@pytest.mark.parametrize("answer", [2, np.int64(2), np.array(2), sympy.Integer(2)])
def test_product_bound(capsys, answer):
    out = passes(capsys, checks.check_product_bound, answer)  # np.array(2) was rejected as "not int" before
    assert "LoRA" in out


@pytest.mark.parametrize("answer, message", [
    (6, "min\\(6, 9\\) bounds any"),
    (9, "combination of the 2 columns of B"),
    (54, "combination of the 2 columns of B"),
    (1, "too small"),
    (3, "too large"),
    (np.array([2, 2]), "one whole number, not an array of shape \\(2,\\)"),  # a raw ValueError before
    ("2", "whole number"),
])
def test_product_bound_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_product_bound(answer)


@pytest.mark.parametrize("tol", [1e-2, 2e-2, 0.04, np.float32(1e-2), np.array(1e-2), 1])
def test_noise_tol(capsys, tol):
    if tol == 1:  # above σ3: wrong (checked in the next test); everything else here lies in the gap
        return
    out = passes(capsys, checks.check_noise_tol, tol)
    assert "rank 3" in out and "σ4 = " in out and "σ3 = 0.05" in out


@pytest.mark.parametrize("tol, message", [
    (1e-3, r"= 9: 0.001 is about the size of one error, .*0.001·\(√10 \+ √12\) ≈ 6.6e-03"),  # the noise size
    (3e-3, r"= 6: 3 singular values at the level of the errors \(the largest is σ4 = 4.9e-03\)"),
    (1e-14, "far below the errors.*default tolerance covers only the SVD's own rounding"),
    (0.1, r"= 2: your tol is above σ3 = 0.051.*a direction of the matrix itself"),
    (2, r"= 1: your tol is above σ2 = 1"),
    (0, "positive number"),
    (-1e-2, "positive number"),
    (float("nan"), "positive number"),
    ("1e-2", "one positive number"),
    (True, "one positive number"),
    (None, "no answer yet"),
])
def test_noise_tol_wrong(tol, message):
    with pytest.raises(Feedback, match=message):
        checks.check_noise_tol(tol)


def test_noise_tol_default_tolerance_is_wrong_for_measured_data():
    X = checks.measured_matrix()
    with pytest.raises(Feedback, match="far below the errors"):
        checks.check_noise_tol(default_tolerance(X))


# ----------------------------------------------------------------------------- chapter 02


def test_next_step_state_is_what_the_text_shows():
    assert checks.next_step_state() == sympy.Matrix([[1, 2, -1], [0, 3, 3], [0, 6, 5]])
    assert checks.next_step_history() == "R2 <- R2 - 2*R1, R3 <- R3 + 3*R1"
    assert apply_steps(checks.NEXT_STEP_START, checks.next_step_history().split(", ")) == checks.next_step_state()


@pytest.mark.parametrize("answer", ["R3 <- R3 - 2*R2", "R3 = R3 - 2 R2", "R3 <- -2*R2 + R3", "r3 <- r3 + (-2)*r2",
                                    "R3 - 2R2 -> R3", "R3 <- R3 - 2.0*R2", "R_3 <- R_3 - 2R_2"])
def test_next_step(capsys, answer):
    out = passes(capsys, checks.check_next_step, answer)
    assert "row echelon form with 3 pivots" in out


def test_next_step_accepts_the_other_two_conventions_and_names_them(capsys):
    """Partial pivoting swaps the larger entry 6 up; scale-first makes the pivot 3 a 1. Both were marked wrong
    before ("Swap only when the pivot position holds a 0")."""
    state = checks.next_step_state()
    assert abs(state[2, 1]) > abs(state[1, 1])  # why partial pivoting swaps here
    out = passes(capsys, checks.check_next_step, "R2 <-> R3")
    assert "partial pivoting" in out and "|6| > |3|" in out and "R3 <- R3 - 2*R2" in out
    out = passes(capsys, checks.check_next_step, "R2 <- (1/3)*R2")
    assert "makes the pivot 1 first" in out and "R3 <- R3 - 2*R2" in out
    # the steps really are what the conventions do: after them the pivot is the largest entry / is 1
    assert parse_step("R2 <-> R3").apply(state)[1, 1] == 6
    assert parse_step("R2 <- (1/3)*R2").apply(state)[1, 1] == 1


@pytest.mark.parametrize("answer, message", [
    ("R3 <- R3 + 2*R2", "entry below the second pivot is 12"),
    ("R3 <- R3 - 3*R2", "entry below the second pivot is -3"),
    ("R3 <- R3 - (1/2)*R2", "multiplier is"),
    ("R3 <- R3 - 0.5*R2", "entry below the second pivot is 9/2"),  # "Cannot read" before
    ("R3 <- R3 - 6*R1", "uses R1"),
    ("R2 <- R2 - 3*R1", "row holding the second pivot"),
    ("R1 <- R1 - R2", "R1 is finished"),
    ("R1 <-> R2", "R1, which already holds its pivot"),
    ("R2 <- 3*R2", "not the next step"),
    ("R3 <- (1/6)*R3", "not the next step"),
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
    passes(capsys, checks.check_rref_choice, "PQ")


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
    out = passes(capsys, checks.check_pivots, (0, 2, 3))
    assert "columns 1, 3, 4" in out
    passes(capsys, checks.check_pivots, [3, 0, 2])
    passes(capsys, checks.check_pivots, np.array([0, 2, 3]))
    passes(capsys, checks.check_pivots, row_echelon(checks.PIVOT_MATRIX).pivots)


@pytest.mark.parametrize("answer, message", [
    ((1, 3, 4), "counted from 1"),
    ((0, 1, 2), r"Index 1 \(column 2\) is not a pivot column.*column 2 = 2·column 1"),
    ((0, 2), "missing"),
    ((0, 0, 2, 3), "index 0 more than once"),  # was "Some pivot columns are missing: you gave 4"
    ((0, 2, 2), "index 2 more than once"),
    ((0, 2, 7), "not a column of this 3×5 matrix"),
    (3, "not how many"),
    ("abc", "tuple of column indices"),
    (None, "no answer yet"),
])
def test_pivots_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_pivots(answer)


@pytest.mark.parametrize("answer", [3, 3.0, np.int64(3), sympy.Integer(3), sympy.Matrix(checks.RANK_MATRIX).rank()])
def test_rank_answer(capsys, answer):
    passes(capsys, checks.check_rank_answer, answer)  # sympy.Integer(3) was rejected as "not int" before


@pytest.mark.parametrize("answer, message", [
    (4, "number of rows.*count the pivots"),
    (5, r"at most min\(4, 5\) = 4"),
    (2, "too small"),
    ("3", "whole number"),
    (sympy.Rational(7, 2), "whole number"),
    (np.array([3, 3]), "one whole number"),
])
def test_rank_answer_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_rank_answer(answer)


def test_rref_dependency(capsys):
    out = passes(capsys, checks.check_rref_dependency, (2, -1))
    assert "2·column 1 - 1·column 2" in out and "special solution (-2, 1, 1, 0)" in out
    special = sympy.Matrix([-2, 1, 1, 0])
    assert sympy.Matrix(checks.DEPENDENCY_MATRIX) * special == sympy.zeros(3, 1)


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
    out = passes(capsys, checks.check_float_pivots_choice, "c")
    assert "3·3e-17 = 9e-17" in out and "cannot say" in out and "spectral norm" in out
    passes(capsys, checks.check_float_pivots_choice, " C ")
    passes(capsys, checks.check_float_pivots_choice, "(c)")


def test_float_pivot_options_are_what_the_checks_grade():
    options = checks.FLOAT_PIVOT_OPTIONS
    assert sorted(options) == ["a", "b", "c", "d"]
    assert "within about 1e-16 of a singular one" in options["c"]  # n·3e-17 = 9e-17, rounded up
    assert all(len(f'"{k}": {v}') <= 110 for k, v in options.items())  # one printed line each
    # the right option no longer repeats the prose above the exercise ("neither follows ... singular values")
    assert "singular values with a tolerance" not in options["c"]


def test_float_pivots_feedback_for_b_states_the_pivot_bound():
    """Option b ("exactly 2") is wrong for the exact rank, but the tiny pivot does bound σ_min."""
    with pytest.raises(Feedback) as info:
        checks.check_float_pivots_choice("b")
    message = str(info.value)
    assert "*close* to a matrix of rank 2" in message and "3·3e-17 = 9e-17" in message
    assert "*exactly* 2" in message and "diag(4, 1.5, 3e-17)" in message
    # that diagonal matrix really has these pivots under partial pivoting, and exact rank 3
    D = np.diag(checks.FLOAT_PIVOTS)
    assert exact_rank(D) == 3 and all(np.argmax(np.abs(D[k:, k])) == 0 for k in range(3))


def test_pivot_bound_holds_for_partial_pivoting():
    """σ_min(A) ≤ ‖L‖₂·min|u_kk| ≤ n·min|u_kk| for PA = LU with |l_ij| ≤ 1: what b's feedback says."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 8))
        A = rng.normal(size=(n, n)) @ np.diag(10.0 ** rng.uniform(-8, 0, size=n)) @ rng.normal(size=(n, n))
        U, L = A.copy(), np.eye(n)
        for k in range(n):  # Doolittle with partial pivoting, recording L
            p = k + int(np.argmax(np.abs(U[k:, k])))
            U[[k, p]], L[[k, p], :k] = U[[p, k]], L[[p, k], :k]
            for i in range(k + 1, n):
                L[i, k] = U[i, k] / U[k, k]
                U[i] -= L[i, k] * U[k]
        assert np.abs(L).max() <= 1
        sigma_min = np.linalg.svd(A, compute_uv=False)[-1]
        smallest = np.abs(np.diag(U)).min()
        slack = 10 * n * np.finfo(float).eps * np.abs(A).max()  # the LU's own rounding
        assert sigma_min <= np.linalg.norm(L, 2) * smallest + slack
        assert np.linalg.norm(L, 2) <= np.sqrt(n * (n + 1) / 2) <= n


@pytest.mark.parametrize("answer, message", [
    ("a", "rounding almost never produces an exact 0"),
    ("b", "does not show that the rank is \\*exactly\\* 2"),
    ("d", "a tiny pivot does say something.*T_n has every pivot 1"),
    ("e", "not one of the choices"),
    (None, "no answer yet"),
])
def test_float_pivots_choice_wrong(answer, message):
    with pytest.raises(Feedback, match=message):
        checks.check_float_pivots_choice(answer)


# ----------------------------------------------------------------------------- chapter 02: elimination in code


def learner_elimination(M, *, exact=True, swap=True, diagonal=False, tol=None, row_counter=False):
    """A learner's forward elimination, counting pivots — right with the defaults, or with one usual slip:
    floats instead of Fractions, no swap (a 0 in the pivot position ends the column), the pivot of column k
    looked for in row k (a column without a pivot uses up a row), partial pivoting with a zero test
    abs(x) < tol, or returning a row counter that moves down in every column, pivot or not."""
    rows = [[Fraction(x) if exact else float(x) for x in row] for row in M]
    m, n = len(rows), len(rows[0])
    r = pivots = 0
    for c in range(min(m, n) if diagonal else n):
        r = c if diagonal else r
        if r == m:
            break
        if tol is None:
            p = next((i for i in (range(r, m) if swap else [r]) if rows[i][c] != 0), None)
        else:  # the largest entry is the pivot, if it is not "small"
            p = max(range(r, m), key=lambda i: abs(rows[i][c]))
            p = None if abs(rows[p][c]) < tol else p
        if p is None:
            r += row_counter
            continue
        rows[r], rows[p] = rows[p], rows[r]
        for i in range(r + 1, m):
            f = rows[i][c] / rows[r][c]
            rows[i] = [a - f * b for a, b in zip(rows[i], rows[r])]
        r, pivots = r + 1, pivots + 1
    return r if row_counter else pivots


def rank_by_elimination(M):
    return learner_elimination(M)


def row_counter_moves_in_every_column(M):  # so it ends at min(m, n)
    return learner_elimination(M, row_counter=True)


def float_with_tolerance(M):  # right on every integer matrix and on 1/3, 1/10
    return learner_elimination(M, exact=False, tol=1e-9)


def fraction_of_float(M):
    """Exact elimination, but on Fraction(float(x)): the fractions 1/3, 1/10 are rounded on the way in."""
    return rank_by_elimination([[Fraction(float(x)) for x in row] for row in M])


def diagonal_pivots(M):
    return learner_elimination(M, diagonal=True)


def float_elimination(M):
    return learner_elimination(M, exact=False)


def no_swap(M):
    return learner_elimination(M, swap=False)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_elimination_cases_cover_what_the_message_promises(seed):
    cases = checks._elimination_cases(seed)
    ranks = [exact_rank(M) for M in cases]
    assert ranks == [sympy.Matrix(M).rank() for M in cases]  # an independent reference
    assert 0 in ranks and any(r < min(len(M), len(M[0])) for r, M in zip(ranks, cases))
    assert any(any(isinstance(x, Fraction) and x.denominator > 1 for row in M for x in row) for M in cases)
    # each slip fails on at least one case: the check can catch all of them
    for slip in (len, diagonal_pivots, float_elimination, no_swap):
        assert any(slip(M) != r for M, r in zip(cases, ranks)), slip.__name__


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_by_elimination(capsys, seed):
    out = passes(capsys, checks.check_rank_by_elimination, rank_by_elimination, seed)
    assert "agrees with exact_rank on all 11 matrices" in out
    passes(capsys, checks.check_rank_by_elimination, lambda M: float(rank_by_elimination(M)), seed)


@pytest.mark.parametrize("wrong, message", [
    (len, "count the rows, not the pivots"),
    (lambda M: min(len(M), len(M[0])), r"count min\(m, n\)"),
    (row_counter_moves_in_every_column, r"count min\(m, n\).*does it move down in a column without a pivot"),
    (float_with_tolerance, "second pivot is 1/10¹², tiny but not 0.*test x != 0"),  # passed before
    (fraction_of_float, "Perhaps you compute in floats.*Fraction\\(float\\(x\\)\\)"),  # "count the rows" before
    (lambda M: sum(1 for row in M if any(row)), "non-zero rows of M before eliminating"),
    (diagonal_pivots, "do not skip columns without a pivot"),
    (float_elimination, "compute in floats"),
    (no_swap, "do not swap"),
    (lambda M: rank_by_elimination(M) + (len(M) == 6), "returned 2, but this 6×4 matrix has rank 1. Go column by"),
    (lambda M: M[5][5], "raised IndexError"),
    (lambda M: [rank_by_elimination(M)], "should be a whole number"),
    (3, "should be a function"),
])
def test_rank_by_elimination_wrong(wrong, message):
    with pytest.raises(Feedback, match=message) as info:
        checks.check_rank_by_elimination(wrong)
    assert not isinstance(info.value, NotAnswered)


def _not_implemented(M):
    raise NotImplementedError()


@pytest.mark.parametrize("unanswered", [None, ..., lambda M: None, _not_implemented])
def test_rank_by_elimination_unanswered(unanswered):
    with pytest.raises(NotAnswered):
        checks.check_rank_by_elimination(unanswered)


def test_rank_by_elimination_in_workbook_mode(capsys):
    from lora_edu.checks import set_mode
    set_mode("workbook")
    try:
        checks.check_rank_by_elimination(no_swap)
        checks.check_rank_by_elimination(_not_implemented)
    finally:
        set_mode("grade")
    out = capsys.readouterr().out
    assert out.startswith("❌") and "do not swap" in out and "⏳ Not answered yet" in out
