"""Chapters 03–04 exercise checks: right answers pass, the usual slips get a message that names them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_edu.checks import Feedback, NotAnswered
from lora_edu.checks.lowrank import (
    check_factor_from_svd, check_frobenius_tail, check_k_for_energy, check_lora_param_count, check_numeric_rank,
    check_optimal_loss, check_product_rank, check_r_meaning, check_range_finder, check_smallest_r,
    check_storage_budget, check_svd_reconstruction,
)


def student_copy(*args):  # what an nbgrader student copy's function body does
    raise NotImplementedError()


def test_student_copies_fail_with_not_implemented():
    """nbgrader's student copy (body `raise NotImplementedError()`) fails the check: not answered, 0 points."""
    for check in (check_svd_reconstruction, check_numeric_rank, check_frobenius_tail, check_k_for_energy,
                  check_range_finder, check_factor_from_svd):
        with pytest.raises(NotAnswered, match="NotImplementedError"):
            check(student_copy)


@pytest.mark.parametrize("check", [check_svd_reconstruction, check_numeric_rank, check_frobenius_tail,
                                   check_k_for_energy, check_range_finder, check_factor_from_svd])
def test_function_checks_want_a_function(check):
    with pytest.raises(Feedback, match="no answer yet"):
        check(None)
    with pytest.raises(Feedback, match="should be a function"):
        check(3)


# --------------------------------------------------------------------------- chapter 03


