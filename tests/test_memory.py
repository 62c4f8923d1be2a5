"""lora_edu.memory and lora_edu.traffic: exact counts, the activation model against what autograd
really saves, the predicted peak against a measured one (CPU tracker; CUDA under -m gpu)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_edu.lora import apply_lora, count_parameters
from lora_edu.memory import MemoryTracker, TransformerShape, lora_parameters, measure_peak, training_memory
from lora_edu.traffic import layer_kernels, predict_ms
from lora_edu.transformer import Transformer, TransformerConfig

SMALL = dict(n_layers=2, d_model=64, n_heads=4, d_mlp=256, vocab_size=512, max_seq_len=64)


def meta_model(**overrides):
    with torch.device("meta"):
        return Transformer(TransformerConfig.gpt2_small(**overrides))


def test_gpt2_small_parameters_match_the_real_models():
    shape = TransformerShape.gpt2_small()
    assert shape.parameters() == 124_439_808
    assert count_parameters(meta_model())[1] == shape.parameters()
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config()
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(cfg)
    hf_shape = TransformerShape.from_config(cfg)
    assert hf_shape.fused_qkv and hf_shape.gelu == "python" and hf_shape.dropout == 0.1
    assert hf_shape.parameters() == sum(p.numel() for p in hf.parameters()) == shape.parameters()


def test_from_config_and_untied_head():
    cfg = TransformerConfig(**SMALL, tie_embeddings=False)
    shape = TransformerShape.from_config(cfg)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert shape.parameters() == count_parameters(model)[1]
    assert not shape.tied_embeddings and shape.d_ff == 256 and shape.context == 64
    with pytest.raises(TypeError, match="TransformerConfig or a transformers GPT2Config"):
        TransformerShape.from_config({"d_model": 3})


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("q", "v"), ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")])
def test_lora_parameters_match_apply_lora(targets):
    model = meta_model()
    apply_lora(model, [t if t.endswith("proj") or t.startswith("fc") else t + "_proj" for t in targets], r=8)
    trainable, _ = count_parameters(model)
    assert lora_parameters(TransformerShape.gpt2_small(), 8, targets) == trainable
    assert lora_parameters(TransformerShape.gpt2_small(fused_qkv=True), 8, ["c_attn"]) == 294_912


def test_weights_gradients_optimizer_are_exact():
    shape = TransformerShape.gpt2_small()
    P = 124_439_808
    full = training_memory(shape, 8, 1024, method="full")
    assert (full.weights, full.gradients, full.optimizer) == (4 * P, 4 * P, 8 * P)
    assert full.trainable == P
    lora = training_memory(shape, 8, 1024, method="lora", r=8, targets=("q_proj", "v_proj"))
    L = 294_912
    assert (lora.weights, lora.gradients, lora.optimizer, lora.trainable) == (4 * (P + L), 4 * L, 8 * L, L)
    bf16 = training_memory(shape, 8, 1024, method="full", param_dtype=torch.bfloat16, compute_dtype=None,
                           optimizer="sgd")
    assert (bf16.weights, bf16.gradients, bf16.optimizer, bf16.weight_copies) == (2 * P, 2 * P, 0, 0)
    assert training_memory(shape, 1, 8, optimizer="sgd_momentum").optimizer == 4 * P


def test_activations_scale_with_tokens_and_the_head_with_the_vocabulary():
    shape = TransformerShape.gpt2_small()
    a = training_memory(shape, 4, 512, method="full")
    b = training_memory(shape, 8, 512, method="full")
    assert b.activations == 2 * a.activations and b.loss_head == 2 * a.loss_head
    assert a.loss_head == 3 * 4 * 512 * 50257 * 4          # log-probs, their gradient, the logits' gradient
    lora = training_memory(shape, 4, 512, method="lora")
    assert lora.activations < a.activations                # frozen layers keep no inputs


@pytest.mark.parametrize("bad, message", [
    (dict(method="half"), "method must be"),
    (dict(optimizer="adafactor"), "optimizer must be"),
    (dict(method="lora", targets=("w_q",)), r"targets \['w_q'\] are not linear layers"),
    (dict(method="lora", targets=()), "targets is empty"),
    (dict(param_dtype="float8"), "dtype 'float8' is not one of"),
    (dict(batch=0), "batch must be a positive int"),
])
def test_bad_arguments_are_named(bad, message):
    kwargs = dict(batch=2, seq=16) | bad
    with pytest.raises(ValueError, match=message):
        training_memory(TransformerShape.gpt2_small(), **kwargs)


def test_seq_longer_than_context():
    with pytest.raises(ValueError, match="longer than the model's context"):
        training_memory(TransformerShape.gpt2_small(), 1, 2048)


def lm_loss(logits, ids):
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def build(method, device="cpu"):
    torch.manual_seed(0)
    cfg = TransformerConfig.gpt2_small(**SMALL)
    model = Transformer(cfg).to(device)
    if method != "full":
        apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16, impl=method)
    return cfg, model


def training_step(model, ids, opt):
    """One bf16-autocast language-model step of ``model`` on ``ids`` (on their device), as a closure."""
    def step():
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            loss = lm_loss(model(ids), ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


@pytest.mark.parametrize("method", ["full", "reference", "fused"])
def test_activation_model_counts_what_autograd_saves(method):
    cfg, model = build(method)
    ids = torch.randint(0, cfg.vocab_size, (4, 64))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lm_loss(model(ids), ids)
    est = training_memory(TransformerShape.from_config(cfg), 4, 64, method="full" if method == "full" else "lora")
    predicted = est.activations + est.weight_copies + 4 * 64 * cfg.vocab_size * 4   # + the saved log-probs
    assert predicted == pytest.approx(sum(saved.values()), rel=2e-3)


@pytest.mark.parametrize("method", ["full", "reference", "fused"])
def test_predicted_peak_matches_the_tracker_on_cpu(method):
    cfg, model = build(method)
    ids = torch.randint(0, cfg.vocab_size, (4, 64))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    step = training_step(model, ids, opt)

    step()                                   # creates AdamW's state
    existing = list(model.parameters()) + [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    peak = measure_peak(step, existing=existing)
    est = training_memory(TransformerShape.from_config(cfg), 4, 64, method="full" if method == "full" else "lora")
    assert est.total == pytest.approx(peak, rel=0.01)


def test_adapter_dtype_rule_exact_parts():
    """PEFT's set-up: a bfloat16 base, float32 adapters with float32 gradients and AdamW state, and a
    bf16 copy of each adapter under autocast."""
    shape = TransformerShape.gpt2_small()
    P, L = 124_439_808, 294_912
    est = training_memory(shape, 8, 1024, method="lora", param_dtype="bfloat16", adapter_dtype="float32")
    assert (est.weights, est.gradients, est.optimizer) == (2 * P + 4 * L, 4 * L, 8 * L)
    assert est.weight_copies == 2 * L                       # the base is bf16 already: only the adapters are cast
    same = training_memory(shape, 8, 1024, method="lora", param_dtype="bfloat16")
    assert (same.gradients, same.optimizer, same.weight_copies) == (2 * L, 4 * L, 0)
    full = training_memory(shape, 8, 1024, method="full", param_dtype="bfloat16", adapter_dtype="float32")
    assert full.gradients == 2 * P                            # no adapters: the rule changes nothing


def bf16_model_with_adapters(fp32_adapters):
    torch.manual_seed(0)
    cfg = TransformerConfig.gpt2_small(**SMALL)
    model = Transformer(cfg).to(torch.bfloat16)
    apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16, impl="fused")
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.to(torch.float32 if fp32_adapters else torch.bfloat16)
    return cfg, model


def test_adapter_dtype_rule_against_the_tracker():
    """On the CPU tracker, float32 adapters on a bf16 base cost what the rule predicts over bf16 ones."""
    peaks, preds = [], []
    for fp32 in (False, True):
        cfg, model = bf16_model_with_adapters(fp32)
        ids = torch.randint(0, cfg.vocab_size, (4, 64))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        step = training_step(model, ids, opt)
        step()
        existing = list(model.parameters()) + [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
        peaks.append(measure_peak(step, existing=existing))
        est = training_memory(TransformerShape.from_config(cfg), 4, 64, method="lora", param_dtype="bfloat16",
                              adapter_dtype="float32" if fp32 else None)
        preds.append(est.total)
        assert est.total == pytest.approx(peaks[-1], rel=0.03)   # a bf16 base: within 3 % (2.4-2.5 % low)
    assert preds[1] - preds[0] == pytest.approx(peaks[1] - peaks[0], rel=0.2)


def test_memory_tracker_counts_allocations_and_frees():
    with MemoryTracker() as mem:
        a = torch.empty(1000, dtype=torch.float32)     # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)      # 4000 bytes
        view = a[:10]                                  # a view: no new memory
        del a
        assert mem.current == 8000                     # the view keeps a's storage alive
        del view, b
        c = torch.empty(250, dtype=torch.bfloat16)     # 500 bytes
    assert mem.peak == 8000 and mem.current == 500
    del c


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["full", "fused"])
def test_predicted_peak_matches_cuda_within_10_percent(method):
    cfg = TransformerConfig.gpt2_small()          # at this size the ~0.1 GB of CUDA workspaces is ~2 %
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Transformer(cfg)
    if method != "full":
        apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16, impl=method)
    ids = torch.randint(0, cfg.vocab_size, (4, 1024), device="cuda")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    step = training_step(model, ids, opt)

    step()
    peak = measure_peak(step, device="cuda")
    est = training_memory(TransformerShape.from_config(cfg), 4, 1024, method="full" if method == "full" else "lora")
    assert est.total == pytest.approx(peak, rel=0.10)


def test_traffic_counts_kernels_flops_and_bytes():
    T, d, r = 8192, 4096, 8
    n = {impl: len(layer_kernels(impl, T, d, d, r)) for impl in ("base", "full", "reference", "fused", "merged")}
    assert n == {"base": 2, "full": 3, "reference": 12, "fused": 10, "merged": 1}
    def matmul_flops(impl):
        return sum(k.flops for k in layer_kernels(impl, T, d, d, r, mode="forward") if k.flops > 2 * T * d)

    assert matmul_flops("reference") / matmul_flops("base") - 1 == pytest.approx(2 * r / d)  # 0.39 % more
    elementwise = [k for k in layer_kernels("reference", T, d, d, r) if k.flops <= 2 * T * d]
    assert sum(k.bytes for k in elementwise) == 10 * T * d * 2            # 4 passes of 2-3 tensors, in bf16
    times = {impl: predict_ms(layer_kernels(impl, T, d, d, r)) for impl in ("base", "reference", "fused")}
    assert times["base"] < times["fused"] < times["reference"]
    fused_hidden = sum(k.hidden_bytes for k in layer_kernels("fused", T, d, d, r))
    assert fused_hidden == 2 * T * d * 2                                   # the two beta=1 reads
    with pytest.raises(ValueError, match="impl must be one of"):
        layer_kernels("peft", T, d, d, r)
    with pytest.raises(ValueError, match="r must be a positive int"):
        layer_kernels("fused", T, d, d, 0)
