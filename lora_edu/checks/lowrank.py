"""Checks for chapters 03 (SVD and low-rank approximation) and 04 (low-rank factorization).

Each check runs the learner's function on a few small cases (or compares a value), and when the answer
is wrong, tries the usual slips — a transposed factor, a forgotten square, an off-by-one ``k``, the
singular values left out or used twice — and names the one that matches.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from lora_edu.checks import (
    Feedback, as_array, as_integer, check_choice, check_integer, check_shape, exercise, passed, require_answer,
)

# --------------------------------------------------------------------------- helpers


def _require_function(fn: Any, name: str, signature: str) -> None:
    require_answer(fn, name)
    if not callable(fn):
        raise Feedback(f"`{name}` should be a function: def {signature}: ...")


def _call(fn: Callable, name: str, *args: Any, hint: str = "") -> Any:
    """Call the learner's function; turn a NumPy shape error into feedback (NotImplementedError passes)."""
    try:
        return fn(*args)
    except (ValueError, IndexError, TypeError) as exc:
        extra = f" {hint}" if hint else ""
        raise Feedback(f"Calling `{name}` raised {type(exc).__name__}: {exc}.{extra}") from None


def _int_or_none(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (for looking up a hint), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return None


def _as_number(value: Any, name: str) -> float:
    require_answer(value, name)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise Feedback(f"`{name}` should be a number, not {type(value).__name__} {value!r}.") from None
    if arr.size != 1:
        raise Feedback(f"`{name}` should be a single number, but it has shape {arr.shape}.")
    return float(arr.reshape(()))


def _close(a: float, b: float, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def _diagnose(got: list[Any], cases: list[tuple], candidates: dict[str, Callable], same: Callable) -> None:
    """Raise the message of the first wrong formula that reproduces every one of the learner's outputs."""
    for message, formula in candidates.items():
        if all(same(g, formula(*case)) for g, case in zip(got, cases)):
            raise Feedback(message)


def _svd_case(rng: np.random.Generator, m: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    M = rng.standard_normal((m, n))
    return np.linalg.svd(M, full_matrices=False)


# =========================================================================== chapter 03


@exercise
def check_svd_reconstruction(fn: Callable, seed: int = 0) -> None:
    """``fn(U, S, Vh)`` should rebuild ``M = U @ diag(S) @ Vh`` from NumPy's thin SVD."""
    name = "reconstruct"
    _require_function(fn, name, "reconstruct(U, S, Vh)")
    rng = np.random.default_rng(seed)
    for m, n in [(5, 3), (3, 5), (4, 4)]:
        U, S, Vh = _svd_case(rng, m, n)
        M = (U * S) @ Vh
        got = _call(fn, name, U.copy(), S.copy(), Vh.copy(),
                    hint="S is a vector of singular values: turn it into a matrix with np.diag(S) (or scale the "
                         "columns of U with U * S) before multiplying.")
        arr = check_shape(got, M.shape, f"reconstruct(U, S, Vh) for a {m}×{n} matrix")
        if np.allclose(arr, M, atol=1e-10):
            continue
        slips = {
            "Vh from np.linalg.svd is already Vᵀ (that is what the h stands for): use it as it is, no `.T`.":
                U @ np.diag(S) @ Vh.T,
            "The singular values are missing: U @ Vh only rotates; put np.diag(S) between U and Vh.": U @ Vh,
            "You used S² instead of S: each singular value appears once, in np.diag(S).": (U * S**2) @ Vh,
        }
        for message, wrong in slips.items():
            if wrong.shape == arr.shape and np.allclose(arr, wrong, atol=1e-10):
                raise Feedback(message)
        worst = float(np.abs(arr - M).max())
        raise Feedback(f"For a {m}×{n} matrix your reconstruction is off by up to {worst:.3g}. "
                       "Expected U @ np.diag(S) @ Vh.")
    passed("U @ diag(S) @ Vh gives back the matrix — rotate, stretch, rotate.")


def _spectrum_matrix(rng: np.random.Generator, s: list[float]) -> np.ndarray:
    """A square matrix Q1 diag(s) Q2ᵀ with exactly these singular values (random orthogonal Q1, Q2)."""
    n = len(s)
    Q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    Q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q1 * np.asarray(s)) @ Q2.T


def _numpy_rank(M: np.ndarray, tol: float | None) -> int:
    s = np.linalg.svd(M, compute_uv=False)
    if tol is None:
        tol = s.max() * max(M.shape) * np.finfo(M.dtype).eps
    return int(np.sum(s > tol))


def _count(M: np.ndarray, tol: float) -> int:
    return int(np.sum(np.linalg.svd(M, compute_uv=False) > tol))


def _smax(M: np.ndarray) -> float:
    return float(np.linalg.svd(M, compute_uv=False).max())


def _eps(M: np.ndarray) -> float:
    return float(np.finfo(M.dtype).eps)


# Wrong tolerances learners write, each with the message that names it; the cases of check_numeric_rank
# separate every one of them from NumPy's rule and from each other (tests/test_checks_lowrank.py checks that).
_RANK_SLIPS: list[tuple[str, Callable[[np.ndarray, Any], int]]] = [
    ("With tol=None you count every nonzero singular value (S > 0), but rounding leaves noise of about "
     "S.max() · eps instead of exact zeros: use NumPy's default tolerance S.max() * max(m, n) * eps.",
     lambda M, tol: _count(M, 0.0 if tol is None else tol)),
    ("Your default tolerance is S.max() * eps: the size factor is missing. NumPy's default is S.max() * "
     "max(m, n) * eps (for the 200×3 matrix with σ = 1, 1, 1e-14 that is 4.4e-14, so 1e-14 does not count).",
     lambda M, tol: _count(M, _smax(M) * _eps(M) if tol is None else tol)),
    ("Your default tolerance is max(m, n) * eps without S.max(), so it does not scale with the matrix: for "
     "diag(3e-20, 1e-20) it is 4.4e-16, above both singular values. Multiply by S.max().",
     lambda M, tol: _count(M, max(M.shape) * _eps(M) if tol is None else tol)),
    ("Your default tolerance uses min(m, n); NumPy's is S.max() * max(m, n) * eps (for a 200×3 matrix the "
     "factor is 200, not 3).",
     lambda M, tol: _count(M, _smax(M) * min(M.shape) * _eps(M) if tol is None else tol)),
    ("Your default tolerance uses m + n; NumPy's is S.max() * max(m, n) * eps (for a 100×100 matrix the "
     "factor is 100, not 200).",
     lambda M, tol: _count(M, _smax(M) * sum(M.shape) * _eps(M) if tol is None else tol)),
    ("Use the eps of the matrix's own dtype, np.finfo(M.dtype).eps: for float32 it is 1.2e-7, so for the "
     "10×10 float32 matrix the tolerance is 10 · 1.2e-7 ≈ 1.2e-6 and 5e-7 does not count.",
     lambda M, tol: _count(M, _smax(M) * max(M.shape) * np.finfo(np.float64).eps if tol is None else tol)),
    ("A fixed relative tolerance such as 1e-12 · S.max() is not NumPy's default: S.max() * max(m, n) * eps "
     "is 2.2e-14 for a 100×100 matrix with σ₁ = 1, so its singular values of 3e-14 count.",
     lambda M, tol: _count(M, 1e-12 * _smax(M) if tol is None else tol)),
    ("When the caller gives tol, use it: with tol=1e-4 only 1 and 1e-3 of diag(1, 1e-3, 1e-6) are above it.",
     lambda M, tol: _numpy_rank(M, None)),
    ("A tol the caller gives is an absolute threshold: count S > tol as it is, without multiplying it by "
     "S.max() (diag(100, 1, 1e-3) with tol=0.5 has rank 2).",
     lambda M, tol: _numpy_rank(M, None if tol is None else tol * _smax(M))),
]


def _numeric_rank_cases() -> list[tuple[np.ndarray, float | None, str]]:
    """(matrix, tol, description): the seed's matrix, tiny and float32 ones, sizes that separate max(m, n)
    from min(m, n) and m + n, and given (absolute) tolerances."""
    rng = np.random.default_rng(0)
    tall = rng.standard_normal((200, 3))
    tall = np.linalg.qr(tall)[0] * np.array([1.0, 1.0, 1e-14])   # orthonormal columns scaled: σ = 1, 1, 1e-14
    return [
        (np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 6.0, 9.0]]), None,
         "the seed's rank-1 matrix (rows 1, 2 and 3 times (1, 2, 3))"),
        (rng.standard_normal((8, 3)) @ rng.standard_normal((3, 6)), None,
         "an 8×6 product of an 8×3 and a 3×6 matrix"),
        (np.diag([1.0, 1e-3, 1e-6]), 1e-4, "diag(1, 1e-3, 1e-6) with tol=1e-4"),
        (np.diag([1.0, 1e-3, 1e-6]), None, "diag(1, 1e-3, 1e-6) with the default tolerance"),
        (np.diag([3e-20, 1e-20]), None, "diag(3e-20, 1e-20) with the default tolerance"),
        (_spectrum_matrix(rng, [1.0] * 50 + [3e-14] * 50), None,
         "a 100×100 matrix with 50 singular values 1 and 50 of 3e-14, default tolerance"),
        (np.diag([1.0, 0.5, 5e-7, 0, 0, 0, 0, 0, 0, 0]).astype(np.float32), None,
         "a float32 10×10 diag(1, 0.5, 5e-7, 0, ...), default tolerance"),
        (tall, None, "a 200×3 matrix with singular values 1, 1, 1e-14, default tolerance"),
        (np.diag([100.0, 1.0, 1e-3]), 0.5, "diag(100, 1, 1e-3) with tol=0.5"),
    ]