@pytest.mark.parametrize("wrong, message", [
    (lambda U, S, Vh: U @ np.diag(S) @ Vh.T, "already Vᵀ"),
    (lambda U, S, Vh: U @ Vh, "singular values are missing"),
    (lambda U, S, Vh: U @ np.diag(S**2) @ Vh, "S² instead of S"),
    (lambda U, S, Vh: U @ S @ Vh, "np.diag"),  # S @ Vh is a vector: wrong shape
    (lambda U, S, Vh: (U @ np.diag(S) @ Vh).T, "transposed"),
    (lambda U, S, Vh: U @ np.diag(S) @ Vh + 0.1, "off by up to 0.1"),
    (lambda U, S, Vh: (U * S[:, None]) @ Vh, "np.diag"),  # broadcasting error on a non-square U
])
def test_reconstruction_check_names_the_slip(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_svd_reconstruction(wrong)


def test_reconstruction_check_passes_right_answers(capsys):
    check_svd_reconstruction(lambda U, S, Vh: U @ np.diag(S) @ Vh)
    check_svd_reconstruction(lambda U, S, Vh: (U * S) @ Vh, seed=3)
    check_svd_reconstruction(lambda U, S, Vh: torch.tensor(U) @ torch.diag(torch.tensor(S)) @ torch.tensor(Vh))
    assert capsys.readouterr().out.count("✅ Correct") == 3


def right_rank(M, tol=None):
    S = np.linalg.svd(M, compute_uv=False)
    if tol is None:
        tol = S.max() * max(M.shape) * np.finfo(M.dtype).eps
    return int(np.sum(S > tol))


def rank_with_default(default):
    """A rank function that follows NumPy except for its default tolerance ``default(M, S)``."""
    def rank(M, tol=None):
        S = np.linalg.svd(M, compute_uv=False)
        return int(np.sum(S > (default(M, S) if tol is None else tol)))
    return rank


@pytest.mark.parametrize("wrong, message", [
    (lambda M, tol=None: int(np.sum(np.linalg.svd(M, compute_uv=False) > (tol or 0))), "noise"),
    (lambda M, tol=None: min(M.shape), "too large"),
    (lambda M, tol=None: right_rank(M), "When the caller gives tol, use it"),
    (lambda M, tol=None: right_rank(M, 1e-10 if tol is None else tol), "too small"),
    (lambda M, tol=None: float(right_rank(M, tol)) + 0.5, "whole number"),
    # a relative tolerance that is not NumPy's default (it passed before the 100×100 case was added)
    (lambda M, tol=None: right_rank(M, 1e-12 * np.linalg.norm(M, 2) if tol is None else tol),
     "fixed relative tolerance such as 1e-12"),
    # float64's eps for a float32 matrix
    (lambda M, tol=None: right_rank(M, np.linalg.norm(M, 2) * max(M.shape) * 2.2e-16 if tol is None else tol),
     "eps of the matrix's own dtype"),
    # these passed before the 200×3 case and the 3e-14 spectrum were added, or got a hint about another slip
    (rank_with_default(lambda M, S: S.max() * min(M.shape) * np.finfo(M.dtype).eps), "uses min\\(m, n\\)"),
    (rank_with_default(lambda M, S: S.max() * sum(M.shape) * np.finfo(M.dtype).eps), "uses m \\+ n"),
    (rank_with_default(lambda M, S: S.max() * np.finfo(M.dtype).eps), "the size factor is missing"),
    (rank_with_default(lambda M, S: max(M.shape) * np.finfo(M.dtype).eps), "without S.max\\(\\)"),
    (lambda M, tol=None: right_rank(M, None if tol is None else tol * np.linalg.norm(M, 2)), "absolute threshold"),
])
def test_numeric_rank_check_names_the_slip(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_numeric_rank(wrong)


def test_numeric_rank_cases_separate_every_slip():
    from lora_edu.checks.lowrank import _RANK_SLIPS, _numeric_rank_cases, _numpy_rank

    cases = _numeric_rank_cases()
    right = tuple(_numpy_rank(M, tol) for M, tol, _ in cases)
    outputs = {tuple(slip(M, tol) for M, tol, _ in cases) for _, slip in _RANK_SLIPS}
    assert len(outputs) == len(_RANK_SLIPS) and right not in outputs


def test_numeric_rank_check_passes_right_answers(capsys):
    check_numeric_rank(right_rank)
    check_numeric_rank(lambda M, tol=None: int(np.linalg.matrix_rank(M, tol=tol)))
    check_numeric_rank(lambda M, tol=None: int(torch.linalg.matrix_rank(torch.tensor(M)) if tol is None
                                               else torch.linalg.matrix_rank(torch.tensor(M), atol=tol, rtol=0)))
    assert capsys.readouterr().out.count("✅ Correct") == 3


@pytest.mark.parametrize("wrong, message", [
    (lambda S, k: np.sum(S[k:]), "forget a square"),
    (lambda S, k: np.sum(S[k:] ** 2), "take its square root"),
    (lambda S, k: S[k], "spectral-norm error"),
    (lambda S, k: np.sqrt(np.sum(S[:k] ** 2)), "you \\*keep\\*"),
    (lambda S, k: np.sqrt(np.sum(S[k + 1:] ** 2)), "started one later"),
    (lambda S, k: np.sqrt(np.sum(S[k - 1:] ** 2)), "included σ_k too"),
    (lambda S, k: np.sqrt(np.sum(S[k:] ** 2)) if k < len(S) else 1.0, "error is 0"),
    (lambda S, k: 2 * np.sqrt(np.sum(S[k:] ** 2)), "expected"),
    (lambda S, k: S, "single number"),
    (lambda S, k: None, "no answer yet"),
])
def test_frobenius_tail_check_names_the_slip(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_frobenius_tail(wrong)


def test_frobenius_tail_check_passes_right_answers(capsys):
    check_frobenius_tail(lambda S, k: np.sqrt(np.sum(S[k:] ** 2)))
    check_frobenius_tail(lambda S, k: np.linalg.norm(S[k:]))
    check_frobenius_tail(lambda S, k: torch.linalg.vector_norm(torch.tensor(S[k:])))
    assert capsys.readouterr().out.count("✅ Correct") == 3


def test_storage_budget_check(capsys):
    m, n = 600, 512
    check_storage_budget(27, m, n, 0.1)                       # 27 · 1113 = 30,051 <= 30,720 < 28 · 1113
    check_storage_budget(np.int64(27), m, n, 0.1)
    assert capsys.readouterr().out.count("✅ Correct") == 2
    for wrong, message in [(28, "round down"), (276, "break-even"), (30720, "the budget itself"),
                           (2760, "not as a percentage"), (26, "too small"), (None, "no answer yet"),
                           (27.6, "whole number")]:
        with pytest.raises(Feedback, match=message):
            check_storage_budget(wrong, m, n, 0.1)


def test_storage_budget_check_accepts_singular_values_folded_into_U(capsys):
    """k(m + n): Σ folded into U_k, as chapter 04 counts B = U_k Σ_k. The old check_storage rejected that
    count ("you forgot the k singular values"); where the two conventions give different k, both pass."""
    m, n = 62, 262                                            # 0.1 · m · n = 1624.4: 4 · 325 and 5 · 324 fit
    assert 4 * (m + n + 1) <= 0.1 * m * n < 5 * (m + n + 1) and 5 * (m + n) <= 0.1 * m * n
    check_storage_budget(4, m, n, 0.1)
    check_storage_budget(5, m, n, 0.1)
    assert capsys.readouterr().out.count("both are right") == 2
    with pytest.raises(Feedback, match="too large"):
        check_storage_budget(6, m, n, 0.1)


def right_k_for_energy(S, fraction):
    c = np.cumsum(S**2)
    return int(np.argmax(c / c[-1] >= fraction) + 1)     # c / c[-1] ends at exactly 1.0


def argmax_k_for_energy(S, fraction):
    """The chapter's first model solution: wrong at fraction = 1.0 when rounding leaves energy[-1] < 1."""
    energy = np.cumsum(S**2) / np.sum(S**2)
    return int(np.argmax(energy >= fraction) + 1)


@pytest.mark.parametrize("wrong, message", [
    (lambda S, f: int(np.argmax(np.cumsum(S) / np.sum(S) >= f) + 1), "forget a square"),
    (lambda S, f: int(np.argmax(np.cumsum(S**2) / np.sum(S**2) >= f)), "0-based"),
    (lambda S, f: int(np.argmax(np.cumsum(S**2) / np.sum(S**2) > f) + 1) if f < 1 else len(S), "Use >="),
    (lambda S, f: int(np.argmax(np.cumsum(S**2) / np.sum(S**2) > f) + 1), "Use >="),   # strict, argmax at 1.0 too
    (argmax_k_for_energy, "ends at 0.9999999999999999, not 1.0"),
    (lambda S, f: len(S), "the smallest k"),
    # np.searchsorted without a guard: len(S) + 1 at fraction = 1.0 (it got the np.argmax hint before)
    (lambda S, f: int(np.searchsorted(np.cumsum(S**2) / np.sum(S**2), f)) + 1, "one more than there are"),
    (lambda S, f: 1.5, "whole number"),
    (lambda S, f: None, "no answer yet"),
])
def test_k_for_energy_check_names_the_slip(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_k_for_energy(wrong)


def test_k_for_energy_check_passes_right_answers(capsys):
    check_k_for_energy(right_k_for_energy)
    check_k_for_energy(lambda S, f: min(int(np.argmax(np.cumsum(S**2) / np.sum(S**2) >= f)) + 1
                                        if (np.cumsum(S**2) / np.sum(S**2) >= f).any() else len(S), len(S)))
    check_k_for_energy(lambda S, f: int(np.searchsorted(np.cumsum(S**2) / np.sum(S**2), f - 1e-12)) + 1)
    assert capsys.readouterr().out.count("✅ Correct") == 3


def test_k_for_energy_argmax_solution_is_wrong_in_many_random_spectra():
    """Why the check has fraction = 1.0 cases with rounding: the argmax solution fails there often."""
    rng = np.random.default_rng(0)
    spectra = [np.sort(rng.random(rng.integers(2, 60)))[::-1] for _ in range(2000)]
    wrong = sum(argmax_k_for_energy(S, 1.0) != len(S) for S in spectra)
    assert wrong > 300 and all(right_k_for_energy(S, 1.0) == len(S) for S in spectra)


def right_range_finder(M, ell, rng):
    Y = M @ rng.standard_normal((M.shape[1], ell))
    return np.linalg.qr(Y)[0]


@pytest.mark.parametrize("wrong, message", [
    (lambda M, ell, rng: M @ rng.standard_normal((M.shape[1], ell)), "not orthonormal"),
    (lambda M, ell, rng: np.linalg.qr(M @ rng.standard_normal((M.shape[1], ell)))[1], "R from the QR"),
    (lambda M, ell, rng: np.linalg.qr(M @ rng.standard_normal((M.shape[1], ell))), "return only Q"),
    (lambda M, ell, rng: np.linalg.qr(M @ rng.standard_normal((M.shape[0], ell)))[0], r"must be \(n, ell\)"),
    (lambda M, ell, rng: right_range_finder(M, ell, rng).T, "transposed"),
    (lambda M, ell, rng: np.linalg.qr(rng.standard_normal((M.shape[0], ell)))[0], "misses part of M's column space"),
    (lambda M, ell, rng: right_range_finder(M, ell - 1, rng), r"should have shape \(60, 6\)"),
])
def test_range_finder_check_names_the_slip(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_range_finder(wrong)


def test_range_finder_check_wants_the_random_sketch():
    # the first ell columns of a full QR of M also span a rank-4 M: right Q, but no sketch and no rng
    with pytest.raises(Feedback, match="never drew from `rng`"):
        check_range_finder(lambda M, ell, rng: np.linalg.qr(M)[0][:, :ell])
    with pytest.raises(Feedback, match="never drew from `rng`"):
        check_range_finder(lambda M, ell, rng: np.linalg.qr(M @ np.random.default_rng(9).standard_normal(
            (M.shape[1], ell)))[0])


def test_range_finder_check_passes_right_answers(capsys):
    check_range_finder(right_range_finder)
    check_range_finder(right_range_finder, seed=5)
    assert capsys.readouterr().out.count("✅ Correct") == 2


# --------------------------------------------------------------------------- chapter 04


def test_lora_param_count_check_names_the_slip(capsys):
    d, k, r = 5000, 10000, 8
    check_lora_param_count(120_000, d, k, r)
    assert "416.7× fewer" in capsys.readouterr().out
    for wrong, message in [(d * k * r, "r full matrices"), (d * r, "B alone"), (k * r, "A alone"),
                           (d * k + r * (d + k), "frozen weight"), (d * k, "full matrix W"),
                           (121_000, "too large"), (None, "no answer yet"), (416.7, "whole number")]:
        with pytest.raises(Feedback, match=message):
            check_lora_param_count(wrong, d, k, r)


def test_product_rank_check():
    B = np.arange(18.0).reshape(6, 3) ** 2  # rank 3
    A = np.array([[1.0, 0, 1, 2, 0, 1, 1], [0, 1, 1, 0, 2, 1, 3], [1, 1, 2, 2, 2, 2, 4]])  # row 3 = row 1 + row 2
    assert np.linalg.matrix_rank(B) == 3 and np.linalg.matrix_rank(A) == 2
    check_product_rank(2, B, A)
    for wrong, message in [(3, "only an upper bound"), (6, "min\\(d, k\\)"), (4, "never exceed r = 3"),
                           (1, "too small"), (None, "no answer yet")]:
        with pytest.raises(Feedback, match=message):
            check_product_rank(wrong, B, A)


def right_factor(M, r):
    U, S, Vh = np.linalg.svd(M, full_matrices=False)
    return U[:, :r] * S[:r], Vh[:r]


@pytest.mark.parametrize("wrong, message", [
    (lambda M, k: right_factor(M, k)[::-1], "wrong order"),
    (lambda M, k: (right_factor(M, k)[0], right_factor(M, k)[1].T), "transposed"),
    (lambda M, k: right_factor(M, k + 1), "inner dimension 3, not r = 2"),
    (lambda M, k: (np.linalg.svd(M)[0][:, :k], np.linalg.svd(M)[2][:k]), "singular values are missing"),
    (lambda M, k: (right_factor(M, k)[0], np.linalg.svd(M)[1][:k, None] * right_factor(M, k)[1]), "appear twice"),
    (lambda M, k: np.linalg.svd(M, full_matrices=False), "two matrices"),
    (lambda M, k: (right_factor(M[::-1], k)[0], right_factor(M[::-1], k)[1]), "first\\* r"),
    # Vh.T[:r] instead of Vh[:r] (right shape for a 7×5 M) got the generic message before
    (lambda M, r: (right_factor(M, r)[0], np.linalg.svd(M, full_matrices=False)[2].T[:r]), "no .T"),
    (lambda M, r: (np.linalg.svd(M)[0][:, :r] * np.sqrt(np.linalg.svd(M)[1][:r]),
                   np.sqrt(np.linalg.svd(M)[1][:r])[:, None] * np.linalg.svd(M, full_matrices=False)[2].T[:r]),
     "no .T"),
    # √S on the rows of Vh without a column shape: a broadcasting error, explained now (raw NumPy text before)
    (lambda M, r: (np.linalg.svd(M)[0][:, :r], np.linalg.svd(M)[2][:r] * np.linalg.svd(M)[1][:r]),
     "s\\[:, None\\] \\* Vh\\[:r\\]"),
])
def test_factor_from_svd_check_names_the_slip(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_factor_from_svd(wrong)


def test_factor_from_svd_check_accepts_any_factorisation_of_the_optimum(capsys):
    check_factor_from_svd(right_factor)

    def balanced(M, k):  # √S on each side, then an arbitrary invertible G in between
        U, S, Vh = np.linalg.svd(M, full_matrices=False)
        G = np.array([[2.0, 1.0], [0.0, 0.5]])[:k, :k]
        return (U[:, :k] * np.sqrt(S[:k])) @ G, np.linalg.inv(G) @ (np.sqrt(S[:k])[:, None] * Vh[:k])

    check_factor_from_svd(balanced)
    check_factor_from_svd(lambda M, k: tuple(torch.tensor(x) for x in right_factor(M, k)), seed=1, shape=(4, 9))
    assert capsys.readouterr().out.count("✅ Correct") == 3


S4 = np.array([5.0, 3.0, 2.0, 1.0, 0.5])


def test_optimal_loss_check_names_the_slip(capsys):
    r = 2
    check_optimal_loss(float(np.sum(S4[r:] ** 2)), S4, r)
    check_optimal_loss(torch.tensor(5.25), S4, r)
    assert capsys.readouterr().out.count("✅ Correct") == 2
    for wrong, message in [(np.sqrt(5.25), "forget a square"), (3.5, "Square each singular value"),
                           (4.0, "only σ²_{r\\+1}"), (34.0, "you \\*keep\\*"), (1.25, "Off by one"),
                           (14.25, "included σ_r"), (7.0, "not the Eckart–Young optimum"),
                           (None, "no answer yet"), ("5.25x", "should be a number"), (S4, "single number")]:
        with pytest.raises(Feedback, match=message):
            check_optimal_loss(wrong, S4, r)


def test_smallest_r_check_names_the_slip(capsys):
    S = np.arange(1, 21) ** -1.5
    threshold = 0.1
    rel = [np.sqrt(np.sum(S[r:] ** 2) / np.sum(S**2)) for r in range(len(S) + 1)]
    expected = next(r for r in range(1, len(S) + 1) if rel[r] <= threshold)
    assert rel[expected - 1] > threshold >= rel[expected]
    check_smallest_r(expected, S, threshold)
    assert "✅ Correct" in capsys.readouterr().out
    no_square = next(r for r in range(1, len(S) + 1) if np.sum(S[r:]) / np.sum(S) <= threshold)
    squared = next(r for r in range(1, len(S) + 1) if rel[r] ** 2 <= threshold)
    assert len({expected - 1, expected, expected + 1, no_square, squared}) == 5  # the example separates the slips
    for wrong, message in [(no_square, "Use squares"), (squared, "\\*squared\\* relative error"),
                           (expected + 1, "one fewer"), (expected - 1, "r counts the singular values you keep"),
                           (len(S), "too large"), (None, "no answer yet")]:
        with pytest.raises(Feedback, match=message):
            check_smallest_r(wrong, S, threshold)


def test_r_meaning_check(capsys):
    check_r_meaning("b")
    check_r_meaning("B")        # rejected before ("not one of the choices")
    check_r_meaning("b ")
    assert capsys.readouterr().out.count("✅ Correct") == 3
    for wrong, message in [("a", "seed blog post"), ("c", "full rank"), ("d", "still trains"),
                           ("e", "not one of the choices"), (None, "no answer yet")]:
        with pytest.raises(Feedback, match=message):
            check_r_meaning(wrong)
