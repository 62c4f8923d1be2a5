"""lora_edu.rank against independent references: SymPy (exact) and NumPy (floating point)."""
from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_edu.rank import (AddMultiple, EchelonForm, RowOp, Scale, Swap, apply_steps, default_tolerance, exact_rank,
                           format_matrix, numeric_rank, parse_step, row_echelon, to_fractions)

# The seed blog post's three examples.
RANK_1 = [[1, 2, 3], [2, 4, 6], [3, 6, 9]]
RANK_2 = [[1, 0, 1], [0, 1, 1], [1, 1, 2]]
FULL_RANK = [[1, 2, 3], [4, 5, 6], [7, 8, 10]]


def sympy_exact(M) -> sympy.Matrix:
    """An independent exact conversion: SymPy's own Rational() of every entry."""
    return sympy.Matrix([[sympy.Rational(x) for x in row] for row in np.asarray(M, dtype=object).tolist()])


def hilbert_fractions(n: int) -> list[list[Fraction]]:
    return [[Fraction(1, i + j + 1) for j in range(n)] for i in range(n)]


def assert_echelon_shape(E: sympy.Matrix, pivots: tuple[int, ...], reduced: bool) -> None:
    """Check the defining properties of (R)REF directly, without SymPy's algorithms."""
    rows = E.tolist()
    leading = []
    for row in rows:
        nz = [j for j, x in enumerate(row) if x != 0]
        leading.append(nz[0] if nz else None)
    nonzero = [c for c in leading if c is not None]
    assert leading[:len(nonzero)] == nonzero, "zero rows must be at the bottom"
    assert nonzero == sorted(set(nonzero)), "each leading entry must be strictly right of the one above"
    assert tuple(nonzero) == pivots
    for i, c in enumerate(pivots):
        assert all(rows[k][c] == 0 for k in range(i + 1, len(rows))), "zeros below every pivot"
        if reduced:
            assert rows[i][c] == 1
            assert all(rows[k][c] == 0 for k in range(i)), "RREF has zeros above every pivot"


# ----------------------------------------------------------------------------- the seed's examples


@pytest.mark.parametrize("M, rank", [(RANK_1, 1), (RANK_2, 2), (FULL_RANK, 3)])
def test_seed_examples_agree_with_sympy_and_numpy(M, rank):
    assert exact_rank(M) == rank == sympy.Matrix(M).rank()
    assert numeric_rank(M) == rank == np.linalg.matrix_rank(np.array(M, dtype=float))
    assert numeric_rank(np.array(M).T) == rank  # row rank = column rank
    ref = row_echelon(M)
    assert ref.rank == rank and len(ref.pivots) == rank
    rref = row_echelon(M, reduced=True)
    expected, expected_pivots = sympy.Matrix(M).rref()
    assert rref.matrix == expected and rref.pivots == expected_pivots


def test_full_rank_example_by_hand():
    """Worked with pencil and paper: R2 - 4 R1, R3 - 7 R1, then R3 - 2 R2."""
    ref = row_echelon(FULL_RANK)
    assert [str(s) for s in ref.steps] == ["R2 <- R2 - 4*R1", "R3 <- R3 - 7*R1", "R3 <- R3 - 2*R2"]
    assert ref.matrix == sympy.Matrix([[1, 2, 3], [0, -3, -6], [0, 0, 1]])
    assert ref.pivots == (0, 1, 2)
    rref = row_echelon(FULL_RANK, reduced=True)
    assert rref.matrix == sympy.eye(3)
    assert "R2 <- (-1/3)*R2" in [str(s) for s in rref.steps]


def test_rank_one_example_steps():
    ref = row_echelon(RANK_1)
    assert [str(s) for s in ref.steps] == ["R2 <- R2 - 2*R1", "R3 <- R3 - 3*R1"]
    assert ref.matrix == sympy.Matrix([[1, 2, 3], [0, 0, 0], [0, 0, 0]])


# ----------------------------------------------------------------------------- shapes and special matrices


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 5), (5, 2)])
def test_zero_matrix(shape):
    Z = np.zeros(shape)
    assert numeric_rank(Z) == 0 == np.linalg.matrix_rank(Z)
    assert exact_rank(Z) == 0
    for reduced in (False, True):
        ech = row_echelon(Z, reduced=reduced)
        assert ech.rank == 0 and ech.pivots == () and ech.steps == ()
        assert ech.matrix == sympy.zeros(*shape)


