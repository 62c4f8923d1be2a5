"""lora_edu.lowrank against NumPy's SVD, the Eckart–Young–Mirsky theorem and independent formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_edu.lowrank import (
    best_rank_k, eckart_young_error, lowrank_params, randomized_svd, subspace_similarity, truncated_svd,
)

NORMS = {"fro": "fro", "spectral": 2}  # our name -> np.linalg.norm's


def orthonormal(rng: np.random.Generator, d: int, r: int) -> np.ndarray:
    """A (d, r) matrix with orthonormal columns, uniformly random."""
    q, rr = np.linalg.qr(rng.standard_normal((d, r)))
    return q * np.sign(np.diag(rr))


def with_spectrum(rng: np.random.Generator, m: int, n: int, s: np.ndarray) -> np.ndarray:
    """A random (m, n) matrix whose singular values are exactly ``s`` (sorted, len(s) = min(m, n))."""
    p = len(s)
    return orthonormal(rng, m, p) @ np.diag(s) @ orthonormal(rng, n, p).T


def random_rank_k(rng: np.random.Generator, m: int, n: int, k: int) -> np.ndarray:
    return rng.standard_normal((m, k)) @ rng.standard_normal((k, n))


# --------------------------------------------------------------------------- truncated_svd, best_rank_k


@pytest.mark.parametrize("shape, k", [((7, 5), 1), ((7, 5), 3), ((5, 7), 5), ((6, 6), 6), ((1, 4), 1)])
def test_truncated_svd_shapes_and_values_match_numpy(shape, k):
    rng = np.random.default_rng(1)
    M = rng.standard_normal(shape)
    U, S, Vh = truncated_svd(M, k)
    m, n = shape
    assert U.shape == (m, k) and S.shape == (k,) and Vh.shape == (k, n)
    np.testing.assert_allclose(S, np.linalg.svd(M, compute_uv=False)[:k], rtol=1e-12)
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), atol=1e-12)
    # each triplet really is a singular triplet: M v = σ u and Mᵀ u = σ v
    np.testing.assert_allclose(M @ Vh.T, U * S, atol=1e-12)
    np.testing.assert_allclose(M.T @ U, Vh.T * S, atol=1e-12)


def test_sign_convention_largest_entry_of_each_u_is_positive():
    rng = np.random.default_rng(2)
    M = rng.standard_normal((8, 6))
    U, _, _ = truncated_svd(M, 4)
    U_neg, _, _ = truncated_svd(-M, 4)  # -M flips one factor of every pair: the convention must undo it
    top = U[np.argmax(np.abs(U), axis=0), np.arange(4)]
    assert (top > 0).all()
    np.testing.assert_allclose(np.abs(U_neg), np.abs(U), atol=1e-12)
    assert (U_neg[np.argmax(np.abs(U_neg), axis=0), np.arange(4)] > 0).all()


def test_best_rank_k_is_the_truncated_svd_and_has_rank_k():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((9, 6))
    u, s, vh = np.linalg.svd(M)
    for k in range(1, 7):
        expected = u[:, :k] @ np.diag(s[:k]) @ vh[:k]  # written out independently of lowrank.py
        Mk = best_rank_k(M, k)
        np.testing.assert_allclose(Mk, expected, atol=1e-12)
        assert np.linalg.matrix_rank(Mk) == k


@pytest.mark.parametrize("norm", ["fro", "spectral"])
@pytest.mark.parametrize("shape, k", [((12, 8), 1), ((12, 8), 3), ((8, 12), 7), ((10, 10), 10)])
def test_eckart_young_error_is_the_error_of_best_rank_k(norm, shape, k):
    rng = np.random.default_rng(4)
    M = rng.standard_normal(shape)
    s = np.linalg.svd(M, compute_uv=False)
    measured = np.linalg.norm(M - best_rank_k(M, k), NORMS[norm])
    assert eckart_young_error(s, k, norm) == pytest.approx(measured, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("norm", ["fro", "spectral"])
def test_no_rank_k_matrix_beats_best_rank_k(norm):
    """Eckart–Young–Mirsky: random rank-k matrices, projections and perturbed optima all do worse."""
    rng = np.random.default_rng(5)
    m, n, k = 15, 10, 3
    M = rng.standard_normal((m, n))
    best = eckart_young_error(np.linalg.svd(M, compute_uv=False), k, norm)
    U, S, Vh = truncated_svd(M, k)
    errors = []
    for _ in range(200):
        errors.append(np.linalg.norm(M - random_rank_k(rng, m, n, k), NORMS[norm]))
        Q = orthonormal(rng, m, k)  # the best approximation with a random column space
        errors.append(np.linalg.norm(M - Q @ Q.T @ M, NORMS[norm]))
        eps = 10.0 ** rng.uniform(-6, -1)  # near misses: nudge the optimal factors
        near = (U + eps * rng.standard_normal(U.shape)) @ np.diag(S) @ (Vh + eps * rng.standard_normal(Vh.shape))
        errors.append(np.linalg.norm(M - near, NORMS[norm]))
    assert min(errors) >= best * (1 - 1e-12)
    assert min(errors) < best * 1.01  # the near misses come close: the competition is real


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 9), n=st.integers(1, 9), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_eckart_young_holds_for_random_matrices(m, n, seed, data):
    k = data.draw(st.integers(1, min(m, n)))
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m, n)) * 10.0 ** rng.uniform(-3, 3)
    s = np.linalg.svd(M, compute_uv=False)
    Mk = best_rank_k(M, k)
    for norm in NORMS:
        measured = np.linalg.norm(M - Mk, NORMS[norm])
        assert eckart_young_error(s, k, norm) == pytest.approx(measured, rel=1e-9, abs=1e-12 * s[0])
        X = random_rank_k(rng, m, n, k)
        assert np.linalg.norm(M - X, NORMS[norm]) >= eckart_young_error(s, k, norm) * (1 - 1e-9)


def test_eckart_young_error_by_hand():
    s = [3.0, 2.0, 1.0]
    assert eckart_young_error(s, 1) == pytest.approx(math.sqrt(5))
    assert eckart_young_error(s, 1, "spectral") == 2.0
    assert eckart_young_error(s, 2, "fro") == pytest.approx(1.0)
    assert eckart_young_error(s, 3) == 0.0 and eckart_young_error(s, 3, "spectral") == 0.0
    assert eckart_young_error(np.array([1e200, 1e200, 1e200]), 1) == pytest.approx(math.sqrt(2) * 1e200)
    assert eckart_young_error(np.array([1e-200, 1e-200, 1e-200]), 1) == pytest.approx(math.sqrt(2) * 1e-200)
    assert eckart_young_error(torch.tensor([3.0, 2.0, 1.0]), 1) == pytest.approx(math.sqrt(5))
    assert eckart_young_error([3, 0, 0], 1) == 0.0


# --------------------------------------------------------------------------- numpy / torch, dtypes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out_same_dtype_and_matching_numpy(dtype):
    rng = np.random.default_rng(6)
    M = rng.standard_normal((10, 7))
    t = torch.tensor(M, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    U, S, Vh = truncated_svd(t, 3)
    assert all(isinstance(x, torch.Tensor) and x.dtype == dtype and x.device == t.device for x in (U, S, Vh))
    Un, Sn, Vhn = truncated_svd(M, 3)
    np.testing.assert_allclose(U.numpy(), Un, atol=tol)  # same signs too: the convention is shared
    np.testing.assert_allclose(S.numpy(), Sn, rtol=tol)
    np.testing.assert_allclose(Vh.numpy(), Vhn, atol=tol)
    Mk = best_rank_k(t, 3)
    assert isinstance(Mk, torch.Tensor) and Mk.dtype == dtype
    np.testing.assert_allclose(Mk.numpy(), best_rank_k(M, 3), atol=tol)
    Ur, Sr, Vhr = randomized_svd(t, 3, n_iter=4)
    assert all(isinstance(x, torch.Tensor) and x.dtype == dtype for x in (Ur, Sr, Vhr))
    np.testing.assert_allclose(Sr.numpy(), randomized_svd(M, 3, n_iter=4)[1], rtol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_dtypes_are_kept(dtype):
    M = np.random.default_rng(7).standard_normal((6, 5)).astype(dtype)
    for out in (*truncated_svd(M, 2), best_rank_k(M, 2), *randomized_svd(M, 2)):
        assert isinstance(out, np.ndarray) and out.dtype == dtype


def test_lists_integers_and_half_precision():
    U, S, Vh = truncated_svd([[1, 2, 3], [2, 4, 6], [3, 6, 9]], 1)  # the seed's rank-1 matrix
    assert isinstance(S, np.ndarray) and S.dtype == np.float64
    np.testing.assert_allclose((U * S) @ Vh, [[1, 2, 3], [2, 4, 6], [3, 6, 9]], atol=1e-12)
    St = truncated_svd(torch.tensor([[2, 0], [0, 1]]), 1)[1]
    assert St.dtype == torch.float64 and float(St[0]) == 2.0
    half = truncated_svd(np.diag([4.0, 1.0]).astype(np.float16), 1)
    assert half[1].dtype == np.float16 and float(half[1][0]) == 4.0
    bf = best_rank_k(torch.diag(torch.tensor([4.0, 1.0])).bfloat16(), 1)
    assert bf.dtype == torch.bfloat16 and float(bf[1, 1]) == 0.0


def test_gradients_flow_through_torch_inputs():
    M = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    best_rank_k(M, 2).pow(2).sum().backward()  # = σ1² + σ2²; its gradient is 2 M_2
    np.testing.assert_allclose(M.grad.numpy(), 2 * best_rank_k(M.detach().numpy(), 2), atol=1e-10)


@pytest.mark.gpu
def test_cuda_tensors_stay_on_the_gpu():
    M = torch.randn(64, 48, device="cuda", dtype=torch.float64)
    for out in (*truncated_svd(M, 5), best_rank_k(M, 5), *randomized_svd(M, 5)):
        assert out.device.type == "cuda" and out.dtype == torch.float64
    np.testing.assert_allclose(truncated_svd(M, 5)[1].cpu().numpy(), truncated_svd(M.cpu(), 5)[1].numpy(),
                               rtol=1e-10)
    assert math.isclose(subspace_similarity(truncated_svd(M, 5)[0], truncated_svd(M.cpu(), 5)[0], 5, 5), 1.0)


# --------------------------------------------------------------------------- randomized_svd


@pytest.mark.parametrize("shape", [(300, 200), (200, 300)])
def test_randomized_svd_recovers_a_fast_decaying_spectrum(shape):
    rng = np.random.default_rng(8)
    p = min(shape)
    s = 0.5 ** np.arange(p)  # fast decay: σ_{k+l} is tiny next to σ_k
    M = with_spectrum(rng, *shape, s)
    k = 10
    U, S, Vh = randomized_svd(M, k)
    assert U.shape == (shape[0], k) and S.shape == (k,) and Vh.shape == (k, shape[1])
    np.testing.assert_allclose(S, s[:k], rtol=1e-6)
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), atol=1e-10)
    # same vectors as the exact truncated SVD (the sign convention is shared)
    Ue, _, Vhe = truncated_svd(M, k)
    np.testing.assert_allclose(U, Ue, atol=1e-5)
    np.testing.assert_allclose(Vh, Vhe, atol=1e-5)


def test_randomized_svd_is_exact_for_low_rank_matrices():
    rng = np.random.default_rng(9)
    M = random_rank_k(rng, 120, 80, 6)  # rank 6 <= k + oversample: the sketch sees the whole range
    U, S, Vh = randomized_svd(M, 6, n_iter=0)
    np.testing.assert_allclose((U * S) @ Vh, M, atol=1e-9 * np.abs(M).max())


def test_randomized_svd_stays_near_optimal_on_a_slow_spectrum():
    rng = np.random.default_rng(10)
    s = 1.0 / np.sqrt(np.arange(1, 201))  # slow decay: the hard case for sketching
    M = with_spectrum(rng, 300, 200, s)
    k = 10
    optimum = eckart_young_error(s, k)

    def err(n_iter):
        U, S, Vh = randomized_svd(M, k, n_iter=n_iter)
        return np.linalg.norm(M - (U * S) @ Vh)

    assert optimum <= err(2) <= 1.02 * optimum
    assert err(0) > err(2)  # power iterations help exactly where the spectrum is flat
    assert err(6) <= 1.005 * optimum


def test_randomized_svd_is_seeded_and_the_seed_matters():
    rng = np.random.default_rng(11)
    M = with_spectrum(rng, 60, 40, 1.0 / np.arange(1, 41))
    a, b = randomized_svd(M, 5, n_iter=0, seed=1), randomized_svd(M, 5, n_iter=0, seed=1)
    c = randomized_svd(M, 5, n_iter=0, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.allclose(a[1], c[1], rtol=1e-9)


def test_randomized_svd_with_the_whole_sketch_is_the_full_svd():
    rng = np.random.default_rng(12)
    M = rng.standard_normal((9, 6))
    U, S, Vh = randomized_svd(M, 6, oversample=0, n_iter=0)
    np.testing.assert_allclose(S, np.linalg.svd(M, compute_uv=False), rtol=1e-10)
    np.testing.assert_allclose((U * S) @ Vh, M, atol=1e-12)


# --------------------------------------------------------------------------- lowrank_params


def test_lowrank_params_counts_the_entries_of_B_and_A():
    for d, k, r in [(3, 5, 1), (6, 4, 2), (7, 7, 7)]:
        B, A = np.zeros((d, r)), np.zeros((r, k))
        assert lowrank_params(d, k, r) == B.size + A.size
    assert lowrank_params(5000, 10000, 8) == 120_000  # the seed's example
    assert round(5000 * 10000 / lowrank_params(5000, 10000, 8), 1) == 416.7  # not "400x"
    assert [lowrank_params(5000, 10000, r) for r in (1, 2, 3)] == [15_000, 30_000, 45_000]
    assert isinstance(lowrank_params(np.int64(4), 4, 2), int)


# --------------------------------------------------------------------------- subspace_similarity


def test_phi_of_a_subspace_with_itself_is_one_in_any_basis():
    rng = np.random.default_rng(13)
    U = orthonormal(rng, 20, 6)
    R = orthonormal(rng, 6, 6)  # a rotation inside the subspace: the same subspace, another basis
    assert subspace_similarity(U, U, 6, 6) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(U, U @ R, 6, 6) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(U, U, 2, 6) == pytest.approx(1.0, abs=1e-12)  # nested: span(U[:, :2]) ⊂ span(U)
    assert subspace_similarity(U, U @ R, 2, 6) == pytest.approx(1.0, abs=1e-12)


def test_phi_of_orthogonal_subspaces_is_zero_and_a_half_overlap_is_a_half():
    eye = np.eye(6)
    assert subspace_similarity(eye[:, :3], eye[:, 3:], 3, 3) == pytest.approx(0.0, abs=1e-15)
    assert subspace_similarity(eye[:, [0, 1]], eye[:, [1, 2]], 2, 2) == pytest.approx(0.5)
    c, s = math.cos(0.3), math.sin(0.3)
    assert subspace_similarity(eye[:, [0]], (c * eye[:, 0] + s * eye[:, 1])[:, None], 1, 1) == pytest.approx(c**2)


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_phi_is_in_unit_interval_and_matches_the_projector_formula(d, seed, data):
    r1, r2 = data.draw(st.integers(1, d)), data.draw(st.integers(1, d))
    i, j = data.draw(st.integers(1, r1)), data.draw(st.integers(1, r2))
    rng = np.random.default_rng(seed)
    U1, U2 = orthonormal(rng, d, r1), orthonormal(rng, d, r2)
    phi = subspace_similarity(U1, U2, i, j)
    assert 0.0 <= phi <= 1.0
    P1, P2 = U1[:, :i] @ U1[:, :i].T, U2[:, :j] @ U2[:, :j].T  # projectors: an independent formula
    assert phi == pytest.approx(np.trace(P1 @ P2) / min(i, j), abs=1e-10)
    assert phi == pytest.approx(subspace_similarity(U2, U1, j, i), abs=1e-12)  # symmetric


def test_phi_accepts_torch_and_mixed_inputs():
    rng = np.random.default_rng(14)
    U1, U2 = orthonormal(rng, 10, 4), orthonormal(rng, 10, 3)
    expected = subspace_similarity(U1, U2, 4, 3)
    assert subspace_similarity(torch.tensor(U1), torch.tensor(U2), 4, 3) == pytest.approx(expected, abs=1e-12)
    assert subspace_similarity(torch.tensor(U1, dtype=torch.float32), U2, 4, 3) == pytest.approx(expected, abs=1e-5)
    assert isinstance(subspace_similarity(torch.tensor(U1), U2, 4, 3), float)


# --------------------------------------------------------------------------- bad input


M34 = np.arange(12.0).reshape(3, 4)


@pytest.mark.parametrize("fn", [truncated_svd, best_rank_k, randomized_svd], ids=lambda f: f.__name__)
@pytest.mark.parametrize("M, k, error, message", [
    (M34, 0, ValueError, r"k must be between 1 and 3, got 0"),
    (M34, -2, ValueError, r"between 1 and 3"),
    (M34, 4, ValueError, r"min\(m, n\) = 3"),
    (M34, 2.0, TypeError, r"whole number.*write 2"),
    (M34, 1.5, TypeError, r"whole number"),
    (M34, True, TypeError, r"whole number"),
    (M34, "2", TypeError, r"whole number"),
    (np.arange(4.0), 1, ValueError, r"2-D"),
    (np.zeros((2, 2, 2)), 1, ValueError, r"2-D"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), 1, ValueError, r"NaN"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), 1, ValueError, r"inf"),
    (torch.tensor([[1.0, float("nan")]]), 1, ValueError, r"NaN"),
    (torch.ones(2, 3, 4), 1, ValueError, r"2-D"),
    (np.zeros((0, 3)), 1, ValueError, r"empty"),
    ([[1, 2], [3]], 1, ValueError, r"ragged"),
    ("not a matrix", 1, TypeError, r"must be a matrix"),
    (np.array([[1 + 1j, 0]]), 1, TypeError, r"complex"),
])
def test_bad_matrices_and_ranks_are_refused_clearly(fn, M, k, error, message):
    with pytest.raises(error, match=message):
        fn(M, k)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"oversample": -1}, ValueError, "oversample must be at least 0"),
    ({"n_iter": -1}, ValueError, "n_iter must be at least 0"),
    ({"n_iter": 1.5}, TypeError, "n_iter must be a whole number"),
    ({"seed": -3}, ValueError, "seed must be at least 0"),
    ({"seed": None}, TypeError, "seed must be a whole number"),
])
def test_randomized_svd_refuses_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        randomized_svd(M34, 2, **kwargs)


@pytest.mark.parametrize("s, k, norm, error, message", [
    ([3.0, 2.0, 1.0], 0, "fro", ValueError, "k must be between 1 and 3"),
    ([3.0, 2.0, 1.0], 4, "fro", ValueError, "k must be between 1 and 3"),
    ([3.0, 2.0, 1.0], 1.0, "fro", TypeError, "whole number"),
    ([1.0, 2.0, 3.0], 1, "fro", ValueError, "sorted from largest to smallest"),
    ([3.0, -1.0], 1, "fro", ValueError, ">= 0"),
    ([3.0, np.nan], 1, "fro", ValueError, "NaN"),
    ([[3.0, 0.0], [0.0, 1.0]], 1, "fro", ValueError, "1-D vector.*not the matrix"),
    ([], 1, "fro", ValueError, "empty"),
    (["a", "b"], 1, "fro", TypeError, "real numbers"),
    (None, 1, "fro", TypeError, "1-D vector"),
    (torch.tensor([1 + 0j]), 1, "fro", TypeError, "real numbers"),
    ([3.0, 2.0, 1.0], 1, "nuclear", ValueError, "norm must be 'fro'"),
])
def test_eckart_young_error_refuses_bad_input(s, k, norm, error, message):
    with pytest.raises(error, match=message):
        eckart_young_error(s, k, norm)


@pytest.mark.parametrize("args, error, message", [
    ((0, 10, 1), ValueError, "d must be at least 1"),
    ((10, 0, 1), ValueError, "k must be at least 1"),
    ((5, 10, 0), ValueError, "r must be between 1 and 5"),
    ((5, 10, 6), ValueError, "rank at most min"),
    ((5.0, 10, 1), TypeError, "d must be a whole number"),
    ((5, 10, "8"), TypeError, "r must be a whole number"),
])
def test_lowrank_params_refuses_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        lowrank_params(*args)


def test_subspace_similarity_refuses_bad_input():
    rng = np.random.default_rng(15)
    U1, U2 = orthonormal(rng, 8, 3), orthonormal(rng, 8, 4)
    with pytest.raises(ValueError, match="orthonormal.*np.linalg.qr"):
        subspace_similarity(rng.standard_normal((8, 3)), U2, 2, 2)
    with pytest.raises(ValueError, match="first 2 columns of U2 must be orthonormal"):
        subspace_similarity(U1, 2 * U2, 2, 2)
    with pytest.raises(ValueError, match="i must be between 1 and 3"):
        subspace_similarity(U1, U2, 0, 2)
    with pytest.raises(ValueError, match="j must be between 1 and 4"):
        subspace_similarity(U1, U2, 1, 5)
    with pytest.raises(TypeError, match="i must be a whole number"):
        subspace_similarity(U1, U2, 1.5, 2)
    with pytest.raises(ValueError, match="same number of rows.*transposed"):
        subspace_similarity(U1, U2.T, 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        subspace_similarity(U1[:, 0], U2, 1, 1)
    with pytest.raises(ValueError, match="NaN"):
        subspace_similarity(np.full((8, 3), np.nan), U2, 1, 1)
    # only the columns that φ uses must be orthonormal
    junk = np.hstack([U1[:, :2], np.ones((8, 1))])
    assert 0.0 <= subspace_similarity(junk, U2, 2, 4) <= 1.0
