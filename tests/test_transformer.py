"""lora_edu.transformer against Hugging Face's GPT-2 (same weights, same logits) and its own promises."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_edu.transformer import Transformer, TransformerConfig, linear_names


def small(**overrides) -> TransformerConfig:
    cfg = dict(vocab_size=29, max_seq_len=12, d_model=32, n_heads=4, n_layers=2, d_mlp=80)
    cfg.update(overrides)
    return TransformerConfig(**cfg)


def test_matches_transformers_gpt2_logits():
    """Copy a random Hugging Face GPT-2 into our class (c_attn split into q, k, v; Conv1D transposed)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    d, layers = 32, 2
    hf_cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=d, n_layer=layers, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ours = Transformer(TransformerConfig.gpt2_small(vocab_size=50, max_seq_len=16, d_model=d, n_heads=4,
                                                    n_layers=layers, d_mlp=4 * d)).eval()
    sd = hf.state_dict()
    with torch.no_grad():
        ours.tok_emb.weight.copy_(sd["transformer.wte.weight"])
        ours.pos_emb.weight.copy_(sd["transformer.wpe.weight"])
        for i, block in enumerate(ours.blocks):
            p = f"transformer.h.{i}."
            W, b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]
            for j, lin in enumerate((block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)):
                lin.weight.copy_(W[:, j * d:(j + 1) * d].T)
                lin.bias.copy_(b[j * d:(j + 1) * d])
            for lin, hf_name in ((block.attn.o_proj, "attn.c_proj"), (block.mlp.fc1, "mlp.c_fc"),
                                 (block.mlp.fc2, "mlp.c_proj")):
                lin.weight.copy_(sd[p + hf_name + ".weight"].T)
                lin.bias.copy_(sd[p + hf_name + ".bias"])
            for ln, hf_name in ((block.ln1, "ln_1"), (block.ln2, "ln_2")):
                ln.weight.copy_(sd[p + hf_name + ".weight"])
                ln.bias.copy_(sd[p + hf_name + ".bias"])
        ours.ln_f.weight.copy_(sd["transformer.ln_f.weight"])
        ours.ln_f.bias.copy_(sd["transformer.ln_f.bias"])
    assert ours.lm_head.weight is ours.tok_emb.weight          # tied, as GPT-2
    tokens = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_gpt2_small_shape_has_gpt2_small_parameter_count():
    with torch.device("meta"):                                   # no memory: shapes only
        model = Transformer(TransformerConfig.gpt2_small())
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    attn = model.blocks[0].attn
    assert [type(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)] == [nn.Linear] * 4
    assert attn.q_proj.weight.shape == (768, 768) and model.blocks[11].mlp.fc1.weight.shape == (3072, 768)
    assert len(model.blocks) == 12 and model.pos_emb.weight.shape == (1024, 768)


def test_nothing_is_hard_coded():
    cfg = small(d_model=48, n_heads=6, n_layers=3, d_mlp=100, bias=False, vocab_size=7, max_seq_len=5)
    model = Transformer(cfg)
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 7)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    assert model.blocks[2].mlp.fc2.weight.shape == (48, 100)
    names = linear_names(model)
    assert names[:6] == [f"blocks.0.attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
        ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert len(names) == 3 * 6 + 1 and names[-1] == "lm_head"


def test_attention_matches_the_formula():
    """softmax(q kᵀ / sqrt(Dh) + causal mask) v per head, written out by hand."""
    torch.manual_seed(1)
    cfg = small()
    attn = Transformer(cfg).blocks[0].attn
    x = torch.randn(2, 7, cfg.d_model)
    H, Dh = cfg.n_heads, cfg.head_dim
    q, k, v = (f(x).view(2, 7, H, Dh).transpose(1, 2) for f in (attn.q_proj, attn.k_proj, attn.v_proj))
    scores = q @ k.transpose(-1, -2) / Dh ** 0.5
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    expected = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, cfg.d_model))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_causal_mask(causal):
    torch.manual_seed(0)
    model = Transformer(small(causal=causal)).eval()
    a = torch.randint(0, 29, (1, 10))
    b = a.clone()
    b[0, 7] = (a[0, 7] + 1) % 29                                # change one later token
    with torch.no_grad():
        same = torch.allclose(model(a)[0, :7], model(b)[0, :7])
    assert same is causal                                       # causal: earlier outputs cannot see it


def test_config_round_trip_and_errors():
    cfg = small(activation="relu")
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible"):
        small(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        small(n_layers=0)
    with pytest.raises(ValueError, match="activation"):
        small(activation="swish")
    with pytest.raises(ValueError, match="unknown TransformerConfig field"):
        TransformerConfig.from_dict({**cfg.to_dict(), "n_kv_heads": 2})
    with pytest.raises(TypeError, match="TransformerConfig"):
        Transformer({"d_model": 32})


def test_bad_tokens_are_clear_errors():
    model = Transformer(small())
    with pytest.raises(ValueError, match="max_seq_len = 12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens\[None\]"):
        model(torch.zeros(12, dtype=torch.long))
    with pytest.raises(TypeError, match="integer torch tensor"):
        model(torch.zeros(1, 5))


@pytest.mark.parametrize("causal", [True, False])
def test_math_attention_matches_the_fused_kernel(causal):
    """impl="math" writes softmax(q kᵀ / sqrt(Dh) + mask) v out; it must give PyTorch's fused kernel's result."""
    from lora_edu.transformer import set_attention

    torch.manual_seed(0)
    model = Transformer(small(causal=causal)).eval()
    tokens = torch.randint(0, 29, (3, 12))
    with torch.no_grad():
        fused = model(tokens)
        assert set_attention(model, "math") is model
        assert all(m.impl == "math" for m in model.modules() if m.__class__.__name__ == "Attention")
        written_out = model(tokens)
    torch.testing.assert_close(written_out, fused, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="impl must be one of"):
        set_attention(model, "flash")


def test_math_attention_runs_under_vmap():
    """Many models' weights stacked, one functional_call under torch.func.vmap (what the grid trainer does)."""
    from lora_edu.transformer import set_attention

    torch.manual_seed(0)
    models = [Transformer(small()) for _ in range(3)]
    template = set_attention(Transformer(small()), "math").eval()
    stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
               for n, _ in template.named_parameters()}
    tokens = torch.randint(0, 29, (3, 2, 12))
    out = torch.func.vmap(lambda p, t: torch.func.functional_call(template, p, (t,)))(stacked, tokens)
    for i, m in enumerate(models):
        with torch.no_grad():
            torch.testing.assert_close(out[i], m.eval()(tokens[i]), rtol=1e-5, atol=1e-5)
