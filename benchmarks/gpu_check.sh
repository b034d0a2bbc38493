#!/usr/bin/env bash
# The GPU check of issue 11, under 8 minutes on one CUDA GPU: training throughput of ResNet-18
# w64 on CIFAR-size tensors, each SAL estimator's cost per epoch with the projected GPU-hours of
# the paper-scale Table 1, and 2 epochs of one Table 1 arm. Results in ${OUT:-gpu-check}/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
timeout 450 .venv/bin/python benchmarks/gpu_check.py --out "$out" 2>&1 | tee "$out/gpu_check.log"
