"""lora_edu.lora: the LoRA layer against its definition and against PEFT's LoRA layer.

CPU tests run everywhere; the `gpu` ones repeat the core properties on CUDA in float32 and bfloat16
(`pytest -m gpu tests/test_lora.py` on a machine with a GPU).
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from lora_edu.lora import (LoRALinear, apply_lora, count_parameters, load_adapter, load_lora_state_dict,
                           lora_state_dict, merge_lora, save_adapter)

INITS = ["kaiming", "gaussian", "pissa"]


def make_base(in_f=12, out_f=9, bias=True, dtype=torch.float32, device="cpu", seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias).to(device=device, dtype=dtype)


def randomize(layer: LoRALinear, seed=1, size=0.3):
    """Give B (and A) random values, as after some training, so ΔW is not zero (but smaller than W)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.copy_(size * torch.randn(layer.lora_A.shape, generator=g))
        layer.lora_B.copy_(size * torch.randn(layer.lora_B.shape, generator=g))
    return layer


def reference_forward(x, W, b, A, B, scaling):
    """The definition, written out independently (float64)."""
    x, W, A, B = (t.double() for t in (x, W, A, B))
    out = x @ W.T + scaling * (x @ A.T @ B.T)
    return out if b is None else out + b.double()


class Tiny(nn.Module):
    """A two-layer model with a nested name, for apply_lora and PEFT."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.attn = nn.ModuleDict({"q": nn.Linear(16, 16), "v": nn.Linear(16, 16, bias=False)})
        self.head = nn.Linear(16, 3)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        h = self.norm(self.encoder(x))
        h = h + self.attn["q"](h) * torch.sigmoid(self.attn["v"](h))
        return self.head(h)


# --------------------------------------------------------------------------- the layer itself


def test_shapes_dtype_scaling_and_defaults():
    base = make_base(12, 9)
    layer = LoRALinear(base, r=3)
    assert layer.lora_A.shape == (3, 12) and layer.lora_B.shape == (9, 3)
    assert isinstance(layer.lora_A, nn.Parameter) and isinstance(layer.lora_B, nn.Parameter)
    assert layer.alpha == 3 and layer.scaling == 1.0 and layer.merged is False
    assert LoRALinear(make_base(), r=4, alpha=16).scaling == 4.0
    assert LoRALinear(make_base(), r=4, alpha=16, rank_stabilized=True).scaling == 8.0
    assert math.isclose(LoRALinear(make_base(), r=4, rank_stabilized=True).scaling, 2.0)  # alpha = r
    assert layer.base is base and not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.delta_weight().shape == (9, 12)


@pytest.mark.parametrize("init", INITS)
def test_output_equals_base_at_init(init):
    base = make_base()
    x = torch.randn(5, 12)
    expected = base(x)
    layer = LoRALinear(copy.deepcopy(base), r=4, alpha=8, init=init)
    if init == "pissa":
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(layer(x), expected)
        assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0


def test_forward_matches_the_definition_and_batches_any_leading_dims():
    layer = randomize(LoRALinear(make_base(), r=4, alpha=6))
    x = torch.randn(2, 3, 12)
    expected = reference_forward(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, 1.5)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    dW = (layer.scaling * layer.lora_B.double() @ layer.lora_A.double())
    torch.testing.assert_close(layer.delta_weight().double(), dW, rtol=1e-6, atol=1e-6)
    assert torch.linalg.matrix_rank(layer.delta_weight()) == 4


def test_init_distributions():
    torch.manual_seed(0)
    kaiming = LoRALinear(make_base(400, 300), r=64, init="kaiming").lora_A
    bound = 1 / math.sqrt(400)  # Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))
    assert kaiming.abs().max() <= bound and kaiming.abs().max() > 0.95 * bound
    assert abs(kaiming.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    gaussian = LoRALinear(make_base(400, 300), r=64, init="gaussian").lora_A
    assert abs(gaussian.std().item() - 1 / 64) < 0.02 / 64 and abs(gaussian.mean().item()) < 0.01 / 64


def test_pissa_holds_the_top_singular_triplets_and_leaves_the_residual():
    base = make_base(20, 15)
    W0 = base.weight.detach().clone().double()
    layer = LoRALinear(base, r=3, alpha=6, init="pissa")
    U, S, Vh = torch.linalg.svd(W0)
    top = (U[:, :3] * S[:3]) @ Vh[:3]
    torch.testing.assert_close(layer.delta_weight().double(), top, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.base.weight.double(), W0 - top, rtol=1e-5, atol=1e-5)
    # the residual's singular values are W0's from the (r+1)-th on
    rest = torch.linalg.svdvals(layer.base.weight.double())
    torch.testing.assert_close(rest[:12], S[3:], rtol=1e-4, atol=1e-5)
    # A and B share each singular value's root: scaling * B @ A, with B's columns orthogonal
    gram = layer.lora_B.T.double() @ layer.lora_B.double()
    torch.testing.assert_close(gram, torch.diag(torch.diag(gram)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("rs", [False, True])
def test_merge_equals_unmerged_and_unmerge_restores(init, rs):
    base = make_base()
    layer = randomize(LoRALinear(base, r=4, alpha=8, init=init, rank_stabilized=rs))
    layer.eval()
    W_before = layer.base.weight.detach().clone()
    x = torch.randn(6, 12)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.base(x), unmerged, rtol=1e-5, atol=1e-5)  # merged = base only
    layer.unmerge()
    assert not layer.merged
    rel = (layer.base.weight - W_before).norm() / W_before.norm()
    assert rel <= 1e-6
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-6, atol=1e-6)


def test_merging_twice_and_unmerging_unmerged_are_errors():
    layer = randomize(LoRALinear(make_base(), r=2))
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()
    layer.merge()
    W = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base.weight, W)  # nothing was added a second time
    assert layer.merged


def test_merged_forward_is_base_only_even_if_adapter_changes():
    layer = randomize(LoRALinear(make_base(), r=2))
    layer.merge()
    x = torch.randn(3, 12)
    with torch.no_grad():
        layer.lora_B.mul_(100)  # a merged layer must not add the adapter again
    assert torch.equal(layer(x), layer.base(x))


def test_only_A_and_B_get_gradients():
    layer = randomize(LoRALinear(make_base(), r=3, alpha=3))
    x = torch.randn(4, 12)
    layer(x).square().sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}


def test_gradients_match_autograd_on_the_definition():
    layer = randomize(LoRALinear(make_base(bias=False), r=3, alpha=5))
    x = torch.randn(4, 12)
    layer(x).sum().backward()
    A = layer.lora_A.detach().double().requires_grad_()
    B = layer.lora_B.detach().double().requires_grad_()
    reference_forward(x, layer.base.weight.detach(), None, A, B, layer.scaling).sum().backward()
    torch.testing.assert_close(layer.lora_A.grad.double(), A.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.lora_B.grad.double(), B.grad, rtol=1e-5, atol=1e-5)


def test_dropout_acts_on_the_lora_input_only():
    layer = LoRALinear(make_base(), r=3, dropout=0.5)  # B = 0: the base path must be untouched
    layer.train()
    x = torch.randn(50, 12)
    assert torch.equal(layer(x), layer.base(x))
    randomize(layer)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    mask_x = nn.functional.dropout(x, 0.5, training=True)
    expected = reference_forward(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, 1.0) \
        + layer.scaling * (mask_x - x).double() @ layer.lora_A.T.double() @ layer.lora_B.T.double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    layer.eval()  # eval: dropout is the identity, so merging is exact
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("adapter_dtype", [None, torch.bfloat16])
def test_bfloat16_layer_and_merge_in_float32(adapter_dtype):
    base = make_base(32, 24, dtype=torch.bfloat16)
    layer = randomize(LoRALinear(base, r=4, alpha=8, adapter_dtype=adapter_dtype))
    expected_dtype = torch.float32 if adapter_dtype is None else torch.bfloat16
    assert layer.lora_A.dtype == expected_dtype and layer.lora_B.dtype == expected_dtype
    W0 = layer.base.weight.detach().clone()
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    expected = reference_forward(x, W0, layer.base.bias, layer.lora_A, layer.lora_B, layer.scaling)
    torch.testing.assert_close(out.double(), expected, rtol=3e-2, atol=3e-2)
    # the merge is one rounding of the float32 sum, not a sum of rounded bf16 terms
    exact = W0.float() + layer.scaling * (layer.lora_B.float() @ layer.lora_A.float())
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    assert torch.equal(layer.base.weight, exact.to(torch.bfloat16))
    layer.unmerge()
    rel = (layer.base.weight.float() - W0.float()).norm() / W0.float().norm()
    assert rel < 1e-2


def _ulp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` numbers at each entry of ``t`` (a float64 tensor), from frexp's exponent."""
    _, exponent = torch.frexp(t.double())
    return torch.ldexp(torch.full_like(t.double(), torch.finfo(dtype).eps), exponent - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unmerge_error_is_half_an_ulp_of_the_merged_entry_plus_half_of_its_own(dtype):
    """What unmerge()'s docstring promises (it said "at most an ulp or so" before: entries near zero come back
    many of their own ulps off, because the merged entry W0 + ΔW lives in a larger binade)."""
    torch.manual_seed(0)
    layer = randomize(LoRALinear(nn.Linear(256, 256).to(dtype), r=8, alpha=16), seed=0, size=0.01)
    W0 = layer.base.weight.detach().clone()
    merged = W0.double() + layer.delta_weight().detach().double()
    layer.merge()
    layer.unmerge()
    error = (layer.base.weight.double() - W0.double()).abs()
    assert (error <= 0.5 * _ulp(merged, dtype) + 0.5 * _ulp(W0.double(), dtype)).all()
    own = error / _ulp(W0.double(), dtype)
    assert own.max() > 4                       # "one ulp off" would be false: tiny entries move many of theirs
    assert (error == 0).float().mean() > 0.9   # most entries come back exact


@pytest.mark.parametrize("init", INITS)
def test_bfloat16_output_equals_base_at_init(init):
    base = make_base(32, 24, dtype=torch.bfloat16)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    expected = base(x)
    layer = LoRALinear(copy.deepcopy(base), r=4, init=init)
    if init == "pissa":
        torch.testing.assert_close(layer(x), expected, rtol=3e-2, atol=3e-2)
    else:
        assert torch.equal(layer(x), expected)


def test_float64_layer_keeps_float64():
    layer = randomize(LoRALinear(make_base(dtype=torch.float64), r=2))
    W0 = layer.base.weight.detach().clone()
    layer.merge()
    layer.unmerge()
    assert layer.base.weight.dtype == torch.float64
    assert (layer.base.weight - W0).abs().max() < 1e-13


def test_meta_device_counts_without_memory():
    layer = LoRALinear(nn.Linear(5000, 10000, bias=False, device="meta"), r=8)
    assert layer.lora_A.is_meta and layer.lora_A.shape == (8, 5000)
    assert count_parameters(layer) == (8 * (5000 + 10000), 5000 * 10000 + 8 * (5000 + 10000))
    with pytest.raises(ValueError, match="meta device"):
        LoRALinear(nn.Linear(50, 100, device="meta"), r=2, init="pissa")


def test_meta_layer_materialised_with_to_empty_is_initialisable():
    """torch's recipe for a layer built without memory: to_empty(), then reset_parameters()."""
    layer = LoRALinear(nn.Linear(40, 30, device="meta"), r=4)
    layer.to_empty(device="cpu")
    with torch.no_grad():                       # to_empty leaves garbage: fill it as torch modules do
        layer.lora_A.fill_(float("nan"))
        layer.lora_B.fill_(float("nan"))
    layer.base.reset_parameters()
    layer.reset_parameters()
    bound = 1 / math.sqrt(40)
    assert torch.isfinite(layer.lora_A).all() and 0 < layer.lora_A.abs().max() <= bound
    assert torch.count_nonzero(layer.lora_B) == 0
    x = torch.randn(3, 40)
    assert torch.equal(layer(x), layer.base(x))
    gaussian = LoRALinear(nn.Linear(40, 30, device="meta"), r=4, init="gaussian").to_empty(device="cpu")
    gaussian.reset_parameters()
    assert torch.isfinite(gaussian.lora_A).all() and torch.count_nonzero(gaussian.lora_B) == 0


def test_reset_parameters_refuses_merged_and_pissa_layers():
    layer = randomize(LoRALinear(make_base(), r=2))
    layer.merge()
    with pytest.raises(ValueError, match="unmerge\\(\\) first"):
        layer.reset_parameters()
    with pytest.raises(ValueError, match="pissa.*cannot be reset"):
        LoRALinear(make_base(), r=2, init="pissa").reset_parameters()


# --------------------------------------------------------------------------- scaling and merge state


def test_scaling_is_read_only_and_follows_alpha_and_rank_stabilized():
    layer = LoRALinear(make_base(), r=4, alpha=8)
    assert layer.scaling == 2.0
    with pytest.raises(AttributeError, match="scaling is read-only.*layer.alpha = s \\* r"):
        layer.scaling = 5.0
    assert layer.scaling == 2.0
    layer.alpha = 20                      # a new alpha gives a new scaling (it used to stay stale)
    assert layer.scaling == 5.0
    layer.rank_stabilized = True
    assert layer.scaling == 10.0
    layer.alpha = None                    # None means alpha = r, as in the constructor
    assert layer.alpha == 4 and layer.scaling == 2.0
    with pytest.raises(ValueError, match="alpha must be a positive"):
        layer.alpha = -1
    with pytest.raises(TypeError, match="rank_stabilized must be True or False"):
        layer.rank_stabilized = 1


def test_alpha_cannot_change_while_merged():
    layer = randomize(LoRALinear(make_base(), r=4, alpha=8))
    layer.merge()
    for name, value in (("alpha", 16.0), ("rank_stabilized", True)):
        with pytest.raises(ValueError, match=f"cannot change {name} while the layer is merged"):
            setattr(layer, name, value)
    assert layer.alpha == 8.0 and layer.rank_stabilized is False


def test_unmerge_subtracts_what_merge_added_even_if_the_adapter_changed():
    layer = randomize(LoRALinear(make_base(), r=3, alpha=6))
    W0 = layer.base.weight.detach().clone()
    layer.merge()
    with torch.no_grad():                 # e.g. an adapter loaded or edited by hand while merged
        layer.lora_B.mul_(10)
        layer.lora_A.add_(1)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, rtol=1e-6, atol=1e-6)
    assert layer.merged is False and layer._merged_A is None


