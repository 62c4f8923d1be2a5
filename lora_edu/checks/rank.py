"""Checks for chapters 01 (rank) and 02 (echelon forms).

The exercise matrices live here too, so that a notebook shows exactly the matrix its check grades:
``from lora_edu.checks.rank import PICTURE_MATRIX``. Wherever a computation decides the answer, the
expected answer — and every number or column named in a message — is computed from these matrices with
:mod:`lora_edu.rank` or SymPy, not typed in. The one conceptual multiple-choice question
(:func:`check_float_pivots_choice`) states its answer, with a reason for every option. The messages name
the usual slips.

Columns in messages count from 1, as in the notebooks' prose; Python indices (``row_echelon(M).pivots``)
are called *indices* and count from 0.
"""
from __future__ import annotations

import copy
import math
import numbers
import re
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np
import sympy

from lora_edu.checks import (
    Feedback, NotAnswered, as_integer, check_choice, check_integer, exercise, passed, require_answer,
)
from lora_edu.rank import AddMultiple, Scale, Swap, exact_rank, numeric_rank, parse_step, row_echelon


def _mix(coefficients: Sequence[Any], columns: Sequence[int]) -> str:
    """``[2, -1], [0, 1]`` -> ``'2·column 1 - column 2'`` (columns given as 0-based indices, printed from 1)."""
    text = ""
    for c, j in zip(coefficients, columns):
        c = sympy.nsimplify(c)
        if c == 0:
            continue
        sign = "-" if c < 0 else "+"
        size = abs(c)
        term = f"column {j + 1}" if size == 1 else f"{size}·column {j + 1}"
        text += (f"-{term}" if sign == "-" else term) if not text else f" {sign} {term}"
    return text or "0"


def _dependencies(M: Any) -> dict[int, str]:
    """Every non-pivot column of ``M`` (0-based index) as a mix of the pivot columns to its left,
    read off the RREF: ``{2: 'column 3 = column 1 + column 2'}``."""
    rref = row_echelon(M, reduced=True)
    out = {}
    for j in range(rref.matrix.cols):
        if j not in rref.pivots:
            coeffs = [rref.matrix[k, j] for k in range(rref.rank)]
            out[j] = f"column {j + 1} = {_mix(coeffs, rref.pivots)}"
    return out

# --------------------------------------------------------------------------- chapter 01

#: Exercise "write the third column as a combination of the first two".
COMBINATION_MATRIX = [[1, 4, 2], [2, 5, 1], [3, 6, 0]]
#: Exercise "line, plane or all of space?".
PICTURE_MATRIX = [[2, -1, 1], [1, 3, 4], [0, 2, 2]]
#: Row rank exercise: a 3×5 matrix whose columns span a plane (any such matrix has the same answer;
#: the check computes it on this one).
ROW_RANK_EXAMPLE = [[1, 0, 1, 2, -1], [0, 1, 1, -1, 3], [1, 1, 2, 1, 2]]
ROW_RANK_SHAPE = (len(ROW_RANK_EXAMPLE), len(ROW_RANK_EXAMPLE[0]))
#: Product bound exercise: B is 6×2, A is 2×9.
PRODUCT_SHAPES = ((6, 2), (2, 9))


def _numbers(value: Any, name: str, count: int) -> list[float]:
    require_answer(value, name)
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        raise Feedback(f"`{name}` should be {count} numbers, e.g. ({', '.join('1' for _ in range(count))}), "
                       f"not {value!r}.") from None
    if arr.size != count:
        raise Feedback(f"`{name}` should hold exactly {count} numbers (one per column you combine), "
                       f"but it holds {arr.size}.")
    return [float(x) for x in arr]


def _combo(a: float, b: float) -> str:
    """'2·column 1 - 1·column 2' (no '+ -'), for a learner's two coefficients, as many digits as they typed."""
    sign = "-" if b < 0 else "+"
    return f"{a:.10g}·column 1 {sign} {abs(b):.10g}·column 2"


def _vector(v: Any) -> str:
    """A column for a message, 4 significant digits: ``(2, 1, 3e-07)``, not ``[2.0000001000000003, ...]``."""
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def _columns_combination(M: list[list[int]], coeffs: list[float], cols: tuple[int, ...]) -> np.ndarray:
    A = np.array(M, dtype=float)
    return sum(c * A[:, j] for c, j in zip(coeffs, cols))


@exercise
def check_column_combination(coefficients: Any) -> None:
    """``coefficients = (a, b)`` with column 3 = a·column 1 + b·column 2 of :data:`COMBINATION_MATRIX`."""
    a, b = _numbers(coefficients, "coefficients", 2)
    A = np.array(COMBINATION_MATRIX, dtype=float)
    target = A[:, 2]
    got = a * A[:, 0] + b * A[:, 1]
    if np.allclose(got, target):
        passed(f"column 3 = {_combo(a, b)}, so the columns are dependent and the rank is "
               f"{exact_rank(COMBINATION_MATRIX)}, not {A.shape[1]}.")
        return
    if np.allclose(b * A[:, 0] + a * A[:, 1], target):
        raise Feedback("Your two numbers are in the wrong order: the first coefficient multiplies column 1, "
                       "the second multiplies column 2.")
    if np.allclose(got, -target):
        raise Feedback(f"{_combo(a, b)} gives minus column 3: flip both signs.")
    raise Feedback(f"{_combo(a, b)} = {_vector(got)}, but column 3 is {_vector(target)}. "
                   "Match the first entries and the second entries: two equations for a and b.")


_PICTURES = {"point": 0, "line": 1, "plane": 2, "space": 3}
_DIMENSION_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "0": 0, "1": 1, "2": 2, "3": 3}
#: Words that turn an answer around ("not a plane"): such an answer is not read as a picture.
_NEGATIONS = {"not", "no", "never", "neither", "nor", "isn", "isnt", "except", "without"}


