"""The course map: every chapter, its goal, its time and what a GPU adds.

The welcome notebook renders this table from the notebooks that actually exist, so a
chapter is linked only once its notebook is in ``notebooks/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Chapter:
    number: str
    notebook: str  # file name in notebooks/
    title: str
    goal: str  # "after it you can ..."
    minutes: int
    gpu: str  # what a GPU changes


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("00", "00_welcome.ipynb", "Welcome", "use the course, check your setup, map the three notations", 15,
            "not needed"),
    Chapter("01", "01_rank.ipynb", "Rank", "say what rank is, see it, compute it and know numpy's tolerance", 45,
            "not needed"),
    Chapter("02", "02_echelon_forms.ipynb", "Echelon forms", "row-reduce with a step trace, read rank from pivots",
            55, "not needed"),
    Chapter("03", "03_svd_low_rank.ipynb", "SVD and low-rank approximation",
            "read the SVD, find numeric rank, use Eckart–Young–Mirsky, compress an image", 90, "not needed"),
    Chapter("04", "04_low_rank_factorization.ipynb", "Low-rank factorization",
            "count parameters of BA, fit a factorization and compare with the SVD optimum", 60, "not needed"),
    Chapter("05", "05_lora_layer.ipynb", "The LoRA layer",
            "build, initialise, scale, merge and save a LoRA layer, and match PEFT (+ an optional deep dive)", 135,
            "optional: runs on CPU, uses a GPU when present"),
    Chapter("06", "06_lora_finetuning.ipynb", "Fine-tuning with LoRA",
            "fine-tune a small transformer with LoRA, sweep r, measure the rank of ΔW", 120,
            "optional: a larger configuration runs on a GPU; recorded GPU results are shown"),
    Chapter("07", "07_lora_on_gpu.ipynb", "LoRA on a GPU",
            "predict and measure memory, explain and reduce LoRA's training overhead", 80,
            "helps: re-measures live on a GPU; recorded H200 results are shown otherwise"),
    Chapter("08", "08_lora_on_many_gpus.ipynb", "LoRA on several GPUs",
            "predict and count what DDP and FSDP2 send with LoRA, avoid the unused-adapter and FSDP-unit "
            "pitfalls, read 2-GPU scaling, size a 70B run", 60,
            "helps: recorded 2×H200 results shown; runs 2 CPU processes otherwise"),
)


def available(notebook_dir: str | Path = ".") -> list[Chapter]:
    """The chapters whose notebook exists in ``notebook_dir``."""
    folder = Path(notebook_dir)
    return [c for c in CHAPTERS if (folder / c.notebook).is_file()]


def course_map_markdown(notebook_dir: str | Path = ".") -> str:
    """A Markdown table of the course: existing chapters linked, the others marked *coming*."""
    folder = Path(notebook_dir)
    rows = ["| # | chapter | after it you can… | time | GPU |", "|---|---|---|---|---|"]
    for c in CHAPTERS:
        title = f"[{c.title}]({c.notebook})" if (folder / c.notebook).is_file() else f"{c.title} *(coming)*"
        rows.append(f"| {c.number} | {title} | {c.goal} | {c.minutes} min | {c.gpu} |")
    return "\n".join(rows)
