#!/usr/bin/env bash
# Rebuild this folder from the CPU-scale runs of the specs in specs/, with the harness itself:
# every entry file here is what `harness submit` wrote after checking its run (complete, spec
# hash, entries recomputed from run.h5, plugin versions). Nothing in this folder is hand-written.
#
#   harness data extract ../shared/data/cifar10-jpg.tar.xz   # once: the CIFAR-10 specs need it
#   bash leaderboard/rebuild.sh                               # about 2.5 hours on 2 CPU cores
#
# Runs are resumed where they stopped (and reused when complete); poisons come from the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
specs=(quickstart toy-linear cifar10-folder-cpu table1-cifar10-cpu table2-cifar10-cpu multitask-shapes-cpu)
for name in "${specs[@]}"; do
  harness eval "specs/$name.yaml" --quiet
  harness submit "runs/$name" --leaderboard leaderboard --replace
done
