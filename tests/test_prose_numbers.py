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
import re
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
    return [m["gpu_ratio_to_full"] for (_, method), m in models().items() if method != "full"]


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


MIB = 2**20
T, D, R = 8192, 4096, 8

# (snippet as it appears in the prose, whitespace collapsed) -> a check against the data
CLAIMS = {
    "**under 1 % more arithmetic**": lambda: 3 * R / D < 0.01 and row("peft")["ratio"] > 1.2,
    "under 1 % more arithmetic, much more time": lambda: 3 * R / D < 0.01 and graph("peft") > 1.2,
    "$T = 8192$": lambda: settings()["tokens"] == T,
    "`nn.Linear(4096, 4096)`": lambda: D in settings()["dims"],
    "$d = 4096$": lambda: D in settings()["dims"],
    "$d = 1024$": lambda: 1024 in settings()["dims"],
    "$r = 8$": lambda: R in settings()["ranks"],
    "$r = 64$": lambda: 64 in settings()["ranks"],
    "streaming copy of 1 GiB": lambda: h200()["ceilings"]["copy_bytes"] == 2 * 2**30,   # read + written
    "`(8192, 4096)` activation (64 MiB)": lambda: T * D * 2 == 64 * MIB > h200()["system"]["l2_cache_bytes"],
    "`(8192, 1024)` one (16 MiB), which fits in L2": lambda: T * 1024 * 2 == 16 * MIB < h200()["system"]["l2_cache_bytes"],
    "batch 8 × 1024 tokens": lambda: (settings()["batch"], settings()["seq"]) == (8, 1024),
    "at 8 × 1024 tokens": lambda: (settings()["batch"], settings()["seq"]) == (8, 1024),
    "with 8 × 1024 tokens": lambda: (settings()["batch"], settings()["seq"]) == (8, 1024),
    "124 M parameters": lambda: round(TransformerShape.gpt2_small().parameters() / 1e6) == 124,
    "(124,439,808 parameters": lambda: TransformerShape.gpt2_small().parameters() == 124_439_808,
    "50,257-token vocabulary": lambda: TransformerShape.gpt2_small().vocab == 50257,
    # the paper's 25 % (section 4.2) and our GPU-time ratios of LoRA to full fine-tuning
    "That is the paper's **25 % training speed-up**": lambda: all(0.65 <= x <= 0.85 for x in lora_gpu_ratios()),
    "20 launches of the same kernel captured in one CUDA graph and replayed, divided by 20":
        lambda: settings()["graph_batch"] == 20,
    "at most 8 FLOPs per byte": lambda: max(k.flops / k.bytes for k in layer_kernels("reference", T, D, D, R)
                                            if k.flops / k.bytes < 100) <= 8,
    "elementwise passes well under 1": lambda: all(k.flops / k.bytes < 1 for k in layer_kernels("reference", T, D, D, R)
                                                   if k.name.startswith(("v =", "h =", "gu =", "gx ="))),
    "$8192 \\times 4096$ bfloat16 tensor (64 MiB)": lambda: T * D * 2 == 64 * MIB,
    "ten passes of 64 MiB": lambda: sum(k.bytes for k in layer_kernels("reference", T, D, D, R)
                                        if k.flops / k.bytes < 1) == 10 * 64 * MIB,
    "$T \\times 8$ output": lambda: R in settings()["ranks"],
    "16 times smaller": lambda: (4096 / 1024) ** 2 == 16,
    "costs about twice the frozen layer's GPU time": lambda: 1.8 <= graph(fused(), 1024) <= 2.3,
    "$4096 \\times 8$ matrix $B$": lambda: True,
    "$8192 \\times 4096$ activation": lambda: True,
    "**six passes over a 64 MiB tensor**": lambda: sum(1 for k in layer_kernels("fused", T, D, D, R)
                                                       if 64 * MIB <= k.bytes < 65 * MIB) == 6,
    "132 multiprocessors": lambda: h200()["system"]["multiprocessors"] == 132,
    "slightly below it at $r = 8$ (and rises at $r = 64$":
        lambda: graph("lora_fused_triton", D, 8) < graph("lora_fused_torch", D, 8)
        and graph("lora_fused_triton", D, 64) > graph("lora_fused_torch", D, 64),
    "close to the 1.15× aim": lambda: 1.10 <= 1 + 6 * (T * D * 2 / h200()["ceilings"]["bandwidth"])
        / (row("base_frozen")["median_ms"] * 1e-3) <= 1.15 == h200()["targets"]["fused_fwd_bwd_target"],
    "`lora_dropout = 0.05`": lambda: settings()["configs"]["peft_default"]["dropout"] == 0.05,
    "The paper's 1.2 TB is about the **backward-start peak**": lambda: 1.05e12 <= gpt3()[1].backward_peak <= 1.25e12,
    "the paper's 350 GB": lambda: round(gpt3()[2].weights / 1e9, -1) == 350,
    "would need 2.8 TB": lambda: round(16 * gpt3()[0].parameters() / 1e12, 1) == 2.8,
    "$2r/d$ (0.4 %)": lambda: round(100 * 2 * R / D, 1) == 0.4,
    "$3r/d$ (0.6 %)": lambda: round(100 * 3 * R / D, 1) == 0.6,
    "about 1.4× the frozen layer's GPU time at $d = 4096$": lambda: round(graph("peft"), 1) == 1.4,
    "about 2.6× at $d = 1024$": lambda: round(graph("peft", 1024), 1) == 2.6,
    "(0.71–0.82 here)": lambda: (round(min(lora_gpu_ratios()), 2), round(max(lora_gpu_ratios()), 2)) == (0.71, 0.82),
    "the paper's 25 % speed-up": lambda: all(0.65 <= x <= 0.85 for x in lora_gpu_ratios()),
    "about 1.2× in GPU time instead of PEFT's 1.4×": lambda: (round(graph(fused()), 1), round(graph("peft"), 1)) == (1.2, 1.4),
    "within 1 % of the H200's measurement for our transformer":
        lambda: all(abs(m["prediction_error"]) < 0.01 for m in h200()["model_records"]
                    if m["model"] == "lora_edu_transformer"),
    "LoRA saves 13–20 %": lambda: (round(100 * peak_saving("gpt2_hf", "peft")),
                                   round(100 * peak_saving("lora_edu_transformer", "lora_fused"))) == (13, 20),
    "about 0.40 TB against 1.12 TB": lambda: (round(gpt3()[2].backward_peak / 1e12, 2),
                                              round(gpt3()[1].backward_peak / 1e12, 2)) == (0.40, 1.12),
    "18.9 M trainable parameters, about 9,250× fewer":
        lambda: round(lora_parameters(gpt3()[0], 4, ("q_proj", "v_proj")) / 1e6, 1) == 18.9
        and round(gpt3()[0].parameters() / lora_parameters(gpt3()[0], 4, ("q_proj", "v_proj")), -1) == 9250,
    "the eager ratios in section 1 spread more over the repeats than the GPU times":
        lambda: all(row(k)["ratio_max"] - row(k)["ratio_min"]
                    > row(k, mode="forward_backward_graph")["ratio_max"] - row(k, mode="forward_backward_graph")["ratio_min"]
                    for k in ("lora_reference", fused(), "peft")),
    "`d_in = d_out = 4096`, `r = 8`": lambda: D in settings()["dims"] and R in settings()["ranks"],
}