def test_one_row():
    ech = row_echelon([[0, 0, 5, 10]], reduced=True)
    assert ech.pivots == (2,) and ech.matrix == sympy.Matrix([[0, 0, 1, 2]])
    assert [str(s) for s in ech.steps] == ["R1 <- (1/5)*R1"]
    assert numeric_rank([[0, 0, 5, 10]]) == exact_rank([[0, 0, 5, 10]]) == 1


def test_one_column_needs_a_swap():
    ech = row_echelon([[0], [0], [3]])
    assert [str(s) for s in ech.steps] == ["R1 <-> R3"]
    assert ech.matrix == sympy.Matrix([[3], [0], [0]]) and ech.pivots == (0,)
    assert row_echelon([[0], [0], [3]], reduced=True).matrix == sympy.Matrix([[1], [0], [0]])


@pytest.mark.parametrize("shape, r", [((8, 3), 3), ((8, 3), 2), ((3, 8), 3), ((3, 8), 1), ((6, 9), 4)])
def test_tall_and_wide(shape, r):
    rng = np.random.default_rng(sum(shape) + r)
    M = rng.integers(-4, 5, size=(shape[0], r)) @ rng.integers(-4, 5, size=(r, shape[1]))
    expected = sympy.Matrix(M.tolist()).rank()
    assert expected <= r
    assert exact_rank(M) == numeric_rank(M) == expected == np.linalg.matrix_rank(M)
    assert row_echelon(M, reduced=True).matrix == sympy.Matrix(M.tolist()).rref()[0]


@pytest.mark.parametrize("n", range(1, 15))
def test_hilbert_matrices(n):
    """Exactly invertible for every n, but numerically rank-deficient once n is about 12."""
    H = np.array([[1.0 / (i + j + 1) for j in range(n)] for i in range(n)])
    assert exact_rank(hilbert_fractions(n)) == n == sympy.Matrix(hilbert_fractions(n)).rank()
    assert numeric_rank(H) == np.linalg.matrix_rank(H)
    assert numeric_rank(H.astype(np.float32)) == np.linalg.matrix_rank(H.astype(np.float32))
    assert exact_rank(H) == sympy_exact(H).rank()  # the float matrix, converted exactly


def test_hilbert_numeric_rank_drops_below_exact_rank():
    H = np.array([[1.0 / (i + j + 1) for j in range(13)] for i in range(13)])
    assert numeric_rank(H) < exact_rank(hilbert_fractions(13)) == 13
    assert numeric_rank(H, tol=0.0) > numeric_rank(H)


def test_near_singular_float_matrix_exact_versus_numeric():
    M = [[1.0, 1.0], [1.0, 1.0 + 2.0 ** -50]]
    assert exact_rank(M) == 2  # 1 + 2**-50 is stored exactly, so the rows differ
    assert numeric_rank(M) == 1 == np.linalg.matrix_rank(np.array(M))


def test_floats_are_converted_exactly():
    assert to_fractions([[0.1]])[0][0] == Fraction(0.1) != Fraction(1, 10)
    # 3 * 0.1 != 0.3 in binary floating point, so these rows are exactly independent ...
    assert exact_rank([[0.1, 0.3], [1, 3]]) == 2
    # ... while with exact tenths they are dependent
    assert exact_rank([[Fraction(1, 10), Fraction(3, 10)], [1, 3]]) == 1
    assert exact_rank([[Decimal("0.1"), Decimal("0.3")], [1, 3]]) == 1
    assert numeric_rank([[0.1, 0.3], [1, 3]]) == 1


def test_exact_entry_types():
    M = [[sympy.Rational(1, 3), Fraction(2, 3), np.int64(1)],
         [sympy.Rational(4, 6), 4 * Fraction(1, 3), sympy.Float(2.0)]]
    assert exact_rank(M) == 1
    assert numeric_rank(M) == 1
    assert exact_rank(sympy.Matrix(RANK_2)) == 2
    assert row_echelon(sympy.Matrix([[sympy.Rational(1, 2), 1], [1, 2]])).rank == 1
    assert exact_rank([[2 ** 200, 1], [2 ** 201, 2]]) == 1  # huge ints stay exact


