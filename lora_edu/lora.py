"""LoRA layers: a frozen ``nn.Linear`` plus a trainable low-rank update (chapter 05).

The LoRA paper (Hu et al., 2021, section 4.1) writes a layer's output as
``h = W0 x + ΔW x = W0 x + (α/r) B A x``. Here, as in PyTorch and PEFT, inputs are rows, so for a
batch ``x`` of shape ``(..., in_features)``::

    h = base(x) + scaling * dropout(x) @ lora_A.T @ lora_B.T

    base.weight  W0      (out_features, in_features)   frozen
    lora_A       A       (r, in_features)              trainable
    lora_B       B       (out_features, r)             trainable, zero at the start
    scaling              alpha / r   (alpha / sqrt(r) with rank_stabilized=True, rsLoRA); read-only,
                         derived from alpha, r and rank_stabilized whenever it is read
    delta_weight()  ΔW = scaling * B @ A               (out_features, in_features), rank <= r

The paper writes ``ΔW = B A`` and scales ``ΔW x`` by ``α/r``; here (as in PEFT's ``get_delta_weight``)
``delta_weight()`` includes the scaling.

Adapter dtype (PEFT's default, ``autocast_adapter_dtype=True``): on a float16/bfloat16 base the adapters
are float32 (a bfloat16 number has 8 bits of mantissa, so an Adam step of 1e-4 on an entry of size 0.05
would round away); otherwise they take the base's dtype. ``adapter_dtype=`` overrides the rule. The
LoRA branch casts its input to the adapters' dtype and its sum with the base output back to the base
output's dtype, as PEFT does, so a bfloat16 input works with float32 adapters.

- :class:`LoRALinear` — wraps one ``nn.Linear``; ``merge()`` folds ΔW into the frozen weight (one
  matmul at inference), ``unmerge()`` takes it out again.
- :func:`apply_lora` — put a :class:`LoRALinear` on every ``nn.Linear`` of a model whose name matches,
  freeze everything else; :func:`merge_lora` — back to plain ``nn.Linear`` layers with merged weights.
- :func:`count_parameters` — ``(trainable, total)``.
- :func:`lora_state_dict`, :func:`load_lora_state_dict` — the adapter tensors only (kilobytes, not the
  model's megabytes); :func:`save_adapter`, :func:`load_adapter` — the same as a ``.safetensors`` file
  (no pickle) whose metadata records r, alpha, rsLoRA, the scaling and the init of every layer. Only
  ``lora_A`` and ``lora_B`` are saved: a head you unfroze and trained next to LoRA (PEFT's
  ``modules_to_save``) is not in the file — save its ``state_dict()`` yourself.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from lora_edu.lora import LoRALinear, count_parameters
    >>> layer = LoRALinear(nn.Linear(16, 32), r=4, alpha=8)
    >>> x = torch.randn(5, 16)
    >>> torch.equal(layer(x), layer.base(x))       # B = 0: the layer starts as the pretrained one
    True
    >>> count_parameters(layer)                    # A: 4*16, B: 32*4; total adds W (32*16) and bias (32)
    (192, 736)
"""
from __future__ import annotations

import json
import math
import numbers
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor, nn

from lora_edu.fused import lora_linear, use_fused

__all__ = [
    "LoRALinear", "apply_lora", "merge_lora", "count_parameters",
    "lora_state_dict", "load_lora_state_dict", "save_adapter", "load_adapter",
]

INITS = ("kaiming", "gaussian", "pissa")
IMPLS = ("auto", "reference", "fused")  # how forward computes it: see LoRALinear's impl argument
_FORMAT = "lora_edu.lora/1"  # written into every adapter file's metadata


# --------------------------------------------------------------------------- input checks


def _check_rank(r: object, in_features: int, out_features: int) -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"r must be a whole number (int), not {type(r).__name__} {r!r}.")
    r = int(r)
    low = min(in_features, out_features)
    if not 1 <= r <= low:
        raise ValueError(f"r must be between 1 and min(in_features, out_features) = {low} for this "
                         f"{in_features} -> {out_features} layer, got r={r}: B A has rank at most "
                         f"min(r, {low}), so a larger r only adds parameters. Pick 1 <= r <= {low}.")
    return r


def _check_alpha(alpha: object, r: int) -> float:
    if alpha is None:
        return float(r)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a positive number (or None for alpha = r), not "
                        f"{type(alpha).__name__} {alpha!r}.")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number (or None for alpha = r), got {alpha!r}.")
    return float(alpha)