def test_merge_record_is_not_in_the_state_dict_and_moves_with_the_layer():
    layer = randomize(LoRALinear(make_base(), r=2))
    keys = set(layer.state_dict())
    layer.merge()
    assert set(layer.state_dict()) == keys == {"lora_A", "lora_B", "base.weight", "base.bias"}
    layer.double()                        # the recorded A and B follow .to() like the weights
    assert layer._merged_A.dtype == torch.float64
    layer.unmerge()


def test_weight_and_bias_forward_to_the_base_like_peft():
    base = make_base()
    layer = LoRALinear(base, r=2)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert LoRALinear(make_base(bias=False), r=2).bias is None
    assert "weight" not in dict(layer.named_parameters())   # not a second parameter: counted once
    assert count_parameters(layer)[1] == count_parameters(base)[1] + 2 * (12 + 9)


# --------------------------------------------------------------------------- adapter dtype


@pytest.mark.parametrize("base_dtype, adapter_dtype, expected", [
    (torch.bfloat16, None, torch.float32), (torch.float16, None, torch.float32),
    (torch.float32, None, torch.float32), (torch.float64, None, torch.float64),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16), (torch.float32, torch.float64, torch.float64),
])
def test_adapter_dtype_rule(base_dtype, adapter_dtype, expected):
    layer = LoRALinear(make_base(dtype=base_dtype), r=2, adapter_dtype=adapter_dtype)
    assert layer.lora_A.dtype == expected and layer.lora_B.dtype == expected
    assert layer.base.weight.dtype == base_dtype


