"""The course's environment: which device to use, which versions are installed, and seeding.

Every notebook starts with::

    from lora_edu import setup_notebook
    rng = setup_notebook(seed=0)

which seeds Python, NumPy and PyTorch, fixes how arrays are printed (so stored outputs
do not change from run to run) and sets readable figure defaults.

Set the environment variable ``LORA_EDU_DEVICE`` (``cpu``, ``cuda``, ``mps``) to override
the automatic device choice; the test suite sets ``LORA_EDU_DEVICE=cpu`` so that stored
notebook outputs are the CPU ones.
"""
from __future__ import annotations

import os
import platform
import random
import warnings
from importlib import metadata

import numpy as np

_KNOWN_DEVICES = ("cpu", "cuda", "mps")


def _torch():
    import torch  # imported lazily: chapters 01-03 never need it

    return torch


def pick_device(prefer: str | None = None):
    """Return the ``torch.device`` the course should use.

    Order: ``prefer`` if given, else ``$LORA_EDU_DEVICE`` if set, else CUDA, then Apple MPS, then CPU.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when the requested
    device is not available on this machine.
    """
    torch = _torch()
    choice = prefer if prefer is not None else os.environ.get("LORA_EDU_DEVICE") or None
    if choice is not None:
        name = str(choice).strip().lower()
        if name.split(":")[0] not in _KNOWN_DEVICES:
            raise ValueError(f"device {choice!r} is not one of {_KNOWN_DEVICES}; "
                             "set LORA_EDU_DEVICE (or prefer=) to 'cpu', 'cuda' or 'mps'")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {choice!r} was requested but torch sees no CUDA GPU; "
                               "unset LORA_EDU_DEVICE or set it to 'cpu'")
        if name == "mps" and not _mps_available(torch):
            raise RuntimeError("device 'mps' was requested but Apple MPS is not available; "
                               "unset LORA_EDU_DEVICE or set it to 'cpu'")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available(torch):
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def versions(packages: tuple[str, ...] = ("torch", "numpy", "sympy", "matplotlib")) -> dict[str, str]:
    """Versions of Python and of ``packages`` (the libraries the course leans on), as strings."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe(device=None) -> str:
    """One line: the device in use and the versions of python, torch, numpy and sympy.

    Example: ``device cpu (no CUDA or MPS GPU found) | python 3.11.7 | torch 2.13.0 | ...``
    """
    torch = _torch()
    dev = pick_device() if device is None else torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        where = f"cuda ({torch.cuda.get_device_name(index)})"
    elif dev.type == "mps":
        where = "mps (Apple GPU)"
    elif torch.cuda.is_available() or _mps_available(torch):
        where = "cpu (a GPU is present but not selected)"
    else:
        where = "cpu (no CUDA or MPS GPU found)"
    v = versions()
    parts = [f"device {where}"] + [f"{k} {v[k]}" for k in ("python", "torch", "numpy", "sympy")]
    return " | ".join(parts)


def seed_everything(seed: int = 0) -> np.random.Generator:
    """Seed Python's ``random``, NumPy's global generator and PyTorch (CPU and CUDA).

    Returns a fresh ``numpy.random.Generator`` seeded with ``seed``, which notebooks
    use for all their NumPy randomness. ``seed`` must be a non-negative int.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    try:
        torch = _torch()
    except ImportError:  # the linear-algebra chapters work without torch
        torch = None
    if torch is not None:
        torch.manual_seed(seed)  # also seeds every CUDA device
    return np.random.default_rng(seed)


def setup_notebook(seed: int = 0, workbook: bool = False) -> np.random.Generator:
    """Seed everything and fix printing and plotting defaults; returns the NumPy generator.

    Printing is fixed to 4 significant decimals without scientific notation for small
    numbers, so that a stored output does not flip between ``1e-17`` and ``-2e-17``.

    ``workbook=True`` (what a learner's copy in ``workbook/`` says) makes the exercise checks
    print ✅ / ❌ / ⏳ instead of raising, so *Run All* reaches the end of the chapter;
    the default ``False`` keeps the grading behaviour (a failed check raises), which the
    instructor's notebooks, nbgrader and the tests rely on. See :mod:`lora_edu.checks`.
    """
    from lora_edu import checks

    checks.set_mode("workbook" if workbook else "grade")
    rng = seed_everything(seed)
    np.set_printoptions(precision=4, suppress=True, linewidth=100)
    try:
        torch = _torch()
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_printoptions(precision=4, sci_mode=False, linewidth=100)
    # PyTorch warns once when the autograd thread first calls cuBLAS on a GPU; it sets the context
    # itself, so the warning is noise in a notebook (seen with torch 2.11 on an H200).
    warnings.filterwarnings("ignore", message="Attempting to run cuBLAS, but there was no current CUDA context")
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "font.size": 11,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "image.cmap": "viridis",
    })
    return rng