# ----------------------------------------------------------------------------- numeric_rank details


def test_numeric_rank_tol():
    M = np.diag([1.0, 1e-3, 1e-9])
    assert numeric_rank(M) == 3 == np.linalg.matrix_rank(M)
    assert numeric_rank(M, tol=1e-6) == 2 == np.linalg.matrix_rank(M, tol=1e-6)
    assert numeric_rank(M, tol=1e-2) == 1
    assert numeric_rank(M, tol=10) == 0
    assert numeric_rank(M, tol=0) == 3
    assert numeric_rank(M, tol=np.float32(1e-6)) == 2


@pytest.mark.parametrize("shape", [(2, 50), (50, 2)])
def test_default_tolerance_uses_the_larger_dimension(shape):
    """A singular value of 20 eps: above 2 eps (min(m, n) * eps) but below 50 eps (max(m, n) * eps)."""
    M = np.zeros(shape)
    M[0, 0], M[1, 1] = 1.0, 20 * np.finfo(float).eps
    assert numeric_rank(M) == 1 == np.linalg.matrix_rank(M)
    assert numeric_rank(M, tol=0) == 2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_default_tolerance_is_numpys(dtype):
    rng = np.random.default_rng(1)
    M = rng.normal(size=(7, 4)).astype(dtype)
    S = np.linalg.svd(M, compute_uv=False)
    expected = S.max() * max(M.shape) * np.finfo(dtype).eps
    assert default_tolerance(M) == pytest.approx(float(expected), rel=1e-6)


def test_scaling_does_not_change_numeric_rank():
    M = np.array(RANK_2, dtype=float)
    for scale in (1e-300, 1e-150, 1.0, 1e150, 1e300):
        assert numeric_rank(scale * M) == 2
    # NumPy itself overflows here: the singular values of this matrix exceed the float64 range.
    assert numeric_rank(np.full((3, 3), 1e308)) == 1
    D = np.diag([1e100, 1e-100])
    assert numeric_rank(D, tol=1e-101) == 2 == np.linalg.matrix_rank(D, tol=1e-101)
    assert numeric_rank(D) == 1 == np.linalg.matrix_rank(D)


def test_numeric_rank_float16_longdouble_and_int_arrays():
    assert numeric_rank(np.array(RANK_1, dtype=np.float16)) == 1
    assert numeric_rank(np.array(FULL_RANK, dtype=np.longdouble)) == 3
    assert exact_rank(np.array(FULL_RANK, dtype=np.longdouble)) == 3
    assert numeric_rank(np.array(FULL_RANK, dtype=np.int32)) == 3
    assert numeric_rank(np.array(FULL_RANK, dtype=np.uint8)) == 3


def test_torch_tensors_on_cpu():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for r in (1, 3, 5):
        M = rng.normal(size=(6, r)) @ rng.normal(size=(r, 8))
        assert numeric_rank(torch.tensor(M)) == r == np.linalg.matrix_rank(M)
        assert numeric_rank(torch.tensor(M, dtype=torch.float32)) == r == np.linalg.matrix_rank(M.astype(np.float32))
        assert numeric_rank(torch.tensor(M, dtype=torch.bfloat16), tol=0.1) == r
    assert numeric_rank(torch.tensor(FULL_RANK, dtype=torch.bfloat16)) == 3
    assert numeric_rank(torch.tensor(RANK_1)) == 1  # int64 tensor
    assert exact_rank(torch.tensor(RANK_2)) == 2
    assert exact_rank(torch.tensor(RANK_2, dtype=torch.float16)) == 2
    t = torch.tensor(FULL_RANK, dtype=torch.float64, requires_grad=True)
    assert numeric_rank(t) == 3 and default_tolerance(t) > 0


@pytest.mark.gpu
def test_torch_tensors_on_cuda():
    torch = pytest.importorskip("torch")
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for M, r in ((RANK_1, 1), (RANK_2, 2), (FULL_RANK, 3)):
            assert numeric_rank(torch.tensor(M, dtype=dtype, device="cuda")) == r
    assert exact_rank(torch.tensor(RANK_2, device="cuda")) == 2
    with pytest.raises(ValueError, match="NaN"):
        numeric_rank(torch.tensor([[1.0, float("nan")]], device="cuda"))


