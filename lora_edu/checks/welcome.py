"""Checks for chapter 00 (welcome): the notation warm-up."""
from __future__ import annotations

from typing import Callable

import numpy as np

from lora_edu.checks import Feedback, check_matrix, exercise, passed, require_answer


def _reference(X, W0, A, B, alpha, r):
    return X @ W0.T + (alpha / r) * (X @ A.T @ B.T)


@exercise
def check_batch_forward(fn: Callable, seed: int = 0, sizes: tuple[int, int, int, int] = (5, 4, 3, 2)) -> None:
    """Check ``fn(X, W0, A, B, alpha, r)`` against ``X @ W0.T + (alpha/r) * X @ A.T @ B.T``.

    ``sizes`` = (n, k, d, r): batch, in_features, out_features, rank. All different, so that
    a transposed matrix shows up as a shape error rather than a silently wrong answer.
    """
    require_answer(fn, "lora_forward_batch")
    if not callable(fn):
        raise Feedback("`lora_forward_batch` should be a function (def lora_forward_batch(X, W0, A, B, alpha, r): ...).")
    n, k, d, r = sizes
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    W0 = rng.normal(size=(d, k))
    A = rng.normal(size=(r, k))
    B = rng.normal(size=(d, r))
    alpha = 4.0
    try:
        got = fn(X.copy(), W0.copy(), A.copy(), B.copy(), alpha, r)
    except ValueError as exc:  # numpy's "matmul: mismatch in dimension"
        raise Feedback(f"Calling your function raised ValueError: {exc}. A shape mismatch in a matmul usually "
                       "means a missing or extra `.T`: X is (n, k), W0 is (d, k), A is (r, k), B is (d, r).") from None
    expected = _reference(X, W0, A, B, alpha, r)
    base_only = X @ W0.T
    arr = np.asarray(got, dtype=float) if got is not None else None
    if arr is not None and arr.shape == expected.shape and not np.allclose(arr, expected):
        if np.allclose(arr, base_only):
            raise Feedback("Your output equals the frozen layer alone, X @ W0.T: the low-rank update is missing.")
        if np.allclose(arr, X @ W0.T + X @ A.T @ B.T):
            raise Feedback("You added X @ A.T @ B.T without the scaling alpha / r (here 4 / 2 = 2).")
        if np.allclose(arr, X @ W0.T + alpha * (X @ A.T @ B.T)):
            raise Feedback("You scaled the update by alpha, as the seed blog post does; the LoRA paper scales by "
                           "alpha / r.")
    check_matrix(got, expected, "lora_forward_batch(X, W0, A, B, alpha, r)",
                 hint="Expected X @ W0.T + (alpha / r) * X @ A.T @ B.T.")
    passed(f"for a batch of {n} input{'s' if n != 1 else ''} your layer gives the {n}×{d} output of h = W0 x + (α/r) B A x, "
           "one row per input.")