@exercise
def check_numeric_rank(fn: Callable) -> None:
    """``fn(M, tol=None)`` should count the singular values above ``tol`` (NumPy's default when None)."""
    name = "my_numeric_rank"
    _require_function(fn, name, "my_numeric_rank(M, tol=None)")
    cases = _numeric_rank_cases()
    got = []
    for M, tol, what in cases:
        answer = _call(fn, name, M.copy(), tol)
        require_answer(answer, f"{name}(...) for {what}")
        got.append(as_integer(answer, f"{name}(...) for {what}"))
    expected = [_numpy_rank(M, tol) for M, tol, _ in cases]
    if got == expected:
        passed("you count the singular values above the tolerance, exactly as np.linalg.matrix_rank does.")
        return
    for message, slip in _RANK_SLIPS:
        if got == [slip(M.copy(), tol) for M, tol, _ in cases]:
            raise Feedback(message)
    (M, tol, what), g, e = next((c, g, e) for c, g, e in zip(cases, got, expected) if g != e)
    rule = (f"with tol={tol!r} given, count the singular values S > {tol!r}" if tol is not None else
            f"NumPy's default tolerance is S.max() * max(m, n) * eps = {_smax(M) * max(M.shape) * _eps(M):.2g} "
            f"here, and {e} singular value{'s' if e != 1 else ''} exceed{'s' if e == 1 else ''} it")
    check_integer(g, e, f"{name}(...) for {what}", hint=f"For this matrix {rule}.")