# ----------------------------------------------------------------------------- hypothesis: products of factors

small_int = st.integers(min_value=-3, max_value=3)


@st.composite
def low_rank_products(draw):
    """An (n, m) integer matrix built as (n, r) @ (r, m): its rank is at most r."""
    n, m = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    r = draw(st.integers(1, 4))
    B = draw(st.lists(st.lists(small_int, min_size=r, max_size=r), min_size=n, max_size=n))
    A = draw(st.lists(st.lists(small_int, min_size=m, max_size=m), min_size=r, max_size=r))
    return (np.array(B, dtype=np.int64) @ np.array(A, dtype=np.int64)), r


@settings(max_examples=60, deadline=None)
@given(low_rank_products())
def test_products_of_factors_match_sympy_and_numpy(case):
    M, r = case
    reference = sympy.Matrix(M.tolist())
    rank = reference.rank()
    assert rank <= r
    assert exact_rank(M) == rank
    assert numeric_rank(M) == rank == np.linalg.matrix_rank(M.astype(float))
    assert numeric_rank(M.T) == rank
    rref = row_echelon(M, reduced=True)
    expected, expected_pivots = reference.rref()
    assert rref.matrix == expected and rref.pivots == expected_pivots and rref.rank == rank
    assert_echelon_shape(rref.matrix, rref.pivots, reduced=True)
    ref = row_echelon(M)
    assert ref.pivots == expected_pivots  # REF is not unique, its pivot columns are
    assert_echelon_shape(ref.matrix, ref.pivots, reduced=False)
    assert sympy.Matrix(ref.matrix).rref()[0] == expected  # row-equivalent to M


fraction = st.fractions(min_value=-4, max_value=4, max_denominator=6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.lists(st.lists(fraction, min_size=n, max_size=n), min_size=1, max_size=5)))
def test_rref_equals_sympy_for_fraction_matrices(rows):
    # many zeros make pivot-less columns and zero rows likely
    M = [[x if abs(x) > 1 else Fraction(0) for x in row] for row in rows]
    expected, pivots = sympy.Matrix([[sympy.Rational(x.numerator, x.denominator) for x in row] for row in M]).rref()
    ech = row_echelon(M, reduced=True)
    assert ech.matrix == expected and ech.pivots == pivots


def test_rref_of_floats_can_differ_from_sympys():
    """row_echelon's docstring: SymPy's rref() equals ours for exact input, not for floats (SymPy computes with
    the rounded floats, row_echelon with their exact values)."""
    X = [[0.15, -0.35], [-0.27, 0.63]]  # meant to be rank 1: row 2 = -1.8 * row 1
    assert sympy.Matrix(X).rref()[1] == (0,)
    assert row_echelon(X, reduced=True).pivots == (0, 1) and exact_rank(X) == 2
    assert Fraction(0.15) * Fraction(0.63) != Fraction(-0.35) * Fraction(-0.27)  # exact determinant of the stored values


# ----------------------------------------------------------------------------- the steps


@settings(max_examples=40, deadline=None)
@given(low_rank_products(), st.booleans())
def test_replaying_the_steps_gives_the_matrix(case, reduced):
    M, _ = case
    ech = row_echelon(M, reduced=reduced)
    assert ech.replay() == ech.matrix
    assert ech.replay(0) == sympy.Matrix(M.tolist())
    assert apply_steps(M, ech.steps) == ech.matrix
    assert apply_steps(M, [str(s) for s in ech.steps]) == ech.matrix  # the text alone is enough
    E = sympy.eye(M.shape[0])
    for step in ech.steps:
        assert parse_step(str(step)) == step
        E = step.elementary(M.shape[0]) * E
    assert E * sympy.Matrix(M.tolist()) == ech.matrix  # row operations = multiplying on the left


