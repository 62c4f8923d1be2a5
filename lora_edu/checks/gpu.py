"""Checks for chapter 07 (LoRA on a GPU): FLOPs, bytes, break-even tokens, optimizer memory, GPT-3.

Every check computes the right answer from the same arguments the notebook passes, and recognises the
usual slips: counting one of A and B, a percentage instead of a fraction, the square layer's 2r/d on a
layer that is not square, float32 bytes where the tensors are bfloat16, forgetting the write (or a
read) of an elementwise kernel, one Adam state instead of two, entries instead of bytes, one layer
instead of all of them, and a value typed in rounded instead of computed.
"""
from __future__ import annotations

import math
from typing import Any

from lora_edu.checks import Feedback, check_integer, exercise, passed, require_answer


def _number(value: Any, name: str) -> float:
    require_answer(value, name)
    if isinstance(value, bool):
        raise Feedback(f"`{name}` should be a number, not {value!r}.")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise Feedback(f"`{name}` should be a number, not {type(value).__name__} {value!r}.") from None
    if not math.isfinite(out):
        raise Feedback(f"`{name}` is {out}: look for a division by zero.")
    return out


def _near(a: float, b: float, rel: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def _slips(value: float, name: str, expected: float, slips: dict[str, float]) -> None:
    """Raise the message of the first slip whose value matches ``value`` (and is not the right answer)."""
    for message, wrong in slips.items():
        if not _near(wrong, expected) and _near(value, wrong):
            raise Feedback(f"`{name}` = {value:g}: {message}")


def _rounded(value: float, name: str, expected: float, rel: float) -> None:
    """Raise a hint when ``value`` is within 2 % of the answer but outside the check's tolerance ``rel``:
    a number typed in after rounding it, rather than a wrong method."""
    if not _near(value, expected, rel) and _near(value, expected, 0.02):
        raise Feedback(f"`{name}` = {value:g} is close, but rounded: let Python compute it from the shapes "
                       "instead of typing a rounded number.")


# --------------------------------------------------------------------------- section 1


@exercise
def check_flop_fraction(value: Any, d_in: int, d_out: int, r: int) -> None:
    """Extra forward FLOPs of LoRA on a ``d_in → d_out`` layer, as a fraction of the base's:
    ``(2·T·d_in·r + 2·T·r·d_out) / (2·T·d_in·d_out) = r·(d_in + d_out) / (d_in·d_out)`` (``2r/d`` when square)."""
    name = "extra_flop_fraction"
    v = _number(value, name)
    expected = r * (d_in + d_out) / (d_in * d_out)
    _slips(v, name, expected, {
        "that is a percentage; give the fraction (divide by 100).": 100 * expected,
        "that counts only x·Aᵀ (2·T·d_in·r); t·Bᵀ costs another 2·T·r·d_out.": r / d_out,
        "that counts only t·Bᵀ (2·T·r·d_out); x·Aᵀ costs another 2·T·d_in·r.": r / d_in,
        "that is the inverse: base FLOPs over LoRA FLOPs.": 1 / expected,
        f"that is 2r/d with d = d_in = {d_in}, the formula of a square layer; this one is {d_in} → {d_out}: "
        "count x·Aᵀ and t·Bᵀ with their own widths.": 2 * r / d_in,
        f"that is 2r/d with d = d_out = {d_out}, the formula of a square layer; this one is {d_in} → {d_out}: "
        "count x·Aᵀ and t·Bᵀ with their own widths.": 2 * r / d_out,
        "LoRA's FLOPs grow with r, not r²: each thin matmul is 2·T·(width)·r.": r * r * (d_in + d_out) / (d_in * d_out),
    })
    _rounded(v, name, expected, 1e-6)
    if not _near(v, expected):
        raise Feedback(f"`{name}` = {v:g} is not right. The base costs 2·T·d_in·d_out FLOPs; x·Aᵀ costs "
                       "2·T·d_in·r and t·Bᵀ 2·T·r·d_out. Divide the extra by the base (T cancels).")
    passed(f"LoRA adds r·(d_in + d_out)/(d_in·d_out) = {expected:.2%} of the base's FLOPs on a {d_in} → {d_out} "
           f"layer at r = {r}.")


# --------------------------------------------------------------------------- section 2


@exercise
def check_elementwise_bytes(value: Any, T: int, d: int, n_read: int = 2, n_write: int = 1, dtype_bytes: int = 2,
                            name: str = "add_bytes") -> None:
    """Bytes an elementwise kernel over ``(T, d)`` tensors moves: ``n_read`` tensors read, ``n_write`` written,
    ``(n_read + n_write)·T·d·b`` (the addition ``h = y + v``: 3·T·d·b; a scaling ``v = u * s``: 2·T·d·b)."""
    v = _number(value, name)
    n = n_read + n_write
    expected = n * T * d * dtype_bytes
    what = ("the addition reads two tensors (y and v) and writes one (h)" if (n_read, n_write) == (2, 1) else
            f"the kernel reads {n_read} tensor(s) and writes {n_write}")
    _slips(v, name, expected, {
        "that is in float32 (4 bytes per entry); the activations here are bfloat16, 2 bytes each.":
            n * T * d * 4,
        f"that counts {n - 1} of the {n} tensors: {what}, each T·d entries.": (n - 1) * T * d * dtype_bytes,
        f"that counts {n + 1} tensors, one too many: {what}.": (n + 1) * T * d * dtype_bytes,
        "that counts entries, not bytes: multiply by the bytes per entry.": n * T * d,
        "that counts bits; a byte is 8 bits.": 8 * expected,
        "that is one tensor's bytes: count every tensor the kernel reads and writes.": T * d * dtype_bytes,
    })
    _rounded(v, name, expected, 1e-6)
    if not _near(v, expected):
        raise Feedback(f"`{name}` = {v:g} is not right: count the entries read and written ({what}), times the "
                       f"bytes per entry ({dtype_bytes} for bfloat16).")
    bw = _recorded_bandwidth()
    at = f" — about {expected / bw * 1e6:.0f} µs at the H200's measured {bw / 1e12:.2f} TB/s" if bw else ""
    passed(f"the pass moves {expected / 2**20:.0f} MiB{at}, for arithmetic the GPU would do in a blink.")


def _recorded_bandwidth() -> float | None:
    """The copy bandwidth recorded on the H200 (bytes/s), or ``None`` where no recorded run is found."""
    try:
        from lora_edu.traffic import recorded_ceilings

        return recorded_ceilings()["bandwidth"]
    except (FileNotFoundError, KeyError, ValueError):
        return None


# --------------------------------------------------------------------------- section 3


@exercise
def check_saved_bytes(value: Any, T: int, r: int, dtype_bytes: int = 2, d: int | None = None) -> None:
    """Bytes of the one new activation the fused layer saves: ``t = x·Aᵀ``, ``(T, r)``. ``d`` (the layer's
    width, optional) lets the check recognise a full-width tensor and the tiny ``scaling·B`` (d × r)."""
    v = _number(value, "saved_bytes")
    expected = T * r * dtype_bytes
    slips = {
        "that is in float32; the saved t is bfloat16 (2 bytes per entry).": T * r * 4,
        "that counts entries, not bytes.": T * r,
    }
    if d is not None:
        slips["that adds the tiny scaling·B (d × r), which the layer keeps too; the question asks for t "
              "alone, the one saved tensor that grows with the number of tokens."] = (T + d) * r * dtype_bytes
    _slips(v, "saved_bytes", expected, slips)
    width = v / (T * dtype_bytes)
    if d is not None and width >= 1 and width.is_integer() and width % d == 0:
        raise Feedback(f"`saved_bytes` = {v:g} is the size of a (T, {width:g}) tensor: the fused layer never saves "
                       "a full-width output; only the thin t = x·Aᵀ of shape (T, r).")
    _rounded(v, "saved_bytes", expected, 1e-6)
    if not _near(v, expected):
        raise Feedback(f"`saved_bytes` = {v:g} is not right: t = x·Aᵀ has T × r entries of {dtype_bytes} bytes.")
    passed(f"t is only {expected / 2**10:.0f} KiB — the full-width intermediates never need to be kept.")


# --------------------------------------------------------------------------- section 4


@exercise
def check_break_even_tokens(value: Any, d_in: int, d_out: int, r: int) -> None:
    """Tokens after which an unmerged layer's extra FLOPs exceed merging's one-time cost.

    Merging computes ``B·A``: ``2·d_out·r·d_in`` FLOPs once. Unmerged, each token costs
    ``2·r·(d_in + d_out)`` extra. Break-even: ``d_in·d_out / (d_in + d_out)`` tokens (``d/2`` when square).
    """
    expected = d_in * d_out / (d_in + d_out)
    v = _number(value, "break_even_tokens")
    _slips(v, "break_even_tokens", expected, {
        "that forgets that each token pays for *two* thin matmuls (x·Aᵀ and t·Bᵀ).": 2 * expected,
        "that is the merge's FLOPs, not a number of tokens: divide by the extra FLOPs per token.":
            2 * d_out * r * d_in,
        "r cancels: both the merge and the per-token extra are proportional to r.": expected * r,
        "that also counts adding ΔW to W (d_out·d_in more FLOPs): a fair cost, but the question counts the "
        "product B·A alone.": (2 * d_out * r * d_in + d_out * d_in) / (2 * r * (d_in + d_out)),
    })
    _rounded(v, "break_even_tokens", expected, 1e-3)
    if not _near(v, expected, rel=1e-3):
        raise Feedback(f"`break_even_tokens` = {v:g} is not right: divide merging's 2·d_out·r·d_in FLOPs by the "
                       "2·r·(d_in + d_out) extra FLOPs of one token.")
    batch = 8 * 1024
    if expected < batch:
        when = f"{expected / batch:.0%} of one batch of 8 × 1024 tokens"
    else:
        when = f"{expected / batch:.1f} batches of 8 × 1024 tokens"
    passed(f"after {expected:g} tokens merging has paid for itself in FLOPs: {when}.")


# --------------------------------------------------------------------------- section 5


@exercise
def check_adam_bytes(value: Any, n_params: int, param_bytes: int = 4) -> None:
    """AdamW's state for ``n_params`` trainable float32 parameters: two tensors (m and v), ``2·n·4`` bytes."""
    require_answer(value, "adam_bytes")
    P, b = n_params, param_bytes
    expected = 2 * P * b
    v = _number(value, "adam_bytes")
    if _near(v, P * b):
        raise Feedback(f"`adam_bytes` = {v:g} is one state tensor's worth (or two in bfloat16). AdamW keeps *two* "
                       "float32 tensors per parameter: the running mean of the gradient (exp_avg) and of its "
                       "square (exp_avg_sq).")
    _slips(v, "adam_bytes", expected, {
        "that counts entries, not bytes: each state entry is a 4-byte float32.": 2 * P,
        "that adds the gradients (or the weights); the question asks for the optimizer state alone.": 3 * P * b,
        "that adds the weights and the gradients; the question asks for the optimizer state alone.": 4 * P * b,
        "that is in GB, not bytes.": expected / 1e9,
        "that is in GiB, not bytes.": expected / 2**30,
    })
    _rounded(v, "adam_bytes", expected, 1e-6)
    if not _near(v, expected):
        raise Feedback(f"`adam_bytes` = {v:g} is not right: 2 states × {P:,} parameters × {b} bytes.")
    passed(f"AdamW's state is {expected / 2**30:.3f} GiB here — twice the weights, and it vanishes with LoRA.")


# --------------------------------------------------------------------------- section 6


@exercise
def check_gpt3_lora_params(value: Any, n_layers: int = 96, d_model: int = 12288, r: int = 4,
                           n_matrices: int = 2) -> None:
    """Trainable LoRA parameters of GPT-3 175B with rank ``r`` on ``n_matrices`` d × d matrices per layer
    (the paper's setting: r = 4 on Wq and Wv)."""
    require_answer(value, "gpt3_lora_params")
    per = r * (d_model + d_model)
    expected = n_layers * n_matrices * per
    which = "Wq and Wv" if n_matrices == 2 else f"all {n_matrices} matrices"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value == expected // 2:
            raise Feedback(f"`gpt3_lora_params` = {value:,} is half the answer: count both A (r × d) and B (d × r), "
                           f"for {which}.")
        if value == n_matrices * per:
            raise Feedback(f"`gpt3_lora_params` = {value:,} is one layer's worth: GPT-3 has {n_layers} layers.")
        if value == n_layers * n_matrices * d_model * d_model:
            raise Feedback(f"`gpt3_lora_params` = {value:,} is the size of the full matrices ({which}): LoRA trains "
                           "only A and B.")
        paper = n_layers * 2 * 4 * 2 * d_model
        if value == paper and value != expected:
            raise Feedback(f"`gpt3_lora_params` = {value:,} is the paper's adapter (r = 4 on Wq and Wv); this one has "
                           f"r = {r} on {n_matrices} matrices per layer.")
    check_integer(value, expected, "gpt3_lora_params",
                  hint=f"Per matrix: A is r × d, B is d × r; {n_matrices} matrices per layer; all layers.")
    if (n_layers, d_model) == (96, 12288):
        from lora_edu.memory import TransformerShape

        total = TransformerShape.gpt3_175b().parameters()        # 174.6 billion: the shapes' exact count
        paper = ", the paper's 'roughly 10,000×'" if (r, n_matrices) == (4, 2) else ""
        passed(f"{expected:,} trainable parameters: GPT-3's {total / 1e9:.1f} billion / {expected:,} ≈ "
               f"{total / expected:,.0f}×{paper}.")
    else:
        passed(f"{expected:,} trainable parameters.")
