"""Count what a linear layer costs on a GPU: kernels, FLOPs and bytes moved (chapter 07).

A GPU kernel takes at least as long as its arithmetic at the chip's matmul rate *and* at least as
long as moving its bytes at the memory bandwidth — whichever is larger (the "roofline"). LoRA's extra
matmuls are *thin* (one side only ``r`` wide): almost no arithmetic, but each one streams a whole
``(T, d)`` activation through memory, and so does every elementwise step (scaling, adding). This
module lists every kernel of one layer's forward and backward pass, for

* ``"base"`` — the frozen ``nn.Linear`` (backward: the input gradient only),
* ``"full"`` — a fully trained ``nn.Linear`` (backward: input and weight gradients),
* ``"reference"`` — the readable LoRA layer (``LoRALinear(impl="reference")``, PEFT's layer does the same),
* ``"fused"`` — :func:`lora_edu.fused.lora_linear`,
* ``"merged"`` — a merged LoRA layer (one matmul, like the base),

and predicts a time from two measured ceilings (bandwidth, matmul rate; by default the ones recorded
on the H200 in ``benchmarks/results/nvidia-h200.json``, see :func:`recorded_ceilings`). Bytes count
each operand read once and each result written once, in the compute dtype; bytes that a big matmul
reads in its epilogue (``beta=1``) are counted apart, as ``hidden_bytes``: they overlap its arithmetic,
so the roofline time leaves them out, but they are real traffic (a few µs each, measured).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Kernel", "layer_kernels", "predict_ms", "recorded_ceilings", "IMPLS"]

IMPLS = ("base", "full", "reference", "fused", "merged")


def recorded_ceilings(name: str = "nvidia-h200.json") -> dict[str, float]:
    """``{"bandwidth": bytes/s, "matmul_flops": FLOP/s}`` measured by ``benchmarks/lora_gpu.py`` at the
    start of a recorded run (a 1 GiB device copy counting bytes read + written; an 8192³ bf16 matmul)."""
    from lora_edu.results import load_result

    ceilings = load_result(name)["ceilings"]
    return {"bandwidth": float(ceilings["bandwidth"]), "matmul_flops": float(ceilings["matmul_flops"])}


@dataclass(frozen=True)
class Kernel:
    """One kernel launch: its name, pass (``"forward"``/``"backward"``), FLOPs and bytes moved."""

    name: str
    phase: str
    flops: int
    bytes: int
    hidden_bytes: int = 0          # read by a big matmul's epilogue (beta=1): overlapped, not in ``bytes``

    @property
    def big(self) -> bool:
        """A big (square) matmul: the base layer's own work."""
        return self.flops > 0 and self.bytes > 0 and self.flops / self.bytes > 100

    def time_s(self, bandwidth: float, matmul_flops: float) -> float:
        """The roofline time: the larger of arithmetic time and memory time (hidden bytes excluded)."""
        return max(self.flops / matmul_flops, self.bytes / bandwidth)


def _mm(name: str, phase: str, m: int, k: int, n: int, b: int, hidden_out: bool = False) -> Kernel:
    """``(m, k) @ (k, n)``: 2mkn FLOPs; reads both operands, writes the result (or adds into it)."""
    return Kernel(name, phase, 2 * m * k * n, (m * k + k * n + m * n) * b, m * n * b if hidden_out else 0)


def _ew(name: str, phase: str, n_read: int, n_write: int, numel: int, b: int) -> Kernel:
    """An elementwise kernel over ``numel`` entries: ``n_read`` tensors in, ``n_write`` out."""
    return Kernel(name, phase, numel * max(1, n_read - 1), (n_read + n_write) * numel * b)


def layer_kernels(impl: str, T: int, d_in: int, d_out: int, r: int = 8, dtype_bytes: int = 2,
                  mode: str = "forward_backward") -> list[Kernel]:
    """Every kernel of one layer ``(T, d_in) -> (T, d_out)``, in launch order.

    ``mode="forward"`` lists the forward pass only; ``"forward_backward"`` adds the backward pass
    (the gradient of the input, and of the trainable parameters: none for ``"base"``, the weight for
    ``"full"``, A and B for LoRA). Tiny kernels (on ``(d, r)`` matrices) are listed too: they cost a
    launch each.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if mode not in ("forward", "forward_backward"):
        raise ValueError(f"mode must be 'forward' or 'forward_backward', got {mode!r}")
    for name, v in (("T", T), ("d_in", d_in), ("d_out", d_out), ("r", r), ("dtype_bytes", dtype_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    b, F, B = dtype_bytes, "forward", "backward"
    ks: list[Kernel] = []
    if impl in ("base", "full", "merged"):
        ks.append(_mm("y = x·Wᵀ", F, T, d_in, d_out, b))
    elif impl == "reference":
        ks += [_mm("y = x·Wᵀ", F, T, d_in, d_out, b),
               _mm("t = x·Aᵀ", F, T, d_in, r, b),
               _mm("u = t·Bᵀ", F, T, r, d_out, b),
               _ew("v = u·scaling", F, 1, 1, T * d_out, b),
               _ew("h = y + v", F, 2, 1, T * d_out, b)]
    else:  # fused
        ks += [_ew("sB = B·scaling (tiny)", F, 1, 1, d_out * r, b),
               _mm("t = x·Aᵀ", F, T, d_in, r, b),
               _mm("h = t·sBᵀ (written once)", F, T, r, d_out, b),
               _mm("h += x·Wᵀ (beta=1)", F, T, d_in, d_out, b, hidden_out=True)]
    if mode == "forward" or impl == "merged":
        return ks
    if impl in ("base", "full"):
        ks.append(_mm("gx = g·W", B, T, d_out, d_in, b))
        if impl == "full":
            ks.append(_mm("gW = gᵀ·x", B, d_out, T, d_in, b))
    elif impl == "reference":
        ks += [_ew("gu = g·scaling", B, 1, 1, T * d_out, b),
               _mm("gt = gu·B", B, T, d_out, r, b),
               _mm("gB = guᵀ·t", B, d_out, T, r, b),
               _mm("gx₁ = gt·A", B, T, r, d_in, b),
               _mm("gA = gtᵀ·x", B, r, T, d_in, b),
               _mm("gx₀ = g·W", B, T, d_out, d_in, b),
               _ew("gx = gx₀ + gx₁", B, 2, 1, T * d_in, b)]
    else:  # fused
        ks += [_mm("dt = g·sB", B, T, d_out, r, b),
               _mm("gB = gᵀ·t", B, d_out, T, r, b),
               _ew("gB ·= scaling (tiny)", B, 1, 1, d_out * r, b),
               _mm("gA = dtᵀ·x", B, r, T, d_in, b),
               _mm("gx = dt·A (written once)", B, T, r, d_in, b),
               _mm("gx += g·W (beta=1)", B, T, d_out, d_in, b, hidden_out=True)]
    return ks


def predict_ms(kernels: list[Kernel], bandwidth: float | None = None, matmul_flops: float | None = None) -> float:
    """Sum of the kernels' roofline times, in milliseconds (launch gaps and hidden epilogue reads not
    included). Missing ceilings are read from the recorded H200 run (:func:`recorded_ceilings`)."""
    if bandwidth is None or matmul_flops is None:
        rec = recorded_ceilings()
        bandwidth = rec["bandwidth"] if bandwidth is None else bandwidth
        matmul_flops = rec["matmul_flops"] if matmul_flops is None else matmul_flops
    return 1e3 * sum(k.time_s(bandwidth, matmul_flops) for k in kernels)
