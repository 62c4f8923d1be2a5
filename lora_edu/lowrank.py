"""Low-rank approximation with the SVD (chapters 03 and 04).

- :func:`truncated_svd` — the top ``k`` singular triplets ``(U_k, S_k, Vh_k)`` of a matrix.
- :func:`best_rank_k` — the best rank-``k`` approximation ``U_k diag(S_k) Vh_k`` (Eckart–Young–Mirsky).
- :func:`eckart_young_error` — how far that best approximation is, read off the singular values alone.
- :func:`randomized_svd` — the same top ``k`` triplets from a random sketch (Halko, Martinsson and
  Tropp, 2011): much faster than a full SVD when ``k`` is small and the matrix is large.
- :func:`lowrank_params` — the number of entries in ``B (d, r)`` and ``A (r, k)``: ``r (d + k)``.
- :func:`subspace_similarity` — the LoRA paper's φ (section 7.2): how much two subspaces overlap.

Inputs: NumPy arrays, nested lists and torch tensors (on any device). Results come back in the
input's kind — a tensor on the same device with the same dtype for a tensor, a NumPy array for
everything else. Floating inputs keep their dtype (float16/bfloat16 are computed in float32 and cast
back); integers, lists and exact numbers become float64. Scalars (errors, φ) are Python floats.

Sign convention: singular vectors are only defined up to sign (``u, v`` and ``-u, -v`` give the same
product). :func:`truncated_svd` and :func:`randomized_svd` pick the sign that makes the entry of
largest magnitude in each column of ``U_k`` positive, so NumPy, torch and different machines agree.

Example::

    >>> import numpy as np
    >>> from lora_edu.lowrank import best_rank_k, eckart_young_error, truncated_svd
    >>> M = np.diag([3.0, 2.0, 1.0])
    >>> U, S, Vh = truncated_svd(M, 2)
    >>> U.shape, S, Vh.shape
    ((3, 2), array([3., 2.]), (2, 3))
    >>> float(np.linalg.norm(M - best_rank_k(M, 2))), eckart_young_error(np.array([3.0, 2.0, 1.0]), 2)
    (1.0, 1.0)
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from lora_edu._validate import as_float_matrix, is_torch_tensor

__all__ = [
    "truncated_svd", "best_rank_k", "eckart_young_error", "randomized_svd",
    "lowrank_params", "subspace_similarity",
]

# --------------------------------------------------------------------------- input checks


def _check_int(value: Any, name: str, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` as an int in ``[low, high]``; TypeError for a non-integer, ValueError out of range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            hint = f" (write {int(value)}, not {value!r})"
        else:
            hint = ""
        raise TypeError(f"{name} must be a whole number (int), not {type(value).__name__} {value!r}{hint}.")
    value = int(value)
    if value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        extra = f" {why}" if why else ""
        raise ValueError(f"{name} must be {span}, got {value}.{extra}")
    return value


def _check_rank(k: Any, shape: tuple[int, int], name: str = "k", matrix: str = "M") -> int:
    m, n = shape
    return _check_int(k, name, 1, min(m, n),
                      why=f"{matrix} has shape {(m, n)}, so it has min(m, n) = {min(m, n)} singular values "
                          f"and a rank-{name} approximation needs 1 <= {name} <= {min(m, n)}.")


def _matrix(M: Any, name: str = "M") -> Any:
    """A floating-point NumPy array or torch tensor; raises TypeError/ValueError for anything else."""
    arr = as_float_matrix(M, name, keep_torch=True)
    if is_torch_tensor(arr) and not arr.dtype.is_floating_point:
        import torch

        arr = arr.to(torch.float64)
    return arr


def _compute_dtype(M: Any) -> Any:
    """The dtype the SVD runs in: float32 for half precision (no SVD routine takes it), else M's own."""
    if is_torch_tensor(M):
        import torch

        return torch.float32 if M.dtype in (torch.float16, torch.bfloat16) else M.dtype
    return np.float32 if M.dtype == np.float16 else M.dtype


# --------------------------------------------------------------------------- SVD building blocks


def _svd(M: Any) -> tuple[Any, Any, Any]:
    """Thin SVD ``M = U diag(S) Vh`` in M's kind: U (m, p), S (p,), Vh (p, n), p = min(m, n)."""
    if is_torch_tensor(M):
        import torch

        try:
            return torch.linalg.svd(M, full_matrices=False)
        except (NotImplementedError, RuntimeError):  # e.g. a backend without an SVD (MPS): use the CPU
            U, S, Vh = torch.linalg.svd(M.cpu(), full_matrices=False)
            return U.to(M.device), S.to(M.device), Vh.to(M.device)
    return np.linalg.svd(M, full_matrices=False)