# (snippet) -> where it comes from: figures of the papers, shapes, definitions, the course's own text
FACTS = {
    "# 07 ·": "the chapter's number",
    "Chapter 05": "course structure", "chapter 06": "course structure", "(chapter 05)": "course structure",
    "About 50 minutes": "the chapter's time estimate",
    "1.2 TB → 350 GB": "Hu et al. 2022, section 4.2",
    "**1.2 TB to 350 GB**": "Hu et al. 2022, section 4.2",
    "10,000×": "Hu et al. 2022, abstract and section 4.2",
    "350 GB to 35 MB": "Hu et al. 2022, section 4.2",
    "400 GB of VRAM": "the seed blog post's figure, quoted as not the paper's",
    "GPT-3 175B": "the model's name", "175B": "the model's name",
    "(section 4.2)": "Hu et al. 2022", "section 4.2": "Hu et al. 2022", "section 4.1": "Hu et al. 2022",
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
    "about 14 µs each": "the earlier version of this chapter (quoted as wrong)",
    "$2 T d^2$": "formula", "$2Tdr$": "formula", "$2Td^2$": "formula", "$2 d^2 r$": "formula",
    "$2r(d_\\text{in} + d_\\text{out})$": "formula", "$2r/d$": "formula", "$3r/d$": "formula",
    "roughly 10,000×": "Hu et al. 2022",
    "1. **Scale": "numbering", "2. **Let": "numbering", "3. **Keep": "numbering",
    "Exercise 1": "numbering", "Exercise 2": "numbering", "Exercise 3": "numbering", "Exercise 4": "numbering",
    "Exercise 5": "numbering", "Exercise 6": "numbering",
    "## 1 ·": "numbering", "## 2 ·": "numbering", "## 3 ·": "numbering", "## 4 ·": "numbering",
    "## 5 ·": "numbering", "## 6 ·": "numbering",
    "section 2": "cross-reference", "section 3": "cross-reference", "section 6": "cross-reference",
    "Use `d = 4096`, `r = 8`": "the exercise's inputs",
    "ICLR 2022 (arXiv:2106.09685)": "citation", "NeurIPS 2020": "citation", "Table 2.1": "citation",
    "2019 (GPT-2's shapes)": "citation", "52(4), 2009": "citation", "MLSys 2023": "citation",
    "section 4 (counting": "citation", "ICLR 2019": "citation", "MAPL 2019": "citation",
    "1.2 TB": "Hu et al. 2022", "350 GB": "Hu et al. 2022", "25 %": "Hu et al. 2022, section 4.2",
}

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
