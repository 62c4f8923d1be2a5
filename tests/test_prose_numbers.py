"""Every number in chapter 07's markdown is tied to the recorded results or to a stated fact.

nbval compares the *outputs* of code cells; it never reads the prose. So each number the prose quotes is
listed here: either a CLAIM, checked against ``benchmarks/results/nvidia-h200.json`` or the course's own
models (with the rounding the prose uses), or a FACT (a paper's figure, a shape, a definition) with its
source. The last test strips all of them from the markdown and fails on any number left over, so a new
number cannot slip in, and re-recording the benchmark cannot leave stale prose: a claim that the new
numbers no longer support fails its check.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from functools import lru_cache
from pathlib import Path

import pytest

from lora_edu.memory import TransformerShape, lora_parameters, training_memory
from lora_edu.results import load_result
from lora_edu.traffic import layer_kernels

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_lora_on_gpu.ipynb"


@lru_cache(maxsize=None)
def markdown() -> str:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return re.sub(r"[ \t]*\n[ \t]*", " ", text)          # one line: prose wraps anywhere


@lru_cache(maxsize=None)
def h200() -> dict:
    return load_result("nvidia-h200.json")


def row(method, d=4096, r=8, mode="forward_backward", config="bf16"):
    return next(x for x in h200()["summary"]
                if (x["config"], x["method"], x["d"], x["r"], x["mode"]) == (config, method, d, r, mode))


def fused():
    return h200()["settings"]["default_fused_method"]


def graph(method, d=4096, r=8):
    return row(method, d, r, "forward_backward_graph")["ratio"]


def models():
    return {(m["model"], m["method"]): m for m in h200()["model_summary"]}


def lora_gpu_ratios():
    """LoRA's GPU time over full fine-tuning's, per model and LoRA method: ratios of the medians (as the
    chapter prints them)."""
    m = models()
    return [x["step_gpu_ms"] / m[model, "full"]["step_gpu_ms"] for (model, method), x in m.items() if method != "full"]


def gpt3():
    shape = TransformerShape.gpt3_175b()
    kw = dict(param_dtype="float16", compute_dtype=None, optimizer="adamw")
    return (shape, training_memory(shape, 1, 2048, method="full", **kw),
            training_memory(shape, 1, 2048, method="lora", r=4, targets=("q_proj", "v_proj"), **kw))


def peak_saving(model, lora_method):
    m = models()
    return 1 - m[model, lora_method]["peak_gib"] / m[model, "full"]["peak_gib"]


def settings():
    return h200()["settings"]


def ceiling(when="start"):
    return h200()["ceilings"][when]["bandwidth"]


def kernel_us(impl, name):
    return 1e3 * statistics.median(k["median_ms"] for k in h200()["kernel_records"] if (k["impl"], k["name"]) == (impl, name))


WRITERS = ("u = t·Bᵀ", "gx₁ = gt·A")
ELEMENTWISE = ("v = u·scaling", "h = y + v", "gu = g·scaling", "gx = gx₀ + gx₁")


def elementwise_speeds():
    """Bytes per second of the reference layer's elementwise kernels, every repeat."""
    return [k["bytes"] / (k["median_ms"] * 1e-3) for k in h200()["kernel_records"]
            if k["impl"] == "reference" and k["name"] in ELEMENTWISE]


def big_batches():
    """The big matmul's batch times (µs), one per distinct operation (plain or beta=1) and repeat."""
    out = {}
    for k in h200()["kernel_records"]:
        if k["flops"] > 1e11:
            us = 1e3 * k["median_ms"]
            assert out.setdefault((k["op"], k["repeat"]), us) == us, "one shared timing per operation and repeat"
            out[k["op"], k["repeat"]] = us
    return out


def thin_fractions(writers):
    """The reference layer's thin matmuls' bandwidth as a fraction of the start's copy ceiling."""
    out = []
    for k in layer_kernels("reference", T, D, D, R):
        if 0 < k.flops / k.bytes < 100 and k.flops > 2 * T * D and (k.name in WRITERS) == writers:
            out.append(k.bytes / (kernel_us("reference", k.name) * 1e-6) / ceiling())
    return out


def graph_extra_us(method, d):
    return 1e3 * (row(method, d, 8, "forward_backward_graph")["median_ms"]
                  - row("base_frozen", d, 8, "forward_backward_graph")["median_ms"])


