"""Feedback for the course's exercises.

An exercise's test cell calls a check function. A check either prints a short
``Correct`` line or raises :class:`Feedback` (an ``AssertionError``, so nbgrader and
pytest count it as a failed test) with a message that says *what* is wrong and what to
try — a wrong shape, an answer off by a transpose, a forgotten scaling — rather than a
bare "assertion failed".

This module holds the generic checks; each chapter's specific checks live in a
submodule (``lora_edu.checks.welcome``, ...), all built from these helpers.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np


class Feedback(AssertionError):
    """A failed exercise check, with a message meant for the learner."""


WIDTH = 110  # characters per printed line: JupyterLab breaks longer output lines mid-word
_last_printed: tuple[object, str] | None = None


def _cell_id() -> object:
    """Which notebook cell is running (IPython's execution count); None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else shell.execution_count


def passed(message: str) -> None:
    """Print the success line every check ends with, wrapped at ``WIDTH`` characters.

    A test cell that checks a second time (an instructor's hidden test) and gets the very same line
    prints it once: inside one notebook cell, a repeat of the previous line is left out.
    """
    global _last_printed
    text = textwrap.fill(f"✅ Correct: {message}", width=WIDTH, subsequent_indent="   ",
                         break_long_words=False, break_on_hyphens=False)
    cell = _cell_id()
    if cell is not None and _last_printed == (cell, text):
        return
    _last_printed = (cell, text)
    print(text)


def require_answer(value: Any, name: str) -> None:
    """Fail with a friendly message while the learner's answer is still missing."""
    if value is None or value is Ellipsis:
        raise Feedback(f"`{name}` has no answer yet: replace the `None` (or the "
                       "`raise NotImplementedError()`) in the exercise cell with your answer and run it again.")


def as_array(value: Any, name: str) -> np.ndarray:
    """Turn a learner's answer (list, NumPy array, torch tensor, SymPy matrix) into a float array."""
    require_answer(value, name)
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise Feedback(f"`{name}` should be a matrix of numbers (a NumPy array, a torch tensor or a list "
                       f"of rows), but it is a {type(value).__name__} that cannot be read as one ({exc}).") from None
    return arr


def check_shape(value: Any, expected: tuple[int, ...], name: str) -> np.ndarray:
    """Check the shape of an array answer; recognise a transposed answer and say so."""
    arr = as_array(value, name)
    expected = tuple(expected)
    if arr.shape == expected:
        return arr
    if arr.ndim == 2 and arr.shape == expected[::-1]:
        raise Feedback(f"`{name}` has shape {arr.shape} but should have shape {expected}: "
                       "it looks transposed (rows and columns swapped). Check the order of your matmul "
                       "or whether you need a `.T`.")
    raise Feedback(f"`{name}` has shape {arr.shape} but should have shape {expected}.")


def check_matrix(value: Any, expected: Any, name: str, rtol: float = 1e-6, atol: float = 1e-8,
                 hint: str = "") -> np.ndarray:
    """Compare a matrix answer with the expected one: shape (transpose-aware), then values.

    When the shape is right but values differ, also recognise the two most common slips:
    the transposed matrix (for square answers) and a result that is off by a constant factor
    (a forgotten or doubled scaling).
    """
    exp = np.asarray(expected, dtype=float)
    arr = check_shape(value, exp.shape, name)
    if not np.all(np.isfinite(arr)):
        raise Feedback(f"`{name}` contains NaN or infinity; look for a division by zero or an overflow.")
    if np.allclose(arr, exp, rtol=rtol, atol=atol):
        return arr
    extra = f" {hint}" if hint else ""
    if arr.ndim == 2 and arr.shape[0] == arr.shape[1] and np.allclose(arr, exp.T, rtol=rtol, atol=atol):
        raise Feedback(f"`{name}` equals the transpose of the expected matrix.{extra}")
    factor = _constant_factor(arr, exp)
    if factor is not None:
        raise Feedback(f"`{name}` is the expected matrix times {factor:.4g}: a scaling factor is missing "
                       f"or applied twice.{extra}")
    worst = float(np.max(np.abs(arr - exp)))
    raise Feedback(f"`{name}` has the right shape {exp.shape} but wrong values "
                   f"(largest difference {worst:.3g}).{extra}")


def _constant_factor(arr: np.ndarray, exp: np.ndarray) -> float | None:
    mask = np.abs(exp) > 1e-12
    if not mask.any() or np.any(np.abs(arr[~mask]) > 1e-9):
        return None
    ratios = arr[mask] / exp[mask]
    c = float(np.median(ratios))
    if c == 0 or math.isclose(c, 1.0, rel_tol=1e-6):
        return None
    return c if np.allclose(ratios, c, rtol=1e-6, atol=1e-9) else None


def check_integer(value: Any, expected: int, name: str, hint: str = "") -> int:
    """Check a whole-number answer (a rank, a parameter count, an index)."""
    require_answer(value, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise Feedback(f"`{name}` should be a whole number (int), not {type(value).__name__} {value!r}.")
    value = int(value)
    if value != expected:
        direction = "too large" if value > expected else "too small"
        extra = f" {hint}" if hint else ""
        raise Feedback(f"`{name}` = {value} is {direction}.{extra}")
    return value


def check_choice(value: Any, expected: Any, name: str, options: dict[Any, str] | None = None) -> Any:
    """Check a multiple-choice answer; ``options`` maps each wrong choice to an explanation."""
    require_answer(value, name)
    if options is not None and value not in options and value != expected:
        raise Feedback(f"`{name}` = {value!r} is not one of the choices {sorted(map(repr, options))}.")
    if value != expected:
        why = (options or {}).get(value, "")
        raise Feedback(f"`{name}` = {value!r} is not right. {why}".rstrip())
    return value
