"""Chapter 05's exercise checks: right answers pass, typical wrong answers get a message naming the slip."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_edu.checks import Feedback
from lora_edu.checks.lora import (check_accumulated_update, check_adapter_bytes, check_drop_exponent,
                                  check_dropout_placement, check_lora_counts, check_lora_forward, check_lora_init,
                                  check_lora_layer, check_rank_floor, check_target_modules)
from lora_edu.lora import apply_lora

# --------------------------------------------------------------------------- ΔW is the accumulated update


def test_accumulated_update():
    torch.manual_seed(0)
    grads, lr = [torch.randn(3, 4) for _ in range(3)], 0.1
    check_accumulated_update(-lr * (grads[0] + grads[1] + grads[2]), grads, lr)
    check_accumulated_update((-lr * sum(grads)).numpy().tolist(), grads, lr)
    with pytest.raises(Feedback, match="gradient of step 3 alone"):
        check_accumulated_update(grads[2], grads, lr)
    with pytest.raises(Feedback, match="gradient of step 1 alone"):
        check_accumulated_update(-lr * grads[0], grads, lr)
    with pytest.raises(Feedback, match="multiply by -lr"):
        check_accumulated_update(sum(grads), grads, lr)
    with pytest.raises(Feedback, match="wrong sign"):
        check_accumulated_update(lr * sum(grads), grads, lr)
    with pytest.raises(Feedback, match="transposed"):
        check_accumulated_update((-lr * sum(grads)).T, grads, lr)
    with pytest.raises(Feedback, match="no answer yet"):
        check_accumulated_update(None, grads, lr)


# --------------------------------------------------------------------------- the forward


def right_forward(x, base, A, B, alpha, r):
    return base(x) + (alpha / r) * (x @ A.T @ B.T)


@pytest.mark.parametrize("wrong, words", [
    (lambda x, base, A, B, alpha, r: base(x), "base\\(x\\) alone"),
    (lambda x, base, A, B, alpha, r: base(x) + x @ A.T @ B.T, "not scaled"),
    (lambda x, base, A, B, alpha, r: base(x) + alpha * (x @ A.T @ B.T), "scaled by alpha, as the seed"),
    (lambda x, base, A, B, alpha, r: base(x) + alpha / math.sqrt(r) * (x @ A.T @ B.T), "rsLoRA"),
    (lambda x, base, A, B, alpha, r: base(x) + r / alpha * (x @ A.T @ B.T), "upside down"),
    (lambda x, base, A, B, alpha, r: x @ base.weight.T + alpha / r * (x @ A.T @ B.T), "bias"),
    (lambda x, base, A, B, alpha, r: alpha / r * (x @ A.T @ B.T), "add the frozen layer"),
    (lambda x, base, A, B, alpha, r: alpha / r * (base(x) + x @ A.T @ B.T), "multiplies base\\(x\\) too"),
    (lambda x, base, A, B, alpha, r: base(x) + alpha / r * (x @ A @ B), "shape mismatch.*\\.T"),
    (lambda x, base, A, B, alpha, r: base(x) + alpha / r * (x @ B.T @ A.T), "shape mismatch"),
    (lambda x, base, A, B, alpha, r: (base(x) + alpha / r * (x @ A.T @ B.T)).T, "shape \\(6, 5\\)"),
    (lambda x, base, A, B, alpha, r: base(x).detach().numpy(), "torch tensor"),
    (lambda x, base, A, B, alpha, r: base(x) + 1.0, "wrong values"),
    # integer division: 12 // 3 = 4 is right by luck, 7 // 3 = 2 is not (the visible case catches it)
    (lambda x, base, A, B, alpha, r: base(x) + (alpha // r) * (x @ A.T @ B.T), "alpha // r = 2: // is integer"),
    (lambda x, base, A, B, alpha, r: base(x) + int(alpha / r) * (x @ A.T @ B.T), "integer division"),
])
def test_lora_forward_slips(wrong, words):
    with pytest.raises(Feedback, match=words):
        check_lora_forward(wrong)


@pytest.mark.parametrize("wrong, words", [
    # right values, no gradient: these passed before the check compared gradients
    (lambda x, base, A, B, alpha, r: base(x) + (alpha / r) * (x @ A.T @ B.T).detach(), "does not require grad"),
    (lambda x, base, A, B, alpha, r: (base(x) + (alpha / r) * (x @ A.T @ B.T)).detach(), "does not require grad"),
    (lambda x, base, A, B, alpha, r: base(x) + (alpha / r) * (x @ A.detach().T @ B.T), "no gradient reaches lora_A"),
    (lambda x, base, A, B, alpha, r: base(x) + (alpha / r) * (x @ A.T @ B.data.T), "no gradient reaches lora_B"),
    (lambda x, base, A, B, alpha, r: torch.tensor(right_forward(x, base, A, B, alpha, r).detach().numpy()),
     "does not require grad"),
])
def test_lora_forward_needs_gradients(wrong, words):
    with pytest.raises(Feedback, match=words):
        check_lora_forward(wrong)


def test_lora_forward_with_no_grad_is_caught():
    def no_grad_forward(x, base, A, B, alpha, r):
        with torch.no_grad():
            return right_forward(x, base, A, B, alpha, r)

    with pytest.raises(Feedback, match="does not require grad"):
        check_lora_forward(no_grad_forward)


def test_lora_forward_integer_division_is_caught_for_every_r_above_one():
    wrong = lambda x, base, A, B, alpha, r: base(x) + (alpha // r) * (x @ A.T @ B.T)  # noqa: E731
    for sizes in [(5, 7, 6, 3), (3, 9, 4, 2), (1, 5, 11, 5), (2, 6, 6, 4)]:
        with pytest.raises(Feedback, match="integer division"):
            check_lora_forward(wrong, sizes=sizes)


def test_lora_forward_right_and_missing(capsys):
    check_lora_forward(right_forward)
    check_lora_forward(right_forward, seed=3, sizes=(2, 4, 9, 1))
    assert "✅ Correct" in capsys.readouterr().out
    with pytest.raises(Feedback, match="no answer yet"):
        check_lora_forward(None)

    def todo(*args):
        raise NotImplementedError()

    with pytest.raises(Feedback, match="NotImplementedError"):
        check_lora_forward(todo)


# --------------------------------------------------------------------------- the init


def test_lora_init(capsys):
    check_lora_init(lambda r, k, d: (torch.randn(r, k), torch.zeros(d, r)))
    check_lora_init(lambda r, k, d: (torch.zeros(r, k), torch.randn(d, r)))  # the mirror: accepted, with a note
    assert "mirror image" in capsys.readouterr().out
    slips = [
        (lambda r, k, d: (torch.zeros(r, k), torch.zeros(d, r)), "nothing ever moves"),
        (lambda r, k, d: (torch.randn(r, k), torch.randn(d, r)), "step 0"),
        (lambda r, k, d: (torch.randn(k, r), torch.zeros(r, d)), "seed's layout"),
        (lambda r, k, d: (torch.zeros(d, r), torch.randn(r, k)), "swapped"),
        (lambda r, k, d: (torch.ones(r, k), torch.zeros(d, r)), "rows are not independent"),
        # nearly equal rows: passed the exact rank test before
        (lambda r, k, d: (torch.randn(1, k).repeat(r, 1) + 1e-3 * torch.randn(r, k), torch.zeros(d, r)),
         "or nearly not"),
        (lambda r, k, d: (torch.randn(r, k + 1), torch.zeros(d, r)), "Expected lora_A of shape"),
        (lambda r, k, d: torch.randn(r, k), "two tensors"),
        (lambda r, k, d: (torch.zeros(r, k), torch.ones(d, r)), "every entry of lora_B is the same"),
        (lambda r, k, d: (1e6 * torch.randn(r, k), torch.zeros(d, r)), "multiplies the effective learning rate"),
        (lambda r, k, d: (1e-9 * torch.randn(r, k), torch.zeros(d, r)), "barely move"),
    ]
    for fn, words in slips:
        with pytest.raises(Feedback, match=words):
            check_lora_init(fn)
        if words != "or nearly not":  # with r = 1 there is a single row: nothing to duplicate
            with pytest.raises(Feedback, match=words):
                check_lora_init(fn, sizes=(1, 3, 5))


@pytest.mark.parametrize("fn", [
    lambda r, k, d: (torch.randn(r, k) / k ** 0.5, torch.zeros(d, r)),                 # ~ Kaiming
    lambda r, k, d: (nn.init.kaiming_uniform_(torch.empty(r, k), a=math.sqrt(5)), torch.zeros(d, r)),
    lambda r, k, d: (torch.randn(r, k) / r, torch.zeros(d, r)),                        # PEFT's Gaussian
    lambda r, k, d: (torch.randn(r, k) / r ** 0.5, torch.zeros(d, r)),                 # the seed's
    lambda r, k, d: (torch.randn(r, k), torch.zeros(d, r)),                            # "random Gaussian"
])
def test_lora_init_accepts_the_usual_scales_of_A(fn, capsys):
    check_lora_init(fn)
    check_lora_init(fn, sizes=(1, 3, 5))
    assert "gradient (α/r) (∇ₕL) (A x)ᵀ nonzero" in capsys.readouterr().out


def test_lora_init_feedback_states_the_gradients_with_their_scaling():
    with pytest.raises(Feedback) as err:
        check_lora_init(lambda r, k, d: (torch.zeros(r, k), torch.zeros(d, r)))
    assert "(α/r) (∇ₕL) (A x)ᵀ" in str(err.value) and "(α/r) Bᵀ (∇ₕL) xᵀ" in str(err.value)


# --------------------------------------------------------------------------- the scaling


def right_exponent(optimizer, init, q):
    a = 0 if init == "kaiming" else -1
    return 1 + q + a if optimizer == "Adam" else 1 + 2 * (q + a)


def test_drop_exponent(capsys):
    check_drop_exponent(right_exponent)
    check_drop_exponent(lambda o, i, q: {"Adam": 1, "SGD": 2}[o] * (q + (i == "gaussian") * -1) + 1)
    assert capsys.readouterr().out.count("✅ Correct") == 2
    sigma = {"kaiming": 0, "gaussian": -1}
    slips = [
        (lambda o, i, q: 1 + q + sigma[i], "Adam's for SGD too"),
        (lambda o, i, q: 2 * (1 + q + sigma[i]) if o == "SGD" else 1 + q + sigma[i], "squared r too"),
        (lambda o, i, q: 1 + q if o == "Adam" else 1 + 2 * q, "The init matters"),
        (lambda o, i, q: q + sigma[i] if o == "Adam" else 2 * (q + sigma[i]), "The r is missing"),
        (lambda o, i, q: -right_exponent(o, i, q), "signs are flipped"),
        (lambda o, i, q: 0, r"drop_exponent\('Adam', 'kaiming', 0.0\) returned 0"),
        (lambda o, i, q: "1", "should return a number"),
        (lambda o, i, q: None, "no answer yet"),
        (None, "no answer yet"),
        (3, "should be a function"),
    ]
    for fn, words in slips:
        with pytest.raises(Feedback, match=words):
            check_drop_exponent(fn)


def floor_task(seed=0, n=40, k=12, d=10):
    g = torch.Generator().manual_seed(seed)
    X, W0 = torch.randn(n, k, generator=g), torch.randn(d, k, generator=g)
    Y = X @ (W0 + torch.randn(d, k, generator=g)).T
    return X, Y, W0


def floor_by_hand(X, Y, W0, r):
    Q, R = torch.linalg.qr(X.double())
    target = Y.double() - X.double() @ W0.double().T
    s = torch.linalg.svdvals(Q.T @ target)
    return float((s[r:] ** 2).sum() / target.numel())


def test_rank_floor(capsys):
    X, Y, W0 = floor_task()
    r = 4
    right = floor_by_hand(X, Y, W0, r)
    check_rank_floor(right, X, Y, W0, r)
    check_rank_floor(torch.tensor(right), X, Y, W0, r)
    assert capsys.readouterr().out.count("✅ Correct") == 2
    # an independent route: the best rank-r fit by gradient descent reaches the floor and no lower
    B = torch.zeros(10, r, dtype=torch.float64, requires_grad=True)
    A = (0.1 * torch.randn(r, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).requires_grad_()
    opt = torch.optim.Adam([A, B], lr=0.05)
    for _ in range(3000):
        loss = ((X.double() @ (W0.double() + B @ A).T - Y.double()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert right <= loss.item() < right * 1.001
    target = Y.double() - X.double() @ W0.double().T
    C = torch.linalg.lstsq(X.double(), target).solution.T
    s_c, s_w = torch.linalg.svdvals(C), torch.linalg.svdvals(torch.linalg.qr(X.double())[0].T @ target)
    n = target.numel()
    for value, words in [(float((s_c[r:] ** 2).sum() / n), "through the data"),
                         (float((s_w[r:] ** 2).sum()), "divides by the number of entries"),
                         (float((s_w[r:] ** 2).sum() / n) ** 0.5, "root mean square"),
                         (float((s_w[r + 1:] ** 2).sum() / n), r"tail starts at S\[r\]"),
                         (float((s_w[r - 1:] ** 2).sum() / n), "leaves out the r values"),
                         (float((s_w[:r] ** 2).sum() / n), r"\*can\* fit"),
                         (float((target ** 2).mean()), "loss at the start"),
                         (right * 2, "is not the floor"), (None, "no answer yet"), ("0.5", "one number")]:
        with pytest.raises(Feedback, match=words):
            check_rank_floor(value, X, Y, W0, r)


# --------------------------------------------------------------------------- counting


def test_lora_counts():
    k, d, r = 1024, 4096, 16
    lora, base = r * (k + d), d * k + d
    check_lora_counts(lora, base + lora, k, d, r)
    check_lora_counts(lora, d * k + lora, k, d, r, bias=False)
    slips = [
        ((2 * r * k, base + lora), "`trainable_count` = 32768: that is 2·r·in_features"),
        ((2 * r * d, base + lora), "2·r·out_features"),
        ((r * k * d, base + lora), "r·in·out"),
        ((r * k, base + lora), "counts A only"),
        ((base + lora, base + lora), "frozen weight too"),
        ((lora + d, base + lora), "bias is frozen"),
        ((lora, base), "`total_count` = 4198400: that is the base layer alone"),
        ((lora, d * k + lora), "bias is missing"),
        ((lora, lora), "trainable part only"),
        ((lora, d * k), "frozen weight alone"),
        ((lora + 1, base + lora), "too large"),
        ((lora, base + lora - 5), "too small"),
        ((None, base + lora), "`trainable_count` has no answer yet"),
        ((lora, None), "`total_count` has no answer yet"),
    ]
    for (t, n), words in slips:
        with pytest.raises(Feedback, match=words):
            check_lora_counts(t, n, k, d, r)


# --------------------------------------------------------------------------- the fixed layer


class GoodLoRA(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.r, self.scaling, self.merged = base, r, alpha / r, False
        base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def delta(self):
        return self.scaling * self.lora_B @ self.lora_A

    def merge(self):
        self.base.weight.data += self.delta()
        self.merged = True

    def unmerge(self):
        self.base.weight.data -= self.delta()
        self.merged = False

    def forward(self, x):
        out = self.base(x)
        return out if self.merged else out + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


class MergeNoScaling(GoodLoRA):
    def delta(self):
        return self.lora_B @ self.lora_A


class MergeAlpha(GoodLoRA):
    def delta(self):
        return self.scaling * self.r * self.lora_B @ self.lora_A


class ForwardAlpha(GoodLoRA):
    def forward(self, x):
        out = self.base(x)
        return out if self.merged else out + self.scaling * self.r * (x @ self.lora_A.T @ self.lora_B.T)


class RandomB(GoodLoRA):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_B.data.normal_()


class NotFrozen(GoodLoRA):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        base.requires_grad_(True)


class DoubleAdd(GoodLoRA):
    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


class NoMerge(GoodLoRA):
    def merge(self):
        self.merged = True


class BadUnmerge(GoodLoRA):
    def unmerge(self):
        self.merged = False


class NoOpMerge(GoodLoRA):
    """merge() and unmerge() that do nothing at all: the forward keeps adding the update, so the output
    is right whether "merged" or not (this passed the check before it looked at the weight)."""

    def merge(self):
        pass

    def unmerge(self):
        pass


class ForwardIgnoresMerge(GoodLoRA):
    """The weight is merged, but forward keeps adding the update: ΔW counts twice."""

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


class MergeTwice(GoodLoRA):
    def merge(self):
        self.base.weight.data += 2 * self.delta()
        self.merged = True


class Transposed(GoodLoRA):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(torch.randn(base.in_features, r))
        self.lora_B = nn.Parameter(torch.zeros(r, base.out_features))


@pytest.mark.parametrize("cls, words", [
    (MergeNoScaling, "merge\\(\\) adds B @ A without the scaling"),
    (MergeAlpha, "merge\\(\\) adds B @ A scaled by alpha instead of alpha / r"),
    (ForwardAlpha, "forward adds the update scaled by alpha"),
    (RandomB, "B must start at zero"),
    (NotFrozen, "only lora_A and lora_B should be"),
    (DoubleAdd, "adds ΔW twice"),
    (NoMerge, "weight is unchanged"),
    (BadUnmerge, "does not restore"),
    (Transposed, "lora_A should be \\(r, in\\)"),
    (NoOpMerge, "weight is unchanged"),
    (ForwardIgnoresMerge, "adds ΔW twice: once in the weight and once more in forward"),
    (MergeTwice, "adds ΔW twice to the weight"),
    (None, "no answer yet"),
    (GoodLoRA(nn.Linear(2, 2), 1, 1.0), "should be a class"),
])
def test_lora_layer_bugs(cls, words):
    with pytest.raises(Feedback, match=words):
        check_lora_layer(cls)


def test_lora_layer_right(capsys):
    check_lora_layer(GoodLoRA)
    check_lora_layer(GoodLoRA, sizes=(7, 10, 5))     # the notebook's hidden case: another r
    assert "✅ Correct" in capsys.readouterr().out


@pytest.mark.parametrize("cls", [NoOpMerge, ForwardIgnoresMerge, MergeNoScaling])
def test_lora_layer_bugs_with_another_r(cls):
    with pytest.raises(Feedback):
        check_lora_layer(cls, sizes=(7, 10, 5))


# --------------------------------------------------------------------------- injection and adapters


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({n: nn.Linear(8, 8) for n in "qkvo"})
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 8))


def two_blocks():
    model = nn.Module()
    model.blocks = nn.ModuleList([Block(), Block()])
    return model


def test_target_modules():
    QKVO_1 = [f"blocks.1.attn.{p}" for p in "qkvo"]
    check_target_modules(["1.attn.q", "1.attn.k", "1.attn.v", "1.attn.o"], two_blocks, blocks=(1,))
    check_target_modules(QKVO_1, two_blocks, blocks=(1,))
    check_target_modules(["q", "k", "v", "o"], two_blocks, blocks=(0, 1))
    with pytest.raises(Feedback) as err:
        check_target_modules(["q", "k", "v", "o"], two_blocks, blocks=(1,))
    assert "also wraps ['blocks.0.attn.q'" in str(err.value) and "only the attention of blocks 1" in str(err.value)
    with pytest.raises(Feedback, match="misses .*blocks.1.attn.k.*every block"):
        check_target_modules(["blocks.1.attn.q", "blocks.1.attn.v"], two_blocks, blocks=(1,))
    with pytest.raises(Feedback, match="rejected.*matches no module.*blocks.0.attn.q"):
        check_target_modules(["q_proj", "v_proj"], two_blocks, blocks=(1,))
    with pytest.raises(Feedback, match="rejected.*ModuleDict"):
        check_target_modules(["attn"], two_blocks, blocks=(1,))
    with pytest.raises(Feedback, match="no answer yet"):
        check_target_modules(None, two_blocks, blocks=(1,))


def test_target_modules_check_holds_no_answer_in_its_arguments():
    """The exercise's test cell printed a pasteable `expected = [...]` list before; now the check builds it."""
    import inspect

    assert "expected" not in inspect.signature(check_target_modules).parameters


def test_adapter_bytes():
    model = two_blocks()
    apply_lora(model, ["q", "v"], r=2)
    numbers = 4 * 2 * (8 + 8)
    check_adapter_bytes(numbers * 4, model)
    total = sum(p.numel() for p in model.parameters())
    for value, words in [(numbers, "number of entries"), (total * 4, "whole model"),
                         (total, "parameter count"), (numbers * 2, "bfloat16"), (numbers * 8, "float64"),
                         (numbers * 4 + 100, "too large"), (None, "no answer yet")]:
        with pytest.raises(Feedback, match=words):
            check_adapter_bytes(value, model)


def test_dropout_placement():
    check_dropout_placement("lora_input")
    with pytest.raises(Feedback, match="frozen path"):
        check_dropout_placement("layer_input")
    with pytest.raises(Feedback, match="not one of the choices"):
        check_dropout_placement("everywhere")