def crossing(method):
    """Where b·d² (the weight gradient) meets a·d + c (LoRA's extra), fitted at the two widths (chapter 07)."""
    b = graph_extra_us("full_linear", 4096) / 4096**2
    a = (graph_extra_us(method, 4096) - graph_extra_us(method, 1024)) / 3072
    c = graph_extra_us(method, 1024) - a * 1024
    return (a + math.sqrt(a * a + 4 * b * c)) / (2 * b)


def estimate_coverage():
    """Chapter 07's priced part of LoRA's model-level GPU saving (weight gradients at the matmul ceiling +
    AdamW's traffic at either copy ceiling), as fractions of the measured savings: (lowest, highest)."""
    wgrad, adam = wgrad_estimate_ms(), adam_estimates_ms()
    m = models()
    saved = [m["lora_edu_transformer", "full"]["step_gpu_ms"] - m["lora_edu_transformer", k]["step_gpu_ms"]
             for k in ("lora_reference", "lora_fused")]
    return (wgrad + min(adam)) / max(saved), (wgrad + max(adam)) / min(saved)


def _reference_thin_kernels():
    """The reference layer's thin cuBLAS matmuls in the profiler's step, each split-K one with the reduction kernel
    that follows it: (kernel record, µs including its reduction)."""
    prof = [p for p in h200()["profile_records"] if p["method"] == "lora_reference"]
    out = []
    for i, p in enumerate(prof):
        if p["kernel"].startswith("nvjet") and p["us"] < 100:
            extra = prof[i + 1]["us"] if "splitK" in p["kernel"] and "splitKreduce" in prof[i + 1]["kernel"] else 0.0
            assert extra or "splitK" not in p["kernel"], "a split-K kernel without its reduction"
            out.append((p, p["us"] + extra))
    return out


def slowest_has_most_blocks():
    thin = _reference_thin_kernels()
    return max(thin, key=lambda t: t[1])[0]["grid"] == max(thin, key=lambda t: math.prod(t[0]["grid"]))[0]["grid"]


def split_k_in_the_middle():
    """Split-K kernels have fewer blocks than the others, and with their reductions are neither the fastest nor the
    slowest of the thin matmuls."""
    thin = _reference_thin_kernels()
    split = [t for t in thin if "splitK" in t[0]["kernel"]]
    others = [t for t in thin if "splitK" not in t[0]["kernel"]]
    return (len(split) == 2 and max(math.prod(t[0]["grid"]) for t in split) < min(math.prod(t[0]["grid"]) for t in others)
            and min(t[1] for t in others) < min(t[1] for t in split) and max(t[1] for t in split) < max(t[1] for t in others))


@lru_cache(maxsize=None)
def profile() -> dict:
    return load_result("step_profile_nvidia-h200.json")


def output_gemms(vocab):
    return [g for g in profile()["output_layer_gemms"] if g["vocab"] == vocab]


