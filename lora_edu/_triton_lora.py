"""Triton kernels for the thin matmuls of a LoRA layer (optional: CUDA with Triton, bf16/fp16 only).

A LoRA layer's extra work is a handful of *thin* matmuls — one side has only ``r`` (8, 64) columns.
They do almost no arithmetic, so their time is the time to stream an ``(N, d)`` activation through
memory once. cuBLAS runs them at about half the card's bandwidth (its tiles are built for big
squares); these three kernels are written for exactly that shape, so each one reads or writes the
big operand once, in wide coalesced tiles, with enough blocks in flight to keep the memory busy:

* :func:`thin_right` — ``scale * X @ A.T``: ``(M, K) x (R, K) -> (M, R)``, one pass over X
  (``t = x·Aᵀ`` in the forward, ``dt = s·g·B`` in the backward);
* :func:`thin_out` — ``scale * T @ B.T (+ bias)``: ``(M, R) x (N, R) -> (M, N)``, one write of the
  output (the LoRA part of the output, or of the input gradient, before the big matmul adds to it);
* :func:`thin_reduce` — ``scale * G.T @ T``: ``(M, N) x (M, R) -> (N, R)``, one pass over G, the
  ``M`` rows split among blocks that add their partial sums atomically in float32
  (``dB = s·gᵀ·t`` and ``dAᵀ = xᵀ·dt``).

``lora_edu.fused`` calls them when the input is on a CUDA device, the compute dtype is bfloat16
or float16, Triton is installed and ``LORA_EDU_TRITON`` is not ``0``; everywhere else it uses
``torch.mm``/``addmm`` with the same pass structure. Tests compare both with the reference layer.
"""
from __future__ import annotations

import os

import torch

try:  # Triton ships with PyTorch's CUDA wheels; a CPU-only install has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None

__all__ = ["available", "thin_right", "thin_out", "thin_reduce"]


