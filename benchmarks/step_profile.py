"""Where does LoRA's whole-model saving come from? One profiled training step per method, kernel by kernel.

Chapter 07 measures that a LoRA step of a GPT-2-small-shaped model needs less GPU time than full fine-tuning,
and prices part of the saving from the shapes (the frozen matrices' weight gradients, AdamW). This script
takes the GPU's own account: it trains the course's transformer (full fine-tuning, and LoRA r = 8 on q_proj
and v_proj with ``impl="fused"``) under bf16 autocast with AdamW, profiles a few steady-state steps with
``torch.profiler`` and sums every kernel's time into groups by its name (:func:`kernel_group`): matrix
products, the optimizer, elementwise kernels (casts, activations, adds), reductions and normalisations,
attention, copies, other. The difference between the two methods, group by group, is the split of the
saving. It also times the output layer's three matrix products alone at GPT-2's vocabulary (50,257, not a
multiple of 8) and padded to 50,304 (:func:`output_layer_gemms`). ::

    python benchmarks/step_profile.py                  # on a CUDA GPU: results/step_profile_<gpu>.json
    python benchmarks/step_profile.py --smoke          # tiny model on the CPU (what tests/test_benchmarks.py runs)

On a CPU the profiler sees operators, not kernels; the groups then sum ``aten::`` operators' self time, which
is only good for checking the script.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:       # run as a script from a checkout: find lora_edu and lora_gpu
    sys.path.insert(0, str(HERE.parent))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import lora_gpu  # noqa: E402
from lora_edu.lora import apply_lora, count_parameters  # noqa: E402
from lora_edu.transformer import Transformer, TransformerConfig  # noqa: E402

# (group, pattern on the lower-cased kernel or operator name), first match wins
GROUPS = (
    ("attention", r"flash|fmha|attention|sdpa|_efficient_attention"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|splitkreduce|aten::(mm|addmm|bmm|matmul|linear)\b"),
    ("optimizer", r"multi_tensor|adam|_foreach|fused_adam"),
    ("reduction and normalisation", r"reduce|layer_norm|layernorm|softmax|cross_entropy|nll_loss|norm_|sum_kernel"
                                    r"|aten::(sum|mean|native_layer_norm|_log_softmax|nll_loss)"),
    ("copy", r"memcpy|memset|copy_kernel|aten::copy_"),
    ("elementwise", r"elementwise|vectorized|unrolled|aten::(add|mul|div|gelu|to|_to_copy|fill_|zero_)"),
)
FULL = dict(model=dict(), batch=8, seq=1024, warmup=3, steps=5, vocabs=(50257, 50304), gemm_iters=20)
SMOKE = dict(model=dict(n_layers=2, d_model=32, n_heads=2, d_mlp=64, vocab_size=128, max_seq_len=16),
             batch=2, seq=16, warmup=1, steps=2, vocabs=(127, 128), gemm_iters=2)


def kernel_group(name: str) -> str:
    """The group of a kernel (or, on a CPU, an operator) by its name; "other" when no pattern matches.

    >>> kernel_group("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT"), kernel_group("aten::mm")
    ('matmul', 'matmul')
    >>> kernel_group("void at::native::multi_tensor_apply_kernel<...>")
    'optimizer'
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a kernel or operator name (str), not {type(name).__name__}")
    low = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, low):
            return group
    return "other"


def profile_steps(model: torch.nn.Module, ids: torch.Tensor, warmup: int, steps: int) -> dict:
    """Train ``model`` with AdamW under bf16 autocast and profile ``steps`` steady-state steps. Returns the
    per-step milliseconds of each group and the 12 longest kernels (per step), summed over all calls."""
    from torch.profiler import ProfilerActivity, profile

    device = ids.device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = lora_gpu.lm_loss(model(ids), ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    lora_gpu._sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        lora_gpu._sync(device)
    if cuda:
        events = [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type.name == "CUDA"]
    else:   # operators' self time, without the profiler's own bookkeeping
        events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.key.startswith("aten::")]
    groups: dict[str, float] = {}
    kernels: dict[str, list[float]] = {}
    for name, us in events:
        group = kernel_group(name)
        groups[group] = groups.get(group, 0.0) + us / 1e3 / steps
        k = kernels.setdefault(name[:100], [0.0, 0])
        k[0] += us / 1e3 / steps
        k[1] += 1
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:12]
    return {"total_ms": sum(groups.values()), "groups_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n, "ms_per_step": ms, "calls_per_step": calls / steps}
                            for n, (ms, calls) in top],
            "source": "CUDA kernels (torch.profiler)" if cuda else "CPU operators' self time (torch.profiler)"}


