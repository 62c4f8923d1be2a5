"""lora_edu.env: device choice, version report, seeding."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import lora_edu
from lora_edu import env


def test_pick_device_defaults_to_an_available_device(monkeypatch):
    monkeypatch.delenv("LORA_EDU_DEVICE", raising=False)
    dev = env.pick_device()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if env._mps_available(torch) else "cpu")
    assert dev.type == expected


def test_pick_device_honours_environment_variable(monkeypatch):
    monkeypatch.setenv("LORA_EDU_DEVICE", "cpu")
    assert env.pick_device() == torch.device("cpu")
    assert env.pick_device(prefer="CPU") == torch.device("cpu")


def test_pick_device_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("LORA_EDU_DEVICE", "tpu")
    with pytest.raises(ValueError, match="LORA_EDU_DEVICE"):
        env.pick_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_pick_device_names_the_fix_when_cuda_is_missing():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        env.pick_device(prefer="cuda")


def test_describe_is_one_line_with_versions(monkeypatch):
    monkeypatch.setenv("LORA_EDU_DEVICE", "cpu")
    line = lora_edu.describe()
    assert "\n" not in line
    for name in ("device cpu", "python", "torch", "numpy", "sympy"):
        assert name in line
    assert torch.__version__ in line and np.__version__ in line


def test_versions_reports_installed_packages():
    v = env.versions()
    assert v["numpy"] == np.__version__
    assert v["torch"].split("+")[0] == torch.__version__.split("+")[0]


def test_seed_everything_makes_all_generators_repeat():
    def draw():
        rng = lora_edu.seed_everything(123)
        return random.random(), np.random.rand(), rng.normal(), torch.rand(1).item()

    first = draw()
    assert draw() == first
    lora_edu.seed_everything(124)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) != (first[0], first[1], first[3])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True, None])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        lora_edu.seed_everything(bad)


def test_setup_notebook_fixes_printing():
    lora_edu.setup_notebook(0)
    assert np.get_printoptions()["suppress"] is True
    assert "e-" not in repr(np.array([1.0, 1e-17]))
