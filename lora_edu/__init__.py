"""lora_edu — the reference code behind the "Rank to LoRA" notebook course.

Each module is small enough to read beside the chapter that teaches it:

- :mod:`lora_edu.env`     — pick the device, report versions, seed everything (chapter 00)
- :mod:`lora_edu.checks`  — the feedback that the course's exercises give (✅ / ❌ / ⏳ in a workbook)
- :mod:`lora_edu.progress` — how far a learner is: the exercises of each workbook, read from its saved outputs
- :mod:`lora_edu.course`  — the course map (chapters, goals, times)
- :mod:`lora_edu.results` — the recorded GPU results the notebooks read, in a checkout or an installed wheel
- :mod:`lora_edu.rank`    — numeric and exact rank, row echelon forms with a step trace (chapters 01–02)
- :mod:`lora_edu.plots`   — the longer figures of chapters 01–02 (column spaces, rank steps, ellipses)
- :mod:`lora_edu.lowrank` — truncated and randomized SVD, Eckart–Young errors, φ (chapters 03–04)
- :mod:`lora_edu.lora`    — LoRALinear, apply_lora / merge_lora, counting, adapters in safetensors (chapter 05)
- :mod:`lora_edu.transformer` — a small decoder transformer (separate q/k/v/o nn.Linear), any size up to GPT-2 (chapters 06–07)
- :mod:`lora_edu.experiments` — synthetic tasks at stated distances, finetune (full, LoRA, baselines), the
  learning-rate grid, nulls, ΔW and φ analysis with seeds and intervals (chapter 06)
- :mod:`lora_edu.fused`   — the fast LoRA training path, one autograd Function (chapter 07; optional Triton
  kernels in ``lora_edu._fused_kernels``)
- :mod:`lora_edu.memory`  — peak training memory from a model's shapes, and a tracker that measures it (chapter 07)
- :mod:`lora_edu.traffic` — the kernels, FLOPs and bytes of a (LoRA) linear layer, the roofline (chapter 07)
- :mod:`lora_edu.distributed` — DDP / FSDP2 training steps, bytes counted by a comm hook against their
  prediction, the ring all-reduce model, ``torchrun -m lora_edu.distributed`` (chapter 08)
"""
from lora_edu.env import describe, pick_device, seed_everything, setup_notebook, versions

__version__ = "0.1.0"

__all__ = ["describe", "pick_device", "seed_everything", "setup_notebook", "versions", "__version__"]
