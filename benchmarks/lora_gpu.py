"""LoRA on a GPU, measured: layer speed, merged inference, and whole-model memory and step time.

One run measures, side by side and interleaved (so clock drift hits every method alike):

* **layers** — for d ∈ {1024, 4096}, r ∈ {8, 64}, T = 8192 tokens, bfloat16, ``nn.Linear(d, d)``
  without bias: the frozen base layer, a fully trained linear, ``lora_edu``'s ``LoRALinear`` with the
  readable reference forward and with the fused fast path, PEFT's LoRA layer, and the merged layer.
  Mode ``forward`` is inference (``torch.no_grad``); mode ``forward_backward`` is one training step of
  the layer: the output, then the gradients of the input and of the trainable parameters (the frozen
  base: the input gradient only). Timings are CUDA events around each call: warm-up, then the median
  of many calls. Every record carries its ratio to the frozen base measured in the same run.
* **models** — a GPT-2-small-shaped transformer (random weights, nothing downloaded), batch 8 × 1024,
  bfloat16 autocast, AdamW: peak memory and the median step time, full fine-tuning against LoRA r = 8,
  next to the peak that ``lora_edu.memory.training_memory`` predicts. Both the course's transformer
  (``lora_edu.transformer`` at GPT-2-small shape, LoRA from ``lora_edu`` on ``q_proj`` and ``v_proj``,
  reference and fused) and Hugging Face's ``GPT2LMHeadModel`` (LoRA from PEFT on ``c_attn``) are measured.

Usage::

    python benchmarks/lora_gpu.py                 # full sizes on a CUDA GPU; tiny sizes on a CPU
    python benchmarks/lora_gpu.py --smoke         # tiny sizes anywhere (what the tests run)
    python benchmarks/lora_gpu.py --out my.json   # default: benchmarks/results/<gpu-name>.json

It writes one JSON file (see ``SCHEMA_KEYS``) and prints a short table. No test asserts on its times.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import platform
import random
import re
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:       # run as a script from a checkout: find lora_edu
    sys.path.insert(0, str(HERE.parent))

import torch.nn.functional as F  # noqa: E402

from lora_edu.lora import LoRALinear, apply_lora, count_parameters, merge_lora  # noqa: E402
from lora_edu.memory import TransformerShape, gib, measure_peak, training_memory  # noqa: E402
from lora_edu.traffic import layer_kernels  # noqa: E402
from lora_edu.transformer import Transformer, TransformerConfig  # noqa: E402

RESULTS = HERE / "results"
SCHEMA_KEYS = ("benchmark", "gpu", "device", "smoke", "date", "versions", "settings", "ceilings", "records",
               "kernel_records", "model_records", "targets")
RECORD_KEYS = ("method", "d", "r", "T", "dtype", "mode", "median_ms", "ratio_to_base", "p10_ms", "p90_ms", "n",
               "peak_extra_mib")
KERNEL_KEYS = ("impl", "name", "phase", "d", "r", "T", "flops", "bytes", "median_ms")
MODEL_KEYS = ("model", "method", "batch", "seq", "dtype", "trainable", "total_params", "peak_bytes", "peak_gib",
              "predicted_bytes", "predicted_gib", "prediction_error", "step_ms", "step_ratio_to_full")

FULL = dict(dims=(1024, 4096), ranks=(8, 64), tokens=8192, warmup=10, iters=25, rounds=4,
            model=dict(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, vocab_size=50257, max_seq_len=1024),
            batch=8, seq=1024, model_warmup=2, model_iters=6)
SMOKE = dict(dims=(32, 64), ranks=(2, 4), tokens=64, warmup=1, iters=3, rounds=1,
             model=dict(n_layers=2, d_model=32, n_heads=2, d_mlp=64, vocab_size=128, max_seq_len=16),
             batch=2, seq=16, model_warmup=1, model_iters=1)
LAYER_METHODS = ("base_frozen", "full_linear", "lora_reference", "lora_fused", "peft", "merged")


def slug(name: str) -> str:
    """A file-name-safe version of a device name: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    versions = {"python": platform.python_version(), "torch": torch.__version__, "peft": _version("peft"),
                "transformers": _version("transformers"), "cuda": torch.version.cuda or "none"}
    return {"gpu": gpu, "device": device.type, "versions": versions,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# --------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], n: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``n`` calls: CUDA events on a GPU, the wall clock on a CPU."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def interleaved(fns: dict[str, Callable[[], object]], cfg: dict, device: torch.device) -> dict[str, list[float]]:
    """Warm every function up, then time them call by call in turn, so that clock drift and the host's
    hiccups fall on every method alike. The order is shuffled each time (seeded): at d = 1024 a
    (T, d) input fits in the 60 MB L2 cache, and a method always timed right after one that read the
    same input would find it cached. Returns all times per name (ms)."""
    for fn in fns.values():
        for _ in range(cfg["warmup"]):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names, shuffle = list(fns), random.Random(0).shuffle
    for _ in range(cfg["rounds"]):
        if device.type == "cuda":
            events = []
            for _ in range(cfg["iters"]):
                shuffle(names)
                for name in names:
                    fn = fns[name]
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    events.append((name, start, end))
            torch.cuda.synchronize(device)
            for name, start, end in events:
                times[name].append(start.elapsed_time(end))
        else:
            for _ in range(cfg["iters"]):
                for name, fn in fns.items():
                    times[name] += time_calls(fn, 1, device)
    return times


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


# --------------------------------------------------------------------------- layers


def build_layers(d: int, r: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, nn.Module]:
    """The six layers of one comparison, sharing the same base weight and the same A, B."""
    import peft
    from peft.tuners.lora import Linear as PeftLinear

    torch.manual_seed(seed)
    base = nn.Linear(d, d, bias=False, device=device, dtype=dtype)
    base.requires_grad_(False)
    full = copy.deepcopy(base).requires_grad_(True)
    ref = LoRALinear(copy.deepcopy(base), r=r, alpha=2 * r, impl="reference")
    with torch.no_grad():                     # B = 0 would make the branch a no-op; time real numbers
        ref.lora_B.normal_(std=0.02)
    fused = copy.deepcopy(ref)
    fused.impl = "fused"
    merged = merge_lora(copy.deepcopy(ref))   # what you deploy: a plain nn.Linear holding W0 + ΔW
    cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["base"])
    pl = PeftLinear(copy.deepcopy(base), "default", config=cfg, r=r, lora_alpha=2 * r).to(device=device, dtype=dtype)
    pl.base_layer.requires_grad_(False)
    with torch.no_grad():
        pl.lora_A["default"].weight.copy_(ref.lora_A)
        pl.lora_B["default"].weight.copy_(ref.lora_B)
    return {"base_frozen": base, "full_linear": full, "lora_reference": ref, "lora_fused": fused, "peft": pl,
            "merged": merged}


def trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def layer_step_fns(layers: dict[str, nn.Module], x: torch.Tensor, g: torch.Tensor, mode: str):
    """Zero-argument functions that run one forward (inference) or one forward + backward."""
    fns = {}
    for name, layer in layers.items():
        if mode == "forward":
            if name == "full_linear":
                continue                      # the same op as the frozen base in inference
            def fwd(layer=layer):
                with torch.no_grad():
                    return layer(x)
            fns[name] = fwd
        else:
            if name == "merged":
                continue                      # merging is for inference
            inputs = [x] + trainable(layer)

            def step(layer=layer, inputs=inputs):
                return torch.autograd.grad(layer(x), inputs, g)   # no .grad accumulation in the timing
            fns[name] = step
    return fns


def bench_layers(cfg: dict, device: torch.device, dtype: torch.dtype, log=print) -> list[dict]:
    records = []
    T = cfg["tokens"]
    for d in cfg["dims"]:
        for r in cfg["ranks"]:
            layers = build_layers(d, r, device, dtype)
            torch.manual_seed(1)
            x = torch.randn(T, d, device=device, dtype=dtype, requires_grad=True)
            g = torch.randn(T, d, device=device, dtype=dtype)
            for mode in ("forward", "forward_backward"):
                fns = layer_step_fns(layers, x, g, mode)
                times = interleaved(fns, cfg, device)
                base_ms = statistics.median(times["base_frozen"])
                for name, ts in times.items():
                    peak = None
                    if mode == "forward_backward":
                        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
                        peak = (measure_peak(fns[name], device=device) - before) / 2**20
                    med = statistics.median(ts)
                    records.append({"method": name, "d": d, "r": r, "T": T, "dtype": str(dtype).replace("torch.", ""),
                                    "mode": mode, "median_ms": med, "ratio_to_base": med / base_ms,
                                    "p10_ms": _quantile(ts, 0.1), "p90_ms": _quantile(ts, 0.9), "n": len(ts),
                                    "peak_extra_mib": peak})
                log(f"d={d:5d} r={r:3d} {mode:16s} " + "  ".join(
                    f"{rec['method']}={rec['median_ms']:.3f}ms({rec['ratio_to_base']:.2f}x)"
                    for rec in records if rec["d"] == d and rec["r"] == r and rec["mode"] == mode))
            del layers, x, g
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return records