def available(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the Triton kernels apply to an input on ``x.device`` computed in ``dtype``."""
    if triton is None or os.environ.get("LORA_EDU_TRITON", "1") == "0":
        return False
    return x.is_cuda and dtype in (torch.bfloat16, torch.float16)


def _rpad(r: int) -> int:
    """``r`` rounded up to a power of two of at least 16 (the smallest tile the tensor cores take)."""
    return max(16, triton.next_power_of_2(r))


if triton is not None:

    @triton.jit
    def _thin_right_kernel(X, A, T, M, K, R, sxm, sxk, sar, sak, stm, str_, scale,
                           BM: tl.constexpr, BK: tl.constexpr, RP: tl.constexpr):
        pid = tl.program_id(0)
        rm = pid * BM + tl.arange(0, BM)
        rr = tl.arange(0, RP)
        acc = tl.zeros((BM, RP), dtype=tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(X + rm[:, None] * sxm + rk[None, :] * sxk,
                        mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            a = tl.load(A + rr[None, :] * sar + rk[:, None] * sak,
                        mask=(rr[None, :] < R) & (rk[:, None] < K), other=0.0)
            acc += tl.dot(x, a)
        acc = acc * scale
        tl.store(T + rm[:, None] * stm + rr[None, :] * str_, acc.to(T.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rr[None, :] < R))

    @triton.jit
    def _thin_out_kernel(Tm, Bm, Bias, O, M, N, R, stm, str_, sbn, sbr, som, son, scale,
                         HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        rr = tl.arange(0, RP)
        t = tl.load(Tm + rm[:, None] * stm + rr[None, :] * str_, mask=(rm[:, None] < M) & (rr[None, :] < R), other=0.0)
        b = tl.load(Bm + rr[:, None] * sbr + rn[None, :] * sbn, mask=(rr[:, None] < R) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(t, b) * scale
        if HAS_BIAS:
            acc += tl.load(Bias + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(O + rm[:, None] * som + rn[None, :] * son, acc.to(O.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def _thin_reduce_kernel(G, Tm, O, M, N, R, rows_per_block, sgm, sgn, stm, str_, son, sor, scale,
                            BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        rn = pid_n * BN + tl.arange(0, BN)
        rr = tl.arange(0, RP)
        start = pid_s * rows_per_block
        acc = tl.zeros((BN, RP), dtype=tl.float32)
        for m0 in range(start, start + rows_per_block, BM):
            rm = m0 + tl.arange(0, BM)
            g = tl.load(G + rm[:, None] * sgm + rn[None, :] * sgn, mask=(rm[:, None] < M) & (rn[None, :] < N), other=0.0)
            t = tl.load(Tm + rm[:, None] * stm + rr[None, :] * str_, mask=(rm[:, None] < M) & (rr[None, :] < R),
                        other=0.0)
            acc += tl.dot(tl.trans(g), t)
        tl.atomic_add(O + rn[:, None] * son + rr[None, :] * sor, acc * scale,
                      mask=(rn[:, None] < N) & (rr[None, :] < R))


# Tile sizes measured on an H200 (benchmarks/tune_fused.py); any CUDA GPU runs them correctly.
CONFIG = {"right": dict(BM=32, BK=128, num_warps=4, num_stages=4),
          "out": dict(BM=128, BN=128, num_warps=8, num_stages=1),
          "reduce": dict(BM=64, BN=128, num_warps=4, num_stages=4, blocks=264)}


def thin_right(x: torch.Tensor, a: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * x @ a.T`` for ``x (M, K)`` and ``a (R, K)`` (any strides: pass ``b.T`` for ``x @ b``)."""
    M, K = x.shape
    R = a.shape[0]
    out = torch.empty((M, R), device=x.device, dtype=x.dtype)
    c = CONFIG["right"]
    grid = (triton.cdiv(M, c["BM"]),)
    _thin_right_kernel[grid](x, a, out, M, K, R, x.stride(0), x.stride(1), a.stride(0), a.stride(1),
                             out.stride(0), out.stride(1), float(scale), BM=c["BM"], BK=c["BK"], RP=_rpad(R),
                             num_warps=c["num_warps"], num_stages=c["num_stages"])
    return out


def thin_out(t: torch.Tensor, b: torch.Tensor, scale: float = 1.0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``scale * t @ b.T + bias`` for ``t (M, R)`` and ``b (N, R)`` (any strides: pass ``a.T`` for ``t @ a``)."""
    M, R = t.shape
    N = b.shape[0]
    out = torch.empty((M, N), device=t.device, dtype=t.dtype)
    c = CONFIG["out"]
    grid = (triton.cdiv(M, c["BM"]), triton.cdiv(N, c["BN"]))
    _thin_out_kernel[grid](t, b, bias if bias is not None else out, out, M, N, R, t.stride(0), t.stride(1),
                           b.stride(0), b.stride(1), out.stride(0), out.stride(1), float(scale),
                           HAS_BIAS=bias is not None, BM=c["BM"], BN=c["BN"], RP=_rpad(R),
                           num_warps=c["num_warps"], num_stages=c["num_stages"])
    return out


def thin_reduce(g: torch.Tensor, t: torch.Tensor, scale: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """``scale * g.T @ t`` for ``g (M, N)`` and ``t (M, R)``, as a float32 ``(N, R)`` tensor.

    ``out`` may be any zero-filled float32 tensor of shape ``(N, R)`` — e.g. the transpose of an
    ``(R, N)`` buffer, so that ``dA = dtᵀ·x`` comes out directly in ``lora_A``'s layout.
    """
    M, N = g.shape
    R = t.shape[1]
    if out is None:
        out = torch.zeros((N, R), device=g.device, dtype=torch.float32)
    c = CONFIG["reduce"]
    col_blocks = triton.cdiv(N, c["BN"])
    splits = max(1, min(triton.cdiv(M, c["BM"]), c["blocks"] // col_blocks))
    rows = triton.cdiv(triton.cdiv(M, splits), c["BM"]) * c["BM"]
    grid = (col_blocks, triton.cdiv(M, rows))
    _thin_reduce_kernel[grid](g, t, out, M, N, R, rows, g.stride(0), g.stride(1), t.stride(0), t.stride(1),
                              out.stride(0), out.stride(1), float(scale), BM=c["BM"], BN=c["BN"], RP=_rpad(R),
                              num_warps=c["num_warps"], num_stages=c["num_stages"])
    return out
