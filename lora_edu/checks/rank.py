"""Checks for chapters 01 (rank) and 02 (echelon forms).

The exercise matrices live here too, so that a notebook shows exactly the matrix its check grades:
``from lora_edu.checks.rank import PICTURE_MATRIX``. Expected answers are computed with
:mod:`lora_edu.rank`, not typed in; the messages name the usual slips.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from lora_edu.checks import Feedback, check_choice, check_integer, exercise, passed, require_answer
from lora_edu.rank import AddMultiple, Scale, Swap, numeric_rank, parse_step, row_echelon

# --------------------------------------------------------------------------- chapter 01

#: Exercise "write the third column as a combination of the first two".
COMBINATION_MATRIX = [[1, 4, 2], [2, 5, 1], [3, 6, 0]]
#: Exercise "line, plane or all of space?".
PICTURE_MATRIX = [[2, -1, 1], [1, 3, 4], [0, 2, 2]]
#: Row rank exercise: a 3×5 matrix whose columns span a plane.
ROW_RANK_SHAPE = (3, 5)
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
    """'2·column 1 - 1·column 2' (no '+ -')."""
    sign = "-" if b < 0 else "+"
    return f"{a:g}·column 1 {sign} {abs(b):g}·column 2"


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
               f"{numeric_rank(A)}, not 3.")
        return
    if np.allclose(b * A[:, 0] + a * A[:, 1], target):
        raise Feedback("Your two numbers are in the wrong order: the first coefficient multiplies column 1, "
                       "the second multiplies column 2.")
    if np.allclose(got, -target):
        raise Feedback(f"{_combo(a, b)} gives minus column 3: flip both signs.")
    raise Feedback(f"{_combo(a, b)} = {got.tolist()}, but column 3 is {target.tolist()}. "
                   "Match the first entries and the second entries: two equations for a and b.")


_PICTURES = {"point": 0, "line": 1, "plane": 2, "space": 3}


@exercise
def check_column_space_picture(answer: Any) -> None:
    """``answer`` in {"point", "line", "plane", "space"}: the column space of :data:`PICTURE_MATRIX`."""
    require_answer(answer, "column_space")
    if not isinstance(answer, str) or answer.strip().lower().replace("all of ", "") not in _PICTURES:
        raise Feedback(f"`column_space` should be one of the words {sorted(_PICTURES)}, not {answer!r}.")
    word = answer.strip().lower().replace("all of ", "")
    rank = numeric_rank(PICTURE_MATRIX)
    expected = next(w for w, r in _PICTURES.items() if r == rank)
    reasons = {
        "point": "Only the zero matrix has a single point (the origin) as its column space.",
        "line": "A line would mean every column is a multiple of one of them; columns 1 and 2 point in "
                "different directions.",
        "plane": "",
        "space": "Filling space needs three independent columns. Try adding column 1 and column 2.",
    }
    check_choice(word, expected, "column_space", {w: reasons[w] for w in _PICTURES})
    passed(f"column 3 = column 1 + column 2, so the three columns lie in one {expected} through the origin: "
           f"rank {rank}.")


def _slider_columns(t: float) -> np.ndarray:
    """The slider's matrix: columns (1,0,1), (0,1,1) and a third column that reaches their plane at t = 1."""
    c1, c2 = np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])
    normal = np.cross(c1, c2)
    return np.column_stack([c1, c2, c1 + c2 + (1 - t) * normal])