@pytest.mark.parametrize("bad", [torch.int32, "float32", 32])
def test_bad_adapter_dtype(bad):
    with pytest.raises(TypeError, match="adapter_dtype must be a floating-point torch.dtype"):
        LoRALinear(make_base(), r=2, adapter_dtype=bad)


def adam_step(layer: LoRALinear, x: torch.Tensor, lr: float = 1e-4) -> torch.Tensor:
    """One Adam step on A and B; returns lora_A's change."""
    before = layer.lora_A.detach().clone()
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
    layer(x).float().square().sum().backward()
    opt.step()
    return (layer.lora_A.detach() - before).float()


def test_adam_step_of_1e4_survives_in_float32_adapters_and_is_lost_in_bfloat16():
    x = torch.randn(16, 12, dtype=torch.bfloat16)
    fp32 = randomize(LoRALinear(make_base(dtype=torch.bfloat16), r=4), size=0.5)
    bf16 = randomize(LoRALinear(make_base(dtype=torch.bfloat16), r=4, adapter_dtype=torch.bfloat16), size=0.5)
    moved_fp32, moved_bf16 = adam_step(fp32, x), adam_step(bf16, x)
    assert fp32.lora_A.dtype == torch.float32 and bf16.lora_A.dtype == torch.bfloat16
    assert (moved_fp32 != 0).float().mean() > 0.99          # every entry moved, by about the learning rate
    assert moved_fp32.abs().max() <= 1.01e-4
    # in bfloat16 an entry of size ~0.3 has an ulp of 2**-9 ≈ 2e-3: a step of 1e-4 rounds away
    big = fp32.lora_A.detach().abs() > 0.125
    assert big.sum() > 10 and torch.count_nonzero(moved_bf16[big]) == 0


