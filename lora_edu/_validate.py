"""Input checks shared by ``lora_edu``'s linear-algebra modules (rank, low-rank approximation).

One question, asked once: *is this a 2-D matrix of real numbers?* If not, the caller gets a
``TypeError`` (wrong kind of object or entry) or a ``ValueError`` (right kind, unusable value)
whose message names the argument, the problem and the fix — never a NumPy/SymPy/torch
internal error.

- :func:`validate_matrix` — the check itself. Returns a torch tensor unchanged (same device and
  dtype) and everything else as a 2-D NumPy array: numeric dtype when the input was numeric, object
  dtype holding the original entries (``int``, ``Fraction``, SymPy numbers, ...) otherwise.
- :func:`as_float_matrix` — the same check, then a floating-point NumPy array (or torch tensor).

Accepted inputs: nested lists/tuples of rows, NumPy arrays, torch tensors (any device), SymPy
matrices, and anything else with ``__array__``. Accepted entries: ``int``, ``float``,
``fractions.Fraction``, ``decimal.Decimal``, NumPy integers and floats, real SymPy numbers.
Rejected: booleans (rank over the reals is not rank over GF(2): convert to int explicitly),
complex numbers, text, ``None``, symbols, NaN and infinity.
"""
from __future__ import annotations

import math
import numbers
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["validate_matrix", "as_float_matrix", "is_torch_tensor"]

_KINDS = ("a list of rows, a NumPy array, a torch tensor or a SymPy Matrix")


