"""Where training memory goes: a model of peak memory, and a tracker that measures it on any device.

Chapter 07 predicts the peak memory of one training step from a transformer's shapes, for full
fine-tuning and for LoRA, and compares it with what the GPU (or, on a laptop, :class:`MemoryTracker`)
measures. The prediction adds up five parts, each one countable by hand:

* **weights** — every parameter, in its storage dtype (float32 "master" weights under autocast);
* **gradients** — one per *trainable* parameter, same dtype;
* **optimizer state** — AdamW keeps two (``exp_avg``, ``exp_avg_sq``) per trainable parameter;
* **weight copies** — under ``torch.autocast`` every matmul casts its float32 weight to bfloat16 and
  autograd keeps that copy for the backward pass (to compute the input gradient);
* **activations** — what autograd saves per layer (:func:`saved_per_layer` lists every tensor) plus the
  language-model head and the loss, which for a 50k vocabulary is the largest single item.

LoRA shrinks the gradients and the optimizer state to almost nothing, and it also shrinks the
activations: a frozen linear layer needs only its weight for the input gradient, not its input. The
adapters may live in another dtype than the base (PEFT keeps float32 adapters on a bfloat16 model,
``autocast_adapter_dtype=True``): their weights, gradients and AdamW state are then counted in float32
(``adapter_dtype``).

What this predicts is ``torch.cuda.max_memory_allocated`` — the tensors. What an out-of-memory error
sees is more: the CUDA context (a few hundred MB per process, outside PyTorch's allocator), and the
caching allocator's reserve (``torch.cuda.memory_reserved``: freed blocks kept for reuse, and
fragmentation), which is what ``nvidia-smi`` shows on top of the context. Leave room for both.

The transformer described by :class:`TransformerShape` is GPT-style: token and learned position
embeddings, ``n_layers`` pre-LayerNorm blocks (attention with q, k, v, o projections — separate, or
GPT-2's fused ``c_attn`` — then an MLP ``d_model → d_ff → d_model`` with GELU), a final LayerNorm and
an output head tied to the token embedding. Attention is PyTorch's ``scaled_dot_product_attention``
with the flash kernel (it saves q, k, v, its output and a log-sum-exp, never the ``S × S`` matrix).

Sizes are in bytes (ints); :func:`gib` converts. ``N = batch * seq`` tokens throughout.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "TransformerShape", "MemoryEstimate", "training_memory", "saved_per_layer", "lora_parameters",
    "dtype_bytes", "gib", "MemoryTracker", "measure_peak",
]

_DTYPE_BYTES = {"float64": 8, "float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "int8": 1,
                "fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
# other spellings of the linear layers' names (the paper's Wq, PEFT on GPT-2's c_attn, ...)
_ALIASES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "c_attn": "qkv", "c_proj": "o_proj",
            "c_fc": "fc1"}
_OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 0, "sgd_momentum": 1}


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of a dtype given as a ``torch.dtype`` or a name (``"bfloat16"``, ``"fp32"``, ...)."""
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPE_BYTES)}; pass e.g. torch.bfloat16 or 'float32'")
    return _DTYPE_BYTES[name]


