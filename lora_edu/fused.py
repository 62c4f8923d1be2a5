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
* backward: ``dt = g @ (scaling * B)`` and ``dB = scaling * g.T @ t`` (two reads of g, the scaling
  again on small matrices only), ``dA = dt.T @ x``, then ``grad_x = dt @ A`` written once and the big
  ``g @ W`` accumulated into it (``beta=1`` again), so the two contributions to ``grad_x`` are never
  summed by a separate pass.

What is left are four thin matmuls (one side only ``r`` wide) that each stream one ``(N, d)``
tensor through memory, plus two reads/writes hidden in the big matmuls: chapter 07 counts them and
shows how close this comes to the floor. (Custom kernels could fuse the two reads of ``g`` into one;
this module sticks to stock ``torch`` operations, so it runs wherever PyTorch does.)

Shapes (PyTorch's convention): ``x (..., in_features)``, ``weight (out, in)``, ``bias (out,)``,
``lora_A (r, in)``, ``lora_B (out, r)``; the result is ``(..., out)``.

Under ``torch.autocast`` every operand is cast to the autocast dtype first (as ``F.linear`` does), the
result is in that dtype, and each gradient comes back in its input's own dtype. (The casts are done
here, explicitly, so the operations inside need no autocast of their own.)
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lora_linear"]


class _FusedLoRALinear(torch.autograd.Function):
    """``h = x @ W.T + b + scaling * (x_lora @ A.T) @ B.T`` with a hand-written backward.

    ``x`` comes in flattened to ``(N, in)``; ``x_lora`` is ``None`` when the LoRA branch sees the same
    input as the base layer (no dropout), which lets the backward write both contributions to
    ``grad_x`` into one buffer. ``dtype`` is the compute dtype (chosen once by :func:`lora_linear`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, x_lora: Tensor | None, weight: Tensor, bias: Tensor | None,
                lora_A: Tensor, lora_B: Tensor, scaling: float, dtype: torch.dtype) -> Tensor:
        ctx.dtypes = (x.dtype, None if x_lora is None else x_lora.dtype, weight.dtype,
                      None if bias is None else bias.dtype, lora_A.dtype, lora_B.dtype)
        out, x2, xl2, W, A, sB, t = _forward(x, x_lora, weight, bias, lora_A, lora_B, scaling, dtype)
        ctx.scaling = scaling
        ctx.shared_input = x_lora is None
        need_x, need_xl, need_W, _, need_A, need_B, _, _ = ctx.needs_input_grad
        # keep only what the requested gradients need (a frozen base under autocast: W's bf16 copy
        # is needed only for grad_x; x only for the gradients of A and W)
        ctx.save_for_backward(x2 if (need_A and x_lora is None) or need_W else None,
                              xl2 if need_A and x_lora is not None else None,
                              W if need_x else None,
                              A if need_x or need_xl else None,
                              sB if need_x or need_xl or need_A else None,
                              t if need_B else None)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x2, xl2, W, A, sB, t = ctx.saved_tensors
        xl2 = x2 if xl2 is None else xl2
        need_x, need_xl, need_W, need_b, need_A, need_B, _, _ = ctx.needs_input_grad
        x_dt, xl_dt, W_dt, b_dt, A_dt, B_dt = ctx.dtypes
        dtype = (sB if sB is not None else t).dtype
        if g.dtype != dtype:
            g = g.to(dtype)                                          # (N, out)
        grad_x = grad_xl = grad_W = grad_b = grad_A = grad_B = None
        dt = g @ sB if (need_A or need_x or need_xl) else None       # (N, r) = s * g @ B: one read of g
        if need_B:
            grad_B = _as(torch.mm(g.T, t).mul_(ctx.scaling), B_dt)    # (out, r) = s * g.T @ t: one read of g
        if need_A:
            grad_A = _as(dt.T @ xl2, A_dt)                            # (r, in): one read of x
        if ctx.shared_input:
            if need_x:                                                # one buffer for both contributions:
                gx = dt @ A                                           # the LoRA part, written once ...
                gx.addmm_(g, W)                                       # ... the big matmul adds into it
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
        return grad_x, grad_xl, grad_W, grad_b, grad_A, grad_B, None, None


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def lora_linear(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                scaling: float, lora_input: Tensor | None = None) -> Tensor:
    """The fused LoRA layer: ``x @ weight.T + bias + scaling * lora_input @ lora_A.T @ lora_B.T``.

    Args:
        x: ``(..., in_features)``, the input of the base layer.
        weight: ``(out_features, in_features)``, the (usually frozen) base weight.
        bias: ``(out_features,)`` or ``None``.
        lora_A: ``(r, in_features)``; lora_B: ``(out_features, r)``.
        scaling: ``alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA), a Python number.
        lora_input: what the LoRA branch sees, e.g. ``dropout(x)``; ``None`` (the default) means
            ``x`` itself, which is the fastest case (the two gradients reaching ``x`` share one buffer).

    Returns:
        ``(..., out_features)`` in the compute dtype (the autocast dtype under autocast, else x's dtype).

    Raises:
        ValueError: when the shapes do not fit together (the message names the argument).
        TypeError: when the dtypes differ outside autocast.
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
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):                 # the dtype every matmul runs in
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = x.dtype
        for name, tensor in (("weight", weight), ("bias", bias), ("lora_A", lora_A), ("lora_B", lora_B),
                             ("lora_input", lora_input)):
            if tensor is not None and tensor.dtype != dtype:
                raise TypeError(f"{name} is {tensor.dtype} but x is {x.dtype}: cast the input or the layer "
                                "(e.g. layer.to(x.dtype)), or run under torch.autocast")
    x2 = x if x.dim() == 2 else x.reshape(-1, in_f)             # (..., in) -> (N, in)
    xl = lora_input if lora_input is None or lora_input.dim() == 2 else lora_input.reshape(-1, in_f)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or lora_A.requires_grad
                                    or lora_B.requires_grad or (bias is not None and bias.requires_grad)):
        out = _FusedLoRALinear.apply(x2, xl, weight, bias, lora_A, lora_B, float(scaling), dtype)
    else:                                                      # inference: the same forward, no autograd
        out = _forward(x2, xl, weight, bias, lora_A, lora_B, float(scaling), dtype)[0]
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out_f)


def _forward(x: Tensor, x_lora: Tensor | None, weight: Tensor, bias: Tensor | None, lora_A: Tensor,
             lora_B: Tensor, scaling: float, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The fused forward on flat inputs: returns ``(out, x, x_lora, W, A, scaling * B, t)`` in ``dtype``."""
    x2 = x if x.dtype == dtype else x.to(dtype)                      # (N, in)
    xl2 = x2 if x_lora is None else x_lora.to(dtype)
    W = weight if weight.dtype == dtype else weight.to(dtype)
    A = lora_A if lora_A.dtype == dtype else lora_A.to(dtype)
    sB = lora_B.to(dtype) * scaling                                  # (out, r): the scaling on the tiny matrix
    t = xl2 @ A.T                                                    # (N, r): one read of x; saved
    if bias is None:
        out = t @ sB.T                                               # (N, out): written once ...
    else:
        out = torch.addmm(bias.to(dtype), t, sB.T)                   # ... with the bias
    out.addmm_(x2, W.T)                                              # the big matmul adds into it (beta=1)
    return out, x2, xl2, W, A, sB, t