def _fix_signs(U: Any, Vh: Any) -> tuple[Any, Any]:
    """Flip each singular pair so the largest-magnitude entry of each column of U is positive."""
    if is_torch_tensor(U):
        import torch

        idx = U.abs().argmax(dim=0, keepdim=True)
        s = torch.sign(U.gather(0, idx))[0]
        s = torch.where(s == 0, torch.ones_like(s), s)
        return U * s, Vh * s[:, None]
    idx = np.argmax(np.abs(U), axis=0)
    s = np.sign(U[idx, np.arange(U.shape[1])])
    s[s == 0] = 1
    return U * s, Vh * s[:, None]


def _qr(Y: Any) -> Any:
    """An orthonormal basis Q (m, l) for the columns of Y (m, l), l <= m."""
    if is_torch_tensor(Y):
        import torch

        try:
            return torch.linalg.qr(Y, mode="reduced")[0]
        except (NotImplementedError, RuntimeError):
            return torch.linalg.qr(Y.cpu(), mode="reduced")[0].to(Y.device)
    return np.linalg.qr(Y, mode="reduced")[0]


def _t(M: Any) -> Any:
    return M.mT if is_torch_tensor(M) else M.T


# --------------------------------------------------------------------------- the public functions


def truncated_svd(M: Any, k: int) -> tuple[Any, Any, Any]:
    """The top ``k`` singular triplets of ``M``: exact, from a full (thin) SVD that is then cut to ``k``.

    That costs as much as the whole SVD, a constant (several) times ``m·n·min(m, n)``, whatever ``k`` is; for a
    large matrix and a small ``k``, :func:`randomized_svd` gets the same triplets (approximately) from
    ``2·n_iter + 2`` products with ``M`` of ``m·n·l`` multiplications each (``l = k + oversample``).

    Args:
        M: an ``(m, n)`` matrix (NumPy array, nested list, or torch tensor on any device).
        k: how many triplets, ``1 <= k <= min(m, n)``.

    Returns:
        ``(U_k, S_k, Vh_k)`` with shapes ``(m, k)``, ``(k,)``, ``(k, n)``: the columns of ``U_k`` and the
        rows of ``Vh_k`` are orthonormal, ``S_k`` holds the ``k`` largest singular values in decreasing
        order, and ``U_k @ diag(S_k) @ Vh_k`` is the best rank-``k`` approximation of ``M``
        (``Vh_k`` is already ``Vᵀ``: do not transpose it again). Same kind as ``M``: torch in, torch out
        on the same device and dtype; NumPy arrays otherwise (float64 for integer or list input).
        Signs follow the module's convention (largest-magnitude entry of each column of ``U_k`` positive).
        Gradients flow through it for torch tensors that require them.

    Raises:
        TypeError / ValueError: ``M`` is not a finite 2-D real matrix, or ``k`` is not an int in range.
    """
    M = _matrix(M, "M")
    k = _check_rank(k, tuple(M.shape))
    out_dtype, work = M.dtype, _compute_dtype(M)
    U, S, Vh = _svd(M.to(work) if is_torch_tensor(M) else M.astype(work, copy=False))
    U, Vh = _fix_signs(U[:, :k], Vh[:k])
    S = S[:k]
    if is_torch_tensor(M):
        return U.to(out_dtype), S.to(out_dtype), Vh.to(out_dtype)
    return U.astype(out_dtype, copy=False), S.astype(out_dtype, copy=False), Vh.astype(out_dtype, copy=False)


def best_rank_k(M: Any, k: int) -> Any:
    """The best rank-``k`` approximation of ``M`` (shape ``(m, n)``), in M's kind, dtype and device.

    ``U_k diag(S_k) Vh_k`` from :func:`truncated_svd`. By the Eckart–Young–Mirsky theorem no matrix of
    rank at most ``k`` is closer to ``M``, in the Frobenius norm or in the spectral norm; the distance is
    :func:`eckart_young_error` of M's singular values.
    """
    U, S, Vh = truncated_svd(M, k)
    return (U * S) @ Vh


def _singular_values(singular_values: Any) -> np.ndarray:
    """Validate a vector of singular values; returns it as a float64 NumPy array."""
    s = singular_values
    name = "singular_values"
    if is_torch_tensor(s):
        import torch

        s = s.detach().cpu()
        if s.dtype.is_complex or s.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, but its dtype is {s.dtype}.")
        s = s.double().numpy()
    elif isinstance(s, (str, bytes, dict, set)) or s is None:
        raise TypeError(f"{name} must be a 1-D vector of numbers (e.g. np.linalg.svd(M, compute_uv=False)), "
                        f"not a {type(s).__name__}.")
    try:
        arr = np.asarray(s)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D vector of numbers, not a {type(s).__name__}.") from None
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise TypeError(f"{name} must hold real numbers, but its dtype is {arr.dtype}.")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector (shape {arr.shape} given): pass the singular values, "
                         "e.g. np.linalg.svd(M, compute_uv=False), not the matrix itself.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a matrix has at least one singular value.")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity; compute them from a finite matrix.")
    if (arr < 0).any():
        raise ValueError(f"{name} must be >= 0 (singular values are lengths), got {arr[arr < 0][0]}.")
    if (np.diff(arr) > 0).any():
        raise ValueError(f"{name} must be sorted from largest to smallest, as np.linalg.svd and torch.linalg.svd "
                         "return them; sort them first, e.g. np.sort(s)[::-1].")
    return arr