def _check_dropout(dropout: object) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise TypeError(f"dropout must be a probability (a float in [0, 1)), not {type(dropout).__name__} "
                        f"{dropout!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) (the probability of zeroing an input of the LoRA "
                         f"branch), got {dropout!r}. Use 0.0 for no dropout.")
    return float(dropout)


def _check_init(init: object) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}.")
    return str(init)


def _check_base(base: object) -> nn.Linear:
    if isinstance(base, LoRALinear):
        raise TypeError("base is already a LoRALinear: wrap the plain nn.Linear (layer.base) instead, "
                        "or merge_lora() the model first.")
    if not isinstance(base, nn.Linear):
        raise TypeError(f"base must be a torch.nn.Linear, not {type(base).__name__}: LoRALinear adds "
                        "B A to a Linear layer's weight (out_features, in_features).")
    return base


def _check_adapter_dtype(adapter_dtype: object, base_dtype: torch.dtype) -> torch.dtype:
    """None: float32 on a float16/bfloat16 base (PEFT's autocast_adapter_dtype), else the base's dtype."""
    if adapter_dtype is None:
        return torch.float32 if base_dtype in (torch.float16, torch.bfloat16) else base_dtype
    if not isinstance(adapter_dtype, torch.dtype) or not adapter_dtype.is_floating_point:
        raise TypeError(f"adapter_dtype must be a floating-point torch.dtype such as torch.float32, or None (float32 "
                        f"on a float16/bfloat16 base, else the base's dtype), not {adapter_dtype!r}.")
    return adapter_dtype


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for half precision (merges are summed there), the widest dtype otherwise (float64)."""
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


# --------------------------------------------------------------------------- the layer


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``scaling * B @ A``.

    Args:
        base: the pretrained ``nn.Linear`` (``weight (out_features, in_features)``, optional bias).
            It is frozen (``requires_grad=False``) and kept as ``self.base``.
        r: the rank of the update, ``1 <= r <= min(in_features, out_features)``. It is an upper
            bound on ``rank(ΔW)`` that you choose, not something computed from the data.
        alpha: the LoRA α; ``None`` means ``alpha = r`` (so ``scaling = 1``, or ``sqrt(r)`` with rsLoRA).
        dropout: probability in ``[0, 1)`` of zeroing an entry of the *LoRA branch's* input. The base
            path never sees dropout, and in eval mode dropout is the identity, so a merged layer
            computes exactly what the unmerged one does.
        init: how ``lora_A`` and ``lora_B`` start:

            * ``"kaiming"`` (default, as loralib and PEFT): A Kaiming-uniform, i.e. uniform in
              ``±1/sqrt(in_features)`` like ``nn.Linear``'s own weights; ``B = 0``.
            * ``"gaussian"`` (the paper's wording, section 4.1): A normal with std ``1/r``; ``B = 0``.
              We use PEFT's std ``1/r`` (the seed blog post uses ``1/sqrt(r)``) so that this option
              and PEFT's ``init_lora_weights="gaussian"`` start from the same distribution and results
              can be compared. With ``B = 0`` the scale of A never changes the starting function. What it
              sets is how much each step of B changes the output (``ΔW = scaling · ΔB · A``): with Adam,
              whose first step moves every entry of B by about the learning rate whatever the gradient's
              size, A's scale acts as a factor on the effective learning rate (chapter 05, section 4).
            * ``"pissa"`` (Meng et al., 2024): ``B A`` holds the top-r singular triplets of W0
              (``scaling * B @ A = U_r diag(S_r) Vh_r``, the root of each singular value split
              between B and A) and that part is *subtracted* from the frozen weight — in place, in the
              ``base`` you pass (as PEFT does) — so the output is unchanged at the start (in eval mode or
              without dropout) while training moves W's principal directions. Such an adapter means
              nothing without that residual base.

            With ``B = 0`` (kaiming, gaussian) the wrapped layer equals the base exactly at the start.
        rank_stabilized: scale by ``alpha / sqrt(r)`` (rsLoRA, Kalajdzievski 2023) instead of
            ``alpha / r``.
        impl: how ``forward`` computes the same function (chapter 07 measures both):

            * ``"reference"`` — the readable chain ``base(x) + scaling * dropout(x) @ A.T @ B.T`` below;
            * ``"fused"`` — :func:`lora_edu.fused.lora_linear`, one autograd function that writes the
              output once and lets the big matmul accumulate into it, and saves only ``x`` and
              ``x @ A.T`` for the backward pass;
            * ``"auto"`` (default) — ``"fused"`` for inputs on a CUDA GPU, where it is measurably faster
              (``benchmarks/lora_gpu.py``), ``"reference"`` everywhere else.

            Both give the same outputs and gradients (float32: within 1e-5; bfloat16: within 1e-2).
            The attribute ``impl`` can be changed at any time.
        adapter_dtype: the dtype of ``lora_A`` and ``lora_B``. ``None`` (default) follows PEFT's
            ``autocast_adapter_dtype=True``: float32 when the base weight is float16 or bfloat16 (small
            optimizer steps survive there), else the base weight's own dtype. An explicit floating dtype
            is honoured. The reference forward casts the LoRA branch's input to this dtype and the result
            back to the base output's dtype.

    Attributes: ``base``, ``r``, ``alpha`` and ``rank_stabilized`` (settable while unmerged),
    ``scaling`` (read-only: ``alpha / r`` or ``alpha / sqrt(r)``, always in step with them), ``init``,
    ``lora_A (r, in_features)``, ``lora_B (out_features, r)`` (``nn.Parameter``s on the base's device),
    ``lora_dropout``, ``merged``; ``weight`` and ``bias`` forward to the base layer's (as PEFT's layers do).

    Merging: :meth:`merge` records the A, B and scaling it added, and :meth:`unmerge` subtracts exactly
    those, so the weight comes back to W0 (up to one rounding per step) even if A, B or alpha changed in
    between. ``merged`` is not part of ``state_dict()`` (PEFT's isn't either): a state dict saved from a
    merged layer holds ``W0 + ΔW`` in ``base.weight``, so load it into a merged layer (or a plain model
    after :func:`merge_lora`), never into an unmerged one, which would add ΔW a second time.

    Raises:
        TypeError / ValueError: base is not an ``nn.Linear``; r, alpha, dropout, init or adapter_dtype out
        of range; in ``forward``, an input whose last dimension, device or dtype does not fit the layer.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float | None = None, dropout: float = 0.0,
                 init: str = "kaiming", rank_stabilized: bool = False, impl: str = "auto",
                 adapter_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        base = _check_base(base)
        self.r = _check_rank(r, base.in_features, base.out_features)
        self.merged = False
        self.alpha = alpha                  # validated by the property below (None -> r)
        self.init = _check_init(init)
        self.rank_stabilized = rank_stabilized
        p = _check_dropout(dropout)
        W = base.weight
        dtype = _check_adapter_dtype(adapter_dtype, W.dtype)

        self.base = base
        for param in base.parameters():
            param.requires_grad_(False)
        self.lora_dropout = nn.Dropout(p) if p > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(self.r, base.in_features, device=W.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, self.r, device=W.device, dtype=dtype))
        # what merge() added (A, B, scaling), so that unmerge() subtracts exactly that
        self.register_buffer("_merged_A", None, persistent=False)
        self.register_buffer("_merged_B", None, persistent=False)
        self._merged_scaling: float | None = None
        self.impl = impl
        self._init_adapter()

    # ----------------------------------------------------------------- the scaling and what it depends on

    @property
    def alpha(self) -> float:
        """LoRA's α. Setting it (``None`` means ``r``) changes :attr:`scaling`; not allowed while merged."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        self._refuse_while_merged("alpha")
        self._alpha = _check_alpha(value, self.r)

    @property
    def rank_stabilized(self) -> bool:
        """True for rsLoRA's ``alpha / sqrt(r)``; settable like :attr:`alpha` (not while merged)."""
        return self._rank_stabilized

    @rank_stabilized.setter
    def rank_stabilized(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"rank_stabilized must be True or False, not {value!r}.")
        self._refuse_while_merged("rank_stabilized")
        self._rank_stabilized = value

    @property
    def scaling(self) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with ``rank_stabilized``): derived, so it can never go stale."""
        return self._alpha / (math.sqrt(self.r) if self._rank_stabilized else self.r)

    @scaling.setter
    def scaling(self, value: object) -> None:
        raise AttributeError(f"scaling is read-only: it is alpha / r{' (alpha / sqrt(r) with rsLoRA)' if self.rank_stabilized else ''}"
                             f" = {self.scaling:g}, derived from alpha, r and rank_stabilized. To try a factor s, set "
                             f"layer.alpha = s * {'math.sqrt(r)' if self.rank_stabilized else 'r'} (or build the layer "
                             "with that alpha), so that what merge() and save_adapter() use stays consistent.")

    def _refuse_while_merged(self, name: str) -> None:
        if getattr(self, "merged", False):
            raise ValueError(f"cannot change {name} while the layer is merged: its weight holds W0 + ΔW computed with "
                             f"the old scaling, and the merged forward would not follow. Call unmerge() first.")

    # ----------------------------------------------------------------- forwarding, as PEFT's layers do

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> Tensor:
        """The base layer's weight ``(out_features, in_features)``: W0, or ``W0 + ΔW`` while merged."""
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        """The base layer's bias ``(out_features,)`` or ``None``."""
        return self.base.bias

    # ----------------------------------------------------------------- initialisation

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw ``lora_A`` again and set ``lora_B = 0``, as at construction (``init`` "kaiming" or "gaussian").

        Call it after ``module.to_empty(device=...)``: a layer built on the ``meta`` device has no values, and
        ``to_empty`` gives it uninitialised memory without calling any ``reset_parameters`` itself — you do, or
        FSDP does through its ``param_init_fn``. Only the adapter is reset (the base layer has its own
        ``reset_parameters``). Raises ``ValueError`` while merged (the weight would keep the old
        ΔW) and for ``init="pissa"``, whose start depends on W0's values: build that layer on real weights.
        """
        if self.merged:
            raise ValueError("reset_parameters() on a merged layer would leave the old ΔW inside the weight: "
                             "call unmerge() first.")
        if self.init == "pissa":
            raise ValueError("init='pissa' cannot be reset: its A and B come from the SVD of W0, which was already "
                             "subtracted from base.weight. Build a new LoRALinear on the original weights instead.")
        self._init_adapter()

    @torch.no_grad()
    def _init_adapter(self) -> None:
        if self.init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default: U(±1/sqrt(in))
            nn.init.zeros_(self.lora_B)
        elif self.init == "gaussian":
            nn.init.normal_(self.lora_A, mean=0.0, std=1.0 / self.r)
            nn.init.zeros_(self.lora_B)
        else:  # pissa
            from lora_edu.lowrank import truncated_svd

            W = self.base.weight
            if W.device.type == "meta":
                raise ValueError("init='pissa' needs the base weight's values (an SVD of W); this base is "
                                 "on the meta device. Load real weights first, or use init='kaiming'.")
            work = W.to(_compute_dtype(W.dtype, self.lora_A.dtype))
            U, S, Vh = truncated_svd(work, self.r)              # U (out, r), S (r,), Vh (r, in)
            root = torch.sqrt(S / self.scaling)                 # so that scaling * B @ A = U diag(S) Vh
            B, A = U * root, root[:, None] * Vh
            W.copy_((work - self.scaling * (B @ A)).to(W.dtype))  # the frozen residual W0 - U_r S_r Vh_r
            self.lora_A.copy_(A.to(self.lora_A.dtype))
            self.lora_B.copy_(B.to(self.lora_B.dtype))

    # ----------------------------------------------------------------- ΔW, merging

    def delta_weight(self) -> Tensor:
        """``ΔW = scaling * lora_B @ lora_A``, shape ``(out_features, in_features)``, in the adapters' dtype.

        Computed in float32 for half-precision adapters. Differentiable (use ``torch.no_grad()`` to look).
        """
        work = _compute_dtype(self.lora_A.dtype)
        return (self.scaling * (self.lora_B.to(work) @ self.lora_A.to(work))).to(self.lora_A.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW into the frozen weight: afterwards ``forward`` is a single ``nn.Linear`` matmul.

        The sum is formed in float32 (or float64) and rounded once to the weight's dtype. The A, B and
        scaling used are recorded for :meth:`unmerge`. Raises ``ValueError`` when the layer is already
        merged (merging twice would add ΔW twice): never a silent double merge.
        """
        if self.merged:
            raise ValueError("this LoRALinear is already merged: its weight already holds W0 + ΔW, and "
                               "merging again would add ΔW twice. Call unmerge() first (or check .merged).")
        self._merged_A, self._merged_B = self.lora_A.detach().clone(), self.lora_B.detach().clone()
        self._merged_scaling = self.scaling
        self._add_to_weight(+1.0)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract what :meth:`merge` added, restoring W0 up to rounding.

        Each entry comes back within two roundings: half a unit in the last place (ulp) of ``W0 + ΔW`` from the
        merge plus half an ulp of ``W0`` from the unmerge. Where ``|ΔW|`` is much larger than an entry of ``W0``
        (entries near zero), that is many of the entry's own ulps: chapter 05 finds up to 8 in float32 and 58 in
        bfloat16 for a small ΔW, while most entries come back exact.
        Raises ``ValueError`` when the layer is not merged.
        """
        if not self.merged:
            raise ValueError("this LoRALinear is not merged, so there is nothing to unmerge: its weight is "
                               "still W0. Call merge() first (or check .merged).")
        self._add_to_weight(-1.0)
        self._merged_A = self._merged_B = None
        self._merged_scaling = None
        self.merged = False

    def _add_to_weight(self, sign: float) -> None:
        """``W += sign * scaling * B @ A`` with the recorded A, B and scaling, summed in float32 or wider."""
        W, A, B = self.base.weight, self._merged_A, self._merged_B
        work = _compute_dtype(W.dtype, A.dtype)
        delta = self._merged_scaling * (B.to(work) @ A.to(work))
        W.copy_((W.to(work) + sign * delta).to(W.dtype))

    # ----------------------------------------------------------------- forward

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {value!r}.")
        self._impl = value

    def _check_input(self, x: object) -> None:
        """A clear error instead of torch's for an input that cannot go through the base layer."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (..., {self.in_features}), not {type(x).__name__}.")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x has shape {tuple(x.shape)}, but this layer takes inputs of shape (..., "
                             f"{self.in_features}) (in_features = {self.in_features}).")
        W = self.base.weight
        if x.device != W.device:
            raise ValueError(f"x is on {x.device} but the layer's weights are on {W.device}: move one of them "
                             f"(x.to('{W.device}') or layer.to('{x.device}')).")
        if x.dtype != W.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {x.dtype} but the base layer's weight is {W.dtype}: cast the input "
                            f"(x.to({W.dtype})) or the layer, or run under torch.autocast.")

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., in_features) -> (..., out_features)``; the readable (reference) computation is below."""
        self._check_input(x)
        if self.merged:                       # the weight already holds W0 + ΔW
            return self.base(x)
        if self._impl == "fused" or (self._impl == "auto" and use_fused(x, self.base.weight, self.r)):  # chapter 07
            drop = None if isinstance(self.lora_dropout, nn.Identity) else self.lora_dropout(x)
            return lora_linear(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling,
                               None if drop is x else drop)   # (dropout in eval mode returns x itself)
        # PEFT's order: the branch in the adapters' dtype, the sum rounded once to the base output's dtype
        result = self.base(x)
        return (result + self.scaling * (self.lora_dropout(x.to(self.lora_A.dtype)) @ self.lora_A.T @ self.lora_B.T)
                ).to(result.dtype)

    def extra_repr(self) -> str:
        rs = ", rank_stabilized=True" if self.rank_stabilized else ""
        dt = f", adapter_dtype={self.lora_A.dtype}" if self.lora_A.dtype != self.base.weight.dtype else ""
        return (f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:.4g}{rs}, init={self.init!r}, "
                f"merged={self.merged}, impl={self._impl!r}{dt}")


# --------------------------------------------------------------------------- whole models


def _lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _linear_names(model: nn.Module) -> list[str]:
    """Names of the plain nn.Linear modules, not counting the base inside a LoRALinear."""
    inside = {f"{name}.base" if name else "base" for name in _lora_layers(model)}
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in inside]


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def _short_list(names: list[str], limit: int = 20) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_lora(model: nn.Module, target_modules: str | Iterable[str], r: int, alpha: float | None = None,
               **kwargs) -> list[str]:
    """Wrap the matching ``nn.Linear`` submodules of ``model`` in :class:`LoRALinear`, in place.

    Args:
        model: any ``nn.Module``.
        target_modules: one name or a list of names. A module matches a name when its full dotted name
            equals it or ends with ``"." + name`` — so ``["q", "v"]`` matches ``blocks.0.attn.q``,
            ``blocks.1.attn.v``, ... (PEFT's rule for a list; regular expressions are not supported).
        r, alpha, **kwargs: passed to :class:`LoRALinear` (``dropout``, ``init``, ``rank_stabilized``,
            ``impl``, ``adapter_dtype``).

    Every parameter of the model is frozen except the new ``lora_A`` and ``lora_B``. To train a head next to
    LoRA (PEFT's ``modules_to_save``), unfreeze it yourself afterwards — and save it yourself too:
    :func:`save_adapter` writes only ``lora_A`` and ``lora_B`` (it warns when other parameters are trainable).
    Only ``nn.Linear`` layers are wrapped: Hugging Face's GPT-2 stores its projections in ``Conv1D`` modules
    (weight ``(in, out)``; PEFT's ``fan_in_fan_out=True``), which raise a ``TypeError`` here.
    Returns the replaced modules' names, in model order.

    Raises:
        ValueError: a name matches no module (the message lists the ``nn.Linear`` modules there are),
            or a matching module (or ``model`` itself) already has LoRA.
        TypeError: a name matches a module that is not an ``nn.Linear``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
    if isinstance(model, LoRALinear):
        raise ValueError("model is itself a LoRALinear, so it already has LoRA: apply_lora would nest a second "
                         "adapter inside it. Pass the model that contains it, or merge_lora() it first.")
    patterns = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"target_modules must be a module name or a non-empty list of names such as "
                         f"['q', 'v'], got {target_modules!r}.")
    modules = dict(model.named_modules())
    lora_inside = {f"{n}.{child}" if n else child for n in _lora_layers(model) for child in ("base", "lora_dropout")}
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in modules if n and n not in lora_inside and _matches(n, pattern)]
        if not hits:
            raise ValueError(f"target_modules entry {pattern!r} matches no module of the model. Use a full "
                             f"dotted name or its last part(s). The nn.Linear modules are: "
                             f"{_short_list(_linear_names(model))}.")
        for n in hits:
            if isinstance(modules[n], LoRALinear):
                raise ValueError(f"{n!r} already has LoRA (it is a LoRALinear): apply_lora was called twice "
                                 "on it. Leave it out of target_modules, or merge_lora() first.")
            if not isinstance(modules[n], nn.Linear):
                raise TypeError(f"target_modules entry {pattern!r} matches {n!r}, which is a "
                                f"{type(modules[n]).__name__}, not an nn.Linear: LoRALinear wraps Linear layers "
                                f"only. Name the Linear layers inside it instead, e.g. "
                                f"{_short_list([x for x in _linear_names(model) if x.startswith(n + '.')], 4)}.")
        chosen.update(hits)
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in _lora_layers(model).values():   # adapters added earlier stay trainable
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    replaced = [n for n in modules if n in chosen]
    for n in replaced:
        _replace(model, n, LoRALinear(modules[n], r, alpha, **kwargs))
    return replaced


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every :class:`LoRALinear` in ``model`` and put its (plain ``nn.Linear``) base back, in place.

    Returns the model (or, when ``model`` itself is a ``LoRALinear``, its merged base layer). The merged
    weights stay frozen (``requires_grad=False``), like the rest of the model.
    """
    if isinstance(model, LoRALinear):
        if not model.merged:
            model.merge()
        return model.base
    for name, layer in _lora_layers(model).items():
        if not layer.merged:
            layer.merge()
        _replace(model, name, layer.base)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameter entries (shared parameters counted once).

    Works on the meta device too, so a huge layer can be counted without allocating it.
    """
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------- adapters on their own


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors only: ``{"<module name>.lora_A": (r, in), "<module name>.lora_B": (out, r)}``.

    Detached views of the parameters (clone them to keep a snapshot). Raises ``ValueError`` when the
    model has no :class:`LoRALinear`.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRALinear layers, so it has no adapter: call apply_lora() first.")
    state = {}
    for name, layer in layers.items():
        prefix = f"{name}." if name else ""
        state[prefix + "lora_A"] = layer.lora_A.detach()
        state[prefix + "lora_B"] = layer.lora_B.detach()
    return state


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy adapter tensors (from :func:`lora_state_dict`) into the model's LoRA layers, in place.

    Values are cast to each parameter's dtype and device. Raises ``ValueError`` for a missing or an
    unexpected key, a shape that differs (usually a different r), or a merged layer; ``TypeError`` when
    a value is not a tensor.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of tensors (from lora_state_dict), not {type(state).__name__}.")
    expected = lora_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"state does not fit this model's adapter: missing keys {_short_list(missing, 6)}; "
                         f"unexpected keys {_short_list(unexpected, 6)}. Apply LoRA to the same modules "
                         "(same target_modules) as the model the adapter was saved from.")
    for key, target in expected.items():
        value = state[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"state[{key!r}] must be a torch.Tensor, not {type(value).__name__}.")
        if value.shape != target.shape:
            raise ValueError(f"state[{key!r}] has shape {tuple(value.shape)} but this model's {key} is "
                             f"{tuple(target.shape)}: the adapter was probably trained with a different r. "
                             "Build the model with the adapter's r.")
    merged = [name for name, layer in _lora_layers(model).items() if layer.merged]
    if merged:
        raise ValueError(f"cannot load an adapter into merged layers ({_short_list(merged, 6)}): their weights "
                         "hold the old ΔW. Call unmerge() on them first.")
    for key, target in expected.items():
        target.copy_(state[key])


