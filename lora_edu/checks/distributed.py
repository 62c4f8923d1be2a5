"""Checks for chapter 08 (LoRA on several GPUs): bytes per step, ring time, DDP's broadcast, unused
parameters, FSDP units, saving from rank 0, scaling efficiency, the break-even link, memory on paper.

Every check computes the right answer from the arguments the notebook passes and recognises the usual
slips: entries instead of bytes, bfloat16 instead of float32, one of A and B, one layer, the ring's
2(N-1)/N forgotten or misplaced, frozen weights counted as if they had gradients, a sharded quantity
left unsharded, milliseconds or GB instead of seconds or bytes.
"""
from __future__ import annotations

from typing import Any, Callable

from lora_edu.checks import Feedback, NotAnswered, check_choice, exercise, passed, require_answer
from lora_edu.checks.gpu import _near, _number, _slips


# --------------------------------------------------------------------------- section 1: what DDP sends


def _rounded(value: float, name: str, expected: float, source: str) -> None:
    """A hint when ``value`` is within 2 % of the answer but not equal to it: a number typed in after rounding."""
    if not _near(value, expected) and _near(value, expected, 0.02):
        raise Feedback(f"`{name}` = {value:g} is close, but rounded: let Python compute it from {source} instead "
                       "of typing a rounded number.")


def _merged(slips: list[tuple[float, str]]) -> dict[str, float]:
    """Slips that give the same number share one message (each cause, joined by "Or:")."""
    by_value: dict[float, list[str]] = {}
    for wrong, message in slips:
        by_value.setdefault(wrong, []).append(message)
    return {" Or: ".join(messages): wrong for wrong, messages in by_value.items()}


@exercise
def check_allreduce_bytes(value: Any, n_layers: int, d_model: int, r: int, n_targets: int,
                          bytes_per_entry: int = 4) -> None:
    """Bytes DDP all-reduces per step with LoRA on ``n_targets`` square ``d × d`` matrices of every layer."""
    v = _number(value, "lora_bytes")

    def lora_bytes(rank: int = r, targets: int = n_targets, per_entry: int = bytes_per_entry) -> int:
        return n_layers * targets * rank * (d_model + d_model) * per_entry

    expected = lora_bytes()
    _slips(v, "lora_bytes", expected, _merged([
        (lora_bytes(8, 2), "that is the chapter's adapter, r = 8 on W_q and W_v; this exercise puts "
                           f"r = {r} on {n_targets} matrices."),
        (lora_bytes(per_entry=1), "that counts entries, not bytes: each float32 gradient entry is 4 bytes."),
        (lora_bytes(rank=8), f"that uses r = 8; the exercise says r = {r}."),
        (lora_bytes(targets=2), f"that counts two matrices per layer; the exercise puts LoRA on all {n_targets} "
                                "(W_q, W_k, W_v, W_o)."),
        (expected / 2, "that is one of A and B: each adapter has both, A (r × d) and B (d × r)."),
        (lora_bytes(per_entry=2), "that uses bfloat16's 2 bytes; the gradients are float32 (4 bytes)."),
        (expected / n_layers, f"that is one layer's worth: the model has {n_layers} layers."),
        (2 * expected, "that is twice the buffer: 2(N-1)/N ≈ 2 is what each rank *sends* in a ring all-reduce, "
                       "not the size of the buffer DDP all-reduces."),
        (n_layers * n_targets * r * r * bytes_per_entry, "that uses r² instead of r·(in + out)."),
    ]))
    _rounded(v, "lora_bytes", expected, "the shapes")
    if not _near(v, expected):
        raise Feedback(f"`lora_bytes` = {v:g} is not right. Per matrix: A is r × d, B is d × r; {n_targets} "
                       f"matrices per layer, {n_layers} layers, {bytes_per_entry} bytes per gradient entry.")
    passed(f"{expected:,} bytes = {expected / 1e6:.2f} MB per step: only the adapters' gradients travel.")


# --------------------------------------------------------------------------- section 2: ring time