def _picture_word(answer: str) -> str | None:
    """The picture an answer names: its one picture word, other words ignored ("a plane through the origin",
    "2D plane" -> "plane"); without one, a dimension ("2-dimensional", "two-dimensional", "2D" -> "plane").
    None for an answer that names two pictures, turns one around ("not a line") or names none."""
    words = re.findall(r"[a-z]+|\d+", answer.lower())
    if any(w in _NEGATIONS for w in words):
        return None
    hits = {w for w in words if w in _PICTURES}
    if len(hits) == 1:
        return hits.pop()
    if hits or not any(w in ("d", "dim", "dimension", "dimensional") for w in words):
        return None
    dims = {_DIMENSION_WORDS[w] for w in words if w in _DIMENSION_WORDS}
    if len(dims) != 1:
        return None
    (dimension,) = dims
    return next(w for w, d in _PICTURES.items() if d == dimension)


@exercise
def check_column_space_picture(answer: Any) -> None:
    """``answer`` in {"point", "line", "plane", "space"}: the column space of :data:`PICTURE_MATRIX`.

    Words around the picture word are ignored ("a plane through the origin"); a dimension is read as its picture
    ("2-dimensional" is a plane). A bare number gets a hint: it is a dimension, and the question asks for the
    picture."""
    require_answer(answer, "column_space")
    choices = "'point', 'line', 'plane' or 'space'"
    number = (isinstance(answer, (numbers.Real, np.number)) and not isinstance(answer, (bool, np.bool_))) or (
        isinstance(answer, str) and answer.strip().isdigit())
    if number:
        raise Feedback(f"`column_space` = {answer!r} is a number — a dimension, which is what the rank counts. The "
                       f"question asks for the picture: a space of dimension 0, 1, 2 or 3 is a point, a line, a "
                       f"plane or all of space. Store the word, {choices}.")
    word = _picture_word(answer) if isinstance(answer, str) else None
    if word is None and isinstance(answer, str) and re.search(r"(?:\br|ℝ)\s*\^?\s*[0-9²³]", answer.lower()):
        raise Feedback(f"`column_space` = {answer!r} names a whole space R^k. The columns of this 3×3 matrix live "
                       f"in R³, and their mixtures fill a part of it through the origin: which one, {choices}?")
    if word is None:
        raise Feedback(f"`column_space` should be one of the words {sorted(_PICTURES)}, not {answer!r}.")
    rank = exact_rank(PICTURE_MATRIX)
    expected = next(w for w, r in _PICTURES.items() if r == rank)
    ech = row_echelon(PICTURE_MATRIX, reduced=True)
    dependency = "; ".join(_dependencies(PICTURE_MATRIX).values())
    first, second = (p + 1 for p in ech.pivots[:2]) if ech.rank >= 2 else (1, 2)
    reasons = {
        "point": "Only the zero matrix has a single point (the origin) as its column space.",
        "line": f"A line would mean every column is a multiple of one of them; columns {first} and {second} "
                "point in different directions.",
        "plane": "A plane needs exactly two independent directions among the columns.",
        "space": f"Filling space needs three independent columns, but {dependency}.",
    }
    check_choice(word, expected, "column_space", {w: reasons[w] for w in _PICTURES})
    passed(f"{dependency}, so the three columns lie in one {expected} through the origin: rank {rank}.")


#: Exercise "close, but not in": A2's first two columns a1 = (1, 0, 1), a2 = (0, 1, 1) and a third column
#: (2, 3, s) that lies in their plane for one value of s.
NEAR_PLANE_COLUMNS = ((1, 0, 1), (0, 1, 1))
#: How far above that value the second question looks: "the rank at s = (your answer) + 1/1000".
NEAR_PLANE_NUDGE = sympy.Rational(1, 1000)


def near_plane_matrix(s: Any) -> sympy.Matrix:
    """The 3×3 matrix of the "close, but not in" exercise, exactly: columns a1, a2 and (2, 3, s).
    ``s`` may be a number, a ``Fraction``/``Rational`` or a SymPy symbol."""
    a1, a2 = (sympy.Matrix(c) for c in NEAR_PLANE_COLUMNS)
    if isinstance(s, Fraction):
        s = sympy.Rational(s.numerator, s.denominator)
    return sympy.Matrix.hstack(a1, a2, sympy.Matrix([2, 3, s]))


def _near_plane_root() -> sympy.Rational:
    """The one s where the third column lies in the plane of a1, a2: the root of det (a polynomial in s)."""
    s = sympy.Symbol("s")
    roots = sympy.solve(near_plane_matrix(s).det(), s)
    assert len(roots) == 1, roots
    return sympy.Rational(roots[0])


def _distance_to_plane(s: sympy.Rational) -> float:
    """How far the third column (2, 3, s) is from the plane of a1 and a2: |n · a3| / |n| with n = a1 × a2."""
    a1, a2 = (sympy.Matrix(c) for c in NEAR_PLANE_COLUMNS)
    normal = a1.cross(a2)
    return float(abs(normal.dot(near_plane_matrix(s)[:, 2])) / normal.norm())


