"""Checks for chapter 05 (the LoRA layer).

Each check builds its own small, seeded example (sizes all different, so that a transposed matrix shows up
as a shape error), computes the right answer with plain torch or :mod:`lora_edu.lora`, and recognises the
usual slips: a forgotten scaling, ``alpha`` instead of ``alpha / r``, ``A`` and ``B`` swapped or transposed,
``B`` random at the start, counting ``A`` and ``B`` with the wrong sizes, ...
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np

from lora_edu.checks import (
    Feedback, NotAnswered, check_choice, check_integer, check_matrix, exercise, passed, require_answer,
)


def _torch():
    import torch

    return torch


def _close(a: Any, b: Any, tol: float = 1e-5) -> bool:
    torch = _torch()
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return False
    return bool(torch.allclose(a.detach().double(), b.detach().double(), rtol=tol, atol=tol))


def _call(fn: Callable, name: str, *args: Any, shapes: str = "") -> Any:
    """Call the learner's function; turn a crash into feedback that points at the likely cause."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise NotAnswered(f"`{name}` still raises NotImplementedError: replace that line with your code.") from None
    except RuntimeError as exc:
        text = str(exc).splitlines()[0]
        if "shape" in text or "size" in text or "mat" in text:
            raise Feedback(f"Calling `{name}` failed with a shape mismatch ({text}). A missing or extra `.T` "
                           f"is the usual cause. {shapes}".rstrip()) from None
        raise Feedback(f"Calling `{name}` raised RuntimeError: {text}") from None


# --------------------------------------------------------------------------- section 1: ΔW


@exercise
def check_accumulated_update(delta_W: Any, grads: list, lr: float) -> None:
    """``delta_W`` after plain SGD steps ``W <- W - lr * G_t``: the sum ``-lr * (G_1 + G_2 + ...)``."""
    require_answer(delta_W, "delta_W")
    G = [np.asarray(g.detach().cpu() if hasattr(g, "detach") else g, dtype=float) for g in grads]
    expected = -lr * sum(G)
    arr = np.asarray(delta_W.detach().cpu() if hasattr(delta_W, "detach") else delta_W, dtype=float)
    if arr.shape == expected.shape and not np.allclose(arr, expected, rtol=1e-5, atol=1e-7):
        for t, g in enumerate(G, start=1):
            if np.allclose(arr, g, rtol=1e-5, atol=1e-7) or np.allclose(arr, -lr * g, rtol=1e-5, atol=1e-7):
                raise Feedback(f"`delta_W` is (a multiple of) the gradient of step {t} alone. That is the seed's "
                               "'derivative matrix' reading; ΔW is what all the steps added up to.")
        if np.allclose(arr, sum(G), rtol=1e-5, atol=1e-7):
            raise Feedback("`delta_W` is the sum of the gradients. Each step moves W by -lr times its gradient: "
                           "multiply by -lr.")
        if np.allclose(arr, -expected, rtol=1e-5, atol=1e-7):
            raise Feedback("`delta_W` has the wrong sign: gradient descent moves *against* the gradient, "
                           "W <- W - lr * G.")
    check_matrix(arr, expected, "delta_W", rtol=1e-5, atol=1e-7,
                 hint="Every SGD step adds -lr * G_t to W, so ΔW = W_final - W_start = -lr * (G_1 + ... + G_T).")
    passed(f"ΔW is the accumulated update -lr · ΣG over {len(G)} steps: a change of W, not a derivative.")


# --------------------------------------------------------------------------- section 2: the forward


@exercise
def check_lora_forward(fn: Callable, seed: int = 0, sizes: tuple[int, int, int, int] = (5, 7, 6, 3)) -> None:
    """``fn(x, base, lora_A, lora_B, alpha, r)`` must return ``base(x) + (alpha/r) * x @ A.T @ B.T``.

    ``sizes`` = (batch, in_features, out_features, r). Two alphas are tried, 12 and 7, so that alpha / r
    is not a whole number in at least one of them (unless r = 1): integer division shows up.
    """
    require_answer(fn, "lora_forward")
    if not callable(fn):
        raise Feedback("`lora_forward` should be a function: def lora_forward(x, base, lora_A, lora_B, alpha, r).")
    torch = _torch()
    n, k, d, r = sizes
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(k, d)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d, k, generator=g))
        base.bias.copy_(torch.randn(d, generator=g))
    base.requires_grad_(False)  # frozen, as in LoRA
    x = torch.randn(n, k, generator=g)
    A, B = torch.randn(r, k, generator=g), torch.randn(d, r, generator=g)
    for alpha in (12.0, 7.0):
        _check_forward_case(fn, x, base, A, B, alpha, r)
    passed("h = base(x) + (α/r) · x Aᵀ Bᵀ — the LoRA forward, batch-first like nn.Linear, with gradients "
           "reaching lora_A and lora_B.")