def eckart_young_error(singular_values: Any, k: int, norm: str = "fro") -> float:
    """The smallest possible ``||M - X||`` over all matrices ``X`` of rank at most ``k``.

    Args:
        singular_values: all ``min(m, n)`` singular values of ``M``, largest first, as a 1-D vector
            (NumPy, list or torch), e.g. ``np.linalg.svd(M, compute_uv=False)``.
        k: the rank, ``1 <= k <= len(singular_values)``.
        norm: ``"fro"`` — the Frobenius norm, ``sqrt(σ_{k+1}² + ... + σ_p²)``;
            ``"spectral"`` (or ``2``) — the spectral norm, ``σ_{k+1}`` (0 when ``k`` is the last index).

    Returns:
        A Python float (whatever the input's kind). The Eckart–Young–Mirsky theorem says this is exactly
        the error of :func:`best_rank_k`, and that nothing of rank ``<= k`` does better.
    """
    s = _singular_values(singular_values)
    k = _check_int(k, "k", 1, s.size,
                   why=f"There are {s.size} singular values, so a rank-k approximation needs 1 <= k <= {s.size}.")
    if norm in ("fro", "frobenius"):
        tail = s[k:]
        scale = float(tail.max()) if tail.size and tail.max() > 0 else 0.0
        if scale == 0.0:
            return 0.0
        return scale * math.sqrt(float(np.sum((tail / scale) ** 2)))  # scaled: no overflow or underflow
    if norm in ("spectral", 2):
        return float(s[k]) if k < s.size else 0.0
    raise ValueError(f"norm must be 'fro' (Frobenius) or 'spectral', got {norm!r}.")


def randomized_svd(M: Any, k: int, oversample: int = 10, n_iter: int = 2, seed: int = 0
                   ) -> tuple[Any, Any, Any]:
    """Approximate top-``k`` singular triplets of ``M`` (shape ``(m, n)``) from a random sketch.

    Halko, Martinsson and Tropp (2011), algorithms 4.4 and 5.1:

    1. Multiply ``M`` by a Gaussian test matrix ``Ω`` of shape ``(n, l)``, ``l = min(k + oversample, m, n)``:
       the columns of ``Y = M Ω`` lie in M's column space and, with high probability, capture its top
       directions. Orthonormalise: ``Q = qr(Y)``, shape ``(m, l)``.
    2. ``n_iter`` power iterations ``Q ← qr(M qr(Mᵀ Q))`` sharpen ``Q`` towards the top singular vectors
       when the spectrum decays slowly (re-orthonormalising at every step keeps small directions from
       drowning in rounding error).
    3. The SVD of the small matrix ``Q.T @ M`` (shape ``(l, n)``) gives ``Ũ S Vh``; ``U = Q Ũ``.

    ``seed`` fixes ``Ω`` (drawn with NumPy's ``default_rng(seed)``, so NumPy and torch inputs, on any
    device, use the same sketch). Returns ``(U_k, S_k, Vh_k)`` with shapes ``(m, k)``, ``(k,)``, ``(k, n)``,
    in M's kind, dtype and device, with :func:`truncated_svd`'s sign convention.
    The result is exact when rank(M) <= l; otherwise close to the truncated SVD, closer with more
    ``n_iter`` or ``oversample``.

    Cost: every product with ``M`` or ``Mᵀ`` takes ``m·n·l`` multiplications, and there are ``2·n_iter + 2`` of
    them (the sketch, two per power iteration, and ``Qᵀ M``); the QRs and the small SVD add ``O((m + n)·l²)``.
    A full SVD costs a constant of several times ``m·n·min(m, n)``, so the saving is largest when
    ``l << min(m, n)`` (chapter 03 counts both for a 1500 × 600 matrix).
    """
    M = _matrix(M, "M")
    m, n = (int(x) for x in M.shape)
    k = _check_rank(k, (m, n))
    oversample = _check_int(oversample, "oversample", 0)
    n_iter = _check_int(n_iter, "n_iter", 0)
    seed = _check_int(seed, "seed", 0)
    ell = min(k + oversample, m, n)
    omega = np.random.default_rng(seed).standard_normal((n, ell))
    out_dtype, work = M.dtype, _compute_dtype(M)
    if is_torch_tensor(M):
        import torch

        A = M.to(work)
        omega = torch.from_numpy(omega).to(device=M.device, dtype=work)
    else:
        A = M.astype(work, copy=False)
        omega = omega.astype(work)
    Q = _qr(A @ omega)
    for _ in range(n_iter):
        Q = _qr(A @ _qr(_t(A) @ Q))
    Ub, S, Vh = _svd(_t(Q) @ A)
    U, Vh = _fix_signs((Q @ Ub)[:, :k], Vh[:k])
    S = S[:k]
    if is_torch_tensor(M):
        return U.to(out_dtype), S.to(out_dtype), Vh.to(out_dtype)
    return U.astype(out_dtype, copy=False), S.astype(out_dtype, copy=False), Vh.astype(out_dtype, copy=False)


