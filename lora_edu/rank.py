"""The rank of a matrix, three ways (chapters 01 and 02).

- :func:`numeric_rank` — for floating-point data: count the singular values above a tolerance
  (NumPy's default tolerance unless you give one). Lists, NumPy arrays, torch tensors on any device.
- :func:`exact_rank` — for exact data: Gaussian elimination in rational arithmetic, no tolerance.
- :func:`row_echelon` — the elimination itself, recorded: the echelon form (``reduced=True`` for the
  reduced one, RREF), its pivot columns, the rank, and every row operation as readable text
  (``R2 <- R2 - 2*R1``, ``R1 <-> R3``, ``R2 <- (1/3)*R2``) that you can replay.

Row labels in step text count from 1 like a textbook (``R1`` is the first row); attributes and
pivot columns count from 0 like Python (``Swap(i=0, j=2)`` prints as ``R1 <-> R3``).

Example::

    >>> from lora_edu.rank import exact_rank, numeric_rank, row_echelon
    >>> A = [[1, 2, 3], [2, 4, 6], [3, 6, 9]]
    >>> numeric_rank(A), exact_rank(A)
    (1, 1)
    >>> [str(s) for s in row_echelon(A).steps]
    ['R2 <- R2 - 2*R1', 'R3 <- R3 - 3*R1']
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Iterable

import numpy as np
import sympy

from lora_edu._validate import as_float_matrix, is_torch_tensor, validate_matrix

__all__ = [
    "numeric_rank", "default_tolerance", "exact_rank", "row_echelon", "EchelonForm",
    "RowOp", "Swap", "Scale", "AddMultiple", "parse_step", "apply_steps", "to_fractions", "format_matrix",
]

# --------------------------------------------------------------------------- numeric rank (SVD)


def _overflow_exponent(amax: float, size: int, fmax: float) -> int:
    """0, or the even power of two to divide by when the singular values (at most ``size * amax``)
    could overflow. Scaling only then keeps the results bit-identical to NumPy's everywhere else."""
    if amax * size * 4 < fmax:
        return 0
    return 2 * (math.frexp(amax)[1] // 2)


def _svd_scaled(M: Any) -> tuple[np.ndarray, int, float, tuple[int, int]]:
    """Singular values of ``M / 2**e``, ``e``, and eps, where ``e = 0`` unless M's entries are so large
    that its singular values could overflow (a 3×3 matrix of 1e308s has singular values above the float64
    maximum). Scaling by a power of two changes no digit of the entries, only their exponent.
    ``eps`` is the machine epsilon of the dtype the SVD runs in (as NumPy's ``finfo(S.dtype).eps``):
    float64 for integers and exact input, float32 for float16/bfloat16. Last, M's shape.
    """
    arr = as_float_matrix(M, "M", keep_torch=True)
    if is_torch_tensor(arr):
        import torch

        t = arr.detach()
        if t.dtype in (torch.float16, torch.bfloat16) or (t.device.type == "mps" and not t.dtype.is_floating_point):
            t = t.float()  # no SVD in half precision; MPS has no float64
        elif not t.dtype.is_floating_point:
            t = t.double()
        eps = torch.finfo(t.dtype).eps
        shape = tuple(t.shape)
        amax = float(t.abs().max())
        if amax == 0.0:
            return np.zeros(min(shape)), 0, eps, shape
        e = _overflow_exponent(amax, max(shape), torch.finfo(t.dtype).max)
        if e:
            t = t * 2.0 ** (-e // 2) * 2.0 ** (-e - (-e // 2))  # two exact halves: 2**-e alone may underflow
        s = torch.linalg.svdvals(t).cpu().double().numpy()
        return s, e, eps, shape
    # NumPy's SVD handles float32 and float64 only: float16 is computed in float32, long double in float64
    compute = {np.dtype(np.float16): np.float32, np.dtype(np.longdouble): np.float64}.get(arr.dtype, arr.dtype)
    eps = float(np.finfo(compute).eps)
    amax = float(np.max(np.abs(arr)))
    if amax == 0.0:
        return np.zeros(min(arr.shape), dtype=compute), 0, eps, arr.shape
    e = _overflow_exponent(amax, max(arr.shape), float(np.finfo(compute).max))
    scaled = arr.astype(compute, copy=False)
    if e:
        scaled = np.ldexp(scaled, -e).astype(compute, copy=False)
    return np.linalg.svd(scaled, compute_uv=False), e, eps, arr.shape


def _check_tol(tol: Any) -> float:
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"tol must be a non-negative real number (or None for NumPy's default), "
                        f"not {type(tol).__name__} {tol!r}.")
    tol = float(tol)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0 (or None for NumPy's default), got {tol}.")
    return tol


def default_tolerance(M: Any) -> float:
    """NumPy's default rank tolerance for ``M`` (shape ``(m, n)``): ``S.max() * max(m, n) * eps``.

    ``S`` are the singular values and ``eps`` the machine epsilon of the dtype they are computed in:
    float64 for integers, lists and exact numbers, float32 for float32 arrays and tensors — and for
    float16/bfloat16, which no SVD routine handles, so they are computed in float32. The tolerance covers
    the SVD's own rounding; if your data carry larger errors (measurements, half-precision storage),
    pass a larger ``tol`` to :func:`numeric_rank`.
    """
    s, e, eps, shape = _svd_scaled(M)
    return math.ldexp(float(s.max() * max(shape) * s.dtype.type(eps)), e)


def numeric_rank(M: Any, tol: float | None = None) -> int:
    """Numerical rank of ``M`` (shape ``(m, n)``): the number of singular values greater than ``tol``.

    ``tol=None`` uses the same default as ``numpy.linalg.matrix_rank``:
    ``S.max() * max(m, n) * eps`` with ``eps`` the machine epsilon of the dtype of the singular values
    (float64 for integers and lists, float32 for float32 input) — see :func:`default_tolerance`.
    A given ``tol`` is absolute.

    Accepts nested lists, NumPy arrays, SymPy matrices and torch tensors on any device (the SVD runs
    on the tensor's device; float16/bfloat16 are computed in float32). Unlike NumPy it scales the matrix
    by a power of two first, so huge entries (1e308) do not overflow the singular values.
    Raises ``TypeError``/``ValueError`` for anything that is not a finite 2-D real matrix.
    """
    tol = None if tol is None else _check_tol(tol)
    s, e, eps, shape = _svd_scaled(M)
    if s.max() == 0:
        return 0
    if tol is None:
        threshold = s.max() * max(shape) * s.dtype.type(eps)
    else:
        try:
            threshold = math.ldexp(tol, -e)  # tol in the units of the scaled singular values
        except OverflowError:
            return 0
    return int(np.count_nonzero(s > threshold))


# --------------------------------------------------------------------------- exact arithmetic


def _to_fraction(x: Any, where: str) -> Fraction:
    if isinstance(x, Fraction):
        return x
    if isinstance(x, (int, np.integer)):
        return Fraction(int(x))
    if isinstance(x, (float, np.floating)):
        return Fraction(*x.as_integer_ratio())  # the float's exact binary value: 0.1 is not 1/10
    if isinstance(x, Decimal):
        return Fraction(x)
    if isinstance(x, sympy.Basic):
        if x.is_Rational:
            return Fraction(int(x.p), int(x.q))
        if x.is_Float:
            r = sympy.Rational(x)
            return Fraction(int(r.p), int(r.q))
        if x.is_rational:
            r = sympy.nsimplify(x, rational=True)
            if r.is_Rational and r == x:
                return Fraction(int(r.p), int(r.q))
        raise TypeError(f"M{where} is {x}, which is not a rational number: exact_rank and row_echelon work in "
                        "rational arithmetic. Use sympy.Matrix(M).rank() for symbolic entries like sqrt(2), "
                        "or numeric_rank(M) for a floating-point answer.")
    if isinstance(x, numbers.Rational):
        return Fraction(int(x.numerator), int(x.denominator))
    raise TypeError(f"M{where} is {x!r} (a {type(x).__name__}); exact arithmetic needs ints, Fractions, floats "
                    "or SymPy rationals.")


def to_fractions(M: Any) -> list[list[Fraction]]:
    """``M`` (shape ``(m, n)``) as a list of ``m`` rows of exact ``Fraction`` s.

    Floats become the rational number they store *exactly*: ``0.1`` becomes
    ``3602879701896397/36028797018963968``, not ``1/10``. Torch tensors are read on the CPU.
    """
    arr = validate_matrix(M, "M")
    if is_torch_tensor(arr):
        t = arr.detach().cpu()
        if t.dtype.is_floating_point and t.dtype.itemsize < 4:
            t = t.float()  # float16/bfloat16 -> float32 is exact
        arr = t.numpy()
    return [[_to_fraction(arr[i, j], f"[{i}, {j}]") for j in range(arr.shape[1])] for i in range(arr.shape[0])]


def _fmt_coef(c: Fraction) -> str:
    """``2``, ``(-1)``, ``(1/3)``, ``(-2/3)``: parentheses unless a positive whole number."""
    return str(c.numerator) if c.denominator == 1 and c > 0 else f"({c})"


def _rational(c: Fraction) -> sympy.Rational:
    return sympy.Rational(c.numerator, c.denominator)


def _check_rows(op: "RowOp", M: sympy.MatrixBase, *rows: int) -> None:
    for r in rows:
        if not 0 <= r < M.rows:
            raise ValueError(f"step {op} uses row R{r + 1}, but the matrix has only {M.rows} rows.")


class RowOp:
    """One elementary row operation. ``str(op)`` is its readable form, ``op.apply(M)`` performs it on a
    SymPy matrix (returning a new one) and ``op.elementary(m)`` is the ``m×m`` matrix ``E`` with
    ``E * M == op.apply(M)``: every row operation is a multiplication on the left by an invertible matrix,
    which is why row operations never change the rank."""

    def apply(self, M: Any) -> sympy.ImmutableMatrix:  # pragma: no cover - overridden
        raise NotImplementedError

    def elementary(self, m: int) -> sympy.ImmutableMatrix:
        """The ``m×m`` elementary matrix of this operation."""
        return self.apply(sympy.eye(m))

    def _key(self) -> tuple:  # pragma: no cover - overridden
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowOp) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"parse_step({str(self)!r})"


@dataclass(frozen=True, eq=False, repr=False)
class Swap(RowOp):
    """Swap rows ``i`` and ``j`` (0-based): ``R{i+1} <-> R{j+1}``."""

    i: int
    j: int

    def __str__(self) -> str:
        return f"R{self.i + 1} <-> R{self.j + 1}"

    def _key(self) -> tuple:
        return ("swap", min(self.i, self.j), max(self.i, self.j))

    def apply(self, M: Any) -> sympy.ImmutableMatrix:
        out = sympy.Matrix(M)
        _check_rows(self, out, self.i, self.j)
        out.row_swap(self.i, self.j)
        return sympy.ImmutableMatrix(out)


@dataclass(frozen=True, eq=False, repr=False)
class Scale(RowOp):
    """Multiply row ``row`` (0-based) by a non-zero ``factor``: ``R2 <- (1/3)*R2``."""

    row: int
    factor: Fraction

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", Fraction(self.factor))
        if self.factor == 0:
            raise ValueError("scaling a row by 0 is not a row operation (it cannot be undone).")

    def __str__(self) -> str:
        return f"R{self.row + 1} <- {_fmt_coef(self.factor)}*R{self.row + 1}"

    def _key(self) -> tuple:
        return ("scale", self.row, self.factor)

    def apply(self, M: Any) -> sympy.ImmutableMatrix:
        out = sympy.Matrix(M)
        _check_rows(self, out, self.row)
        out[self.row, :] = _rational(self.factor) * out[self.row, :]
        return sympy.ImmutableMatrix(out)


@dataclass(frozen=True, eq=False, repr=False)
class AddMultiple(RowOp):
    """Add ``factor`` times row ``source`` to row ``target`` (0-based): ``R2 <- R2 - 2*R1``."""

    target: int
    source: int
    factor: Fraction

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", Fraction(self.factor))
        if self.target == self.source:
            raise ValueError("adding a multiple of a row to itself is a scaling; use Scale instead.")

    def __str__(self) -> str:
        sign = "-" if self.factor < 0 else "+"
        mag = abs(self.factor)
        term = f"R{self.source + 1}" if mag == 1 else f"{_fmt_coef(mag)}*R{self.source + 1}"
        return f"R{self.target + 1} <- R{self.target + 1} {sign} {term}"

    def _key(self) -> tuple:
        return ("add", self.target, self.source, self.factor)

    def apply(self, M: Any) -> sympy.ImmutableMatrix:
        out = sympy.Matrix(M)
        _check_rows(self, out, self.target, self.source)
        out[self.target, :] = out[self.target, :] + _rational(self.factor) * out[self.source, :]
        return sympy.ImmutableMatrix(out)


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"  # 2, 2.0, 0.5, .5
_TERM = re.compile(rf"([+-]?)(?:\(([+-]?{_NUMBER}(?:/{_NUMBER})?)\)|({_NUMBER}(?:/{_NUMBER})?))?\*?R(\d+)(?:/({_NUMBER}))?")


def _exact_number(text: str, where: str) -> Fraction:
    """``"2"``, ``"0.5"``, ``"1/3"``, ``"-1.5/2"`` as an exact Fraction (decimals as written: 0.1 is 1/10)."""
    numerator, _, denominator = text.partition("/")
    value, divisor = Fraction(numerator), Fraction(denominator or 1)
    if divisor == 0:
        raise ValueError(f"{where!r} divides by 0.")
    return value / divisor


def parse_step(text: str) -> RowOp:
    """Read a row operation written by hand: ``"R2 <- R2 - 2*R1"``, ``"R1 <-> R3"``, ``"R2 <- (1/3)*R2"``.

    Forgiving about spaces, ``*``, parentheses, ``r``/``R``, the arrows ``<-``, ``←``, ``=``, ``<->``, ``↔``,
    the textbook arrow pointing the other way (``R2 - 2R1 -> R2``, ``→``) and the order of terms
    (``R2 <- -2R1 + R2``), ``R_2`` for ``R2``; ``R2 <- R2/3`` is a scaling. Multipliers may be whole numbers,
    fractions or decimals, read exactly as written (``0.5`` is ``1/2``, ``2.0`` is ``2``). Raises ``ValueError``
    with a hint for anything that is not one elementary row operation.
    """
    if not isinstance(text, str):
        raise TypeError(f"a row operation is a string such as 'R2 <- R2 - 2*R1', not {type(text).__name__}.")
    s = re.sub(r"[\s_]+", "", text).replace("r", "R").replace("−", "-")  # "R_2" is R2
    s = s.replace("↔", "<->").replace("<=>", "<->").replace("←", "<-").replace(":=", "<-").replace("·", "*")
    s = s.replace("×", "*").replace("→", "->")
    if "->" in s and "<->" not in s and s.count("->") == 1:  # "R2 - 2R1 -> R2": the target on the right
        expression, target_row = s.split("->")
        s = f"{target_row}<-{expression}"
    hint = "Write it like 'R2 <- R2 - 2*R1', 'R1 <-> R3' or 'R2 <- (1/3)*R2' (rows count from 1)."
    swap = re.fullmatch(r"R(\d+)<->R(\d+)", s)
    if swap:
        i, j = (int(g) - 1 for g in swap.groups())
        if min(i, j) < 0:
            raise ValueError(f"{text!r}: rows are numbered from R1.")
        if i == j:
            raise ValueError(f"{text!r} swaps a row with itself, which does nothing. {hint}")
        return Swap(i, j)
    parts = re.split(r"<-|=", s)
    if len(parts) != 2 or not re.fullmatch(r"R\d+", parts[0]):
        raise ValueError(f"cannot read {text!r} as a row operation. {hint}")
    target = int(parts[0][1:]) - 1
    rhs, pos, terms = parts[1], 0, {}
    while pos < len(rhs):
        m = _TERM.match(rhs, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read {rhs[pos:]!r} in {text!r}. {hint}")
        sign, paren, plain, row, divisor = m.groups()
        if pos > 0 and not sign:
            raise ValueError(f"terms in {text!r} must be joined by + or -. {hint}")
        coef = _exact_number(paren or plain or "1", text) * (-1 if sign == "-" else 1)
        if divisor:
            coef *= _exact_number(f"1/{divisor}", text)
        terms[int(row) - 1] = terms.get(int(row) - 1, Fraction(0)) + coef
        pos = m.end()
    if target < 0 or min(terms, default=0) < 0:
        raise ValueError(f"{text!r}: rows are numbered from R1.")
    terms = {k: v for k, v in terms.items() if v != 0}
    if set(terms) == {target}:
        if terms[target] == 1:
            raise ValueError(f"{text!r} leaves the row as it is. {hint}")
        return Scale(target, terms[target])
    others = set(terms) - {target}
    if len(others) == 1 and terms.get(target) == 1:
        (source,) = others
        return AddMultiple(target, source, terms[source])
    if len(others) == 1 and target in terms:
        raise ValueError(f"{text!r} scales R{target + 1} and adds another row in one go; an elementary row "
                         "operation does one thing. Add the multiple first (R2 <- R2 + c*R1), then scale.")
    raise ValueError(f"{text!r} is not one elementary row operation (swap two rows, scale one row by a non-zero "
                     f"number, or add a multiple of one row to another). {hint}")


def _as_steps(steps: Iterable[RowOp | str]) -> list[RowOp]:
    return [s if isinstance(s, RowOp) else parse_step(s) for s in steps]


def apply_steps(M: Any, steps: Iterable[RowOp | str]) -> sympy.ImmutableMatrix:
    """Apply row operations (``RowOp`` objects or their text) to ``M`` in exact arithmetic, in order."""
    out = sympy.ImmutableMatrix([[_rational(x) for x in row] for row in to_fractions(M)])
    for step in _as_steps(steps):
        out = step.apply(out)
    return out


def format_matrix(M: Any) -> str:
    """A small matrix as aligned text with exact fractions, one row per line (``[ 1  -1/2  0 ]``)."""
    rows = [[str(x) for x in row] for row in to_fractions(M)]
    width = max(len(x) for row in rows for x in row)
    return "\n".join("[ " + "  ".join(x.rjust(width) for x in row) + " ]" for row in rows)


@dataclass(frozen=True, repr=False)
class EchelonForm:
    """The result of :func:`row_echelon` for an ``(m, n)`` matrix.

    - ``matrix``: the echelon form, an ``(m, n)`` SymPy ``ImmutableMatrix`` of exact Rationals
      (``sympy.Matrix(...)`` gives an editable copy, ``.tolist()`` a list of rows).
    - ``pivots``: the pivot columns, 0-based, in increasing order.
    - ``rank``: the number of pivots.
    - ``steps``: the row operations, in order; ``str(step)`` reads like ``R2 <- R2 - 2*R1``.
    - ``original``: the input as an exact SymPy matrix; ``replay()`` applies the steps to it.
    """

    original: sympy.ImmutableMatrix
    matrix: sympy.ImmutableMatrix
    pivots: tuple[int, ...]
    steps: tuple[RowOp, ...]
    reduced: bool

    @property
    def rank(self) -> int:
        return len(self.pivots)

    def replay(self, upto: int | None = None) -> sympy.ImmutableMatrix:
        """The matrix after the first ``upto`` steps (all of them by default): ``replay() == matrix``."""
        out = self.original
        for step in self.steps[:upto]:
            out = step.apply(out)
        return out

    def __repr__(self) -> str:
        kind = "RREF" if self.reduced else "REF"
        return (f"EchelonForm({kind}, shape={self.matrix.shape}, rank={self.rank}, pivots={self.pivots}, "
                f"{len(self.steps)} steps)")


def _eliminate(rows: list[list[Fraction]], reduced: bool) -> tuple[list[int], list[RowOp]]:
    """Gaussian (or Gauss–Jordan) elimination in place on Fraction rows; returns pivots and steps."""
    m, n = len(rows), len(rows[0])
    pivots: list[int] = []
    steps: list[RowOp] = []
    r = 0
    for c in range(n):  # forward phase: zeros below each pivot
        if r == m:
            break
        p = next((i for i in range(r, m) if rows[i][c] != 0), None)
        if p is None:
            continue  # no pivot in this column
        if p != r:
            rows[r], rows[p] = rows[p], rows[r]
            steps.append(Swap(r, p))
        for i in range(r + 1, m):
            if rows[i][c] != 0:
                f = rows[i][c] / rows[r][c]
                rows[i] = [a - f * b for a, b in zip(rows[i], rows[r])]
                steps.append(AddMultiple(i, r, -f))
        pivots.append(c)
        r += 1
    if reduced:  # backward phase: pivots to 1, zeros above each pivot, last pivot first
        for k in reversed(range(len(pivots))):
            c = pivots[k]
            if rows[k][c] != 1:
                f = 1 / rows[k][c]
                rows[k] = [a * f for a in rows[k]]
                steps.append(Scale(k, f))
            for i in range(k):
                if rows[i][c] != 0:
                    f = rows[i][c]
                    rows[i] = [a - f * b for a, b in zip(rows[i], rows[k])]
                    steps.append(AddMultiple(i, k, -f))
    return pivots, steps


def row_echelon(M: Any, reduced: bool = False) -> EchelonForm:
    """Row-reduce ``M`` (shape ``(m, n)``) in exact rational arithmetic, recording every step.

    The forward phase takes the columns left to right; in each it uses the first row (at or below the
    current one) with a non-zero entry as pivot row, swaps it up if needed, and subtracts multiples of it
    from the rows below. That gives a row echelon form (REF, not unique in general: SymPy's
    ``echelon_form`` may differ, with the same pivots). ``reduced=True`` continues (Gauss–Jordan): each
    pivot row is scaled to make the pivot 1 and multiples of it are subtracted from the rows above, which
    gives the *reduced* row echelon form — unique, and equal to SymPy's ``Matrix.rref()`` for exact input
    (integers, fractions). For floats the two can differ: SymPy computes with the rounded floats, this function
    with their exact binary values (``[[0.15, -0.35], [-0.27, 0.63]]``: SymPy finds one pivot, this two).

    Entries are converted exactly (see :func:`to_fractions`; floats keep their exact binary value).
    Returns an :class:`EchelonForm`; raises ``TypeError``/``ValueError`` for input that is not a finite
    2-D matrix of rational numbers.
    """
    if not isinstance(reduced, (bool, np.bool_)):
        raise TypeError(f"reduced must be True or False, not {reduced!r}.")
    rows = to_fractions(M)
    original = sympy.ImmutableMatrix([[_rational(x) for x in row] for row in rows])
    pivots, steps = _eliminate(rows, bool(reduced))
    matrix = sympy.ImmutableMatrix([[_rational(x) for x in row] for row in rows])
    return EchelonForm(original, matrix, tuple(pivots), tuple(steps), bool(reduced))


def exact_rank(M: Any) -> int:
    """Exact rank of ``M`` (shape ``(m, n)``): the number of pivots of Gaussian elimination in rational
    arithmetic — no rounding, no tolerance.

    Accepts ints, ``fractions.Fraction``, ``decimal.Decimal``, SymPy rationals and floats; **floats are
    converted exactly** to the rational number they store (``0.1`` is ``3602879701896397 / 2**55``), so
    the answer is the rank of the numbers in memory, rounding errors included. For measured or computed
    floating-point data :func:`numeric_rank` is usually the meaningful question.
    """
    rows = to_fractions(M)
    pivots, _ = _eliminate(rows, reduced=False)
    return len(pivots)

