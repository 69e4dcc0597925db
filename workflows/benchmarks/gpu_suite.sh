#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one command (a few minutes on one GPU), inline executor.
#
# Usage (from the repository root, with the project's environment active):
#     bash workflows/benchmarks/gpu_suite.sh [DEVICE]      # DEVICE: cuda (default) or cpu
# (cpu: the same steps with generation at L = 8, to check the script on a machine without a GPU)
#
# 1. 10k-sample generation, Ising L = 16, lattice and transformer denoisers, k = 16 and k = 1;
# 2. cluster-expansion energies/s on DEVICE beside icet on the same machine (64 and 256 sites);
# 3. MACE configurations/s (shipped Cu–Au model, 64-site cell) on DEVICE;
# 4. where one quickstart MetaDNS outer iteration spends its time on DEVICE.
# Each step prints its own figures; the script stops at the first failure.
set -euo pipefail
device="${1:-cuda}"
python=${PYTHON:-python}
echo "== machine: $(hostname), $(nproc) CPUs; torch $($python -c 'import torch; print(torch.__version__, torch.version.cuda)')"
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
size=(--L 16 --n 10000)
if [ "$device" = cpu ]; then size=(--L 8 --n 500); fi   # the CPU run only checks the script
echo "== 1. generation, Ising ${size[*]}"
$python workflows/benchmarks/generation_speed.py "${size[@]}" --denoiser both --k 16 1 --device "$device" \
    --max-seconds 60
echo "== 2. cluster-expansion energies/s beside icet"
$python workflows/benchmarks/ce_speed.py --device "$device" --seconds 0.5 --batch-sizes 1024 4096 16384
echo "== 3. MACE configurations/s"
$python workflows/benchmarks/mace_speed.py --device "$device" --configs 512 --batch-sizes 8 64 256 512 --repeats 2
echo "== 4. one quickstart outer iteration, by part"
$python workflows/benchmarks/training_step.py workflows/quickstart.yaml --warmup 10 --iterations 20 \
    --set training.device="$device"
