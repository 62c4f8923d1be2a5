#!/usr/bin/env bash
# Chapter 08's recorded results: full fine-tuning and LoRA on one and two GPUs with torch.distributed (NCCL).
#
#   benchmarks/distributed_gpu.sh OUT_DIR            on a machine with 2 GPUs (an H200 pair for the record)
#   SMOKE=1 benchmarks/distributed_gpu.sh OUT_DIR    the same steps on CPUs (gloo, a tiny model): checks the script
#
# In one session:
#   1. the machine: nvidia-smi, how the GPUs are linked (nvidia-smi topo -m), versions;
#   2. GPT-2 small's shape (random weights), 8 x 1024 tokens per GPU, bf16 autocast on float32 weights, full
#      fine-tuning and LoRA r = 8 on q_proj, v_proj: the step time on 1 GPU; on 2 GPUs under DDP the bytes a
#      comm hook counts, the buckets, the broadcast at construction, the step time with and without the
#      all-reduce (no_sync) side by side, bf16-compressed gradients, FSDP2's collectives and memory, NCCL's
#      all-reduce time against message size (bus bandwidth) and DDP's real buckets replayed, the
#      unused-adapter pitfall; FSDP1's uniform-requires_grad error (chapter 08 also shows it live on the CPU);
#      every rank's peak memory and what was already allocated before the measured step (resident_bytes);
#      10 interleaved series of 20 steps per variant, so that efficiencies come with their spread;
#   3. the -m gpu tests of tests/test_distributed.py (NCCL, 2 GPUs);
# and writes OUT_DIR/distributed_<gpu>x2.json (copy it to benchmarks/results/ to update the record).
#
# It uses the machine's own python3 with a CUDA torch and runs from the repository root with PYTHONPATH=.
# NVLink multicast (NVLS) stays off: a shared machine's GPUs can be put out of service by it.
set -u -o pipefail
py=${PYTHON:-python3}  # the python with a CUDA torch (PYTHON=.venv/bin/python for SMOKE=1 in a checkout)
out=${1:?usage: distributed_gpu.sh OUT_DIR}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD" PYTHONHASHSEED=0
status=0

if [ "${SMOKE:-0}" = 1 ]; then
    common=(--model tiny --batch 2 --seq 16 --backend gloo --steps 3 --warmup 1 --repeats 2)
    sizes=4096,65536,1048576
    export LORA_EDU_DEVICE=cpu OMP_NUM_THREADS=1
    echo "smoke run on CPUs (gloo)" | tee "$out/gpu.txt"
    echo "no GPUs" > "$out/topo.txt"
else
    common=(--model gpt2-small --batch 8 --seq 1024 --amp bf16 --backend nccl --steps 20 --warmup 3 --repeats 10)
    sizes=4096,65536,1048576,4194304,16777216,67108864,268435456,1073741824
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader \
        | tee "$out/gpu.txt"
    nvidia-smi topo -m | sed 's/\x1b\[[0-9;]*m//g' | tee "$out/topo.txt"   # without the terminal's underlining
fi

job() {  # job NPROC NAME ARGS...: one torchrun job writing OUT_DIR/NAME.json (and NAME.log)
    local n=$1 name=$2
    shift 2
    timeout "${JOB_TIMEOUT_S:-300}" "$py" -m torch.distributed.run --standalone --nproc_per_node "$n" \
        -m lora_edu.distributed "${common[@]}" --keep-going "$@" --out "$out/$name.json" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc"; tail -3 "$out/$name.log"
    return $rc
}

job 1 one_gpu --tasks timing || status=1
job 2 two_gpus --tasks ddp,compress,timing,fsdp,bandwidth,pitfalls --sizes "$sizes" --iters 20 || status=1
JOB_TIMEOUT_S=${FSDP1_TIMEOUT_S:-120} job 2 fsdp1 --tasks fsdp1 --modes lora --steps 1 || status=1

start=$(date +%s.%N)
timeout "${TESTS_TIMEOUT_S:-240}" "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_distributed.py 2>&1 \
    | tee "$out/gpu_tests.txt" | tail -5 || status=1
end=$(date +%s.%N)

"$py" - "$out" "$start" "$end" "$status" <<'EOF' || status=1
import json, re, subprocess, sys, time
from pathlib import Path

out, start, end, status = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
two = load("two_gpus") or {}
gpu = (two.get("gpu") or "cpu").lower()
slug = re.sub(r"[^a-z0-9]+", "-", gpu).strip("-")
tests = (out / "gpu_tests.txt").read_text() if (out / "gpu_tests.txt").exists() else ""
count = lambda word: sum(int(n) for n in re.findall(rf"(\d+) {word}", tests.splitlines()[-1] if tests else ""))
record = {
    "what": "benchmarks/distributed_gpu.sh: chapter 08, DDP and FSDP2 with full fine-tuning and LoRA on 1 and 2 GPUs",
    "date": time.strftime("%Y-%m-%d"),
    "commit": __import__("os").environ.get("COMMIT", "unknown"),
    "gpu": (out / "gpu.txt").read_text().strip(),
    "topology": (out / "topo.txt").read_text(),
    "environment": {k: __import__("os").environ.get(k) for k in
                    ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")},
    "versions": two.get("versions"),
    "settings": two.get("settings"),
    "one_gpu": load("one_gpu"), "two_gpus": load("two_gpus"), "fsdp1": load("fsdp1"),
    "gpu_tests": {"command": "python3 -m pytest -q -m gpu tests/test_distributed.py", "passed": count("passed"),
                  "failed": count("failed"), "skipped": count("skipped"), "seconds": round(end - start, 1)},
    "script_status": status,
}
path = out / f"distributed_{slug}x2.json"
path.write_text(json.dumps(record, indent=1))
print("wrote", path)
EOF
exit $status