def _layer_config(layer: LoRALinear) -> dict:
    return {"r": layer.r, "alpha": layer.alpha, "rank_stabilized": layer.rank_stabilized, "init": layer.init,
            "scaling": layer.scaling}


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Write :func:`lora_state_dict` to a ``.safetensors`` file (no pickle), with each layer's r, alpha,
    rsLoRA flag, init and the scaling it used in the file's metadata (``"lora_edu"``, a JSON string).

    Only ``lora_A`` and ``lora_B`` are written. A ``UserWarning`` names any other trainable parameter
    (a head you unfroze, PEFT's ``modules_to_save``): it would be lost, so save it separately.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    adapter = {id(p) for layer in _lora_layers(model).values() for p in (layer.lora_A, layer.lora_B)}
    others = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in adapter]
    if others:
        warnings.warn(f"save_adapter writes lora_A and lora_B only; these trainable parameters are not saved: "
                      f"{_short_list(others, 6)}. Save them yourself, e.g. torch.save(model.head.state_dict(), ...).",
                      UserWarning, stacklevel=2)
    config = {name: _layer_config(layer) for name, layer in _lora_layers(model).items()}
    save_file(state, str(path), metadata={"format": _FORMAT, "lora_edu": json.dumps(config, sort_keys=True)})


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load an adapter written by :func:`save_adapter` into a model with the same LoRA layers, in place.

    Checks the file's metadata first: every layer's r, alpha, rank_stabilized and scaling must match the
    model's (otherwise the same tensors would mean a different ΔW; files without a recorded scaling get
    the one their alpha, r and rsLoRA flag imply), and an adapter trained from ``init="pissa"``
    needs a model built with ``init="pissa"`` too, because its frozen weights are the PiSSA residual
    ``W0 - U_r S_r Vh_r`` (kaiming and gaussian differ only in where A started, so they are
    interchangeable once A is loaded). Raises ``ValueError`` on any mismatch.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("format") != _FORMAT or "lora_edu" not in meta:
        raise ValueError(f"{Path(path).name} is not a lora_edu adapter file (no lora_edu metadata); write it "
                         "with save_adapter(), or load plain tensors with load_lora_state_dict().")
    saved = json.loads(meta["lora_edu"])
    layers = _lora_layers(model)
    for name, layer in layers.items():
        cfg = saved.get(name)
        if cfg is None:
            continue  # reported as a missing key by load_lora_state_dict
        ours = _layer_config(layer)
        cfg.setdefault("scaling", cfg["alpha"] / (math.sqrt(cfg["r"]) if cfg["rank_stabilized"] else cfg["r"]))
        for key in ("r", "alpha", "rank_stabilized", "scaling"):
            if not (cfg[key] == ours[key] or (key == "scaling" and math.isclose(cfg[key], ours[key], rel_tol=1e-12))):
                raise ValueError(f"adapter layer {name!r} was saved with {key}={cfg[key]!r} but the model's layer "
                                 f"has {key}={ours[key]!r}: apply_lora with the adapter's settings "
                                 f"(r={cfg['r']}, alpha={cfg['alpha']:g}, rank_stabilized={cfg['rank_stabilized']}).")
        if (cfg["init"] == "pissa") != (ours["init"] == "pissa"):
            raise ValueError(f"adapter layer {name!r} was trained from init={cfg['init']!r} but the model's layer "
                             f"uses init={ours['init']!r}: a PiSSA adapter belongs on the PiSSA residual weights, "
                             "so build both with init='pissa' (or both without).")
    load_lora_state_dict(model, load_file(str(path)))