def _tail_fro(S: np.ndarray, k: int) -> float:
    return float(np.sqrt(np.sum(np.asarray(S, float)[k:] ** 2)))


@exercise
def check_frobenius_tail(fn: Callable) -> None:
    """``fn(S, k)`` should return ``sqrt(σ_{k+1}² + ... + σ_p²)`` = ``||M - M_k||_F``."""
    name = "frobenius_error"
    _require_function(fn, name, "frobenius_error(S, k)")
    cases = [(np.array([5.0, 3.0, 2.0, 1.0, 0.5]), 2), (np.array([5.0, 3.0, 2.0, 1.0, 0.5]), 1),
             (np.array([4.0, 4.0, 1.0]), 1), (np.array([6.0, 2.0, 2.0, 2.0]), 3)]
    got = [_as_number(_call(fn, name, S.copy(), k), f"{name}(S, {k})") for S, k in cases]
    if all(_close(g, _tail_fro(S, k)) for g, (S, k) in zip(got, cases)):
        S, k = np.array([2.0, 1.0]), 2
        last = _as_number(_call(fn, name, S, k), f"{name}(S, 2)")
        if not _close(last, 0.0):
            raise Feedback(f"With k equal to the number of singular values nothing is dropped, so the error is 0, "
                           f"but your function returns {last:.4g}.")
        passed("the best rank-k approximation misses exactly the tail of the spectrum: √(σ²_{k+1} + … + σ²_p).")
        return
    candidates = {
        "You added the singular values themselves: square each one first, then take the square root of the sum "
        "(did you forget a square?).": lambda S, k: float(np.sum(S[k:])),
        "That is the squared error σ²_{k+1} + … + σ²_p: take its square root to get the Frobenius norm.":
            lambda S, k: float(np.sum(S[k:] ** 2)),
        "That is the spectral-norm error σ_{k+1}; the Frobenius error adds up *all* the dropped σ².":
            lambda S, k: float(S[k]),
        "You summed the singular values you *keep*, S[:k]; the error comes from the ones you drop, S[k:].":
            lambda S, k: _tail_fro(S[:k], 0),
        "Off by one: the dropped singular values are σ_{k+1}, …, which is S[k:] in Python (indices start at 0); "
        "you started one later.": lambda S, k: _tail_fro(S, k + 1),
        "Off by one: the dropped singular values are S[k:] (Python counts from 0); you included σ_k too.":
            lambda S, k: _tail_fro(S, k - 1),
    }
    _diagnose(got, cases, candidates, _close)
    S, k = cases[0]
    raise Feedback(f"{name}(S, {k}) for S = {S.tolist()} returned {got[0]:.4g}, expected {_tail_fro(S, k):.4g} "
                   "= √(σ²_{k+1} + … + σ²_p).")