def _check_forward_case(fn: Callable, x: Any, base: Any, A: Any, B: Any, alpha: float, r: int) -> None:
    torch = _torch()
    lora_A, lora_B = A.clone().requires_grad_(), B.clone().requires_grad_()  # trainable, as in a LoRA layer
    got = _call(fn, "lora_forward", x.clone(), base, lora_A, lora_B, alpha, r,
                shapes=f"Here x is {tuple(x.shape)}, lora_A is (r, in) = {tuple(A.shape)}, lora_B is "
                       f"(out, r) = {tuple(B.shape)}: x @ lora_A.T @ lora_B.T fits.")
    with torch.no_grad():
        update = x @ A.T @ B.T
        expected = base(x) + alpha / r * update
    if not isinstance(got, torch.Tensor):
        raise Feedback(f"`lora_forward` should return a torch tensor of shape {tuple(expected.shape)}, "
                       f"not {type(got).__name__}.")
    if got.shape != expected.shape:
        raise Feedback(f"`lora_forward` returned shape {tuple(got.shape)}; expected {tuple(expected.shape)} = "
                       "(batch, out_features).")
    if _close(got, expected):
        _check_forward_gradients(got, x, A, B, lora_A, lora_B, alpha, r)
        return
    with torch.no_grad():
        _forward_slip(got, x, base, update, expected, alpha, r)


def _check_forward_gradients(got: Any, x: Any, A: Any, B: Any, lora_A: Any, lora_B: Any, alpha: float,
                             r: int) -> None:
    """The output's gradient must reach lora_A and lora_B, and be the right one."""
    torch = _torch()
    if not got.requires_grad:
        raise Feedback("The values are right, but no gradient reaches lora_A and lora_B: the output does not "
                       "require grad (a .detach(), torch.no_grad() or a NumPy round trip cuts autograd). LoRA "
                       "trains A and B through this very computation, so keep it in torch, on the tensors given.")
    weights = torch.linspace(-1.0, 1.0, got.numel()).reshape(got.shape)  # a fixed, uneven loss: Σ w ⊙ h
    grads = torch.autograd.grad((got * weights).sum(), (lora_A, lora_B), allow_unused=True)
    A_ref, B_ref = A.clone().requires_grad_(), B.clone().requires_grad_()
    expected = torch.autograd.grad((alpha / r * (x @ A_ref.T @ B_ref.T) * weights).sum(), (A_ref, B_ref))
    for name, grad, want in zip(("lora_A", "lora_B"), grads, expected):
        if grad is None:
            raise Feedback(f"The values are right, but no gradient reaches {name}: it is used through a copy that "
                           "autograd does not follow (.detach(), .data, .numpy()). Use the tensor itself.")
        if not _close(grad, want):
            raise Feedback(f"The output is right but the gradient reaching {name} is not that of "
                           "(alpha / r) * x @ lora_A.T @ lora_B.T: compute the update from the tensors given.")