# --------------------------------------------------------------------------- ceilings and single kernels


def bench_ceilings(cfg: dict, device: torch.device) -> dict:
    """The two numbers every roofline needs: copy bandwidth (bytes read + written per second) and the
    bf16 matmul rate, measured here and now."""
    n, m = (2**29, 8192) if device.type == "cuda" else (2**20, 256)
    a = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    copy_ms = statistics.median(time_calls(lambda: b.copy_(a), 20, device))
    del a, b
    M = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    mm_ms = statistics.median(time_calls(lambda: M @ M, 10, device))
    return {"bandwidth": 2 * n * 2 / (copy_ms * 1e-3), "matmul_flops": 2 * m**3 / (mm_ms * 1e-3),
            "copy_bytes": 2 * n * 2, "matmul_size": m}


def bench_kernels(cfg: dict, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """Time every kernel that ``lora_edu.traffic.layer_kernels`` lists for the base, the reference and
    the fused layer, one at a time, at the largest d and smallest r (the chapter's table)."""
    T, d, r, s = cfg["tokens"], max(cfg["dims"]), min(cfg["ranks"]), 2.0
    torch.manual_seed(2)
    x, g, y, u, out, gx = (torch.randn(T, d, device=device, dtype=dtype) for _ in range(6))
    W = torch.randn(d, d, device=device, dtype=dtype) / d**0.5
    A = torch.randn(r, d, device=device, dtype=dtype) / d**0.5
    B = torch.randn(d, r, device=device, dtype=dtype)
    t = x @ A.T
    sB = B * s
    gB = g.T @ t
    run = {
        "y = x·Wᵀ": lambda: x @ W.T, "t = x·Aᵀ": lambda: x @ A.T, "u = t·Bᵀ": lambda: t @ B.T,
        "v = u·scaling": lambda: u * s, "h = y + v": lambda: y + u, "gu = g·scaling": lambda: g * s,
        "gt = gu·B": lambda: g @ B, "gB = guᵀ·t": lambda: g.T @ t, "gx₁ = gt·A": lambda: t @ A,
        "gA = gtᵀ·x": lambda: t.T @ x, "gx₀ = g·W": lambda: g @ W, "gx = gx₀ + gx₁": lambda: y + u,
        "sB = B·scaling (tiny)": lambda: B * s, "h = t·sBᵀ (written once)": lambda: t @ sB.T,
        "h += x·Wᵀ (beta=1)": lambda: out.addmm_(x, W.T), "dt = g·sB": lambda: g @ sB,
        "gB = gᵀ·t": lambda: g.T @ t, "gB ·= scaling (tiny)": lambda: gB.mul_(1.0), "gA = dtᵀ·x": lambda: t.T @ x,
        "gx = dt·A (written once)": lambda: t @ A, "gx += g·W (beta=1)": lambda: gx.addmm_(g, W),
        "gx = g·W": lambda: g @ W,
    }
    records = []
    for impl in ("base", "reference", "fused"):
        for k in layer_kernels(impl, T, d, d, r, dtype_bytes=2):
            fn = run[k.name]
            for _ in range(cfg["warmup"]):
                fn()
            ms = statistics.median(time_calls(fn, cfg["iters"] * cfg["rounds"], device))
            records.append({"impl": impl, "name": k.name, "phase": k.phase, "d": d, "r": r, "T": T,
                            "flops": k.flops, "bytes": k.bytes, "median_ms": ms})
    return records


# --------------------------------------------------------------------------- whole models


def _optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]