def test_float32_adapters_on_a_bfloat16_base_match_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = Tiny().to(torch.bfloat16).eval()
    ours = copy.deepcopy(model)
    apply_lora(ours, ["q", "v"], r=4, alpha=8)
    for n in ("q", "v"):
        randomize(ours.attn[n], seed=ord(n))
    twin = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"]))
    q_peft = twin.base_model.model.attn["q"]
    assert q_peft.lora_A["default"].weight.dtype == torch.float32 == ours.attn["q"].lora_A.dtype
    with torch.no_grad():
        for n in ("q", "v"):
            theirs = twin.base_model.model.attn[n]
            theirs.lora_A["default"].weight.copy_(ours.attn[n].lora_A)
            theirs.lora_B["default"].weight.copy_(ours.attn[n].lora_B)
    x = torch.randn(10, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(ours.attn["q"](ours.norm(ours.encoder(x))),
                           q_peft(twin.base_model.model.norm(twin.base_model.model.encoder(x))))
        torch.testing.assert_close(ours(x), twin(x), rtol=0, atol=0)


def test_input_that_does_not_fit_is_a_clear_error():
    layer = LoRALinear(make_base(dtype=torch.bfloat16), r=2)
    with pytest.raises(TypeError, match="x is torch.float32 but the base layer's weight is torch.bfloat16"):
        layer(torch.randn(3, 12))
    with pytest.raises(ValueError, match="x has shape \\(3, 11\\).*\\(\\.\\.\\., 12\\)"):
        layer(torch.randn(3, 11, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="x is on meta but the layer's weights are on cpu"):
        layer(torch.randn(3, 12, dtype=torch.bfloat16, device="meta"))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer([[0.0] * 12])
    with torch.autocast("cpu", dtype=torch.bfloat16):      # autocast casts the operands itself
        assert LoRALinear(make_base(), r=2)(torch.randn(3, 12)).dtype == torch.bfloat16


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("r, kind, words", [
    (0, ValueError, "between 1 and min"), (-2, ValueError, "between 1 and min"),
    (10, ValueError, "min\\(in_features, out_features\\) = 9"), (2.0, TypeError, "whole number"),
    (True, TypeError, "whole number"), ("4", TypeError, "whole number"),
])
def test_bad_rank(r, kind, words):
    with pytest.raises(kind, match=f"r must be .*{words}"):
        LoRALinear(make_base(12, 9), r=r)


@pytest.mark.parametrize("alpha, kind", [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                         ("8", TypeError), (True, TypeError)])
def test_bad_alpha(alpha, kind):
    with pytest.raises(kind, match="alpha must be a positive"):
        LoRALinear(make_base(), r=2, alpha=alpha)


@pytest.mark.parametrize("p, kind", [(1.0, ValueError), (-0.1, ValueError), (1.5, ValueError),
                                     ("0.1", TypeError), (None, TypeError)])
def test_bad_dropout(p, kind):
    with pytest.raises(kind, match=r"dropout must be"):
        LoRALinear(make_base(), r=2, dropout=p)


def test_bad_init_and_bad_base():
    with pytest.raises(ValueError, match="init must be one of 'kaiming', 'gaussian', 'pissa', got 'xavier'"):
        LoRALinear(make_base(), r=2, init="xavier")
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear, not Conv1d"):
        LoRALinear(nn.Conv1d(3, 3, 1), r=1)
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear, not Tensor"):
        LoRALinear(torch.randn(4, 4), r=1)
    with pytest.raises(TypeError, match="already a LoRALinear"):
        LoRALinear(LoRALinear(make_base(), r=2), r=2)
    with pytest.raises(TypeError, match="rank_stabilized must be True or False"):
        LoRALinear(make_base(), r=2, rank_stabilized="yes")


# --------------------------------------------------------------------------- PEFT as the reference


def peft_twin(model: nn.Module, ours: nn.Module, targets, r, alpha, rs, dropout=0.0):
    """PEFT's LoRA on a copy of ``model`` (the same base weights), with our A and B copied in."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=rs,
                             lora_dropout=dropout, init_lora_weights=True)
    twin = peft.get_peft_model(copy.deepcopy(model), config)
    state = lora_state_dict(ours)
    with torch.no_grad():
        for name, module in twin.base_model.model.named_modules():
            if hasattr(module, "lora_A") and name + ".lora_A" in state:
                module.lora_A["default"].weight.copy_(state[name + ".lora_A"])
                module.lora_B["default"].weight.copy_(state[name + ".lora_B"])
    return twin


@pytest.mark.parametrize("rs", [False, True])
@pytest.mark.parametrize("r, alpha", [(2, 4), (4, 4), (3, None), (8, 32)])
def test_matches_peft_lora_layer(rs, r, alpha):
    torch.manual_seed(0)
    model = Tiny().eval()
    ours = copy.deepcopy(model)
    apply_lora(ours, ["q", "v"], r=r, alpha=alpha, rank_stabilized=rs)
    for layer in ours.modules():
        if isinstance(layer, LoRALinear):
            randomize(layer, seed=r)
    twin = peft_twin(model, ours, ["q", "v"], r, alpha if alpha is not None else r, rs).eval()
    q_peft = twin.base_model.model.attn["q"]
    assert math.isclose(q_peft.scaling["default"], ours.attn["q"].scaling, rel_tol=1e-12)
    x = torch.randn(10, 8)
    torch.testing.assert_close(ours(x), twin(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.attn["q"].delta_weight(), q_peft.get_delta_weight("default"),
                               rtol=1e-5, atol=1e-5)
    # merging: PEFT's merge_and_unload against merge_lora, as plain Linear layers
    merged_peft = twin.merge_and_unload()
    merged_ours = merge_lora(ours)
    assert type(merged_ours.attn["q"]) is nn.Linear
    torch.testing.assert_close(merged_ours.attn["q"].weight, merged_peft.attn["q"].weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged_ours(x), merged_peft(x), rtol=1e-5, atol=1e-5)


def test_matches_peft_with_dropout_in_training():
    torch.manual_seed(0)
    model = Tiny()
    ours = copy.deepcopy(model)
    apply_lora(ours, ["q"], r=4, alpha=8, dropout=0.3)
    randomize(ours.attn["q"])
    twin = peft_twin(model, ours, ["q"], 4, 8, False, dropout=0.3)
    ours.train()
    twin.train()
    x = torch.randn(10, 8)
    torch.manual_seed(7)
    a = ours(x)
    torch.manual_seed(7)
    b = twin(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_init_matches_peft_distribution(init):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ours = LoRALinear(make_base(300, 200), r=32, init=init)
    model = nn.Sequential(make_base(300, 200))
    twin = peft.get_peft_model(model, peft.LoraConfig(r=32, lora_alpha=32, target_modules=["0"],
                                                      init_lora_weights=True if init == "kaiming" else "gaussian"))
    theirs = twin.base_model.model[0]
    A_peft, B_peft = theirs.lora_A["default"].weight, theirs.lora_B["default"].weight
    assert torch.count_nonzero(B_peft) == 0 and torch.count_nonzero(ours.lora_B) == 0
    assert abs(ours.lora_A.std().item() / A_peft.std().item() - 1) < 0.03
    assert abs(ours.lora_A.abs().max().item() / A_peft.abs().max().item() - 1) < (0.03 if init == "kaiming" else 0.3)


def test_pissa_matches_peft_pissa():
    peft = pytest.importorskip("peft")
    base = make_base(20, 16)
    ours = LoRALinear(copy.deepcopy(base), r=4, alpha=8, init="pissa")
    twin = peft.get_peft_model(nn.Sequential(copy.deepcopy(base)),
                               peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights="pissa"))
    theirs = twin.base_model.model[0]
    torch.testing.assert_close(ours.base.weight, theirs.base_layer.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.delta_weight(), theirs.get_delta_weight("default"), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- whole models


def test_apply_lora_exact_and_suffix_names_and_freezing():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(4, 8)
    before = model(x)
    names = apply_lora(model, ["q", "attn.v", "encoder.0"], r=2, alpha=4)
    assert names == ["encoder.0", "attn.q", "attn.v"]  # model order
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert type(model.head) is nn.Linear
    assert torch.equal(model(x), before)  # B = 0 everywhere
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{n}.lora_{m}" for n in names for m in "AB")
    model(x).sum().backward()
    assert model.head.weight.grad is None and model.norm.weight.grad is None


def test_apply_lora_string_target_and_counting():
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5))
    total_before = sum(p.numel() for p in model.parameters())
    assert apply_lora(model, "1", r=3) == ["1"]
    trainable, total = count_parameters(model)
    assert trainable == 3 * (20 + 5) and total == total_before + trainable


def test_apply_lora_twice_keeps_earlier_adapters_trainable():
    model = Tiny()
    apply_lora(model, ["q"], r=2)
    apply_lora(model, ["v"], r=2)
    assert model.attn["q"].lora_A.requires_grad and model.attn["v"].lora_B.requires_grad
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, ["q"], r=2)


def test_apply_lora_no_match_lists_the_linear_modules():
    model = Tiny()
    with pytest.raises(ValueError, match="'k_proj' matches no module") as err:
        apply_lora(model, ["q", "k_proj"], r=2)
    for name in ("encoder.0", "attn.q", "attn.v", "head"):
        assert name in str(err.value)
    assert "norm" not in str(err.value)
    assert all(type(m) is not LoRALinear for m in model.modules())  # nothing half-applied
    with pytest.raises(ValueError, match="matches no module"):
        apply_lora(model, ["tt"], r=2)  # a suffix must follow a dot: 'tt' is not 'attn'


def test_apply_lora_non_linear_match_is_a_type_error():
    with pytest.raises(TypeError, match="'attn' matches 'attn', which is a ModuleDict.*attn.q"):
        apply_lora(Tiny(), ["attn"], r=2)
    with pytest.raises(TypeError, match="LayerNorm"):
        apply_lora(Tiny(), ["norm"], r=2)
    with pytest.raises(ValueError, match="target_modules must be"):
        apply_lora(Tiny(), [], r=2)
    with pytest.raises(TypeError, match="model must be"):
        apply_lora("model", ["q"], r=2)


def test_merge_lora_gives_plain_linear_layers_with_equal_outputs():
    torch.manual_seed(0)
    model = Tiny().eval()
    apply_lora(model, ["q", "v"], r=3, alpha=6)
    for n in ("q", "v"):
        randomize(model.attn[n], seed=len(n))
    x = torch.randn(7, 8)
    before = model(x)
    model.attn["v"].merge()  # one already merged: merge_lora must not merge it again
    merged = merge_lora(model)
    assert merged is model and not any(isinstance(m, LoRALinear) for m in model.modules())
    assert model.attn["q"].weight.shape == (16, 16)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    layer = randomize(LoRALinear(make_base(), r=2))
    y = torch.randn(3, 12)
    expected = layer(y)
    plain = merge_lora(layer)
    assert type(plain) is nn.Linear
    torch.testing.assert_close(plain(y), expected, rtol=1e-5, atol=1e-5)


def test_count_parameters_counts_shared_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared)
    assert count_parameters(model) == (20, 20)
    shared.bias.requires_grad_(False)
    assert count_parameters(model) == (16, 20)


# --------------------------------------------------------------------------- saving adapters


def lora_model(seed=0, r=2, alpha=4, **kw):
    torch.manual_seed(seed)
    model = Tiny().eval()
    apply_lora(model, ["q", "v"], r=r, alpha=alpha, **kw)
    return model


def test_lora_state_dict_holds_adapter_tensors_only():
    state = lora_state_dict(lora_model())
    assert sorted(state) == ["attn.q.lora_A", "attn.q.lora_B", "attn.v.lora_A", "attn.v.lora_B"]
    assert state["attn.q.lora_A"].shape == (2, 16) and not state["attn.q.lora_A"].requires_grad
    with pytest.raises(ValueError, match="no LoRALinear"):
        lora_state_dict(Tiny())


def test_state_dict_round_trip_reproduces_outputs():
    trained = lora_model()
    for n in ("q", "v"):
        randomize(trained.attn[n], seed=ord(n))
    x = torch.randn(5, 8)
    fresh = lora_model(seed=0)
    assert not torch.allclose(fresh(x), trained(x))
    load_lora_state_dict(fresh, {k: v.clone() for k, v in lora_state_dict(trained).items()})
    assert torch.equal(fresh(x), trained(x))


def test_load_lora_state_dict_errors():
    model = lora_model()
    state = {k: v.clone() for k, v in lora_state_dict(model).items()}
    missing = {k: v for k, v in state.items() if k != "attn.v.lora_B"}
    with pytest.raises(ValueError, match="missing keys attn.v.lora_B; unexpected keys \\(none\\)"):
        load_lora_state_dict(model, missing)
    with pytest.raises(ValueError, match="unexpected keys attn.k.lora_A"):
        load_lora_state_dict(model, {**state, "attn.k.lora_A": torch.zeros(2, 16)})
    with pytest.raises(ValueError, match=r"state\['attn.q.lora_A'\] has shape \(4, 16\).*\(2, 16\).*different r"):
        load_lora_state_dict(model, {**state, "attn.q.lora_A": torch.zeros(4, 16)})
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        load_lora_state_dict(model, {**state, "attn.q.lora_A": [[0.0] * 16] * 2})
    with pytest.raises(TypeError, match="state must be a dict"):
        load_lora_state_dict(model, list(state.values()))
    model.attn["q"].merge()
    with pytest.raises(ValueError, match="merged layers \\(attn.q\\)"):
        load_lora_state_dict(model, state)


def test_save_and_load_adapter_round_trip(tmp_path):
    trained = lora_model(r=3, alpha=6, rank_stabilized=True)
    for n in ("q", "v"):
        randomize(trained.attn[n], seed=ord(n))
    path = tmp_path / "adapter.safetensors"
    save_adapter(trained, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_edu"])
        assert sorted(f.keys()) == sorted(lora_state_dict(trained))
    assert meta["attn.q"] == {"r": 3, "alpha": 6.0, "rank_stabilized": True, "init": "kaiming",
                              "scaling": 6.0 / math.sqrt(3)}
    assert path.read_bytes()[:8] != b"\x80\x02\x8a\nl\xfc\x9cF"  # not a pickle
    fresh = lora_model(r=3, alpha=6, rank_stabilized=True, init="gaussian")  # another init is fine
    load_adapter(fresh, path)
    x = torch.randn(4, 8)
    assert torch.equal(fresh(x), trained(x))
    # the adapter is small next to the model
    full = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(full))
    assert path.stat().st_size < full.stat().st_size


@pytest.mark.parametrize("kw, words", [
    ({"r": 2, "alpha": 6, "rank_stabilized": True}, "r=3.*model's layer has r=2"),
    ({"r": 3, "alpha": 3, "rank_stabilized": True}, "alpha=6.0.*alpha=3.0"),
    ({"r": 3, "alpha": 6}, "rank_stabilized=True.*rank_stabilized=False"),
    ({"r": 3, "alpha": 6, "rank_stabilized": True, "init": "pissa"}, "init='kaiming'.*init='pissa'"),
])
def test_load_adapter_checks_metadata(tmp_path, kw, words):
    path = tmp_path / "a.safetensors"
    save_adapter(lora_model(r=3, alpha=6, rank_stabilized=True), path)
    with pytest.raises(ValueError, match=words):
        load_adapter(lora_model(**kw), path)


def rewrite_metadata(path, change):
    """Rewrite an adapter file with its lora_edu metadata passed through ``change`` (a dict -> None)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["lora_edu"])
    change(config)
    save_file(load_file(str(path)), str(path), metadata={**meta, "lora_edu": json.dumps(config)})


def test_load_adapter_checks_the_recorded_scaling_and_reads_older_files(tmp_path):
    path = tmp_path / "a.safetensors"
    trained = lora_model(r=2, alpha=4)
    randomize(trained.attn["q"])
    save_adapter(trained, path)
    rewrite_metadata(path, lambda cfg: cfg["attn.q"].update(scaling=5.0))   # what another layer really used
    with pytest.raises(ValueError, match="saved with scaling=5.0 but the model's layer has scaling=2.0"):
        load_adapter(lora_model(r=2, alpha=4), path)
    rewrite_metadata(path, lambda cfg: [c.pop("scaling") for c in cfg.values()])   # a file from before
    fresh = lora_model(r=2, alpha=4)
    load_adapter(fresh, path)
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), trained(x))


