"""lora_edu.distributed: its predictions against independent references, and real multi-process jobs.

The live tests start ``torchrun`` with 2 processes: ``gloo`` on the CPU (every ``make test``, a tiny model,
seconds) and ``nccl`` on 2 GPUs (``pytest -m gpu``, skipped elsewhere). A failing rank must end the job
with a clear error, never a hang.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lora_edu.distributed import (BACKWARD_FRACTION, MODELS, DistributedJobError, _explain, _run_job, build_model,
                                  bus_bandwidth, ddp_buckets, forward_backward, fsdp_bytes, gradient_bytes, launch,
                                  main, make_batch, plan, ring_allreduce_seconds, ring_factor, step_time_bounds)
from lora_edu.lora import count_parameters, load_adapter, merge_lora
from lora_edu.memory import TransformerShape, lora_parameters

TINY = MODELS["tiny"]
CAP_MB = 0.1  # a small bucket cap, so that the tiny model's full fine-tuning needs several buckets


def meta_model(mode: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_model(MODELS["gpt2-small"], mode, device="meta", **kw)


# --------------------------------------------------------------------------- predictions


def test_gpt2_small_bytes_per_step_full_vs_lora():
    shape = TransformerShape.gpt2_small()  # an independent count, from the shapes alone
    full, lora = gradient_bytes(meta_model("full")), gradient_bytes(meta_model("lora", r=8))
    assert full == shape.parameters() * 4 == 497_759_232
    assert lora == lora_parameters(shape, 8, ("q_proj", "v_proj")) * 4 == 1_179_648
    assert round(full / lora) == 422


def test_gradient_bytes_counts_trainable_entries_once_in_their_dtype():
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 4))
    model[1].weight = nn.Parameter(model[0].weight.detach().T.clone())  # not shared: 2 weights
    assert gradient_bytes(model) == sum(p.numel() for p in model.parameters()) * 4
    shared = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    shared[1].weight = shared[0].weight
    assert gradient_bytes(shared) == 16 * 4  # a shared (tied) parameter is all-reduced once
    frozen = nn.Linear(8, 8).to(torch.bfloat16).requires_grad_(False)
    mixed = nn.ModuleDict({"base": frozen, "adapter": nn.Linear(8, 2)})
    assert gradient_bytes(mixed) == (8 * 2 + 2) * 4  # bf16 frozen weights add nothing
    mixed["base"].bias.requires_grad_(True)
    assert gradient_bytes(mixed) == (8 * 2 + 2) * 4 + 8 * 2
    with pytest.raises(TypeError, match="model"):
        gradient_bytes("gpt2")


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_ring_factor_matches_a_simulated_ring_allreduce(n):
    """Simulate the ring (reduce-scatter, then all-gather) chunk by chunk and count what each rank sends."""
    rng = np.random.default_rng(n)
    size = 12 * n
    data = [rng.normal(size=size) for _ in range(n)]
    chunks = [np.array_split(d.copy(), n) for d in data]
    sent = [0] * n
    for phase in ("reduce_scatter", "all_gather"):
        for step in range(n - 1):
            msgs = []
            for rank in range(n):  # in step s, rank i passes chunk (i - s) (reduce) or (i + 1 - s) (gather)
                c = (rank - step) % n if phase == "reduce_scatter" else (rank + 1 - step) % n
                msgs.append(((rank + 1) % n, c, chunks[rank][c].copy()))
                sent[rank] += chunks[rank][c].size
            for dst, c, payload in msgs:
                chunks[dst][c] = chunks[dst][c] + payload if phase == "reduce_scatter" else payload
    total = np.sum(data, axis=0)
    for rank in range(n):
        np.testing.assert_allclose(np.concatenate(chunks[rank]), total)
        assert sent[rank] == pytest.approx(ring_factor(n) * size)


def test_ring_time_and_bus_bandwidth():
    assert ring_allreduce_seconds(497_759_232, 2, 25e9) == pytest.approx(0.0199, abs=1e-4)
    assert ring_allreduce_seconds(1e9, 8, 1e9) == pytest.approx(1.75)
    assert ring_allreduce_seconds(1e6, 4, 1e9, latency_s=1e-5, calls=3) == pytest.approx(3e-5 + 1.5e-3)
    assert ring_allreduce_seconds(1e6, 1, 1e9, latency_s=1.0) == 0.0  # one rank sends nothing
    t = ring_allreduce_seconds(3e8, 4, 2e11)
    assert bus_bandwidth(3e8, t, 4) == pytest.approx(2e11)
    for bad, name in (({"n_bytes": -1}, "n_bytes"), ({"bus_bandwidth": 0}, "bus_bandwidth"),
                      ({"world_size": 0}, "world_size"), ({"calls": 0}, "calls")):
        kw = {"n_bytes": 1e6, "world_size": 2, "bus_bandwidth": 1e9, **bad}
        with pytest.raises(ValueError, match=name):
            ring_allreduce_seconds(**kw)


def test_step_time_bounds():
    assert step_time_bounds(0.030, 0.002) == pytest.approx((0.030, 0.032))   # hidden behind a 20 ms backward
    assert step_time_bounds(0.030, 0.050) == pytest.approx((0.060, 0.080))   # 30 ms of it cannot hide
    assert step_time_bounds(0.030, 0.0) == (0.030, 0.030)
    # the last bucket is ready only when backward ends: it never hides, however short the rest
    assert step_time_bounds(0.030, 0.002, last_bucket_s=0.0007) == pytest.approx((0.0307, 0.032))
    assert step_time_bounds(0.030, 0.050, last_bucket_s=0.001) == pytest.approx((0.060, 0.080))
    # LoRA's backward has no weight gradients: half the step, not two thirds
    assert BACKWARD_FRACTION == {"full": pytest.approx(2 / 3), "lora": pytest.approx(1 / 2)}
    assert step_time_bounds(0.030, 0.020, BACKWARD_FRACTION["lora"]) == pytest.approx((0.035, 0.050))
    with pytest.raises(ValueError, match="compute_s"):
        step_time_bounds(0, 1)
    with pytest.raises(ValueError, match="backward_fraction"):
        step_time_bounds(1, 1, backward_fraction=1.5)
    with pytest.raises(ValueError, match="last_bucket_s"):
        step_time_bounds(1, 0.1, last_bucket_s=0.2)


def test_ddp_buckets_match_pytorchs_own_bucket_assignment():
    import torch.distributed as dist

    if not hasattr(dist, "_compute_bucket_assignment_by_size"):
        pytest.skip("this torch has no dist._compute_bucket_assignment_by_size")
    model = build_model(TINY, "full")
    params = [p for p in model.parameters() if p.requires_grad][::-1]
    for cap, limits in ((None, [2**20, 25 * 2**20]), (CAP_MB, [int(CAP_MB * 2**20)])):
        groups, _ = dist._compute_bucket_assignment_by_size(params, limits, [False] * len(params))
        ours = ddp_buckets(model, cap)
        assert sorted(ours) == sorted(sum(params[i].numel() * 4 for i in g) for g in groups)
    assert len(ddp_buckets(meta_model("full"))) == 13  # GPT-2 small: 13 buckets, not 498 MB / 25 MB ≈ 20
    assert len(ddp_buckets(meta_model("lora", r=8))) == 2
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        ddp_buckets(model, 0)


def test_fsdp_bytes_counts_blocks_twice_and_pads_to_the_world_size():
    model = build_model(TINY, "lora", r=4)
    total = sum(p.numel() * 4 for p in model.parameters())
    blocks = sum(p.numel() * 4 for p in model.blocks.parameters())
    got = fsdp_bytes(model, 2)
    assert got == {"all_gather": total + blocks, "reduce_scatter": gradient_bytes(model)}
    assert fsdp_bytes(model, 2, units="root")["all_gather"] == total
    odd = nn.Linear(4, 5)  # 5 rows over 2 ranks: padded to 6
    assert fsdp_bytes(odd, 2)["all_gather"] == (6 * 4 + 6) * 4
    with pytest.raises(ValueError, match="units"):
        fsdp_bytes(model, 2, units="layers")


def test_plan_by_hand():
    p, t = 7_000_000_000, 4_000_000
    ddp = plan(p, t, 8, "ddp")
    assert ddp["memory"] == p * 2 + t * 16 and ddp["traffic"] == pytest.approx(2 * 7 / 8 * t * 4)
    fsdp = plan(p, t, 8, "fsdp")
    assert fsdp["memory"] == pytest.approx((p * 2 + t * 16) / 8)
    assert fsdp["traffic"] == pytest.approx(7 / 8 * (2 * p * 2 + t * 4))
    full = plan(p, p, 64, "fsdp")
    assert full["memory"] == pytest.approx(p * 18 / 64) == full["sharded"]
    gathered = plan(p, t, 8, "fsdp", gathered_params=600_000_000)  # e.g. the root and two blocks, whole
    assert gathered["memory"] == pytest.approx((p * 2 + t * 16) / 8 + 600_000_000 * 2)
    assert gathered["sharded"] == pytest.approx(fsdp["memory"]) and gathered["traffic"] == fsdp["traffic"]
    assert ddp["sharded"] == 0
    with pytest.raises(ValueError, match="gathered_params"):
        plan(10, 1, 2, "fsdp", gathered_params=11)
    with pytest.raises(ValueError, match="n_trainable"):
        plan(10, 11, 2, "ddp")
    with pytest.raises(ValueError, match="strategy"):
        plan(10, 1, 2, "zero3")


def test_batches_are_per_rank_and_reproducible():
    a, b = make_batch(TINY, 2, 8, rank=0), make_batch(TINY, 2, 8, rank=1)
    assert a.shape == (2, 9) and not torch.equal(a, b) and torch.equal(a, make_batch(TINY, 2, 8, rank=0))
    with pytest.raises(ValueError, match="seq"):
        make_batch(TINY, 2, TINY.max_seq_len + 1)


def test_module_says_to_use_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        main([])


def test_a_bad_command_line_is_a_clear_error_before_any_process_starts(tmp_path, monkeypatch):
    for args, message in ((["--model", "nope"], "--model: invalid choice: 'nope'"), (["--tasks", "ddpp"], "--tasks"),
                          (["--modes", "qlora"], "--modes"), (["--batch", "0"], "--batch: must be")):
        started = time.monotonic()
        with pytest.raises(ValueError, match=message):
            launch(args, nproc=2, timeout=60)
        assert time.monotonic() - started < 5  # no torchrun was started
    # a worker given a bad command line leaves its error for launch() to report (before: exit code 2, no file)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="invalid choice"):
        main(["--model", "nope", "--run-dir", str(tmp_path)])
    assert "invalid choice" in (tmp_path / "rank1.error.json").read_text()


def test_explain_names_a_rank_that_exited_with_a_code_of_its_own(tmp_path):
    stderr = ("Failures:\n[1]:\n  time      : 2026-11-30\n  rank      : 1 (local_rank: 1)\n"
              "  exitcode  : 2 (pid: 12)\n------\nRoot Cause (first observed failure):\n[0]:\n"
              "  rank      : 0 (local_rank: 0)\n  exitcode  : -15 (pid: 11)\n")
    headline = _explain(tmp_path, stderr, 1).split("\n")[0]
    assert headline == "rank 1 exited with code 2; rank 0 was stopped by torchrun (SIGTERM)"  # rank 1 lost before
    assert _explain(tmp_path, "", 1).startswith("torchrun exited with code 1")  # was an empty headline


# --------------------------------------------------------------------------- a real 2-process job


BACKENDS = [pytest.param("gloo", id="gloo"),
            pytest.param("nccl", id="nccl", marks=[pytest.mark.gpu, pytest.mark.skipif(
                torch.cuda.device_count() < 2, reason="NCCL needs 2 GPUs")])]


@pytest.fixture(scope="module", params=BACKENDS)
def job(request, tmp_path_factory):
    backend = request.param
    tensors = tmp_path_factory.mktemp(f"job_{backend}")
    env = {"LORA_EDU_DEVICE": "cuda" if backend == "nccl" else "cpu"}
    tasks = "ddp,compress,fsdp,pitfalls,fsdp1,timing,bandwidth"
    result = launch(["--backend", backend, "--model", "tiny", "--tasks", tasks,
                     "--lora-r", "4", "--bucket-cap-mb", str(CAP_MB), "--peak", "on", "--tensors", str(tensors),
                     "--steps", "3", "--warmup", "1", "--repeats", "2", "--sizes", "4096,65536", "--iters", "2"],
                    nproc=2, timeout=300, env=env)
    return result, tensors


def test_hook_counts_exactly_the_predicted_bytes(job):
    result, _ = job
    assert result["world_size"] == 2
    for mode in ("full", "lora"):
        model = build_model(TINY, mode, r=4)
        rec = result["ddp"][mode]
        assert rec["bytes_per_step"] == [gradient_bytes(model)] * len(rec["bytes_per_step"])
        assert rec["bucket_bytes"] == ddp_buckets(model, CAP_MB)  # DDP's layout after its first step
        assert rec["broadcast_bytes"] == count_parameters(model)[1] * 4  # frozen weights too, once
    assert result["ddp"]["full"]["buckets_per_step"][-1] > 1 == result["ddp"]["lora"]["buckets_per_step"][-1]
    assert result["compress"]["bytes_per_step"] * 2 == result["ddp"]["full"]["predicted_bytes"]


def test_ddp_gradient_equals_the_single_process_gradient_on_the_whole_batch(job):
    from safetensors.torch import load_file

    result, tensors = job
    s = result["settings"]
    for mode in ("full", "lora"):
        ddp_grads = load_file(str(tensors / f"ddp_{mode}_grads.safetensors"))
        model = build_model(TINY, mode, r=4)
        whole = torch.cat([make_batch(TINY, s["batch"], s["seq"], rank=r, step=0) for r in range(2)])
        forward_backward(model, whole)
        ref = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert ddp_grads.keys() == ref.keys()
        for name, g in ref.items():
            atol = 1e-6 if result["backend"] == "gloo" else 1e-5
            torch.testing.assert_close(ddp_grads[name], g, rtol=1e-4, atol=atol, msg=name)


def test_unused_adapter_raises_and_the_fixes_work(job):
    pit = job[0]["pitfalls"]
    assert pit["unused"] == ["aux_head.lora_A", "aux_head.lora_B"]
    assert not pit["default"]["ok"] and pit["default"]["step"] == 1
    assert "Expected to have finished reduction in the prior iteration" in pit["default"]["error"]
    for fix in ("find_unused_parameters", "static_graph", "frozen"):
        assert pit[fix]["ok"] and pit[fix]["bytes_per_step"] == pit[fix]["predicted_bytes"]
    assert pit["frozen"]["bytes_per_step"] < pit["static_graph"]["bytes_per_step"]  # the unused adapter sent zeros


def test_fsdp2_matches_ddp_and_moves_the_predicted_bytes(job):
    result, _ = job
    for mode in ("full", "lora"):
        rec, model = result["fsdp"][mode], build_model(TINY, mode, r=4)
        assert rec["max_abs_diff_vs_ddp"] < 1e-5
        assert rec["all_gather_bytes"] == fsdp_bytes(model, 2)["all_gather"]
        assert rec["reduce_scatter_bytes"] == gradient_bytes(model)
        assert rec["gradient_entries_per_rank"] == [count_parameters(model)[0] // 2] * 2
    root = result["fsdp"]["lora_root_unit"]
    assert root["largest_gather_bytes"] == count_parameters(build_model(TINY, "lora", r=4))[1] * 4
    for rec in (result["ddp"]["full"], result["fsdp"]["full"]):  # each rank's peak holds at least its state
        for peak, held in zip(rec["peak_bytes"], rec["state_bytes"]):
            assert peak >= held["weights"] + held["optimizer"]
    # Before its step little but the model's own state sits on the GPU (the first two-GPU record had a 0.46 GiB
    # copy of trained weights there). The rest is memory no state counts: 65 MiB on the H200 for this tiny model
    # (library workspaces, most likely); a bound of 16 MiB, written on CPUs, failed there.
    if result["device"] == "cuda":
        for rec in (result["ddp"]["lora"], result["fsdp"]["lora"]):
            for resident, held in zip(rec["resident_bytes"], rec["state_bytes"]):
                assert resident - sum(held.values()) < 128 * 2**20


def test_fsdp1_needs_uniform_units_and_runs_on_either_backend(job):
    """Pitfall 2 for real (gloo on the CPU too): a block that mixes frozen W and trainable A, B cannot be one
    FlatParameter; with use_orig_params it runs but keeps a gradient for the whole block; uniform units keep
    only the adapters' gradients. Each rank holds 1/2 of a flat buffer."""
    result, _ = job
    rec, model = result["fsdp1"], build_model(TINY, "lora", r=4)
    assert not rec["blocks_flat"]["ok"] and "uniform `requires_grad`" in rec["blocks_flat"]["error"]
    blocks = sum(-(-sum(p.numel() for p in b.parameters()) // 2) * 4 for b in model.blocks)  # padded halves
    assert rec["blocks_orig_params"]["ok"] and rec["blocks_orig_params"]["gradient_bytes_per_rank"] == blocks
    assert rec["uniform_units"]["ok"] and rec["uniform_units"]["gradient_bytes_per_rank"] == gradient_bytes(model) // 2


def test_timing_and_bandwidth_records_have_their_series(job):
    """What the chapter reads from a record: per-series efficiencies (their spread is the uncertainty) and the
    size that gave the model's latency. Structure only: times are never asserted."""
    result, _ = job
    s = result["settings"]
    for mode in ("full", "lora"):
        t = result["timing"][mode]
        assert len(t["allreduce"]["steps_s"]) == s["repeats"] * s["steps"]
        assert len(t["efficiency_series"]) == len(t["exposed_comm_series_s"]) == s["repeats"]
        assert all(e > 0 for e in t["efficiency_series"])
    bw = result["bandwidth"]
    assert bw["model_latency_s"] == min(bw["seconds"]) == bw["seconds"][bw["sizes"].index(bw["model_latency_size"])]
    assert set(bw["schedule"]) == {"full", "lora"}


def test_adapter_saved_by_rank_0_loads_into_a_single_process(job):
    from safetensors.torch import load_file

    _, tensors = job
    probe = load_file(str(tensors / "ddp_lora_probe.safetensors"))
    model = build_model(TINY, "lora", r=4)
    load_adapter(model, tensors / "adapter.safetensors")
    tokens = probe["tokens"].long()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), probe["logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merge_lora(model)(tokens), probe["logits"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- failures end the job, clearly


def _leftovers() -> list[str]:
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    found = []
    for p in proc.iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "lora_edu.distributed" in cmd and "--fail-how" in cmd:
            found.append(f"{p.name}: {cmd}")
    return found


@pytest.mark.parametrize("how, expected", [
    ("raise", r"rank 1 failed with ValueError: planted failure on rank 1"),
    ("kill", r"rank 1 was killed by signal SIGKILL"),
    ("hang", r"rank 0 failed with .*(Timed out|timed out)"),
])
def test_a_failing_rank_ends_the_job_with_a_clear_error(how, expected):
    with pytest.raises(DistributedJobError, match=expected) as info:
        launch(["--fail-rank", "1", "--fail-how", how, "--timeout", "3"], nproc=2, timeout=120)
    assert "did not finish" not in str(info.value)  # torchrun ended it, not our backstop
    deadline = time.monotonic() + 10
    while _leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _leftovers() == []


def test_the_launcher_stops_a_job_that_runs_past_its_timeout(tmp_path):
    cmd = [sys.executable, "-c", "import time; time.sleep(120)"]
    with pytest.raises(DistributedJobError, match="did not finish within 1 s"):
        _run_job(cmd, tmp_path, timeout=1, env=dict(os.environ))


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended and only waits to be reaped


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_launcher_also_stops_a_worker_that_never_wrote_its_pid_file(tmp_path):
    """A child of the job that hangs before it writes rank*.pid is reached through the job's process group
    (before, only torchrun and the pids in the files were stopped, and such a child lived on)."""
    child_pid = tmp_path / "child.txt"
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(child_pid)!r}, 'w').write(str(c.pid)); time.sleep(120)")
    with pytest.raises(DistributedJobError, match="did not finish"):
        _run_job([sys.executable, "-c", script], tmp_path, timeout=3, env=dict(os.environ))
    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pid)