@exercise
def check_near_plane(rank_at_099: Any, t_where_rank_drops: Any) -> None:
    """Slider exercise: the rank at t = 0.99, and the value of t where the rank becomes 2."""
    require_answer(rank_at_099, "rank_at_099")
    require_answer(t_where_rank_drops, "t_where_rank_drops")
    expected_rank = numeric_rank(_slider_columns(0.99))
    distance = 0.01 * float(np.linalg.norm(np.cross([1, 0, 1], [0, 1, 1])))
    check_integer(rank_at_099, expected_rank, "rank_at_099",
                  hint=f"Close to the plane is not in the plane: at t = 0.99 the third column is still "
                       f"{distance:.4f} away from it, far more than rounding errors (about 1e-16). "
                       "Rank counts independence exactly; it does not measure how close to dependent you are.")
    if isinstance(t_where_rank_drops, bool) or not isinstance(t_where_rank_drops, (int, float, np.number)):
        raise Feedback(f"`t_where_rank_drops` should be a number between 0 and 1, not {t_where_rank_drops!r}.")
    t = float(t_where_rank_drops)
    if not math.isclose(t, 1.0, abs_tol=1e-12):
        if 0 <= t < 1:
            raise Feedback(f"At t = {t:g} the third column is still {(1 - t) * distance / 0.01:.4f} away from the "
                           "plane, so the rank is 3. It drops only where the distance is exactly zero.")
        raise Feedback(f"t = {t:g} is outside the slider's range [0, 1].")
    passed(f"rank {expected_rank} at t = 0.99; the rank drops to {numeric_rank(_slider_columns(1.0))} only at t = 1, "
           "where the third column lands exactly in the plane.")


@exercise
def check_row_rank(answer: Any) -> None:
    """A 3×5 matrix whose columns span a plane: how many independent rows?"""
    m, n = ROW_RANK_SHAPE
    expected = 2
    require_answer(answer, "independent_rows")
    if answer == m:
        raise Feedback(f"{m} is the number of rows, not the number of independent rows. "
                       "Row rank always equals column rank.")
    if answer == n:
        raise Feedback(f"{n} is the number of columns; a {m}×{n} matrix cannot have more than {m} independent "
                       "rows anyway. Row rank always equals column rank.")
    check_integer(answer, expected, "independent_rows",
                  hint="The columns span a plane, so the column rank is 2 — and row rank equals column rank.")
    passed("2 independent rows: the row space (inside R⁵) and the column space (inside R³) are different "
           "spaces with the same dimension.")


@exercise
def check_product_bound(answer: Any) -> None:
    """B is 6×2 and A is 2×9: the largest possible rank of B @ A."""
    (d, r), (_, k) = PRODUCT_SHAPES
    require_answer(answer, "max_rank_BA")
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


def _default_tol(M: np.ndarray) -> float:
    S = np.linalg.svd(M, compute_uv=False)
    return float(S.max() * max(M.shape) * np.finfo(M.dtype).eps)


def _tol_slips(M: np.ndarray) -> dict[str, float]:
    S = np.linalg.svd(M, compute_uv=False)
    eps = np.finfo(M.dtype).eps
    eps64 = np.finfo(np.float64).eps
    m, n = M.shape
    return {
        "min(m, n) instead of max(m, n): NumPy multiplies by the larger dimension": float(S.max() * min(m, n) * eps),
        "the smallest singular value instead of the largest (S.max())": float(S.min() * max(m, n) * eps),
        "no factor max(m, n): the tolerance grows with the matrix size": float(S.max() * eps),
        "no singular value: the tolerance is relative to the largest one, S.max()": float(max(m, n) * eps),
        "float64's eps for a float32 matrix: use np.finfo(M.dtype).eps": float(S.max() * max(m, n) * eps64),
        "the largest entry instead of the largest singular value": float(np.abs(M).max() * max(m, n) * eps),
    }


@exercise
def check_default_tol(fn: Callable, seed: int = 0) -> None:
    """``fn(M)`` returns NumPy's default rank tolerance ``S.max() * max(m, n) * eps`` for a NumPy array ``M``."""
    require_answer(fn, "default_tol")
    if not callable(fn):
        raise Feedback("`default_tol` should be a function: def default_tol(M): ...")
    rng = np.random.default_rng(seed)
    cases = [rng.normal(size=(5, 3)), rng.normal(size=(3, 7)) * 10, (rng.normal(size=(6, 4)) * 3).astype(np.float32)]
    for M in cases:
        expected = _default_tol(M)
        got = fn(M.copy())
        if got is None:
            raise Feedback("`default_tol(M)` returned None: did you forget the `return`?")
        try:
            value = float(np.asarray(got, dtype=float).reshape(()))
        except (TypeError, ValueError):
            raise Feedback(f"`default_tol(M)` should return one number, but for a {M.shape} matrix it returned "
                           f"{got!r}.") from None
        if math.isclose(value, expected, rel_tol=1e-5):
            continue
        desc = f"For a {M.shape[0]}×{M.shape[1]} {M.dtype} matrix you returned {value:.4g}, expected {expected:.4g}"
        for slip, wrong in _tol_slips(M).items():
            if math.isclose(value, wrong, rel_tol=1e-5) and not math.isclose(wrong, expected, rel_tol=1e-5):
                raise Feedback(f"{desc}: it looks like you used {slip}.")
        raise Feedback(f"{desc}. The formula is S.max() * max(m, n) * np.finfo(M.dtype).eps with S the singular "
                       "values (np.linalg.svd(M, compute_uv=False)).")
    passed("S.max() * max(m, n) * eps — the same tolerance as np.linalg.matrix_rank, for float64 and float32.")


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


