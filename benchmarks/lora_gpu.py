"""LoRA on a GPU, measured: layer speed (eager, CUDA graphs, host time), kernels, merged inference,
and whole-model memory and step time.

One run measures, side by side and interleaved call by call in a seeded shuffled order (so clock drift
and the host's hiccups hit every method alike), ``--repeats`` times over (default 3; the spread of the
ratios over the repeats is recorded):

* **layers** — for d ∈ {1024, 4096}, r ∈ {8, 64}, T = 8192 tokens, ``nn.Linear(d, d)`` without bias:
  the frozen base layer, a fully trained linear, ``lora_edu``'s ``LoRALinear`` (the readable
  ``reference`` forward; ``fused`` with its automatic back-end choice; the fused path forced to stock
  ``torch`` ops or to the Triton kernels), the other matmul order (``big_first``: the big matmul
  first, then ``addmm_`` of the LoRA term, as Unsloth ships it), PEFT's LoRA layer, ``torch.compile``
  of PEFT's layer (at r = 8), and the merged layer. Modes:

  - ``forward`` — inference (``torch.no_grad``);
  - ``forward_backward`` — one training step of the layer: the output, then the gradients of the
    input and of the trainable parameters (``torch.autograd.grad``, no ``.grad`` accumulation),
    eager, CUDA-event timed: what a training loop of this one layer sees on this host, host (Python
    and launch) time included;
  - ``forward_backward_graph`` — the same step captured once in a CUDA graph and replayed: the GPU
    time alone (no host time between kernels);

  each with ``host_ms``, the wall time the host needs to *issue* one call (measured separately, the
  GPU idle before each call). Eager modes are timed as a **steady-state loop per method**: after a
  few warm-up calls, ``steady_iters`` calls of one method back to back between two CUDA events (per
  call: elapsed / steady_iters), ``steady_rounds`` rounds with the methods in a seeded shuffled order
  (so that clock drift hits them alike, while no method's host time hides behind another method's
  GPU work). CUDA-graph replays (no host in between) are interleaved call by call. Configurations: ``bf16`` (everything bfloat16, no dropout) at every
  size, and ``peft_default`` (PEFT's usual training set-up: a bfloat16 base, float32 adapters under
  bfloat16 autocast, ``lora_dropout = 0.05``) at r = 8.
* **cache regime** — warm: the same input and gradient tensors are reused call after call (no L2
  flush). At d = 1024 every (T, d) tensor (16 MiB) fits in the L2 cache (its size is recorded); at
  d = 4096 (64 MiB each) they do not, only their tails survive from one call to the next.
* **kernels** — every kernel that ``lora_edu.traffic.layer_kernels`` lists for the base, reference and
  fused layers at the largest d and smallest r, each timed as a *batch*: 20 launches captured in one
  CUDA graph, replayed, divided by 20 (GPU time, not the host's launch rate). Each distinct operation
  is timed once per repeat and shared by every layer that runs it (``op``): the big matmul in
  particular (plain and ``beta=1``, interleaved round by round), so that clock changes between
  batches cannot make "the same GEMM" differ between the base and a LoRA layer. Plus a profiler trace
  of one training step per layer (every kernel's GPU time, grid and block size).
* **clocks** — the SM clock, power and throttle reasons (NVML) before and after every block, and
  sampled *during* the kernel batches and each whole-model measurement; the driver, the host CPU
  model, the L2 size and the multiprocessor count.
* **models** — a GPT-2-small-shaped transformer (random weights, nothing downloaded), batch 8 × 1024,
  bfloat16 autocast, AdamW: peak memory and the median step time, full fine-tuning against LoRA r = 8,
  next to the peak that ``lora_edu.memory.training_memory`` predicts; ``model_iters`` (50) timed steps per
  repeat, the profiler's GPU time of one step, and the step ratios as ratios of the medians. Both the course's transformer
  (``lora_edu.transformer`` at GPT-2-small shape, LoRA from ``lora_edu`` on ``q_proj`` and ``v_proj``:
  reference, fused, fused with the Triton back-end) and Hugging Face's ``GPT2LMHeadModel`` (LoRA from
  PEFT on ``c_attn``) are measured.

Usage::

    python benchmarks/lora_gpu.py                 # full sizes on a CUDA GPU; tiny sizes on a CPU
    python benchmarks/lora_gpu.py --smoke         # tiny sizes anywhere (what the tests run)
    python benchmarks/lora_gpu.py --explore       # also sweep the Triton kernels' tile sizes first
    python benchmarks/lora_gpu.py --out my.json   # default: benchmarks/results/<gpu-name>.json

It writes one JSON file (see ``SCHEMA_KEYS``) and prints a short table. No test asserts on its times.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
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

from lora_edu import fused as fused_mod  # noqa: E402
from lora_edu.fused import lora_linear  # noqa: E402
from lora_edu.lora import LoRALinear, apply_lora, count_parameters, merge_lora  # noqa: E402
from lora_edu.memory import TransformerShape, gib, measure_peak, training_memory  # noqa: E402
from lora_edu.traffic import layer_kernels  # noqa: E402
from lora_edu.transformer import Transformer, TransformerConfig  # noqa: E402

RESULTS = HERE / "results"
SCHEMA_KEYS = ("benchmark", "gpu", "device", "smoke", "date", "versions", "system", "settings", "ceilings",
               "records", "summary", "kernel_records", "profile_records", "model_records", "model_summary",
               "clock_records", "targets")
RECORD_KEYS = ("config", "method", "d", "r", "T", "dtype", "mode", "repeat", "median_ms", "ratio_to_base", "p10_ms",
               "p90_ms", "n", "host_ms", "peak_extra_mib")
SUMMARY_KEYS = ("config", "method", "d", "r", "mode", "median_ms", "min_ms", "max_ms", "ratio", "ratio_min",
                "ratio_max", "host_ms", "repeats")
KERNEL_KEYS = ("impl", "name", "phase", "d", "r", "T", "flops", "bytes", "median_ms", "repeat")
MODEL_KEYS = ("model", "method", "batch", "seq", "dtype", "trainable", "total_params", "peak_bytes", "peak_gib",
              "predicted_bytes", "predicted_gib", "prediction_error", "step_ms", "step_host_ms", "step_ratio_to_full",
              "repeat")

CONFIGS = {
    "bf16": dict(adapter_dtype=None, dropout=0.0, autocast=False,
                 about="bfloat16 base and adapters, no dropout, no autocast"),
    "peft_default": dict(adapter_dtype=torch.float32, dropout=0.05, autocast=True,
                         about="bfloat16 base, float32 adapters (PEFT's autocast_adapter_dtype), bf16 autocast, "
                               "lora_dropout 0.05"),
}
FULL = dict(dims=(1024, 4096), ranks=(8, 64), tokens=8192, warmup=10, iters=25, rounds=4, repeats=3,
            steady_warmup=3, steady_iters=20, steady_rounds=10, kernel_rounds=5,
            host_iters=20, graph_batch=20, realistic_ranks=(8,), compile_ranks=(8,),
            model=dict(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, vocab_size=50257, max_seq_len=1024),
            batch=8, seq=1024, model_warmup=3, model_iters=50, model_host_iters=10, clock_interval_s=0.05)
SMOKE = dict(dims=(32, 64), ranks=(2, 4), tokens=64, warmup=1, iters=2, rounds=1, repeats=2,
             steady_warmup=1, steady_iters=2, steady_rounds=2, kernel_rounds=2,
             host_iters=1, graph_batch=2, realistic_ranks=(2,), compile_ranks=(),
             model=dict(n_layers=2, d_model=32, n_heads=2, d_mlp=64, vocab_size=128, max_seq_len=16),
             batch=2, seq=16, model_warmup=1, model_iters=2, model_host_iters=2, clock_interval_s=0.05)
LAYER_METHODS = ("base_frozen", "full_linear", "lora_reference", "lora_fused", "lora_fused_torch",
                 "lora_fused_triton", "lora_big_first", "peft", "peft_compiled", "merged")
MODES = ("forward", "forward_backward", "forward_backward_graph")


def slug(name: str) -> str:
    """A file-name-safe version of a device name: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The host CPU's model name (what decides the host-bound timings at small d)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    versions = {"python": platform.python_version(), "torch": torch.__version__, "peft": _version("peft"),
                "transformers": _version("transformers"), "cuda": torch.version.cuda or "none",
                "triton": _version("triton")}
    system = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "driver": None, "l2_cache_bytes": None,
              "multiprocessors": None, "memory_bytes": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        system.update(l2_cache_bytes=getattr(props, "L2_cache_size", None), multiprocessors=props.multi_processor_count,
                      memory_bytes=props.total_memory)
        nv = _nvml()
        if nv is not None:
            system["driver"] = _s(nv.nvmlSystemGetDriverVersion())
            h = nv.nvmlDeviceGetHandleByIndex(device.index or 0)
            with contextlib.suppress(Exception):
                system["max_sm_clock_mhz"] = nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)
            with contextlib.suppress(Exception):
                system["power_limit_w"] = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3
    return {"gpu": gpu, "device": device.type, "versions": versions, "system": system,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# --------------------------------------------------------------------------- clocks (NVML)

_NVML = None


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvml():
    """The initialised ``pynvml`` module (package nvidia-ml-py), or ``None`` where it is missing."""
    global _NVML
    if _NVML is None:
        try:
            import pynvml

            pynvml.nvmlInit()
            _NVML = pynvml
        except Exception:  # noqa: BLE001 - no NVML (a CPU, or no driver): clocks are simply not recorded
            _NVML = False
    return _NVML or None


_THROTTLE = {"gpu_idle": 0x1, "applications_clocks": 0x2, "sw_power_cap": 0x4, "hw_slowdown": 0x8,
             "sync_boost": 0x10, "sw_thermal": 0x20, "hw_thermal": 0x40, "hw_power_brake": 0x80,
             "display_clocks": 0x100}


def gpu_state(device: torch.device) -> dict | None:
    """SM and memory clock (MHz), power (W), temperature (°C) and active throttle reasons, now."""
    nv = _nvml() if device.type == "cuda" else None
    if nv is None:
        return None
    h = nv.nvmlDeviceGetHandleByIndex(device.index or 0)
    out = {}
    for key, call in (("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                      ("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
                      ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3),
                      ("temperature_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))):
        try:
            out[key] = call()
        except Exception:  # noqa: BLE001
            out[key] = None
    try:
        mask = nv.nvmlDeviceGetCurrentClocksEventReasons(h)
    except Exception:  # noqa: BLE001 - older bindings
        try:
            mask = nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)
        except Exception:  # noqa: BLE001
            mask = None
    out["throttle_reasons"] = None if mask is None else [k for k, bit in _THROTTLE.items() if mask & bit]
    return out


class ClockSampler:
    """NVML samples of the GPU's state *during* a measurement, from a background thread every
    ``interval_s`` seconds (a handful of NVML calls per interval: at 50 ms, about a percent of the host's
    time at most, which a host-bound step would show). ``summary()`` gives the SM clock's min / median / max, the largest power draw, every
    throttle reason seen and the number of samples; ``None`` where NVML is missing (a CPU)."""

    def __init__(self, device: torch.device, interval_s: float = 0.05):
        self.device, self.interval_s = device, interval_s
        self.samples: list[dict] = []
        self._stop = None
        self._thread = None

    def __enter__(self) -> "ClockSampler":
        import threading

        if gpu_state(self.device) is None:
            return self
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                state = gpu_state(self.device)
                if state is not None:
                    self.samples.append(state)
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def summary(self) -> dict | None:
        clocks = [s["sm_clock_mhz"] for s in self.samples if s.get("sm_clock_mhz") is not None]
        if not clocks:
            return None
        power = [s["power_w"] for s in self.samples if s.get("power_w") is not None]
        reasons = sorted({r for s in self.samples for r in (s.get("throttle_reasons") or [])})
        return {"samples": len(self.samples), "sm_clock_min_mhz": min(clocks),
                "sm_clock_median_mhz": statistics.median(clocks), "sm_clock_max_mhz": max(clocks),
                "power_max_w": max(power) if power else None, "throttle_reasons": reasons}


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def host_times(fn: Callable[[], object], n: int, device: torch.device) -> list[float]:
    """Milliseconds the host needs to *issue* one call (the GPU idle before each call)."""
    out = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    _sync(device)
    return out


def interleaved(fns: dict[str, Callable[[], object]], cfg: dict, device: torch.device,
                seed: int = 0) -> dict[str, list[float]]:
    """Time the functions call by call in turn (warmed up before), so that clock drift falls on every
    method alike: used for CUDA-graph replays, whose time is the GPU's alone (for eager calls a host-bound
    call could hide behind the previous call's GPU work: see :func:`steady_state`). The order is shuffled each time (seeded): at d = 1024 a (T, d)
    input fits in the L2 cache, and a method always timed right after one that read the same input
    would find it cached. Returns all times per name (ms)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names, shuffle = list(fns), random.Random(seed).shuffle
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


def steady_state(fns: dict[str, Callable[[], object]], cfg: dict, device: torch.device,
                 seed: int = 0) -> dict[str, list[float]]:
    """Eager timing as a training loop sees it: one method at a time, ``steady_warmup`` calls to reach
    the loop's steady state, then ``steady_iters`` calls back to back between two CUDA events (on a
    CPU: the wall clock); per call = elapsed / steady_iters. Where the host is slower than the GPU the
    GPU waits between calls and the time shows it; where it is faster the host runs ahead and the time
    is the GPU's. ``steady_rounds`` rounds, the methods in a seeded shuffled order each round, so that
    clock drift falls on every method alike (and, unlike call-by-call interleaving, no method's host
    time hides behind the GPU work of another). Returns the per-call ms of each round, per name."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names, rng = list(fns), random.Random(seed)
    n = cfg["steady_iters"]
    for _ in range(cfg["steady_rounds"]):
        rng.shuffle(names)
        for name in names:
            fn = fns[name]
            _sync(device)                      # the previous method's work is done: this one starts alone
            for _ in range(cfg["steady_warmup"]):
                fn()
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(n):
                    fn()
                end.record()
                torch.cuda.synchronize(device)
                times[name].append(start.elapsed_time(end) / n)
            else:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                times[name].append((time.perf_counter() - t0) * 1e3 / n)
    return times


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


# --------------------------------------------------------------------------- the layers


class _BigFirst(torch.autograd.Function):
    """The other matmul order (Unsloth's ``matmul_lora``): the big matmul writes the output, then a thin
    ``addmm_`` adds the LoRA term into it — a ``beta=1`` thin matmul that reads *and* writes (N, d)."""

    @staticmethod
    def forward(ctx, x, W, A, sB):
        t = x @ A.T
        out = x @ W.T
        out.addmm_(t, sB.T)
        ctx.save_for_backward(x, W, A, sB, t)
        return out

    @staticmethod
    def backward(ctx, g):
        x, W, A, sB, t = ctx.saved_tensors
        dt = g @ sB
        gx = g @ W
        gx.addmm_(dt, A)
        return gx, None, dt.T @ x, g.T @ t, None


class BigFirst(nn.Module):
    """A LoRA layer (no bias, no dropout) computed in the big-matmul-first order; shares A and B."""

    def __init__(self, lora: LoRALinear):
        super().__init__()
        self.lora = lora

    def forward(self, x):
        m = self.lora
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        sB_scaled = m.lora_B.to(dtype) * m.scaling   # scaling on the tiny B; its gradient flows to B
        return _BigFirst.apply(x.to(dtype), m.base.weight.to(dtype), m.lora_A.to(dtype), sB_scaled)


class FusedWith(nn.Module):
    """``LoRALinear(impl="fused")`` with its back-end forced (``"torch"`` or ``"triton"``)."""

    def __init__(self, lora: LoRALinear, backend: str):
        super().__init__()
        self.lora, self.backend = lora, backend

    def forward(self, x):
        m = self.lora
        drop = None if isinstance(m.lora_dropout, nn.Identity) else m.lora_dropout(x)
        return lora_linear(x, m.base.weight, m.base.bias, m.lora_A, m.lora_B, m.scaling,
                           None if drop is x else drop, backend=self.backend)


def _set_adapter_dtype(layer: nn.Module, dtype: torch.dtype | None) -> None:
    if dtype is None:
        return
    for name in ("lora_A", "lora_B"):
        p = getattr(layer, name)
        p.data = p.data.to(dtype)


def build_layers(d: int, r: int, device: torch.device, dtype: torch.dtype, config: dict, methods: tuple[str, ...],
                 seed: int = 0) -> dict[str, nn.Module]:
    """The layers of one comparison, sharing one base weight and the same A, B (B ~ N(0, 0.02): with
    B = 0 the branch would be a no-op)."""
    import peft
    from peft.tuners.lora import Linear as PeftLinear

    torch.manual_seed(seed)
    base = nn.Linear(d, d, bias=False, device=device, dtype=dtype)
    base.requires_grad_(False)
    p = config["dropout"]
    ref = LoRALinear(copy.deepcopy(base), r=r, alpha=2 * r, dropout=p, impl="reference", adapter_dtype=dtype)
    with torch.no_grad():
        ref.lora_B.data = torch.randn(d, r, device=device, dtype=dtype) * 0.02
    _set_adapter_dtype(ref, config["adapter_dtype"])
    layers: dict[str, nn.Module] = {}
    for name in methods:
        if name == "base_frozen":
            layers[name] = base
        elif name == "full_linear":
            layers[name] = copy.deepcopy(base).requires_grad_(True)
        elif name == "lora_reference":
            layers[name] = ref
        elif name == "lora_fused":
            layers[name] = copy.deepcopy(ref)
            layers[name].impl = "fused"
        elif name in ("lora_fused_torch", "lora_fused_triton"):
            layers[name] = FusedWith(copy.deepcopy(ref), name.rsplit("_", 1)[1])
        elif name == "lora_big_first":
            layers[name] = BigFirst(copy.deepcopy(ref))
        elif name == "merged":
            m = copy.deepcopy(ref)
            _set_adapter_dtype(m, dtype)
            layers[name] = merge_lora(m)   # what you deploy: a plain nn.Linear holding W0 + ΔW
        elif name in ("peft", "peft_compiled"):
            cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=p, target_modules=["base"])
            pl = PeftLinear(copy.deepcopy(base), "default", config=cfg, r=r, lora_alpha=2 * r, lora_dropout=p)
            pl = pl.to(device=device, dtype=dtype)
            pl.base_layer.requires_grad_(False)
            with torch.no_grad():
                pl.lora_A["default"].weight.copy_(ref.lora_A)
                pl.lora_B["default"].weight.copy_(ref.lora_B)
            if config["adapter_dtype"] is not None:
                pl.lora_A["default"].to(config["adapter_dtype"])
                pl.lora_B["default"].to(config["adapter_dtype"])
            layers[name] = torch.compile(pl) if name == "peft_compiled" else pl
        else:
            raise ValueError(f"unknown method {name!r}")
    return layers


def trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def layer_step_fns(layers: dict[str, nn.Module], x: torch.Tensor, g: torch.Tensor, mode: str,
                   autocast: bool) -> dict[str, Callable[[], object]]:
    """Zero-argument functions that run one forward (inference) or one forward + backward."""
    device_type = x.device.type
    fns = {}
    for name, layer in layers.items():
        if mode == "forward":
            if name in ("full_linear", "peft_compiled"):
                continue                      # the same op as the frozen base; compiled: training only
            def fwd(layer=layer):
                with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast,
                                                     cache_enabled=False):
                    return layer(x)
            fns[name] = fwd
        else:
            if name == "merged":
                continue                      # merging is for inference
            inputs = [x] + trainable(layer)

            def step(layer=layer, inputs=inputs):
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
                    out = layer(x)   # (no autocast weight cache: CUDA graphs capture these steps)
                return torch.autograd.grad(out, inputs, g)   # no .grad accumulation in the timing
            fns[name] = step
    return fns


def capture(fn: Callable[[], object], device: torch.device, n: int = 1) -> "torch.cuda.CUDAGraph":
    """``n`` calls of ``fn`` captured in one CUDA graph, after three warm-up calls on a side stream (so
    that workspaces and compiled kernels exist before the capture, as PyTorch's documentation asks)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            fn()
    return graph


def graph_fns(step_fns: dict[str, Callable[[], object]], device: torch.device, log=print) -> dict[str, Callable]:
    """Each step captured once in a CUDA graph: replaying it is the step's GPU time without the host."""
    out = {}
    for name, fn in step_fns.items():
        if name == "peft_compiled":
            continue                          # Inductor's own code is not captured here
        try:
            graph = capture(fn, device)
            graph.replay()
            torch.cuda.synchronize(device)
            out[name] = graph.replay
        except Exception as exc:  # noqa: BLE001 - record what could not be captured, measure the rest
            log(f"  (no CUDA graph for {name}: {type(exc).__name__}: {str(exc)[:120]})")
    return out


