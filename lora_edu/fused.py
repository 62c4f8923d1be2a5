"""A fast training path for a LoRA layer: one ``torch.autograd.Function`` instead of six modules.

The readable LoRA forward (``lora_edu.lora.LoRALinear`` with ``impl="reference"``, and PEFT's layer)
is a chain of separate operations, each one a kernel launch and a full pass over an ``(N, out)``
activation in device memory::

    y = base(x)                  # the big matmul (what we cannot avoid)
    t = dropout(x) @ A.T         # (N, r): reads x
    u = t @ B.T                  # (N, out): writes a full-size tensor
    v = u * scaling              # reads it, writes another one
    h = y + v                    # reads two, writes a third

and autograd mirrors each of them in the backward pass (the scaling again, and a separate sum of the
two gradients that reach ``x``). LoRA adds about ``2r / in_features`` of the FLOPs, but on a GPU the
extra *memory passes and launches* are what cost time (chapter 07 counts them).

:func:`lora_linear` computes exactly the same function with fewer passes and launches:

* forward: ``t = x @ A.T`` (one read of x, an ``(N, r)`` result), then ``out = t @ (scaling * B).T``
  written once (the scaling is applied to the tiny ``(out, r)`` matrix B, not to an activation), then
  the big matmul *accumulates* into ``out`` (``out.addmm_(x, W.T)``, i.e. ``beta=1``): the read of
  ``out`` hides behind the big matmul's arithmetic. No scaling pass, no addition pass.
* it saves only what the backward needs: ``x`` (which the caller usually keeps anyway) and the small
  ``t = x @ A.T`` — never a full-size intermediate.
* backward: ``dt = g @ (scaling * B)`` and ``dB = scaling * g.T @ t``, ``dA = dt.T @ x``, then
  ``grad_x = dt @ A`` written once and the big ``g @ W`` accumulated into it (``beta=1`` again), so
  the two contributions to ``grad_x`` are never summed by a separate pass.

Two back-ends run that plan:

* ``"torch"`` — stock ``torch`` operations (cuBLAS on a GPU): six thin matmuls, each one pass over an
  ``(N, d)`` tensor. Runs wherever PyTorch does.
* ``"triton"`` — three Triton kernels (:mod:`lora_edu._fused_kernels`) that do the LoRA branch in
  *five* passes (``g`` is read once for both ``dt`` and ``dB``; ``t`` and the output are one kernel),
  each split over enough thread blocks to fill the GPU. Opt-in (``LORA_EDU_TRITON=1``; on a CPU too,
  under ``TRITON_INTERPRET=1``, which is how it is tested): measured, it saves a little GPU time at
  small r but costs the host more per call (the rule below says where).

Shapes (PyTorch's convention): ``x (..., in_features)``, ``weight (out, in)``, ``bias (out,)``,
``lora_A (r, in)``, ``lora_B (out, r)``; the result is ``(..., out)``.

Dtypes: every matmul runs in the *compute dtype* — the autocast dtype under ``torch.autocast`` (as
``F.linear`` does), otherwise x's dtype. The adapters may be stored in another dtype than the base
(PEFT keeps float32 adapters on a bfloat16 model): they are cast to the compute dtype for the
matmuls, and every gradient comes back in its own tensor's dtype. The weight and bias must match x
outside autocast (as for ``F.linear``).
"""
from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["lora_linear", "use_fused", "choose_backend"]

_HALF = (torch.bfloat16, torch.float16)
# The two rules below come from the recorded H200 runs (benchmarks/results/nvidia-h200.json,
# benchmarks/NOTES.md), three repeats each:
# - back-end: the Triton kernels saved 1-7 % of GPU time at r = 8 (CUDA graphs: 904 vs 919 µs at d = 4096,
#   107 vs 115 µs at d = 1024) but lost 13-25 % at r = 64, and they cost the host more per call (Triton's
#   launcher: 50-140 µs per kernel on that machine), which made eager steps host-bound and slower (median
#   1.59x vs 1.29x the base at d = 4096, r = 8). So stock torch is the default and Triton is opt-in
#   (LORA_EDU_TRITON=1).
# - impl="auto": the fused path (stock back-end) took less GPU time than the reference chain at every
#   measured shape (CUDA graphs: 0.75-0.86 of it, d = 1024 and 4096, r = 8 and 64), and run eagerly it was
#   as fast or faster everywhere (0.94-0.98 of it at d = 1024, where the host sets the pace and the spread
#   between repeats is 3-16 %; 0.85-0.89 at d = 4096). So on a CUDA GPU "auto" is the fused path; on a
#   CPU it is the readable reference.