def lowrank_params(d: int, k: int, r: int) -> int:
    """Entries in a rank-``r`` factorisation ``B (d, r) @ A (r, k)`` of a ``(d, k)`` matrix: ``r * (d + k)``.

    Compare with ``d * k`` for the full matrix. ``r`` must satisfy ``1 <= r <= min(d, k)``: a product
    ``B A`` never has rank above ``min(d, k)``, so a larger ``r`` only adds parameters.
    """
    d = _check_int(d, "d", 1)
    k = _check_int(k, "k", 1)
    r = _check_int(r, "r", 1, min(d, k),
                   why=f"A ({d}, {k}) matrix has rank at most min(d, k) = {min(d, k)}, so a larger r "
                       "only adds parameters.")
    return r * (d + k)


def _orthonormal(U: Any, name: str, cols: int) -> np.ndarray:
    """U[:, :cols] as a float64 NumPy array after checking that those columns are orthonormal."""
    arr = as_float_matrix(U, name, keep_torch=False)
    src_dtype = arr.dtype
    arr = arr[:, :cols].astype(np.float64)
    eps = float(np.finfo(src_dtype if src_dtype in (np.float32, np.float64) else np.float32).eps)
    tol = math.sqrt(eps)  # float64: 1.5e-8, float32: 3.5e-4 — well above an SVD's rounding
    gram = arr.T @ arr
    worst = float(np.max(np.abs(gram - np.eye(cols))))
    if worst > tol:
        raise ValueError(f"the first {cols} columns of {name} must be orthonormal (Uᵀ U = I), but Uᵀ U differs "
                         f"from the identity by up to {worst:.3g}. φ compares subspaces through orthonormal bases: "
                         f"pass singular vectors (e.g. U from truncated_svd, or Vh.T for right singular vectors) "
                         f"or orthonormalise first with np.linalg.qr({name})[0].")
    return arr


def subspace_similarity(U1: Any, U2: Any, i: int, j: int) -> float:
    """The LoRA paper's normalized subspace similarity φ (Hu et al., 2021, section 7.2).

    ``φ(U1, U2, i, j) = ||U1[:, :i]ᵀ U2[:, :j]||_F² / min(i, j)``: 1 when the span of the first ``i``
    columns of ``U1`` contains that of the first ``j`` columns of ``U2`` (or vice versa), 0 when they
    are orthogonal, always in ``[0, 1]``. It is the mean of the squared cosines of the principal angles.

    Args:
        U1: ``(d, r1)`` with orthonormal columns (at least the first ``i``), e.g. singular vectors.
        U2: ``(d, r2)`` with orthonormal columns (at least the first ``j``); same ``d``.
        i: ``1 <= i <= r1``;  j: ``1 <= j <= r2``.

    The paper compares the right singular vectors of two trained ``A`` matrices, i.e. the columns of
    ``Vh.T``. Returns a Python float. Raises ValueError when the columns used are not orthonormal.
    """
    a = as_float_matrix(U1, "U1", keep_torch=False)
    b = as_float_matrix(U2, "U2", keep_torch=False)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"U1 and U2 must have the same number of rows (the dimension of the space they live "
                         f"in), but U1 is {a.shape} and U2 is {b.shape}. Did you pass a transposed matrix "
                         "(e.g. Vh instead of Vh.T)?")
    i = _check_int(i, "i", 1, a.shape[1], why=f"U1 has {a.shape[1]} columns.")
    j = _check_int(j, "j", 1, b.shape[1], why=f"U2 has {b.shape[1]} columns.")
    a = _orthonormal(a, "U1", i)
    b = _orthonormal(b, "U2", j)
    phi = float(np.sum((a.T @ b) ** 2)) / min(i, j)
    return min(max(phi, 0.0), 1.0)  # rounding can give 1 + 1e-16
