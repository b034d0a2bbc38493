#!/usr/bin/env bash
# Issue 12's runs (docs/results.md) on a 2-core machine: two lanes of one torch thread each, every
# command resumable, so after an interruption the same command goes on where everything stopped
# (arms from their last complete epoch, a REM generation from its last checkpoint).
#
#   bash benchmarks/paper_runs.sh [ROOT]     # ROOT (default ~/paper-runs): ROOT/runs, ROOT/*.log
#
# lane A: Table 1 (seed 0), then Table 2, which adopts Table 1's undefended arms (--reuse-arms)
# lane B: Table 1's seeds 1-2, then Table 3 (ResNet-50, SENet-18, ViT)
# Measured here: an arm of ResNet-18 w16 takes ~30 min (SAL ~80-110 s of each ~95-125 s epoch);
# REM's generation ~1.5 h, EM's 0.5-1 h, TAP's 7 min. Then: python benchmarks/paper_results.py --runs ROOT/runs
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="${1:-$HOME/paper-runs}"
mkdir -p "$root"
cd "$root"
export OMP_NUM_THREADS=1

run() {  # run NAME [ARGS...]: one spec into ROOT/runs, its progress appended to ROOT/NAME.log
  local name="$1"
  shift
  harness eval "$here/specs/$name.yaml" --output runs --save-snapshots 5 "$@" >>"$name.log" 2>&1
}

lane_a() {
  run paper-table1-cpu && run paper-table2-cpu --reuse-arms runs/paper-table1-cpu
}
lane_b() {
  run paper-table1-seeds-cpu && run paper-table3-resnet50-cpu && run paper-table3-senet18-cpu &&
    run paper-table3-vit-cpu
}

lane_a &
a=$!
lane_b &
b=$!
wait "$a"
status_a=$?
wait "$b"
status_b=$?
echo "lane A (Tables 1, 2): exit $status_a; lane B (seeds, Table 3): exit $status_b"
[ "$status_a" = 0 ] && [ "$status_b" = 0 ]