def _kernels():
    """The Triton kernels module, or ``None`` where Triton is not installed."""
    try:
        from lora_edu import _fused_kernels
    except ImportError:
        return None
    return _fused_kernels


def choose_backend(x: Tensor, in_features: int, out_features: int, dtype: torch.dtype | None = None,
                   r: int = 8) -> str:
    """``"triton"`` or ``"torch"``: which back-end :func:`lora_linear` uses for an input ``x (N, in)``.

    ``"torch"`` unless the environment variable ``LORA_EDU_TRITON=1`` asks for the Triton kernels and
    they can run: Triton installed, a CUDA tensor (or a CPU tensor under ``TRITON_INTERPRET=1``), and
    activations small enough for 32-bit offsets (``N·max(in, out) < 2**31``). ``dtype`` (the compute
    dtype) and ``r`` are accepted for rules that depend on them (the measured one does not; see above).
    """
    if os.environ.get("LORA_EDU_TRITON", "0") != "1":
        return "torch"
    n = x.numel() // max(1, in_features)
    if n == 0 or n * max(in_features, out_features) >= 2**31:
        return "torch"
    kernels = _kernels()
    if kernels is not None and (x.is_cuda or (x.device.type == "cpu" and kernels.interpreting())):
        return "triton"
    return "torch"


def use_fused(x: Tensor, weight: Tensor, r: int) -> bool:
    """Whether ``LoRALinear(impl="auto")`` takes the fused path for an input ``x (..., in)`` and a base
    ``weight (out, in)`` with rank ``r``: on a CUDA GPU, where it was measured as fast or faster than the
    reference chain at every shape (the rule above); on a CPU (and Apple's MPS) not — the readable
    reference runs there. ``weight`` and ``r`` are part of the signature so that a rule measured to
    depend on the layer's size or rank can live here; the current one does not.
    """
    return x.is_cuda