def test_step_text_forms():
    assert str(Swap(0, 2)) == "R1 <-> R3"
    assert str(Scale(1, Fraction(1, 3))) == "R2 <- (1/3)*R2"
    assert str(Scale(1, -1)) == "R2 <- (-1)*R2"
    assert str(Scale(0, 4)) == "R1 <- 4*R1"
    assert str(AddMultiple(1, 0, -2)) == "R2 <- R2 - 2*R1"
    assert str(AddMultiple(2, 1, 1)) == "R3 <- R3 + R2"
    assert str(AddMultiple(0, 2, Fraction(-1, 2))) == "R1 <- R1 - (1/2)*R3"
    assert Swap(0, 2) == Swap(2, 0) and hash(Swap(0, 2)) == hash(Swap(2, 0))
    assert isinstance(Swap(0, 1), RowOp)
    assert repr(AddMultiple(1, 0, -2)) == "parse_step('R2 <- R2 - 2*R1')"


@pytest.mark.parametrize("text, op", [
    ("R2 <- R2 - 2*R1", AddMultiple(1, 0, -2)),
    ("r2<-r2-2r1", AddMultiple(1, 0, -2)),
    ("R2 = -2 R1 + R2", AddMultiple(1, 0, -2)),
    ("R2 ← R2 + (-2)*R1", AddMultiple(1, 0, -2)),
    ("R3 <- R3 + 1/2*R1", AddMultiple(2, 0, Fraction(1, 2))),
    ("R3 <- R3 - R1/2", AddMultiple(2, 0, Fraction(-1, 2))),
    ("R1 <-> R3", Swap(0, 2)),
    ("R3 ↔ R1", Swap(0, 2)),
    ("R2 <- (1/3)*R2", Scale(1, Fraction(1, 3))),
    ("R2 <- R2/3", Scale(1, Fraction(1, 3))),
    ("R2 <- -R2", Scale(1, -1)),
    ("R3 - 2R2 -> R3", AddMultiple(2, 1, -2)),  # the textbook arrow, target on the right (not read before)
    ("R3 − 2·R2 → R3", AddMultiple(2, 1, -2)),
    ("(1/3)R2 -> R2", Scale(1, Fraction(1, 3))),
    ("R3 <- R3 - 2.0*R2", AddMultiple(2, 1, -2)),  # decimals and R_3 were "cannot read" before
    ("R3 <- R3 - 0.5*R2", AddMultiple(2, 1, Fraction(-1, 2))),
    ("R3 <- R3 - 0.1*R2", AddMultiple(2, 1, Fraction(-1, 10))),  # as written: 1/10, not the float 0.1
    ("R2 <- .5R2", Scale(1, Fraction(1, 2))),
    ("R2 <- R2/0.5", Scale(1, 2)),
    ("R3 <- R3 - (1.5/3)*R1", AddMultiple(2, 0, Fraction(-1, 2))),
    ("R_3 <- R_3 - 2R_2", AddMultiple(2, 1, -2)),
])
def test_parse_step_accepts_hand_written_forms(text, op):
    assert parse_step(text) == op


@pytest.mark.parametrize("text, message", [
    ("R2 <- 2*R2 - R1", "one go"),
    ("R2 <- R2", "leaves the row"),
    ("R1 <-> R1", "itself"),
    ("R2 <- R1", "not one elementary"),
    ("R2 <- R2 - R1 - R3", "not one elementary"),
    ("R2 <- 0*R2", "not one elementary"),
    ("R0 <-> R1", "numbered from R1"),
    ("subtract twice row 1", "cannot read"),
    ("R2 <- R2 -- R1", "cannot read"),
    ("R2 -> R3", "not one elementary"),  # R3 replaced by R2: not a row operation
    ("R2 - R1 -> R2 -> R3", "cannot read"),
    ("R2 <- R2/0", "divides by 0"),  # a raw ZeroDivisionError before
    ("R2 <- R2 - (1/0)*R1", "divides by 0"),
    ("R2 <- R2 - 1.2.3*R1", "cannot read"),
])
def test_parse_step_rejects_what_is_not_one_row_operation(text, message):
    with pytest.raises(ValueError, match=message):
        parse_step(text)


def test_row_operation_errors():
    with pytest.raises(TypeError, match="string"):
        parse_step(3)
    with pytest.raises(ValueError, match="by 0"):
        Scale(0, 0)
    with pytest.raises(ValueError, match="Scale instead"):
        AddMultiple(1, 1, 2)
    with pytest.raises(ValueError, match="only 3 rows"):
        Swap(0, 3).apply(sympy.eye(3))
    with pytest.raises(ValueError, match="only 2 rows"):
        apply_steps([[1, 2], [3, 4]], ["R3 <- R3 - R1"])


