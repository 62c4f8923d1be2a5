"""lora_edu — the reference code behind the "Rank to LoRA" notebook course.

Each module is small enough to read beside the chapter that teaches it:

- :mod:`lora_edu.env`     — pick the device, report versions, seed everything (chapter 00)
- :mod:`lora_edu.checks`  — the feedback that the course's exercises give
- :mod:`lora_edu.rank`    — numeric and exact rank, row echelon forms with a step trace (chapters 01–02)
- :mod:`lora_edu.lowrank` — truncated and randomized SVD, Eckart–Young errors, φ (chapters 03–04)
- :mod:`lora_edu.lora`    — LoRALinear, apply_lora / merge_lora, counting, adapters in safetensors (chapter 05)
- :mod:`lora_edu.transformer` — a small decoder transformer (separate q/k/v/o nn.Linear), any size up to GPT-2 (chapters 06–07)
- :mod:`lora_edu.experiments` — synthetic tasks, pretraining, finetune(full | LoRA) with metrics, ΔW and φ analysis (chapter 06)
- :mod:`lora_edu.fused`   — the fast LoRA training path, one autograd Function (chapter 07)
- :mod:`lora_edu.memory`  — peak training memory from a model's shapes, and a tracker that measures it (chapter 07)
- :mod:`lora_edu.traffic` — the kernels, FLOPs and bytes of a (LoRA) linear layer, the roofline (chapter 07)

Later chapters add their own modules (rank, low-rank approximation, LoRA layers).
"""
from lora_edu.env import describe, pick_device, seed_everything, setup_notebook, versions

__version__ = "0.1.0"

__all__ = ["describe", "pick_device", "seed_everything", "setup_notebook", "versions", "__version__"]
