#!/usr/bin/env bash
# What the course's maintainers run on a GPU machine (an H200 for the recorded results), in two parts:
#
#   benchmarks/gpu_session.sh sweep OUT_DIR   chapter 06's grid (python -m lora_edu.experiments grid): every
#                                             task x method x learning rate x seed, JSON into OUT_DIR.
#                                             BUDGET_S (default 190): seconds for the whole command; the grid
#                                             starts no group predicted to end later (most important groups
#                                             first: every task's main tier, then baselines, then nulls) and is
#                                             stopped 10 s after it (the JSON keeps every group it finished).
#                                             GRID_ARGS: more options, e.g. a CPU dry run at tiny sizes:
#                                             "--device cpu --seeds 2 --steps 2 --eval-every 1 --batch-size 4
#                                             --eval-size 16"
#   benchmarks/gpu_session.sh check OUT_DIR   the `-m gpu` tests, then chapters 05-07 executed with
#                                             LORA_EDU_DEVICE=cuda (executed copies and timings into OUT_DIR);
#                                             NOTEBOOKS="notebooks/07_*.ipynb" picks fewer chapters
#
# It uses the machine's own python3 with torch (a CUDA build) and runs from the repository root with
# PYTHONPATH=. (no install). Jupyter is not needed on the machine: wheels in .whl/ (py3.12, git-ignored;
# see benchmarks/NOTES.md) are installed into a scratch folder when present.
set -u -o pipefail
part=${1:?usage: gpu_session.sh sweep|check OUT_DIR}
out=${2:?usage: gpu_session.sh sweep|check OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$out/gpu.txt"

case "$part" in
sweep)
    gpu=$(python3 -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-')
                     if torch.cuda.is_available() else 'cpu')")
    budget=${BUDGET_S:-190}
    # the grid's own budget: what is left of BUDGET_S, less 10 s for Python's start, CUDA's and the last write
    left=$((budget - SECONDS - 10))
    echo "sweep: ${budget} s for the command, ${left} s for the grid's groups" | tee "$out/sweep.log"
    # shellcheck disable=SC2086  # GRID_ARGS is a list of options
    timeout -k 5 $((budget - SECONDS + 10)) python3 -m lora_edu.experiments grid --out "$out/finetune_${gpu}.json" \
        --budget-s "$left" --no-progress ${GRID_ARGS:-} 2>&1 | tee -a "$out/sweep.log"
    ;;
check)
    status=0
    timeout "${TESTS_TIMEOUT_S:-240}" python3 -m pytest -q -m gpu -p no:cacheprovider \
        tests/test_rank.py tests/test_lowrank.py tests/test_lora.py tests/test_fused.py tests/test_memory.py \
        tests/test_experiments.py 2>&1 | tee "$out/gpu_tests.txt" | tail -25 || status=1
    mkdir -p "$out/notebooks"
    for nb in ${NOTEBOOKS:-notebooks/05_*.ipynb notebooks/06_*.ipynb notebooks/07_*.ipynb}; do
        cp "$nb" "$out/notebooks/"
        LORA_EDU_DEVICE=cuda IPYKERNEL_CELL_NAME='<IPY-INPUT>' PYTHONHASHSEED=0 MPLBACKEND=Agg \
            timeout 200 python3 tools/run_notebooks.py "$out/notebooks/$(basename "$nb")" 2>&1 \
            | grep -v "without encryption" | tee -a "$out/notebooks.txt" || status=1
    done
    exit $status
    ;;
*)
    echo "unknown part $part (sweep or check)" >&2
    exit 2
    ;;
esac