def gib(n_bytes: float) -> float:
    """Bytes to GiB (2**30 bytes), the unit ``torch.cuda.max_memory_allocated`` is usually shown in."""
    return n_bytes / 2**30


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class TransformerShape:
    """The shapes of a GPT-style transformer (all a memory estimate needs).

    Attributes:
        n_layers, d_model, n_heads, d_ff, vocab, context: the usual sizes; ``d_ff`` is the MLP width.
        bias: whether the linear layers and LayerNorms have biases (GPT-2: yes).
        tied_embeddings: whether the output head shares the token embedding (GPT-2: yes).
        fused_qkv: GPT-2's single ``c_attn`` (``d → 3d``) instead of separate ``q_proj``, ``k_proj``, ``v_proj``.
        gelu: ``"torch"`` (``F.gelu``, either approximation: one op that saves its input) or ``"python"``
            (Hugging Face GPT-2's ``gelu_new``, written as Python arithmetic: four saved tensors).
        dropout: the residual/embedding dropout probability; each dropout saves a 1-byte mask.

    The linear layers of a block are named as in :mod:`lora_edu.transformer`: ``q_proj``, ``k_proj``,
    ``v_proj`` (or ``qkv``), ``o_proj``, ``fc1``, ``fc2``; ``q``, ``v``, ``c_attn``, ... are accepted too.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    vocab: int
    context: int
    bias: bool = True
    tied_embeddings: bool = True
    fused_qkv: bool = False
    gelu: str = "torch"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "vocab", "context"):
            _positive_int(getattr(self, name), name)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.gelu not in ("torch", "python"):
            raise ValueError(f"gelu must be 'torch' (F.gelu) or 'python' (GPT-2's gelu_new), got {self.gelu!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def gpt2_small(cls, **overrides: Any) -> TransformerShape:
        """GPT-2 small (Radford et al. 2019): 12 layers, d_model 768, 12 heads, MLP 3072, 50257 tokens, 1024 context."""
        base = dict(n_layers=12, d_model=768, n_heads=12, d_ff=3072, vocab=50257, context=1024)
        return cls(**{**base, **overrides})

    @classmethod
    def gpt3_175b(cls, **overrides: Any) -> TransformerShape:
        """GPT-3 175B (Brown et al. 2020, Table 2.1): 96 layers, d_model 12288, 96 heads, MLP 4·12288, 2048 context."""
        base = dict(n_layers=96, d_model=12288, n_heads=96, d_ff=4 * 12288, vocab=50257, context=2048)
        return cls(**{**base, **overrides})

    @classmethod
    def from_config(cls, config: Any) -> TransformerShape:
        """The shape of a model from its config: a :class:`lora_edu.transformer.TransformerConfig`, or a
        Hugging Face ``GPT2Config`` (fused ``c_attn``, ``gelu_new``, its dropout)."""
        if hasattr(config, "d_mlp"):              # lora_edu.transformer.TransformerConfig
            return cls(n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads, d_ff=config.d_mlp,
                       vocab=config.vocab_size, context=config.max_seq_len, bias=config.bias,
                       tied_embeddings=config.tie_embeddings, dropout=config.dropout)
        if hasattr(config, "n_embd"):             # transformers.GPT2Config
            return cls(n_layers=config.n_layer, d_model=config.n_embd, n_heads=config.n_head,
                       d_ff=config.n_inner or 4 * config.n_embd, vocab=config.vocab_size,
                       context=config.n_positions, fused_qkv=True,
                       gelu="python" if config.activation_function == "gelu_new" else "torch",
                       dropout=max(config.resid_pdrop, config.embd_pdrop))
        raise TypeError(f"config must be a lora_edu TransformerConfig or a transformers GPT2Config, "
                        f"not {type(config).__name__}")

    def linears(self) -> dict[str, tuple[int, int]]:
        """The linear layers of one block as ``name -> (in_features, out_features)``."""
        d, f = self.d_model, self.d_ff
        attn = {"qkv": (d, 3 * d)} if self.fused_qkv else {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d)}
        return {**attn, "o_proj": (d, d), "fc1": (d, f), "fc2": (f, d)}

    def block_parameters(self) -> int:
        """Parameters of one block: the linears (weights and biases) and two LayerNorms."""
        n = sum(i * o + (o if self.bias else 0) for i, o in self.linears().values())
        return n + 2 * self.d_model * (2 if self.bias else 1)

    def parameters(self) -> int:
        """All parameters: embeddings (token + position), blocks, final LayerNorm, and the head unless tied."""
        d = self.d_model
        head = 0 if self.tied_embeddings else self.vocab * d
        return (self.vocab + self.context) * d + self.n_layers * self.block_parameters() + d * (2 if self.bias else 1) \
            + head

    def linear_weight_elements(self) -> int:
        """Entries of every matrix a matmul uses: the blocks' linears and the output head."""
        return self.n_layers * sum(i * o for i, o in self.linears().values()) + self.vocab * self.d_model


def _check_targets(shape: TransformerShape, targets: Sequence[str]) -> tuple[str, ...]:
    names = shape.linears()
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(_ALIASES.get(t, t) if _ALIASES.get(t, t) in names else t for t in targets)
    if not targets:
        raise ValueError("targets is empty: name the linear layers that get LoRA, e.g. ('q', 'v')")
    bad = [t for t in targets if t not in names]
    if bad:
        raise ValueError(f"targets {bad} are not linear layers of this block; choose from {list(names)}")
    return targets


