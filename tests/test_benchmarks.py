"""benchmarks/lora_gpu.py runs end to end at tiny sizes on a CPU and writes the documented JSON.

No test here looks at a time: only that every measurement is there, named and shaped as the
notebook (chapter 07) and the README expect.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from lora_edu.traffic import layer_kernels

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("lora_gpu", ROOT / "benchmarks" / "lora_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    bench = load_benchmark()
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    assert bench.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    return bench, json.loads(out.read_text())


# every method measured in every configuration and mode (on a GPU: these and more)
BASIC = {"forward": {"base_frozen", "lora_reference", "lora_fused", "lora_fused_torch", "peft", "merged"},
         "forward_backward": {"base_frozen", "full_linear", "lora_reference", "lora_fused", "lora_fused_torch", "peft"}}
GPU_ONLY = {"lora_fused_triton", "peft_compiled"}


def check_schema(bench, data):
    assert set(bench.SCHEMA_KEYS) <= set(data)
    assert data["benchmark"] == "lora_gpu"
    for key in ("python", "torch", "peft", "transformers", "triton"):
        assert data["versions"][key]
    assert data["system"]["cpu"]
    cfg = bench.SMOKE if data["smoke"] else bench.FULL
    seen = {}
    for rec in data["records"]:
        assert set(bench.RECORD_KEYS) <= set(rec)
        assert rec["dtype"] == "bfloat16" and rec["T"] == cfg["tokens"]
        assert rec["median_ms"] > 0 and math.isfinite(rec["ratio_to_base"]) and rec["host_ms"] > 0
        assert rec["p10_ms"] <= rec["median_ms"] <= rec["p90_ms"]
        assert (rec["peak_extra_mib"] is None) == (rec["mode"] != "forward_backward" or rec["repeat"] > 0)
        seen.setdefault((rec["config"], rec["d"], rec["r"], rec["mode"], rec["repeat"]), {})[rec["method"]] = rec
    want = {("bf16", d, r) for d in cfg["dims"] for r in cfg["ranks"]}
    want |= {("peft_default", d, r) for d in cfg["dims"] for r in cfg["realistic_ranks"]}
    modes = {"forward", "forward_backward"} | ({"forward_backward_graph"} if data["device"] == "cuda" else set())
    assert {k[:3] for k in seen} == want and {k[3] for k in seen} == modes
    assert {k[4] for k in seen} == set(range(cfg["repeats"]))
    for (config, d, r, mode, _), group in seen.items():
        basic = BASIC["forward_backward" if mode.startswith("forward_backward") else "forward"]
        assert basic <= set(group), (config, d, r, mode, set(group))
        assert set(group) <= set(bench.LAYER_METHODS)
        if data["device"] == "cpu":
            assert not (set(group) & GPU_ONLY)
        assert group["base_frozen"]["ratio_to_base"] == 1.0     # ratios are to the base of the same group
        for rec in group.values():
            assert rec["ratio_to_base"] == pytest.approx(rec["median_ms"] / group["base_frozen"]["median_ms"])
    for row in data["summary"]:
        assert set(bench.SUMMARY_KEYS) <= set(row)
        assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"] and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["repeats"] == cfg["repeats"]
    return seen


def test_smoke_run_writes_the_schema(smoke):
    bench, data = smoke
    assert data["smoke"] is True and data["device"] == "cpu" and data["gpu"] == "cpu"
    check_schema(bench, data)
    assert data["ceilings"]["bandwidth"] > 0 and data["ceilings"]["matmul_flops"] > 0
    assert {"start", "end"} <= set(data["ceilings"])
    assert set(data["targets"]) >= {"fused_fwd_bwd_met", "fused_over_peft_met", "small_d_eager_met", "merged_met",
                                    "auto_choices", "auto_picks_faster_or_within_spread"}
    for choice in data["targets"]["auto_choices"]:
        assert choice["auto_picks"] == "reference"          # on a CPU, impl="auto" is the readable reference
    assert "cache_regime" in data["settings"] and set(data["settings"]["configs"]) == {"bf16", "peft_default"}


def test_kernel_records_follow_the_traffic_model(smoke):
    bench, data = smoke
    cfg = bench.SMOKE
    d, r, T = max(cfg["dims"]), min(cfg["ranks"]), cfg["tokens"]
    for repeat in range(cfg["repeats"]):
        for impl in ("base", "reference", "fused"):
            recs = [k for k in data["kernel_records"] if k["impl"] == impl and k["repeat"] == repeat]
            assert [k["name"] for k in recs] == [k.name for k in layer_kernels(impl, T, d, d, r)]
            for rec in recs:
                assert set(bench.KERNEL_KEYS) <= set(rec) and rec["median_ms"] > 0 and rec["bytes"] > 0


def test_model_records_compare_measured_and_predicted_memory(smoke):
    bench, data = smoke
    rows = {(m["model"], m["method"]): m for m in data["model_records"]}
    assert set(rows) == {("lora_edu_transformer", "full"), ("lora_edu_transformer", "lora_reference"),
                         ("lora_edu_transformer", "lora_fused"), ("gpt2_hf", "full"), ("gpt2_hf", "peft")}
    for rec in rows.values():
        assert set(bench.MODEL_KEYS) <= set(rec)
        assert rec["peak_bytes"] > 0 and rec["predicted_bytes"] > 0
        assert rec["prediction_error"] == pytest.approx(rec["predicted_bytes"] / rec["peak_bytes"] - 1)
    full, lora = rows[("lora_edu_transformer", "full")], rows[("lora_edu_transformer", "lora_fused")]
    assert full["trainable"] == full["total_params"] > lora["trainable"] > 0
    assert rows[("lora_edu_transformer", "full")]["step_ratio_to_full"] == 1.0
    summary = {(m["model"], m["method"]) for m in data["model_summary"]}
    assert summary == set(rows)


def test_eager_modes_are_timed_as_a_steady_state_loop_per_method(smoke):
    """Eager times come from one method's calls back to back (steady_rounds samples of steady_iters
    calls each), not from a call-by-call mix in which one method's host time hides behind another's."""
    bench, data = smoke
    cfg = bench.SMOKE
    assert "steady-state" in data["settings"]["eager_timing"]
    for rec in data["records"]:
        if rec["mode"] in ("forward", "forward_backward"):
            assert rec["n"] == cfg["steady_rounds"]


def test_steady_state_runs_each_method_alone_in_its_own_loop():
    bench = load_benchmark()
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    cfg = dict(steady_rounds=3, steady_warmup=2, steady_iters=4)
    times = bench.steady_state(fns, cfg, bench.torch.device("cpu"), seed=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    per_block = cfg["steady_warmup"] + cfg["steady_iters"]
    blocks = [calls[i:i + per_block] for i in range(0, len(calls), per_block)]
    assert len(blocks) == 9 and all(len(set(b)) == 1 for b in blocks)      # never two methods mixed
    rounds = [[b[0] for b in blocks[i:i + 3]] for i in range(0, 9, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1                              # the order is shuffled


def test_kernels_that_run_the_same_operation_share_one_timing(smoke):
    """The big matmul of the base and of a LoRA layer is one timing per repeat (it was timed once per
    layer, and clock changes between batches made the same GEMM differ by up to 10 %)."""
    bench, data = smoke
    for repeat in range(bench.SMOKE["repeats"]):
        by_op: dict[str, set] = {}
        for k in data["kernel_records"]:
            if k["repeat"] == repeat and k["impl"] != "fused_triton":
                assert k["op"] == bench.KERNEL_OPS[k["name"]]
                assert k["min_ms"] <= k["median_ms"] <= k["max_ms"]
                by_op.setdefault(k["op"], set()).add(k["median_ms"])
        assert all(len(times) == 1 for times in by_op.values())
        big = {k["impl"] for k in data["kernel_records"] if k["repeat"] == repeat and k["op"] == "x·Wᵀ"}
        assert big == {"base", "reference"}
        assert {k["op"] for k in data["kernel_records"] if k["big"]} == set(bench.BIG_OPS)
    blocks = [c["block"] for c in data["clock_records"]]
    assert sum(b.startswith("kernels") for b in blocks) == bench.SMOKE["repeats"]


def test_model_runs_time_enough_steps_and_record_clocks(smoke):
    bench, data = smoke
    assert bench.FULL["model_iters"] >= 50
    for rec in data["model_records"]:
        assert rec["steps_timed"] == bench.SMOKE["model_iters"]
        assert rec["step_ms_p10"] <= rec["step_ms"] <= rec["step_ms_p90"]
    fused = [m for m in data["model_records"] if m["method"] == "lora_fused"]
    assert fused and all(m["fused_backend"] == "torch" for m in fused)     # what LoRALinear(impl="fused") ran
    blocks = [c["block"] for c in data["clock_records"]]
    for rec in data["model_records"]:
        assert f"model {rec['model']} {rec['method']}" in blocks
    # the summary's ratios are ratios of its medians: the ms and ratio columns of a table agree
    summary = {(m["model"], m["method"]): m for m in data["model_summary"]}
    for (model, _), m in summary.items():
        assert m["step_ratio_to_full"] == pytest.approx(m["step_ms"] / summary[model, "full"]["step_ms"])


def test_settings_name_the_back_end_of_each_fused_record(smoke):
    bench, data = smoke
    cfg = bench.SMOKE
    want = {f"bf16 d={d} r={r}" for d in cfg["dims"] for r in cfg["ranks"]}
    want |= {f"peft_default d={d} r={r}" for d in cfg["dims"] for r in cfg["realistic_ranks"]}
    assert set(data["settings"]["fused_backends"]) == want
    assert set(data["settings"]["fused_backends"].values()) == {"torch"}   # the default back-end


def test_clock_sampler_without_nvml_is_empty():
    bench = load_benchmark()
    with bench.ClockSampler(bench.torch.device("cpu"), 0.01) as sampler:
        pass
    assert sampler.summary() is None and sampler.samples == []


def test_recorded_gpu_results_have_the_schema():
    """The committed H200 results (benchmarks/results/*.json, not smoke runs) follow the same schema,
    with at least three repeats, CUDA-graph timings, clocks and a kernel profile."""
    bench = load_benchmark()
    files = [p for p in (ROOT / "benchmarks" / "results").glob("*.json") if "smoke" not in p.name]
    recorded = [json.loads(p.read_text()) for p in files]
    recorded = [d for d in recorded if d.get("benchmark") == "lora_gpu"]
    if not recorded:
        pytest.skip("no recorded GPU run in benchmarks/results/")
    for data in recorded:
        assert data["smoke"] is False and data["device"] == "cuda"
        groups = check_schema(bench, data)
        assert data["settings"]["repeats"] >= 3
        assert ("bf16", 4096, 8, "forward_backward_graph", 0) in groups
        assert data["clock_records"] and data["profile_records"]
        assert data["system"]["driver"] and data["system"]["l2_cache_bytes"]


def test_slug():
    bench = load_benchmark()
    assert bench.slug("NVIDIA H200") == "nvidia-h200"
    assert bench.slug("  A100-SXM4 (80GB) ") == "a100-sxm4-80gb"


# ---------------------------------------------------------------- benchmarks/step_profile.py


def load_step_profile():
    spec = importlib.util.spec_from_file_location("step_profile", ROOT / "benchmarks" / "step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, group", [
    # kernel names as the H200's profiler reported them (benchmarks/results/nvidia-h200.json, profile_records)
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float>", "matmul"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add<c10::BFloat16>>", "elementwise"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor>",
     "optimizer"),
    ("void at::native::reduce_kernel<512, 1, ReduceOp<float, MeanOps<float>>>", "reduction and normalisation"),
    ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
    ("Memcpy DtoD (Device -> Device)", "copy"),
    ("aten::mm", "matmul"), ("aten::_foreach_add_", "optimizer"), ("aten::native_layer_norm", "reduction and normalisation"),
    ("some_unknown_kernel", "other"),
])
def test_kernel_groups_by_name(name, group):
    assert load_step_profile().kernel_group(name) == group


def test_kernel_group_rejects_a_non_string():
    with pytest.raises(TypeError, match="kernel or operator name"):
        load_step_profile().kernel_group(None)


def test_step_profile_smoke_run_splits_the_saving_by_group(tmp_path):
    """A CPU run of the tiny model writes the JSON: per method, groups that add up to the total, and a saving
    per group that is exactly full's group minus LoRA's."""
    sp = load_step_profile()
    out = tmp_path / "sp.json"
    assert sp.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "step_profile" and data["smoke"] is True
    full, lora = data["methods"]["full"], data["methods"]["lora_fused"]
    for rec in (full, lora):
        assert rec["total_ms"] == pytest.approx(sum(rec["groups_ms"].values())) and rec["total_ms"] > 0
        assert set(rec["groups_ms"]) <= {g for g, _ in sp.GROUPS} | {"other"} and rec["top_kernels"]
    assert lora["total_params"] > full["total_params"] == full["trainable"] > lora["trainable"] > 0  # + adapters
    for group, ms in data["saving_ms"].items():
        assert ms == pytest.approx(full["groups_ms"].get(group, 0.0) - lora["groups_ms"].get(group, 0.0))
    assert data["saving_total_ms"] == pytest.approx(sum(data["saving_ms"].values()))


def test_output_layer_gemms_time_three_products_per_vocabulary():
    sp = load_step_profile()
    import torch
    rows = sp.output_layer_gemms(16, 8, (7, 8), 2, torch.device("cpu"))
    assert [(r["vocab"], r["op"]) for r in rows] == [(v, op) for v in (7, 8) for op in
                                                    ("forward x·Wᵀ", "input gradient g·W", "weight gradient gᵀ·x")]
    assert all(r["ms"] > 0 and r["tflops"] == pytest.approx(2 * 16 * 8 * r["vocab"] / (r["ms"] * 1e-3) / 1e12) for r in rows)
    with pytest.raises(ValueError, match="must be positive"):
        sp.output_layer_gemms(16, 8, (0,), 2, torch.device("cpu"))