def output_layer_gemms(tokens: int, d: int, vocabs: tuple[int, ...], iters: int, device: torch.device) -> list[dict]:
    """The output layer's three matrix products in bfloat16, timed alone for each vocabulary size: the forward
    ``x (tokens, d) @ W^T (d, V)``, the input gradient ``g (tokens, V) @ W (V, d)`` and the weight gradient
    ``g^T (V, tokens) @ x (tokens, d)``. Median milliseconds of ``iters`` calls between CUDA events (wall clock
    on a CPU), after two warm-up calls. GPT-2's 50,257 is not a multiple of 8; 50,304 is the next multiple
    of 64."""
    if tokens < 1 or d < 1 or iters < 1 or not vocabs or min(vocabs) < 1:
        raise ValueError(f"tokens, d, iters and every vocabulary size must be positive, got {tokens}, {d}, {iters}, {vocabs}")
    out = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for vocab in vocabs:
        x = torch.randn(tokens, d, generator=gen).to(device, torch.bfloat16)
        w = torch.randn(vocab, d, generator=gen).to(device, torch.bfloat16)
        g = torch.randn(tokens, vocab, generator=gen).to(device, torch.bfloat16)
        ops = {"forward x·Wᵀ": lambda: x @ w.T, "input gradient g·W": lambda: g @ w,
               "weight gradient gᵀ·x": lambda: g.T @ x}
        for name, fn in ops.items():
            for _ in range(2):
                fn()
            times = lora_gpu.time_calls(fn, iters, device)
            ms = statistics.median(times)
            out.append({"vocab": vocab, "op": name, "ms": ms, "tflops": 2 * tokens * d * vocab / (ms * 1e-3) / 1e12})
        del x, w, g
    return out


def run(cfg: dict, device: torch.device, log=print) -> dict:
    tcfg = TransformerConfig.gpt2_small(**cfg["model"])
    torch.manual_seed(0)
    ids = torch.randint(0, tcfg.vocab_size, (cfg["batch"], cfg["seq"]), device=device)
    out = {}
    for method in ("full", "lora_fused"):
        torch.manual_seed(0)
        model = Transformer(tcfg).to(device)
        if method != "full":
            apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16, impl="fused")
        rec = profile_steps(model, ids, cfg["warmup"], cfg["steps"])
        rec["trainable"], rec["total_params"] = count_parameters(model)
        out[method] = rec
        log(f"{method:10s} {rec['total_ms']:8.2f} ms per step: " + ", ".join(
            f"{g} {ms:.2f}" for g, ms in rec["groups_ms"].items()))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    groups = sorted(set(out["full"]["groups_ms"]) | set(out["lora_fused"]["groups_ms"]))
    saving = {g: out["full"]["groups_ms"].get(g, 0.0) - out["lora_fused"]["groups_ms"].get(g, 0.0) for g in groups}
    gemms = output_layer_gemms(cfg["batch"] * cfg["seq"], tcfg.d_model, cfg["vocabs"], cfg["gemm_iters"], device)
    for g in gemms:
        log(f"output layer, vocabulary {g['vocab']:,}: {g['op']:22s} {g['ms']:6.3f} ms ({g['tflops']:.0f} TFLOP/s)")
    return {"methods": out, "saving_ms": dict(sorted(saving.items(), key=lambda kv: -kv[1])),
            "saving_total_ms": out["full"]["total_ms"] - out["lora_fused"]["total_ms"], "output_layer_gemms": gemms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (automatic without a CUDA GPU)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.smoke or device.type != "cuda"
    cfg = SMOKE if smoke else FULL
    t0 = time.perf_counter()
    env = lora_gpu.environment(device)
    result = {"benchmark": "step_profile", "gpu": env["gpu"], "smoke": smoke, "date": env["date"],
              "versions": env["versions"], "system": env["system"],
              "settings": cfg | {"model_shape": "GPT-2 small" if not cfg["model"] else "tiny",
                                 "methods": {"full": "every parameter trained",
                                             "lora_fused": "LoRA r = 8, alpha 16 on q_proj, v_proj, impl='fused'"},
                                 "optimizer": "AdamW (PyTorch's default implementation)",
                                 "autocast": "bfloat16, float32 weights",
                                 "groups": {g: p for g, p in GROUPS}},
              "clock_before": lora_gpu.gpu_state(device)}
    result |= run(cfg, device)
    result["clock_after"] = lora_gpu.gpu_state(device)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = args.out or lora_gpu.RESULTS / f"step_profile_{lora_gpu.slug(env['gpu'])}{'-smoke' if smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"saving {result['saving_total_ms']:.2f} ms per step: " + ", ".join(
        f"{g} {ms:+.2f}" for g, ms in result["saving_ms"].items()))
    print(f"wrote {out} after {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