@exercise
def check_next_step(answer: Any) -> None:
    """``answer`` is the next row operation of forward elimination on :func:`next_step_state`, as text."""
    require_answer(answer, "next_step")
    ech = row_echelon(NEXT_STEP_START)
    expected = ech.steps[NEXT_STEP_DONE]
    state = next_step_state()
    try:
        op = parse_step(answer)
    except (TypeError, ValueError) as exc:
        raise Feedback(f"Cannot read `next_step`: {exc}") from None
    if op == expected:
        passed(f"{expected} clears the entry below the second pivot; the matrix is now in row echelon form "
               f"with {ech.rank} pivots.")
        return
    try:
        after = op.apply(state)
    except ValueError as exc:
        raise Feedback(str(exc)) from None
    if isinstance(op, Swap):
        raise Feedback(f"{op} is allowed but not needed: the second pivot, {state[1, 1]}, is already non-zero. "
                       "Swap only when the pivot position holds a 0.")
    if isinstance(op, Scale):
        raise Feedback(f"{op} is a legal operation (RREF scales pivots to 1 later), but the forward phase first "
                       "makes the entries *below* the pivot zero.")
    assert isinstance(op, AddMultiple)
    if op.target != 2:
        raise Feedback(f"{op} changes R{op.target + 1}, but R1 and R2 are finished; the entry that is still in the "
                       f"way is {state[2, 1]} in R3, below the second pivot.")
    if op.source == 0:
        raise Feedback(f"{op} uses R1, which would put a non-zero number back into column 1 of R3. Use the row "
                       "holding the second pivot, R2.")
    raise Feedback(f"After {op} the entry below the second pivot is {after[2, 1]}, not 0. The multiplier is "
                   f"(entry to clear) / (pivot) = {state[2, 1]}/{state[1, 1]}; subtract that multiple of R2.")


@exercise
def check_rref_choice(answer: Any) -> None:
    """``answer`` is the set of names in :data:`RREF_CANDIDATES` whose matrix is in RREF."""
    require_answer(answer, "in_rref")
    if isinstance(answer, str):
        answer = set(answer.replace(",", " ").split())
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
    """``answer``: the pivot columns of :data:`PIVOT_MATRIX`, counted from 0."""
    require_answer(answer, "pivot_columns")
    if isinstance(answer, (int, np.integer)):
        raise Feedback("Give the pivot *columns* (e.g. (0, 1)), not how many there are.")
    try:
        got = tuple(sorted(int(x) for x in answer))
    except (TypeError, ValueError):
        raise Feedback(f"`pivot_columns` should be a tuple of column indices such as (0, 1), not {answer!r}.") from None
    expected = row_echelon(PIVOT_MATRIX).pivots
    if got == expected:
        passed(f"pivot columns {expected}: those columns of the original matrix are a basis of its column "
               f"space, and the rank is {len(expected)}.")
        return
    if got == tuple(p + 1 for p in expected):
        raise Feedback(f"Those are the pivot columns counted from 1; Python (and `row_echelon(...).pivots`) counts "
                       f"from 0: subtract 1 from each.")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise Feedback(f"Column {extra[0]} (counting from 0) is not a pivot column: after elimination no row starts "
                       "there, because that column is a combination of the columns to its left.")
    raise Feedback(f"Some pivot columns are missing: you gave {len(got)}, there are {len(expected)}. Reduce all "
                   "the way down; every non-zero row of the echelon form has one pivot.")


