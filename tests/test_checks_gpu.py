"""Chapter 07's exercise checks: the right answers pass, typical wrong ones get a message naming the slip."""
from __future__ import annotations

import pytest

from lora_edu.checks import Feedback
from lora_edu.checks.gpu import (check_adam_bytes, check_break_even_tokens, check_elementwise_bytes,
                                 check_flop_fraction, check_gpt3_lora_params, check_saved_bytes)

T, D, R, P = 8192, 4096, 8, 124_439_808
D_IN, D_OUT, W = 768, 3072, 768          # GPT-2 small's fc1, and its width (chapter 07's exercises 1 and 2)


def test_right_answers_pass(capsys):
    check_flop_fraction(R * (D_IN + D_OUT) / (D_IN * D_OUT), D_IN, D_OUT, R)
    check_flop_fraction(2 * R / D, D, D, R)                       # square: 2r/d
    check_elementwise_bytes(3 * T * W * 2, T, W)
    check_saved_bytes(T * R * 2, T, R, d=D)
    check_break_even_tokens(D / 2, D, D, R)
    check_break_even_tokens(768 * 2304 / (768 + 2304), 768, 2304, 8)
    check_adam_bytes(2 * P * 4, P)
    check_gpt3_lora_params(18_874_368)
    check_gpt3_lora_params(18_874_368.0)
    assert capsys.readouterr().out.count("✅ Correct") == 9


EXACT = R * (D_IN + D_OUT) / (D_IN * D_OUT)


@pytest.mark.parametrize("wrong, message", [
    (100 * EXACT, "percentage"), (R / D_OUT, "counts only x·Aᵀ"), (R / D_IN, "counts only t·Bᵀ"),
    (1 / EXACT, "inverse"), (2 * R / D_IN, "d = d_in = 768, the formula of a square layer"),
    (2 * R / D_OUT, "d = d_out = 3072"), (R * EXACT, "not r²"), (0.013, "close, but rounded"),
    (0.5, "not right"), (None, "no answer yet"), ("a lot", "should be a number"), (True, "should be a number"),
])
def test_flop_fraction_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_flop_fraction(wrong, D_IN, D_OUT, R)


def test_flop_fraction_square_layer_slips():
    """On a square layer, 2r/d is the answer (not a slip), and 0.0039 typed in is a rounding, not a method."""
    check_flop_fraction(2 * R / D, D, D, R)
    with pytest.raises(Feedback, match="close, but rounded"):
        check_flop_fraction(0.0039, D, D, R)
    with pytest.raises(Feedback, match="counts only"):
        check_flop_fraction(R / D, D, D, R)


@pytest.mark.parametrize("wrong, message", [
    (3 * T * W * 4, "float32"), (2 * T * W * 2, "counts 2 of the 3 tensors: the addition reads two"),
    (4 * T * W * 2, "one too many"), (3 * T * W, "entries, not bytes"), (8 * 3 * T * W * 2, "bits"),
    (T * W * 2, "one tensor's bytes"), (36 * 2**20 * 1.001, "close, but rounded"), (12345, "not right"),
])
def test_elementwise_bytes_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_elementwise_bytes(wrong, T, W)


def test_elementwise_bytes_of_a_scaling_pass():
    """The same check for a kernel that reads one tensor and writes one (v = u·scaling)."""
    check_elementwise_bytes(2 * T * D * 2, T, D, n_read=1, n_write=1, name="scaling_bytes")
    with pytest.raises(Feedback, match="`scaling_bytes`.*one too many"):
        check_elementwise_bytes(3 * T * D * 2, T, D, n_read=1, n_write=1, name="scaling_bytes")


@pytest.mark.parametrize("wrong, message", [
    (T * R * 4, "float32"), (T * R, "entries"), (T * D * 2, "never saves a full-width output"),
    (T * R * 2 + D * R * 2, "adds the tiny scaling·B"), (130_000, "close, but rounded"), (7, "not right"),
])
def test_saved_bytes_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_saved_bytes(wrong, T, R, d=D)


