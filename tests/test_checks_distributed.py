"""Chapter 08's exercise checks: the right answers pass, typical wrong ones get a message naming the slip,
and unanswered ones end in NotAnswered (or print ⏳ in a learner's workbook)."""
from __future__ import annotations

import pytest

from lora_edu import checks
from lora_edu.checks import Feedback, NotAnswered
from lora_edu.checks.distributed import (check_allreduce_bytes, check_break_even_bandwidth, check_broadcast_bytes,
                                         check_fsdp1_units, check_fsdp_lora_memory, check_ring_seconds,
                                         check_save_plan, check_scaling_efficiency, check_unused_trainable)
from lora_edu.distributed import forward_backward

FULL = 497_759_232
LORA16 = 12 * 4 * 16 * 1536 * 4   # r = 16 on q, k, v, o of GPT-2 small
TOTAL, TRAINABLE, TIED = 124_734_720, 294_912, 50257 * 768
P70, T70 = 68_976_648_192, 16_384_000


def unused_right(model, tokens):
    forward_backward(model, tokens)
    return sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)


def test_right_answers_pass(capsys):
    check_allreduce_bytes(LORA16, n_layers=12, d_model=768, r=16, n_targets=4)
    check_ring_seconds(2 * 7 / 8 * FULL / 25e9, n_bytes=FULL, world_size=8, bus_bandwidth=25e9)
    check_broadcast_bytes(4 * TOTAL, total=TOTAL, trainable=TRAINABLE, tied=TIED)
    check_unused_trainable(unused_right)
    check_unused_trainable(lambda m, t: set(unused_right(m, t)))   # any collection of names will do
    check_fsdp1_units("separate")
    check_save_plan("everyone_gathers_rank0_writes")
    check_scaling_efficiency(0.0428 / 0.0436, t_one=0.0428, t_two=0.0436)
    check_break_even_bandwidth(2 * 7 / 8 * FULL / 0.035, n_bytes=FULL, world_size=8, backward_s=0.035)
    check_fsdp_lora_memory((P70 * 2 + T70 * 16) / 8, n_params=P70, n_trainable=T70, world_size=8)
    assert capsys.readouterr().out.count("✅ Correct") == 10


@pytest.mark.parametrize("wrong, messages", [
    # r = 8 on W_q, W_v (the chapter's adapter, the likeliest slip) is also the number of entries: both named
    # (it got only "entries, not bytes" before)
    (12 * 2 * 8 * 1536 * 4, ["chapter's adapter, r = 8 on W_q and W_v", "entries, not bytes"]),
    # half: r = 8, two matrices, one of A and B or bfloat16 -- each named (only "A and B" before)
    (LORA16 // 2, ["uses r = 8", "two matrices", "one of A and B", "bfloat16"]),
    (LORA16 // 12, ["one layer"]), (2 * LORA16, ["twice the buffer"]), (12 * 4 * 16 * 16 * 4, ["r²"]),
    (4.72e6, ["rounded"]),   # a rounded number typed in (a bare "not right" before)
    (FULL, ["not right"]), ("4.7 MB", ["should be a number"]),
])
def test_allreduce_bytes_slips(wrong, messages):
    with pytest.raises(Feedback) as info:
        check_allreduce_bytes(wrong, n_layers=12, d_model=768, r=16, n_targets=4)
    for message in messages:
        assert message in str(info.value)


@pytest.mark.parametrize("wrong, message", [
    (FULL / 25e9, "leaves out the ring"), (2 * FULL / 25e9, "uses 2 instead"), (7 / 8 * FULL / 25e9, "only the reduce"),
    (1000 * 2 * 7 / 8 * FULL / 25e9, "milliseconds"), (8 * 2 * 7 / 8 * FULL / 25e9, "bits"), (1.0, "not right"),
    (0.0348, "rounded"),
])
def test_ring_seconds_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_ring_seconds(wrong, n_bytes=FULL, world_size=8, bus_bandwidth=25e9)


@pytest.mark.parametrize("wrong, message", [
    (4 * TRAINABLE, "only the adapters"), (4 * (TOTAL - TRAINABLE), "leaves out the adapters"),
    (4 * (TOTAL + TIED), "tied head twice"), (TOTAL, "entries"), (12, "not right"),
])
def test_broadcast_bytes_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_broadcast_bytes(wrong, total=TOTAL, trainable=TRAINABLE, tied=TIED)


def test_unused_trainable_slips():
    def with_frozen(model, tokens):
        forward_backward(model, tokens)
        return [n for n, p in model.named_parameters() if p.grad is None]

    def no_backward(model, tokens):
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]

    def the_used_ones(model, tokens):
        forward_backward(model, tokens)
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]

    def crashes(model, tokens):
        return model.no_such_thing

    def params(model, tokens):
        forward_backward(model, tokens)
        return [p for p in model.parameters() if p.requires_grad and p.grad is None]

    for fn, message in ((with_frozen, "frozen parameters"), (no_backward, "backward pass first"),
                        (the_used_ones, "other half"), (crashes, "raised AttributeError"),
                        (params, "names"), (lambda m, t: 3, "list of parameter names"), (42, "should be a function")):
        with pytest.raises(Feedback, match=message):
            check_unused_trainable(fn)