@lru_cache(maxsize=None)
def _step_profile_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("step_profile", ROOT / "benchmarks" / "step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_group_of(name):
    return _step_profile_module().kernel_group(name)


def wgrad_estimate_ms():
    """Chapter 07's floor for the frozen matrices' weight gradients: 2 x tokens x weights at the matmul ceiling."""
    shape = TransformerShape.gpt2_small()
    tokens = settings()["batch"] * settings()["seq"]
    matrices = shape.n_layers * (4 * shape.d_model**2 + 2 * shape.d_model * shape.d_ff) + shape.vocab * shape.d_model
    return 2 * tokens * matrices / h200()["ceilings"]["matmul_flops"] * 1e3


def adam_estimates_ms():
    """Chapter 07's AdamW traffic estimates (28 or 80 bytes per parameter, at the start's and the end's copy ceiling)."""
    n = TransformerShape.gpt2_small().parameters()
    return [b * n / ceiling(w) * 1e3 for b in (28, 80) for w in ("start", "end")]


def stock_floor(bw):
    return 1 + 6 * T * D * 2 / bw / (row("base_frozen", mode="forward_backward_graph")["median_ms"] * 1e-3)


MIB = 2**20
T, D, R = 8192, 4096, 8
LORA_METHODS = ("lora_reference", "peft")

# (snippet as it appears in the prose, whitespace collapsed) -> a check against the data
CLAIMS = {
    "**under 1 % more arithmetic**": lambda: 3 * R / D < 0.01 and graph("peft") > 1.2,
    "under 1 % more arithmetic, much more time": lambda: 3 * R / D < 0.01 and graph("peft") > 1.2,
    "still needs less GPU time than full fine-tuning": lambda: max(lora_gpu_ratios()) < 1,
    "$T = 8192$": lambda: settings()["tokens"] == T,
    "`nn.Linear(4096, 4096)`": lambda: D in settings()["dims"],
    "$d = 4096$": lambda: D in settings()["dims"],
    "$d = 1024$": lambda: 1024 in settings()["dims"],
    "$r = 8$": lambda: R in settings()["ranks"],
    "$r = 64$": lambda: 64 in settings()["ranks"],
    # the primer: the recording GPU's shape
    "the H200 has 132 *multiprocessors*": lambda: h200()["system"]["multiprocessors"] == 132,
    "an *L2 cache* of 60 MiB": lambda: h200()["system"]["l2_cache_bytes"] == 60 * MIB,
    "bfloat16 stores a number in 2 bytes (float32 in 4)": lambda: True,
    # the conditions
    "the memory clock read the same in every record":
        lambda: len({c[w]["mem_clock_mhz"] for c in h200()["clock_records"] for w in ("before", "after")}) == 1,
    "the elementwise kernels timed during the run (section 2) moved their bytes at 93–99 % of the start's value, "
    "faster than the end's":
        lambda: (round(100 * min(elementwise_speeds()) / ceiling()), round(100 * max(elementwise_speeds()) / ceiling()))
        == (93, 99) and min(elementwise_speeds()) > ceiling("end") and ceiling("end") < 0.95 * ceiling("start"),
    "`(8192, 4096)` activation (64 MiB) does not fit": lambda: T * D * 2 == 64 * MIB > h200()["system"]["l2_cache_bytes"],
    "`(8192, 1024)` one (16 MiB), which fits in L2": lambda: T * 1024 * 2 == 16 * MIB < h200()["system"]["l2_cache_bytes"],
    "Sampled every 50 ms while the models trained": lambda: settings()["clock_interval_s"] == 0.05,
    "the SM clock read its maximum in every sample":
        lambda: (lambda blocks: len(blocks) == 6 * settings()["repeats"] and all(
            c["during"]["samples"] > 10 and c["during"]["sm_clock_min_mhz"] == h200()["system"]["max_sm_clock_mhz"]
            and not c["during"]["throttle_reasons"] for c in blocks))(
            [c for c in h200()["clock_records"] if c["block"].startswith("model")]),
    # section 1
    "At $d = 4096$ every LoRA layer takes less GPU time than the fully trained one (PEFT's and the reference's by "
    "less than a tenth)":
        lambda: all(row(k, mode="forward_backward_graph")["median_ms"]
                    < row("full_linear", mode="forward_backward_graph")["median_ms"] for k in LORA_METHODS + (fused(),))
        and all(row(k, mode="forward_backward_graph")["median_ms"]
                > 0.9 * row("full_linear", mode="forward_backward_graph")["median_ms"] for k in LORA_METHODS),
    "it flips in GPU time too": lambda: all(row(k, 1024, 8, "forward_backward_graph")["median_ms"]
                                            > row("full_linear", 1024, 8, "forward_backward_graph")["median_ms"]
                                            for k in LORA_METHODS + (fused(),)),
    "16 times smaller": lambda: (4096 / 1024) ** 2 == 16,
    "only when the layer is a few thousand wide, and less so for PEFT's layer than for the fused one":
        lambda: 1500 < crossing(fused()) < crossing("peft") < 5000,
    "has $d = 768$": lambda: TransformerShape.gpt2_small().d_model == 768 < crossing(fused()),
    "124 M parameters": lambda: round(TransformerShape.gpt2_small().parameters() / 1e6) == 124,
    "batch 8 × 1024 tokens": lambda: (settings()["batch"], settings()["seq"]) == (8, 1024),
    "a LoRA step needed 0.71–0.82 of full fine-tuning's GPU time here":
        lambda: (round(min(lora_gpu_ratios()), 2), round(max(lora_gpu_ratios()), 2)) == (0.71, 0.82),
    "cover between a quarter and a half of the measured saving":
        lambda: 0.25 <= estimate_coverage()[0] and estimate_coverage()[1] <= 0.5,
    # the step profile (benchmarks/results/step_profile_nvidia-h200.json)
    "its totals agree with the GPU-time column above to within 2 %":
        lambda: all(abs(profile()["methods"][k]["total_ms"] / models()["lora_edu_transformer", k]["step_gpu_ms"] - 1) < 0.02
                    for k in ("full", "lora_fused")),
    "Matrix products are the largest share of the saving, then the optimizer":
        lambda: list(profile()["saving_ms"])[:2] == ["matmul", "optimizer"],
    "AdamW's kernels almost vanish with LoRA":
        lambda: profile()["methods"]["lora_fused"]["groups_ms"].get("optimizer", 0) < 0.05 * profile()["saving_ms"]["optimizer"],
    "their time is slightly above the top of the estimate":
        lambda: 1 < profile()["saving_ms"]["optimizer"] / max(adam_estimates_ms()) < 1.1,
    "Reductions and normalisation (the gradients of biases and LayerNorm weights, frozen under LoRA too) and the "
    "copies and casts of gradients make most of the rest":
        lambda: (lambda sv: sv["reduction and normalisation"] + sv["copy"] > 0.5 * (profile()["saving_total_ms"]
                                                                                  - sv["matmul"] - sv["optimizer"]))(
            profile()["saving_ms"]),
    "the matrix products saved are more than twice what the arithmetic predicts":
        lambda: profile()["saving_ms"]["matmul"] > 2 * wgrad_estimate_ms(),
    "three matrix products, each called once per step, with `align1` in their names":
        lambda: all(k["calls_per_step"] == 1 and "align1" in k["name"] and kernel_group_of(k["name"]) == "matmul"
                    for k in profile()["methods"]["full"]["top_kernels"][:3]),
    "Their times match the output layer's three products timed alone":
        lambda: sorted(round(k["ms_per_step"], 1) for k in profile()["methods"]["full"]["top_kernels"][:3])
        == sorted(round(g["ms"], 1) for g in output_gemms(50257)),
    "GPT-2's vocabulary of 50,257 tokens, not a multiple of 8": lambda: TransformerShape.gpt2_small().vocab == 50257 != 8 * (50257 // 8),
    "padded to 50,304, the next multiple of 64": lambda: 50304 == 64 * math.ceil(50257 / 64),
    "a fifth or less of the speed they reach at 50,304":
        lambda: all(a["tflops"] <= 0.2 * b["tflops"] for a, b in zip(output_gemms(50257), output_gemms(50304))),
    "take over a third of the full step's GPU time":
        lambda: 1 / 3 < sum(g["ms"] for g in output_gemms(50257)) / profile()["methods"]["full"]["total_ms"] < 1 / 2,
    "alone it is most of the matrix products' share of the saving":
        lambda: 0.5 < next(g["ms"] for g in output_gemms(50257) if g["op"].startswith("weight"))
        / profile()["saving_ms"]["matmul"] < 1,
    "Padding the vocabulary to 50,304": lambda: 50304 == 64 * math.ceil(50257 / 64),
    "At 50,257 the matrix library has no fast kernel for the shape and falls back to a general one":
        lambda: all("align1" in k["name"] for k in profile()["methods"]["full"]["top_kernels"][:3])
        and all(g["tflops"] > 0.85 * h200()["ceilings"]["matmul_flops"] / 1e12 for g in output_gemms(50304)),
    "under a sixth of their time":
        lambda: sum(g["ms"] for g in output_gemms(50304)) < sum(g["ms"] for g in output_gemms(50257)) / 6,
    "for full fine-tuning a larger saving than LoRA's whole one":
        lambda: sum(g["ms"] for g in output_gemms(50257)) - sum(g["ms"] for g in output_gemms(50304))
        > profile()["saving_total_ms"],
    "**25 % training speed-up**": lambda: all(0.65 <= x <= 0.85 for x in lora_gpu_ratios()),
    "ours is of the same size": lambda: all(0.65 <= x <= 0.85 for x in lora_gpu_ratios()),
    "a 124 M model on one GPU": lambda: round(TransformerShape.gpt2_small().parameters() / 1e6) == 124,
    "its step takes its GPU time plus a little":
        lambda: all(m["step_ms"] - m["step_gpu_ms"] < 0.10 * m["step_ms"]
                    for (model, _), m in models().items() if model == "gpt2_hf"),
    "its median LoRA steps waited for the host for a large part of the step, and full fine-tuning's for a smaller one":
        lambda: (lambda wait: min(wait[k] for k in wait if k != "full") > 0.25 and 0 < wait["full"] < min(
            wait[k] for k in wait if k != "full"))(
            {method: 1 - m["step_gpu_ms"] / m["step_ms"] for (model, method), m in models().items()
             if model == "lora_edu_transformer"}),
    "the median of 50 timed steps": lambda: settings()["model_iters"] == 50,
    "about 10 ms or more apart":
        lambda: round(min(m["step_ms_max"] - m["step_ms_min"] for (model, _), m in models().items()
                          if model == "lora_edu_transformer")) == 10,
    # section 2
    "20 launches of the same kernel captured in one CUDA graph and replayed, divided by 20":
        lambda: settings()["graph_batch"] == 20,
    "$8192 \\times 4096 \\times 4096$ matmul": lambda: (T, D) == (settings()["tokens"], max(settings()["dims"])),
    "too close for these batches to rank them":   # in some repeat an adding (beta=1) matmul beat its plain twin
        lambda: any(big_batches()[plus, rep] < big_batches()[plain, rep]
                    for plus, plain in (("out += x·Wᵀ", "x·Wᵀ"), ("gx += g·W", "g·W")) for rep in range(settings()["repeats"])),
    "each of those operations was timed once per repeat, side by side, and their batches agree to within a few percent":
        lambda: (lambda big: len({op for op, _ in big}) == 4 and (max(big.values()) - min(big.values()))
                 < 0.05 * statistics.median(big.values()))(big_batches()),
    "at most 8 FLOPs per byte": lambda: max(k.flops / k.bytes for k in layer_kernels("reference", T, D, D, R)
                                            if k.flops / k.bytes < 100) <= 8,
    "elementwise passes well under 1": lambda: all(k.flops / k.bytes < 1 for k in layer_kernels("reference", T, D, D, R)
                                                   if k.name.startswith(("v =", "h =", "gu =", "gx ="))),
    "$8192 \\times 4096$ bfloat16 tensor (64 MiB)": lambda: T * D * 2 == 64 * MIB,
    "ten passes of 64 MiB": lambda: sum(k.bytes for k in layer_kernels("reference", T, D, D, R)
                                        if k.flops / k.bytes < 1) == 10 * 64 * MIB,
    "The readers reach 64–81 % of the copy ceiling, the writers 55–57 %":
        lambda: (round(100 * min(thin_fractions(False))), round(100 * max(thin_fractions(False))),
                 round(100 * min(thin_fractions(True))), round(100 * max(thin_fractions(True)))) == (64, 81, 55, 57),
    "the slowest kernel is one with the most blocks, the *split-K* ones": lambda: slowest_has_most_blocks(),
    "have fewer blocks and land in the middle": lambda: split_k_in_the_middle(),
    "still takes about 2 µs": lambda: all(1.5 <= kernel_us("fused", n) <= 3 for n in ("sB = B·scaling (tiny)",
                                                                                    "gB ·= scaling (tiny)")),
    "the same 64 MiB tensor 20 times in a row, and the 60 MiB L2 cache":
        lambda: settings()["graph_batch"] == 20 and h200()["system"]["l2_cache_bytes"] == 60 * MIB,
    "CUDA events around 20 calls of one method in a loop": lambda: settings()["steady_iters"] == 20,
    "the host needs about as long to issue a LoRA step as the GPU needs to run it":
        lambda: all(0.85 <= row(k)["host_ms"] / row(k, mode="forward_backward_graph")["median_ms"] <= 1.15
                    for k in LORA_METHODS + (fused(),)),
    "the frozen layer's eager median is even below its GPU time":
        lambda: row("base_frozen")["median_ms"] < row("base_frozen", mode="forward_backward_graph")["median_ms"],
    "the eager step takes several times its GPU time, for every method alike":
        lambda: all(row(k, 1024)["median_ms"] > 3 * row(k, 1024, 8, "forward_backward_graph")["median_ms"]
                    for k in ("base_frozen",) + LORA_METHODS + (fused(),)),
    "costs about twice the frozen layer's GPU time": lambda: 1.8 <= graph(fused(), 1024) <= 2.3,
    "the reference and PEFT's over two and a half times": lambda: all(2.5 < graph(k, 1024) < 3 for k in LORA_METHODS),
    "$T = 8192$ tokens, width $d = 768$": lambda: TransformerShape.gpt2_small().d_model == 768,
    "batch 8 × 1024 (": lambda: (settings()["batch"], settings()["seq"]) == (8, 1024),
    # section 3
    "$4096 \\times 8$ matrix $B$": lambda: True,
    "$8192 \\times 4096$ activation": lambda: True,
    "**six passes over a 64 MiB tensor**": lambda: sum(1 for k in layer_kernels("fused", T, D, D, R)
                                                       if 64 * MIB <= k.bytes < 65 * MIB) == 6,
    "slightly below the stock fused path at $r = 8$, and slower at $r = 64$":
        lambda: graph("lora_fused_triton", D, 8) < graph(fused(), D, 8)
        and graph("lora_fused_triton", D, 64) > graph(fused(), D, 64),
    "it was slower than PEFT's own layer at both widths, in every repeat":
        lambda: all(row("peft_compiled", d)["ratio_min"] > row("peft", d)["ratio_max"] for d in (1024, D)),
    "the fused layer removes about half of LoRA's overhead":
        lambda: 0.4 <= graph_extra_us(fused(), D) / graph_extra_us("peft", D) <= 0.6,
    "It is still well above its own floor": lambda: graph(fused()) > stock_floor(ceiling("end")) + 0.05,
    "`lora_dropout = 0.05`": lambda: settings()["configs"]["peft_default"]["dropout"] == 0.05,
    "the two take the same GPU time here":
        lambda: all(abs(row("lora_reference", d, 8, "forward_backward_graph", "peft_default")["median_ms"]
                        / row("peft", d, 8, "forward_backward_graph", "peft_default")["median_ms"] - 1) < 0.02
                    for d in (1024, D)),
    "most of the fused layer's advantage in GPU time disappears":
        lambda: (lambda mode_ratio: mode_ratio("forward_backward_graph") < 0.65 and mode_ratio("forward_backward") > 0.8)(
            lambda mode: row(fused(), 1024, 8, mode, "peft_default")["median_ms"]
            / row("lora_reference", 1024, 8, mode, "peft_default")["median_ms"]),
    "took less GPU time than the reference at every measured shape and configuration":
        lambda: all(x["median_ms"] < row("lora_reference", x["d"], x["r"], x["mode"], x["config"])["median_ms"]
                    for x in h200()["summary"] if x["method"] == fused() and x["mode"] == "forward_backward_graph"),
    "the fused path was faster or within the spread of the two over the repeats":
        lambda: all(c["pick_ok"] and c["auto_picks"] == "fused" for c in h200()["targets"]["auto_choices"]),
    # section 4
    "`d_in = d_out = 4096`, `r = 8`": lambda: D in settings()["dims"] and R in settings()["ranks"],
    "(At $d = 1024$ these eager times are mostly the host's":   # over twice the matmul's floor, and the host as slow
        lambda: all(row(k, 1024, r, "forward")["median_ms"] * 1e-3 > 2 * 2 * T * 1024**2 / h200()["ceilings"]["matmul_flops"]
                    and row(k, 1024, r, "forward")["host_ms"] > 0.8 * row(k, 1024, r, "forward")["median_ms"]
                    for k in ("base_frozen", "merged") for r in (8, 64)),
    # section 5
    "at 8 × 1024 tokens": lambda: (settings()["batch"], settings()["seq"]) == (8, 1024),
    "with 8 × 1024 tokens": lambda: (settings()["batch"], settings()["seq"]) == (8, 1024),
    "(124,439,808 parameters": lambda: TransformerShape.gpt2_small().parameters() == 124_439_808,
    "50,257-token vocabulary": lambda: TransformerShape.gpt2_small().vocab == 50257,
    # section 6: one reading of the paper's figures
    "about 1.05 TB": lambda: round(3 * 2 * gpt3()[0].parameters() / 1e12, 2) == 1.05,
    "backward-start peak is about 1.12 TB, close to the paper's 1.2 TB": lambda: round(gpt3()[1].backward_peak / 1e12, 2) == 1.12,
    "about the paper's 350 GB": lambda: round(gpt3()[2].weights / 1e9, -1) == 350,
    "activations included: about 0.40 TB": lambda: round(gpt3()[2].backward_peak / 1e12, 2) == 0.40,
    "it counts one sequence's activations inside the 1.2 TB but none inside the 350 GB":
        lambda: gpt3()[2].backward_peak - gpt3()[2].weights > 40e9,
    "peak for full fine-tuning is larger still": lambda: gpt3()[1].step_peak > gpt3()[1].backward_peak,
    "would need 2.8 TB": lambda: round(16 * gpt3()[0].parameters() / 1e12, 1) == 2.8,
    # summary
    "$2r/d$ (0.4 %)": lambda: round(100 * 2 * R / D, 1) == 0.4,
    "$3r/d$ (0.6 %)": lambda: round(100 * 3 * R / D, 1) == 0.6,
    "about 1.4× the frozen layer's GPU time at $d = 4096$": lambda: round(graph("peft"), 1) == 1.4,
    "about 2.6× at $d = 1024$": lambda: round(graph("peft", 1024), 1) == 2.6,
    "needed 0.71–0.82 of full fine-tuning's GPU time here, thanks to":
        lambda: (round(min(lora_gpu_ratios()), 2), round(max(lora_gpu_ratios()), 2)) == (0.71, 0.82),
    "similar in size to the paper's 25 % speed-up": lambda: all(0.65 <= x <= 0.85 for x in lora_gpu_ratios()),
    "about 1.2× in GPU time instead of PEFT's 1.4×": lambda: (round(graph(fused()), 1), round(graph("peft"), 1)) == (1.2, 1.4),
    "within 1 % of the H200's measurement for our transformer":
        lambda: all(abs(m["prediction_error"]) < 0.01 for m in h200()["model_records"]
                    if m["model"] == "lora_edu_transformer"),
    "LoRA saves 13–20 %": lambda: (round(100 * peak_saving("gpt2_hf", "peft")),
                                   round(100 * peak_saving("lora_edu_transformer", "lora_fused"))) == (13, 20),
    "18.9 M trainable parameters, about 9,250× fewer":
        lambda: round(lora_parameters(gpt3()[0], 4, ("q_proj", "v_proj")) / 1e6, 1) == 18.9
        and round(gpt3()[0].parameters() / lora_parameters(gpt3()[0], 4, ("q_proj", "v_proj")), -1) == 9250,
    # appendix
    "In this recording `impl=\"fused\"` ran the stock kernels everywhere":
        lambda: set(settings()["fused_backends"].values()) == {"torch"}
        and models()["lora_edu_transformer", "lora_fused"]["fused_backend"] == "torch",
    "its GPU times match the forced stock records": lambda: all(fused_matches_its_back_end(d, r) for d in (1024, D) for r in (8, 64)),
    "The slowest of these has the most blocks, and the split-K ones, with their reductions, sit in the middle":
        lambda: slowest_has_most_blocks() and split_k_in_the_middle(),
    "The fused-over-PEFT aim lies just below the stock-kernel design's floor":
        lambda: all(0 < stock_floor(ceiling(w)) / graph("peft") - h200()["targets"]["fused_over_peft_target"] < 0.02
                    for w in ("start", "end")),
}

# (snippet) -> where it comes from: figures of the papers, shapes, definitions, the course's own text
FACTS = {
    "# 07 ·": "the chapter's number",
    "Chapter 05": "course structure", "chapter 06": "course structure", "(chapter 05)": "course structure",
    "Chapter 06 trained": "course structure",
    "About 80 minutes": "the chapter's time estimate (lora_edu.course)",
    "1.2 TB → 350 GB": "Hu et al. 2022, section 4.2",
    "**1.2 TB to 350 GB**": "Hu et al. 2022, section 4.2",
    "10,000×": "Hu et al. 2022, abstract and section 4.2",
    "350 GB to 35 MB": "Hu et al. 2022, section 4.2",
    "400 GB of VRAM": "the seed blog post's figure, quoted as not the paper's",
    "GPT-3 175B": "the model's name", "175B": "the model's name", "a 175 B model": "GPT-3's size",
    "(section 4.2)": "Hu et al. 2022", "section 4.2": "Hu et al. 2022", "section 4.1": "Hu et al. 2022",
    "section 7.1": "Hu et al. 2022 (Table 5: which weight matrices to adapt)",
    "96 layers": "Brown et al. 2020, Table 2.1", "96 heads": "Brown et al. 2020, Table 2.1",
    "$d_\\text{model} = 12288$": "Brown et al. 2020, Table 2.1", "$4 d_\\text{model}$": "Brown et al. 2020",
    "2048-token context": "Brown et al. 2020, Table 2.1", "2048-token sequence": "the memory model's input",
    "Brown et al., 2020, Table 2.1": "citation",
    "\"up to 2/3\"": "Hu et al. 2022, section 4.2",
    "16 bits": "the precision assumed", "16-bit": "the precision assumed",
    "16 bytes per trainable parameter": "4 + 4 + 4 + 2 + 2, printed by the cell below",
    "$r = 4$": "Hu et al. 2022, section 4.2 (r = 4 on Wq, Wv)",
    "2 bytes per bfloat16 entry": "the dtype", "4 bytes each": "float32", "4 bytes per parameter, not 2": "dtypes",
    "\"beta = 1\"": "BLAS's beta", "`LORA_EDU_TRITON=1`": "the environment variable",
    "`u * 2.0`": "an example expression",
    "$1/1.25 = 0.8$": "arithmetic: a quarter more throughput is 0.8 of the time",
    "$2 T d^2$": "formula", "$2Tdr$": "formula", "$2Td^2$": "formula", "$2 d^2 r$": "formula", "$d^2$": "formula",
    "$b\\,d^2$": "formula", "$b\\,d^2 = a\\,d + c$": "formula",
    "$2r(d_\\text{in} + d_\\text{out})$": "formula", "$2r/d$": "formula", "$3r/d$": "formula",
    "roughly 10,000×": "Hu et al. 2022",
    "$d_\\text{in} = 768$ features to $d_\\text{out} = 3072$": "GPT-2 small's fc1 (Radford et al. 2019), the exercise's input",
    "1. **Scale": "numbering", "2. **Let": "numbering", "3. **Keep": "numbering",
    "Exercise 1": "numbering", "Exercise 2": "numbering", "Exercise 3": "numbering", "Exercise 4": "numbering",
    "Exercise 5": "numbering", "Exercise 6": "numbering",
    "## 1 ·": "numbering", "## 2 ·": "numbering", "## 3 ·": "numbering", "## 4 ·": "numbering",
    "## 5 ·": "numbering", "## 6 ·": "numbering",
    "(section 1)": "cross-reference", "section 1": "cross-reference",
    "section 2": "cross-reference", "section 3": "cross-reference", "section 6": "cross-reference",
    "ICLR 2022 (arXiv:2106.09685)": "citation", "NeurIPS 2020": "citation", "Table 2.1": "citation",
    "2019 (GPT-2's shapes)": "citation", "52(4), 2009": "citation", "MLSys 2023": "citation",
    "section 4 (counting": "citation", "ICLR 2019": "citation", "MAPL 2019": "citation",
    "1.2 TB": "Hu et al. 2022", "350 GB": "Hu et al. 2022", "25 %": "Hu et al. 2022, section 4.2",
}


def fused_matches_its_back_end(d, r):
    """The ``lora_fused`` layer records (``impl="fused"``, back-end picked by the library) take the GPU time of the
    records that force the back-end it picked (``settings["fused_backends"]``), within 2 %."""
    picked = {"torch": "lora_fused_torch", "triton": "lora_fused_triton"}[settings()["fused_backends"][f"bf16 d={d} r={r}"]]
    auto, forced = (row(m, d, r, "forward_backward_graph")["median_ms"] for m in ("lora_fused", picked))
    return abs(auto / forced - 1) < 0.02


# a number: digits not glued to a word or an identifier (float32, H200, GPT-2, W_q, L2 are names)
NUMBER = re.compile(r"(?<![\w.\-])\d[\d,]*(?:\.\d+)?(?![\w])")


@pytest.mark.parametrize("snippet", list(CLAIMS))
def test_claim_holds_for_the_recorded_data(snippet):
    assert snippet in markdown(), f"the prose no longer says {snippet!r}: update CLAIMS"
    assert CLAIMS[snippet](), f"the recorded results no longer support {snippet!r}: re-read and fix the prose"


@pytest.mark.parametrize("snippet", list(FACTS))
def test_fact_is_still_quoted(snippet):
    assert snippet in markdown(), f"the prose no longer says {snippet!r}: update FACTS"


def test_no_number_without_a_claim_or_a_fact():
    text = markdown()
    for snippet in sorted(list(CLAIMS) + list(FACTS), key=len, reverse=True):   # longest first
        text = text.replace(snippet, " ")
    left = [(m.group(), text[max(0, m.start() - 40):m.end() + 40]) for m in NUMBER.finditer(text)]
    assert not left, "numbers in chapter 07's markdown that no claim or fact covers:\n" + "\n".join(
        f"  {n!r} in ...{ctx}..." for n, ctx in left)


@pytest.mark.parametrize("d, r", [(4096, 8), (4096, 64), (1024, 8), (1024, 64)])
def test_lora_fused_layer_records_ran_the_back_end_the_file_names(d, r):
    """The chapter's fused numbers are the ``lora_fused`` records (``settings["default_fused_method"]``): what
    ``LoRALinear(impl="fused")`` ran, with the back-end it picked named in ``settings["fused_backends"]``. Its GPU
    time must match the records that force that back-end (an earlier recording's ``lora_fused`` ran Triton at
    d = 4096, r = 8 while the library's default had become the stock kernels)."""
    assert fused() == "lora_fused"
    assert fused_matches_its_back_end(d, r)