def test_echelon_form_object():
    ech = row_echelon(FULL_RANK, reduced=True)
    assert isinstance(ech, EchelonForm)
    assert repr(ech) == "EchelonForm(RREF, shape=(3, 3), rank=3, pivots=(0, 1, 2), 7 steps)"
    assert ech.original == sympy.Matrix(FULL_RANK)
    assert ech.replay(3) == row_echelon(FULL_RANK).matrix  # the forward phase comes first
    with pytest.raises(TypeError, match="reduced must be True or False"):
        row_echelon(FULL_RANK, reduced="yes")


def test_format_matrix():
    text = format_matrix([[1, Fraction(-1, 2)], [0, 10]])
    assert text.splitlines() == ["[    1  -1/2 ]", "[    0    10 ]"]


# ----------------------------------------------------------------------------- bad input


def _torch_nan():
    torch = pytest.importorskip("torch")
    return torch.tensor([[1.0, float("nan")]])


BAD_INPUT = [
    ([1, 2, 3], ValueError, "2-D matrix.*1 dimension.*reshape"),
    (np.zeros((2, 3, 4)), ValueError, "3 dimensions.*one matrix at a time"),
    (7, ValueError, "0 dimensions"),
    ([], ValueError, "empty"),
    ([[]], ValueError, "empty"),
    (np.zeros((0, 3)), ValueError, r"empty \(shape \(0, 3\)\)"),
    (sympy.zeros(0, 2), ValueError, "empty"),
    ([[1, 2], [3]], ValueError, "ragged: row 0 has 2 entries but row 1 has 1"),
    ([[1, 2], 3], ValueError, "mixes rows and single numbers"),
    ([[[1, 2]]], ValueError, "itself a sequence"),
    ([[1.0, float("nan")]], ValueError, r"M\[0, 1\] is nan.*Remove or replace"),
    (np.array([[1.0, 2.0], [np.inf, 0.0]]), ValueError, r"M\[1, 0\] is inf"),
    ([[sympy.oo]], ValueError, "NaN and infinite"),
    ([["a", 1]], TypeError, "not text"),
    (np.array([["1", "2"]]), TypeError, "not numeric"),
    ([[None, 1]], TypeError, "missing value"),
    ([[True, False]], TypeError, "booleans.*dtype=int"),
    (np.eye(2, dtype=bool), TypeError, "booleans"),
    ([[1j, 1]], TypeError, "complex"),
    ([[sympy.Symbol("x"), 1]], TypeError, "symbol.*Substitute"),
    ("[[1, 2]]", TypeError, "must be a matrix"),
    (None, TypeError, "must be a matrix"),
    ({"a": 1}, TypeError, "must be a matrix"),
]


@pytest.mark.parametrize("function", [numeric_rank, exact_rank, row_echelon, default_tolerance])
@pytest.mark.parametrize("bad, error, message", BAD_INPUT, ids=[repr(b[0])[:30] for b in BAD_INPUT])
def test_bad_input_is_named(function, bad, error, message):
    with pytest.raises(error, match=message):
        function(bad)


@pytest.mark.parametrize("function", [numeric_rank, exact_rank])
def test_bad_torch_input(function):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="NaN"):
        function(_torch_nan())
    with pytest.raises(ValueError, match="1 dimension"):
        function(torch.ones(3))
    with pytest.raises(ValueError, match="empty"):
        function(torch.ones(0, 3))
    with pytest.raises(TypeError, match="complex"):
        function(torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="boolean"):
        function(torch.ones(2, 2, dtype=torch.bool))


def test_exact_only_errors():
    with pytest.raises(TypeError, match="not a rational number.*numeric_rank"):
        exact_rank([[sympy.sqrt(2), 1]])
    assert numeric_rank([[sympy.sqrt(2), 1], [2, sympy.sqrt(2)]]) == 1  # fine numerically
    with pytest.raises(ValueError, match="too large for floating point"):
        numeric_rank([[10 ** 400, 1]])


@pytest.mark.parametrize("tol, error", [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                        ("1e-3", TypeError), (True, TypeError), ([1e-3], TypeError)])
def test_bad_tol(tol, error):
    with pytest.raises(error, match="tol must be"):
        numeric_rank(RANK_2, tol=tol)
