"""lora_edu.experiments: the tasks, pretraining and its shipped checkpoint, finetune(), the analysis helpers
and the GPU configuration (run in its smoke size on the CPU)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import lora_edu.experiments as E
from lora_edu.experiments import (
    DOWNSTREAM_TASK, PRETRAIN_TASKS, PRETRAINED_PATH, TASK_NAMES, TASKS, energy_fraction, evaluate, finetune,
    load_pretrained, make_batch, phi_grid, pretrain, truncate_updates, weight_updates,
)
from lora_edu.lora import LoRALinear
from lora_edu.lowrank import subspace_similarity


@pytest.fixture(scope="module")
def base():
    return load_pretrained()


def states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- the tasks


def test_batches_are_deterministic_per_seed_and_differ_between_seeds():
    a, b, c = make_batch(PRETRAIN_TASKS, 64, seed=3), make_batch(PRETRAIN_TASKS, 64, seed=3), \
        make_batch(PRETRAIN_TASKS, 64, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (64, TASKS.seq_len) and a.dtype == torch.int64
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(make_batch(PRETRAIN_TASKS, 64, generator=gen), a)        # the same stream
    assert not torch.equal(make_batch(PRETRAIN_TASKS, 64, generator=gen), a)    # and it moves on


@pytest.mark.parametrize("task", TASK_NAMES)
def test_each_row_answers_its_instruction(task):
    seq = make_batch(task, 50, seed=1)
    L, A = TASKS.length, TASKS.alphabet_size
    assert (seq[:, 0] == TASKS.instruction(task)).all() and (seq[:, L + 1] == TASKS.sep).all()
    x, y = seq[:, 1:L + 1].numpy(), seq[:, L + 2:].numpy()
    order, _, shift = task.partition("+")
    expected = (x[:, ::-1] if order == "reverse" else x) + int(shift or 0)      # written independently, in NumPy
    np.testing.assert_array_equal(y, expected % A)


def test_the_downstream_task_is_new():
    pre = make_batch(PRETRAIN_TASKS, 2000, seed=0)
    assert DOWNSTREAM_TASK not in PRETRAIN_TASKS
    assert not (pre[:, 0] == TASKS.instruction(DOWNSTREAM_TASK)).any()           # its instruction never occurs
    assert set(pre[:, 0].tolist()) == {TASKS.instruction(t) for t in PRETRAIN_TASKS}
    down = make_batch(DOWNSTREAM_TASK, 500, seed=0)
    x = down[:, 1:TASKS.length + 1]
    for task in PRETRAIN_TASKS:                                                  # its answers are new too
        same = (TASKS.answer(task, x) == down[:, TASKS.length + 2:]).all(dim=1).float().mean()
        assert same < 0.01, task


def test_render_and_task_errors():
    seq = make_batch("reverse+1", 1, seed=0)[0]
    text = TASKS.render(seq)
    assert text.startswith("[reverse+1] ") and " | " in text and len(text.split()) == TASKS.seq_len
    with pytest.raises(ValueError, match="unknown task 'sort'"):
        make_batch("sort", 4, seed=0)
    with pytest.raises(ValueError, match="exactly one of seed"):
        make_batch("copy", 4)
    with pytest.raises(ValueError, match="n .*positive"):
        make_batch("copy", 0, seed=0)


# --------------------------------------------------------------------------- pretraining and the checkpoint


def test_pretraining_is_deterministic_and_learns():
    m1, h1 = pretrain(steps=6, batch_size=16, progress=False)
    m2, h2 = pretrain(steps=6, batch_size=16, progress=False)
    m3, _ = pretrain(steps=6, batch_size=16, seed=1, progress=False)
    assert states_equal(m1.state_dict(), m2.state_dict()) and h1 == h2
    assert not states_equal(m1.state_dict(), m3.state_dict())
    assert len(h1) == 6 and h1[-1] < h1[0]


def test_pretrain_command_writes_a_loadable_deterministic_checkpoint(tmp_path):
    out = tmp_path / "ckpt.safetensors"
    cmd = [sys.executable, "-m", "lora_edu.experiments", "pretrain", "--steps", "3", "--out", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pretrained 3 steps" in proc.stdout and out.is_file()
    loaded = load_pretrained(out)
    expected, _ = pretrain(steps=3, progress=False)        # the same defaults, in this process
    assert states_equal(loaded.state_dict(), expected.state_dict())


def test_shipped_checkpoint_is_small_and_does_well_on_pretraining(base):
    assert PRETRAINED_PATH.is_file() and PRETRAINED_PATH.stat().st_size <= 5 * 2 ** 20
    assert base.cfg == E.tiny_config()
    fresh = make_batch(PRETRAIN_TASKS, 1000, seed=987)    # a batch no run has seen
    with torch.no_grad():
        _, _, rows = E.loss_and_accuracy(base, fresh)
    assert rows.float().mean() >= 0.97                    # whole answers right on the pretraining tasks
    before = evaluate(base, DOWNSTREAM_TASK, n=500, seed=988)
    assert before["exact_match"] <= 5.0 and before["token_accuracy"] <= 20.0   # and clearly poor downstream


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiments pretrain"):
        load_pretrained(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="no model config"):
        load_pretrained(tmp_path / "bare.safetensors")


# --------------------------------------------------------------------------- finetune()


FIELDS = {"method", "r", "alpha", "rank_stabilized", "target_modules", "steps", "lr", "batch_size", "seed", "score",
          "token_accuracy", "pretrain_score", "trainable_params", "total_params", "adapter_bytes", "wall_time_s",
          "peak_memory_bytes", "device", "final_loss"}


def test_finetune_lora_metrics(base):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    res = finetune("lora", r=4, steps=40, base=base, device="cpu", eval_size=200, progress=False)
    assert states_equal(base.state_dict(), before)                       # the base is copied, never changed
    n_base = sum(p.numel() for p in base.parameters())
    d, layers = base.cfg.d_model, base.cfg.n_layers
    assert res.trainable_params == layers * 2 * 4 * (d + d)               # A (4, d) and B (d, 4) on q and v
    assert res.total_params == n_base + res.trainable_params
    data = 4 * res.trainable_params                                       # float32 bytes
    assert data < res.adapter_bytes < data + 4096                         # plus a small safetensors header
    assert res.peak_memory_bytes is None and res.device == "cpu" and res.wall_time_s > 0
    assert 0.0 <= res.score <= 100.0 and 0.0 <= res.token_accuracy <= 100.0
    assert len(res.loss_history) == 40 and np.mean(res.loss_history[-5:]) < np.mean(res.loss_history[:5])
    assert sorted(n for n, m in res.model.named_modules() if isinstance(m, LoRALinear)) == \
        [f"blocks.{i}.attn.{p}" for i in range(layers) for p in ("q_proj", "v_proj")]
    metrics = res.metrics()
    assert set(metrics) == FIELDS and json.loads(json.dumps(metrics)) == metrics
    assert metrics["method"] == "lora" and metrics["r"] == 4 and metrics["alpha"] == E.DEFAULT_ALPHA


def test_finetune_full_metrics(base):
    res = finetune("full", steps=30, base=base, device="cpu", eval_size=200, progress=False)
    n = sum(p.numel() for p in base.parameters())
    assert res.trainable_params == res.total_params == n
    assert res.adapter_bytes > 4 * n                                      # the whole model must be stored
    assert res.r is None and res.alpha is None and res.target_modules is None
    assert np.mean(res.loss_history[-5:]) < np.mean(res.loss_history[:5])
    assert set(res.metrics()) == FIELDS
    deltas = weight_updates(base, res.model)                             # every Linear moved
    assert set(deltas) == set(E.linear_names(base))
    W0 = base.blocks[1].attn.q_proj.weight
    torch.testing.assert_close(deltas["blocks.1.attn.q_proj"], res.model.blocks[1].attn.q_proj.weight - W0)


def test_finetune_options_reach_the_layers(base):
    res = finetune("lora", r=2, alpha=4.0, rank_stabilized=True, target_modules=["fc1"], steps=2, base=base,
                   device="cpu", eval_size=20, progress=False)
    layers = [m for m in res.model.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == base.cfg.n_layers
    assert all(m.r == 2 and m.scaling == pytest.approx(4.0 / 2 ** 0.5) for m in layers)
    assert res.trainable_params == base.cfg.n_layers * 2 * (base.cfg.d_model + base.cfg.d_mlp)
    deltas = weight_updates(base, res.model)
    assert set(deltas) == {f"blocks.{i}.mlp.fc1" for i in range(base.cfg.n_layers)}
    torch.testing.assert_close(deltas["blocks.0.mlp.fc1"], layers[0].delta_weight().detach())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="fulll"), ValueError, "method must be one of 'full', 'lora'"),
    (dict(method="LoRA"), ValueError, "method must be one of"),
    (dict(r=0), ValueError, "r must be a positive int"),
    (dict(r=-3), ValueError, "r must be a positive int"),
    (dict(r=2.5), TypeError, "r must be a whole number"),
    (dict(r=65), ValueError, "min\\(in_features, out_features\\) = 64"),
    (dict(target_modules=["q_projj"]), ValueError, "'q_projj' matches no module.*q_proj"),
    (dict(target_modules=["blocks"]), TypeError, "not an nn.Linear"),
    (dict(method="full", r=8), ValueError, "r only apply to method='lora'"),
    (dict(method="full", rank_stabilized=True), ValueError, "rank_stabilized only apply"),
    (dict(steps=0), ValueError, "steps must be >= 1"),
    (dict(batch_size=1.5), TypeError, "batch_size must be a whole number"),
    (dict(task="sort"), ValueError, "unknown task"),
])
def test_finetune_bad_inputs_are_clear_errors(base, kwargs, error, match):
    with pytest.raises(error, match=match):
        finetune(**{"steps": 1, "base": base, "device": "cpu", "progress": False, **kwargs})


# --------------------------------------------------------------------------- analysis helpers


def test_energy_fraction_against_numpy():
    rng = np.random.default_rng(0)
    S = np.linalg.svd(rng.standard_normal((9, 6)), compute_uv=False)
    for k in range(1, 7):
        assert energy_fraction(S, k) == pytest.approx(np.sum(S[:k] ** 2) / np.sum(S ** 2))
    assert energy_fraction(torch.tensor(S), 6) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="only 6 singular values"):
        energy_fraction(S, 7)
    with pytest.raises(ValueError, match="k must be >= 1"):
        energy_fraction(S, 0)


def test_phi_grid_against_its_definition():
    torch.manual_seed(0)
    shared = torch.tensor([[60.0], [40.0], [20.0]]) * torch.linalg.qr(torch.randn(40, 3))[0].T  # 3 strong ones
    A8 = torch.cat([shared, torch.randn(5, 40)])
    A16 = torch.cat([shared + 0.1 * torch.randn(3, 40), torch.randn(13, 40)])
    grid = phi_grid(A8, A16)
    assert grid.shape == (8, 16) and ((grid >= 0) & (grid <= 1)).all()
    U1 = np.linalg.svd(A8.double().numpy(), full_matrices=False)[2].T          # NumPy's own SVD
    U2 = np.linalg.svd(A16.double().numpy(), full_matrices=False)[2].T
    for i, j in [(1, 1), (3, 5), (8, 16), (2, 11)]:
        assert grid[i - 1, j - 1] == pytest.approx(subspace_similarity(U1, U2, i, j), abs=1e-8)
        M = U1[:, :i].T @ U2[:, :j]
        assert grid[i - 1, j - 1] == pytest.approx(np.sum(M ** 2) / min(i, j), abs=1e-8)
    assert grid[2, 2] > 0.95 and grid[0, 0] > 0.9                               # the shared top directions
    assert phi_grid(torch.randn(8, 40), A16)[0, 0] < 0.5                         # unrelated: little overlap
    np.testing.assert_allclose(np.diag(phi_grid(A8, A8)), 1.0, atol=1e-9)      # a span contains itself
    with pytest.raises(ValueError, match="same input size"):
        phi_grid(A8, torch.randn(4, 30))


def test_truncate_updates(base):
    tuned = finetune("full", steps=5, base=base, device="cpu", eval_size=20, progress=False).model
    full_rank = truncate_updates(base, tuned, 64)                             # k >= min(d, k): nothing cut
    for key, value in tuned.state_dict().items():
        torch.testing.assert_close(full_rank.state_dict()[key], value, rtol=0, atol=1e-6)
    cut = truncate_updates(base, tuned, 2)
    for name, dW in weight_updates(base, cut).items():
        assert torch.linalg.matrix_rank(dW.double(), atol=1e-5) <= 2, name
    torch.testing.assert_close(cut.tok_emb.weight, tuned.tok_emb.weight)       # embeddings keep their update
    only_q = truncate_updates(base, tuned, 1, modules=["blocks.0.attn.q_proj"])
    torch.testing.assert_close(only_q.blocks[0].attn.v_proj.weight, tuned.blocks[0].attn.v_proj.weight)
    with pytest.raises(TypeError, match="not an nn.Linear"):
        truncate_updates(base, tuned, 1, modules=["blocks.0.attn"])


# --------------------------------------------------------------------------- the GPU configuration


def test_gpu_sweep_smoke_writes_json(tmp_path):
    out = tmp_path / "finetune_cpu.json"
    record = E.gpu_sweep(out, smoke=True, device="cpu")
    saved = json.loads(out.read_text())
    assert saved["finished"] and not saved["errors"] and saved["gpu"] is None
    assert {"torch", "peft", "numpy"} <= set(saved["versions"])
    tiny = saved["parts"]["tiny"]
    assert {r["method"] for r in tiny["runs"]} == {"full", "lora"} and len(tiny["runs"]) == 3 * 4   # 3 seeds
    assert [r["seed"] for r in tiny["runs"]] == [0] * 4 + [1] * 4 + [2] * 4
    wide_start = min(r["started_s"] for r in saved["parts"]["wide"]["runs"])
    assert max(r["started_s"] for r in tiny["runs"][:4]) < wide_start < min(r["started_s"] for r in tiny["runs"][4:])
    assert all(FIELDS <= set(r) for r in tiny["runs"])
    assert tiny["pretrain_task_score"] >= 95 and tiny["downstream_score_before"] <= 10
    assert set(tiny["analysis"]) == {"full_ft_spectra", "truncated_full_update_score", "phi_r8_r64"}
    assert np.array(tiny["analysis"]["phi_r8_r64"]["blocks.0.attn.q_proj"]).shape == (8, 64)
    assert saved["parts"]["wide"]["runs"] and record["finished"]


def test_gpu_sweep_records_failures_and_keeps_going(tmp_path, monkeypatch):
    real = E.finetune

    def flaky(method="lora", **kw):
        if method == "full":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(method, **kw)

    monkeypatch.setattr(E, "finetune", flaky)
    out = tmp_path / "sweep.json"
    E.gpu_sweep(out, smoke=True, device="cpu")
    saved = json.loads(out.read_text())
    assert saved["finished"]
    assert sum("simulated" in e["error"] for e in saved["errors"]) == 4          # one per part and seed
    assert all(r["method"] == "lora" for p in saved["parts"].values() for r in p["runs"])
    assert len(saved["parts"]["tiny"]["runs"]) == 3 * 3


def test_gpu_sweep_time_budget_skips_runs_but_writes(tmp_path):
    out = tmp_path / "sweep.json"
    E.gpu_sweep(out, smoke=True, device="cpu", budget_s=0.0)
    saved = json.loads(out.read_text())
    assert saved["finished"] and saved["skipped"] and not saved["parts"]["tiny"]["runs"]
    assert "pretraining" not in saved["parts"]["wide"] and any(s.startswith("wide:") for s in saved["skipped"])


@pytest.mark.gpu
def test_finetune_on_cuda_measures_peak_memory(base):
    full = finetune("full", steps=20, base=base, device="cuda", eval_size=200, progress=False)
    lora = finetune("lora", r=8, steps=20, base=base, device="cuda", eval_size=200, progress=False)
    for res in (full, lora):
        assert res.device.startswith("cuda") and res.peak_memory_bytes > 0
        assert next(res.model.parameters()).is_cuda
    # full fine-tuning holds gradients and two AdamW moments for every weight; LoRA only for A and B
    assert full.peak_memory_bytes > lora.peak_memory_bytes
    assert full.peak_memory_bytes >= 4 * 4 * full.trainable_params      # weights, grads, 2 moments (float32)
    assert set(full.metrics()) == FIELDS
