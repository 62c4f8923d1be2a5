"""lora_edu.fused: the fast LoRA path computes the same function and gradients as the readable one."""
from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:   # the Triton kernels run in Triton's interpreter on a CPU: it must be on before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lora_edu import fused  # noqa: E402
from lora_edu.fused import lora_linear  # noqa: E402


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
    with pytest.raises(TypeError, match="weight is torch.bfloat16 but x is torch.float32"):
        lora_linear(t["x"], t["W"].to(torch.bfloat16), t["b"], t["A"], t["B"], 2.0)
    with pytest.raises(TypeError, match="lora_A is torch.int64"):
        lora_linear(t["x"], t["W"], t["b"], t["A"].long(), t["B"], 2.0)


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


def lora_pair(device="cpu", dtype=torch.float32, dropout=0.0, rank_stabilized=False, bias=True, seed=0,
              adapter_dtype=None):
    from torch import nn

    from lora_edu.lora import LoRALinear

    torch.manual_seed(seed)
    base = nn.Linear(48, 40, bias=bias).to(device=device, dtype=dtype)
    ref = LoRALinear(base, r=6, alpha=12, dropout=dropout, rank_stabilized=rank_stabilized, impl="reference",
                     adapter_dtype=adapter_dtype)
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


@pytest.mark.parametrize("adapter_dtype", [None, torch.bfloat16])
def test_lora_linear_impls_agree_in_bfloat16(adapter_dtype):
    """A bf16 base, with float32 adapters (the default, PEFT's rule) or bf16 ones: both impls agree, and
    the output and x's gradient are bf16 while A's and B's gradients come back in the adapters' dtype."""
    ref, fused = lora_pair(dtype=torch.bfloat16, adapter_dtype=adapter_dtype)
    want = torch.float32 if adapter_dtype is None else adapter_dtype
    assert ref.lora_A.dtype == fused.lora_A.dtype == want
    x, g = torch.randn(64, 48, dtype=torch.bfloat16), torch.randn(64, 40, dtype=torch.bfloat16)
    dtypes = [torch.bfloat16, torch.bfloat16, want, want]   # out, dx, dA, dB
    for w, o, dtype in zip(layer_run(ref, x, g), layer_run(fused, x, g), dtypes):
        assert o.dtype == w.dtype == dtype and rel_err(o, w) < 1e-2


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
    """With dropout the two impls must draw the same mask, which CUDA's RNG does only for tensors of one
    dtype: the reference drops out the branch's input in the adapters' dtype (as PEFT does), the fused path
    in x's. So with dropout the half-precision cases use adapters of the base's dtype; float32 adapters
    on a half-precision base are compared without dropout (same function, another mask stream with it)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    adapter_dtype = dtype if dropout else None
    ref, fused = lora_pair(device="cuda", dtype=dtype, dropout=dropout, rank_stabilized=True,
                           adapter_dtype=adapter_dtype)
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


# --------------------------------------------------------------------------- every requires_grad combination


GRAD_COMBOS = [c for c in itertools.product([False, True], repeat=5) if any(c)]


def _combo_id(c):
    return "".join(name if on else "-" for name, on in zip(("x", "W", "b", "A", "B"), c))


@pytest.mark.parametrize("combo", GRAD_COMBOS, ids=_combo_id)
def test_every_requires_grad_combination(combo, monkeypatch):
    """Issue 13: with frozen adapters and a trainable W or bias, the backward raised
    AttributeError ('NoneType' object has no attribute 'dtype') before the fix."""
    monkeypatch.setenv("LORA_EDU_TRITON", "0")
    t = make(n=(2, 9), k=12, d=10, r=3)
    for key, on in zip(("x", "W", "b", "A", "B"), combo):
        t[key].requires_grad_(on)
    want, got = run(reference, t, 1.5), run(lora_linear, t, 1.5)
    assert len(got) == 1 + sum(combo)
    for w, o in zip(want, got):
        assert o.shape == w.shape and o.dtype == w.dtype
        assert rel_err(o, w) < 1e-5


def test_no_second_derivative():
    """The hand-written backward is not differentiable itself: asking for it fails loudly."""
    t = make(n=(6,), k=8, d=5, r=2)
    out = lora_linear(t["x"], t["W"], t["b"], t["A"], t["B"], 2.0)
    (gx,) = torch.autograd.grad(out, t["x"], t["g"], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|double backward"):
        torch.autograd.grad(gx.sum(), t["A"])


# --------------------------------------------------------------------------- adapters in another dtype


@pytest.mark.parametrize("base_dtype, adapter_dtype, tol", [
    (torch.bfloat16, torch.float32, 1e-2), (torch.float16, torch.float32, 1e-2), (torch.float32, torch.float64, 1e-6),
])
def test_adapters_in_another_dtype(base_dtype, adapter_dtype, tol):
    """PEFT keeps float32 adapters on a half-precision base: the fused layer computes in x's dtype and
    returns each gradient in its own tensor's dtype."""
    t = make(n=(32,), k=48, d=40, r=4, dtype=base_dtype)
    t["A"] = t["A"].detach().to(adapter_dtype).requires_grad_(True)
    t["B"] = t["B"].detach().to(adapter_dtype).requires_grad_(True)
    got = run(lora_linear, t, 2.0)
    assert got[0].dtype == base_dtype
    assert [g.dtype for g in got[1:]] == [base_dtype, base_dtype, adapter_dtype, adapter_dtype]   # x, b, A, B
    # the reference: the same function with the adapters cast to x's dtype (what autocast would do)
    leaves = [t["x"], t["b"], t["A"], t["B"]]
    out = reference(t["x"], t["W"], t["b"], t["A"].to(base_dtype), t["B"].to(base_dtype), 2.0)
    want = [out.detach()] + list(torch.autograd.grad(out, leaves, t["g"]))
    for w, o in zip(want, got):
        assert rel_err(o, w) < tol