def _train_measure(model: nn.Module, loss_of: Callable[[], torch.Tensor], cfg: dict, device: torch.device) -> dict:
    """Steady-state peak memory and median step time of AdamW training steps under bf16 autocast."""
    params = trainable(model)
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_of()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(cfg["model_warmup"]):   # the first step creates AdamW's state
        step()
    existing = list(model.parameters()) + list(model.buffers()) + _optimizer_tensors(opt)
    peak = measure_peak(step, existing=existing, device=device)
    times = time_calls(step, cfg["model_iters"], device)
    return {"peak_bytes": int(peak), "step_ms": statistics.median(times)}


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over all ``B * S`` positions (the last one has no target and is
    ignored), in float32 as usual under autocast."""
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def bench_models(cfg: dict, device: torch.device, log=print) -> list[dict]:
    tcfg = TransformerConfig.gpt2_small(**cfg["model"])
    shape = TransformerShape.from_config(tcfg)
    B, S = cfg["batch"], cfg["seq"]
    records = []
    torch.manual_seed(0)
    ids = torch.randint(0, shape.vocab, (B, S), device=device)

    # (1) the course's transformer: full fine-tuning, LoRA r=8 on q_proj and v_proj (reference and fused)
    variants = [("full", None), ("lora_reference", "reference"), ("lora_fused", "fused")]
    for method, impl in variants:
        torch.manual_seed(0)
        model = Transformer(tcfg).to(device)
        if impl is not None:
            apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16, impl=impl)
        est = training_memory(shape, B, S, method="full" if impl is None else "lora", r=8,
                              targets=("q_proj", "v_proj"))
        out = _train_measure(model, lambda: lm_loss(model(ids), ids), cfg, device)
        n_train, n_total = count_parameters(model)
        records.append(_model_record("lora_edu_transformer", method, B, S, n_train, n_total, out, est.total))
        log(_model_line(records[-1]))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # (2) Hugging Face GPT2LMHeadModel from a config (random init) — PEFT LoRA r=8 on c_attn
    try:
        import peft
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as exc:   # pragma: no cover - both are installed wherever the course runs
        log(f"skipping GPT2LMHeadModel: {exc}")
        return records
    gcfg = GPT2Config(n_layer=shape.n_layers, n_embd=shape.d_model, n_head=shape.n_heads, n_inner=shape.d_ff,
                      vocab_size=shape.vocab, n_positions=shape.context)
    hf_shape = TransformerShape.from_config(gcfg)
    for method in ("full", "peft"):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(gcfg).to(device)
        model.train()
        if method == "peft":
            model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"],
                                                               fan_in_fan_out=True))
        est = training_memory(hf_shape, B, S, method="full" if method == "full" else "lora", r=8,
                              targets=("qkv",))
        out = _train_measure(model, lambda: model(input_ids=ids, labels=ids).loss, cfg, device)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in model.parameters())
        records.append(_model_record("gpt2_hf", method, B, S, n_train, n_total, out, est.total))
        log(_model_line(records[-1]))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for rec in records:
        full = next(x for x in records if x["model"] == rec["model"] and x["method"] == "full")
        rec["step_ratio_to_full"] = rec["step_ms"] / full["step_ms"]
    return records


def _model_record(model, method, B, S, n_train, n_total, out, predicted) -> dict:
    return {"model": model, "method": method, "batch": B, "seq": S, "dtype": "bfloat16 autocast, float32 weights",
            "trainable": int(n_train), "total_params": int(n_total), "peak_bytes": out["peak_bytes"],
            "peak_gib": gib(out["peak_bytes"]), "predicted_bytes": int(predicted), "predicted_gib": gib(predicted),
            "prediction_error": predicted / out["peak_bytes"] - 1, "step_ms": out["step_ms"],
            "step_ratio_to_full": None}


def _model_line(rec: dict) -> str:
    return (f"{rec['model']:20s} {rec['method']:15s} trainable {rec['trainable']:>11,d}  peak {rec['peak_gib']:7.3f} GiB "
            f"(predicted {rec['predicted_gib']:7.3f}, {100 * rec['prediction_error']:+.1f}%)  step {rec['step_ms']:.1f} ms")


# --------------------------------------------------------------------------- targets and main


def check_targets(records: list[dict]) -> dict:
    """The issue's three targets, read off the records of this run."""
    def get(method, d, r, mode):
        return next((x for x in records if (x["method"], x["d"], x["r"], x["mode"]) == (method, d, r, mode)), None)

    d_big, r_small = max(x["d"] for x in records), min(x["r"] for x in records)
    fb = get("lora_fused", d_big, r_small, "forward_backward")
    out = {"fused_fwd_bwd_ratio_at_largest_d_smallest_r": fb and fb["ratio_to_base"],
           "fused_fwd_bwd_target": 1.15}
    out["fused_fwd_bwd_met"] = bool(fb and fb["ratio_to_base"] <= 1.15)
    worst = None
    for x in records:
        if x["method"] == "lora_fused":
            p = get("peft", x["d"], x["r"], x["mode"])
            ratio = x["median_ms"] / p["median_ms"]
            worst = ratio if worst is None else max(worst, ratio)
    out["fused_over_peft_worst_ratio"] = worst
    out["fused_not_slower_than_peft"] = bool(worst is not None and worst <= 1.0)
    merged = [x["ratio_to_base"] for x in records if x["method"] == "merged"]
    out["merged_worst_ratio"] = max(merged) if merged else None
    out["merged_target"] = 1.02
    out["merged_met"] = bool(merged and max(merged) <= 1.02)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (automatic without a CUDA GPU)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--skip-models", action="store_true", help="only the layer benchmark")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    smoke = args.smoke or device.type != "cuda"
    cfg = SMOKE if smoke else FULL
    dtype = torch.bfloat16
    env = environment(device)
    print(f"{env['gpu']} | torch {env['versions']['torch']} | peft {env['versions']['peft']} | "
          f"{'smoke (tiny sizes)' if smoke else 'full sizes'}", flush=True)
    ceilings = bench_ceilings(cfg, device)
    print(f"ceilings: copy {ceilings['bandwidth'] / 1e12:.2f} TB/s, bf16 matmul {ceilings['matmul_flops'] / 1e12:.0f} "
          "TFLOP/s", flush=True)
    records = bench_layers(cfg, device, dtype)
    kernel_records = bench_kernels(cfg, device, dtype)
    model_records = [] if args.skip_models else bench_models(cfg, device)
    result = {"benchmark": "lora_gpu", "gpu": env["gpu"], "device": env["device"], "smoke": smoke,
              "date": env["date"], "versions": env["versions"],
              "settings": {k: v for k, v in cfg.items()} | {"dtype": str(dtype).replace("torch.", "")},
              "ceilings": ceilings, "records": records, "kernel_records": kernel_records,
              "model_records": model_records, "targets": check_targets(records)}
    out = args.out or RESULTS / f"{slug(env['gpu'])}{'-smoke' if smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["targets"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