@exercise
def check_ring_seconds(value: Any, n_bytes: float, world_size: int, bus_bandwidth: float) -> None:
    """Seconds of a ring all-reduce: ``2(N-1)/N · n_bytes / bus_bandwidth``."""
    v = _number(value, "ring_seconds")
    n = world_size
    expected = 2 * (n - 1) / n * n_bytes / bus_bandwidth
    _slips(v, "ring_seconds", expected, {
        "that leaves out the ring's factor 2(N-1)/N (a reduce-scatter and an all-gather, N-1 chunks each).":
            n_bytes / bus_bandwidth,
        "that uses 2 instead of 2(N-1)/N: with N ranks each rank sends 2(N-1) chunks of 1/N of the buffer.":
            2 * n_bytes / bus_bandwidth,
        "that counts only the reduce-scatter (N-1)/N; the all-gather sends as much again.":
            (n - 1) / n * n_bytes / bus_bandwidth,
        "that is in milliseconds; give seconds.": 1000 * expected,
        "that treats the bandwidth as bits per second (×8): it is bytes per second here.": 8 * expected,
    })
    _rounded(v, "ring_seconds", expected, "the numbers given")
    if not _near(v, expected):
        raise Feedback(f"`ring_seconds` = {v:g} is not right: 2(N-1)/N × bytes / bus bandwidth, in seconds.")
    passed(f"{expected * 1e3:.1f} ms per step on {n} GPUs. Its bandwidth term hardly grows on 64 GPUs (2(N-1)/N "
           "stays below 2); the latency we left out does: a ring sends 2(N-1) messages one after the other.")


# --------------------------------------------------------------------------- section 3: the broadcast


@exercise
def check_broadcast_bytes(value: Any, total: int, trainable: int, tied: int = 0, bytes_per_entry: int = 4) -> None:
    """Bytes DDP's constructor broadcasts from rank 0: every parameter, once (a tied one once)."""
    v = _number(value, "broadcast_bytes")
    expected = total * bytes_per_entry
    _slips(v, "broadcast_bytes", expected, {
        "that is only the adapters: the constructor makes *every* rank start from rank 0's weights, frozen "
        "ones included.": trainable * bytes_per_entry,
        "that leaves out the adapters; they are parameters too (and start random in A).":
            (total - trainable) * bytes_per_entry,
        "that counts the tied head twice: GPT-2's lm_head.weight *is* tok_emb.weight, one tensor.":
            (total + tied) * bytes_per_entry,
        "that counts entries, not bytes (4 per float32 entry).": total,
    })
    if not _near(v, expected):
        raise Feedback(f"`broadcast_bytes` = {v:g} is not right: every parameter of the model (count_parameters' "
                       f"total), {bytes_per_entry} bytes each, once.")
    passed(f"{expected / 1e6:.0f} MB once, at construction — the price of starting every rank from the same weights.")


# --------------------------------------------------------------------------- section 4: unused parameters


def _names(result: Any, name: str) -> list[str]:
    require_answer(result, f"{name}(...)")
    if isinstance(result, str) or not hasattr(result, "__iter__"):
        raise Feedback(f"`{name}` should return a list of parameter names (strings), not {type(result).__name__}.")
    out = list(result)
    if not all(isinstance(x, str) for x in out):
        raise Feedback(f"`{name}` should return parameter *names* (strings, from model.named_parameters()), "
                       f"got {[type(x).__name__ for x in out][:3]}.")
    return sorted(out)


