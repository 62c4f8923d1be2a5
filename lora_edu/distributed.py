"""LoRA on several processes with ``torch.distributed``: what the adapters do to traffic and memory (chapter 08).

Data parallelism: every process (a *rank*) holds the whole model and takes its own slice of the batch.
After the backward pass an **all-reduce** averages the ranks' gradients, so every rank takes the step
one process would take on the whole batch. ``DistributedDataParallel`` (DDP) all-reduces only the
parameters with ``requires_grad=True``, in buckets that it sends while the backward pass still runs.
LoRA freezes almost everything, so the traffic shrinks from all the weights to the adapters. FSDP2
(``fully_shard``) keeps 1/N of every parameter on each rank, *all-gathers* a block's weights just
before it runs and *reduce-scatters* its gradients: less memory, but the frozen weights travel too.

Predictions (plain arithmetic; no process group)::

    gradient_bytes(model)                     bytes DDP all-reduces per step (count_parameters x bytes)
    ddp_buckets(model)                        DDP's bucket sizes (25 MB caps, a 1 MB first bucket)
    ring_allreduce_seconds(b, N, B, latency)  latency + 2(N-1)/N * b / B, B the bus bandwidth
    step_time_bounds(compute, allreduce)      a step with perfect overlap, and with none
    fsdp_bytes(model, N)                      what FSDP2 all-gathers and reduce-scatters per step
    plan(n_params, n_trainable, N, strategy)  memory per GPU and traffic per step, on paper

Measuring (inside a process group, ``gloo`` on CPUs or ``nccl`` on GPUs)::

    ByteCounter + counting_allreduce_hook     a DDP communication hook: count, then all-reduce
    CollectiveCounter                         every collective and its bytes (DDP's broadcast, FSDP2)
    build_model, make_batch, wrap_ddp, wrap_fsdp, train_step, peak_bytes

Running: ``torchrun --standalone --nproc_per_node 2 -m lora_edu.distributed --tasks ddp --out run.json``
writes one JSON file (rank 0); :func:`launch` does the same from Python (a notebook), with a timeout,
a clean shutdown and a clear :class:`DistributedJobError` when a rank fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lora_edu.lora import LoRALinear, apply_lora, count_parameters, lora_state_dict, save_adapter
from lora_edu.transformer import Transformer, TransformerConfig

__all__ = [
    "MODELS", "gradient_bytes", "ddp_buckets", "ring_factor", "ring_allreduce_seconds", "bus_bandwidth",
    "BACKWARD_FRACTION", "step_time_bounds", "fsdp_bytes", "plan", "ByteCounter", "counting_allreduce_hook",
    "CollectiveCounter",
    "build_model", "make_batch", "forward_backward", "make_optimizer", "train_step", "wrap_ddp", "wrap_fsdp",
    "peak_bytes", "state_bytes", "launch", "DistributedJobError",
]

MB = 2**20  # DDP's bucket_cap_mb counts mebibytes
DDP_BUCKET_CAP_MB = 25.0  # torch.nn.parallel.DistributedDataParallel's default
DDP_FIRST_BUCKET_MB = 1.0  # its first bucket (the last layers' gradients) when the cap is the default

# The model sizes the command line knows (the course's Transformer; weights are random, nothing is downloaded).
MODELS: dict[str, TransformerConfig] = {
    # the notebook's live run: trains in milliseconds on one CPU core
    "tiny": TransformerConfig(vocab_size=128, max_seq_len=32, d_model=64, n_heads=4, n_layers=2, d_mlp=256),
    # wider: 14.8 MB of float32 gradients per step; between two CPU processes over TCP their all-reduce takes
    # about 10 to 30 ms, a sizeable part of a 30 to 150 ms step (chapter 08 measures both, live)
    "wide": TransformerConfig(vocab_size=1024, max_seq_len=32, d_model=256, n_heads=4, n_layers=4, d_mlp=1024),
    # GPT-2 small's shape (124,439,808 parameters, tied embeddings), the recorded GPU runs
    "gpt2-small": TransformerConfig.gpt2_small(),
}


# --------------------------------------------------------------------------- predictions


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
    return model


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]  # parameters() lists a shared one once


def gradient_bytes(model: nn.Module) -> int:
    """Bytes DDP all-reduces per training step: every trainable entry, in its gradient's dtype.

    ``count_parameters(model)[0]`` trainable entries times the bytes of each (4 for float32). Frozen
    parameters have no gradient and are never all-reduced; a parameter shared by two modules (GPT-2's
    tied embedding) is counted once, as DDP sends it once. Works on the meta device (no memory).
    """
    trainable, _ = count_parameters(_check_model(model))
    sizes = {p.element_size() for p in _trainable(model)}
    if len(sizes) > 1:  # mixed dtypes: add them up one by one
        return sum(p.numel() * p.element_size() for p in _trainable(model))
    return trainable * (sizes.pop() if sizes else 4)


def ddp_buckets(model: nn.Module, bucket_cap_mb: float | None = None) -> list[int]:
    """The sizes (bytes) of the buckets DDP all-reduces each step, in the order it sends them.

    DDP walks the trainable parameters from the last registered to the first (roughly the order in
    which backward produces their gradients) and closes a bucket as soon as it holds at least the
    cap: 1 MiB for the first bucket, 25 MiB after that (with ``bucket_cap_mb=None``, DDP's default),
    or ``bucket_cap_mb`` for every bucket when you set it. A parameter is never split, so a large one
    (an embedding) makes its bucket larger than the cap. DDP rebuilds its buckets after the first step
    in the order the gradients really arrived; this follows the registration order, which is close.
    """
    params = _trainable(_check_model(model))
    if bucket_cap_mb is None:
        caps = [int(DDP_FIRST_BUCKET_MB * MB), int(DDP_BUCKET_CAP_MB * MB)]
    else:
        caps = [int(_positive(bucket_cap_mb, "bucket_cap_mb") * MB)]
    buckets, current = [], 0
    for p in reversed(params):
        current += p.numel() * p.element_size()
        if current >= caps[min(len(buckets), len(caps) - 1)]:
            buckets.append(current)
            current = 0
    return buckets + ([current] if current else [])


def ring_factor(world_size: int) -> float:
    """``2(N-1)/N``: the bytes each rank sends (and receives) in a ring all-reduce, per byte reduced.

    The buffer is cut into N chunks. A reduce-scatter passes chunks round the ring N-1 times (each
    rank ends with the sum of one chunk), an all-gather passes the sums round N-1 more times: 2(N-1)
    chunks of size 1/N each. It tends to 2: the *bandwidth* term hardly grows with N. The ring's
    latency term does: 2(N-1) messages one after the other, which is what small (LoRA) buckets pay.
    """
    n = _positive_int(world_size, "world_size")
    return 2 * (n - 1) / n


def bus_bandwidth(n_bytes: float, seconds: float, world_size: int) -> float:
    """The *bus bandwidth* of an all-reduce (NCCL's ``busbw``): ``2(N-1)/N * n_bytes / seconds``.

    It is the rate at which each rank's link moved data, so it can be compared with the link's
    datasheet speed and does not depend on N (``n_bytes / seconds`` alone, the *algorithm* bandwidth, does).
    """
    return ring_factor(world_size) * _positive(n_bytes, "n_bytes") / _positive(seconds, "seconds")


def ring_allreduce_seconds(n_bytes: float, world_size: int, bus_bandwidth: float, latency_s: float = 0.0,
                           calls: int = 1) -> float:
    """Time of all-reducing ``n_bytes`` in ``calls`` messages: ``calls * latency + 2(N-1)/N * n_bytes / B``.

    ``B`` is the bus bandwidth (bytes/s) you measured for large messages and ``latency_s`` the time of
    a tiny all-reduce. Large buffers are bandwidth-bound (the second term), small ones latency-bound.
    With one rank there is nothing to send: 0.
    """
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, float)) or n_bytes < 0:
        raise ValueError(f"n_bytes must be a number >= 0, got {n_bytes!r}.")
    if world_size == 1 or n_bytes == 0:
        return 0.0
    if not (isinstance(latency_s, (int, float)) and latency_s >= 0):
        raise ValueError(f"latency_s must be a number >= 0, got {latency_s!r}.")
    return _positive_int(calls, "calls") * latency_s + ring_factor(world_size) * n_bytes / _positive(
        bus_bandwidth, "bus_bandwidth")


# The part of a step that the backward pass takes (its FLOPs over forward + backward): full fine-tuning
# computes input *and* weight gradients (twice the forward's FLOPs); LoRA's frozen weights get no weight
# gradient, so its backward costs about as much as its forward.
BACKWARD_FRACTION = {"full": 2 / 3, "lora": 1 / 2}


def step_time_bounds(compute_s: float, allreduce_s: float, backward_fraction: float = 2 / 3,
                     last_bucket_s: float = 0.0) -> tuple[float, float]:
    """The time of a data-parallel step, ``(best, worst)``, from its parts.

    ``compute_s``: the step without communication; ``allreduce_s``: the all-reduces of one step on their
    own (:func:`ring_allreduce_seconds`). At best they hide behind the backward pass
    (``backward_fraction`` of the step, :data:`BACKWARD_FRACTION`: about 2/3 for full fine-tuning, 1/2
    for LoRA) -- except the last bucket's all-reduce (``last_bucket_s``), which can only start when
    backward ends -- and only the excess shows; at worst nothing overlaps::

        compute + max(last_bucket, allreduce - backward)  <=  step  <=  compute + allreduce

    Both ends assume the computation does not slow down while the bytes travel (spare hardware for the
    communication); on a machine whose cores are all busy that fails, and a step can exceed the upper end.
    """
    c, a = _positive(compute_s, "compute_s"), float(allreduce_s)
    if not (a >= 0 and math.isfinite(a)):
        raise ValueError(f"allreduce_s must be a number >= 0, got {allreduce_s!r}.")
    if not 0 < backward_fraction < 1:
        raise ValueError(f"backward_fraction must be between 0 and 1, got {backward_fraction!r}.")
    if isinstance(last_bucket_s, bool) or not isinstance(last_bucket_s, (int, float)) or not 0 <= last_bucket_s <= a:
        raise ValueError(f"last_bucket_s must be a number between 0 and allreduce_s = {a:g}, got {last_bucket_s!r}.")
    return c + max(float(last_bucket_s), a - backward_fraction * c), c + a


def _sharded_bytes(p: torch.Tensor, world_size: int) -> int:
    """A parameter's size as FSDP2 gathers it: dim 0 padded up to a multiple of the world size."""
    rows = p.shape[0] if p.dim() else 1
    padded_rows = -(-rows // world_size) * world_size
    return padded_rows * (p.numel() // max(rows, 1)) * p.element_size()


def fsdp_bytes(model: nn.Module, world_size: int, units: str = "blocks") -> dict[str, int]:
    """Bytes FSDP2 all-gathers and reduce-scatters in one training step (the full buffers, per rank).

    ``units="blocks"`` is :func:`wrap_fsdp`'s layout: every transformer block is a unit, gathered in
    the forward pass, freed, and gathered again in the backward pass; the root unit (embeddings,
    final LayerNorm, head) is gathered once. Each unit's *trainable* gradients are reduce-scattered
    once. ``units="root"``: the whole model is one unit, gathered once. Frozen weights are gathered
    like trainable ones: with LoRA, all-gathers are almost the whole traffic. Each rank sends and
    receives ``(N-1)/N`` of these buffers.
    """
    _check_model(model)
    n = _positive_int(world_size, "world_size")
    if units not in ("blocks", "root"):
        raise ValueError(f"units must be 'blocks' or 'root', got {units!r}.")
    blocks = list(getattr(model, "blocks", [])) if units == "blocks" else []
    in_block = {id(p) for b in blocks for p in b.parameters()}
    gather = scatter = 0
    for p in model.parameters():
        size = _sharded_bytes(p, n)
        gather += size * (2 if id(p) in in_block else 1)
        scatter += size if p.requires_grad else 0
    return {"all_gather": gather, "reduce_scatter": scatter}


def plan(n_params: int, n_trainable: int, world_size: int, strategy: str, weight_bytes: int = 2,
         grad_bytes: int = 4, state_bytes: int = 12, gathered_params: int = 0) -> dict[str, float]:
    """Memory per GPU and bytes each GPU sends per step, for a model too big to try (on paper).

    Assumptions (state them when you quote the result): every rank computes with ``weight_bytes`` per
    parameter (bfloat16: 2); each *trainable* parameter adds a gradient (``grad_bytes``, float32: 4)
    and ``state_bytes`` of optimizer state (12: a float32 master copy plus AdamW's two moments).
    Activations and temporary buffers are not counted.

    - ``"ddp"``: everything replicated; traffic ``2(N-1)/N`` times the gradients.
    - ``"fsdp"``: everything sharded N ways; traffic ``(N-1)/N`` times two all-gathers of the weights
      (forward and backward) plus one reduce-scatter of the gradients. While a step runs, FSDP also
      holds whole *gathered units*: ``gathered_params`` is how many parameters are gathered at once
      (FSDP2's root unit stays gathered from forward to backward, and the next block is prefetched while
      one computes: root + two blocks), counted at ``weight_bytes`` on every GPU.

    Returns ``{"memory": bytes per GPU at the peak, "sharded": the part that is 1/N, "traffic": bytes
    per GPU per step}`` (for DDP ``sharded`` is 0).
    """
    for value, name in ((n_params, "n_params"), (world_size, "world_size")):
        _positive_int(value, name)
    if isinstance(n_trainable, bool) or not isinstance(n_trainable, int) or not 0 <= n_trainable <= n_params:
        raise ValueError(f"n_trainable must be an int between 0 and n_params = {n_params}, got {n_trainable!r}.")
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}.")
    if (isinstance(gathered_params, bool) or not isinstance(gathered_params, int)
            or not 0 <= gathered_params <= n_params):
        raise ValueError(f"gathered_params must be an int between 0 and n_params = {n_params}, "
                         f"got {gathered_params!r}.")
    weights, grads = n_params * weight_bytes, n_trainable * grad_bytes
    memory = weights + grads + n_trainable * state_bytes
    if strategy == "ddp":
        return {"memory": float(memory), "sharded": 0.0, "traffic": ring_factor(world_size) * grads}
    shard = (world_size - 1) / world_size
    return {"memory": memory / world_size + gathered_params * weight_bytes, "sharded": memory / world_size,
            "traffic": shard * (2 * weights + grads)}


# --------------------------------------------------------------------------- measuring


@dataclass
class ByteCounter:
    """The state of :func:`counting_allreduce_hook`: what DDP asked it to all-reduce.

    Attributes: ``process_group`` (None: the default group), ``compress`` (None, or ``"bf16"`` to send
    bfloat16 as DDP's ``bf16_compress_hook`` does: half the bytes), and the counts ``calls`` (buckets),
    ``bytes`` and ``sizes`` (bytes of each bucket, in order). :meth:`reset` zeroes them.
    """

    process_group: Any = None
    compress: str | None = None
    calls: int = 0
    bytes: int = 0
    sizes: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.calls, self.bytes, self.sizes = 0, 0, []


def counting_allreduce_hook(state: ByteCounter, bucket):  # DDP rejects annotations other than its own types
    """A DDP communication hook: count the bucket's bytes, then all-reduce it as DDP would.

    Register it with ``ddp.register_comm_hook(ByteCounter(), counting_allreduce_hook)``. DDP calls it
    once per bucket with the bucket's flat gradient buffer; it hands the buffer on to PyTorch's own
    ``allreduce_hook`` (sum, divided by the world size) or ``bf16_compress_hook``.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buffer = bucket.buffer()
    n = buffer.numel() * (2 if state.compress == "bf16" else buffer.element_size())
    state.calls += 1
    state.bytes += n
    state.sizes.append(n)
    if state.compress == "bf16":
        return default_hooks.bf16_compress_hook(state.process_group, bucket)
    return default_hooks.allreduce_hook(state.process_group, bucket)


_KINDS = (("allreduce", "all_reduce"), ("broadcast", "broadcast"), ("allgather", "all_gather"),
          ("reduce_scatter", "reduce_scatter"))


class CollectiveCounter:
    """Count every collective that runs inside ``with CollectiveCounter() as c:``, with its bytes.

    Each ``torch.distributed`` collective is an operator of PyTorch's dispatcher (``c10d.allreduce_``,
    ``c10d.broadcast_``, ``c10d._allgather_base_``, ...), so a ``TorchDispatchMode`` sees it, whoever
    calls it: DDP's C++ reducer, its constructor, FSDP2. ``ops`` lists ``(kind, bytes, dtype)``, where
    kind is ``all_reduce``, ``broadcast``, ``all_gather``, ``reduce_scatter`` (or the operator's name)
    and bytes is the *full* buffer (what an all-gather produces, what a reduce-scatter consumes).
    It slows every operation down a little: count in a separate step, time without it.
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.ops: list[tuple[str, int, str]] = []

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.namespace == "c10d":
                    counter._record(func.__name__, args)
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()

    def _record(self, name: str, args: Sequence[Any]) -> None:
        from torch.utils._pytree import tree_leaves

        tensors = [[t for t in tree_leaves(a) if isinstance(t, torch.Tensor)] for a in args[:2]]
        sizes = [sum(t.numel() * t.element_size() for t in ts) for ts in tensors]
        dtype = next((str(t.dtype).replace("torch.", "") for ts in tensors for t in ts), "")
        kind = next((k for key, k in _KINDS if key in name.replace("_base", "")), name.split(".")[0])
        self.ops.append((kind, max(sizes, default=0), dtype))

    def total(self, kind: str, floating_only: bool = False) -> int:
        """Bytes of all collectives of one kind (``floating_only``: skip integer bookkeeping messages)."""
        return sum(b for k, b, dt in self.ops
                   if k == kind and (not floating_only or dt.startswith(("float", "bfloat"))))

    def calls(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.ops if k == kind)

    def __enter__(self) -> CollectiveCounter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


# --------------------------------------------------------------------------- the training step


def build_model(config: TransformerConfig, mode: str, r: int = 8, targets: Sequence[str] = ("q_proj", "v_proj"),
                seed: int = 0, device: Any = "cpu", unused_adapter: bool = False) -> nn.Module:
    """The course's :class:`Transformer`, seeded, for ``mode="full"`` fine-tuning or ``mode="lora"``.

    Every rank calls this with the same seed and gets the same weights (DDP still broadcasts rank 0's
    at construction). ``unused_adapter=True`` adds an ``aux_head`` (``d_model -> d_model``, think of a head
    kept from pretraining) with LoRA on it that ``forward`` never calls -- the setup behind DDP's
    "Expected to have finished reduction" error.
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, not {type(config).__name__}.")
    if mode not in ("full", "lora"):
        raise ValueError(f"mode must be 'full' or 'lora', got {mode!r}.")
    torch.manual_seed(seed)
    model = Transformer(config)
    if unused_adapter:
        model.aux_head = nn.Linear(config.d_model, config.d_model)
        targets = [*targets, "aux_head"]
    if mode == "lora":
        apply_lora(model, list(targets), r=r)
    return model.to(device)


def make_batch(config: TransformerConfig, batch: int, seq: int, rank: int = 0, step: int = 0, seed: int = 0,
               device: Any = "cpu") -> torch.Tensor:
    """Random token ids ``(batch, seq + 1)`` for one rank and step (its own slice of the global batch).

    The same ``(seed, rank, step)`` always gives the same tokens, so a single process can rebuild
    the *global* batch -- every rank's slice -- and check DDP against it.
    """
    if seq + 1 > config.max_seq_len + 1 or seq < 1:
        raise ValueError(f"seq must be between 1 and max_seq_len = {config.max_seq_len}, got {seq}.")
    g = torch.Generator().manual_seed(1_000_003 * seed + 1009 * rank + step)
    return torch.randint(0, config.vocab_size, (_positive_int(batch, "batch"), seq + 1), generator=g).to(device)


def forward_backward(model: nn.Module, tokens: torch.Tensor, amp: str | None = None) -> torch.Tensor:
    """Next-token cross-entropy of ``tokens (B, T+1)``, and its backward pass; returns the loss."""
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return loss.detach()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor,
               amp: str | None = None) -> float:
    """One step: zero the gradients, forward, backward (DDP all-reduces here), optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(model, tokens, amp)
    optimizer.step()
    return float(loss)


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (a frozen weight gets no optimizer state)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def wrap_ddp(model: nn.Module, counter: ByteCounter | None = None, **ddp_kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` on the model's device, with :func:`counting_allreduce_hook`.

    ``ddp_kwargs`` go to DDP (``bucket_cap_mb``, ``find_unused_parameters``, ``static_graph``, ...).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    ddp = DDP(model, device_ids=ids, **ddp_kwargs)
    if counter is not None:
        ddp.register_comm_hook(counter, counting_allreduce_hook)
    return ddp


def wrap_fsdp(model: nn.Module, units: str = "blocks") -> nn.Module:
    """Shard ``model`` with FSDP2 (``fully_shard``), in place: each block a unit, then the root.

    ``units="root"`` makes the whole model one unit (it is then gathered whole: no memory saved while
    it runs). Returns the model, whose parameters are now ``DTensor`` shards.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if units not in ("blocks", "root"):
        raise ValueError(f"units must be 'blocks' or 'root', got {units!r}.")
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if units == "blocks":
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # an FSDP2 shard (DTensor) -> this rank's part


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank holds for weights, gradients and optimizer state (its shard, under FSDP2)."""
    params = list(model.parameters())
    out = {"weights": sum(_local(p).numel() * p.element_size() for p in params),
           "gradients": sum(_local(p.grad).numel() * p.grad.element_size() for p in params if p.grad is not None),
           "optimizer": 0}
    if optimizer is not None:
        out["optimizer"] = sum(_local(v).numel() * v.element_size() for s in optimizer.state.values()
                               for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return out


def peak_bytes(step: Any, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Peak bytes while ``step()`` runs on this rank: ``torch.cuda.max_memory_allocated`` on a GPU;
    on a CPU, :class:`lora_edu.memory.MemoryTracker` plus the weights, gradients and optimizer state."""
    from lora_edu.memory import measure_peak

    device = next(model.parameters()).device
    if device.type == "cuda":
        return measure_peak(step, device=device)
    return measure_peak(step, existing=_held(model, optimizer))  # a DTensor counts as its local shard


def _held(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The weights, gradients and optimizer state of a model (what lives between steps)."""
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensors


# --------------------------------------------------------------------------- the tasks of one run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gather(value: Any) -> list[Any]:
    """Every rank's value, on every rank (a list indexed by rank)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.split(". ")[0].splitlines()[0] if text else type(err).__name__


class _Run:
    """One torchrun job: the arguments, this rank's device, and the JSON that rank 0 writes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if dist.get_backend() == "nccl":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        self.config = MODELS[args.model]
        # a CPU peak is measured op by op in Python (slow): on request only
        self.peak = args.peak == "on" or (args.peak == "auto" and self.device.type == "cuda")
        self.final: dict[str, dict[str, torch.Tensor]] = {}  # trainable weights after the ddp task
        self.ddp_buckets: dict[str, list[int]] = {}

    def model(self, mode: str, **kw: Any) -> nn.Module:
        a = self.args
        return build_model(self.config, mode, r=a.r, targets=a.targets, seed=a.seed, device=self.device, **kw)

    def batch(self, step: int, rank: int | None = None) -> torch.Tensor:
        a = self.args
        return make_batch(self.config, a.batch, a.seq, self.rank if rank is None else rank, step, a.seed,
                          self.device)

    def resident(self) -> int | None:
        """Bytes allocated on this rank's GPU right before a measured step: the model's own state plus
        anything an earlier task left behind (None on a CPU). A peak minus it is what the step added."""
        if self.device.type != "cuda":
            return None
        _sync(self.device)
        return torch.cuda.memory_allocated(self.device)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.args.tensors and self.rank == 0:
            from safetensors.torch import save_file

            Path(self.args.tensors).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                      str(Path(self.args.tensors) / f"{name}.safetensors"))

    # ----- DDP: bytes, buckets, the one-time broadcast, memory, gradients, the saved adapter
    def ddp(self, mode: str) -> dict[str, Any]:
        a = self.args
        model = self.model(mode)
        predicted = gradient_bytes(model)
        counter = ByteCounter()
        with CollectiveCounter() as construction:
            ddp = wrap_ddp(model, counter, **({"bucket_cap_mb": a.bucket_cap_mb} if a.bucket_cap_mb else {}))
        opt = make_optimizer(model)
        per_step, calls, losses = [], [], []
        for step in range(a.steps):
            counter.reset()
            opt.zero_grad(set_to_none=True)
            loss = forward_backward(ddp, self.batch(step), a.amp)
            if step == 0:
                self.save_tensors(f"ddp_{mode}_grads", {n: p.grad for n, p in model.named_parameters()
                                                        if p.grad is not None})
            opt.step()
            per_step.append(counter.bytes)
            calls.append(counter.calls)
            losses.append(float(loss))
        sizes = list(counter.sizes)
        self.ddp_buckets[mode] = sizes
        # kept on the CPU: a copy on the GPU would sit in every later peak (commit 524e721's record had 0.46 GiB of it)
        self.final[mode] = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                            if p.requires_grad}
        resident = self.resident()
        peak = peak_bytes(lambda: train_step(ddp, opt, self.batch(a.steps), a.amp), model, opt) if self.peak else None
        mean_loss = torch.tensor(losses, dtype=torch.float64, device=self.device)
        dist.all_reduce(mean_loss)
        trainable, total = count_parameters(model)
        out = {
            "trainable": trainable, "total": total, "predicted_bytes": predicted,
            "bytes_per_step": per_step, "buckets_per_step": calls, "bucket_bytes": sizes,
            "predicted_buckets": ddp_buckets(model, a.bucket_cap_mb),
            "broadcast_bytes": construction.total("broadcast", floating_only=True),
            "loss_rank0": losses, "loss_mean": (mean_loss / self.world).tolist(),
            "state_bytes": _gather(state_bytes(model, opt)), "peak_bytes": _gather(peak) if self.peak else None,
            "resident_bytes": _gather(resident),
        }
        if mode == "lora" and a.tensors:
            probe = make_batch(self.config, 2, a.seq, rank=99, seed=a.seed, device=self.device)[:, :-1]
            with torch.no_grad():
                self.save_tensors("ddp_lora_probe", {"tokens": probe.float(), "logits": model(probe)})
            if self.rank == 0:  # one writer: every rank holds the same adapter, and a shared file must not be
                save_adapter(model, Path(a.tensors) / "adapter.safetensors")  # written N times at once
            dist.barrier()  # the others wait until the file is complete
            out["adapter_file"] = "adapter.safetensors"
        return out

    # ----- full fine-tuning with bfloat16 gradients on the wire (DDP's bf16_compress_hook)
    def compress(self) -> dict[str, Any]:
        a = self.args
        model = self.model("full")
        counter = ByteCounter(compress="bf16")
        ddp = wrap_ddp(model, counter, **({"bucket_cap_mb": a.bucket_cap_mb} if a.bucket_cap_mb else {}))
        opt = make_optimizer(model)
        for step in range(a.steps):
            counter.reset()
            train_step(ddp, opt, self.batch(step), a.amp)
        return {"bytes_per_step": counter.bytes, "buckets": counter.calls}

    # ----- step time with and without the all-reduce (DDP's no_sync) and on one device alone, interleaved
    def timing(self, mode: str) -> dict[str, Any]:
        a = self.args
        model = self.model(mode)
        opt = make_optimizer(model)
        if self.world == 1:
            variants = {"single": (model, None)}
        else:  # "alone": rank 0 steps the bare model (no DDP, nothing sent) while the others wait
            ddp = wrap_ddp(model)
            variants = {"allreduce": (ddp, None), "no_sync": (ddp, ddp.no_sync), "alone": (model, None)}
        # One model and optimizer for every variant, which is fine for *timing* only: under no_sync (and rank 0
        # alone) each rank steps on its own gradients, so the ranks' weights drift apart and the "allreduce"
        # series then averages gradients of different models. Never train like this.
        times: dict[str, list[float]] = {k: [] for k in variants}
        step = 0
        for rep in range(a.repeats):
            for name, (m, context) in variants.items():
                dist.barrier()
                if name == "alone" and self.rank != 0:
                    times[name] += [0.0] * a.steps
                    continue
                for i in range(a.warmup + a.steps):
                    _sync(self.device)
                    t0 = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    if context is None:
                        forward_backward(m, self.batch(step), a.amp)
                    else:
                        with context():
                            forward_backward(m, self.batch(step), a.amp)
                    opt.step()
                    _sync(self.device)
                    if i >= a.warmup:
                        times[name].append(time.perf_counter() - t0)
                    step += 1
        # the slowest rank sets the pace: take each step's maximum over ranks
        slowest = {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in times.items()}
        for t in slowest.values():
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        out: dict[str, Any] = {k: {"median_s": statistics.median(t.tolist()), "steps_s": t.tolist()}
                               for k, t in slowest.items()}
        if self.world > 1:  # the slowdown of a step, split: sharing the machine, then waiting for the bytes
            out["exposed_comm_s"] = out["allreduce"]["median_s"] - out["no_sync"]["median_s"]
            out["efficiency"] = out["alone"]["median_s"] / out["allreduce"]["median_s"]
            # the same, series by series (each series of every variant ran side by side): their spread is
            # the measurement's own uncertainty, to quote with the medians
            series = {k: [statistics.median(t[i:i + a.steps]) for i in range(0, len(t), a.steps)]
                      for k, t in ((k, out[k]["steps_s"]) for k in ("alone", "no_sync", "allreduce"))}
            out["efficiency_series"] = [x / y for x, y in zip(series["alone"], series["allreduce"])]
            out["exposed_comm_series_s"] = [x - y for x, y in zip(series["allreduce"], series["no_sync"])]
        return out

    # ----- FSDP2: its collectives, its memory, and the same result as DDP
    def fsdp(self, mode: str, units: str = "blocks") -> dict[str, Any]:
        a = self.args
        model = self.model(mode)
        predicted = fsdp_bytes(model, self.world, units)
        wrap_fsdp(model, units)
        opt = make_optimizer(model)
        losses, counts = [], None
        for step in range(a.steps):
            if step == a.steps - 1:
                with CollectiveCounter() as counts:
                    losses.append(train_step(model, opt, self.batch(step), a.amp))
            else:
                losses.append(train_step(model, opt, self.batch(step), a.amp))
        out = {"predicted": predicted, "loss_rank0": losses,
               "all_gather_bytes": counts.total("all_gather"), "all_gather_calls": counts.calls("all_gather"),
               "reduce_scatter_bytes": counts.total("reduce_scatter"),
               "reduce_scatter_calls": counts.calls("reduce_scatter"),
               "largest_gather_bytes": max((b for k, b, _ in counts.ops if k == "all_gather"), default=0),
               "gradient_entries_per_rank": _gather(sum(_local(p.grad).numel() for p in model.parameters()
                                                        if p.grad is not None)),
               "state_bytes": _gather(state_bytes(model, opt))}
        if mode in self.final and units == "blocks":  # the ddp task ran the same steps on the same data
            full = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()  # a collective:
                    for n, p in model.named_parameters() if p.requires_grad}                # every rank calls it
            diffs = [(w - self.final[mode][n]).abs().max() for n, w in full.items()]
            out["max_abs_diff_vs_ddp"] = float(max(diffs))
            del full
        if self.peak:
            out["resident_bytes"] = _gather(self.resident())
            out["peak_bytes"] = _gather(peak_bytes(lambda: train_step(model, opt, self.batch(a.steps), a.amp),
                                                   model, opt))
        return out

    # ----- pitfall: an adapter whose output is never used
    def pitfalls(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {}
        probe = self.model("lora", unused_adapter=True)
        forward_backward(probe, self.batch(0))
        out["unused"] = [n for n, p in probe.named_parameters() if p.requires_grad and p.grad is None]
        fixes = {"default": {}, "find_unused_parameters": {"find_unused_parameters": True},
                 "static_graph": {"static_graph": True}, "frozen": {}}
        for name, kwargs in fixes.items():
            model = self.model("lora", unused_adapter=True)
            if name == "frozen":  # the real fix: no trainable parameter that the loss does not use
                for p in model.aux_head.parameters():
                    p.requires_grad_(False)
            counter = ByteCounter()
            ddp = wrap_ddp(model, counter, **kwargs)
            opt = make_optimizer(model)
            result: dict[str, Any] = {"ok": True, "predicted_bytes": gradient_bytes(model)}
            try:
                for step in range(2):  # the error comes at the start of the second step
                    counter.reset()
                    train_step(ddp, opt, self.batch(step), a.amp)
                result["bytes_per_step"] = counter.bytes
            except RuntimeError as err:  # raised on every rank alike, before any collective of step 2
                result.update(ok=False, step=step, error=_first_line(err))
            out[name] = result
        return out

    # ----- the link: all-reduce time against size, and DDP's real buckets replayed
    def bandwidth(self) -> dict[str, Any]:
        a = self.args
        sizes = [int(s) for s in a.sizes]

        def timed(n_bytes_list: list[int], iters: int) -> float:
            bufs = [torch.ones(max(n // 4, 1), device=self.device) for n in n_bytes_list]
            for _ in range(2):
                for b in bufs:
                    dist.all_reduce(b)
            samples = []
            for _ in range(iters):
                dist.barrier()
                _sync(self.device)
                t0 = time.perf_counter()
                for b in bufs:
                    dist.all_reduce(b)
                _sync(self.device)
                samples.append(time.perf_counter() - t0)
            t = torch.tensor(statistics.median(samples), dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return float(t)

        seconds = [timed([s], a.iters) for s in sizes]
        # the model's two numbers: the fixed cost is the quickest all-reduce of any size (every size pays it;
        # on NVLink everything up to 1 MiB takes the same time, and on a busy CPU the smallest message is not
        # always the quickest), the bandwidth is the bus bandwidth of the largest message. The JSON names the
        # size that gave the latency. (Commit 524e721's record predates this rule: its latency was its first,
        # smallest size, 4 KB.)
        quickest = min(range(len(sizes)), key=seconds.__getitem__)
        latency, bus = seconds[quickest], bus_bandwidth(sizes[-1], seconds[-1], self.world)
        out: dict[str, Any] = {"sizes": sizes, "seconds": seconds,
                               "bus_bandwidth": [bus_bandwidth(s, t, self.world) for s, t in zip(sizes, seconds)],
                               "model_latency_s": latency, "model_latency_size": sizes[quickest],
                               "model_latency_rule": "the quickest all-reduce of any size",
                               "model_bus_bandwidth": bus, "schedule": {}}
        for mode, buckets in self.ddp_buckets.items():  # each step's buckets, one all-reduce each
            out["schedule"][mode] = {
                "bucket_bytes": buckets, "measured_s": timed(buckets, a.iters),
                "predicted_s": sum(ring_allreduce_seconds(b, self.world, bus, latency) for b in buckets)}
        return out

    # ----- FSDP1's FlatParameter: the uniform-requires_grad error (gloo on CPUs or NCCL on GPUs)
    def fsdp1(self) -> dict[str, Any]:
        import functools
        import warnings

        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1
        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

        from lora_edu.transformer import Block

        cuda = self.device.type == "cuda"
        out: dict[str, Any] = {}
        for name, use_orig, uniform in (("blocks_flat", False, False), ("blocks_orig_params", True, False),
                                        ("uniform_units", False, True)):
            model = self.model("lora")
            for layer in model.modules():
                if isinstance(layer, LoRALinear):  # FSDP1 gathers a unit in its forward: call base(x)
                    layer.impl = "reference"
            rule = _uniform_units(model) if uniform else (lambda m: isinstance(m, Block))
            try:
                with warnings.catch_warnings():  # FSDP1 is deprecated in favour of fully_shard: we know
                    warnings.simplefilter("ignore", FutureWarning)
                    wrapped = FSDP1(model, auto_wrap_policy=functools.partial(lambda_auto_wrap_policy,
                                                                              lambda_fn=rule),
                                    use_orig_params=use_orig, device_id=self.device)
                _sync(self.device)
                before = torch.cuda.memory_allocated() if cuda else 0
                forward_backward(wrapped, self.batch(0), self.args.amp)
                _sync(self.device)
                out[name] = {"ok": True, "gradient_bytes_per_rank": sum(g.numel() * g.element_size()
                                                                        for g in _flat_grads(wrapped)),
                             "allocated_after_backward": torch.cuda.memory_allocated() - before if cuda else None}
                del wrapped
            except Exception as err:  # noqa: BLE001 -- the error is the result
                out[name] = {"ok": False, "error": f"{type(err).__name__}: {_first_line(err)}"}
            del model
            if cuda:
                torch.cuda.empty_cache()
        return out


def _uniform_units(model: nn.Module) -> Any:
    """FSDP1 wrap rule for LoRA: each frozen linear of a block, each LoRA layer (its A and B) and each
    block (its LayerNorms) is its own unit, so no unit mixes frozen and trainable parameters. The
    head stays with the root: GPT-2 ties it to the token embedding."""
    from lora_edu.transformer import Block

    frozen = {id(m) for b in model.blocks for m in b.modules()
              if isinstance(m, nn.Linear) and not any(p.requires_grad for p in m.parameters())}
    return lambda m: isinstance(m, (LoRALinear, Block)) or id(m) in frozen


def _flat_grads(model: nn.Module) -> list[torch.Tensor]:
    """The gradients FSDP1 keeps (its flat parameters' ``.grad``; with use_orig_params, the views)."""
    seen, out = set(), []
    for m in model.modules():
        handle = getattr(m, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        if flat is not None and id(flat) not in seen and flat.grad is not None:
            seen.add(id(flat))
            out.append(flat.grad)
    return out


# --------------------------------------------------------------------------- the command line


TASKS = ("ddp", "compress", "timing", "fsdp", "pitfalls", "bandwidth", "fsdp1")


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a ValueError naming the argument, instead of printing usage and exit(2)
        raise ValueError(f"lora_edu.distributed: {message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="torchrun --nproc_per_node N -m lora_edu.distributed",
                description="Data-parallel full fine-tuning and LoRA: bytes, time, memory (JSON).")
    p.add_argument("--tasks", default="ddp",
                   help="comma list of ddp, compress, timing, fsdp, pitfalls, bandwidth, fsdp1")
    p.add_argument("--modes", default="full,lora", help="comma list of full, lora")
    p.add_argument("--model", default="tiny", choices=sorted(MODELS))
    p.add_argument("--batch", type=_count, default=2, help="sequences per rank and step")
    p.add_argument("--seq", type=_count, default=16, help="tokens per sequence")
    p.add_argument("--lora-r", dest="r", type=_count, default=8, help="LoRA rank r")
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast (float32 weights)")
    p.add_argument("--bucket-cap-mb", type=float, default=None, help="DDP's bucket cap (default: DDP's own)")
    p.add_argument("--steps", type=_count, default=3)
    p.add_argument("--warmup", type=int, default=2, help="timing: untimed steps before each timed series")
    p.add_argument("--repeats", type=_count, default=3, help="timing: series per variant, interleaved")
    p.add_argument("--sizes", default="4096,65536,1048576,8388608", help="bandwidth: bytes per all-reduce")
    p.add_argument("--iters", type=_count, default=5, help="bandwidth: timed all-reduces per size")
    p.add_argument("--peak", choices=["auto", "on", "off"], default="auto",
                   help="measure each rank's peak memory (auto: on GPUs; on CPUs it is slow)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a collective may wait for a peer")
    p.add_argument("--out", default=None, help="JSON file rank 0 writes")
    p.add_argument("--tensors", default=None, help="folder for gradients and the adapter (safetensors)")
    p.add_argument("--run-dir", default=None, help="folder for each rank's pid and error file (launch uses it)")
    p.add_argument("--keep-going", action="store_true", help="record a failing task's error and go on")
    p.add_argument("--fail-rank", type=int, default=None, help="testing: this rank fails at step --fail-step")
    p.add_argument("--fail-how", choices=["raise", "kill", "hang"], default="raise")
    p.add_argument("--fail-step", type=int, default=1)
    return p


def _backend(choice: str) -> str:
    if choice != "auto":
        return choice
    wants_cpu = os.environ.get("LORA_EDU_DEVICE", "") == "cpu"
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() and not wants_cpu else "gloo"


def _fail(args: argparse.Namespace) -> None:
    """Testing: make this rank fail while the others wait for it inside an all-reduce."""
    for step in range(args.fail_step + 1):
        if step == args.fail_step and dist.get_rank() == args.fail_rank:
            if args.fail_how == "raise":
                raise ValueError(f"planted failure on rank {args.fail_rank} at step {step}")
            if args.fail_how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)  # hang: the others' all-reduce times out
        x = torch.ones(4, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(x)
        if x.is_cuda:
            torch.cuda.synchronize()


def _versions() -> dict[str, str]:
    from lora_edu.env import versions

    return {**versions(("torch", "numpy", "safetensors")), "cuda": torch.version.cuda or "none",
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "none"}


def run(args: argparse.Namespace, save: Any = None) -> dict[str, Any]:
    """Run the tasks of one job on this rank (the process group is up); rank 0's dict is the result.

    ``save(result)`` is called after every task, so a long GPU session keeps what it measured even if
    a later task fails. A task that raises on every rank alike (a PyTorch version without a feature)
    is recorded as ``{"error": ...}`` and the next task runs.
    """
    tasks, modes = _tasks_and_modes(args)
    job = _Run(args)
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "world_size": job.world, "backend": dist.get_backend(), "device": job.device.type,
        "gpu": torch.cuda.get_device_name(job.device) if job.device.type == "cuda" else None,
        "model": args.model, "config": job.config.to_dict(), "versions": _versions(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "tensors", "run_dir")},
        "tokens_per_rank": args.batch * args.seq,
    }
    out["task_s"] = {}
    for task in tasks:
        t_task = time.perf_counter()
        try:
            if task in ("pitfalls", "compress", "bandwidth", "fsdp1"):
                out[task] = getattr(job, task)()
            elif task == "fsdp":
                out[task] = {m: job.fsdp(m) for m in modes}
                if "lora" in modes:
                    out[task]["lora_root_unit"] = job.fsdp("lora", units="root")
            else:
                out[task] = {m: getattr(job, task)(m) for m in modes}
        except (RuntimeError, ValueError, TypeError, AssertionError, NotImplementedError) as err:
            if not args.keep_going:
                raise
            out[task] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
        out["task_s"][task] = time.perf_counter() - t_task
        out["wall_s"] = time.perf_counter() - t0
        if save is not None:
            save(out)
    return out


def _tasks_and_modes(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    tasks = [t for t in args.tasks.split(",") if t]
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ValueError(f"--tasks must be a comma list of {', '.join(TASKS)}; got {args.tasks!r}")
    if not modes or not set(modes) <= {"full", "lora"}:
        raise ValueError(f"--modes must be a comma list of full, lora; got {args.modes!r}")
    return tasks, modes


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked: a ValueError naming the argument if anything is wrong."""
    args = _parser().parse_args(argv)
    _tasks_and_modes(args)
    args.targets = [t for t in args.targets.split(",") if t]
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.amp = None if args.amp == "none" else args.amp
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    rank = int(os.environ.get("RANK", "0"))
    # the run folder first, so that even a bad command line leaves its error there for launch() to report
    run_dir = Path(argv[argv.index("--run-dir") + 1]) if "--run-dir" in argv[:-1] else None
    if run_dir:
        (run_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    try:
        args = _parse(argv)
        if "RANK" not in os.environ:
            raise RuntimeError("start this module with torchrun: torchrun --standalone --nproc_per_node 2 "
                               "-m lora_edu.distributed ... (or call lora_edu.distributed.launch from Python)")
        backend = _backend(args.backend)
        if backend == "nccl":  # one GPU per process, chosen before the first collective
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device_id = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout), device_id=device_id)
        try:
            if args.fail_rank is not None:
                _fail(args)
            def save(result: dict[str, Any]) -> None:
                if rank == 0 and args.out:
                    tmp = Path(args.out).with_suffix(".tmp")
                    tmp.write_text(json.dumps(result, indent=1))
                    tmp.replace(args.out)

            run(args, save)
            dist.barrier()
        finally:
            dist.destroy_process_group()
    except BaseException as err:
        if run_dir and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            (run_dir / f"rank{rank}.error.json").write_text(json.dumps(
                {"rank": rank, "type": type(err).__name__, "message": str(err)[:2000]}))
        raise


# --------------------------------------------------------------------------- launching from Python


class DistributedJobError(RuntimeError):
    """A :func:`launch`-ed job failed (a rank raised or died) or did not finish in time."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"lora_edu.distributed" in cmdline.read_bytes()


def _stop(proc: subprocess.Popen, run_dir: Path, grace_s: float = 10.0) -> None:
    """Stop torchrun (SIGTERM: it stops its workers), then kill whatever is left, by process id."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid_file in run_dir.glob("rank*.pid"):
        pid = int(pid_file.read_text() or 0)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)
    try:  # the last sweep: torchrun was started in a session of its own, whose process group id is its pid;
        os.killpg(proc.pid, signal.SIGKILL)  # this reaches a worker that hung before writing its pid file
    except (ProcessLookupError, PermissionError):
        pass  # nothing of the job is left


def _explain(run_dir: Path, stderr: str, returncode: int | None = None) -> str:
    """One clear line per rank that failed, the cause first: an exception of its own, then a death by a
    signal or an exit code of its own, then the errors that follow from a lost peer, then the ranks that
    torchrun stopped. Never empty: without any of these it names torchrun's own exit code."""
    found: list[tuple[int, str]] = []
    for path in sorted(run_dir.glob("rank*.error.json")):
        e = json.loads(path.read_text())
        first = (e["message"].splitlines() or [""])[0][:300]
        follows = any(w in first for w in ("peer", "Timed out", "timed out", "Connection"))
        found.append((2 if follows else 0, f"rank {e['rank']} failed with {e['type']}: {first}"))
    for rank, code in re.findall(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", stderr):
        if int(code) == 0 or any(f"rank {rank} " in line for _, line in found):
            continue
        if int(code) > 0:  # an exit of its own (sys.exit, a usage error) without an error file
            found.append((1, f"rank {rank} exited with code {code}"))
            continue
        try:
            sig = signal.Signals(-int(code)).name
        except ValueError:
            sig = f"number {-int(code)}"
        found.append((3, f"rank {rank} was stopped by torchrun ({sig})") if sig == "SIGTERM"
                     else (1, f"rank {rank} was killed by signal {sig}"))
    lines = [line for _, line in sorted(found, key=lambda x: x[0])]
    headline = "; ".join(dict.fromkeys(lines)) or (
        f"torchrun exited with code {returncode} and no rank reported an error" if returncode is not None
        else "no rank reported an error")
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    return headline + f"\n--- the end of torchrun's output ---\n{tail}"


def _run_job(cmd: list[str], run_dir: Path, timeout: float, env: dict[str, str]) -> None:
    """Run ``cmd`` (torchrun) to the end or for ``timeout`` seconds; raise a clear error if it fails."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, run_dir)
        try:
            _, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a worker still holds the pipe: do without its output
            stderr = ""
        raise DistributedJobError(f"the job did not finish within {timeout:g} s and was stopped (torchrun and "
                                  f"every worker). {_explain(run_dir, stderr or '')}") from None
    finally:
        _stop(proc, run_dir)
    if proc.returncode != 0:
        raise DistributedJobError(_explain(run_dir, stderr or "", proc.returncode))


def launch(args: Iterable[str] = (), nproc: int = 2, timeout: float = 120.0,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``torchrun --standalone --nproc_per_node nproc -m lora_edu.distributed *args`` and return its JSON.

    The arguments are checked first (a ``ValueError`` naming the wrong one, before any process starts).
    ``--standalone`` picks a free port, so jobs never collide. The workers use one thread each
    (``OMP_NUM_THREADS=1``) unless ``env`` says otherwise. When a rank raises or dies, torchrun stops
    the others and this raises :class:`DistributedJobError` naming the rank and its error. After
    ``timeout`` seconds the job is stopped (torchrun first, then any worker left, by process id) and
    the same error says so: nothing is left running.
    """
    _positive_int(nproc, "nproc")
    _positive(timeout, "timeout")
    args = [str(a) for a in args]
    _parse(args)  # a bad command line is a ValueError here, before any process starts
    with tempfile.TemporaryDirectory(prefix="lora_edu_dist_") as tmp:
        run_dir, out = Path(tmp), Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "lora_edu.distributed", *args, "--out", str(out), "--run-dir", str(run_dir)]
        _run_job(cmd, run_dir, timeout, {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        return json.loads(out.read_text())


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()
    # Done, and the JSON is written. Leave without running C++ static destructors: a c10d/gloo thread that
    # is still joinable then ends the process with "terminate called without an active exception"
    # (SIGABRT), seen in 2 of about 30 runs of the notebook's job on a loaded 2-core machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