# --------------------------------------------------------------------------- the Triton back-end


def _triton_cpu():
    kernels = fused._kernels()
    if kernels is None:
        pytest.skip("triton is not installed")
    if not CUDA and not kernels.interpreting():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: its interpreter is off")
    return kernels


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [dict(n=(70,), k=40, d=24, r=5), dict(n=(3, 11), k=24, d=72, r=16)])
@pytest.mark.parametrize("s", [2.0, 0.5])
def test_triton_backend_matches_the_reference(bias, shape, s, monkeypatch):
    """The Triton kernels (run by Triton's interpreter on a CPU) compute the reference's output and
    gradients: float32, odd sizes that leave partial tiles, r below the 16-wide tile and r = 16."""
    _triton_cpu()
    monkeypatch.setenv("LORA_EDU_TRITON", "1")
    t = make(**shape, bias=bias, train_W=True)
    assert fused.choose_backend(t["x"], shape["k"], shape["d"]) == "triton"
    for w, o in zip(run(reference, t, s), run(lora_linear, t, s)):
        assert o.shape == w.shape and o.dtype == w.dtype
        assert rel_err(o, w) < 1e-5


@pytest.mark.parametrize("combo", [(True, False, False, False, True), (False, False, False, True, False),
                                   (True, False, False, True, False), (False, True, True, False, False)],
                         ids=_combo_id)
def test_triton_backend_partial_gradients(combo, monkeypatch):
    _triton_cpu()
    monkeypatch.setenv("LORA_EDU_TRITON", "1")
    t = make(n=(40,), k=24, d=20, r=4)
    for key, on in zip(("x", "W", "b", "A", "B"), combo):
        t[key].requires_grad_(on)
    for w, o in zip(run(reference, t, 2.0), run(lora_linear, t, 2.0)):
        assert rel_err(o, w) < 1e-5


def test_triton_backend_dropout_input_and_strides(monkeypatch):
    """A separate LoRA input (dropout), and an x that is not contiguous (a transposed view)."""
    _triton_cpu()
    monkeypatch.setenv("LORA_EDU_TRITON", "1")
    t = make(n=(50,), k=32, d=24, r=4)
    t["x"] = t["x"].detach().T.contiguous().T.requires_grad_(True)          # same values, column-major
    assert t["x"].stride(-1) != 1
    mask = (torch.rand(50, 32, generator=torch.Generator().manual_seed(0)) > 0.2).float() / 0.8
    want = run(reference, t, 2.0, xl=t["x"] * mask)
    got = run(lora_linear, t, 2.0, xl=t["x"] * mask)
    for w, o in zip(want, got):
        assert rel_err(o, w) < 1e-5


def test_triton_backend_half_precision_and_fp32_adapters(monkeypatch):
    """bfloat16 activations with float32 adapters (PEFT's default) through the kernels. (Triton's
    interpreter truncates where the GPU rounds, hence 2e-2; the GPU test holds it to 1e-2.)"""
    _triton_cpu()
    monkeypatch.setenv("LORA_EDU_TRITON", "1")
    t = make(n=(64,), k=48, d=32, r=8, dtype=torch.bfloat16)
    t["A"] = t["A"].detach().float().requires_grad_(True)
    t["B"] = t["B"].detach().float().requires_grad_(True)
    got = run(lora_linear, t, 2.0)
    assert [g.dtype for g in got] == [torch.bfloat16] * 3 + [torch.float32] * 2
    leaves = [t["x"], t["b"], t["A"], t["B"]]
    out = reference(t["x"], t["W"], t["b"], t["A"].to(torch.bfloat16), t["B"].to(torch.bfloat16), 2.0)
    want = [out.detach()] + list(torch.autograd.grad(out, leaves, t["g"]))
    for w, o in zip(want, got):
        assert rel_err(o, w) < 2e-2


