"""Checks for chapter 06 (fine-tuning with LoRA).

Each check computes the right answer itself (with :mod:`lora_edu.experiments`, :mod:`lora_edu.lowrank` or
plain NumPy/torch) and recognises the usual slips: a forgotten ``mod``, singular values not squared, φ
divided by the wrong size, ``alpha`` instead of ``alpha / r``, ``A`` counted without ``B``, a population
standard deviation or the normal's 1.96 in a confidence interval over five seeds, an unpaired interval where
the seeds pair two settings, a learning rate whose best is not at the end of its sweep, ...
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lora_edu.checks import Feedback, NotAnswered, check_integer, exercise, passed, require_answer


def _call(fn: Callable, name: str, *args: Any) -> Any:
    """Call the learner's function; a crash becomes feedback instead of a traceback."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise NotAnswered(f"`{name}` still raises NotImplementedError: replace that line with your code.") from None
    except Exception as exc:  # noqa: BLE001 — any crash in the learner's code is feedback
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise Feedback(f"Calling `{name}` raised {type(exc).__name__}: {first}") from None


def _numbers(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise Feedback(f"`{name}` should return numbers (a list, an array or a tensor), not "
                       f"{type(value).__name__}.") from None


def _function(fn: Any, name: str, signature: str) -> None:
    require_answer(fn, name)
    if not callable(fn):
        raise Feedback(f"`{name}` should be a function: def {name}{signature}: ...")


# --------------------------------------------------------------------------- section 1: the task


@exercise
def check_downstream_answer(fn: Callable, seed: int = 0) -> None:
    """``fn(x)`` must give the downstream answer ``reverse(x) + 1 (mod 16)`` for a list of 8 symbols."""
    import torch

    from lora_edu.experiments import TASKS

    _function(fn, "downstream_answer", "(x)")
    rng = np.random.default_rng(seed)
    cases = [list(range(8)), [15, 3, 15, 0, 7, 14, 1, 9]] + [rng.integers(0, 16, 8).tolist() for _ in range(5)]
    for x in cases:
        expected = TASKS.answer("reverse+1", torch.tensor(x)).tolist()
        got = _numbers(_call(fn, "downstream_answer", list(x)), "downstream_answer(x)")
        if got.shape != (8,):
            raise Feedback(f"`downstream_answer({x})` should return 8 symbols, got shape {got.shape}.")
        if not (np.all(np.isfinite(got)) and np.all(got == np.round(got))):
            raise Feedback(f"`downstream_answer({x})` returned {got.tolist()}: the answer is whole symbols "
                           "(integers 0..15), not fractions.")
        got = got.astype(int).tolist()
        if got == expected:
            continue
        xs = np.array(x)
        slips = [
            ((xs[::-1] + 1).tolist(), "Some symbols came out as 16: the alphabet is 0..15, so 15 + 1 wraps round "
                                      "to 0 — use % 16."),
            (xs[::-1].tolist(), "That is plain `reverse`: every symbol must also go up by 1 (mod 16)."),
            (((xs + 1) % 16).tolist(), "That is `copy+1`: the order must be reversed as well."),
            (((xs[::-1] - 1) % 16).tolist(), "The shift goes the wrong way: add 1, do not subtract it."),
            (((xs[::-1] + 2) % 16).tolist(), "That is `reverse+2`, a pretraining task: the downstream task adds 1."),
            (xs.tolist(), "That is the input unchanged (`copy`)."),
        ]
        for wrong, message in slips:
            if got == wrong:
                raise Feedback(f"For x = {x} you returned {got}. {message}")
        raise Feedback(f"For x = {x} the answer is {expected}, you returned {got}.")
    passed(f"`reverse+1` reverses the 8 symbols and adds 1 mod 16 — e.g. {cases[1]} → "
           f"{TASKS.answer('reverse+1', torch.tensor(cases[1])).tolist()}.")


# --------------------------------------------------------------------------- counting parameters


def _shapes(cfg: Any, targets: Sequence[str]) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of every targeted matrix of one block."""
    d, m = cfg.d_model, cfg.d_mlp
    known = {"q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "o_proj": (d, d), "fc1": (d, m), "fc2": (m, d)}
    bad = [t for t in targets if t not in known]
    if bad:
        raise ValueError(f"unknown target module(s) {bad}; known: {sorted(known)}")
    return [(t, *known[t]) for t in targets]


def expected_lora_params(cfg: Any, r: int, targets: Sequence[str]) -> int:
    """LoRA's trainable parameters on ``targets`` in every block of a model with config ``cfg``."""
    return cfg.n_layers * sum(r * (k + d) for _, k, d in _shapes(cfg, targets))


@exercise
def check_trainable_params(value: Any, cfg: Any, r: int, targets: Sequence[str],
                           name: str = "trainable") -> None:
    """A count of LoRA's trainable parameters: ``n_layers × Σ r (in + out)`` over the targeted matrices."""
    require_answer(value, name)
    shapes = _shapes(cfg, targets)
    expected = expected_lora_params(cfg, r, targets)
    per_layer = expected // cfg.n_layers
    try:
        got = int(value) if float(value).is_integer() else None
    except (TypeError, ValueError):
        got = None
    slips = [
        (per_layer, f"that is one block's share, but the model has {cfg.n_layers} blocks, each with its own adapters"),
        (cfg.n_layers * sum(r * k for _, k, _ in shapes), "you counted A (r × in_features) but not B (out_features × r)"),
        (cfg.n_layers * sum(r * d for _, _, d in shapes), "you counted B (out_features × r) but not A (r × in_features)"),
        (cfg.n_layers * sum(k * d for _, k, d in shapes), "that is the size of the full matrices W, which stay frozen: "
                                                          "LoRA trains r × (in + out) per matrix"),
        (cfg.n_layers * len(shapes) * r * 2 * cfg.d_model, f"not every matrix is d_model × d_model: fc1 is "
                                                           f"{cfg.d_model} → {cfg.d_mlp}, fc2 {cfg.d_mlp} → {cfg.d_model}"),
        (cfg.n_layers * r * (shapes[0][1] + shapes[0][2]), "you counted only one of the targeted matrices per block"),
        (cfg.n_layers * sum(r * (k + d) for t, k, d in shapes if t not in ("fc1", "fc2")),
         "you counted only the attention matrices: the MLP's fc1 and fc2 are nn.Linear layers too"),
    ]
    reasons = [message for wrong, message in slips if wrong == got and wrong != expected]
    if got is not None and reasons:
        text = "; or ".join(dict.fromkeys(reasons))
        raise Feedback(f"`{name}` = {got} is not right. Perhaps {text}.")
    check_integer(value, expected, name,
                  hint=f"Each targeted matrix of shape (out, in) gets A (r, in) and B (out, r): r (in + out) "
                       f"entries; there are {len(shapes)} targeted matrices in each of {cfg.n_layers} blocks.")
    passed(f"{expected:,} trainable parameters: {cfg.n_layers} blocks × ("
           + " + ".join(f"{r}·({k}+{d})" for _, k, d in shapes) + ").")


@exercise
def check_adapter_data_bytes(value: Any, cfg: Any, r: int, targets: Sequence[str], bytes_per_value: int = 4) -> None:
    """Bytes of tensor data in a float32 LoRA adapter on ``targets`` of a model with config ``cfg``."""
    require_answer(value, "adapter_data_bytes")
    trainable = expected_lora_params(cfg, r, targets)
    expected = trainable * bytes_per_value
    slips = [(trainable, "that is the number of parameters; each float32 value takes 4 bytes"),
             (trainable * 2, "2 bytes per value is bfloat16/float16; these adapters are float32 (4 bytes)"),
             (trainable * 8, "8 bytes per value is float64; these adapters are float32 (4 bytes)"),
             (trainable * 32, "float32 is 32 *bits*, i.e. 4 bytes"),
             (trainable // cfg.n_layers * 4, f"that is one block's adapters; the model has {cfg.n_layers} blocks"),
             (cfg.n_layers * sum(k * d for _, k, d in _shapes(cfg, targets)) * 4,
              "that is the size of the full matrices W; the adapter stores A and B only")]
    try:
        got = int(value)
    except (TypeError, ValueError):
        got = None
    reasons = [message for wrong, message in slips if wrong == got and wrong != expected]
    if reasons:
        raise Feedback(f"`adapter_data_bytes` = {got} is not right. Perhaps {'; or '.join(dict.fromkeys(reasons))}.")
    check_integer(value, expected, "adapter_data_bytes",
                  hint="Count the trainable parameters (r × (in + out) per adapted matrix), then 4 bytes each.")
    passed(f"{trainable:,} float32 values × 4 bytes = {expected:,} bytes (the file adds a small JSON header).")


# --------------------------------------------------------------------------- seeds and intervals


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@exercise
def check_t_interval(fn: Callable) -> None:
    """``fn(values)``: ``(mean, half_width)`` of the 95 % Student-t interval, sample std (ddof = 1)."""
    _function(fn, "t_interval_95", "(values)")
    for values in ([1.0, 2.0, 4.0, 3.0, 5.0], [-2.9, -3.1, -2.8, -3.0, -3.2], [10.0, 12.0, 11.0]):
        x = np.asarray(values)
        n = x.size
        mean, sd, t = float(x.mean()), float(x.std(ddof=1)), _T975[n - 1]
        expected = t * sd / math.sqrt(n)
        got = _call(fn, "t_interval_95", list(values))
        try:
            got_mean, got_half = (float(v) for v in got)
        except (TypeError, ValueError):
            raise Feedback(f"`t_interval_95` should return two numbers (mean, half_width), not {got!r}.") from None
        if not math.isclose(got_mean, mean, rel_tol=1e-6, abs_tol=1e-9):
            raise Feedback(f"For {values} the mean is {mean:.4g}, you returned {got_mean:.4g}.")
        if math.isclose(got_half, expected, rel_tol=1e-3):
            continue
        slips = [
            (t * float(x.std(ddof=0)) / math.sqrt(n), "you used the population standard deviation (ddof=0); over a "
                                                      "few seeds use the sample one, np.std(values, ddof=1)"),
            (1.96 * sd / math.sqrt(n), f"1.96 is the normal distribution's quantile; with {n} seeds use Student's t "
                                       f"with n - 1 = {n - 1} degrees of freedom ({t})"),
            (t * sd, "that is t times the standard deviation of one seed: the interval of the *mean* divides by "
                     "sqrt(n)"),
            (sd / math.sqrt(n), "that is the standard error alone: multiply it by the t quantile"),
            (t * sd / n, "divide by sqrt(n), not by n"),
            (2 * expected, "that is the whole width; return the half-width (mean ± half_width)"),
        ]
        for wrong, message in slips:
            if math.isclose(got_half, wrong, rel_tol=1e-3):
                raise Feedback(f"For {values} you returned half-width {got_half:.4g}: {message}.")
        raise Feedback(f"For {values} the half-width is t·s/sqrt(n) = {t}·{sd:.4g}/sqrt({n}) = {expected:.4g}, "
                       f"you returned {got_half:.4g}.")
    passed("mean ± t(0.975, n−1) · s / sqrt(n) with the sample s — with 5 seeds t = 2.776, not 1.96.")


# Two settings on the same five data streams (seeds): B is a little better on every seed, but the seeds move
# both a lot, so two separate intervals overlap while the paired one does not.
_PAIRED_CASES = (([-2.1, -3.0, -1.2, -2.6, -1.9], [-2.3, -3.3, -1.3, -2.9, -2.0]),
                 ([0.4, -0.8, 1.1, 0.2, -0.3], [0.1, -0.9, 0.6, 0.1, -0.7]),
                 ([5.0, 7.0, 6.0], [4.0, 6.5, 4.5]))


@exercise
def check_paired_interval(fn: Callable) -> None:
    """``fn(a, b)``: ``(mean, half_width)`` of the seed-by-seed differences ``a[i] - b[i]`` (95 % Student t)."""
    _function(fn, "paired_interval", "(a, b)")
    for a, b in _PAIRED_CASES:
        xa, xb = np.asarray(a), np.asarray(b)
        d = xa - xb
        n = d.size
        t = _T975[n - 1]
        mean, expected = float(d.mean()), t * float(d.std(ddof=1)) / math.sqrt(n)
        got = _call(fn, "paired_interval", list(a), list(b))
        try:
            got_mean, got_half = (float(v) for v in got)
        except (TypeError, ValueError):
            raise Feedback(f"`paired_interval` should return two numbers (mean, half_width), not {got!r}.") from None
        label = f"For a = {a}, b = {b}"
        if math.isclose(got_mean, -mean, rel_tol=1e-6) and not math.isclose(mean, 0.0, abs_tol=1e-12):
            raise Feedback(f"{label} you returned mean {got_mean:.4g}: that is b − a; the question asks for a − b.")
        if not math.isclose(got_mean, mean, rel_tol=1e-6, abs_tol=1e-9):
            raise Feedback(f"{label} the mean difference is {mean:.4g}, you returned {got_mean:.4g}.")
        if math.isclose(got_half, expected, rel_tol=1e-3):
            continue
        sa, sb = float(xa.std(ddof=1)), float(xb.std(ddof=1))
        slips = [
            (t * math.sqrt(sa ** 2 / n + sb ** 2 / n), "that treats a and b as independent samples; seed i of a and "
                                                       "seed i of b saw the same data, so take the differences "
                                                       "a[i] − b[i] first and build the interval of those"),
            (t * (sa + sb) / math.sqrt(n), "that adds the two separate half-widths; the paired interval comes from "
                                           "the spread of the differences a[i] − b[i]"),
            (t * float(d.std(ddof=0)) / math.sqrt(n), "you used the population standard deviation (ddof=0) of the "
                                                      "differences; use the sample one (ddof=1)"),
            (1.96 * float(d.std(ddof=1)) / math.sqrt(n), f"1.96 is the normal's quantile; with {n} seeds use "
                                                         f"Student's t with {n - 1} degrees of freedom ({t})"),
            (t * float(d.std(ddof=1)), "divide by sqrt(n): the interval is for the *mean* difference"),
        ]
        for wrong, message in slips:
            if math.isclose(got_half, wrong, rel_tol=1e-3):
                raise Feedback(f"{label} you returned half-width {got_half:.4g}: {message}.")
        raise Feedback(f"{label} the half-width is t·s_d/sqrt(n) = {t}·{float(d.std(ddof=1)):.4g}/sqrt({n}) = "
                       f"{expected:.4g} (s_d: the sample standard deviation of a − b), you returned {got_half:.4g}.")
    passed("pair by seed: the interval of the differences a[i] − b[i] is narrow when the seeds move both settings "
           "alike — narrower than two separate intervals suggest.")


@exercise
def check_edge_rates(answer: Any, sweeps: Mapping[str, Mapping[float, float]]) -> None:
    """The settings in ``sweeps`` (label -> {learning rate: validation loss}) whose best (lowest) rate is the
    smallest or the largest one tried: the ones whose tuning is not finished."""
    require_answer(answer, "at_the_edge")
    if isinstance(answer, str) or not isinstance(answer, (list, tuple, set, frozenset)):
        raise Feedback(f"`at_the_edge` should be a list (or set) of labels such as {sorted(sweeps)[:2]}, "
                       f"not {type(answer).__name__}.")
    unknown = [a for a in answer if a not in sweeps]
    if unknown:
        raise Feedback(f"{unknown} {'is' if len(unknown) == 1 else 'are'} not among the settings: {sorted(sweeps)}.")
    best = {label: min(losses, key=losses.get) for label, losses in sweeps.items()}
    expected = {label for label, lr in best.items() if lr in (min(sweeps[label]), max(sweeps[label]))}
    got = set(answer)
    worst = {label: max(losses, key=losses.get) for label, losses in sweeps.items()}
    for label in sorted(got - expected):
        lrs = sorted(sweeps[label])
        note = f" (the rate at the end, {worst[label]:g}, is its *worst*)" if worst[label] in (lrs[0], lrs[-1]) else ""
        raise Feedback(f"{label}: its best rate, {best[label]:g}, has tried rates on both sides ({lrs}): the sweep "
                       f"brackets it{note}.")
    for label in sorted(expected - got):
        lrs = sorted(sweeps[label])
        side = "largest" if best[label] == lrs[-1] else "smallest"
        raise Feedback(f"{label} is missing: its best rate, {best[label]:g}, is the {side} it tried ({lrs}), so a "
                       f"rate beyond it might be better still.")
    passed(f"{len(expected)} of {len(sweeps)} settings have their best rate at an end of the sweep"
           + (f" ({', '.join(sorted(expected))})" if expected else "")
           + ": compare those only where they win anyway, or sweep further.")


# --------------------------------------------------------------------------- the rank a task needs


@exercise
def check_smallest_rank(answer: Any, scores: Mapping[int, float], threshold: float = 99.0,
                        seeds: Mapping[int, Sequence[float]] | None = None) -> None:
    """The smallest r in ``scores`` (r -> mean exact match, %) whose score is at least ``threshold``. ``seeds``
    (optional, r -> each seed's exact match) lets the message say how many seeds pull a larger r back below."""
    require_answer(answer, "smallest_good_r")
    good = sorted(r for r, s in scores.items() if s >= threshold)
    if not good:
        raise Feedback(f"No rank in {sorted(scores)} reaches {threshold}% here, so this exercise has no right "
                       "answer for these numbers: tell your instructor.")
    expected = good[0]
    if isinstance(answer, bool) or answer not in scores:
        raise Feedback(f"`smallest_good_r` = {answer!r} is not one of the ranks tried: {sorted(scores)}.")
    best = max(scores, key=lambda r: (scores[r], -r))
    if answer == best and answer != expected:
        raise Feedback(f"r = {answer} has the best score, but a smaller rank already reaches {threshold}%: the "
                       "question is the *smallest* r that does.")
    if answer > expected and scores[answer] >= threshold:
        raise Feedback(f"r = {answer} reaches {threshold}%, but a smaller r does too: look further up the table.")
    if answer > expected:
        raise Feedback(f"r = {answer} scores {scores[answer]:.1f}%, below {threshold}% — and a smaller r does "
                       f"reach it: look for the smallest r whose score is at least {threshold}%.")
    if answer < expected:
        raise Feedback(f"r = {answer} scores {scores[answer]:.1f}%, below {threshold}%.")
    above = [r for r in scores if r > expected and scores[r] < threshold]
    note = ""
    if above:
        r = above[0]
        values = list((seeds or {}).get(r, ()))
        if values:
            low = [round(float(v), 1) for v in values if v < threshold]
            note = (f" (and r = {r} falls below it again: {len(low)} of its {len(values)} seeds end below "
                    f"{threshold}% ({', '.join(f'{v:g}%' for v in low)}) and pull its mean down)")
        else:
            note = f" (and r = {r} falls below it again: a few bad seeds move a mean of five)"
    passed(f"r = {expected} is the smallest rank with a mean of at least {threshold}% ({scores[expected]:.1f}%)"
           f"{note}.")


# --------------------------------------------------------------------------- section 4: energy of ΔW


@exercise
def check_energy_fraction(fn: Callable, name: str = "my_energy_fraction") -> None:
    """``fn(S, k)``: the share of Σσ² held by the top k singular values (S sorted largest first); ``name``: what the
    learner's function is called in the notebook (the feedback names it)."""
    _function(fn, name, "(S, k)")
    S = np.array([4.0, 2.0, 1.0, 1.0, 0.5])
    total = float(np.sum(S ** 2))
    for k in (1, 2, 4):
        expected = float(np.sum(S[:k] ** 2) / total)
        got = _call(fn, name, S.copy(), k)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise Feedback(f"`{name}(S, {k})` should return one number, not {type(got).__name__}.") from None
        if math.isclose(got, expected, rel_tol=1e-6):
            continue
        slips = [
            (float(np.sum(S[:k]) / np.sum(S)), "You summed the singular values themselves; energy is "
                                               "||M||_F² = Σ σ_i², so square them first."),
            (float(np.sum(S[:k + 1] ** 2) / total), "Off by one: S[:k] holds the top k values (S[:k+1] is k+1)."),
            (float(np.sum(S[:k - 1] ** 2) / total), "Off by one: S[:k] holds the top k values."),
            (float(np.sum(S[:k] ** 2)), "Divide by the total Σ σ_i² to get a share between 0 and 1."),
            (float(np.sum(S[-k:] ** 2) / total), "You took the k *smallest* values: S is sorted largest first, "
                                                 "so the top k are S[:k]."),
            (float(np.sqrt(np.sum(S[:k] ** 2) / total)), "That is the square root of the share: leave the ratio "
                                                         "of squared sums as it is."),
            (1.0 - expected, "That is the share that is left *out* (the Eckart–Young error², relative)."),
        ]
        for wrong, message in slips:
            if math.isclose(got, wrong, rel_tol=1e-6):
                raise Feedback(f"{name}(S, {k}) = {got:.4f} for S = {S.tolist()}. {message}")
        raise Feedback(f"{name}(S, {k}) should be {expected:.4f} for S = {S.tolist()}, got {got:.4f}.")
    passed("the top k directions hold Σ_{i≤k} σ_i² / Σ σ_i² of the energy — e.g. 16/22.25 = 0.72 for the top one "
           "of [4, 2, 1, 1, 0.5].")


# --------------------------------------------------------------------------- section 5: LoRA's update


@exercise
def check_lora_update(fn: Callable, seed: int = 0) -> None:
    """``fn(layer)``: ΔW = scaling · B A of a ``LoRALinear`` (out_features, in_features)."""
    import torch
    from torch import nn

    from lora_edu.lora import LoRALinear

    _function(fn, "lora_update", "(layer)")
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(7, 5), r=3, alpha=12.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = layer.delta_weight().detach()
    got = _call(fn, "lora_update", layer)
    if not isinstance(got, torch.Tensor):
        got = torch.as_tensor(_numbers(got, "lora_update(layer)"))
    got = got.detach().to(expected.dtype)
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    if got.shape != expected.shape:
        if got.shape == (3, 3):
            raise Feedback("You returned an r × r matrix: that is A @ B; ΔW is B @ A, shape (out, in) = (5, 7).")
        if got.shape == (7, 5):
            raise Feedback("You returned ΔWᵀ (in, out): ΔW = scaling · lora_B @ lora_A has shape (out, in) = (5, 7).")
        raise Feedback(f"ΔW should have the weight's shape (out_features, in_features) = (5, 7), not {tuple(got.shape)}.")
    if torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
        passed("ΔW = scaling · B @ A — here (12/3) · (5×3)(3×7), a 5×7 matrix of rank at most 3.")
        return
    slips = [(B @ A, "The scaling is missing: multiply B @ A by layer.scaling (alpha / r = 4 here)."),
             (12.0 * B @ A, "You scaled by alpha; LoRA scales by alpha / r — use layer.scaling."),
             (layer.base.weight.detach() + expected, "That is the merged weight W0 + ΔW; ΔW alone is scaling · B @ A."),
             (-expected, "The sign is flipped.")]
    for wrong, message in slips:
        if torch.allclose(got, wrong, rtol=1e-5, atol=1e-6):
            raise Feedback(message)
    raise Feedback("ΔW has the right shape but wrong values: it is layer.scaling * layer.lora_B @ layer.lora_A.")


# --------------------------------------------------------------------------- section 6: φ


@exercise
def check_phi(fn: Callable, seed: int = 0) -> None:
    """``fn(U1, U2, i, j)``: the LoRA paper's φ = ||U1[:, :i]ᵀ U2[:, :j]||_F² / min(i, j)."""
    from lora_edu.lowrank import subspace_similarity

    _function(fn, "phi", "(U1, U2, i, j)")
    rng = np.random.default_rng(seed)
    U1 = np.linalg.qr(rng.standard_normal((10, 4)))[0]
    U2 = np.linalg.qr(np.column_stack([U1[:, :1] + 0.3 * rng.standard_normal((10, 1)),
                                       rng.standard_normal((10, 5))]))[0]
    for i, j in [(1, 1), (2, 5), (4, 3), (3, 6)]:
        expected = subspace_similarity(U1, U2, i, j)
        got = _call(fn, "phi", U1.copy(), U2.copy(), i, j)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise Feedback(f"`phi` should return one number, not {type(got).__name__}.") from None
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
            continue
        M = U1[:, :i].T @ U2[:, :j]
        slips = [
            (float(np.sum(M ** 2)), "Divide by min(i, j): without it φ is not between 0 and 1."),
            (float(np.sum(M ** 2) / max(i, j)),
             f"Divide by min(i, j) = {min(i, j)}, not by {max(i, j)} (= {'i' if i > j else 'j'} here, the larger "
             "of the two): two subspaces of sizes i < j can overlap completely (φ = 1)."),
            (float(np.linalg.norm(M) / min(i, j)), "Square the Frobenius norm: φ uses ||U1ᵀ U2||_F²."),
            (float(np.sum(np.abs(M)) / min(i, j)), "Use the squared Frobenius norm (sum of squares), not the sum of "
                                                   "absolute values."),
            (float(np.sum((U1[:i, :].T @ U2[:j, :]) ** 2) / min(i, j)) if i == j else math.nan,
             "Take the first i and j *columns* (U[:, :i]), not rows."),
        ]
        for wrong, message in slips:
            if math.isclose(got, wrong, rel_tol=1e-6, abs_tol=1e-9):
                raise Feedback(f"phi(U1, U2, {i}, {j}) = {got:.4f}. {message}")
        raise Feedback(f"phi(U1, U2, {i}, {j}) should be {expected:.4f}, got {got:.4f}. "
                       "φ = ||U1[:, :i].T @ U2[:, :j]||_F² / min(i, j).")
    passed("φ = ||U1[:, :i]ᵀ U2[:, :j]||_F² / min(i, j): the mean squared cosine of the principal angles.")


# --------------------------------------------------------------------------- section 7: scaling


@exercise
def check_scaling(fn: Callable) -> None:
    """``fn(alpha, r, rank_stabilized)``: ``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA."""
    _function(fn, "lora_scaling", "(alpha, r, rank_stabilized)")
    for alpha, r in [(8.0, 4), (8.0, 64), (16.0, 1), (4.0, 16)]:
        for rs in (False, True):
            expected = alpha / math.sqrt(r) if rs else alpha / r
            got = _call(fn, "lora_scaling", alpha, r, rs)
            try:
                got = float(got)
            except (TypeError, ValueError):
                raise Feedback(f"`lora_scaling` should return a number, not {type(got).__name__}.") from None
            if math.isclose(got, expected, rel_tol=1e-9):
                continue
            label = f"lora_scaling({alpha:g}, {r}, rank_stabilized={rs}) = {got:g}"
            other = alpha / r if rs else alpha / math.sqrt(r)
            if r != 1 and math.isclose(got, other, rel_tol=1e-9):
                if rs:
                    raise Feedback(f"{label}: that is plain LoRA's alpha / r; with rank_stabilized=True (rsLoRA) "
                                   "divide by sqrt(r) instead.")
                raise Feedback(f"{label}: that is rsLoRA's alpha / sqrt(r); with rank_stabilized=False plain LoRA "
                               "divides by r.")
            if math.isclose(got, alpha, rel_tol=1e-9) and r != 1:
                raise Feedback(f"{label}: that is alpha alone (the seed's scaling); divide by r (or sqrt(r)).")
            if math.isclose(got, r / alpha, rel_tol=1e-9) or math.isclose(got, math.sqrt(r) / alpha, rel_tol=1e-9):
                raise Feedback(f"{label}: the fraction is upside down — alpha is on top.")
            raise Feedback(f"{label}, expected {expected:g}.")
    passed("α/r shrinks the update as r grows; α/√r (rsLoRA) shrinks it only by √r — at α = 8, r = 64: "
           "0.125 vs 1.")