def _largest_k(m: int, n: int, fraction: float, per_k: int) -> int:
    """The largest k with k · per_k <= fraction · m · n (exact integer arithmetic for the usual fractions)."""
    budget = fraction * m * n
    k = int(budget // per_k)
    while (k + 1) * per_k <= budget * (1 + 1e-12):
        k += 1
    while k > 0 and k * per_k > budget * (1 + 1e-12):
        k -= 1
    return k


@exercise
def check_storage_budget(value: Any, m: int, n: int, fraction: float = 0.1) -> None:
    """The largest k whose rank-k copy of an ``m × n`` image stores at most ``fraction`` of its m·n numbers.

    Two ways of storing the copy are right: U_k, the k singular values and V_k (``k (m + n + 1)`` numbers), or
    the singular values folded into one factor, ``U_k Σ_k`` and ``V_k`` (``k (m + n)``, as chapter 04's
    ``B = U_k Σ_k``). Both answers pass; for most sizes they are the same number.
    """
    name = "k_max"
    require_answer(value, name)
    with_s, folded = _largest_k(m, n, fraction, m + n + 1), _largest_k(m, n, fraction, m + n)
    budget = fraction * m * n
    got = as_integer(value, name)
    if got in (with_s, folded):
        stored = got * (m + n + 1)
        note = "" if with_s == folded else (
            f" (k = {with_s} if you store the k singular values separately, k = {folded} if you fold them into "
            "U_k: both are right)")
        passed(f"k = {got}: {stored:,} numbers, {100 * stored / (m * n):.1f}% of the {m * n:,} of the image"
               f"{note}.")
        return
    slips = {
        with_s + 1: f"k = {with_s + 1} stores {(with_s + 1) * (m + n + 1):,} numbers, more than {fraction:g} · m · n "
                    f"= {budget:,.0f}: round down, not up.",
        int(m * n // (m + n + 1)): "That is the break-even k, where the copy costs as much as the whole image; "
                                   f"the budget here is {fraction:g} of it.",
        int(budget): f"That is the budget itself, {fraction:g} · m · n numbers; divide it by what one more rank costs "
                     "(U_k gets m numbers, V_k n, and one singular value).",
        int(100 * fraction * m * n // (m + n + 1)): f"Write the fraction as {fraction:g}, not as a percentage.",
    }
    slips.pop(with_s, None)
    slips.pop(folded, None)
    check_integer(got, with_s, name, hint=slips.get(got, "A rank-k copy stores k (m + n + 1) numbers: U_k (m·k), "
                                                         "the k singular values and V_k (n·k)."))


def _k_for_energy(S: np.ndarray, fraction: float) -> int:
    e = np.cumsum(np.asarray(S, float) ** 2)
    return int(np.searchsorted(e / e[-1], fraction - 1e-12) + 1)


# Spectra whose energy, computed as np.cumsum(S**2) / np.sum(S**2), ends a hair below 1.0: the cumulative sum
# adds one term at a time and np.sum adds in pairs, so the two roundings differ. There `energy >= 1.0` is never
# true and np.argmax(...) returns 0 (the answer would be k = 1). The right answer is len(S).
_ENERGY_BELOW_ONE = [np.linspace(1.0, 0.1, 10), np.arange(1, 21) ** -1.5, np.linspace(1.0, 0.1, 40)]


@exercise
def check_k_for_energy(fn: Callable) -> None:
    """``fn(S, fraction)``: the smallest k with ``(σ_1² + … + σ_k²) / Σ σ² >= fraction``."""
    name = "k_for_energy"
    _require_function(fn, name, "k_for_energy(S, fraction)")
    cases = [(np.array([4.0, 2.0, 1.0, 1.0]), 0.9), (np.array([4.0, 2.0, 1.0, 1.0]), 0.7),
             (np.array([1.0, 1.0, 1.0, 1.0]), 0.5), (np.array([10.0, 1.0, 0.5, 0.1]), 0.99),
             (np.array([3.0, 2.0, 1.0]), 1.0)]
    got = [_k_answer(fn, name, S, fraction) for S, fraction in cases]
    if not all(g == _k_for_energy(S, f) for g, (S, f) in zip(got, cases)):
        _diagnose_k(got, cases, name)
    for S in _ENERGY_BELOW_ONE:
        g = _k_answer(fn, name, S, 1.0)
        if g == len(S) + 1:
            e = np.cumsum(S**2) / np.sum(S**2)
            raise Feedback(f"{name}(S, 1.0) for {len(S)} singular values returned {g}, one more than there are. "
                           f"Rounding: np.cumsum(S**2) / np.sum(S**2) ends at {float(e[-1])!r}, not 1.0, so "
                           f"np.searchsorted(energy, 1.0) finds no entry >= 1.0 and returns len(S) = {len(S)}; "
                           "adding 1 goes past the end. Divide by the last cumulative sum instead (energy = c / c[-1], "
                           "whose last entry is exactly 1.0), or cap k at len(S).")
        if g != len(S):
            e = np.cumsum(S**2) / np.sum(S**2)
            raise Feedback(f"{name}(S, 1.0) for {len(S)} singular values returned {g}, but all {len(S)} are needed "
                           f"for all of the energy. Rounding: np.cumsum(S**2) / np.sum(S**2) ends at {float(e[-1])!r}, not "
                           "1.0, so `energy >= 1.0` is never true and np.argmax of an all-False array is 0. Divide by "
                           "the last cumulative sum instead (energy = c / c[-1], whose last entry is exactly 1.0), "
                           "or fall back to len(S) when no entry reaches the fraction.")
    passed("k is the first place where the cumulative energy of σ² reaches the fraction (even at 1.0).")


def _k_answer(fn: Callable, name: str, S: np.ndarray, fraction: float) -> int:
    g = _call(fn, name, S.copy(), fraction)
    require_answer(g, f"{name}(S, {fraction})")
    if isinstance(g, bool) or not isinstance(g, (int, np.integer)):
        if isinstance(g, (float, np.floating)) and float(g).is_integer():
            return int(g)
        raise Feedback(f"`{name}` should return a whole number k (an int), not {type(g).__name__} {g!r}.")
    return int(g)


def _diagnose_k(got: list[int], cases: list[tuple], name: str) -> None:
    def no_square(S, f):
        c = np.cumsum(S) / np.sum(S)
        return int(np.searchsorted(c, f - 1e-12) + 1)

    def strict(S, f):
        e = np.cumsum(S**2) / np.sum(S**2)
        return int(np.searchsorted(e, f + 1e-12, side="right") + 1)

    candidates = {
        "Energy is measured with σ², not σ: square the singular values before the cumulative sum "
        "(did you forget a square?).": no_square,
        "Off by one: that looks like the 0-based position of the first value that reaches the fraction; "
        "k counts singular values, so add 1.": lambda S, f: _k_for_energy(S, f) - 1,
    }
    below_one = [(g, c) for g, c in zip(got, cases) if c[1] < 1]
    _diagnose([g for g, _ in below_one], [c for _, c in below_one], candidates, lambda a, b: a == b)
    if all(g == strict(S, f) for g, (S, f) in below_one):
        raise Feedback("Use >= (reaching the fraction is enough): for S = [1, 1, 1, 1] and 0.5, k = 2 already keeps "
                       "exactly half of the energy.")
    for g, (S, f) in zip(got, cases):
        if g != _k_for_energy(S, f):
            raise Feedback(f"{name}(S={S.tolist()}, fraction={f}) returned {g}, expected {_k_for_energy(S, f)}: "
                           "the smallest k with (σ₁² + … + σ_k²) / (σ₁² + … + σ_p²) >= fraction.")


@exercise
def check_range_finder(fn: Callable, seed: int = 0) -> None:
    """``fn(M, ell, rng)``: an ``(m, ell)`` matrix Q with orthonormal columns that captures M's top range."""
    name = "range_finder"
    _require_function(fn, name, "range_finder(M, ell, rng)")
    rng = np.random.default_rng(seed)
    m, n, rank, ell = 60, 40, 4, 6
    M = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    given = np.random.default_rng(seed + 1)
    untouched = given.bit_generator.state
    got = _call(fn, name, M.copy(), ell, given,
                hint=f"M is ({m}, {n}), so the Gaussian test matrix Omega must be (n, ell) = ({n}, {ell}) for "
                     "M @ Omega to work.")
    if isinstance(got, (tuple, list)) and len(got) == 2:
        raise Feedback("Your function returned a pair — np.linalg.qr returns (Q, R); return only Q.")
    arr = as_array(got, f"{name}(M, ell, rng)")
    if arr.shape == (ell, ell):
        raise Feedback(f"Your function returned a ({ell}, {ell}) matrix — that looks like R from the QR "
                       "factorisation. np.linalg.qr returns (Q, R); keep Q.")
    arr = check_shape(arr, (m, ell), f"{name}(M, ell, rng) for a {m}×{n} M and ell = {ell}")
    gram = arr.T @ arr
    if not np.allclose(gram, np.eye(ell), atol=1e-8):
        raise Feedback("The columns of your Q are not orthonormal (Q.T @ Q is not the identity). The sketch "
                       "Y = M @ Omega spans the right space, but you still need an orthonormal basis of it: "
                       "Q, _ = np.linalg.qr(Y).")
    residual = np.linalg.norm(M - arr @ (arr.T @ M)) / np.linalg.norm(M)
    if residual > 1e-8:
        raise Feedback(f"Q has orthonormal columns but misses part of M's column space (relative error "
                       f"{residual:.2g} of M - Q Qᵀ M). Sketch the columns: Y = M @ Omega with Omega of shape "
                       "(n, ell), then Q from the QR of Y.")
    if given.bit_generator.state == untouched:
        raise Feedback("Q is right, but your function never drew from `rng`: the range finder sketches M with a "
                       "random Ω = rng.standard_normal((n, ell)) — that sketch is the point (it costs m·n·ell, not a "
                       "full QR of M), and drawing from the rng you are given keeps the result reproducible.")
    passed(f"{ell} random combinations of the columns of a rank-{rank} matrix capture it exactly "
           "(‖M − QQᵀM‖ / ‖M‖ < 1e-8).")


# =========================================================================== chapter 04


@exercise
def check_lora_param_count(value: Any, d: int, k: int, r: int) -> None:
    """Trainable parameters of ``B (d, r)`` and ``A (r, k)``: ``r (d + k)``."""
    name = "lora_params"
    require_answer(value, name)
    expected = r * (d + k)
    slips = {
        d * k * r: "d·k·r would be r full matrices; B is d×r and A is r×k, so count d·r + r·k.",
        d * r: f"That is B alone ({d}×{r}); add A ({r}×{k}).",
        k * r: f"That is A alone ({r}×{k}); add B ({d}×{r}).",
        d * k + r * (d + k): "You added the frozen weight W₀ too; only B and A are trained.",
        d * k: "That is the full matrix W, what full fine-tuning trains.",
    }
    got = check_integer(value, expected, name, hint=slips.get(_int_or_none(value), ""))
    passed(f"B and A hold {got:,} numbers, {d * k / got:.1f}× fewer than the {d * k:,} of W.")


@exercise
def check_product_rank(value: Any, B: Any, A: Any) -> None:
    """rank(B @ A) for the given factors (r = B.shape[1])."""
    name = "rank_BA"
    require_answer(value, name)
    B, A = np.asarray(B, float), np.asarray(A, float)
    r = B.shape[1]
    expected = int(np.linalg.matrix_rank(B @ A))
    hints = {}
    if r != expected:
        hints[r] = (f"rank(BA) <= r = {r} is only an upper bound. Look at A: is each of its rows independent of "
                    "the others? rank(BA) <= min(rank B, rank A).")
    shape_min = min(B.shape[0], A.shape[1])
    hints.setdefault(shape_min, f"{shape_min} is min(d, k), the rank of a generic d×k matrix; every column of "
                                f"BA is B times a column of A, so it lies in the span of B's {r} columns.")
    as_int = _int_or_none(value)
    hint = hints.get(as_int, "")
    if as_int is not None and as_int > r:
        hint = hint or f"rank(BA) can never exceed r = {r}, the inner dimension."
    check_integer(value, expected, name, hint=hint)
    why = "less, because the factors are rank deficient" if expected < r else "here exactly r"
    passed(f"rank(BA) = {expected}: at most r = {r}, {why}.")


@exercise
def check_factor_from_svd(fn: Callable, seed: int = 0, shape: tuple[int, int] = (7, 5), r: int = 2) -> None:
    """``fn(M, r)`` -> ``(B, A)`` with ``B (m, r)``, ``A (r, n)`` and ``B @ A`` the best rank-r approximation."""
    name = "factor_from_svd"
    _require_function(fn, name, "factor_from_svd(M, r)")
    rng = np.random.default_rng(seed)
    m, n = shape
    M = rng.standard_normal((m, n))
    U, S, Vh = np.linalg.svd(M, full_matrices=False)
    best = (U[:, :r] * S[:r]) @ Vh[:r]
    got = _call(fn, name, M.copy(), r,
                hint="(If NumPy could not broadcast: a vector s of r singular values, shape (r,), scales the "
                     "*columns* of a matrix, as in U[:, :r] * s; to scale the *rows* of Vh[:r] give it a column "
                     "shape, s[:, None] * Vh[:r], or use np.diag(s) @ Vh[:r].)")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Feedback(f"`{name}` should return two matrices, `return B, A`, not {type(got).__name__}.")
    B, A = as_array(got[0], "B"), as_array(got[1], "A")
    if B.shape == (r, n) and A.shape == (m, r):
        raise Feedback(f"B has shape {B.shape} and A {A.shape}: you returned them in the wrong order. "
                       f"B is the tall factor (m, r) = {(m, r)}, A the wide one (r, n) = {(r, n)}; return B, A.")
    if B.ndim == 2 and A.ndim == 2 and B.shape[0] == m and A.shape[1] == n and B.shape[1] == A.shape[0] != r:
        raise Feedback(f"Your factors have inner dimension {B.shape[1]}, not r = {r}: keep the first r columns "
                       "of U and the first r rows of Vh.")
    check_shape(B, (m, r), "B")
    check_shape(A, (r, n), "A")
    prod = B @ A
    if np.allclose(prod, best, atol=1e-9):
        passed("B @ A is the best rank-r approximation (and B G, G⁻¹ A would be just as good: "
               "the factors are not unique, their product is).")
        return
    Ur, Sr, Vhr = U[:, :r], S[:r], Vh[:r]
    slips = {
        "The singular values are missing: B @ A = U_r @ Vh_r. Put S_r into one of the factors (e.g. B = U_r * S_r) "
        "or split it as √S_r into both.": Ur @ Vhr,
        "The singular values appear twice: B @ A = U_r diag(S_r)² Vh_r. Put S_r (or √S_r on each side) in once.":
            (Ur * Sr**2) @ Vhr,
    }
    for message, wrong in slips.items():
        if np.allclose(prod, wrong, atol=1e-9):
            raise Feedback(message)
    if Vh.shape[0] == n:  # Vh is square (n <= m), so Vh.T[:r] has the shape of Vh[:r]: a silent slip
        for split in (np.ones(r), np.sqrt(Sr), Sr):  # S_r all in A, halved, or all in B
            if np.allclose(prod, (Ur * split) @ ((Sr / split)[:, None] * Vh.T[:r]), atol=1e-9):
                raise Feedback("Vh from np.linalg.svd is already Vᵀ: its first r *rows* are the top right "
                               "singular vectors, so build A from Vh[:r], with no .T (Vh.T[:r] takes rows of V).")
    worst = float(np.abs(prod - best).max())
    raise Feedback(f"B @ A differs from the best rank-{r} approximation U_r diag(S_r) Vh_r by up to {worst:.3g}. "
                   "Did you use the *first* r singular triplets (NumPy sorts them largest first)?")


def _tail_sq(S: np.ndarray, r: int) -> float:
    return float(np.sum(np.asarray(S, float)[r:] ** 2))


@exercise
def check_optimal_loss(value: Any, S: Any, r: int) -> None:
    """The smallest ``||M - B A||_F²`` over ``B (m, r)``, ``A (r, n)``: ``σ²_{r+1} + … + σ²_p``."""
    name = "best_loss"
    S = np.asarray(S, float)
    got = _as_number(value, name)
    expected = _tail_sq(S, r)
    if _close(got, expected):
        passed(f"no B, A with r = {r} can push the loss below {expected:.4f} = σ²_{r + 1} + … + σ²_{len(S)}.")
        return
    slips = {
        "That is the Frobenius error ‖M − BA‖_F; the loss is its square (did you forget a square?).":
            math.sqrt(expected),
        "Square each singular value before adding them: the loss is σ²_{r+1} + … + σ²_p.": float(np.sum(S[r:])),
        "That is only σ²_{r+1}; the loss adds all the dropped singular values squared.":
            float(S[r] ** 2) if r < len(S) else 0.0,
        "That is the energy you *keep*, σ₁² + … + σ_r²; the loss is what is left out.": float(np.sum(S[:r] ** 2)),
        "Off by one: the dropped values are S[r:] in Python (indices start at 0).": _tail_sq(S, r + 1),
        "Off by one: S[r:] are the dropped values; you included σ_r as well.": _tail_sq(S, r - 1),
    }
    for message, wrong in slips.items():
        if _close(got, wrong) and not _close(wrong, expected):
            raise Feedback(message)
    raise Feedback(f"`{name}` = {got:.4g} is not the Eckart–Young optimum; expected σ²_{{r+1}} + … + σ²_p "
                   "for the singular values of M.")


def _smallest_r(S: np.ndarray, threshold: float) -> int:
    S = np.asarray(S, float)
    total = np.sum(S**2)
    for r in range(1, len(S) + 1):
        if math.sqrt(np.sum(S[r:] ** 2) / total) <= threshold + 1e-12:
            return r
    return len(S)


@exercise
def check_smallest_r(value: Any, S: Any, threshold: float) -> None:
    """Smallest ``r`` with ``||M - M_r||_F / ||M||_F <= threshold`` for singular values ``S``."""
    name = "smallest_r"
    S = np.asarray(S, float)
    require_answer(value, name)
    expected = _smallest_r(S, threshold)

    def first(cond):
        return next((r for r in range(1, len(S) + 1) if cond(r)), len(S))

    total = np.sum(S**2)
    slips = {  # later entries win where two slips give the same number
        expected - 1: "Off by one: r counts the singular values you keep (Python's S[r:] are the dropped ones).",
        expected + 1: "Off by one: one fewer singular value is already enough.",
    }
    slips[first(lambda r: np.sum(S[r:]) / np.sum(S) <= threshold)] = (
        "Use squares: the Frobenius error is √(σ²_{r+1} + …) and ‖M‖_F = √(σ₁² + …), not sums of σ.")
    slips[first(lambda r: np.sum(S[r:] ** 2) / total <= threshold)] = (
        "You compared the *squared* relative error with the threshold; take the square root first "
        "(error / ‖M‖_F, not error² / ‖M‖_F²).")
    slips.pop(expected, None)
    check_integer(value, expected, name, hint=slips.get(_int_or_none(value), ""))
    err = math.sqrt(np.sum(S[expected:] ** 2) / total)
    before = f"; r = {expected - 1} would not" if expected > 1 else ""
    passed(f"r = {expected} keeps the relative error at {err:.3f} <= {threshold}{before}.")


R_MEANING_OPTIONS = {
    "a": "r is the rank of ΔW, determined by the data",
    "b": "r is an upper bound on rank(ΔW) that you choose before training — a hyperparameter",
    "c": "r must equal the rank of the pretrained weight W₀",
    "d": "r must be at least the true rank of the ideal update, or training fails",
}


@exercise
def check_r_meaning(choice: Any) -> None:
    """Multiple choice: what is LoRA's r? (the seed blog post says it is "determined by" the rank)."""
    options = {
        "a": "That is the seed blog post's reading. Nothing measures a rank before training: you fix the shapes "
             "B (d, r) and A (r, k), and rank(BA) <= r follows — it can even come out lower.",
        "c": "W₀ is usually full rank (min(d, k)); LoRA's point is that the *update* can have a much smaller rank.",
        "d": "A smaller r still trains: the best it can do is the rank-r approximation of the ideal update, and "
             "the cost is exactly the tail of its spectrum (Eckart–Young).",
        "b": "",
    }
    if isinstance(choice, str):  # 'B' and 'b ' mean b
        choice = choice.strip().lower()
    check_choice(choice, "b", "r_is", options)
    passed("r fixes the shapes of B and A, so rank(ΔW) = rank(BA) <= r; you pick it like a learning rate.")