def test_backend_rule(monkeypatch):
    x = torch.randn(8, 16)
    monkeypatch.setenv("LORA_EDU_TRITON", "0")
    assert fused.choose_backend(x, 16, 16) == "torch"
    monkeypatch.delenv("LORA_EDU_TRITON")
    assert fused.choose_backend(x, 16, 16) == "torch"                 # the default: stock torch (measured)
    monkeypatch.setenv("LORA_EDU_TRITON", "1")
    assert fused.choose_backend(torch.empty(0, 16), 16, 16) == "torch"   # nothing to do
    with pytest.raises(ValueError, match="backend must be"):
        lora_linear(x, torch.randn(16, 16), None, torch.randn(2, 16), torch.randn(16, 2), 1.0, backend="cuda")
    w = torch.empty(16, 16)
    assert fused.use_fused(x, w, 4) is False                   # LoRALinear(impl="auto") on a CPU: the reference


# --------------------------------------------------------------------------- the Triton back-end on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("adapter_dtype", [None, torch.float32])
@pytest.mark.parametrize("dropout", [False, True])
def test_cuda_triton_backend(dtype, adapter_dtype, dropout, monkeypatch):
    monkeypatch.setenv("LORA_EDU_TRITON", "1")
    t = make(device="cuda", dtype=dtype, n=(4, 300), k=512, d=384, r=8, train_W=False)
    if adapter_dtype is not None:
        t["A"] = t["A"].detach().to(adapter_dtype).requires_grad_(True)
        t["B"] = t["B"].detach().to(adapter_dtype).requires_grad_(True)
    assert fused.choose_backend(t["x"], 512, 384) == "triton"
    mask = (torch.rand_like(t["x"]) > 0.1).to(dtype) / 0.9

    def lora_input():                          # a fresh dropout(x) for each run (its graph is freed after use)
        return t["x"] * mask if dropout else None

    leaves = [v for k, v in t.items() if k != "g" and v is not None and v.requires_grad]
    out = reference(t["x"], t["W"], t["b"], t["A"].to(dtype), t["B"].to(dtype), 2.0, lora_input())
    want = [out.detach()] + list(torch.autograd.grad(out, leaves, t["g"]))
    got = run(lora_linear, t, 2.0, xl=lora_input())
    for w, o in zip(want, got):
        assert o.dtype == w.dtype and rel_err(o, w) < 1e-2


@pytest.mark.gpu
def test_cuda_triton_backend_under_autocast_and_in_a_cuda_graph(monkeypatch):
    """Float32 weights and adapters under bf16 autocast, the Triton back-end captured in a CUDA graph:
    replays give the eager reference's output and gradients."""
    monkeypatch.setenv("LORA_EDU_TRITON", "1")
    t = make(device="cuda", n=(256,), k=256, d=256, r=8)
    leaves = [t["x"], t["A"], t["B"]]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = reference(t["x"], t["W"], t["b"], t["A"], t["B"], 2.0)
    want = [out.detach()] + list(torch.autograd.grad(out, leaves, t["g"]))
    # fresh leaves for the graph (autograd nodes made on the default stream must not be reused there)
    x, A, B = (v.detach().clone().requires_grad_(True) for v in leaves)
    W, b, g = t["W"], t["b"], t["g"]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = lora_linear(x, W, b, A, B, 2.0)
        return [y] + list(torch.autograd.grad(y, [x, A, B], g))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):                     # warm up (compiles the kernels) outside the capture
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    for w, o in zip(want, static):
        assert o.dtype == w.dtype and rel_err(o, w) < 1e-2


@pytest.mark.gpu
def test_cuda_auto_rule():
    """impl="auto" on a GPU follows the measured rule (benchmarks/NOTES.md): the fused path for every CUDA
    input, small or large, since it was as fast or faster at every measured shape; the reference on a CPU."""
    from lora_edu.lora import LoRALinear

    x = torch.randn(64, 128, device="cuda")
    w = torch.empty(128, 128, device="cuda")
    assert fused.use_fused(x, w, 8) is True
    assert fused.use_fused(x.cpu(), w.cpu(), 8) is False
    assert fused.use_fused(torch.empty(8192, 4096, device="cuda", dtype=torch.bfloat16),
                           torch.empty(4096, 4096, device="cuda", dtype=torch.bfloat16), 8) is True
    auto = LoRALinear(torch.nn.Linear(128, 128).cuda(), r=8)
    with torch.no_grad():
        auto.lora_B.normal_()
    import copy
    fast, ref = copy.deepcopy(auto), copy.deepcopy(auto)
    fast.impl, ref.impl = "fused", "reference"
    assert torch.equal(auto(x), fast(x))          # auto took the fused path: bit for bit its output
    torch.backends.cuda.matmul.allow_tf32 = False
    assert rel_err(auto(x), ref(x)) < 1e-5        # and the reference's function