def test_save_adapter_warns_about_trainable_parameters_it_does_not_save(tmp_path):
    model = lora_model()
    model.head.requires_grad_(True)          # a head trained next to LoRA (PEFT's modules_to_save)
    with pytest.warns(UserWarning, match="not saved: head.weight, head.bias"):
        save_adapter(model, tmp_path / "a.safetensors")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_adapter(lora_model(), tmp_path / "b.safetensors")   # adapter only: no warning


def test_apply_lora_on_a_lora_layer_itself_is_an_error():
    layer = LoRALinear(make_base(), r=2)
    with pytest.raises(ValueError, match="model is itself a LoRALinear"):
        apply_lora(layer, ["base"], r=2)
    assert type(layer.base) is nn.Linear                          # nothing nested
    model = nn.Sequential(LoRALinear(make_base(), r=2))
    with pytest.raises(ValueError, match="matches no module"):
        apply_lora(model, ["0.base"], r=2)                         # the base inside is not a target


def test_load_adapter_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a lora_edu adapter"):
        load_adapter(lora_model(), path)


def test_pissa_adapter_round_trip(tmp_path):
    torch.manual_seed(0)
    base_model = Tiny().eval()
    trained = copy.deepcopy(base_model)
    apply_lora(trained, ["q", "v"], r=2, init="pissa")
    x = torch.randn(6, 8)
    torch.testing.assert_close(trained(x), base_model(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        trained.attn["q"].lora_B.add_(0.1)
    save_adapter(trained, tmp_path / "p.safetensors")
    fresh = copy.deepcopy(base_model)
    apply_lora(fresh, ["q", "v"], r=2, init="pissa")
    load_adapter(fresh, tmp_path / "p.safetensors")
    torch.testing.assert_close(fresh(x), trained(x), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["reference", "auto"])   # "auto" is the fused path on CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("init", INITS)
def test_gpu_core_properties(dtype, init, impl):
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    base = make_base(64, 48, dtype=dtype, device="cuda")
    x = torch.randn(16, 64, device="cuda", dtype=dtype)
    expected = base(x)
    layer = LoRALinear(copy.deepcopy(base), r=8, alpha=16, init=init, impl=impl)
    assert layer.lora_A.device.type == "cuda" and layer.lora_A.dtype == torch.float32  # fp32 adapters on bf16
    torch.testing.assert_close(layer(x), expected, rtol=tol, atol=tol)
    randomize(layer)
    layer(x).float().square().sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None and layer.base.weight.grad is None
    W0 = layer.base.weight.detach().clone()
    with torch.no_grad():
        unmerged = layer(x)
        ref = reference_forward(x, W0, layer.base.bias, layer.lora_A, layer.lora_B, layer.scaling)
        torch.testing.assert_close(unmerged.double(), ref, rtol=tol, atol=tol * 10)
        layer.merge()
        W_merged = layer.base.weight.detach().float().clone()
        torch.testing.assert_close(layer(x), unmerged, rtol=tol * 10, atol=tol * 10)
        layer.unmerge()
    err = (layer.base.weight.float() - W0.float()).norm().item()
    assert err <= roundtrip_bound(W0, W_merged)
    if dtype == torch.float32:
        assert err / W0.float().norm().item() < 1e-6


def roundtrip_bound(W0: torch.Tensor, W_merged: torch.Tensor) -> float:
    """Merge then unmerge rounds twice, each time to the weight's dtype (unit roundoff u):
    W1 = (W0 + ΔW)(1 + δ1), W2 = (W1 - ΔW)(1 + δ2), so |W2 - W0| <= u (|W0 + ΔW| + |W0|) entrywise,
    to first order in u. The bound in the Frobenius norm, with 10 % slack for the second-order terms."""
    u = torch.finfo(W0.dtype).eps / 2
    return 1.1 * u * (W_merged.norm().item() + W0.float().norm().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_unmerge_round_trip_within_rounding_bound(dtype):
    """The same bound on the CPU, with a ΔW larger than W0 (as after a long fine-tuning)."""
    base = make_base(64, 48, dtype=dtype)
    layer = LoRALinear(copy.deepcopy(base), r=8, alpha=16, init="gaussian")
    randomize(layer)
    W0 = layer.base.weight.detach().clone()
    with torch.no_grad():
        layer.merge()
        W_merged = layer.base.weight.detach().float().clone()
        layer.unmerge()
    err = (layer.base.weight.float() - W0.float()).norm().item()
    assert 0 < W_merged.norm().item()
    assert err <= roundtrip_bound(W0, W_merged)


@pytest.mark.gpu
def test_gpu_matches_peft_and_adapter_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Tiny().cuda().eval()
    ours = copy.deepcopy(model)
    apply_lora(ours, ["q", "v"], r=4, alpha=8, rank_stabilized=True)
    for n in ("q", "v"):
        randomize(ours.attn[n], seed=ord(n))
    twin = peft_twin(model, ours, ["q", "v"], 4, 8, True).eval()
    x = torch.randn(10, 8, device="cuda")
    torch.testing.assert_close(ours(x), twin(x), rtol=1e-5, atol=1e-5)
    save_adapter(ours, tmp_path / "a.safetensors")
    fresh = copy.deepcopy(model)
    apply_lora(fresh, ["q", "v"], r=4, alpha=8, rank_stabilized=True)
    load_adapter(fresh, tmp_path / "a.safetensors")
    assert fresh.attn["q"].lora_A.device.type == "cuda"
    assert torch.equal(fresh(x), ours(x))
    merged = merge_lora(ours)
    torch.testing.assert_close(merged(x), twin(x), rtol=1e-5, atol=1e-5)