def lora_parameters(shape: TransformerShape, r: int, targets: Sequence[str] = ("q_proj", "v_proj")) -> int:
    """Trainable LoRA parameters: ``r (in + out)`` for each targeted linear of every block."""
    _positive_int(r, "r")
    names = shape.linears()
    return shape.n_layers * sum(r * sum(names[t]) for t in _check_targets(shape, targets))


@dataclass(frozen=True)
class MemoryEstimate:
    """A predicted peak, split into its parts (bytes). ``total`` is the peak itself."""

    weights: int
    gradients: int
    optimizer: int
    weight_copies: int
    activations: int
    loss_head: int
    trainable: int
    step_peak: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def backward_peak(self) -> int:
        """Memory at the start of the backward pass: everything saved, plus the loss's gradient buffers."""
        return self.weights + self.optimizer + self.weight_copies + self.activations + self.loss_head

    @property
    def total(self) -> int:
        """The peak of the step: the larger of the backward-start peak and the optimizer-step peak."""
        return max(self.backward_peak, self.step_peak)

    def parts(self) -> dict[str, int]:
        """The parts as an ordered dict (gradients are listed but, see :func:`training_memory`, not
        alive at the backward-start peak)."""
        return {"weights": self.weights, "gradients": self.gradients, "optimizer state": self.optimizer,
                "bf16 weight copies": self.weight_copies, "activations": self.activations,
                "logits and loss": self.loss_head}


def _linear_roles(shape: TransformerShape, method: str, targets: tuple[str, ...]) -> dict[str, str]:
    names = shape.linears()
    if method == "full":
        return {n: "trainable" for n in names}
    return {n: ("lora" if n in targets else "frozen") for n in names}


def saved_per_layer(shape: TransformerShape, batch: int, seq: int, *, method: str = "full", r: int = 8,
                    targets: Sequence[str] = ("q_proj", "v_proj"), compute_dtype: Any = "bfloat16",
                    param_dtype: Any = "float32") -> list[tuple[str, int]]:
    """What autograd saves for the backward pass in one block, as ``(description, bytes)`` rows.

    ``compute_dtype`` is the autocast dtype (``None`` for no autocast: everything in ``param_dtype``).
    The bf16 weight copies are not listed here (see :func:`training_memory`); parameters themselves
    cost nothing extra when saved.
    """
    method = _check_method(method)
    n = _positive_int(batch, "batch") * _positive_int(seq, "seq")
    pb = dtype_bytes(param_dtype)
    cb = pb if compute_dtype is None else dtype_bytes(compute_dtype)
    cast = cb != pb                      # autocast makes a low-precision copy of float32 inputs
    d, f, h = shape.d_model, shape.d_ff, shape.n_heads
    roles = _linear_roles(shape, method, _check_targets(shape, targets) if method == "lora" else ())
    rows: list[tuple[str, int]] = []
    stats = 2 * 4 * n                    # LayerNorm's mean and 1/std, float32, one per token

    def linear(name: str, input_is_fp32: bool, input_new: bool) -> None:
        role = roles[name]
        if role == "frozen":
            return                       # needs only its weight for the input gradient
        k = shape.linears()[name][0]
        if input_is_fp32 and cast or input_new:
            rows.append((f"{name}: its input{' (bf16 copy)' if input_is_fp32 and cast else ''}", n * k * cb))
        if role == "lora":
            rows.append((f"{name}: LoRA's x·Aᵀ (N × r)", n * r * cb))

    rows.append(("ln1: its input (the residual stream) + mean, 1/std", n * d * pb + stats))
    for name in (("qkv",) if shape.fused_qkv else ("q_proj", "k_proj", "v_proj")):
        linear(name, input_is_fp32=True, input_new=False)
    rows.append(("attention: q, k, v", 3 * n * d * cb))
    rows.append(("attention: its output + log-sum-exp", n * d * cb + n * h * 4))
    linear("o_proj", input_is_fp32=False, input_new=False)   # the attention output, already saved above
    if shape.dropout > 0:
        rows.append(("dropout after attention: mask", n * d))
    rows.append(("ln2: its input + mean, 1/std", n * d * pb + stats))
    linear("fc1", input_is_fp32=True, input_new=False)
    if shape.gelu == "torch":
        rows.append(("gelu: its input", n * f * cb))
    elif cast:   # pow runs in float32 under autocast, so 3 of the 4 saved tensors are float32
        rows.append(("gelu_new (Python arithmetic): 3 float32 tensors + 1", n * f * (3 * 4 + cb)))
    else:
        rows.append(("gelu_new (Python arithmetic): 4 tensors", 4 * n * f * pb))
    linear("fc2", input_is_fp32=False, input_new=True)  # the GELU output, saved by nobody else
    if shape.dropout > 0:
        rows.append(("dropout after the MLP: mask", n * d))
    return rows