def is_torch_tensor(x: Any) -> bool:
    """True for a ``torch.Tensor``, without importing torch when it is not needed."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach") and hasattr(x, "dtype")


def _is_sympy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "sympy"


def _shape_words(shape: tuple[int, ...]) -> str:
    dims = len(shape)
    return f"{dims} dimension{'s' if dims != 1 else ''} (shape {shape})"


def _not_2d(name: str, shape: tuple[int, ...]) -> ValueError:
    if len(shape) == 0:
        fix = "wrap a single number as [[x]] if you really mean a 1×1 matrix"
    elif len(shape) == 1:
        fix = (f"write one row as [[a, b, c]] (or {name}.reshape(1, -1)), "
               f"one column as [[a], [b], [c]] (or {name}.reshape(-1, 1))")
    else:
        fix = f"pass one matrix at a time, e.g. {name}[0]"
    return ValueError(f"{name} must be a 2-D matrix, but it has {_shape_words(shape)}: {fix}.")


def _empty(name: str, shape: tuple[int, ...]) -> ValueError:
    return ValueError(f"{name} is empty (shape {shape}): a matrix needs at least one row and one column.")


def _bad_entry(name: str, where: str, x: Any) -> TypeError | ValueError:
    """The error for one entry that is not a usable real number (``None`` if it is fine)."""
    what = f"{name}{where} is {x!r} (a {type(x).__name__})"
    if isinstance(x, (bool, np.bool_)):
        return TypeError(f"{what}: booleans are not accepted, because rank here is over the real numbers. "
                         f"If 0/1 is what you mean, convert first, e.g. np.asarray({name}, dtype=int).")
    if isinstance(x, (complex, np.complexfloating)):
        return TypeError(f"{what}: complex entries are not supported; the course works with real matrices "
                         "(pass the real part, e.g. np.real(...), if that is what you mean).")
    if isinstance(x, (str, bytes)):
        return TypeError(f"{what}: entries must be numbers, not text. Convert them first, e.g. float('2.5').")
    if x is None:
        return TypeError(f"{what}: entries must be numbers. Fill in the missing value.")
    if isinstance(x, (list, tuple, np.ndarray)):
        return ValueError(f"{what}: an entry is itself a sequence, so {name} has more than 2 dimensions "
                          "or rows nested too deeply. Pass a plain list of rows of numbers.")
    return TypeError(f"{what}: entries must be real numbers (int, float, Fraction or a SymPy number).")


def _check_entry(name: str, where: str, x: Any) -> None:
    """Raise if one Python/SymPy entry is not a finite real number."""
    if isinstance(x, (bool, np.bool_)):
        raise _bad_entry(name, where, x)
    if isinstance(x, (numbers.Integral, Fraction)):
        return
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x):
            raise _non_finite(name, where, x)
        return
    if isinstance(x, Decimal):
        if not x.is_finite():
            raise _non_finite(name, where, x)
        return
    if _is_sympy(x):
        if getattr(x, "free_symbols", None):
            raise TypeError(f"{name}{where} is the expression {x} with the symbol(s) "
                            f"{sorted(map(str, x.free_symbols))}: the rank of a symbolic matrix depends on "
                            "their values. Substitute numbers first, e.g. M.subs(x, 2).")
        if getattr(x, "is_number", False):
            if x.is_finite is not True:  # oo, -oo, zoo, nan
                raise _non_finite(name, where, x)
            if x.is_real is not True:
                raise _bad_entry(name, where, complex(x))
            return
    raise _bad_entry(name, where, x)


def _non_finite(name: str, where: str, x: Any) -> ValueError:
    return ValueError(f"{name}{where} is {x}: NaN and infinite entries have no rank. "
                      f"Remove or replace them first (e.g. np.nan_to_num({name}) or a masked copy).")


def _from_rows(M: list | tuple, name: str) -> np.ndarray:
    """Nested lists/tuples -> 2-D object array, with clear errors for ragged or deep nesting."""
    rows = list(M)
    if not rows:
        raise _empty(name, (0,))
    is_row = [isinstance(r, (list, tuple, np.ndarray)) for r in rows]
    if not any(is_row):
        raise _not_2d(name, (len(rows),))
    if not all(is_row):
        i = is_row.index(False)
        raise ValueError(f"{name} mixes rows and single numbers (element {i} is {rows[i]!r}, not a row): "
                         "every element of the outer list must be a row of the same length.")
    lengths = [len(r) for r in rows]
    if len(set(lengths)) > 1:
        i = next(k for k, n in enumerate(lengths) if n != lengths[0])
        raise ValueError(f"{name} is ragged: row 0 has {lengths[0]} entries but row {i} has {lengths[i]}. "
                         "Every row must have the same number of entries.")
    if lengths[0] == 0:
        raise _empty(name, (len(rows), 0))
    out = np.empty((len(rows), lengths[0]), dtype=object)
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            out[i, j] = x
    return out


def _check_torch(M: Any, name: str) -> Any:
    shape = tuple(M.shape)
    if len(shape) != 2:
        raise _not_2d(name, shape)
    if 0 in shape:
        raise _empty(name, shape)
    if M.dtype.is_complex:
        raise TypeError(f"{name} is a complex tensor ({M.dtype}); the course works with real matrices "
                        f"(use {name}.real if that is what you mean).")
    if str(M.dtype) == "torch.bool":
        raise TypeError(f"{name} is a boolean tensor: rank here is over the real numbers. "
                        f"If 0/1 is what you mean, convert first with {name}.int() or {name}.float().")
    if M.dtype.is_floating_point:
        finite = M.detach().isfinite()
        if not bool(finite.all()):
            i, j = (int(k) for k in (~finite).nonzero()[0])
            raise _non_finite(name, f"[{i}, {j}]", float(M[i, j]))
    return M


def validate_matrix(M: Any, name: str = "M") -> Any:
    """Check that ``M`` is a non-empty 2-D matrix of finite real numbers.

    Returns a torch tensor unchanged (same device and dtype); anything else as an ``(m, n)`` NumPy
    array — numeric when the input was numeric, ``dtype=object`` (original entries kept, e.g. ``int``,
    ``Fraction``, SymPy ``Rational``) when it was a list or a SymPy matrix.

    Raises ``TypeError`` for something that is not a matrix or an entry that is not a real number,
    ``ValueError`` for a matrix that is not 2-D, empty, ragged, or holds NaN/inf.
    """
    if is_torch_tensor(M):
        return _check_torch(M, name)
    if isinstance(M, np.ndarray):
        arr = M
    elif isinstance(M, (list, tuple)):
        arr = _from_rows(M, name)
    elif _is_sympy(M) and hasattr(M, "shape") and hasattr(M, "tolist"):
        shape = tuple(M.shape)
        if 0 in shape:
            raise _empty(name, shape)
        arr = _from_rows(M.tolist(), name)
    elif isinstance(M, (str, bytes, dict, set)) or M is None or not hasattr(M, "__array__"):
        if isinstance(M, (numbers.Number, np.generic)):
            raise _not_2d(name, ())
        raise TypeError(f"{name} must be a matrix ({_KINDS}), not a {type(M).__name__}.")
    else:
        arr = np.asarray(M)
    if arr.ndim != 2:
        raise _not_2d(name, arr.shape)
    if arr.size == 0:
        raise _empty(name, arr.shape)
    kind = arr.dtype.kind
    if kind in "iu":
        return arr
    if kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            i, j = np.argwhere(~finite)[0]
            raise _non_finite(name, f"[{i}, {j}]", arr[i, j])
        return arr
    if kind == "O":
        for (i, j), x in np.ndenumerate(arr):
            _check_entry(name, f"[{i}, {j}]", x)
        return arr
    if kind == "b":
        raise _bad_entry(name, "[0, 0]", bool(arr[0, 0]))
    if kind == "c":
        raise _bad_entry(name, "[0, 0]", complex(arr[0, 0]))
    raise TypeError(f"{name} has dtype {arr.dtype}, which is not numeric: entries must be real numbers "
                    f"(convert first, e.g. np.asarray({name}, dtype=float)).")


def _short(x: Any) -> str:
    text = str(x)
    return text if len(text) <= 20 else f"{text[:12]}…({len(text)} characters)"


def as_float_matrix(M: Any, name: str = "M", keep_torch: bool = True) -> Any:
    """:func:`validate_matrix`, then floating point.

    NumPy float arrays keep their dtype (float16/32/64); integers and Python/SymPy entries become
    float64. A torch tensor comes back unchanged when ``keep_torch`` (the default), else as a
    NumPy array on the CPU (bfloat16, which NumPy lacks, becomes float32).
    Raises ``ValueError`` when an exact entry (a huge int or Fraction) does not fit in a float64.
    """
    arr = validate_matrix(M, name)
    if is_torch_tensor(arr):
        if keep_torch:
            return arr
        t = arr.detach().cpu()
        if not t.dtype.is_floating_point:
            t = t.double()
        elif str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    if arr.dtype.kind == "f":
        return arr
    out = np.empty(arr.shape, dtype=np.float64)
    for (i, j), x in np.ndenumerate(arr):
        try:
            out[i, j] = float(x)
        except OverflowError:
            raise ValueError(f"{name}[{i}, {j}] = {_short(x)} is too large for floating point (above ~1.8e308); "
                             "use exact arithmetic (lora_edu.rank.exact_rank) or rescale the matrix.") from None
    if not np.isfinite(out).all():
        i, j = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(f"{name}[{i}, {j}] = {_short(arr[i, j])} is too large for floating point (above ~1.8e308); "
                         "use exact arithmetic (lora_edu.rank.exact_rank) or rescale the matrix.")
    return out