def _forward_slip(got: Any, x: Any, base: Any, update: Any, expected: Any, alpha: float, r: int) -> None:
    slips = [
        (base(x), "Your output is base(x) alone: the low-rank update is missing."),
        (base(x) + update, f"The update is there but not scaled: multiply it by alpha / r (here {alpha:g} / {r} "
                           f"= {alpha / r:.4g})." + (f" If you wrote alpha // r: // is integer division, which rounds "
                                                    f"{alpha / r:.4g} down to 1; use /." if alpha // r == 1 else "")),
        (base(x) + alpha * update, "You scaled by alpha, as the seed blog post does; LoRA (the paper, PEFT) "
                                   "scales by alpha / r."),
        (base(x) + alpha / math.sqrt(r) * update, "You scaled by alpha / sqrt(r): that is rsLoRA's scaling. "
                                                  "Plain LoRA uses alpha / r."),
        (base(x) + r / alpha * update, "You scaled by r / alpha: the fraction is upside down, it is alpha / r."),
        (base(x) + (alpha // r) * update, f"You scaled by alpha // r = {alpha // r:g}: // is integer division, which "
                                          f"rounds down. Use alpha / r = {alpha / r:.4g} (true division)."),
        (x @ base.weight.T + alpha / r * update, "The bias of the base layer is missing: use base(x), which "
                                                 "adds it, rather than x @ base.weight.T."),
        (alpha / r * update, "Only the update came back: add the frozen layer's output base(x)."),
        (alpha / r * (base(x) + update), "The scaling multiplies base(x) too: only the low-rank update is scaled."),
    ]
    for wrong, message in slips:
        if _close(got, wrong):
            raise Feedback(message)
    worst = float((got.detach().double() - expected.detach().double()).abs().max())
    raise Feedback(f"`lora_forward` has the right shape but wrong values with alpha = {alpha:g}, r = {r} (largest "
                   f"difference {worst:.3g}). Expected base(x) + (alpha / r) * x @ lora_A.T @ lora_B.T.")


# --------------------------------------------------------------------------- section 3: initialisation


@exercise
def check_lora_init(fn: Callable, sizes: tuple[int, int, int] = (4, 10, 7)) -> None:
    """``fn(r, in_features, out_features) -> (lora_A, lora_B)``: the layer starts as the base, and learns."""
    require_answer(fn, "init_lora")
    if not callable(fn):
        raise Feedback("`init_lora` should be a function: def init_lora(r, in_features, out_features).")
    torch = _torch()
    r, k, d = sizes
    torch.manual_seed(0)
    out = _call(fn, "init_lora", r, k, d)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise Feedback("`init_lora` should return two tensors: `return lora_A, lora_B`.")
    A, B = (torch.as_tensor(t).detach().double() for t in out)
    if A.shape == (k, r) and B.shape == (r, d):
        raise Feedback(f"lora_A came back {tuple(A.shape)} and lora_B {tuple(B.shape)}: that is the seed's "
                       f"layout (x @ A @ B). Here lora_A is (r, in_features) = {(r, k)} and lora_B is "
                       f"(out_features, r) = {(d, r)}.")
    if A.shape == (d, r) and B.shape == (r, k):
        raise Feedback("lora_A and lora_B are swapped: lora_A (r, in_features) reads the input, lora_B "
                       "(out_features, r) writes the output.")
    if A.shape != (r, k) or B.shape != (d, r):
        raise Feedback(f"Expected lora_A of shape (r, in_features) = {(r, k)} and lora_B of shape "
                       f"(out_features, r) = {(d, r)}; got {tuple(A.shape)} and {tuple(B.shape)}.")
    if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
        raise Feedback("lora_A or lora_B holds NaN or infinity.")
    a_zero, b_zero = bool((A == 0).all()), bool((B == 0).all())
    if a_zero and b_zero:
        raise Feedback("Both matrices are zero. The output is right at step 0, but for h = base(x) + (α/r) B A x the "
                       "gradient of B is (α/r) (∇ₕL) (A x)ᵀ = 0 (A = 0) and the gradient of A is (α/r) Bᵀ (∇ₕL) xᵀ "
                       "= 0 (B = 0): nothing ever moves.")
    if not a_zero and not b_zero:
        raise Feedback("Both matrices are nonzero, so B A ≠ 0 and the layer no longer computes the pretrained "
                       "function at step 0 (the seed's randn ΔW problem). Start B at zero.")
    if a_zero:  # the mirror choice: it works, but it is not the convention
        if B.std() == 0:
            raise Feedback("lora_A is zero and every entry of lora_B is the same: start B at zero and A random.")
        passed("A = 0 and B random also starts at the base and lets gradients flow (A's gradient is Bᵀ g xᵀ). "
               "The paper, loralib, PEFT and lora_edu use the mirror image: B = 0, A random.")
        return
    sv = torch.linalg.svdvals(A)
    if A.std() == 0 or sv[-1] < 1e-2 * sv[0]:  # exact or near duplicates: a rank test with a tolerance
        raise Feedback("lora_B is zero (good) but lora_A's rows are not independent, or nearly not (its smallest "
                       f"singular value is {float(sv[-1] / sv[0]):.2g} of its largest): rows that start (almost) "
                       "equal get (almost) equal gradients and stay that way, wasting rank. Draw every entry of A "
                       "at random.")
    _check_scale_of_A(float(A.std()), k)
    passed("B = 0 makes B A = 0, so the layer starts exactly as the pretrained one; a random A makes "
           "B's first gradient (α/r) (∇ₕL) (A x)ᵀ nonzero, so training can start.")


# What a sensible A looks like: Kaiming (loralib, PEFT) has std 1/sqrt(3·in), PEFT's Gaussian 1/r, the seed
# 1/sqrt(r), plain torch.randn 1. All of these pass. The scale of A is not free, though: with B = 0, every step of B
# changes the output by (α/r)·ΔB·A, and Adam moves each entry of B by about the learning rate, so A's scale acts as
# a factor on the effective learning rate. A thousand times outside that range (1e6·randn, 1e-9·randn) is a start
# that no reasonable learning rate trains, and the check says so.
_A_STD_LOW, _A_STD_HIGH = 1e-3, 3.0


def _check_scale_of_A(std: float, in_features: int) -> None:
    kaiming = 1 / math.sqrt(3 * in_features)
    if std > _A_STD_HIGH:
        raise Feedback(f"lora_A has standard deviation {std:.3g}, {std / kaiming:.2g}× nn.Linear's own scale "
                       f"(Kaiming, 1/sqrt(3·in) = {kaiming:.3g}). B = 0 keeps the start right, but each step of B "
                       "changes the output by (α/r)·ΔB·A, and Adam moves every entry of B by about the learning rate: "
                       "A this large multiplies the effective learning rate by the same factor. Use a scale like "
                       "1/sqrt(in_features) (Kaiming, as loralib and PEFT) or 1/r (PEFT's Gaussian).")
    if std < _A_STD_LOW / math.sqrt(in_features):
        raise Feedback(f"lora_A has standard deviation {std:.3g}, {kaiming / std:.2g}× smaller than nn.Linear's own "
                       f"scale (Kaiming, 1/sqrt(3·in) = {kaiming:.3g}). Each step of B changes the output by "
                       "(α/r)·ΔB·A, so with A this small B's first steps barely move anything: the effective "
                       "learning rate shrinks by the same factor. Use a scale like 1/sqrt(in_features) (Kaiming) "
                       "or 1/r (PEFT's Gaussian).")


# --------------------------------------------------------------------------- section 4: scaling


def _drop_exponent(optimizer: str, init: str, q: float) -> float:
    """The first step's loss drop grows like r**p: Adam ∝ s r σ_A, SGD ∝ s² r σ_A², s ∝ r**q, σ_A ∝ r**a."""
    a = 0.0 if init == "kaiming" else -1.0
    return 1 + q + a if optimizer == "Adam" else 1 + 2 * (q + a)


@exercise
def check_drop_exponent(fn: Callable) -> None:
    """``fn(optimizer, init, q)``: the exponent p in "first-step loss drop ∝ r**p".

    ``optimizer`` is "Adam" or "SGD", ``init`` is "kaiming" (σ_A free of r) or "gaussian" (PEFT's σ_A = 1/r),
    and the scaling is s ∝ r**q (q = 0: α, q = -1: α/r, q = -0.5: α/√r). Checked on all twelve combinations.
    """
    require_answer(fn, "drop_exponent")
    if not callable(fn):
        raise Feedback("`drop_exponent` should be a function: def drop_exponent(optimizer, init, q).")
    combos = [(o, i, q) for o in ("Adam", "SGD") for i in ("kaiming", "gaussian") for q in (0.0, -1.0, -0.5)]
    got = []
    for combo in combos:
        value = _call(fn, "drop_exponent", *combo)
        require_answer(value, f"drop_exponent{combo}")
        if isinstance(value, (str, bytes, bool)):
            raise Feedback(f"`drop_exponent{combo}` should return a number (the exponent p), not {value!r}.")
        try:
            got.append(float(value))
        except (TypeError, ValueError):
            raise Feedback(f"`drop_exponent{combo}` should return a number (the exponent p), not "
                           f"{type(value).__name__}.") from None
    want = [_drop_exponent(*c) for c in combos]
    if all(math.isclose(g, w, abs_tol=1e-9) for g, w in zip(got, want)):
        passed("Adam: p = 1 + q + a, SGD: p = 1 + 2(q + a) with σ_A ∝ r^a — so with Adam and Kaiming A, α/r "
               "(q = -1) is rank-free; with SGD and Kaiming A, α/√r is. Section 9 measures all twelve.")
        return

    def same(rule: Callable[[str, str, float], float]) -> bool:
        return all(math.isclose(g, rule(*c), abs_tol=1e-9) for g, c in zip(got, combos))

    sigma = {"kaiming": 0.0, "gaussian": -1.0}
    slips = [
        (lambda o, i, q: 1 + q + sigma[i],
         "Your exponents are Adam's for SGD too. SGD's step is -lr·G_B, so its drop is lr·‖G_B‖², and G_B carries "
         "s and σ_A: both appear squared, p = 1 + 2(q + a), while r (the number of columns summed) appears once."),
        (lambda o, i, q: 2 * (1 + q + sigma[i]) if o == "SGD" else 1 + q + sigma[i],
         "For SGD you squared r too: ‖G_B‖² sums over the r columns of X Aᵀ once, so r appears once; only s and "
         "σ_A are squared: p = 1 + 2(q + a)."),
        (lambda o, i, q: (1 + q) if o == "Adam" else (1 + 2 * q),
         "The init matters: PEFT's Gaussian A has σ_A = 1/r, so it adds r^-1 (Adam) or r^-2 (SGD); only Kaiming "
         "A's σ_A = 1/√(3·in) is free of r."),
        (lambda o, i, q: (q + sigma[i]) if o == "Adam" else 2 * (q + sigma[i]),
         "The r is missing: X Aᵀ has r columns and the drop adds up one term per column, a factor r on top of "
         "s and σ_A."),
        (lambda o, i, q: -(1 + q + sigma[i]) if o == "Adam" else -(1 + 2 * (q + sigma[i])),
         "The signs are flipped: p is the exponent of the drop itself (drop ∝ r^p), so α (q = 0) with Adam and "
         "Kaiming A gives p = +1, a drop that grows with r."),
    ]
    for rule, message in slips:
        if same(rule):
            raise Feedback(message)
    bad = next(c for c, g, w in zip(combos, got, want) if not math.isclose(g, w, abs_tol=1e-9))
    g = got[combos.index(bad)]
    raise Feedback(f"drop_exponent{bad} returned {g:g}. Work it out from the two lines: Adam's drop ∝ s·r·σ_A, "
                   "SGD's ∝ s²·r·σ_A², with s ∝ r^q and σ_A ∝ r^0 (kaiming) or r^-1 (gaussian).")


# --------------------------------------------------------------------------- section 5: counting


@exercise
def check_lora_counts(trainable: Any, total: Any, in_features: int, out_features: int, r: int,
                      bias: bool = True) -> None:
    """Trainable and total parameter counts of ``LoRALinear(nn.Linear(in, out, bias), r)``."""
    require_answer(trainable, "trainable_count")
    require_answer(total, "total_count")
    k, d = in_features, out_features
    lora = r * (k + d)
    base = d * k + (d if bias else 0)
    slips = {
        2 * r * k: f"that is 2·r·in_features: A is (r, in_features) = {r}×{k} but B is (out_features, r) = {d}×{r}.",
        2 * r * d: f"that is 2·r·out_features: B is (out_features, r) = {d}×{r} but A is (r, in_features) = {r}×{k}.",
        r * k * d: "that is r·in·out, the size of r full matrices: A and B together hold r·(in + out) numbers.",
        r * k: "that counts A only; B is trainable too.",
        r * d: "that counts B only; A is trainable too.",
        base + lora: "that counts the frozen weight too; only A and B are trainable.",
        lora + (d if bias else -1): "the bias is frozen with the base layer: only A and B are trainable.",
    }
    if trainable != lora and trainable in slips:
        raise Feedback(f"`trainable_count` = {trainable}: {slips[trainable]}")
    check_integer(trainable, lora, "trainable_count", hint="A (r, in) and B (out, r): r·(in + out).")
    total_slips = {
        base: "that is the base layer alone; the total includes A and B too.",
        d * k + lora: "the base layer's bias is missing from the total." if bias else "",
        lora: "that is the trainable part only; the total includes the frozen base layer.",
        d * k: "that is the frozen weight alone: add its bias and the LoRA matrices.",
    }
    if total != base + lora and total_slips.get(total):
        raise Feedback(f"`total_count` = {total}: {total_slips[total]}")
    check_integer(total, base + lora, "total_count", hint="weight (out·in) + bias (out) + A and B (r·(in + out)).")
    passed(f"{lora:,} trainable of {base + lora:,}: {base / lora:.1f}× fewer numbers to train than the layer's own "
           f"{base:,}.")


# --------------------------------------------------------------------------- section 6: merging


@exercise
def check_lora_layer(cls: Any, sizes: tuple[int, int, int] = (9, 6, 3)) -> None:
    """A LoRA layer class ``cls(base, r, alpha)`` with ``lora_A``, ``lora_B``, ``merge()``, ``unmerge()``.

    Checked: starts as the base, forward = base(x) + (alpha/r) x Aᵀ Bᵀ, only A and B trainable,
    merge() makes base.weight = W0 + (alpha/r) B A and forward = base(x) alone (= the unmerged output),
    unmerge() restores the weight and the update.
    """
    require_answer(cls, "FixedLoRA")
    if not isinstance(cls, type):
        raise Feedback("`FixedLoRA` should be a class (class FixedLoRA(BuggyLoRA): ...).")
    torch = _torch()
    k, d, r = sizes
    alpha = 12.0
    torch.manual_seed(0)
    base = torch.nn.Linear(k, d)
    W0 = base.weight.detach().clone()
    x = torch.randn(5, k)
    try:
        layer = cls(copy.deepcopy(base), r, alpha)
    except NotImplementedError:
        raise NotAnswered("`FixedLoRA` still raises NotImplementedError: write the class in the exercise cell.") from None
    for attr in ("lora_A", "lora_B", "base", "merge", "unmerge"):
        if not hasattr(layer, attr):
            raise Feedback(f"`FixedLoRA` has no `{attr}`: keep BuggyLoRA's names (subclass it and fix the method).")
    if tuple(layer.lora_A.shape) != (r, k) or tuple(layer.lora_B.shape) != (d, r):
        raise Feedback(f"lora_A should be (r, in) = {(r, k)} and lora_B (out, r) = {(d, r)}; got "
                       f"{tuple(layer.lora_A.shape)} and {tuple(layer.lora_B.shape)}.")
    with torch.no_grad():
        if not _close(layer(x), base(x), 1e-6):
            raise Feedback("At initialisation the layer's output differs from the base layer's: B must start "
                           "at zero so that B A = 0.")
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    if trainable != {"lora_A", "lora_B"}:
        raise Feedback(f"The trainable parameters are {sorted(trainable)}; only lora_A and lora_B should be "
                       "(freeze the base layer with requires_grad_(False)).")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(r, k, generator=g))
        layer.lora_B.copy_(torch.randn(d, r, generator=g))
        update = x @ layer.lora_A.T @ layer.lora_B.T
        out = layer(x)
        expected = base(x) + alpha / r * update
        if not _close(out, expected):
            for s, words in ((1.0, "without the scaling"), (alpha, "scaled by alpha instead of alpha / r")):
                if _close(out, base(x) + s * update):
                    raise Feedback(f"The forward adds the update {words}: it should be base(x) + "
                                   "(alpha / r) * x @ lora_A.T @ lora_B.T.")
            raise Feedback("The forward does not compute base(x) + (alpha / r) * x @ lora_A.T @ lora_B.T.")
        layer.merge()
        W = layer.base.weight.detach()
        dW, right = W - W0, alpha / r * layer.lora_B @ layer.lora_A
        if not _close(W, W0 + right, 1e-4):
            if _close(W, W0):
                raise Feedback("After merge() the weight is unchanged: merge() must add ΔW = (alpha / r) · B @ A "
                               "to base.weight (a merged layer's forward is base(x) alone).")
            for s, words in ((1.0, "without the scaling"), (alpha, "scaled by alpha instead of alpha / r")):
                if _close(dW, right / (alpha / r) * s, 1e-4):
                    raise Feedback(f"merge() adds B @ A {words}, so the merged layer no longer computes what "
                                   "the unmerged one did. Add (alpha / r) * lora_B @ lora_A.")
            if _close(dW, 2 * right, 1e-4):
                raise Feedback("merge() adds ΔW twice to the weight: add (alpha / r) * lora_B @ lora_A once.")
            raise Feedback("After merge() base.weight should be W0 + (alpha / r) * lora_B @ lora_A, and it is not.")
        merged = layer(x)
        if _close(merged, expected + alpha / r * update, 1e-4):
            raise Feedback("The merged layer adds ΔW twice: once in the weight and once more in forward. "
                           "A merged layer's forward must be base(x) only.")
        if not (_close(merged, layer.base(x), 1e-5) and _close(merged, expected, 1e-4)):
            raise Feedback("After merge() the weight is right, but forward does not return base(x) alone: a merged "
                           "layer computes one matmul with W0 + ΔW and adds nothing else.")
        layer.unmerge()
        if not _close(layer.base.weight, W0, 1e-5):
            raise Feedback("unmerge() does not restore the original weight: subtract exactly what merge() added.")
        if not _close(layer(x), expected, 1e-4):
            raise Feedback("After unmerge() the output differs from before merging: forward should add the "
                           "update again once the layer is unmerged.")
    passed("starts as the base, scales by α/r, trains only A and B, and merges and unmerges without "
           "changing the output.")


# --------------------------------------------------------------------------- section 7: injection


@exercise
def check_target_modules(patterns: Any, make_model: Callable, blocks: tuple[int, ...] = (2, 3)) -> None:
    """``apply_lora(make_model(), patterns, r=2)`` must wrap every ``nn.Linear`` of the attention of the given
    ``blocks`` (``blocks.<b>.attn.<name>``) and nothing else."""
    require_answer(patterns, "target_modules")
    torch = _torch()
    from lora_edu.lora import apply_lora

    wanted = tuple(f"blocks.{b}.attn." for b in blocks)
    expected = [n for n, m in make_model().named_modules()
                if isinstance(m, torch.nn.Linear) and n.startswith(wanted) and n.count(".") == 3]
    try:
        got = apply_lora(make_model(), patterns, r=2)
    except (ValueError, TypeError) as exc:
        raise Feedback(f"apply_lora rejected target_modules = {patterns!r}: {exc}") from None
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing or extra:
        which = " and ".join(map(str, blocks))
        parts = []
        if extra:
            parts.append(f"it also wraps {extra}, which should stay plain layers (only the attention of blocks "
                         f"{which})")
        if missing:
            parts.append(f"it misses {missing}")
        hint = ""
        if missing and all(n.count(".") >= 1 for n in missing):
            hint = (" A full name such as 'blocks.0.attn.q' matches one module only; a suffix such as 'q' "
                    "matches it in every block.")
        raise Feedback(f"target_modules = {patterns!r} does not pick the right layers: {'; '.join(parts)}.{hint}")
    passed(f"{len(got)} layers get LoRA: {', '.join(got)}.")


# --------------------------------------------------------------------------- section 8: adapters


@exercise
def check_adapter_bytes(value: Any, model: Any) -> None:
    """The bytes of tensor data in ``model``'s adapter (each LoRA entry in its own dtype)."""
    require_answer(value, "adapter_bytes")
    from lora_edu.lora import count_parameters, lora_state_dict

    state = lora_state_dict(model)
    numbers = sum(t.numel() for t in state.values())
    size = state[next(iter(state))].element_size()
    expected = sum(t.numel() * t.element_size() for t in state.values())
    _, total = count_parameters(model)
    slips = {
        numbers: f"that is the number of entries; each one takes {size} bytes in {state[next(iter(state))].dtype}.",
        total * size: "that is the whole model (frozen weights too); the adapter holds only lora_A and lora_B.",
        total: "that is the whole model's parameter count; the adapter holds only lora_A and lora_B, at "
               f"{size} bytes each.",
        numbers * 2: "2 bytes per entry is float16/bfloat16; these tensors are float32 (4 bytes).",
        numbers * 8: "8 bytes per entry is float64; these tensors are float32 (4 bytes).",
    }
    if value != expected and value in slips:
        raise Feedback(f"`adapter_bytes` = {value}: {slips[value]}")
    check_integer(value, expected, "adapter_bytes",
                  hint="Count the entries of every lora_A and lora_B, times the bytes per entry.")
    passed(f"{numbers:,} numbers × {size} bytes = {expected:,} bytes of adapter (the file adds a small header).")


# --------------------------------------------------------------------------- section 9: the floor


def _rank_r_floor(X: Any, target: Any, r: int) -> float:
    """The smallest ``mean((X ΔWᵀ - target)²)`` over all ΔW of rank <= r (``X (n, k)``, ``target (n, d)``).

    With ``X = Q R`` (R invertible), ``X ΔWᵀ = Q (R ΔWᵀ)`` and ``R ΔWᵀ`` is any matrix of rank <= r, so the
    best is the Eckart–Young tail of ``Qᵀ target`` plus the part of ``target`` outside the columns of X.
    """
    X = np.asarray(X.detach().cpu() if hasattr(X, "detach") else X, dtype=float)
    T = np.asarray(target.detach().cpu() if hasattr(target, "detach") else target, dtype=float)
    Q, _ = np.linalg.qr(X)
    inside = Q.T @ T
    s = np.linalg.svd(inside, compute_uv=False)
    outside = T - Q @ inside
    return float((np.sum(s[r:] ** 2) + np.sum(outside**2)) / T.size)


@exercise
def check_rank_floor(value: Any, X: Any, Y: Any, W0: Any, r: int) -> None:
    """The best MSE any rank-``r`` update reaches on ``Y ≈ X (W0 + ΔW)ᵀ``."""
    name = f"floor_{r}"
    require_answer(value, name)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        got = float(np.asarray(value, dtype=float).reshape(()))
    except (TypeError, ValueError):
        raise Feedback(f"`{name}` should be one number (a loss), not {type(value).__name__} {value!r}.") from None
    X_, Y_, W_ = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=float) for t in (X, Y, W0))
    target = Y_ - X_ @ W_.T
    want = _rank_r_floor(X_, target, r)
    if math.isclose(got, want, rel_tol=1e-3):
        passed(f"no rank-{r} update gets the loss below {want:.4f}: the Eckart–Young tail of the whitened change, "
               "divided by the number of entries.")
        return
    Q, R = np.linalg.qr(X_)
    C = np.linalg.lstsq(X_, target, rcond=None)[0].T  # the change itself, (d, k)
    s_c = np.linalg.svd(C, compute_uv=False)
    s_w = np.linalg.svd(Q.T @ target, compute_uv=False)
    slips = [
        (float(np.sum(s_c[r:] ** 2) / target.size),
         "You cut the singular values of the change C itself; the loss measures X ΔWᵀ, so C must be seen through "
         "the data: take the SVD of Qᵀ(Y − X W0ᵀ) with X = QR (or of C Rᵀ)."),
        (float(np.sum(s_w[r:] ** 2)), "That is the summed squared error; the MSE divides by the number of entries, "
                                      f"Y.numel() = {target.size}."),
        (float(np.sqrt(np.sum(s_w[r:] ** 2) / target.size)), "That is a root mean square; the loss is the mean "
                                                                 "squared error, no square root."),
        (float(np.sum(s_w[r + 1:] ** 2) / target.size), "Off by one: a rank-r update keeps r singular values, "
                                                          "so the tail starts at S[r] (Python counts from 0)."),
        (float(np.sum(s_w[r - 1:] ** 2) / target.size), "Off by one: the tail is S[r:], which leaves out the "
                                                          "r values a rank-r update keeps."),
        (float(np.sum(s_w[:r] ** 2) / target.size), "That is the part a rank-r update *can* fit; the floor is "
                                                      "what is left: the tail S[r:]."),
        (float(np.sum(target**2) / target.size), "That is the loss at the start (ΔW = 0); the floor is what is "
                                                 f"left after the best rank-{r} update."),
    ]
    for wrong, message in slips:
        if math.isclose(got, wrong, rel_tol=1e-3) and not math.isclose(wrong, want, rel_tol=1e-3):
            raise Feedback(f"`{name}` = {got:.4g}: {message}")
    raise Feedback(f"`{name}` = {got:.4g} is not the floor. With X = QR, the loss of ΔW is "
                   "‖R ΔWᵀ − Qᵀ(Y − X W0ᵀ)‖²_F / Y.numel() (plus a part no ΔW can change), and R ΔWᵀ can be any "
                   "rank-r matrix: Eckart–Young on Qᵀ(Y − X W0ᵀ).")


# --------------------------------------------------------------------------- choices


@exercise
def check_dropout_placement(answer: Any) -> None:
    """Where LoRA's dropout acts: on the input of the LoRA branch only."""
    options = {
        "lora_input": "",
        "layer_input": "Dropout on the shared input also hits the frozen path: in training the layer would no "
                       "longer compute W0 x, even with B = 0, so the pretrained function is disturbed.",
        "layer_output": "Dropout on the output zeroes parts of W0 x too: the frozen path is disturbed in training.",
        "base_weight": "Dropping entries of W0 changes the frozen layer itself, which LoRA keeps untouched.",
    }
    check_choice(answer, "lora_input", "dropout_acts_on", options)
    passed("only the LoRA branch sees dropout: the frozen path stays W0 x, and in eval mode the layer is "
           "exactly W0 + ΔW, so merging changes nothing.")