def test_memory_tracker_counts_a_dtensor_by_its_local_shard():
    """An FSDP2 parameter is a DTensor, a tensor that wraps this rank's shard and has no storage of its own
    (MemoryTracker raised on it before)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from lora_edu.memory import MemoryTracker

    if dist.is_initialized():
        pytest.skip("a process group is already up")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        shard = distribute_tensor(torch.ones(64, 32), init_device_mesh("cpu", (1,)), [Shard(0)])
        with MemoryTracker() as mem:
            mem.add_existing([shard, shard.to_local()])  # the shard's storage is counted once
            assert mem.current == 64 * 32 * 4
        assert mem.peak == 64 * 32 * 4
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the recorded 2 x H200 run


def test_recorded_two_gpu_run_backs_the_chapter():
    """What chapter 08 and the README say about benchmarks/results/distributed_nvidia-h200x2.json."""
    from lora_edu.results import load_result

    rec = load_result("distributed_nvidia-h200x2.json")
    two = rec["two_gpus"]
    assert rec["environment"]["NCCL_NVLS_ENABLE"] == "0" and "NV18" in rec["topology"]
    # the record's own -m gpu run: 6 passed, 1 failed on a bound written on CPUs (65 MiB outside the model's state;
    # benchmarks/NOTES.md names the test); all 7 passed when re-run on the same kind of machine after the fix
    # (gpu_check_nvidia-h200x2.json). The record stores counts only, so which test failed is the NOTES' word.
    rerun = load_result("gpu_check_nvidia-h200x2.json")["runs"][0]
    assert (rec["gpu_tests"]["passed"], rec["gpu_tests"]["failed"]) == (6, 1)
    assert (rerun["passed"], rerun["failed"]) == (7, 0)
    assert rec["script_status"] == (rec["gpu_tests"]["failed"] > 0)
    for mode, buckets in (("full", 13), ("lora", 2)):
        d, model = two["ddp"][mode], meta_model(mode, r=8)
        assert set(d["bytes_per_step"]) == {gradient_bytes(model)}
        assert d["buckets_per_step"][-1] == buckets == len(ddp_buckets(model))
    bw = two["bandwidth"]
    ratio = {m: s["measured_s"] / s["predicted_s"] for m, s in bw["schedule"].items()}
    # the chapter: full fine-tuning's bandwidth-bound schedule within a few per cent of the model; LoRA's two
    # latency-bound buckets above it (1.27), each all-reduce about as long as the slower small ones, whose
    # spread (more than a third) is the latency's own uncertainty
    assert abs(ratio["full"] - 1) < 0.05 and ratio["lora"] > 1.25
    small = [t for size, t in zip(bw["sizes"], bw["seconds"]) if size <= 2**20]
    per_call = bw["schedule"]["lora"]["measured_s"] / 2
    assert min(small) < per_call <= max(small) and max(small) / min(small) > 4 / 3
    assert bw["model_latency_s"] == min(bw["seconds"]) and bw["model_latency_rule"] == "the quickest all-reduce of any size"
    assert round(bw["model_bus_bandwidth"] / 1e9) == 319
    # the README and the summary: "about 90-100 %" (the medians); series by series both spread over more than twenty
    # points, some above 100 % (noise), and the two ranges overlap (not distinguishable); LoRA against the separate
    # one-GPU job about 100 %
    n = two["settings"]["steps"]
    assert (n, two["settings"]["repeats"]) == (20, 10)
    ranges = {}
    for mode in ("full", "lora"):
        t = two["timing"][mode]
        series = {k: [np.median(t[k]["steps_s"][i:i + n]) for i in range(0, len(t[k]["steps_s"]), n)]
                  for k in ("alone", "allreduce")}
        effs = [a / b for a, b in zip(series["alone"], series["allreduce"])]
        assert np.allclose(effs, t["efficiency_series"])
        assert 0.9 <= t["efficiency"] <= 1.0 and min(effs) <= t["efficiency"] <= max(effs)  # "keep over 90 %"
        assert max(effs) - min(effs) > 0.2 and max(effs) > 1
        ranges[mode] = (min(effs), max(effs))
        # section 8: the step-time model's range (t_c = no_sync, t_ar = the replayed buckets' model, last bucket
        # never hidden): full fine-tuning's median inside it ("at most 4 %" waiting), LoRA's just above (< 2 %)
        t_c, t_ar = t["no_sync"]["median_s"], bw["schedule"][mode]["predicted_s"]
        t_last = ring_allreduce_seconds(bw["schedule"][mode]["bucket_bytes"][-1], 2, bw["model_bus_bandwidth"],
                                        bw["model_latency_s"])
        best, worst = step_time_bounds(t_c, t_ar, BACKWARD_FRACTION[mode], t_last)
        step = t["allreduce"]["median_s"]
        if mode == "full":
            assert round(100 * (worst / t_c - 1)) == 4 and best <= step <= worst
        else:
            assert worst < step < 1.02 * worst
    assert ranges["full"][0] < ranges["lora"][1] and ranges["lora"][0] < ranges["full"][1]  # the ranges overlap
    one_lora = rec["one_gpu"]["timing"]["lora"]["single"]["median_s"]
    assert 0.97 < one_lora / two["timing"]["lora"]["allreduce"]["median_s"] < 1.03
    # DDP rebuilt its buckets: same count and total, one 768-entry vector moved from the first to the last
    d = two["ddp"]["full"]
    assert [m - p for m, p in zip(d["bucket_bytes"], d["predicted_buckets"])] == [-3072] + [0] * 11 + [3072]
    fsdp1 = rec["fsdp1"]["fsdp1"]
    assert "uniform `requires_grad`" in fsdp1["blocks_flat"]["error"]
    assert fsdp1["uniform_units"]["gradient_bytes_per_rank"] == gradient_bytes(meta_model("lora", r=8)) // 2


def test_recorded_peaks_are_chapter_07s_model_plus_what_was_resident():
    """Chapter 08's memory reading of the record: each DDP peak is chapter 07's keep_logits=True prediction plus
    DDP's buckets, and the residual (a tenth of a GiB) is what was already on the GPU before the step beyond the
    model's state and the buckets (memory no model of the step counts). An earlier record kept a 0.46 GiB harness
    copy of the trained weights on the GPU; resident_bytes would show it. FSDP2 LoRA's two ranks peak alike and
    barely below DDP LoRA."""
    from lora_edu.memory import training_memory
    from lora_edu.results import load_result

    two = load_result("distributed_nvidia-h200x2.json")["two_gpus"]
    gib = 2**30
    for mode in ("full", "lora"):
        d = two["ddp"][mode]
        kept = training_memory(TransformerShape.gpt2_small(), 8, 1024, method=mode, r=8, keep_logits=True)
        residual = max(d["peak_bytes"]) - kept.total - d["predicted_bytes"]
        resident_other = max(d["resident_bytes"]) - sum(d["state_bytes"][0].values()) - d["predicted_bytes"]
        assert 0 < residual < 0.15 * gib and 0 < resident_other < 0.15 * gib, (mode, residual / gib, resident_other / gib)
        assert abs(residual - resident_other) < 0.05 * gib, (mode, residual / gib, resident_other / gib)
    fsdp_lora, ddp_lora = two["fsdp"]["lora"]["peak_bytes"], two["ddp"]["lora"]["peak_bytes"]
    assert abs(fsdp_lora[0] - fsdp_lora[1]) < 0.01 * gib and max(fsdp_lora) < max(ddp_lora) < max(fsdp_lora) + 0.2 * gib
