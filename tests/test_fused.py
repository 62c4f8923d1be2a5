"""lora_edu.fused: the fast LoRA path computes the same function and gradients as the readable one."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lora_edu.fused import lora_linear

CUDA = torch.cuda.is_available()


def reference(x, W, b, A, B, s, xl=None):
    """The textbook LoRA layer, op by op (what PEFT does): base(x) + (dropout(x) @ A.T @ B.T) * s."""
    xl = x if xl is None else xl
    return F.linear(x, W, b) + (xl @ A.T @ B.T) * s


def make(device="cpu", dtype=torch.float32, n=(3, 17), k=24, d=40, r=4, bias=True, train_W=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, grad=True):
        t = (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_(grad)

    return dict(x=rnd(*n, k), W=rnd(d, k, scale=k ** -0.5, grad=train_W), b=rnd(d, grad=True) if bias else None,
                A=rnd(r, k, scale=k ** -0.5), B=rnd(d, r, scale=0.5), g=rnd(*n, d, grad=False))


def run(fn, t, s, xl=None):
    """Output and gradients of every tensor that requires one."""
    leaves = [v for key, v in t.items() if key != "g" and v is not None and v.requires_grad]
    out = fn(t["x"], t["W"], t["b"], t["A"], t["B"], s, xl) if fn is reference else \
        fn(t["x"], t["W"], t["b"], t["A"], t["B"], s, lora_input=xl)
    grads = torch.autograd.grad(out, leaves, t["g"])
    return [out.detach()] + list(grads)


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("train_W", [False, True])
@pytest.mark.parametrize("s", [2.0, 1.0, 16 / math.sqrt(8)])   # alpha/r, alpha = r, rsLoRA's alpha/sqrt(r)
def test_same_output_and_gradients_float32(bias, train_W, s):
    t = make(bias=bias, train_W=train_W)
    want, got = run(reference, t, s), run(lora_linear, t, s)
    assert len(want) == len(got) == 4 + bias + train_W
    for w, o in zip(want, got):
        assert o.shape == w.shape and o.dtype == w.dtype
        assert rel_err(o, w) < 1e-5


def test_same_in_bfloat16_within_1e_2():
    t = make(dtype=torch.bfloat16, n=(64,), k=96, d=80, r=8)
    for w, o in zip(run(reference, t, 2.0), run(lora_linear, t, 2.0)):
        assert o.dtype == torch.bfloat16
        assert rel_err(o, w) < 1e-2


def test_with_dropout_on_the_lora_input():
    t = make()
    torch.manual_seed(3)
    mask = (torch.rand_like(t["x"]) > 0.3).to(t["x"].dtype) / 0.7
    want = run(reference, t, 2.0, xl=t["x"] * mask)
    got = run(lora_linear, t, 2.0, xl=t["x"] * mask)
    for w, o in zip(want, got):
        assert rel_err(o, w) < 1e-5
    # and the dropped-out input really changes the result (the test would notice an ignored mask)
    assert rel_err(run(lora_linear, t, 2.0)[0], want[0]) > 1e-3


def test_gradcheck_float64():
    t = make(dtype=torch.float64, n=(5,), k=6, d=7, r=2, train_W=True)
    xl = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W, b, A, B: lora_linear(x, W, b, A, B, 1.5), (t["x"], t["W"], t["b"], t["A"], t["B"]))
    assert torch.autograd.gradcheck(lambda x, xl, A, B: lora_linear(x, t["W"], None, A, B, 0.5, lora_input=xl),
                                    (t["x"], xl, t["A"], t["B"]))


def test_autocast_matches_the_reference_under_autocast():
    t = make(n=(32,), k=64, d=48, r=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = run(reference, t, 2.0), run(lora_linear, t, 2.0)
    assert got[0].dtype == torch.bfloat16                 # computed in the autocast dtype ...
    assert [g.dtype for g in got[1:]] == [torch.float32] * 4  # ... gradients in each input's own dtype
    for w, o in zip(want, got):
        assert rel_err(o, w) < 1e-2


def test_inputs_that_need_no_gradient():
    t = make()
    t["x"].requires_grad_(False)
    t["b"].requires_grad_(False)
    for w, o in zip(run(reference, t, 2.0), run(lora_linear, t, 2.0)):
        assert rel_err(o, w) < 1e-5


def test_saves_only_x_and_the_small_product():
    """What autograd keeps for the backward pass: x (N, k), x·Aᵀ (N, r) and the tiny scaling·B — no (N, d) tensor."""
    t = make(n=(256,), k=32, d=48, r=4, bias=False)
    params = {t[k].untyped_storage().data_ptr() for k in ("W", "A", "B")}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        run(lora_linear, t, 2.0)
    new = {x.untyped_storage().data_ptr(): tuple(x.shape) for x in saved
           if x.untyped_storage().data_ptr() not in params}
    assert sorted(new.values()) == [(48, 4), (256, 4), (256, 32)]   # scaling * B, x·Aᵀ, x


@pytest.mark.parametrize("bad, message", [
    (dict(W=torch.zeros(40, 23)), "weight has shape"),
    (dict(A=torch.zeros(4, 23)), "lora_A has shape"),
    (dict(B=torch.zeros(4, 40)), "lora_B has shape"),
    (dict(b=torch.zeros(39)), "bias has shape"),
])
def test_shape_errors_name_the_argument(bad, message):
    t = make(bias=True) | bad
    with pytest.raises(ValueError, match=message):
        lora_linear(t["x"], t["W"], t["b"], t["A"], t["B"], 2.0)


def test_lora_input_shape_and_dtype_errors():
    t = make()
    with pytest.raises(ValueError, match="lora_input has shape"):
        lora_linear(t["x"], t["W"], t["b"], t["A"], t["B"], 2.0, lora_input=t["x"][:, :3])
    with pytest.raises(TypeError, match="lora_A is torch.bfloat16 but x is torch.float32"):
        lora_linear(t["x"], t["W"], t["b"], t["A"].to(torch.bfloat16), t["B"], 2.0)


# --------------------------------------------------------------------------- the same on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("bias", [False, True])
def test_cuda_same_output_and_gradients(dtype, tol, bias):
    if dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
    t = make(device="cuda", dtype=dtype, n=(4, 256), k=512, d=384, r=8, bias=bias)
    for w, o in zip(run(reference, t, 2.0), run(lora_linear, t, 2.0)):
        assert o.device.type == "cuda" and o.dtype == dtype
        assert rel_err(o, w) < tol


@pytest.mark.gpu
def test_cuda_dropout_and_autocast():
    t = make(device="cuda", n=(512,), k=256, d=256, r=8)
    mask = (torch.rand_like(t["x"]) > 0.1).float() / 0.9
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = run(reference, t, 2.0, xl=t["x"] * mask)
        got = run(lora_linear, t, 2.0, xl=t["x"] * mask)
    assert got[0].dtype == torch.bfloat16
    for w, o in zip(want, got):
        assert rel_err(o, w) < 1e-2


# --------------------------------------------------------------------------- through LoRALinear(impl=...)


def lora_pair(device="cpu", dtype=torch.float32, dropout=0.0, rank_stabilized=False, bias=True, seed=0):
    from torch import nn

    from lora_edu.lora import LoRALinear

    torch.manual_seed(seed)
    base = nn.Linear(48, 40, bias=bias).to(device=device, dtype=dtype)
    ref = LoRALinear(base, r=6, alpha=12, dropout=dropout, rank_stabilized=rank_stabilized, impl="reference")
    with torch.no_grad():
        ref.lora_B.normal_(std=0.5)        # B = 0 would hide any mistake in the LoRA branch
    import copy
    fused = copy.deepcopy(ref)
    fused.impl = "fused"
    return ref, fused


def layer_run(layer, x, g, seed=0):
    """Output and the gradients of x, A, B (same dropout mask for both layers via the seed)."""
    x = x.detach().requires_grad_(True)
    torch.manual_seed(seed)
    out = layer(x)
    grads = torch.autograd.grad(out, [x, layer.lora_A, layer.lora_B], g)
    return [out.detach()] + list(grads)


@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("rank_stabilized", [False, True])
def test_lora_linear_impls_agree(dropout, rank_stabilized):
    ref, fused = lora_pair(dropout=dropout, rank_stabilized=rank_stabilized)
    x, g = torch.randn(2, 9, 48), torch.randn(2, 9, 40)
    for w, o in zip(layer_run(ref, x, g), layer_run(fused, x, g)):
        assert rel_err(o, w) < 1e-5
    if dropout:      # dropout really acts on both (a different mask gives a different output)
        assert rel_err(layer_run(fused, x, g, seed=1)[0], layer_run(ref, x, g)[0]) > 1e-4
    ref.eval(), fused.eval()   # eval mode: no dropout, same function again
    for w, o in zip(layer_run(ref, x, g), layer_run(fused, x, g)):
        assert rel_err(o, w) < 1e-5


def test_lora_linear_impls_agree_in_bfloat16():
    ref, fused = lora_pair(dtype=torch.bfloat16)
    x, g = torch.randn(64, 48, dtype=torch.bfloat16), torch.randn(64, 40, dtype=torch.bfloat16)
    for w, o in zip(layer_run(ref, x, g), layer_run(fused, x, g)):
        assert o.dtype == torch.bfloat16 and rel_err(o, w) < 1e-2


def test_merged_layer_is_the_same_for_both_impls():
    ref, fused = lora_pair(bias=False)
    x = torch.randn(7, 48)
    with torch.no_grad():
        unmerged = fused(x)
        fused.merge()
        ref.merge()
        assert rel_err(fused(x), unmerged) < 1e-5
        assert torch.equal(fused(x), ref(x))          # merged: one plain matmul whatever impl says


def test_auto_is_the_reference_on_cpu_and_impl_is_checked():
    from lora_edu.lora import LoRALinear

    ref, fused = lora_pair()
    auto = LoRALinear(ref.base, r=6, alpha=12)
    assert auto.impl == "auto"
    with torch.no_grad():
        auto.lora_A.copy_(ref.lora_A)
        auto.lora_B.copy_(ref.lora_B)
    x = torch.randn(5, 48)
    assert torch.equal(auto(x), ref(x))
    with pytest.raises(ValueError, match="impl must be one of"):
        fused.impl = "fast"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_cuda_lora_linear_impls_agree(dtype, tol, dropout):
    torch.backends.cuda.matmul.allow_tf32 = False
    ref, fused = lora_pair(device="cuda", dtype=dtype, dropout=dropout, rank_stabilized=True)
    x = torch.randn(3, 100, 48, device="cuda", dtype=dtype)
    g = torch.randn(3, 100, 40, device="cuda", dtype=dtype)
    for w, o in zip(layer_run(ref, x, g), layer_run(fused, x, g)):
        assert rel_err(o, w) < tol
    fused.eval()                               # no dropout: merged and unmerged compute the same
    with torch.no_grad():
        unmerged = fused(x)
        fused.merge()
        assert rel_err(fused(x), unmerged) < 10 * tol


@pytest.mark.gpu
def test_cuda_autocast_model_step_matches_reference():
    """A whole transformer step under bf16 autocast: the fused and the reference LoRA agree."""
    import copy

    from lora_edu.lora import apply_lora
    from lora_edu.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig.gpt2_small(n_layers=2, d_model=128, n_heads=4, d_mlp=512, vocab_size=300, max_seq_len=64)
    model = Transformer(cfg).cuda()
    ids = torch.randint(0, 300, (4, 64), device="cuda")
    outs = []
    for impl in ("reference", "fused"):
        m = copy.deepcopy(model)
        apply_lora(m, ["q_proj", "v_proj"], r=8, alpha=16, impl=impl)
        torch.manual_seed(1)
        for p in m.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(ids).float().flatten(0, 1), ids.flatten())
        loss.backward()
        outs.append([loss.detach()] + [p.grad for p in m.parameters() if p.requires_grad])
    for w, o in zip(*outs):
        assert rel_err(o, w) < 2e-2