@pytest.mark.parametrize("check, wrong, message", [
    (check_fsdp1_units, "blocks", "single requires_grad"), (check_fsdp1_units, "whole_model", "gathered whole"),
    (check_fsdp1_units, "per_layer", "not one of the choices"),
    (check_save_plan, "rank0_gathers_and_writes", "collective"),
    (check_save_plan, "everyone_gathers_and_writes", "same file"),
    (check_save_plan, "each_writes_its_shard", "torch.distributed.checkpoint"),
    (check_save_plan, "each_writes_its_shard", "a single process loads"), (check_save_plan, "rank 0", "not one of"),
])
def test_choice_slips(check, wrong, message):
    with pytest.raises(Feedback, match=message):
        check(wrong)


@pytest.mark.parametrize("wrong, message", [
    (0.0436 / 0.0428, "inverse"), (2 * 0.0428 / 0.0436, "speed-up"), (100 * 0.0428 / 0.0436, "percentage"),
    (1 - 0.0428 / 0.0436, "loss"), (0.5, "not right"),
    (1 - (0.0436 - 0.0428) / 0.0428, "relative slowdown"),   # within 0.04 % of the answer: passed before
    (0.98, "rounded"),
])
def test_scaling_efficiency_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_scaling_efficiency(wrong, t_one=0.0428, t_two=0.0436)


def test_scaling_efficiency_on_the_recorded_full_fine_tuning_medians():
    t_one, t_two = 0.047346783999998365, 0.051338448500004574   # the chapter's exercise
    check_scaling_efficiency(t_one / t_two, t_one=t_one, t_two=t_two)
    for wrong, message in ((2 - t_two / t_one, "relative slowdown"), (0.922, "rounded"), (47.3 / 51.3, "rounded")):
        with pytest.raises(Feedback, match=message):
            check_scaling_efficiency(wrong, t_one=t_one, t_two=t_two)


@pytest.mark.parametrize("wrong, message", [
    (FULL / 0.035, "leaves out the ring"), (2 * 7 / 8 * FULL / 0.035 / 1e9, "GB/s"),
    (0.035 / (2 * 7 / 8 * FULL), "upside down"), (2 * FULL / 0.035, "uses 2 instead"), (1e9, "not right"),
    (24.9e9, "rounded"),
])
def test_break_even_bandwidth_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_break_even_bandwidth(wrong, n_bytes=FULL, world_size=8, backward_s=0.035)


@pytest.mark.parametrize("wrong, message", [
    (P70 * 2 + T70 * 16, "not sharded"), ((P70 * 2 + T70 * 16) / 8 / 1e9, "in GB"),
    ((P70 * 2 + T70 * 16) / 8 / 2**30, "in GiB"), ((P70 * 4 + T70 * 16) / 8, "float32"),
    (P70 * 2 / 8, "leaves out the adapters"), (P70 * 2 / 8 + T70 * 16, "shards the weights but not"),
    (1.0, "not right"),
    # 12 or 18 bytes per adapter parameter are within 0.05 % of the answer: both passed before
    ((P70 * 2 + T70 * 12) / 8, "12 bytes"), ((P70 * 2 + T70 * 18) / 8, "18 bytes"), (17.25e9, "rounded"),
])
def test_fsdp_lora_memory_slips(wrong, message):
    with pytest.raises(Feedback, match=message):
        check_fsdp_lora_memory(wrong, n_params=P70, n_trainable=T70, world_size=8)


UNANSWERED = [
    (check_allreduce_bytes, (None,), {"n_layers": 12, "d_model": 768, "r": 16, "n_targets": 4}),
    (check_ring_seconds, (...,), {"n_bytes": FULL, "world_size": 8, "bus_bandwidth": 25e9}),
    (check_broadcast_bytes, (None,), {"total": TOTAL, "trainable": TRAINABLE}),
    (check_fsdp1_units, (None,), {}), (check_save_plan, (None,), {}),
    (check_scaling_efficiency, (None,), {"t_one": 1.0, "t_two": 2.0}),
    (check_break_even_bandwidth, (None,), {"n_bytes": FULL, "world_size": 8, "backward_s": 0.035}),
    (check_fsdp_lora_memory, (None,), {"n_params": P70, "n_trainable": T70, "world_size": 8}),
]


def not_written(model, tokens):
    raise NotImplementedError()


def body_is_dots(model, tokens):
    ...


@pytest.mark.parametrize("check, args, kwargs", UNANSWERED + [(check_unused_trainable, (None,), {}),
                                                             (check_unused_trainable, (not_written,), {}),
                                                             (check_unused_trainable, (body_is_dots,), {})])
def test_unanswered_is_not_answered(check, args, kwargs):
    with pytest.raises(NotAnswered):
        check(*args, **kwargs)


def test_workbook_mode_prints_instead_of_raising(capsys):
    checks.set_mode("workbook")
    try:
        assert check_fsdp1_units(None) is None
        assert check_fsdp1_units("blocks") is None
        assert check_unused_trainable(not_written) is None
    finally:
        checks.set_mode("grade")
    out = capsys.readouterr().out
    assert out.count("⏳") == 2 and out.count("❌") == 1
