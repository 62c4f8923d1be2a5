"""Feedback for the course's exercises.

An exercise's test cell calls a check function. A check either prints a short
``Correct`` line or raises :class:`Feedback` (an ``AssertionError``, so nbgrader and
pytest count it as a failed test) with a message that says *what* is wrong and what to
try — a wrong shape, an answer off by a transpose, a forgotten scaling — rather than a
bare "assertion failed". An exercise that has no answer yet (``None``, ``...``, or a
function that still raises ``NotImplementedError``) raises :class:`NotAnswered`, a kind
of :class:`Feedback`.

Two modes, chosen explicitly (see :func:`set_mode`):

- ``"grade"`` (the default; the instructor's notebooks, nbgrader, pytest): a check that
  fails *raises*, so an unanswered or wrong exercise scores 0 and stops a Run All.
- ``"workbook"`` (a learner's copy in ``workbook/``, whose first cell calls
  ``setup_notebook(..., workbook=True)``): a check never raises; it prints one line,
  ``✅`` right, ``❌`` wrong (with the same feedback) or ``⏳`` not answered yet, so
  *Run All* always reaches the end of the chapter. A learner's function that crashes
  inside the check (a ``TypeError``, an ``IndexError``, ...) is a wrong answer too: ``❌``
  names the exception and the lines of the learner's own code it came from.

Every public ``check_*`` function is wrapped with :func:`exercise`, which does this.

This module holds the generic checks; each chapter's specific checks live in a
submodule (``lora_edu.checks.welcome``, ...), all built from these helpers.
"""
from __future__ import annotations

import functools
import math
import numbers
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np


class Feedback(AssertionError):
    """A failed exercise check, with a message meant for the learner."""


class NotAnswered(Feedback):
    """The exercise has no answer yet (still ``None``, ``...`` or ``raise NotImplementedError()``)."""


MODES = ("grade", "workbook")
_mode = "grade"
_depth = 0  # how many wrapped checks are running (a check may call another one)
_F = TypeVar("_F", bound=Callable[..., Any])


def set_mode(mode: str) -> None:
    """Choose what a failing check does: ``"grade"`` raises (default), ``"workbook"`` prints ❌ / ⏳."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _mode = mode


def get_mode() -> str:
    """The current mode, ``"grade"`` or ``"workbook"``."""
    return _mode


def _say(symbol: str, message: str) -> None:
    print(textwrap.fill(f"{symbol} {message}", width=WIDTH, subsequent_indent="   ",
                        break_long_words=False, break_on_hyphens=False))


_CHECKS_DIR = Path(__file__).resolve().parent


def _learner_frames(error: BaseException) -> str:
    """The traceback lines of ``error`` outside ``lora_edu.checks``: where in the learner's code it happened."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not Path(f.filename).resolve().is_relative_to(_CHECKS_DIR)]
    return "".join(traceback.format_list(frames))


def exercise(check: _F) -> _F:
    """Wrap a check function so that it behaves as the current mode says.

    A learner's function that raises ``NotImplementedError`` counts as not answered. In
    ``"grade"`` mode every failure is raised (nbgrader scores it 0); in ``"workbook"`` mode
    the outermost check prints the ⏳ or ❌ line instead and returns ``None``. There, any other
    exception (a learner's function that crashes) is a wrong answer as well: ❌ names it, and
    the frames of the learner's code go to stderr, so that *Run All* still reaches the end.
    """
    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _depth
        _depth += 1
        try:
            try:
                return check(*args, **kwargs)
            except NotImplementedError:
                raise NotAnswered("Your function still raises NotImplementedError: write its body in the "
                                  "exercise cell above, run that cell, then run this one.") from None
        except Feedback as failure:
            if _mode != "workbook" or _depth > 1:
                raise
            if isinstance(failure, NotAnswered):
                _say("⏳", f"Not answered yet. {failure}")
            else:
                _say("❌", str(failure))
            return None
        except Exception as crash:  # noqa: BLE001 - in workbook mode a crash is reported, not raised
            if _mode != "workbook" or _depth > 1:
                raise
            _say("❌", f"Your answer raised {type(crash).__name__}: {crash}. Fix the exercise cell above, "
                       "run it, then run this check again.")
            where = _learner_frames(crash)
            if where:
                print("Where it happened (most recent call last):\n" + where, end="", file=sys.stderr)
            return None
        finally:
            _depth -= 1

    return wrapper  # type: ignore[return-value]


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
    """Raise :class:`NotAnswered` while the learner's answer is still ``None`` or ``...``."""
    if value is None or value is Ellipsis:
        raise NotAnswered(f"`{name}` has no answer yet (it is still {'None' if value is None else '...'}): write "
                          "your answer in the exercise cell above, run that cell, then run this one.")


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


def as_integer(value: Any, name: str) -> int:
    """A learner's whole-number answer as an ``int``, or :class:`Feedback` saying why it is not one.

    Accepts any integer type (``int``, NumPy integers, ``sympy.Integer`` — everything registered as
    ``numbers.Integral``), a real number with an integral value (``3.0``, ``sympy.Float(3)``) and a
    one-number NumPy array or torch tensor (``np.array(3)``). Rejects ``True``/``False``, ``2.5``, strings and arrays
    holding more than one number, each with a message naming ``name``.
    """
    require_answer(value, name)
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise Feedback(f"`{name}` should be one whole number, not an array of shape {value.shape}.")
        value = value.reshape(()).item()
    if isinstance(value, (bool, np.bool_)):
        raise Feedback(f"`{name}` should be a whole number (int), not the truth value {value!r}.")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        return int(float(value))
    raise Feedback(f"`{name}` should be a whole number (int), not {type(value).__name__} {value!r}.")


def check_integer(value: Any, expected: int, name: str, hint: str = "") -> int:
    """Check a whole-number answer (a rank, a parameter count, an index); see :func:`as_integer`."""
    value = as_integer(value, name)
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