def _methods_for(config_name: str, r: int, cfg: dict, device: torch.device) -> tuple[str, ...]:
    methods = ["base_frozen", "full_linear", "lora_reference", "lora_fused", "lora_fused_torch", "peft", "merged"]
    if device.type == "cuda" and fused_mod._kernels() is not None:
        methods.insert(5, "lora_fused_triton")
    if config_name == "bf16":
        methods.insert(-2, "lora_big_first")
        if device.type == "cuda" and r in cfg["compile_ranks"]:
            methods.insert(-1, "peft_compiled")
    return tuple(methods)


def setup_groups(cfg: dict, device: torch.device, dtype: torch.dtype, log=print) -> list[dict]:
    """Build, warm up and (on CUDA) capture every comparison once; the timing repeats reuse them."""
    groups = []
    T = cfg["tokens"]
    plan = [("bf16", d, r) for d in cfg["dims"] for r in cfg["ranks"]]
    plan += [("peft_default", d, r) for d in cfg["dims"] for r in cfg["realistic_ranks"]]
    for config_name, d, r in plan:
        config = CONFIGS[config_name]
        methods = _methods_for(config_name, r, cfg, device)
        layers = build_layers(d, r, device, dtype, config, methods)
        torch.manual_seed(1)
        x = torch.randn(T, d, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn(T, d, device=device, dtype=dtype)
        group = {"config": config_name, "d": d, "r": r, "layers": layers, "x": x, "g": g, "modes": {}}
        t0 = time.perf_counter()
        for mode in ("forward", "forward_backward"):
            fns = layer_step_fns(layers, x, g, mode, config["autocast"])
            for name, fn in list(fns.items()):
                try:
                    for _ in range(cfg["warmup"]):
                        fn()
                except Exception as exc:  # noqa: BLE001 - e.g. torch.compile unavailable: skip that method
                    log(f"  ({config_name} d={d} r={r} {mode}: {name} failed: {type(exc).__name__}: {str(exc)[:160]})")
                    del fns[name]
            group["modes"][mode] = fns
        if device.type == "cuda":
            group["modes"]["forward_backward_graph"] = graph_fns(group["modes"]["forward_backward"], device, log)
        _sync(device)
        log(f"set up {config_name} d={d} r={r}: {len(methods)} methods in {time.perf_counter() - t0:.1f} s")
        groups.append(group)
    return groups


def bench_layers(groups: list[dict], cfg: dict, device: torch.device, dtype: torch.dtype, repeat: int,
                 log=print) -> tuple[list[dict], list[dict]]:
    """One repeat over every group and mode: records (one per method) and NVML clock records."""
    records, clocks = [], []
    for group in groups:
        d, r = group["d"], group["r"]
        for mode, fns in group["modes"].items():
            if not fns:
                continue
            before = gpu_state(device)
            if mode == "forward_backward_graph":           # GPU time alone: call-by-call interleaving is fair
                times = interleaved(fns, cfg, device, seed=repeat)
            else:                                          # eager: each method in its own steady-state loop
                times = steady_state(fns, cfg, device, seed=repeat)
            after = gpu_state(device)
            clocks.append({"block": f"{group['config']} d={d} r={r} {mode}", "repeat": repeat,
                           "before": before, "after": after})
            base_ms = statistics.median(times["base_frozen"])
            new = []
            for name, ts in times.items():
                host = host_times(fns[name], cfg["host_iters"], device) if mode != "forward_backward_graph" else \
                    host_times(fns[name], max(2, cfg["host_iters"] // 4), device)
                peak = None
                if mode == "forward_backward" and repeat == 0:
                    start = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
                    peak = (measure_peak(fns[name], device=device) - start) / 2**20
                med = statistics.median(ts)
                new.append({"config": group["config"], "method": name, "d": d, "r": r, "T": cfg["tokens"],
                            "dtype": str(dtype).replace("torch.", ""), "mode": mode, "repeat": repeat,
                            "median_ms": med, "ratio_to_base": med / base_ms, "p10_ms": _quantile(ts, 0.1),
                            "p90_ms": _quantile(ts, 0.9), "n": len(ts), "host_ms": statistics.median(host),
                            "peak_extra_mib": peak})
            records += new
            log(f"[{repeat}] {group['config']:12s} d={d:5d} r={r:3d} {mode:22s} " + "  ".join(
                f"{x['method']}={1e3 * x['median_ms']:.0f}us({x['ratio_to_base']:.2f}x)" for x in new))
    return records, clocks


def summarize(records: list[dict]) -> list[dict]:
    """Per (config, method, d, r, mode): the median over repeats of the median times and of the ratios,
    and their min–max spread."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["config"], rec["method"], rec["d"], rec["r"], rec["mode"]), []).append(rec)
    out = []
    for (config, method, d, r, mode), recs in groups.items():
        ms = [x["median_ms"] for x in recs]
        ratios = [x["ratio_to_base"] for x in recs]
        out.append({"config": config, "method": method, "d": d, "r": r, "mode": mode,
                    "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
                    "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                    "host_ms": statistics.median(x["host_ms"] for x in recs), "repeats": len(recs)})
    return out


# --------------------------------------------------------------------------- ceilings, kernels, profiles


def bench_ceilings(cfg: dict, device: torch.device) -> dict:
    """The two numbers every roofline needs: copy bandwidth (bytes read + written per second) and the
    bf16 matmul rate, measured here and now."""
    n, m = (2**29, 8192) if device.type == "cuda" else (2**20, 256)
    a = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    copy_ms = statistics.median(time_calls(lambda: b.copy_(a), 20, device))
    del a, b
    M = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        M @ M
    mm_ms = statistics.median(time_calls(lambda: M @ M, 10, device))
    return {"bandwidth": 2 * n * 2 / (copy_ms * 1e-3), "matmul_flops": 2 * m**3 / (mm_ms * 1e-3),
            "copy_bytes": 2 * n * 2, "matmul_size": m}


def batched_ms(fn: Callable[[], object], device: torch.device, n: int, reps: int = 10) -> float:
    """GPU milliseconds of one launch of ``fn``: ``n`` launches captured in one CUDA graph, replayed
    ``reps`` times (median), divided by ``n``. On a CPU: the median wall time of ``reps`` calls."""
    if device.type != "cuda":
        return statistics.median(time_calls(fn, reps, device))
    graph = capture(fn, device, n)
    graph.replay()
    return statistics.median(time_calls(graph.replay, reps, device)) / n


# which operation each kernel of ``layer_kernels`` runs: kernels that run the same operation on the same
# shapes (the big matmul of the base and of a LoRA layer, the thin x·Aᵀ of the reference and the fused
# layer, ...) share one timing, so that a clock change between two batches cannot make them differ
KERNEL_OPS = {
    "y = x·Wᵀ": "x·Wᵀ", "gx = g·W": "g·W", "gx₀ = g·W": "g·W",
    "h += x·Wᵀ (beta=1)": "out += x·Wᵀ", "gx += g·W (beta=1)": "gx += g·W",
    "t = x·Aᵀ": "x·Aᵀ", "u = t·Bᵀ": "t·Bᵀ", "h = t·sBᵀ (written once)": "t·Bᵀ",
    "v = u·scaling": "u·s", "gu = g·scaling": "u·s", "h = y + v": "y + u", "gx = gx₀ + gx₁": "y + u",
    "gt = gu·B": "g·B", "dt = g·sB": "g·B", "gB = guᵀ·t": "gᵀ·t", "gB = gᵀ·t": "gᵀ·t",
    "gx₁ = gt·A": "t·A", "gx = dt·A (written once)": "t·A", "gA = gtᵀ·x": "tᵀ·x", "gA = dtᵀ·x": "tᵀ·x",
    "sB = B·scaling (tiny)": "B·s (tiny)", "gB ·= scaling (tiny)": "gB ·= s (tiny)",
}
BIG_OPS = ("x·Wᵀ", "g·W", "out += x·Wᵀ", "gx += g·W")


def bench_kernels(cfg: dict, device: torch.device, dtype: torch.dtype, repeat: int = 0,
                  clocks: list[dict] | None = None) -> list[dict]:
    """Time every kernel that ``lora_edu.traffic.layer_kernels`` lists for the base, the reference and
    the fused layer, as batches of launches (GPU time), at the largest d and smallest r.

    Each distinct operation (``KERNEL_OPS``) is timed once per repeat and its time is shared by every
    layer that runs it. All operations are timed ``kernel_rounds`` times, round by round in a seeded
    shuffled order (median): the big matmul plain and with ``beta=1`` side by side, under the same
    clock. NVML samples taken during the block go to ``clocks`` (when given)."""
    T, d, r, s = cfg["tokens"], max(cfg["dims"]), min(cfg["ranks"]), 2.0
    torch.manual_seed(2)
    x, g, y, u, out, gx = (torch.randn(T, d, device=device, dtype=dtype) for _ in range(6))
    W = torch.randn(d, d, device=device, dtype=dtype) / d**0.5
    A = torch.randn(r, d, device=device, dtype=dtype) / d**0.5
    B = torch.randn(d, r, device=device, dtype=dtype)
    t = x @ A.T
    gB = g.T @ t
    ops = {
        "x·Wᵀ": lambda: x @ W.T, "g·W": lambda: g @ W, "out += x·Wᵀ": lambda: out.addmm_(x, W.T),
        "gx += g·W": lambda: gx.addmm_(g, W), "x·Aᵀ": lambda: x @ A.T, "t·Bᵀ": lambda: t @ B.T,
        "u·s": lambda: u * s, "y + u": lambda: y + u, "g·B": lambda: g @ B, "gᵀ·t": lambda: g.T @ t,
        "t·A": lambda: t @ A, "tᵀ·x": lambda: t.T @ x, "B·s (tiny)": lambda: B * s,
        "gB ·= s (tiny)": lambda: gB.mul_(1.0),
    }
    graphs = {}
    for name, fn in ops.items():
        if device.type == "cuda":
            graphs[name] = capture(fn, device, cfg["graph_batch"])
            graphs[name].replay()
        else:
            graphs[name] = fn
    _sync(device)
    per_op: dict[str, list[float]] = {name: [] for name in ops}
    order, rng = list(ops), random.Random(repeat)
    before = gpu_state(device)
    with ClockSampler(device, cfg.get("clock_interval_s", 0.05)) as sampler:
        for _ in range(cfg["kernel_rounds"]):
            rng.shuffle(order)
            for name in order:
                if device.type == "cuda":
                    per_op[name].append(statistics.median(time_calls(graphs[name].replay, 10, device))
                                        / cfg["graph_batch"])
                else:
                    per_op[name].append(statistics.median(time_calls(ops[name], 3, device)))
    if clocks is not None:
        clocks.append({"block": f"kernels d={d} r={r}", "repeat": repeat, "before": before,
                       "after": gpu_state(device), "during": sampler.summary()})
    # the naive way, for comparison: two events around one launch, launches back to back
    single = {name: statistics.median(time_calls(fn, 2 * cfg["host_iters"], device)) for name, fn in ops.items()}
    records = []
    for impl in ("base", "reference", "fused"):
        for k in layer_kernels(impl, T, d, d, r, dtype_bytes=2):
            op = KERNEL_OPS[k.name]
            records.append({"impl": impl, "name": k.name, "op": op, "big": op in BIG_OPS, "phase": k.phase,
                            "d": d, "r": r, "T": T, "flops": k.flops, "bytes": k.bytes,
                            "median_ms": statistics.median(per_op[op]), "min_ms": min(per_op[op]),
                            "max_ms": max(per_op[op]), "single_launch_ms": single[op], "repeat": repeat})
    kernels = fused_mod._kernels()
    if device.type == "cuda" and kernels is not None:      # the Triton back-end's three kernels
        for name, fn in (("forward: t = x·Aᵀ and out = s·t·Bᵀ", lambda: kernels.forward(x, A, B, None, s)),
                         ("grad_g: dt = s·g·B and gB = s·gᵀ·t (one read of g)",
                          lambda: kernels.grad_g(g, t, B, s)),
                         ("grad_x: gA = dtᵀ·x and gx = dt·A", lambda: kernels.grad_x(x, t.float(), A, True, dtype))):
            passes = 2 if not name.startswith("grad_g") else 1
            records.append({"impl": "fused_triton", "name": name, "op": name, "big": False,
                            "phase": "backward" if "grad" in name else "forward",
                            "d": d, "r": r, "T": T, "flops": 4 * T * d * r, "bytes": passes * T * d * 2,
                            "median_ms": batched_ms(fn, device, cfg["graph_batch"]), "repeat": repeat})
    return records


def profile_layers(groups: list[dict], device: torch.device, log=print) -> list[dict]:
    """One training step per layer (bf16, largest d, smallest r) under ``torch.profiler``: every kernel's
    GPU time (µs), grid and block size, as the trace records them."""
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    group = next(g for g in groups if g["config"] == "bf16" and g["d"] == max(x["d"] for x in groups)
                 and g["r"] == min(x["r"] for x in groups))
    fns = group["modes"]["forward_backward"]
    out = []
    for name in ("base_frozen", "lora_reference", "peft", "lora_fused_torch", "lora_fused_triton"):
        if name not in fns:
            continue
        fn = fns[name]
        for _ in range(3):
            fn()
        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            _sync(device)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trace.json"
            prof.export_chrome_trace(str(path))
            trace = json.loads(path.read_text())
        kernels = [e for e in trace.get("traceEvents", []) if e.get("cat") == "kernel"]
        kernels.sort(key=lambda e: e.get("ts", 0))
        for e in kernels:
            args = e.get("args", {})
            out.append({"method": name, "d": group["d"], "r": group["r"], "kernel": e.get("name", "")[:120],
                        "us": e.get("dur"), "grid": args.get("grid"), "block": args.get("block"),
                        "occupancy_pct": args.get("est. achieved occupancy %")})
        log(f"profile {name}: {len(kernels)} kernels, {sum(e.get('dur', 0) for e in kernels):.0f} us")
    return out


# --------------------------------------------------------------------------- Triton tile sizes (--explore)


def explore_triton(cfg: dict, device: torch.device, dtype: torch.dtype, log=print) -> list[dict]:
    """Time candidate tile sizes of the three Triton kernels (batched launches), keep the fastest per
    kernel in ``lora_edu._fused_kernels.CONFIG`` for the rest of the run, and return every timing."""
    K = fused_mod._kernels()
    if K is None or device.type != "cuda":
        return []
    cands = {
        "forward": [dict(BM=32, BK=128, BN=128, num_warps=4, num_stages=4), dict(BM=64, BK=64, BN=128, num_warps=4,
                    num_stages=4), dict(BM=32, BK=256, BN=256, num_warps=8, num_stages=3),
                    dict(BM=16, BK=256, BN=256, num_warps=4, num_stages=3), dict(BM=64, BK=128, BN=64, num_warps=8,
                    num_stages=3)],
        "grad_g": [dict(BM=32, BN=256, num_warps=4, num_stages=3), dict(BM=64, BN=128, num_warps=4, num_stages=3),
                   dict(BM=64, BN=256, num_warps=8, num_stages=3), dict(BM=32, BN=128, num_warps=4, num_stages=4),
                   dict(BM=128, BN=128, num_warps=8, num_stages=2)],
        "grad_x": [dict(BM=32, BN=256, num_warps=4, num_stages=3), dict(BM=64, BN=128, num_warps=4, num_stages=3),
                   dict(BM=64, BN=256, num_warps=8, num_stages=3), dict(BM=32, BN=128, num_warps=4, num_stages=4),
                   dict(BM=128, BN=128, num_warps=8, num_stages=2)],
    }
    out = []
    T, s = cfg["tokens"], 2.0
    best: dict[str, dict] = {}
    for d in cfg["dims"]:
        r = min(cfg["ranks"])
        torch.manual_seed(3)
        x = torch.randn(T, d, device=device, dtype=dtype)
        g = torch.randn(T, d, device=device, dtype=dtype)
        A = torch.randn(r, d, device=device, dtype=dtype) / d**0.5
        B = torch.randn(d, r, device=device, dtype=dtype)
        t = (x @ A.T)
        dt = (g @ B).float()
        ref = {"forward": [lambda: x @ A.T, lambda: t @ B.T], "grad_g": [lambda: g @ B, lambda: g.T @ t],
               "grad_x": [lambda: dt.to(dtype).T @ x, lambda: dt.to(dtype) @ A]}
        for name, c_list in cands.items():
            cublas_us = sum(1e3 * batched_ms(f, device, cfg["graph_batch"]) for f in ref[name])
            for c in c_list:
                fn = {"forward": lambda c=c: K.forward(x, A, B, None, s, config=c),
                      "grad_g": lambda c=c: K.grad_g(g, t, B, s, config=c),
                      "grad_x": lambda c=c: K.grad_x(x, dt, A, True, dtype, config=c)}[name]
                try:
                    us = 1e3 * batched_ms(fn, device, cfg["graph_batch"])
                    eager = statistics.median(host_times(fn, 10, device))
                except Exception as exc:  # noqa: BLE001 - a tile that does not fit (shared memory, registers)
                    log(f"  {name} {c}: {type(exc).__name__}: {str(exc)[:100]}")
                    continue
                passes = 1 if name == "grad_g" else 2
                rec = {"kernel": name, "d": d, "r": r, "T": T, "config": c, "gpu_us": us, "host_us": 1e3 * eager,
                       "cublas_pair_us": cublas_us, "gb_per_s": passes * T * d * 2 / (us * 1e-6) / 1e9}
                out.append(rec)
                log(f"  d={d} {name:8s} {c}: {us:6.1f} us ({rec['gb_per_s']:.0f} GB/s; cuBLAS pair {cublas_us:.1f} us; "
                    f"host {1e3 * eager:.1f} us)")
    for name in cands:
        # the config with the smallest total over the widths explored
        totals: dict[str, float] = {}
        for rec in out:
            if rec["kernel"] == name:
                key = json.dumps(rec["config"], sort_keys=True)
                totals[key] = totals.get(key, 0.0) + rec["gpu_us"] * (4 if rec["d"] == max(cfg["dims"]) else 1)
        if totals:
            best[name] = json.loads(min(totals, key=totals.get))
            K.CONFIG[name] = best[name]
    log(f"Triton tile sizes used from here on: {best}")
    return out


# --------------------------------------------------------------------------- whole models


def _optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]


def _train_measure(model: nn.Module, loss_of: Callable[[], torch.Tensor], cfg: dict, device: torch.device,
                   unrelated: int = 0) -> dict:
    """Steady-state peak memory and median step time (``model_iters`` timed steps) of AdamW training
    steps under bf16 autocast, the profiler's GPU time of one step, the host time to issue one step
    (``model_host_iters`` samples), and the GPU's clocks before, during and after the timed steps.
    ``unrelated``: bytes allocated on the device before the model was built (the layer benchmark's
    tensors), subtracted from the peak."""
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
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peak = measure_peak(step, existing=existing, device=device) - unrelated
    out = {"peak_bytes": int(peak), "reserve_slack_bytes": None, "outside_allocator_bytes": None, "step_gpu_ms": None}
    if device.type == "cuda":
        # what the caching allocator holds beyond the tensors at its peak (freed blocks, fragmentation), and
        # what the device has in use outside PyTorch's allocator (the CUDA context, libraries' workspaces)
        out["reserve_slack_bytes"] = int(torch.cuda.max_memory_reserved(device) - torch.cuda.max_memory_allocated(device))
        nv = _nvml()
        if nv is not None:
            with contextlib.suppress(Exception):
                used = nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(device.index or 0)).used
                out["outside_allocator_bytes"] = int(used - torch.cuda.memory_reserved(device))
        out["step_gpu_ms"] = _gpu_busy_ms(step, device)
    out["clock_before"] = gpu_state(device)
    with ClockSampler(device, cfg.get("clock_interval_s", 0.05)) as sampler:
        times = time_calls(step, cfg["model_iters"], device)
    out["clock_during"], out["clock_after"] = sampler.summary(), gpu_state(device)
    host = host_times(step, cfg.get("model_host_iters", max(1, cfg["model_iters"] // 2)), device)
    return out | {"step_ms": statistics.median(times), "step_ms_p10": _quantile(times, 0.1),
                  "step_ms_p90": _quantile(times, 0.9), "steps_timed": len(times),
                  "step_host_ms": statistics.median(host)}


def _gpu_busy_ms(step: Callable[[], object], device: torch.device) -> float | None:
    """The sum of every kernel's GPU time in one step (``torch.profiler``): the step's GPU work alone,
    whatever the host does between kernels."""
    from torch.profiler import ProfilerActivity, profile

    try:
        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            _sync(device)
        return sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type.name == "CUDA") / 1e3
    except Exception:  # noqa: BLE001 - a profiler that does not work here: the field stays empty
        return None


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over all ``B * S`` positions (the last one has no target and is
    ignored), in float32 as usual under autocast."""
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def bench_models(cfg: dict, device: torch.device, repeat: int = 0, log=print,
                 clocks: list[dict] | None = None) -> list[dict]:
    """The whole-model measurements of one repeat (see the module's docstring); NVML clock records of
    each model's timed steps are appended to ``clocks`` (when given)."""
    tcfg = TransformerConfig.gpt2_small(**cfg["model"])
    shape = TransformerShape.from_config(tcfg)
    B, S = cfg["batch"], cfg["seq"]
    records = []
    torch.manual_seed(0)
    ids = torch.randint(0, shape.vocab, (B, S), device=device)

    # (1) the course's transformer: full fine-tuning, LoRA r=8 on q_proj and v_proj
    variants = [("full", None, None), ("lora_reference", "reference", None), ("lora_fused", "fused", None)]
    if device.type == "cuda" and fused_mod._kernels() is not None:
        variants.append(("lora_fused_triton", "fused", "1"))
    for method, impl, triton_env in variants:
        unrelated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        torch.manual_seed(0)
        model = Transformer(tcfg).to(device)
        if impl is not None:
            apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16, impl=impl)
        est = training_memory(shape, B, S, method="full" if impl is None else "lora", r=8,
                              targets=("q_proj", "v_proj"))
        with _env("LORA_EDU_TRITON", triton_env):
            out = _train_measure(model, lambda: lm_loss(model(ids), ids), cfg, device, unrelated)
            # the back-end LoRALinear(impl="fused") ran (q_proj's input: (B·S, d_model)), so that a name
            # means the same kernels in the layer and in the model records
            backend = None if impl != "fused" else fused_mod.choose_backend(
                torch.empty(B * S, shape.d_model, device=device, dtype=torch.bfloat16), shape.d_model,
                shape.d_model, torch.bfloat16, 8)
        n_train, n_total = count_parameters(model)
        records.append(_model_record("lora_edu_transformer", method, B, S, n_train, n_total, out, est.total, repeat)
                       | {"fused_backend": backend})
        _model_clock(clocks, records[-1], out, repeat)
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
        unrelated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        torch.manual_seed(0)
        model = GPT2LMHeadModel(gcfg).to(device)
        model.train()
        if method == "peft":
            model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"],
                                                               fan_in_fan_out=True))
        est = training_memory(hf_shape, B, S, method="full" if method == "full" else "lora", r=8,
                              targets=("qkv",))
        out = _train_measure(model, lambda: model(input_ids=ids, labels=ids).loss, cfg, device, unrelated)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in model.parameters())
        records.append(_model_record("gpt2_hf", method, B, S, n_train, n_total, out, est.total, repeat)
                       | {"fused_backend": None})
        _model_clock(clocks, records[-1], out, repeat)
        log(_model_line(records[-1]))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for rec in records:
        full = next(x for x in records if x["model"] == rec["model"] and x["method"] == "full")
        rec["step_ratio_to_full"] = rec["step_ms"] / full["step_ms"]
        rec["gpu_ratio_to_full"] = (rec["step_gpu_ms"] / full["step_gpu_ms"]
                                    if rec["step_gpu_ms"] and full["step_gpu_ms"] else None)
    return records