@exercise
def check_unused_trainable(fn: Callable[..., Any]) -> None:
    """``fn(model, tokens)`` runs one forward/backward and lists the trainable parameters without a gradient."""
    from lora_edu.distributed import MODELS, build_model, make_batch

    require_answer(fn, "unused_trainable")
    if not callable(fn):
        raise Feedback("`unused_trainable` should be a function: def unused_trainable(model, tokens): ...")
    cfg = MODELS["tiny"]
    tokens = make_batch(cfg, 2, 8)
    cases = [(build_model(cfg, "lora", r=4, unused_adapter=True), ["aux_head.lora_A", "aux_head.lora_B"]),
             (build_model(cfg, "full", unused_adapter=True), ["aux_head.bias", "aux_head.weight"]),
             (build_model(cfg, "lora", r=4), [])]
    for model, expected in cases:
        try:
            result = fn(model, tokens)
        except (NotImplementedError, NotAnswered):
            raise
        except Exception as exc:  # noqa: BLE001 -- a crash in the learner's code is feedback
            raise Feedback(f"Calling `unused_trainable(model, tokens)` raised {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        got = _names(result, "unused_trainable")
        params = dict(model.named_parameters())
        if got == expected:
            continue
        if any(n in params and not params[n].requires_grad for n in got):
            raise Feedback("Your list includes frozen parameters (requires_grad=False). They never get a gradient, "
                           "and DDP does not wait for them: keep only parameters with requires_grad=True.")
        trainable = sorted(n for n, p in params.items() if p.requires_grad)
        if got == trainable and expected != trainable:
            raise Feedback("Every trainable parameter is listed: run the forward and backward pass first "
                           "(forward_backward(model, tokens)), then look for p.grad is None.")
        if set(got) == set(trainable) - set(expected):
            raise Feedback("That is the other half: the trainable parameters that *did* get a gradient. DDP "
                           "waits for the ones whose .grad is still None after backward.")
        raise Feedback(f"For a model whose unused trainable parameters are {expected}, your function returned {got}.")
    passed("the adapter on aux_head gets no gradient: that is the parameter DDP waits for in vain.")


# --------------------------------------------------------------------------- section 5: FSDP units

_FSDP1_UNITS = {
    "blocks": "A block holds frozen base weights *and* trainable A, B. FSDP1 flattens each unit into one "
              "FlatParameter, which has a single requires_grad: the ValueError of the live run above (with "
              "use_orig_params=True it runs, but keeps a gradient buffer for the whole block).",
    "whole_model": "The whole model is one unit: it mixes frozen and trainable parameters (the same ValueError), "
                   "and it would be gathered whole, so sharding would save no memory while it runs.",
    "separate": "",
}


@exercise
def check_fsdp1_units(value: Any) -> None:
    """Which FSDP1 wrapping of a LoRA model works with ``use_orig_params=False``: ``"separate"``."""
    check_choice(value, "separate", "fsdp1_units", _FSDP1_UNITS)
    passed("units that are all frozen or all trainable: the frozen base weights, each layer's A and B, the rest "
           "of each block. FSDP2 lifts the rule, since it shards parameter by parameter.")


# --------------------------------------------------------------------------- section 6: saving

_SAVE_PLANS = {
    "rank0_gathers_and_writes": "full_tensor() (and unshard()) is a collective: rank 0 would wait for the others "
                                "to send their halves, and they never call it. The job hangs until the "
                                "collective times out.",
    "everyone_gathers_and_writes": "Every rank gathers (right) but then N processes write the same file at once: "
                                   "wasted work at best, an interleaved, corrupt file at worst.",
    "each_writes_its_shard": "That is how torch.distributed.checkpoint saves a sharded checkpoint (a folder of "
                             "shards plus metadata: good for resuming the same job), but the goal here is one "
                             "adapter file that a single process loads with load_adapter. Each rank holds only "
                             "a slice of every A and B under FSDP2: its own file would have the wrong shapes.",
    "everyone_gathers_rank0_writes": "",
}


@exercise
def check_save_plan(value: Any) -> None:
    """How to save an FSDP2-sharded adapter: every rank gathers, rank 0 alone writes."""
    check_choice(value, "everyone_gathers_rank0_writes", "save_plan", _SAVE_PLANS)
    passed("every rank takes part in the gather (a collective), one rank writes, and a barrier keeps the others "
           "from reading a half-written file. PyTorch packages it as get_model_state_dict(model, "
           "options=StateDictOptions(full_state_dict=True, cpu_offload=True)) from "
           "torch.distributed.checkpoint.state_dict.")


# --------------------------------------------------------------------------- section 7: the recorded results


@exercise
def check_scaling_efficiency(value: Any, t_one: float, t_two: float, n_gpus: int = 2) -> None:
    """Weak-scaling efficiency (same batch per GPU): ``t_one / t_two``."""
    v = _number(value, "efficiency")
    expected = t_one / t_two
    _slips(v, "efficiency", expected, {
        "that is the inverse: t_two / t_one is how much *longer* a step takes; efficiency is t_one / t_two.":
            t_two / t_one,
        "that is the speed-up (N · t_one / t_two, more tokens per second); divide by N for the efficiency.":
            n_gpus * expected,
        "that is a percentage; give the fraction (divide by 100).": 100 * expected,
        "that is the loss (1 - efficiency), not the efficiency.": 1 - expected,
        "that is 1 - (t_two - t_one) / t_one, one minus the relative slowdown: close to the efficiency when the "
        "slowdown is small, but not the same number. Efficiency is a ratio of speeds: t_one / t_two.":
            2 - t_two / t_one,
    })
    _rounded(v, "efficiency", expected, "t_one and t_two")
    if not _near(v, expected):
        raise Feedback("`efficiency` is not right: each GPU does the same work as the one GPU alone, so the "
                       "efficiency is the one-GPU step time divided by the two-GPU step time.")
    passed(f"{expected:.1%} from these medians: each GPU keeps that much of its speed when it has to talk to the "
           "other (the series-by-series values above show how far one measurement is from the next).")


# --------------------------------------------------------------------------- section 8: the slow link


@exercise
def check_break_even_bandwidth(value: Any, n_bytes: float, world_size: int, backward_s: float) -> None:
    """The bus bandwidth at which a ring all-reduce of ``n_bytes`` takes exactly ``backward_s``."""
    v = _number(value, "break_even_bandwidth")
    n = world_size
    expected = 2 * (n - 1) / n * n_bytes / backward_s
    _slips(v, "break_even_bandwidth", expected, {
        "that leaves out the ring's 2(N-1)/N.": n_bytes / backward_s,
        "that is in GB/s; give bytes per second (multiply by 1e9).": expected / 1e9,
        "that is upside down: seconds per byte, not bytes per second.": 1 / expected,
        "that uses 2 instead of 2(N-1)/N.": 2 * n_bytes / backward_s,
    })
    _rounded(v, "break_even_bandwidth", expected, "the numbers given")
    if not _near(v, expected):
        raise Feedback("`break_even_bandwidth` is not right: set 2(N-1)/N × bytes / B equal to the backward time "
                       "and solve for B.")
    passed(f"below {expected / 1e9:.0f} GB/s the all-reduce outlasts the backward pass it hides behind.")


# --------------------------------------------------------------------------- section 9: on paper


@exercise
def check_fsdp_lora_memory(value: Any, n_params: int, n_trainable: int, world_size: int,
                           weight_bytes: int = 2, extra_bytes: int = 16) -> None:
    """Bytes per GPU of FSDP + LoRA: ``(n_params · weight_bytes + n_trainable · extra_bytes) / N``."""
    v = _number(value, "fsdp_lora_bytes")
    n = world_size
    weights, extras = n_params * weight_bytes, n_trainable * extra_bytes
    expected = (weights + extras) / n
    _slips(v, "fsdp_lora_bytes", expected, {
        "that is not sharded: FSDP keeps 1/N of everything on each GPU.": weights + extras,
        "that is in GB; give bytes.": expected / 1e9,
        "that is in GiB; give bytes.": expected / 2**30,
        "that stores the frozen weights in float32 (4 bytes); they are bfloat16 (2 bytes) here.":
            (n_params * 4 + extras) / n,
        "that leaves out the adapters' gradient and optimizer state (16 bytes per trainable parameter).":
            weights / n,
        "that shards the weights but not the adapters' gradient and optimizer state.": weights / n + extras,
        "that gives each adapter parameter 12 bytes: its optimizer state, without its float32 gradient (4).":
            (weights + n_trainable * (extra_bytes - 4)) / n,
        "that gives each adapter parameter 18 bytes: n_params already counts the adapters' 2-byte weights; add "
        "only their gradient and optimizer state (16).": (weights + n_trainable * (extra_bytes + 2)) / n,
    })
    _rounded(v, "fsdp_lora_bytes", expected, "p70 and t70")
    if not _near(v, expected):
        raise Feedback("`fsdp_lora_bytes` is not right: (every parameter × 2 bytes + every trainable parameter × "
                       "16 bytes) / the number of GPUs.")
    passed(f"{expected / 1e9:.1f} GB per GPU between steps: the model's weights, spread over {n} GPUs. While a "
           "step runs, the gathered units and the activations come on top.")