def _check_method(method: str) -> str:
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' (full fine-tuning) or 'lora', got {method!r}")
    return method


def training_memory(shape: TransformerShape, batch: int, seq: int, *, method: str = "full", r: int = 8,
                    targets: Sequence[str] = ("q_proj", "v_proj"), param_dtype: Any = "float32",
                    compute_dtype: Any = "bfloat16", optimizer: str = "adamw",
                    keep_logits: bool = False, adapter_dtype: Any = None) -> MemoryEstimate:
    """Predict the peak memory of one training step (forward, backward, optimizer step).

    Args:
        shape: the model's sizes.
        batch, seq: sequences per step and tokens per sequence (``N = batch * seq``).
        method: ``"full"`` fine-tuning or ``"lora"`` (rank ``r`` on the linears named in ``targets``;
            everything else frozen).
        param_dtype: how the parameters are stored (float32 master weights, or ``"bfloat16"``).
        compute_dtype: the ``torch.autocast`` dtype, or ``None`` for no autocast.
        optimizer: ``"adamw"``/``"adam"`` (2 states per trainable parameter), ``"sgd"`` (0) or
            ``"sgd_momentum"`` (1).
        keep_logits: whether the training loop keeps the low-precision logits alive through the backward
            pass (``out = model(ids, labels=ids); out.loss.backward()`` keeps ``out.logits``: one
            ``N × vocab`` tensor in the compute dtype more at the peak).
        adapter_dtype: the dtype of the LoRA parameters (default: ``param_dtype``). PEFT's default on a
            bfloat16/float16 base is float32 (``autocast_adapter_dtype=True``): pass
            ``param_dtype="bfloat16", adapter_dtype="float32"`` for that set-up. Their gradients and
            optimizer state are in the same dtype; under autocast they get a compute-dtype copy too.

    The peak of a step is whichever is larger of

    * the **start of the backward pass**: weights + optimizer state + weight copies + every saved
      activation + the loss's buffers. Gradients are not there yet (``zero_grad()`` sets them to
      ``None``), and the cross-entropy's backward holds three float32 ``N × vocab`` tensors at once
      (the saved log-probabilities, their gradient, and the gradient of the logits);
    * the **optimizer step**: weights + gradients + optimizer state + one temporary per trainable
      parameter (``torch.optim.AdamW``'s ``foreach`` implementation computes ``sqrt(exp_avg_sq)`` into a
      new buffer).
    """
    method = _check_method(method)
    if optimizer not in _OPTIMIZER_STATES:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZER_STATES)}, got {optimizer!r}")
    targets = _check_targets(shape, targets) if method == "lora" else ()
    n = _positive_int(batch, "batch") * _positive_int(seq, "seq")
    if seq > shape.context:
        raise ValueError(f"seq={seq} is longer than the model's context {shape.context}")
    pb = dtype_bytes(param_dtype)
    cb = pb if compute_dtype is None else dtype_bytes(compute_dtype)
    ab = pb if adapter_dtype is None else dtype_bytes(adapter_dtype)
    d, v = shape.d_model, shape.vocab
    total_params = shape.parameters()
    lora = lora_parameters(shape, r, targets) if method == "lora" else 0
    trainable = total_params if method == "full" else lora
    tb = pb if method == "full" else ab                    # bytes per trainable parameter
    weights = total_params * pb + lora * ab
    gradients = trainable * tb
    optimizer_state = _OPTIMIZER_STATES[optimizer] * trainable * tb
    copies = 0
    if cb != pb:
        copies = shape.linear_weight_elements() * cb
    if cb != ab:
        copies += lora * cb
    per_layer = sum(b for _, b in saved_per_layer(shape, batch, seq, method=method, r=r,
                                                  targets=targets or ("fc1",), compute_dtype=compute_dtype,
                                                  param_dtype=param_dtype))
    head_saved = n * d * pb + 2 * 4 * n                  # final LayerNorm: its input + stats
    if method == "full":
        head_saved += n * d * cb                          # the tied head's input (bf16 copy)
    head_saved += n * 8                                   # the token ids (int64) for the embedding
    if shape.dropout > 0:
        head_saved += n * d                               # dropout after the embedding: mask
    activations = shape.n_layers * per_layer + head_saved
    if method == "lora":
        # Nothing before the first LoRA layer needs a gradient: block 0's ln1 saves nothing, and its
        # frozen q/k/v (or qkv) need no weight copy (their input needs no gradient either).
        activations -= n * d * pb + 2 * 4 * n
        if cb != pb:
            copies -= sum(i * o for name, (i, o) in shape.linears().items()
                          if name in ("q_proj", "k_proj", "v_proj", "qkv")) * cb
    loss_head = 3 * n * v * 4 + (n * v * cb if keep_logits else 0)
    temp = trainable * tb if _OPTIMIZER_STATES[optimizer] == 2 else 0
    step_peak = weights + gradients + optimizer_state + temp
    notes = (f"N = {n} tokens", f"{trainable:,} trainable of {total_params + lora:,} parameters")
    return MemoryEstimate(weights=weights, gradients=gradients, optimizer=optimizer_state, weight_copies=copies,
                          activations=activations, loss_head=loss_head, trainable=trainable,
                          step_peak=step_peak, notes=notes)


