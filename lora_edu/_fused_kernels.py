"""Triton kernels for the LoRA branch of :mod:`lora_edu.fused` (optional: needs the ``triton`` package).

The LoRA branch of a layer is *thin*: one side of each of its matmuls is only ``r`` wide. It does
almost no arithmetic, so its cost is the number of times a full ``(N, d)`` activation goes through
device memory. Stock matmuls (cuBLAS) need one pass per thin matmul — six per training step — and
run these shapes at about half the copy bandwidth (too few thread blocks for 132 multiprocessors).
Three kernels written for the shape need five passes, each split over enough blocks to fill the GPU:

* :func:`forward` — ``t = x·Aᵀ`` and ``out = s·t·Bᵀ (+ bias)`` in one kernel: each block owns
  ``BM`` rows, reads them once (``t`` stays in registers) and writes the output rows once; the
  caller's big matmul then adds ``x·Wᵀ`` into ``out``;
* :func:`grad_g` — ``dt = s·g·B`` and ``dB = s·gᵀ·t`` from *one* read of ``g``: a block owns a
  ``BM``-row × ``BN``-column tile stream, writes its share of ``dt`` and keeps a partial ``dB``;
* :func:`grad_x` — ``dA = dtᵀ·x`` and ``gx = dt·A`` (the LoRA part of the input gradient, written
  once; the big matmul adds ``g·W`` into it afterwards).

Partial sums go to float32 buffers that one ``torch.sum`` reduces, so results are deterministic (no
atomics). Loop bounds are compile-time constants, so each layer width compiles once.

On a CPU the same kernels run in Triton's interpreter (``TRITON_INTERPRET=1``), which the tests use;
there the tensor-core ``tl.dot`` on bfloat16 is emulated wrongly by Triton 3.6, so operands are
widened to float32 first (``UPCAST``): the products of two bfloat16 numbers are exact in float32,
so this computes what the GPU computes, up to the order of the sums.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["forward", "grad_g", "grad_x", "available_sms", "interpreting"]


def _k_forward(X, A, B, BIAS, T, OUT, N, sx, so, s,
               R: tl.constexpr, K: tl.constexpr, D: tl.constexpr, RP: tl.constexpr,
               BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
               HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Rows ``[pid·BM, pid·BM + BM)``: ``t = x·Aᵀ`` (stored, in x's dtype), then ``out = s·t·Bᵀ + bias``."""
    pid = tl.program_id(0)
    rm = pid * BM + tl.arange(0, BM)
    mm = rm < N
    rr = tl.arange(0, RP)
    mr = rr < R
    acc = tl.zeros((BM, RP), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        mk = rk < K
        x = tl.load(X + rm[:, None] * sx + rk[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
        a = tl.load(A + rr[None, :] * K + rk[:, None], mask=mr[None, :] & mk[:, None], other=0.0).to(x.dtype)
        if UPCAST:
            x, a = x.to(tl.float32), a.to(tl.float32)
        acc = tl.dot(x, a, acc, input_precision=PREC)
    t = acc.to(T.dtype.element_ty)                         # rounded like the reference's x·Aᵀ
    tl.store(T + rm[:, None] * R + rr[None, :], t, mask=mm[:, None] & mr[None, :])
    if UPCAST:
        t = t.to(tl.float32)
    for n0 in range(0, D, BN):
        rn = n0 + tl.arange(0, BN)
        mn = rn < D
        b = tl.load(B + rn[None, :] * R + rr[:, None], mask=mn[None, :] & mr[:, None], other=0.0)
        b = b.to(T.dtype.element_ty)
        if UPCAST:
            b = b.to(tl.float32)
        o = tl.dot(t, b, input_precision=PREC) * s
        if HAS_BIAS:
            o += tl.load(BIAS + rn, mask=mn, other=0.0).to(tl.float32)[None, :]
        tl.store(OUT + rm[:, None] * so + rn[None, :], o.to(OUT.dtype.element_ty), mask=mm[:, None] & mn[None, :])


def _k_grad_g(G, T, B, DT, GB, N, sg, s,
              R: tl.constexpr, D: tl.constexpr, RP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
              ITERS: tl.constexpr, NEED_DT: tl.constexpr, NEED_B: tl.constexpr,
              UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Columns ``[j·BN, j·BN + BN)`` of g, rows ``[a·ITERS·BM, (a+1)·ITERS·BM)``: one read of each tile of g.

    ``DT[j]`` (float32, ``(N, R)``) gets this column block's share of ``s·g·B``; ``GB[a]`` (float32,
    ``(D, R)``) this row block's share of ``s·gᵀ·t``.
    """
    j = tl.program_id(0)
    a = tl.program_id(1)
    rn = j * BN + tl.arange(0, BN)
    mn = rn < D
    rr = tl.arange(0, RP)
    mr = rr < R
    b = tl.load(B + rn[:, None] * R + rr[None, :], mask=mn[:, None] & mr[None, :], other=0.0)
    b = b.to(G.dtype.element_ty)
    if UPCAST:
        b = b.to(tl.float32)
    acc = tl.zeros((BN, RP), dtype=tl.float32)
    for i in range(ITERS):
        rm = (a * ITERS + i) * BM + tl.arange(0, BM)
        mm = rm < N
        g = tl.load(G + rm[:, None] * sg + rn[None, :], mask=mm[:, None] & mn[None, :], other=0.0)
        if UPCAST:
            g = g.to(tl.float32)
        if NEED_DT:
            dt = tl.dot(g, b, input_precision=PREC) * s
            tl.store(DT + j * N * R + rm[:, None] * R + rr[None, :], dt, mask=mm[:, None] & mr[None, :])
        if NEED_B:
            t = tl.load(T + rm[:, None] * R + rr[None, :], mask=mm[:, None] & mr[None, :], other=0.0)
            if UPCAST:
                t = t.to(tl.float32)
            acc = tl.dot(tl.trans(g), t, acc, input_precision=PREC)
    if NEED_B:
        tl.store(GB + a * D * R + rn[:, None] * R + rr[None, :], acc * s, mask=mn[:, None] & mr[None, :])


def _k_grad_x(X, DT, A, GX, GA, N, sx, sgx,
              R: tl.constexpr, K: tl.constexpr, RP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
              ITERS: tl.constexpr, NEED_A: tl.constexpr, NEED_GX: tl.constexpr,
              UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Columns ``[j·BN, j·BN + BN)`` of x, rows of block ``a``: ``GA[a] = dtᵀ·x`` (partial), ``gx = dt·A``."""
    j = tl.program_id(0)
    a = tl.program_id(1)
    rk = j * BN + tl.arange(0, BN)
    mk = rk < K
    rr = tl.arange(0, RP)
    mr = rr < R
    A_t = tl.load(A + rr[:, None] * K + rk[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
    A_t = A_t.to(GX.dtype.element_ty)
    if UPCAST:
        A_t = A_t.to(tl.float32)
    acc = tl.zeros((RP, BN), dtype=tl.float32)
    for i in range(ITERS):
        rm = (a * ITERS + i) * BM + tl.arange(0, BM)
        mm = rm < N
        dt = tl.load(DT + rm[:, None] * R + rr[None, :], mask=mm[:, None] & mr[None, :], other=0.0)
        dt = dt.to(GX.dtype.element_ty)                    # rounded like the reference's dt
        if UPCAST:
            dt = dt.to(tl.float32)
        if NEED_A:
            x = tl.load(X + rm[:, None] * sx + rk[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
            acc = tl.dot(tl.trans(dt), x, acc, input_precision=PREC)
        if NEED_GX:
            gx = tl.dot(dt, A_t, input_precision=PREC)
            tl.store(GX + rm[:, None] * sgx + rk[None, :], gx.to(GX.dtype.element_ty),
                     mask=mm[:, None] & mk[None, :])
    if NEED_A:
        tl.store(GA + a * R * K + rr[:, None] * K + rk[None, :], acc, mask=mr[:, None] & mk[None, :])


_KERNELS = {"forward": triton.jit(_k_forward), "grad_g": triton.jit(_k_grad_g), "grad_x": triton.jit(_k_grad_x)}


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1`` before ``triton`` was imported)."""
    return bool(triton.knobs.runtime.interpret)


def _compiled(name: str, device: torch.device):
    if (device.type == "cpu") != interpreting():
        where = "CPU tensors need" if device.type == "cpu" else "GPU tensors need no"
        raise RuntimeError(f"Triton kernels on {where} TRITON_INTERPRET=1 (set it before triton is imported)")
    return _KERNELS[name]


@lru_cache(maxsize=None)
def available_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (132 on an H200); 4 for the CPU interpreter."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _rpad(r: int) -> int:
    """``r`` rounded up to a power of two of at least 16 (the smallest tile ``tl.dot`` takes)."""
    return max(16, triton.next_power_of_2(r))


# Tile sizes (rows BM, columns BN/BK, warps, pipeline stages): the fastest of five candidates each,
# timed on an H200 at T = 8192 (``benchmarks/lora_gpu.py --explore``, benchmarks/NOTES.md). The forward
# kernel has one set for widths up to 2048 and one above.
CONFIG = {
    "forward": dict(BM=32, BK=256, BN=256, num_warps=8, num_stages=3),
    "forward_small": dict(BM=64, BK=128, BN=64, num_warps=8, num_stages=3),
    "grad_g": dict(BM=32, BN=256, num_warps=4, num_stages=3),
    "grad_x": dict(BM=32, BN=256, num_warps=4, num_stages=3),
}
BLOCKS_PER_SM = 2


def _cfg(name: str, r: int, override: dict | None, width: int = 0) -> dict:
    key = "forward_small" if name == "forward" and width <= 2048 else name
    c = dict(CONFIG[key])
    if _rpad(r) >= 64 and name != "forward":   # a (BN, r) float32 accumulator must fit in registers
        c["BN"] = min(c["BN"], 128)
        c["num_warps"] = max(c["num_warps"], 8)
    if override:
        c.update(override)
    return c


def _row_split(n_rows: int, n_col_blocks: int, BM: int, device: torch.device) -> tuple[int, int]:
    """``(ITERS, row_blocks)``: each block walks ``ITERS`` tiles of ``BM`` rows (a power of two, so
    few variants compile), and there are about ``BLOCKS_PER_SM`` blocks per multiprocessor."""
    tiles = triton.cdiv(n_rows, BM)
    want = max(1, BLOCKS_PER_SM * available_sms(device) // n_col_blocks)
    iters = triton.next_power_of_2(triton.cdiv(tiles, want))
    return iters, triton.cdiv(tiles, iters)


def _flags(x: Tensor) -> dict:
    interpret = x.device.type == "cpu"
    return dict(UPCAST=interpret, PREC="ieee" if (interpret or x.dtype == torch.float32) else "tf32")


def forward(x: Tensor, A: Tensor, B: Tensor, bias: Tensor | None, scaling: float,
            config: dict | None = None) -> tuple[Tensor, Tensor]:
    """``(out, t)``: ``t = x·Aᵀ`` ``(N, r)`` and ``out = scaling·t·Bᵀ + bias`` ``(N, d_out)``, both in x's dtype.

    ``x (N, k)`` with unit stride along k; ``A (r, k)``, ``B (d_out, r)`` contiguous in any float dtype
    (cast to x's dtype in the kernel, as autocast would); ``bias (d_out,)`` or ``None``.
    """
    N, K = x.shape
    R, D = A.shape[0], B.shape[0]
    c = _cfg("forward", R, config, max(K, D))
    t = torch.empty((N, R), device=x.device, dtype=x.dtype)
    out = torch.empty((N, D), device=x.device, dtype=x.dtype)
    kernel = _compiled("forward", x.device)
    kernel[(triton.cdiv(N, c["BM"]),)](
        x, A, B, bias if bias is not None else out, t, out, N, x.stride(0), out.stride(0), float(scaling),
        R=R, K=K, D=D, RP=_rpad(R), BM=c["BM"], BK=c["BK"], BN=c["BN"], HAS_BIAS=bias is not None,
        num_warps=c["num_warps"], num_stages=c["num_stages"], **_flags(x))
    return out, t


def grad_g(g: Tensor, t: Tensor | None, B: Tensor, scaling: float, need_dt: bool = True,
           config: dict | None = None) -> tuple[Tensor | None, Tensor | None]:
    """``(dt, dB)`` from one read of ``g (N, d_out)``: ``dt = s·g·B`` ``(N, r)`` and ``dB = s·gᵀ·t`` ``(d_out, r)``.

    Both float32 (``None`` where not asked for: ``need_dt=False``, or ``t=None`` for no ``dB``).
    """
    N, D = g.shape
    R = B.shape[1]
    c = _cfg("grad_g", R, config)
    col_blocks = triton.cdiv(D, c["BN"])
    iters, row_blocks = _row_split(N, col_blocks, c["BM"], g.device)
    f32 = dict(device=g.device, dtype=torch.float32)
    dt_part = torch.empty((col_blocks, N, R), **f32) if need_dt else None
    gb_part = torch.empty((row_blocks, D, R), **f32) if t is not None else None
    dummy = g
    kernel = _compiled("grad_g", g.device)
    kernel[(col_blocks, row_blocks)](
        g, t if t is not None else dummy, B, dt_part if need_dt else dummy, gb_part if t is not None else dummy,
        N, g.stride(0), float(scaling), R=R, D=D, RP=_rpad(R), BM=c["BM"], BN=c["BN"], ITERS=iters,
        NEED_DT=need_dt, NEED_B=t is not None, num_warps=c["num_warps"], num_stages=c["num_stages"], **_flags(g))
    dt = None if dt_part is None else (dt_part[0] if col_blocks == 1 else dt_part.sum(0))
    dB = None if gb_part is None else (gb_part[0] if row_blocks == 1 else gb_part.sum(0))
    return dt, dB


def grad_x(x: Tensor | None, dt: Tensor, A: Tensor, need_gx: bool, dtype: torch.dtype,
           config: dict | None = None) -> tuple[Tensor | None, Tensor | None]:
    """``(gx, dA)``: ``gx = dt·A`` ``(N, k)`` in ``dtype`` (if ``need_gx``) and ``dA = dtᵀ·x`` ``(r, k)``
    in float32 (if ``x`` is given), with ``dt`` rounded to ``dtype`` first, as the reference does."""
    N, R = dt.shape
    K = A.shape[1]
    c = _cfg("grad_x", R, config)
    col_blocks = triton.cdiv(K, c["BN"])
    iters, row_blocks = _row_split(N, col_blocks, c["BM"], dt.device)
    gx = torch.empty((N, K), device=dt.device, dtype=dtype) if need_gx else None
    ga_part = torch.empty((row_blocks, R, K), device=dt.device, dtype=torch.float32) if x is not None else None
    dummy = dt
    ref = gx if gx is not None else x                     # a tensor in the compute dtype
    kernel = _compiled("grad_x", dt.device)
    kernel[(col_blocks, row_blocks)](
        x if x is not None else dummy, dt, A, gx if gx is not None else x, ga_part if ga_part is not None else dummy,
        N, x.stride(0) if x is not None else 0, gx.stride(0) if gx is not None else 0,
        R=R, K=K, RP=_rpad(R), BM=c["BM"], BN=c["BN"], ITERS=iters, NEED_A=x is not None, NEED_GX=need_gx,
        num_warps=c["num_warps"], num_stages=c["num_stages"], **_flags(ref))
    dA = None if ga_part is None else (ga_part[0] if row_blocks == 1 else ga_part.sum(0))
    return gx, dA