def _model_clock(clocks: list[dict] | None, rec: dict, out: dict, repeat: int) -> None:
    if clocks is not None:
        clocks.append({"block": f"model {rec['model']} {rec['method']}", "repeat": repeat,
                       "before": out.get("clock_before"), "after": out.get("clock_after"),
                       "during": out.get("clock_during")})


def _model_record(model, method, B, S, n_train, n_total, out, predicted, repeat) -> dict:
    return {"model": model, "method": method, "batch": B, "seq": S, "dtype": "bfloat16 autocast, float32 weights",
            "trainable": int(n_train), "total_params": int(n_total), "peak_bytes": out["peak_bytes"],
            "peak_gib": gib(out["peak_bytes"]), "predicted_bytes": int(predicted), "predicted_gib": gib(predicted),
            "prediction_error": predicted / out["peak_bytes"] - 1, "step_ms": out["step_ms"],
            "step_host_ms": out["step_host_ms"], "step_gpu_ms": out["step_gpu_ms"],
            "step_ms_p10": out.get("step_ms_p10"), "step_ms_p90": out.get("step_ms_p90"),
            "steps_timed": out.get("steps_timed"),
            "reserve_slack_bytes": out["reserve_slack_bytes"], "outside_allocator_bytes": out["outside_allocator_bytes"],
            "step_ratio_to_full": None, "repeat": repeat}