# --------------------------------------------------------------------------- measuring


class MemoryTracker:
    """Measure the peak bytes of tensors alive during a block of code, on any device (even the CPU).

    ``torch.cuda.max_memory_allocated`` exists only on CUDA. This tracker works everywhere: as a
    ``TorchDispatchMode`` it sees every tensor an operation creates (the backward pass too), adds its
    storage's size to a running total, and subtracts it when the storage is freed. Tensors that
    existed before (the weights, the optimizer state) are added with :meth:`add_existing`. A tensor
    subclass that wraps other tensors (a ``DTensor``, e.g. an FSDP2 parameter) is counted by the tensors
    it wraps (its local shard), since it has no storage of its own.

    Example::

        with MemoryTracker() as mem:
            mem.add_existing(model.parameters())
            loss = model(x).sum(); loss.backward()
        print(mem.peak)
    """

    def __init__(self) -> None:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._register(out)
                return out

        self._mode = _Mode()
        self._tensor = torch.Tensor
        self._wraps_others = is_traceable_wrapper_subclass
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _register(self, out: Any) -> None:
        import torch
        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)

    def _track(self, t: Any) -> None:
        if self._wraps_others(t):  # a tensor that wraps others (an FSDP2 DTensor wraps this rank's
            for name in t.__tensor_flatten__()[0]:  # shard) has no storage of its own: count what it wraps
                inner = getattr(t, name)
                if isinstance(inner, self._tensor):  # (a DTensor also lists its device mesh)
                    self._track(inner)
            return
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._live:
            return
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def add_existing(self, tensors: Iterable[Any]) -> None:
        """Count tensors that exist already (parameters, optimizer state) as alive from now on."""
        for t in tensors:
            self._track(t)

    def __enter__(self) -> MemoryTracker:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


def measure_peak(step: Callable[[], Any], existing: Iterable[Any] = (), device: Any = "cpu") -> int:
    """Peak bytes while ``step()`` runs, counting the ``existing`` tensors (weights, optimizer state) too.

    On CUDA this is ``torch.cuda.max_memory_allocated`` (reset first, so it includes everything
    allocated on the device); elsewhere a :class:`MemoryTracker` plus the ``existing`` tensors.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    with MemoryTracker() as mem:
        mem.add_existing(existing)
        step()
    return mem.peak