class _FusedLoRALinear(torch.autograd.Function):
    """``h = x @ W.T + b + scaling * (x_lora @ A.T) @ B.T`` with a hand-written backward.

    ``x`` comes in flattened to ``(N, in)``; ``x_lora`` is ``None`` when the LoRA branch sees the same
    input as the base layer (no dropout), which lets the backward write both contributions to
    ``grad_x`` into one buffer. ``dtype`` is the compute dtype and ``use_triton`` the back-end, both
    chosen once by :func:`lora_linear`.
    """

    @staticmethod
    def forward(ctx, x: Tensor, x_lora: Tensor | None, weight: Tensor, bias: Tensor | None,
                lora_A: Tensor, lora_B: Tensor, scaling: float, dtype: torch.dtype, use_triton: bool) -> Tensor:
        ctx.dtypes = (x.dtype, None if x_lora is None else x_lora.dtype, weight.dtype,
                      None if bias is None else bias.dtype, lora_A.dtype, lora_B.dtype)
        out, x2, xl2, W, A, B, t = _forward(x, x_lora, weight, bias, lora_A, lora_B, scaling, dtype, use_triton)
        ctx.scaling = scaling
        ctx.dtype = dtype
        ctx.use_triton = use_triton
        ctx.shared_input = x_lora is None
        need_x, need_xl, need_W, _, need_A, need_B, _, _, _ = ctx.needs_input_grad
        need_dt = need_A or need_xl or (need_x and ctx.shared_input)
        # keep only what the requested gradients need (a frozen base under autocast: W's bf16 copy
        # is needed only for grad_x; x only for the gradients of A and W)
        ctx.save_for_backward(x2 if (need_A and x_lora is None) or need_W else None,
                              xl2 if need_A and x_lora is not None else None,
                              W if need_x else None,
                              A if need_dt else None,
                              B if need_dt or need_B else None,
                              t if need_B else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x2, xl2, W, A, B, t = ctx.saved_tensors
        xl2 = x2 if xl2 is None else xl2
        need_x, need_xl, need_W, need_b, need_A, need_B, _, _, _ = ctx.needs_input_grad
        x_dt, xl_dt, W_dt, b_dt, A_dt, B_dt = ctx.dtypes
        dtype, s = ctx.dtype, ctx.scaling
        if g.dtype != dtype:
            g = g.to(dtype)                                           # (N, out)
        shared = ctx.shared_input
        need_dt = need_A or need_xl or (need_x and shared)
        grad_x = grad_xl = grad_W = grad_b = grad_A = grad_B = None
        if ctx.use_triton:
            from lora_edu import _fused_kernels as K

            g = g if g.stride(-1) == 1 else g.contiguous()
            dt = gB = None
            if need_B or need_dt:                                     # one read of g for both
                dt, gB = K.grad_g(g, t if need_B else None, B, s, need_dt=need_dt)
            if need_B:
                grad_B = _as(gB, B_dt)
            if need_dt:                                               # one read of x, one write of grad_x
                gx, gA = K.grad_x(xl2 if need_A else None, dt, A, need_x if shared else need_xl, dtype)
                if need_A:
                    grad_A = _as(gA, A_dt)
                if shared and need_x:
                    grad_x = _as(gx.addmm_(g, W), x_dt)               # the big matmul adds into it
                elif need_xl:
                    grad_xl = _as(gx, xl_dt)
            if need_x and not shared:
                grad_x = _as(g @ W, x_dt)
        else:
            sB = B                                                    # already scaling * B in dtype
            dt = g @ sB if need_dt else None                          # (N, r) = s * g @ B: one read of g
            if need_B:
                grad_B = _as(torch.mm(g.T, t).mul_(s), B_dt)           # (out, r) = s * g.T @ t: one read of g
            if need_A:
                grad_A = _as(dt.T @ xl2, A_dt)                        # (r, in): one read of x
            if shared:
                if need_x:                                            # one buffer for both contributions:
                    gx = dt @ A                                       # the LoRA part, written once ...
                    gx.addmm_(g, W)                                   # ... the big matmul adds into it
                    grad_x = _as(gx, x_dt)
            else:
                if need_x:
                    grad_x = _as(g @ W, x_dt)
                if need_xl:
                    grad_xl = _as(dt @ A, xl_dt)
        if need_W:                                                    # only if the base is not frozen
            grad_W = _as(g.T @ x2, W_dt)
        if need_b:
            grad_b = _as(g.sum(0), b_dt)
        return grad_x, grad_xl, grad_W, grad_b, grad_A, grad_B, None, None, None


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def lora_linear(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                scaling: float, lora_input: Tensor | None = None, backend: str = "auto") -> Tensor:
    """The fused LoRA layer: ``x @ weight.T + bias + scaling * lora_input @ lora_A.T @ lora_B.T``.

    Args:
        x: ``(..., in_features)``, the input of the base layer.
        weight: ``(out_features, in_features)``, the (usually frozen) base weight.
        bias: ``(out_features,)`` or ``None``.
        lora_A: ``(r, in_features)``; lora_B: ``(out_features, r)``; in any floating dtype (e.g. float32
            adapters on a bfloat16 base): they are cast to the compute dtype for the matmuls.
        scaling: ``alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA), a Python number.
        lora_input: what the LoRA branch sees, e.g. ``dropout(x)``; ``None`` (the default) means
            ``x`` itself, which is the fastest case (the two gradients reaching ``x`` share one buffer).
        backend: ``"auto"`` (:func:`choose_backend`: ``"torch"`` unless ``LORA_EDU_TRITON=1``), ``"torch"``
            or ``"triton"`` (benchmarks use these two to time each back-end; ``"triton"`` needs Triton).

    Returns:
        ``(..., out_features)`` in the compute dtype (the autocast dtype under autocast, else x's dtype).
        Gradients come back in each input's own dtype. Differentiable once (a second derivative
        through the hand-written backward raises a ``RuntimeError``).

    Raises:
        ValueError: when the shapes do not fit together (the message names the argument).
        TypeError: when the weight, bias or lora_input dtype differs from x's outside autocast, or an
            adapter is not a floating-point tensor.
    """
    in_f = x.shape[-1]
    r = lora_A.shape[0]
    if weight.dim() != 2 or weight.shape[1] != in_f:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; it should be (out_features, {in_f}) "
                         f"to match x's last dimension {in_f}")
    out_f = weight.shape[0]
    if lora_A.dim() != 2 or lora_A.shape[1] != in_f:
        raise ValueError(f"lora_A has shape {tuple(lora_A.shape)}; it should be (r, {in_f})")
    if lora_B.dim() != 2 or lora_B.shape[0] != out_f or lora_B.shape[1] != r:
        raise ValueError(f"lora_B has shape {tuple(lora_B.shape)}; it should be ({out_f}, {r}) "
                         "= (out_features, r)")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_f):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; it should be ({out_f},) or None")
    if lora_input is not None and lora_input.shape != x.shape:
        raise ValueError(f"lora_input has shape {tuple(lora_input.shape)}; it should match x's "
                         f"{tuple(x.shape)} (pass dropout(x), or None for x itself)")
    for name, tensor in (("lora_A", lora_A), ("lora_B", lora_B)):
        if not tensor.is_floating_point():
            raise TypeError(f"{name} is {tensor.dtype}; LoRA adapters must be floating-point tensors")
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):                 # the dtype every matmul runs in
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = x.dtype
        for name, tensor in (("weight", weight), ("bias", bias), ("lora_input", lora_input)):
            if tensor is not None and tensor.dtype != dtype:
                raise TypeError(f"{name} is {tensor.dtype} but x is {x.dtype}: cast the input or the layer "
                                "(e.g. layer.to(x.dtype)), or run under torch.autocast")
    x2 = x if x.dim() == 2 else x.reshape(-1, in_f)             # (..., in) -> (N, in)
    xl = lora_input if lora_input is None or lora_input.dim() == 2 else lora_input.reshape(-1, in_f)
    if backend == "auto":
        use_triton = choose_backend(x2, in_f, out_f, dtype, r) == "triton"
    elif backend in ("torch", "triton"):
        use_triton = backend == "triton"
        if use_triton and _kernels() is None:
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
    else:
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or lora_A.requires_grad
                                    or lora_B.requires_grad or (bias is not None and bias.requires_grad)
                                    or (lora_input is not None and lora_input.requires_grad)):
        out = _FusedLoRALinear.apply(x2, xl, weight, bias, lora_A, lora_B, float(scaling), dtype, use_triton)
    else:                                                      # inference: the same forward, no autograd
        out = _forward(x2, xl, weight, bias, lora_A, lora_B, float(scaling), dtype, use_triton)[0]
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out_f)