@exercise
def check_rank_answer(answer: Any) -> None:
    """``answer``: the rank of :data:`RANK_MATRIX`."""
    m, n = len(RANK_MATRIX), len(RANK_MATRIX[0])
    expected = row_echelon(RANK_MATRIX).rank
    require_answer(answer, "rank_of_L")
    if answer == m:
        raise Feedback(f"{m} is the number of rows. Elimination turns one of them into a zero row: count the "
                       "pivots (the non-zero rows of the echelon form), not the rows.")
    if answer == n:
        raise Feedback(f"A {m}×{n} matrix has rank at most min({m}, {n}) = {min(m, n)}.")
    check_integer(answer, expected, "rank_of_L", hint="Count the pivots of a row echelon form.")
    passed(f"rank {expected}: {expected} pivots, so one row of L is a combination of the others.")


@exercise
def check_rref_dependency(coefficients: Any) -> None:
    """``coefficients = (a, b)``: column 3 = a·column 1 + b·column 2 of :data:`DEPENDENCY_MATRIX`."""
    a, b = _numbers(coefficients, "coefficients", 2)
    R = row_echelon(DEPENDENCY_MATRIX, reduced=True).matrix
    exp_a, exp_b = (float(R[0, 2]), float(R[1, 2]))
    got = _columns_combination(DEPENDENCY_MATRIX, [a, b], (0, 1))
    target = np.array(DEPENDENCY_MATRIX, dtype=float)[:, 2]
    if np.allclose(got, target):
        passed(f"column 3 = {_combo(a, b)} — the numbers in column 3 of the RREF. Row "
               "operations keep every relation between the columns, so the RREF shows them plainly.")
        return
    if math.isclose(a, float(R[0, 1]), abs_tol=1e-9) and math.isclose(b, float(R[0, 2]), abs_tol=1e-9):
        raise Feedback("You read along a row of the RREF. The coefficients for column 3 are read *down* column 3, "
                       "one per pivot row.")
    if np.allclose([a, b], [-exp_a, -exp_b]):
        raise Feedback("Right numbers, wrong signs: column 3 of the RREF already says column 3 = a·column 1 + "
                       "b·column 2, no sign change needed.")
    if np.allclose([a, b], [exp_b, exp_a]):
        raise Feedback("Swapped: the first pivot row gives the coefficient of column 1.")
    raise Feedback(f"{_combo(a, b)} = {got.tolist()}, but column 3 is {target.tolist()}. Look at "
                   "column 3 of the RREF: its entries in the pivot rows are the coefficients.")


_FLOAT_CHOICES = {
    "a": "A pivot that is not exactly 0 proves little: rounding almost never produces an exact 0, even for the "
         "exactly singular matrix [[1, 2, 3], [4, 5, 6], [7, 8, 9]] above.",
    "b": "A tiny pivot is a warning, not a verdict: pivot sizes depend on scaling and on the order of the "
         "elimination, and the triangular matrix above had all pivots equal to 1 while being within 1e-17 of a "
         "singular matrix.",
    "c": "",
}


@exercise
def check_float_pivots_choice(answer: Any) -> None:
    """Multiple choice: what follows from floating-point pivots 4.0, 1.5 and 3e-17?"""
    require_answer(answer, "conclusion")
    word = answer.strip().lower() if isinstance(answer, str) else answer
    check_choice(word, "c", "conclusion", _FLOAT_CHOICES)
    passed("the singular values measure distance to the nearest lower-rank matrix; compare them with a "
           "tolerance (chapter 03 proves why).")


__all__ = [
    "COMBINATION_MATRIX", "PICTURE_MATRIX", "ROW_RANK_SHAPE", "PRODUCT_SHAPES", "NEXT_STEP_START",
    "NEXT_STEP_DONE", "RREF_CANDIDATES", "PIVOT_MATRIX", "RANK_MATRIX", "DEPENDENCY_MATRIX",
    "check_column_combination", "check_column_space_picture", "check_near_plane", "check_row_rank",
    "check_product_bound", "check_default_tol", "next_step_state", "check_next_step", "check_rref_choice",
    "check_pivots", "check_rank_answer", "check_rref_dependency", "check_float_pivots_choice",
]
