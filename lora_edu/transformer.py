"""A small, readable decoder-style transformer (chapters 06 and 07).

One class, :class:`Transformer`, built from a :class:`TransformerConfig`. Every weight matrix is a plain
``nn.Linear``, with separate query, key, value and output projections (no fused ``qkv``), so that LoRA can
be injected by module name exactly as the LoRA paper does (``q_proj`` and ``v_proj``). Nothing in the code
fixes a size: chapter 06 uses a tiny configuration that trains in seconds on a CPU, chapter 07 builds the
same class at GPT-2-small shape (:meth:`TransformerConfig.gpt2_small`, random weights) to measure memory.

Shapes (``B`` batch, ``T`` tokens, ``D = d_model``, ``H = n_heads``, ``Dh = D // H``, ``V = vocab_size``)::

    tokens (B, T) int64
      -> tok_emb(tokens) + pos_emb(positions)                    (B, T, D)
      -> n_layers x Block:  x = x + attn(ln1(x))                  pre-LayerNorm, residual stream (B, T, D)
                            x = x + mlp(ln2(x))
      -> ln_f -> lm_head                                          logits (B, T, V)

    attn:  q = q_proj(x), k = k_proj(x), v = v_proj(x)           each (B, T, D) -> (B, H, T, Dh)
           softmax(q kᵀ / sqrt(Dh) [+ causal mask]) v            (B, H, T, Dh) -> (B, T, D) -> o_proj
    mlp:   fc2(act(fc1(x)))                                       D -> d_mlp -> D

Module names (what ``apply_lora(model, target_modules=...)`` matches):
``blocks.{i}.attn.q_proj``, ``.k_proj``, ``.v_proj``, ``.o_proj``, ``blocks.{i}.mlp.fc1``, ``.fc2`` and
``lm_head``. With ``tie_embeddings=True`` (as GPT-2) ``lm_head.weight`` *is* ``tok_emb.weight``.

Attention is computed by PyTorch's fused ``scaled_dot_product_attention`` (``Attention.impl = "sdpa"``, the
default) or by the formula written out (``"math"``: ``softmax(q kᵀ / sqrt(Dh) + mask) v``), which
``torch.func.vmap`` can batch over many models at once (``lora_edu.experiments`` trains whole grids that
way). :func:`set_attention` switches every block of a model.

Example::

    >>> import torch
    >>> from lora_edu.transformer import Transformer, TransformerConfig
    >>> cfg = TransformerConfig(vocab_size=30, max_seq_len=20, d_model=64, n_heads=4, n_layers=2, d_mlp=256)
    >>> model = Transformer(cfg)
    >>> model(torch.zeros(3, 20, dtype=torch.long)).shape
    torch.Size([3, 20, 30])
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TransformerConfig", "Transformer", "Attention", "MLP", "Block", "linear_names", "set_attention"]

_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
_ATTENTION_IMPLS = ("sdpa", "math")


@dataclass(frozen=True)
class TransformerConfig:
    """Every size of a :class:`Transformer`; nothing else in the model is hard-coded.

    Attributes:
        vocab_size: number of token ids ``V``.
        max_seq_len: the context length: learned position embeddings exist for ``0 .. max_seq_len - 1``.
        d_model: width of the residual stream ``D``; must be divisible by ``n_heads``.
        n_heads: attention heads ``H`` (each of size ``D // H``).
        n_layers: number of transformer blocks.
        d_mlp: hidden width of each MLP (GPT-2 uses ``4 * d_model``).
        bias: whether every ``nn.Linear`` (and LayerNorm) has a bias.
        causal: a causal mask (a token sees only itself and earlier tokens), as in a language model.
        activation: the MLP's non-linearity: ``"gelu"``, ``"gelu_tanh"`` (GPT-2's) or ``"relu"``.
        tie_embeddings: share the token embedding with the output layer (GPT-2 does).
        dropout: dropout on attention weights and residual branches (0 disables it).
        init_std: standard deviation of the normal initialisation of weights and embeddings.
        layer_norm_eps: LayerNorm's epsilon.
    """

    vocab_size: int
    max_seq_len: int
    d_model: int
    n_heads: int
    n_layers: int
    d_mlp: int
    bias: bool = True
    causal: bool = True
    activation: str = "gelu"
    tie_embeddings: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "d_model", "n_heads", "n_layers", "d_mlp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"TransformerConfig.d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads}): each head gets d_model // n_heads dimensions.")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"TransformerConfig.activation must be one of {_ACTIVATIONS}, got {self.activation!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        if not self.init_std > 0:
            raise ValueError(f"TransformerConfig.init_std must be > 0, got {self.init_std!r}.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a plain dict (JSON- and safetensors-metadata-friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**data)

    @classmethod
    def gpt2_small(cls, **overrides: Any) -> TransformerConfig:
        """GPT-2 small's shape: 12 layers, d_model 768, 12 heads, MLP 3072, vocab 50257, context 1024.

        With the defaults (biases, tied embeddings) the model has GPT-2 small's 124,439,808 parameters.
        Weights are random: nothing is downloaded. ``overrides`` change any field, e.g. ``max_seq_len=512``.
        """
        base = dict(vocab_size=50257, max_seq_len=1024, d_model=768, n_heads=12, n_layers=12, d_mlp=3072,
                    bias=True, causal=True, activation="gelu_tanh", tie_embeddings=True)
        base.update(overrides)
        return cls(**base)


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (each D -> D).

    ``impl`` chooses how the attention weights are computed (same function, float rounding apart):
    ``"sdpa"`` (default) PyTorch's fused kernel; ``"math"`` the formula itself, which ``torch.func.vmap``
    batches (the fused kernel has no batching rule on every device).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim, self.causal = cfg.n_heads, cfg.head_dim, cfg.causal
        self.dropout = cfg.dropout
        self.impl = "sdpa"
        self.q_proj = nn.Linear(d, d, bias=cfg.bias)
        self.k_proj = nn.Linear(d, d, bias=cfg.bias)
        self.v_proj = nn.Linear(d, d, bias=cfg.bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, Dh)."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        b, t, d = x.shape
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa":   # softmax(q kᵀ / sqrt(Dh) [+ causal mask]) v in PyTorch's fused kernel
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)
        else:                     # the same formula, step by step
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)          # (B, H, T, T)
            if self.causal:
                future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            weights = scores.softmax(dim=-1)
            if p > 0:
                weights = F.dropout(weights, p=p)
            out = weights @ v                                                      # (B, H, T, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Position-wise feed-forward network ``fc2(act(fc1(x)))``: D -> d_mlp -> D."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)
        self.activation = cfg.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.activation == "relu":
            h = F.relu(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.fc2(h)


class Block(nn.Module):
    """One pre-LayerNorm transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """Token + learned position embeddings, ``n_layers`` :class:`Block` s, a final LayerNorm and ``lm_head``.

    ``forward(tokens)`` maps int64 token ids ``(B, T)`` with ``T <= max_seq_len`` to logits ``(B, T, V)``.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"cfg must be a TransformerConfig, not {type(cfg).__name__}.")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: weights and embeddings N(0, init_std²), the residual outputs
        (``o_proj``, ``fc2``) scaled down by ``sqrt(2 n_layers)``, biases 0, LayerNorms 1 and 0."""
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o_proj", "fc2")) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std / scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) int64 -> logits (B, T, vocab_size)."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError("tokens must be an integer torch tensor of token ids with shape (batch, seq_len), "
                            f"not {type(tokens).__name__}{'' if not hasattr(tokens, 'dtype') else ' ' + str(tokens.dtype)}.")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, seq_len), got {tuple(tokens.shape)}; "
                             "for a single sequence use tokens[None].")
        t = tokens.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"the sequence has {t} tokens but the model's context is max_seq_len = "
                             f"{self.cfg.max_seq_len}; truncate it or build a model with a longer context.")
        pos = torch.arange(t, device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def linear_names(model: nn.Module) -> list[str]:
    """The names of every ``nn.Linear`` in ``model`` (what LoRA's ``target_modules`` can name)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def set_attention(model: nn.Module, impl: str) -> nn.Module:
    """Set ``impl`` (``"sdpa"`` or ``"math"``) on every :class:`Attention` of ``model``; returns the model."""
    if impl not in _ATTENTION_IMPLS:
        raise ValueError(f"impl must be one of {_ATTENTION_IMPLS}, got {impl!r}.")
    for module in model.modules():
        if isinstance(module, Attention):
            module.impl = impl
    return model