def _model_line(rec: dict) -> str:
    return (f"[{rec['repeat']}] {rec['model']:20s} {rec['method']:17s} trainable {rec['trainable']:>11,d}  "
            f"peak {rec['peak_gib']:7.3f} GiB (predicted {rec['predicted_gib']:7.3f}, "
            f"{100 * rec['prediction_error']:+.1f}%)  step {rec['step_ms']:.1f} ms (host {rec['step_host_ms']:.1f})")


def _median_or_none(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize_models(records: list[dict]) -> list[dict]:
    """Per (model, method): median step time and GPU time over repeats, with the min–max of the step
    time. The ratios to full fine-tuning are ratios of these medians (so the ms and ratio columns of a
    table agree); ``step_ratio_min``/``_max`` are the per-repeat ratios' range."""
    out = []
    keys = list(dict.fromkeys((x["model"], x["method"]) for x in records))
    medians = {}
    for model, method in keys:
        recs = [x for x in records if (x["model"], x["method"]) == (model, method)]
        medians[model, method] = (statistics.median(x["step_ms"] for x in recs),
                                  _median_or_none([x["step_gpu_ms"] for x in recs]))
    for model, method in keys:
        recs = [x for x in records if (x["model"], x["method"]) == (model, method)]
        ms, ratios = [x["step_ms"] for x in recs], [x["step_ratio_to_full"] for x in recs]
        step, gpu = medians[model, method]
        full_step, full_gpu = medians.get((model, "full"), (None, None))
        out.append({"model": model, "method": method, "step_ms": step, "step_ms_min": min(ms),
                    "step_ms_max": max(ms), "step_ratio_to_full": step / full_step if full_step else None,
                    "step_ratio_min": min(ratios), "step_ratio_max": max(ratios),
                    "step_host_ms": statistics.median(x["step_host_ms"] for x in recs),
                    "step_gpu_ms": gpu, "gpu_ratio_to_full": gpu / full_gpu if gpu and full_gpu else None,
                    "peak_gib": statistics.median(x["peak_gib"] for x in recs),
                    "predicted_gib": recs[0]["predicted_gib"], "repeats": len(recs),
                    "steps_timed": recs[0].get("steps_timed"), "fused_backend": recs[0].get("fused_backend"),
                    "ratios": "of the medians over repeats"})
    return out


# --------------------------------------------------------------------------- targets and main


def check_targets(summary: list[dict], fused: str = "lora_fused") -> dict:
    """The issue's targets, read off the summary (medians over repeats; the worst repeat next to it).

    ``fused`` names the records of the production fused path (``LoRALinear(impl="fused")``; see
    ``--retarget`` for runs recorded before a default changed). Eager ratios are what a training loop
    sees on this host; ``_graph`` ratios are GPU time alone (CUDA graphs).
    """
    def get(method, d, r, mode, config="bf16"):
        return next((x for x in summary if (x["config"], x["method"], x["d"], x["r"], x["mode"])
                     == (config, method, d, r, mode)), None)

    bf = [x for x in summary if x["config"] == "bf16"]
    d_big, d_small, r_small = max(x["d"] for x in bf), min(x["d"] for x in bf), min(x["r"] for x in bf)
    out: dict = {"fused_method": fused}
    for suffix, mode in (("", "forward_backward"), ("_graph", "forward_backward_graph")):
        fb, peft_ = get(fused, d_big, r_small, mode), get("peft", d_big, r_small, mode)
        if fb:
            out.update({f"fused_fwd_bwd_ratio{suffix}": fb["ratio"], f"fused_fwd_bwd_ratio{suffix}_range":
                        [fb["ratio_min"], fb["ratio_max"]], f"fused_fwd_bwd_met{suffix}": bool(fb["ratio"] <= 1.15)})
        if fb and peft_:
            ratio = fb["median_ms"] / peft_["median_ms"]
            out.update({f"fused_over_peft{suffix}": ratio, f"fused_over_peft_met{suffix}": bool(ratio <= 0.80)})
    out.update(fused_fwd_bwd_target=1.15, fused_over_peft_target=0.80)
    gf = get(fused, d_small, r_small, "forward_backward_graph")
    if gf:
        out.update(small_d_graph_ratio=gf["ratio"], small_d_graph_target=1.5, small_d_graph_met=bool(gf["ratio"] <= 1.5))
    ef, ep = get(fused, d_small, r_small, "forward_backward"), get("peft", d_small, r_small, "forward_backward")
    if ef and ep:
        ratio = ef["median_ms"] / ep["median_ms"]
        out.update(small_d_eager_fused_over_peft=ratio, small_d_eager_met=bool(ratio <= 1.0))
    worst = None
    for x in bf:
        if x["method"] == fused and x["mode"] != "forward_backward_graph":
            p = get("peft", x["d"], x["r"], x["mode"])
            if p:
                ratio = x["median_ms"] / p["median_ms"]
                worst = ratio if worst is None else max(worst, ratio)
    out["fused_over_peft_worst_eager"] = worst
    # impl="auto": does LoRALinear pick the faster of fused and reference at each measured shape? A pick
    # counts as right when it is faster, or slower by less than the spread of the two over the repeats.
    picks = []
    for x in bf:
        if x["method"] != "lora_reference" or x["mode"] == "forward_backward_graph":
            continue
        f = get(fused, x["d"], x["r"], x["mode"])
        if f:
            spread = max((y["ratio_max"] - y["ratio_min"]) / y["ratio"] for y in (f, x))
            picks.append({"d": x["d"], "r": x["r"], "mode": x["mode"],
                          "faster": "fused" if f["median_ms"] <= x["median_ms"] else "reference",
                          "fused_over_reference": f["median_ms"] / x["median_ms"], "spread": spread})
    out["auto_choices"] = picks
    merged = [x["ratio"] for x in bf if x["method"] == "merged"]
    out.update(merged_worst_ratio=max(merged) if merged else None, merged_target=1.02,
               merged_met=bool(merged and max(merged) <= 1.02))
    return out


def add_auto_picks(targets: dict, T: int, device: torch.device, dtype: torch.dtype) -> dict:
    """What ``impl="auto"`` picks at each measured shape, and whether that is the faster path (or within
    the spread of it)."""
    ok = True
    for c in targets["auto_choices"]:
        c["auto_picks"] = auto_pick(c["d"], c["r"], T, device, dtype)
        slower = c["fused_over_reference"] if c["auto_picks"] == "fused" else 1 / c["fused_over_reference"]
        c["pick_ok"] = bool(c["auto_picks"] == c["faster"] or slower - 1 <= c["spread"])
        ok &= c["pick_ok"]
    targets["auto_picks_faster_or_within_spread"] = ok
    return targets


def retarget(path: Path, fused: str) -> None:
    """Recompute a recorded run's targets with another method as the production fused path (after a
    default changed), keeping the targets as recorded under ``targets_as_recorded``."""
    data = json.loads(path.read_text())
    data.setdefault("targets_as_recorded", data["targets"])
    device = torch.device("cuda" if data["device"] == "cuda" and torch.cuda.is_available() else "meta")
    targets = check_targets(data["summary"], fused)
    if device.type == "meta":           # the auto rule needs only shapes and the device type
        for c in targets["auto_choices"]:
            c["auto_picks"] = "fused" if data["device"] == "cuda" else "reference"   # use_fused: x.is_cuda
            slower = c["fused_over_reference"] if c["auto_picks"] == "fused" else 1 / c["fused_over_reference"]
            c["pick_ok"] = bool(c["auto_picks"] == c["faster"] or slower - 1 <= c["spread"])
        targets["auto_picks_faster_or_within_spread"] = all(c["pick_ok"] for c in targets["auto_choices"])
    else:
        add_auto_picks(targets, data["settings"]["tokens"], device, torch.bfloat16)
    data["targets"] = targets
    data["settings"].setdefault("rule_as_recorded", data["settings"].get("rule"))
    data["settings"]["default_fused_method"] = fused
    data["settings"]["retarget_note"] = (
        f"targets recomputed with {fused!r} as LoRALinear(impl='fused') after the default changed; the "
        "'lora_fused' records follow rule_as_recorded")
    data["settings"]["rule"] = {"auto": "fused on CUDA, reference elsewhere", "triton": "opt-in (LORA_EDU_TRITON=1)"}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def fused_backends(groups: list[dict], dtype: torch.dtype) -> dict[str, str]:
    """``{"bf16 d=4096 r=8": "torch", ...}``: what ``lora_linear``'s automatic back-end choice gives for
    each layer comparison's input (what the ``lora_fused`` records ran)."""
    out = {}
    for group in groups:
        x, d, r = group["x"], group["d"], group["r"]
        out[f"{group['config']} d={d} r={r}"] = fused_mod.choose_backend(x, d, d, dtype, r)
    return out


def quick_layers(d: int = 4096, r: int = 8, device: torch.device | str = "cuda") -> list[dict]:
    """One short comparison for a notebook's live cell: the bf16 layers at ``(d, r)``, T = 8192, eager and
    (on CUDA) in CUDA graphs, one repeat. Returns the summary rows (ratios to the frozen base)."""
    device = torch.device(device)
    cfg = dict(FULL, dims=(d,), ranks=(r,), realistic_ranks=(), compile_ranks=(), repeats=1, iters=10)
    groups = setup_groups(cfg, device, torch.bfloat16, log=lambda *a: None)
    records, _ = bench_layers(groups, cfg, device, torch.bfloat16, 0, log=lambda *a: None)
    return [x for x in summarize(records) if x["mode"] != "forward"]


def auto_pick(d: int, r: int, T: int, device: torch.device, dtype: torch.dtype) -> str:
    """What ``LoRALinear(impl="auto")`` does for a ``(T, d)`` input on this device: "fused" or "reference"."""
    x = torch.empty(T, d, device=device, dtype=dtype)
    return "fused" if fused_mod.use_fused(x, torch.empty(d, d, device=device, dtype=dtype), r) else "reference"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (automatic without a CUDA GPU)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--skip-models", action="store_true", help="only the layer benchmark")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the timing (default 3; smoke 2)")
    parser.add_argument("--explore", action="store_true", help="sweep the Triton kernels' tile sizes first")
    parser.add_argument("--retarget", type=Path, default=None, metavar="JSON",
                        help="only recompute the targets of a recorded run (with --fused-method)")
    parser.add_argument("--fused-method", default="lora_fused", help="the records of the production fused path")
    args = parser.parse_args(argv)
    if args.retarget:
        retarget(args.retarget, args.fused_method)
        print(json.dumps(json.loads(args.retarget.read_text())["targets"], indent=1))
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    smoke = args.smoke or device.type != "cuda"
    cfg = dict(SMOKE if smoke else FULL)
    if args.repeats:
        cfg["repeats"] = args.repeats
    dtype = torch.bfloat16
    env = environment(device)
    print(f"{env['gpu']} | torch {env['versions']['torch']} | peft {env['versions']['peft']} | "
          f"triton {env['versions']['triton']} | {env['system']['cpu']} | "
          f"{'smoke (tiny sizes)' if smoke else 'full sizes'}", flush=True)
    t_start = time.perf_counter()
    ceilings = {"start": bench_ceilings(cfg, device)}
    print(f"ceilings: copy {ceilings['start']['bandwidth'] / 1e12:.2f} TB/s, bf16 matmul "
          f"{ceilings['start']['matmul_flops'] / 1e12:.0f} TFLOP/s, state {gpu_state(device)}", flush=True)
    explore = explore_triton(cfg, device, dtype) if args.explore else []
    groups = setup_groups(cfg, device, dtype)
    profiles = profile_layers(groups, device)
    records, clocks, kernel_records, model_records = [], [], [], []
    for repeat in range(cfg["repeats"]):
        recs, clk = bench_layers(groups, cfg, device, dtype, repeat)
        records += recs
        clocks += clk
        kernel_records += bench_kernels(cfg, device, dtype, repeat, clocks)
        if not args.skip_models and (repeat == 0 or not smoke):
            model_records += bench_models(cfg, device, repeat, clocks=clocks)
    ceilings["end"] = bench_ceilings(cfg, device)
    ceilings.update({k: ceilings["start"][k] for k in ("bandwidth", "matmul_flops", "copy_bytes", "matmul_size")})
    summary = summarize(records)
    settings = {k: v for k, v in cfg.items()} | {
        "dtype": str(dtype).replace("torch.", ""),
        "configs": {k: {"adapter_dtype": str(v["adapter_dtype"]).replace("torch.", "") if v["adapter_dtype"] else None,
                        "dropout": v["dropout"], "autocast": v["autocast"], "about": v["about"]}
                    for k, v in CONFIGS.items()},
        "cache_regime": "warm: the same x and g every call, no L2 flush; graph replays interleaved call by call in "
                        "a shuffled order, eager calls in a steady-state loop per method (eager_timing)",
        "triton_config": fused_mod._kernels().CONFIG if fused_mod._kernels() is not None else None,
        "rule": {"auto": "fused on CUDA, reference elsewhere", "triton": "opt-in (LORA_EDU_TRITON=1)"},
        "default_fused_method": "lora_fused",
        # the back-end LoRALinear(impl="fused") ran in each layer comparison (records "lora_fused"); the
        # recording of commit d768cfa predates this field, and its d = 4096, r = 8 "lora_fused" records ran
        # the Triton kernels under the rule of that day
        "fused_backends": fused_backends(groups, dtype),
        "eager_timing": "steady-state loop per method (steady_iters calls between two CUDA events, "
                        "steady_rounds rounds in a shuffled order)",
        "seconds": round(time.perf_counter() - t_start, 1)}
    result = {"benchmark": "lora_gpu", "gpu": env["gpu"], "device": env["device"], "smoke": smoke,
              "date": env["date"], "versions": env["versions"], "system": env["system"], "settings": settings,
              "ceilings": ceilings, "records": records, "summary": summary, "kernel_records": kernel_records,
              "profile_records": profiles, "model_records": model_records,
              "model_summary": summarize_models(model_records), "clock_records": clocks,
              "targets": check_targets(summary, args.fused_method)}
    add_auto_picks(result["targets"], cfg["tokens"], device, dtype)
    if explore:
        result["explore_triton"] = explore
    out = args.out or RESULTS / f"{slug(env['gpu'])}{'-smoke' if smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print_table(summary)
    print(json.dumps(result["targets"], indent=1))
    print(f"wrote {out} after {settings['seconds']} s")
    return 0


def print_table(summary: list[dict]) -> None:
    """Median µs (ratio to the base; min–max over repeats) per group, short enough for a log tail."""
    keys = list(dict.fromkeys((x["config"], x["d"], x["r"], x["mode"]) for x in summary))
    for config, d, r, mode in keys:
        rows = [x for x in summary if (x["config"], x["d"], x["r"], x["mode"]) == (config, d, r, mode)]
        print(f"{config} d={d} r={r} {mode}: " + " ".join(
            f"{x['method'].replace('lora_', '')}={1e3 * x['median_ms']:.0f}({x['ratio']:.2f},"
            f"{x['ratio_min']:.2f}-{x['ratio_max']:.2f},h{1e3 * x['host_ms']:.0f})" for x in rows))


if __name__ == "__main__":
    sys.exit(main())