def test_saved_bytes_t_plus_sb_is_not_called_full_width():
    """t + scaling·B is a (T, 12)-sized number of bytes: it used to get the 'full-width output' message."""
    with pytest.raises(Feedback) as err:
        check_saved_bytes(T * R * 2 + D * R * 2, T, R, d=D)
    assert "full-width" not in str(err.value)


@pytest.mark.parametrize("wrong, message", [
    (D, "two\\* thin matmuls|\\*two\\*"), (2 * D * R * D, "merge's FLOPs"), (D / 2 * R, "r cancels"),
    ((2 * D * R * D + D * D) / (2 * R * 2 * D), "adding ΔW to W"), (2060, "close, but rounded"), (17, "not right"),
])
def test_break_even_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_break_even_tokens(wrong, D, D, R)


@pytest.mark.parametrize("wrong, message", [
    (P * 4, "two"), (2 * P, "entries, not bytes"), (3 * P * 4, "adds the gradients"), (4 * P * 4, "weights and the"),
    (2 * P * 4 / 1e9, "GB"), (2 * P * 4 / 2**30, "GiB"), (996_000_000, "close, but rounded"), (1, "not right"),
])
def test_adam_bytes_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_adam_bytes(wrong, P)


@pytest.mark.parametrize("wrong, message", [
    (18_874_368 // 2, "half the answer"), (196_608, "one layer's worth"), (96 * 2 * 12288**2, "full matrices \\(Wq and Wv\\)"),
    (18_874_369, "too large"), (1.5, "whole number"),
])
def test_gpt3_lora_params_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_gpt3_lora_params(wrong)


@pytest.mark.parametrize("wrong, message", [
    (75_497_472 // 2, "half the answer.*all 4 matrices"), (18_874_368, "the paper's adapter"),
    (96 * 4 * 12288**2, "full matrices \\(all 4 matrices\\)"), (4 * 8 * 2 * 12288, "one layer's worth"),
    (75_497_473, "too large"),
])
def test_gpt3_lora_params_four_matrices_slips(wrong, message):
    """Chapter 07's exercise 6: r = 8 on Wq, Wk, Wv, Wo (the paper's own r = 4 on Wq, Wv is printed above it)."""
    check_gpt3_lora_params(75_497_472, r=8, n_matrices=4)
    with pytest.raises(Feedback, match=message):
        check_gpt3_lora_params(wrong, r=8, n_matrices=4)


def test_break_even_message_follows_the_value(capsys):
    """The message used to say 'fewer than one batch' whatever the answer."""
    check_break_even_tokens(D / 2, D, D, R)                         # 2048 tokens
    assert "25% of one batch" in capsys.readouterr().out
    check_break_even_tokens(65536 / 2, 65536, 65536, R)             # 32768 tokens
    assert "4.0 batches" in capsys.readouterr().out


def test_gpt3_ratio_is_the_one_the_chapter_prints(capsys):
    """One ratio for one thing: GPT-3's exact parameter count over the adapter's (the chapter prints the same)."""
    from lora_edu.memory import TransformerShape, lora_parameters

    shape = TransformerShape.gpt3_175b()
    ratio = shape.parameters() / lora_parameters(shape, 4, ("q_proj", "v_proj"))
    check_gpt3_lora_params(18_874_368)
    out = capsys.readouterr().out
    assert f"{ratio:,.0f}×" in out and "9,251×" in out and "9,272" not in out


def test_elementwise_message_uses_the_recorded_bandwidth(capsys):
    from lora_edu.traffic import recorded_ceilings

    bw = recorded_ceilings()["bandwidth"]
    check_elementwise_bytes(3 * T * W * 2, T, W)
    assert f"{bw / 1e12:.2f} TB/s" in capsys.readouterr().out


@pytest.mark.parametrize("check, args", [
    (check_flop_fraction, (D_IN, D_OUT, R)), (check_elementwise_bytes, (T, W)), (check_saved_bytes, (T, R)),
    (check_break_even_tokens, (D, D, R)), (check_adam_bytes, (P,)), (check_gpt3_lora_params, ()),
])
def test_unanswered(check, args):
    from lora_edu.checks import NotAnswered

    with pytest.raises(NotAnswered):
        check(None, *args)