def _forward(x: Tensor, x_lora: Tensor | None, weight: Tensor, bias: Tensor | None, lora_A: Tensor,
             lora_B: Tensor, scaling: float, dtype: torch.dtype, use_triton: bool) -> tuple[Tensor, ...]:
    """The fused forward on flat inputs: ``(out, x, x_lora, W, A, B, t)`` with x, x_lora, W, t in ``dtype``.

    ``A`` and ``B`` are what the backward needs: the raw adapters for the Triton kernels (which cast
    them themselves), else ``A`` in ``dtype`` and ``scaling * B`` in ``dtype``.
    """
    x2 = x if x.dtype == dtype else x.to(dtype)                      # (N, in)
    xl2 = x2 if x_lora is None else x_lora.to(dtype)
    W = weight if weight.dtype == dtype else weight.to(dtype)
    b = bias if bias is None or bias.dtype == dtype else bias.to(dtype)
    if use_triton:
        from lora_edu import _fused_kernels as K

        x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
        xl2 = x2 if x_lora is None else (xl2 if xl2.stride(-1) == 1 else xl2.contiguous())
        A, B = lora_A.contiguous(), lora_B.contiguous()
        out, t = K.forward(xl2, A, B, b, scaling)                    # t = x·Aᵀ, out = s·t·Bᵀ + b: one kernel
    else:
        A = lora_A if lora_A.dtype == dtype else lora_A.to(dtype)
        B = (lora_B if lora_B.dtype == dtype else lora_B.to(dtype)) * scaling   # (out, r): scaling on the tiny B
        t = xl2 @ A.T                                                # (N, r): one read of x; saved
        out = t @ B.T if b is None else torch.addmm(b, t, B.T)       # (N, out): written once
    out.addmm_(x2, W.T)                                              # the big matmul adds into it (beta=1)
    return out, x2, xl2, W, A, B, t
