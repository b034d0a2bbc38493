#!/usr/bin/env bash
# Rebuild this folder from the runs of the specs in specs/, with the harness itself: every entry
# file here is what `harness submit` wrote after checking its run (complete, spec hash, entries
# recomputed from run.h5, plugin versions). Nothing in this folder is hand-written.
#
#   harness data extract ../shared/data/cifar10-jpg.tar.xz   # once: the CIFAR-10 specs need it
#   OMP_NUM_THREADS=1 bash leaderboard/rebuild.sh             # the CPU-scale example runs (~2.5 h)
#   PAPER=1 RUNS=~/paper-runs/runs bash leaderboard/rebuild.sh
#       # and the paper's tables at CPU scale (ResNet-18 w16; ~17 h on 2 cores, docs/results.md),
#       # reusing the run folders under RUNS where they are already complete
#   ONLY="paper-table1-cpu paper-table1-seeds-cpu" RUNS=~/paper-runs/runs bash leaderboard/rebuild.sh
#       # file again only the runs of these specs; every other entry stays as it is
#
# Runs are resumed where they stopped (and reused when complete); poisons come from the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-runs}"
specs=(quickstart toy-linear cifar10-folder-cpu table1-cifar10-cpu table2-cifar10-cpu multitask-shapes-cpu)
if [ "${PAPER:-0}" = 1 ]; then
  specs+=(paper-table1-cpu paper-table1-seeds-cpu paper-table2-cpu
          paper-table3-resnet50-cpu paper-table3-senet18-cpu paper-table3-vit-cpu)
fi
if [ -n "${ONLY:-}" ]; then
  read -r -a specs <<< "$ONLY"
fi
for name in "${specs[@]}"; do
  reuse=()
  # Table 2's undefended arms are Table 1's: adopted, not trained again (trained when Table 1's
  # run folder is not under RUNS)
  if [ "$name" = paper-table2-cpu ] && [ -d "$RUNS/paper-table1-cpu" ]; then
    reuse=(--reuse-arms "$RUNS/paper-table1-cpu")
  fi
  harness eval "specs/$name.yaml" --output "$RUNS" --quiet "${reuse[@]}"
  harness submit "$RUNS/$name" --leaderboard leaderboard --replace
done