def _exact_number(value: Any, name: str) -> sympy.Rational:
    """A learner's number as an exact Rational (a float keeps its exact binary value), or Feedback."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, Fraction, np.number, sympy.Number)):
        raise Feedback(f"`{name}` should be a number, not {value!r}.")
    try:
        if isinstance(value, (float, np.floating)):
            return sympy.Rational(*float(value).as_integer_ratio())
        if isinstance(value, Fraction):
            return sympy.Rational(value.numerator, value.denominator)
        return sympy.Rational(value)
    except (TypeError, ValueError, OverflowError):
        raise Feedback(f"`{name}` should be a finite number, not {value!r}.") from None


@exercise
def check_near_plane(s_in_plane: Any, rank_just_off: Any) -> None:
    """"Close, but not in": ``s_in_plane`` is the s where the third column (2, 3, s) of :func:`near_plane_matrix`
    lies in the plane of the first two (the rank drops to 2); ``rank_just_off`` is the rank at
    s = s_in_plane + 1/1000.

    ``s_in_plane`` must be that value exactly (a float that is exactly equal counts), not a number close to it:
    the rank drops only where the distance to the plane is exactly zero."""
    require_answer(s_in_plane, "s_in_plane")
    require_answer(rank_just_off, "rank_just_off")
    exact = _exact_number(s_in_plane, "s_in_plane")
    root = _near_plane_root()
    if exact != root:
        normal = tuple(sympy.Matrix(NEAR_PLANE_COLUMNS[0]).cross(sympy.Matrix(NEAR_PLANE_COLUMNS[1])))
        gap = _distance_to_plane(exact)
        close = " — tiny, but not zero" if gap < 1e-3 else ""
        raise Feedback(f"At s = {float(exact)!r} the third column (2, 3, s) is still {gap:.3g} away from the plane of "
                       f"columns 1 and 2{close}, so the rank there is {exact_rank(near_plane_matrix(exact))}. A column "
                       "lies in that plane exactly when it is perpendicular to n = a1 × a2 = "
                       f"({', '.join(map(str, normal))}): solve n · (2, 3, s) = 0.")
    off = root + NEAR_PLANE_NUDGE
    expected_rank = exact_rank(near_plane_matrix(off))
    check_integer(rank_just_off, expected_rank, "rank_just_off",
                  hint=f"Close to the plane is not in the plane: at s = {float(off):g} the third column is still "
                       f"{_distance_to_plane(off):.3g} away from it, far more than rounding errors (about 1e-16). "
                       "Rank counts independence exactly; it does not measure how close to dependent you are.")
    passed(f"the third column lies in the plane only at s = {root} (rank {exact_rank(near_plane_matrix(root))}); "
           f"at s = {float(off):g} it is {_distance_to_plane(off):.3g} away — close, but not in: rank {expected_rank}.")


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


@exercise
def check_row_rank(answer: Any) -> None:
    """A 3×5 matrix whose columns span a plane: how many independent rows?"""
    m, n = ROW_RANK_SHAPE
    column_rank = exact_rank(ROW_RANK_EXAMPLE)
    expected = exact_rank(np.transpose(ROW_RANK_EXAMPLE))  # independent rows = rank of the transpose
    answer = as_integer(answer, "independent_rows")
    if answer == m != expected:
        raise Feedback(f"{m} is the number of rows, not the number of independent rows. "
                       "Row rank always equals column rank.")
    if answer == n:
        raise Feedback(f"{n} is the number of columns; a {m}×{n} matrix cannot have more than {m} independent "
                       "rows anyway. Row rank always equals column rank.")
    check_integer(answer, expected, "independent_rows",
                  hint=f"The columns span a plane, so the column rank is {column_rank} — and row rank equals "
                       "column rank.")
    passed(f"{expected} independent rows: the row space (inside R{str(n).translate(_SUPERSCRIPT)}) and the column "
           f"space (inside R{str(m).translate(_SUPERSCRIPT)}) are different spaces with the same dimension.")


@exercise
def check_product_bound(answer: Any) -> None:
    """B is 6×2 and A is 2×9: the largest possible rank of B @ A."""
    (d, r), (_, k) = PRODUCT_SHAPES
    answer = as_integer(answer, "max_rank_BA")
    if answer == min(d, k):
        raise Feedback(f"{min(d, k)} = min({d}, {k}) bounds any {d}×{k} matrix, but this one is a product: every "
                       f"column of B @ A is a combination of B's {r} columns.")
    if answer in (d, k, d * k):
        raise Feedback(f"B @ A is {d}×{k}, but every one of its columns is a combination of the {r} columns of B, "
                       f"so its column space has dimension at most {r}.")
    rng = np.random.default_rng(0)
    reached = numeric_rank(rng.normal(size=(d, r)) @ rng.normal(size=(r, k)))
    check_integer(answer, reached, "max_rank_BA",
                  hint=f"rank(BA) ≤ min(rank B, rank A) ≤ {r}, and random factors reach that bound.")
    passed(f"rank(B @ A) ≤ {r}: the product squeezes through {r} dimensions — the reason LoRA's update "
           "B A has rank at most r.")


#: Exercise "choose the tolerance": a 10×12 matrix of rank 3 (singular values 4, 1 and 0.05), measured with an
#: independent error of typical size 1e-3 in every entry. The learner sees only the sum, from measured_matrix().
MEASURED_SHAPE = (10, 12)
MEASURED_SINGULAR_VALUES = (4.0, 1.0, 0.05)
MEASUREMENT_ERROR = 1e-3


def _measured_parts() -> tuple[np.ndarray, np.ndarray]:
    """The exact low-rank part and the errors of :func:`measured_matrix` (a fixed seed: the same every call)."""
    rng = np.random.default_rng(2024)
    (m, n), k = MEASURED_SHAPE, len(MEASURED_SINGULAR_VALUES)
    U, _ = np.linalg.qr(rng.normal(size=(m, k)))  # orthonormal columns
    V, _ = np.linalg.qr(rng.normal(size=(n, k)))
    clean = U @ np.diag(MEASURED_SINGULAR_VALUES) @ V.T
    return clean, MEASUREMENT_ERROR * rng.normal(size=(m, n))


def measured_matrix() -> np.ndarray:
    """The matrix of the "choose the tolerance" exercise (shape :data:`MEASURED_SHAPE`): a low-rank matrix plus
    measurement errors of size about :data:`MEASUREMENT_ERROR`. A fresh copy every call."""
    clean, errors = _measured_parts()
    return clean + errors


@exercise
def check_noise_tol(tol: Any) -> None:
    """``tol`` makes ``numeric_rank(measured_matrix(), tol)`` the rank of the matrix without its errors.

    Right answers lie in the gap between the errors' singular values (up to about s·(√m + √n) for errors of size
    s) and the matrix's own smallest one. The messages name the two usual slips: a tolerance of the size of one
    error (s), which leaves many error directions counted, and a tolerance so large it cuts off a real one."""
    require_answer(tol, "tol_measured")
    if isinstance(tol, np.ndarray) and tol.size == 1:
        tol = tol.reshape(()).item()
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (numbers.Real, np.number)):
        raise Feedback(f"`tol_measured` should be one positive number such as 1e-5, not {tol!r}.")
    tol = float(tol)
    if not math.isfinite(tol) or tol <= 0:
        raise Feedback(f"`tol_measured` should be a positive number, not {tol!r}: the tolerance is the size below "
                       "which a singular value counts as noise.")
    clean, errors = _measured_parts()
    X = clean + errors
    (m, n), s = X.shape, MEASUREMENT_ERROR
    rank = numeric_rank(clean)
    S = np.linalg.svd(X, compute_uv=False)
    got = numeric_rank(X, tol=tol)
    spread = s * (math.sqrt(m) + math.sqrt(n))  # about the largest singular value of an m×n matrix of errors
    if got > rank:
        if tol < s / 10:
            why = (f"your tol is far below the errors (of size about {s:g}), so every direction they add counts. "
                   "NumPy's default tolerance covers only the SVD's own rounding; measured data need a tol above "
                   "the singular values of their errors")
        elif tol <= 2 * s:
            why = (f"{tol:g} is about the size of one error, but a {m}×{n} matrix of errors of size {s:g} has "
                   f"singular values up to about {s:g}·(√{m} + √{n}) ≈ {spread:.1e}, not {s:g}")
        else:
            why = (f"{got - rank} singular values at the level of the errors (the largest is σ{rank + 1} = "
                   f"{S[rank]:.1e}) are still above your tol")
        raise Feedback(f"numeric_rank(X, tol={tol:g}) = {got}: {why}. Look at the singular values of X: where do "
                       "they drop by a large factor?")
    if got < rank:
        raise Feedback(f"numeric_rank(X, tol={tol:g}) = {got}: your tol is above σ{got + 1} = {S[got]:.2g}, which is "
                       f"far above the errors (their singular values stay below about {spread:.1e}). That is a "
                       "direction of the matrix itself, not noise: choose a tol below it, but above the errors.")
    passed(f"tol = {tol:g} sits in the gap between the singular values at the errors' level (σ{rank + 1} = "
           f"{S[rank]:.1e} and below; s·(√m + √n) = {spread:.1e}) and the matrix's own (σ{rank} = {S[rank - 1]:.2g}): "
           f"rank {rank}. "
           "Any tol in that gap gives the same rank — without a gap, the rank would be whatever tolerance you chose.")


# --------------------------------------------------------------------------- chapter 02

#: "Which row operation comes next?": the matrix and the two steps already taken.
NEXT_STEP_START = [[1, 2, -1], [2, 7, 1], [-3, 0, 8]]
NEXT_STEP_DONE = 2

#: "Which of these are in RREF?"
RREF_CANDIDATES = {
    "P": [[1, 0, 2], [0, 1, 3], [0, 0, 0]],
    "Q": [[1, 2, 0], [0, 0, 1], [0, 0, 0]],
    "R": [[1, 0, 2], [0, 2, 4], [0, 0, 0]],
    "S": [[0, 1, 0], [1, 0, 0], [0, 0, 1]],
    "T": [[1, 3, 0], [0, 0, 0], [0, 0, 1]],
    "U": [[1, 1, 0], [0, 1, 0], [0, 0, 1]],
}
_NOT_RREF_BECAUSE = {
    "R": "its second pivot is 2; in RREF every pivot is 1 (R is in REF, though)",
    "S": "the leading entry of row 2 is left of row 1's: the pivots must step to the right going down",
    "T": "its zero row is above a non-zero row; zero rows go to the bottom",
    "U": "there is a 1 above the pivot of row 2; in RREF a pivot is the only non-zero entry of its column",
}

#: "Find the pivots" and "what is the rank?"
PIVOT_MATRIX = [[1, 2, 0, 1, 3], [2, 4, 1, 3, 8], [1, 2, 2, 4, 9]]
RANK_MATRIX = [[1, 2, 0, 3, 1], [2, 4, 1, 7, 3], [0, 0, 1, 1, 2], [1, 2, 1, 4, 4]]
#: "Read a dependency off the RREF": column 3 of this matrix from columns 1 and 2.
DEPENDENCY_MATRIX = [[1, 0, 2, -1], [2, 1, 3, 1], [1, 3, -1, 8]]


def next_step_state() -> Any:
    """The matrix of the "which row operation comes next?" exercise (after the first steps)."""
    return row_echelon(NEXT_STEP_START).replay(NEXT_STEP_DONE)


def next_step_history() -> str:
    """The steps already taken in the "which row operation comes next?" exercise, as text
    (``"R2 <- R2 - 2*R1, R3 <- R3 + 3*R1"``), so that the notebook shows them without showing the whole trace."""
    return ", ".join(str(step) for step in row_echelon(NEXT_STEP_START).steps[:NEXT_STEP_DONE])


_ORDINAL = {0: "first", 1: "second", 2: "third", 3: "fourth", 4: "fifth"}


def _next_step_alternatives() -> tuple[AddMultiple, Swap | None, Scale | None, int, int]:
    """The chapter's next step, and the next step of the two other common conventions (None where that
    convention does the same thing): partial pivoting's swap and scale-first's scaling. Also the pivot's
    row and column (0-based)."""
    expected = row_echelon(NEXT_STEP_START).steps[NEXT_STEP_DONE]
    assert isinstance(expected, AddMultiple)
    state = next_step_state()
    r = expected.source
    c = next(j for j in range(state.cols) if state[r, j] != 0)
    largest = max(range(r, state.rows), key=lambda i: abs(state[i, c]))
    swap = Swap(r, largest) if abs(state[largest, c]) > abs(state[r, c]) else None
    scale = Scale(r, Fraction(1) / Fraction(str(state[r, c]))) if state[r, c] != 1 else None
    return expected, swap, scale, r, c


@exercise
def check_next_step(answer: Any) -> None:
    """``answer`` is the next row operation of forward elimination on :func:`next_step_state`, as text.

    The chapter's convention (that of ``row_echelon``): the first non-zero entry is the pivot and the
    forward phase only clears entries below pivots. The next step of partial pivoting (swap the largest entry
    up) and of scale-first elimination (make the pivot 1) are accepted too, and the message says which
    convention the answer follows."""
    require_answer(answer, "next_step")
    ech = row_echelon(NEXT_STEP_START)
    expected, swap, scale, r, c = _next_step_alternatives()
    state = next_step_state()
    pivot, below = state[r, c], [state[i, c] for i in range(r + 1, state.rows)]
    try:
        op = parse_step(answer)
    except (TypeError, ValueError) as exc:
        raise Feedback(f"Cannot read `next_step`: {exc}") from None
    nth = _ORDINAL.get(r, f"#{r + 1}")
    if op == expected:
        last = len(ech.steps) == NEXT_STEP_DONE + 1
        done = f"; the matrix is now in row echelon form with {ech.rank} pivots" if last else ""
        passed(f"{expected} clears the entry below the {nth} pivot{done}.")
        return
    if swap is not None and op == swap:
        passed(f"{op} is partial pivoting's step: |{state[swap.j, c]}| > |{pivot}|, so the larger entry becomes the "
               "pivot (what floating-point codes do, as the chapter's last section shows). This chapter's exact "
               f"traces keep a non-zero pivot where it is; their next step is {expected}.")
        return
    if scale is not None and op == scale:
        passed(f"{op} makes the pivot 1 first, as many textbooks do. This chapter's traces scale only in the "
               f"backward phase (RREF); their next step is {expected}.")
        return
    try:
        after = op.apply(state)
    except ValueError as exc:
        raise Feedback(str(exc)) from None
    finished = ", ".join(f"R{i + 1}" for i in range(r))
    if isinstance(op, Swap):
        if min(op.i, op.j) < r:
            raise Feedback(f"{op} moves {finished}, which already holds its pivot and is finished; the {nth} pivot "
                           f"is {pivot} in R{r + 1}.")
        raise Feedback(f"{op} does not bring a larger entry into the pivot position (partial pivoting would swap "
                       f"the largest |entry| of column {c + 1} up). With the pivot {pivot} already non-zero, clear "
                       "the entries below it.")
    if isinstance(op, Scale):
        raise Feedback(f"{op} is a legal operation, but it is not the next step of elimination: the forward phase "
                       f"makes the entries below the pivot {pivot} zero (or, in the scale-first convention, first "
                       "makes that pivot 1).")
    assert isinstance(op, AddMultiple)
    if op.target < r:
        raise Feedback(f"{op} changes R{op.target + 1}, but {finished} {'is' if r == 1 else 'are'} finished: each "
                       f"already holds its pivot. The entries still in the way are below the {nth} pivot {pivot} "
                       f"in R{r + 1}.")
    if op.target == r:
        raise Feedback(f"{op} changes R{r + 1}, the row holding the {nth} pivot. The forward phase keeps the pivot "
                       f"row and changes the rows below it: clear {', '.join(str(b) for b in below)} below the pivot.")
    if op.source != r:
        raise Feedback(f"{op} uses R{op.source + 1}, which would put a non-zero number back into a finished column of "
                       f"R{op.target + 1}. Use the row holding the {nth} pivot, R{r + 1}.")
    raise Feedback(f"After {op} the entry below the {nth} pivot is {after[op.target, c]}, not 0. The multiplier is "
                   f"(entry to clear) / (pivot) = {state[op.target, c]}/{pivot}; subtract that multiple of R{r + 1}.")


@exercise
def check_rref_choice(answer: Any) -> None:
    """``answer`` is the set of names in :data:`RREF_CANDIDATES` whose matrix is in RREF."""
    require_answer(answer, "in_rref")
    if isinstance(answer, str):
        words = answer.replace(",", " ").split()
        if len(words) == 1 and len(words[0]) > 1 and set(words[0].upper()) <= set(RREF_CANDIDATES):
            words = list(words[0])  # "PQ"
        answer = set(words)
    try:
        chosen = {str(x).strip().upper() for x in answer}
    except TypeError:
        raise Feedback(f"`in_rref` should be a set of names such as {{'P', 'R'}}, not {answer!r}.") from None
    unknown = chosen - set(RREF_CANDIDATES)
    if unknown:
        raise Feedback(f"{sorted(unknown)} are not among the matrices {sorted(RREF_CANDIDATES)}.")
    expected = {k for k, M in RREF_CANDIDATES.items() if row_echelon(M, reduced=True).matrix.tolist() == M}
    wrong = sorted(chosen - expected)
    if wrong:
        k = wrong[0]
        raise Feedback(f"{k} is not in RREF: {_NOT_RREF_BECAUSE.get(k, 'compare it with its RREF')}.")
    missing = sorted(expected - chosen)
    if missing:
        k = missing[0]
        pivots = row_echelon(RREF_CANDIDATES[k], reduced=True).pivots
        raise Feedback(f"{k} is in RREF too: its pivots (columns {[p + 1 for p in pivots]}) are 1, step to the "
                       "right, have zeros above and below, and the zero row is at the bottom. A non-pivot column "
                       "may hold any numbers.")
    passed(f"{sorted(expected)} are in RREF; the others break one rule each.")


@exercise
def check_pivots(answer: Any) -> None:
    """``answer``: the pivot columns of :data:`PIVOT_MATRIX` as Python indices (column j has index j - 1),
    as ``row_echelon(...).pivots`` gives them."""
    require_answer(answer, "pivot_columns")
    if isinstance(answer, (int, np.integer)):
        raise Feedback("Give the pivot *columns* (e.g. (0, 1)), not how many there are.")
    if isinstance(answer, str):
        raise Feedback(f"`pivot_columns` should be a tuple of column indices such as (0, 1), not {answer!r}.")
    try:
        given = [as_integer(x, "each pivot index") for x in answer]
    except TypeError:
        raise Feedback(f"`pivot_columns` should be a tuple of column indices such as (0, 1), not {answer!r}.") from None
    got = tuple(sorted(given))
    expected = row_echelon(PIVOT_MATRIX).pivots
    columns = ", ".join(str(p + 1) for p in expected)
    if got == expected:
        passed(f"pivot indices {expected}, i.e. columns {columns}: those columns of the original matrix are a "
               f"basis of its column space, and the rank is {len(expected)}.")
        return
    twice = sorted({j for j in given if given.count(j) > 1})
    if twice:
        raise Feedback(f"You listed index {twice[0]} more than once; each pivot column has one pivot, so list each "
                       "index once.")
    if got == tuple(p + 1 for p in expected):
        raise Feedback(f"Those are the pivot columns counted from 1 (columns {columns}); Python indices (and "
                       "`row_echelon(...).pivots`) count from 0: subtract 1 from each.")
    n = len(PIVOT_MATRIX[0])
    outside = [j for j in got if not 0 <= j < n]
    if outside:
        raise Feedback(f"Index {outside[0]} is not a column of this {len(PIVOT_MATRIX)}×{n} matrix (indices run "
                       f"from 0 to {n - 1}).")
    extra = sorted(set(got) - set(expected))
    if extra:
        j = extra[0]
        raise Feedback(f"Index {j} (column {j + 1}) is not a pivot column: after elimination no row starts there, "
                       f"because {_dependencies(PIVOT_MATRIX)[j]} — a combination of the columns to its left.")
    raise Feedback(f"Some pivot columns are missing: you gave {len(got)}, there are {len(expected)}. Reduce all "
                   "the way down; every non-zero row of the echelon form has one pivot.")


@exercise
def check_rank_answer(answer: Any) -> None:
    """``answer``: the rank of :data:`RANK_MATRIX`."""
    m, n = len(RANK_MATRIX), len(RANK_MATRIX[0])
    expected = row_echelon(RANK_MATRIX).rank
    answer = as_integer(answer, "rank_of_L")
    if answer == m != expected:
        raise Feedback(f"{m} is the number of rows. Elimination turns {m - expected} of them into a zero row: count "
                       "the pivots (the non-zero rows of the echelon form), not the rows.")
    if answer == n:
        raise Feedback(f"A {m}×{n} matrix has rank at most min({m}, {n}) = {min(m, n)}.")
    check_integer(answer, expected, "rank_of_L", hint="Count the pivots of a row echelon form.")
    zero_rows = m - expected
    passed(f"rank {expected}: {expected} pivots, so the {m} rows of L span only a {expected}-dimensional space and "
           f"elimination turns {zero_rows} of them into {'a zero row' if zero_rows == 1 else 'zero rows'}.")


@exercise
def check_rref_dependency(coefficients: Any) -> None:
    """``coefficients = (a, b)``: column 3 = a·column 1 + b·column 2 of :data:`DEPENDENCY_MATRIX`."""
    a, b = _numbers(coefficients, "coefficients", 2)
    R = row_echelon(DEPENDENCY_MATRIX, reduced=True).matrix
    exp_a, exp_b = (float(R[0, 2]), float(R[1, 2]))
    got = _columns_combination(DEPENDENCY_MATRIX, [a, b], (0, 1))
    target = np.array(DEPENDENCY_MATRIX, dtype=float)[:, 2]
    if np.allclose(got, target):
        special = [-R[0, 2], -R[1, 2], 1] + [0] * (R.cols - 3)
        passed(f"column 3 = {_combo(a, b)} — the numbers in column 3 of the RREF. Row operations keep every "
               f"relation between the columns, so the RREF shows them plainly; as a solution of D x = 0 it is "
               f"the special solution ({', '.join(map(str, special))}) of free column 3.")
        return
    if math.isclose(a, float(R[0, 1]), abs_tol=1e-9) and math.isclose(b, float(R[0, 2]), abs_tol=1e-9):
        raise Feedback("You read along a row of the RREF. The coefficients for column 3 are read *down* column 3, "
                       "one per pivot row.")
    if np.allclose([a, b], [-exp_a, -exp_b]):
        raise Feedback("Right numbers, wrong signs: column 3 of the RREF already says column 3 = a·column 1 + "
                       "b·column 2, no sign change needed (the special solution of D x = 0 carries the minus signs).")
    if np.allclose([a, b], [exp_b, exp_a]):
        raise Feedback("Swapped: the first pivot row gives the coefficient of column 1.")
    raise Feedback(f"{_combo(a, b)} = {_vector(got)}, but column 3 is {_vector(target)}. Look at "
                   "column 3 of the RREF: its entries in the pivot rows are the coefficients.")


#: "What do the pivots tell you?": the pivots of partial-pivoting elimination on a 3×3 matrix.
FLOAT_PIVOTS = (4.0, 1.5, 3e-17)
_N_FLOAT = len(FLOAT_PIVOTS)
_BOUND = (f"σ_min ≤ n·|smallest pivot| = {_N_FLOAT}·{min(FLOAT_PIVOTS):g} = {_N_FLOAT * min(FLOAT_PIVOTS):.1g} "
          "(plus the elimination's own rounding)")
#: The options as the notebook shows them; "c" is right.
FLOAT_PIVOT_OPTIONS = {
    "a": f"the rank is {_N_FLOAT}: no pivot is exactly zero",
    "b": f"the rank is exactly {_N_FLOAT - 1}: the last pivot is tiny",
    "c": f"the matrix is within about {10.0 ** math.ceil(math.log10(_N_FLOAT * min(FLOAT_PIVOTS))):.0e} of a "
         "singular one (plus rounding), but its exact rank does not follow",
    "d": "nothing: in floating point, the pivots say nothing about how close to singular the matrix is",
}
_FLOAT_CHOICES = {
    "a": "A pivot that is not exactly 0 proves little: rounding almost never produces an exact 0, even for the "
         "exactly singular matrix [[1, 2, 3], [4, 5, 6], [7, 8, 9]] above. And this last pivot is tiny: under "
         f"partial pivoting that shows the matrix is close to a singular one, {_BOUND}.",
    "b": "A tiny pivot under partial pivoting does show that the matrix is *close* to a matrix of rank "
         f"{_N_FLOAT - 1}: {_BOUND}. It does not show that the rank is *exactly* {_N_FLOAT - 1}: the rounding that "
         f"left {min(FLOAT_PIVOTS):g} could as well have hidden an exact 0 or a true pivot of that size "
         f"(diag({', '.join(f'{p:g}' for p in FLOAT_PIVOTS)}) has exactly these pivots and rank {_N_FLOAT}). Exact "
         "rank needs exact arithmetic; the numerical rank needs singular values and a tolerance.",
    "c": "",
    "d": "Under partial pivoting a tiny pivot does say something: the multipliers are at most 1, so "
         f"{_BOUND} — the matrix is that close to a singular one. What pivots cannot do is certify: neither the "
         "exact rank nor, when they are all large, that a matrix is far from singular (T_n has every pivot 1).",
}


@exercise
def check_float_pivots_choice(answer: Any) -> None:
    """Multiple choice: what follows from floating-point pivots :data:`FLOAT_PIVOTS` (partial pivoting)?
    The options are :data:`FLOAT_PIVOT_OPTIONS`."""
    require_answer(answer, "conclusion")
    word = answer.strip().strip("()").lower() if isinstance(answer, str) else answer
    check_choice(word, "c", "conclusion", _FLOAT_CHOICES)
    passed(f"{_BOUND}: a warning that the matrix is within rounding distance of a singular one. Whether it is "
           "exactly singular, the pivots cannot say; the singular values measure the distance to the nearest "
           "lower-rank matrix in the spectral norm (chapter 03 states and checks Eckart–Young–Mirsky).")


# --------------------------------------------------------------------------- chapter 02: elimination in code


#: Rank 2, with second pivot 1/10^12: a tolerance test (abs(x) < 1e-9) calls it 0 and says rank 1.
_TINY_PIVOT_CASE = [[1, 1], [1, 1 + Fraction(1, 10**12)]]


def _elimination_cases(seed: int) -> list[list[list[Any]]]:
    """Matrices (lists of rows) for :func:`check_rank_by_elimination`: fixed ones that each catch a usual slip,
    then random low-rank integer matrices of four shapes (``seed`` picks them), each with a zero column and,
    where a row allows it, a 0 in the first pivot position (rows reordered, which keeps the rank)."""
    F = Fraction
    cases: list[list[list[Any]]] = [
        [[1, 2, 3], [2, 4, 7]],                       # column 2 has no pivot: the staircase skips it
        [[0, 2, 1], [1, 1, 1], [2, 2, 2]],            # a 0 in the first pivot position: swap
        [[1, 2, 3], [2, 4, 6], [3, 6, 9], [1, 1, 1]],  # 4 rows, rank 2
        [[0, 0, 0], [0, 0, 0]],                       # the zero matrix: rank 0
        [[F(1, 3), F(1, 10)], [1, F(3, 10)]],         # exact fractions: 3·row 1 = row 2; floats say rank 2
        [[0, 0, 1, 2], [0, 0, 2, 4], [0, 1, 0, 0]],   # zero columns first, then a swap
        _TINY_PIVOT_CASE,                             # a pivot of 10^-12: tiny, but not 0
    ]
    rng = np.random.default_rng(seed)
    for m, n in [(4, 6), (6, 4), (5, 5), (3, 7)]:
        r = int(rng.integers(1, min(m, n)))
        M = rng.integers(-3, 4, size=(m, r)) @ rng.integers(-3, 4, size=(r, n))
        M[:, int(rng.integers(n))] = 0
        nonzero = np.flatnonzero(M.any(axis=0))
        if nonzero.size:
            zero_first = np.flatnonzero((M[:, nonzero[0]] == 0) & M.any(axis=1))
            if zero_first.size:  # a non-zero row with a 0 where the first pivot goes: put it on top
                order = [int(zero_first[0])] + [i for i in range(m) if i != zero_first[0]]
                M = M[order]
        cases.append(M.tolist())
    return cases


def _slip_elimination(M: list[list[Any]], *, swap: bool = True, skip: bool = True, exact: bool = True) -> int:
    """The number of pivots found by elimination with one of the usual slips switched on: no swap (a 0 in the
    pivot position means no pivot in that column), no skipping (a column without a pivot still uses up a row,
    as if pivots sat on the diagonal), floats instead of Fractions."""
    rows = [[Fraction(x) if exact else float(x) for x in row] for row in M]
    m, n = len(rows), len(rows[0])
    r = pivots = 0
    for c in range(n):
        if r == m:
            break
        candidates = range(r, m) if swap else range(r, r + 1)
        p = next((i for i in candidates if rows[i][c] != 0), None)
        if p is None:
            if not skip:
                r += 1
            continue
        rows[r], rows[p] = rows[p], rows[r]
        for i in range(r + 1, m):
            f = rows[i][c] / rows[r][c]
            rows[i] = [a - f * b for a, b in zip(rows[i], rows[r])]
        r += 1
        pivots += 1
    return pivots


_FLOAT_SLIP = ("you compute in floats: 1/3 and 1/10 are rounded, so an entry that should become exactly 0 does "
               "not. Convert every entry with Fraction(x) first — Fraction(float(x)) keeps the rounding")
_SLIPS: dict[str, Callable[[list[list[Any]]], int]] = {
    "you count the rows, not the pivots: a row can become all zeros": len,
    "you count min(m, n), the largest possible rank, not the pivots. If you return your row counter: does it move "
    "down in a column without a pivot too? It must stay on the same row there": lambda M: min(len(M), len(M[0])),
    "you count the non-zero rows of M before eliminating: count them after elimination": (
        lambda M: sum(1 for row in M if any(x != 0 for x in row))),
    _FLOAT_SLIP: lambda M: _slip_elimination(M, exact=False),
    "you do not swap: when the pivot position holds a 0, look for a non-zero entry further down the column and "
    "swap that row up": lambda M: _slip_elimination(M, swap=False),
    "you do not skip columns without a pivot: when no row at or below the current one has a non-zero entry in "
    "this column, move to the next column but stay on the same row (the staircase can step more than one column "
    "right)": lambda M: _slip_elimination(M, skip=False),
}


def _show(M: list[list[Any]]) -> str:
    return "[" + ", ".join("[" + ", ".join(str(x) for x in row) + "]" for row in M) + "]"


@exercise
def check_rank_by_elimination(fn: Any, seed: int = 0) -> None:
    """``fn(M)`` returns the rank of ``M`` (a list of rows of ints or Fractions) by Gaussian elimination in
    exact arithmetic. Compared with :func:`lora_edu.rank.exact_rank` on :func:`_elimination_cases` (``seed``
    picks the random ones); a wrong rank gets the usual slip named when one explains every answer."""
    require_answer(fn, "rank_by_elimination")
    if not callable(fn):
        raise Feedback("`rank_by_elimination` should be a function: def rank_by_elimination(M): ...")
    cases = _elimination_cases(seed)
    answers: list[int] = []
    for M in cases:
        try:
            got = fn(copy.deepcopy(M))
        except NotImplementedError:
            raise
        except Exception as exc:  # the learner's bug, shown as feedback rather than a traceback
            raise Feedback(f"rank_by_elimination({_show(M)}) raised {type(exc).__name__}: {exc}. "
                           "Check the loop bounds: the row index must stop at the number of rows, the column "
                           "index at the number of columns.") from None
        if got is None:
            raise NotAnswered("`rank_by_elimination(M)` returned None: write its body in the exercise cell "
                              "(and end with `return` the number of pivots), run that cell, then run this one.")
        answers.append(as_integer(got, f"rank_by_elimination({_show(M)})"))
    for M, got in zip(cases, answers):
        expected = exact_rank(M)
        if got == expected:
            continue
        shape = f"{len(M)}×{len(M[0])}"
        desc = f"rank_by_elimination({_show(M)}) returned {got}, but this {shape} matrix has rank {expected}"
        for slip, slipped in _SLIPS.items():
            if all(slipped(C) == a for C, a in zip(cases, answers)):
                raise Feedback(f"{desc}: it looks like {slip}.")
        if M == _TINY_PIVOT_CASE and got < expected:
            raise Feedback(f"{desc}: its second pivot is 1/10¹², tiny but not 0. It looks like you treat small "
                           "numbers as zero (a tolerance such as abs(x) < 1e-9, or rounding). In exact arithmetic "
                           "zero means exactly 0: work in Fractions and test x != 0.")
        fractions = any(isinstance(x, Fraction) and x.denominator > 1 for row in M for x in row)
        # on a matrix of fractions, a float slip is the likeliest reason (Fraction(float(x)) included)
        for slip, slipped in sorted(_SLIPS.items(), key=lambda item: not (fractions and item[0] == _FLOAT_SLIP)):
            if slipped(M) == got != expected:
                raise Feedback(f"{desc}. Perhaps {slip}.")
        raise Feedback(f"{desc}. Go column by column: find a row at or below the current one with a non-zero "
                       "entry, swap it up, subtract multiples of it to clear the entries below it, count one pivot "
                       "and move one row down; a column with no such row has no pivot.")
    passed(f"your elimination agrees with exact_rank on all {len(cases)} matrices — swaps, columns without a pivot, "
           "zero rows and exact fractions included.")


__all__ = [
    "COMBINATION_MATRIX", "PICTURE_MATRIX", "ROW_RANK_EXAMPLE", "ROW_RANK_SHAPE", "PRODUCT_SHAPES",
    "NEXT_STEP_START", "NEXT_STEP_DONE", "RREF_CANDIDATES", "PIVOT_MATRIX", "RANK_MATRIX", "DEPENDENCY_MATRIX",
    "FLOAT_PIVOTS", "FLOAT_PIVOT_OPTIONS", "NEAR_PLANE_COLUMNS", "NEAR_PLANE_NUDGE", "MEASURED_SHAPE",
    "MEASURED_SINGULAR_VALUES", "MEASUREMENT_ERROR", "near_plane_matrix", "measured_matrix",
    "check_column_combination", "check_column_space_picture", "check_near_plane", "check_row_rank",
    "check_product_bound", "check_noise_tol", "next_step_state", "next_step_history", "check_next_step",
    "check_rref_choice",
    "check_pivots", "check_rank_answer", "check_rref_dependency", "check_float_pivots_choice",
    "check_rank_by_elimination",
]
