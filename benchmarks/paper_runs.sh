#!/usr/bin/env bash
# Issue 12's runs (docs/results.md) on one machine, every command resumable: after an
# interruption the same command goes on where everything stopped (arms from their last complete
# epoch, a REM generation from its last checkpoint).
#
#   bash benchmarks/paper_runs.sh [ROOT]     # ROOT (default ~/paper-runs): ROOT/runs, ROOT/*.log
#   SKIP="paper-table3-resnet50-cpu" bash benchmarks/paper_runs.sh [ROOT]   # all but these specs
#
# Sessions need not share a machine: each spec trains only the arms neither kept in
# docs/paper-arms nor filed in leaderboard/entries (`harness eval --arms`, with the clean
# reference β needs; a spec with none left is skipped), and a finished spec's arms are kept
# there. Runs write each arm's entry as it finishes, so before a session ends keep what finished
# (runs still training included) and commit docs/paper-arms:
#   python benchmarks/paper_arms.py keep ROOT/runs/*
#
# Two lanes of specs: A, Table 1 (seed 0) then Table 2, which adopts Table 1's undefended arms
# (--reuse-arms), or without Table 1's run folder trains its own (UD is a ratio to the run's clean
# arm, and another machine's Table 1 clean arm need not equal this one's: docs/results.md,
# "Trained twice"); B, Table 1's seeds 1-2 then Table 3
# (SENet-18, ViT, ResNet-50).
#
# With Ray installed (the `ray` extra) the lanes' drivers share one local Ray cluster of CPUS
# CPUs (default: all), one CPU and one torch thread per arm, so every core trains some arm until
# the last one: when lane B runs out of arms, lane A's Table 2 (20 arms) takes both cores. This
# computes what `OMP_NUM_THREADS=1` local runs compute (tests/test_ray.py). The cluster is left
# running; `ray stop` ends it. Without Ray (or with EXECUTOR=local) each lane is one local
# process of one thread, and a core idles once its lane is done (lane A is ~7 h longer).
#
# Measured here: an arm of ResNet-18 w16 takes 25-35 min on one core (SAL ~80 s of each epoch;
# adversarial training and UEraser add 40-75 s of training an epoch); REM's generation ~1.5 h,
# EM's 0.5-1 h, TAP's 7 min, DC's 20 min. Then: python benchmarks/paper_results.py --runs ROOT/runs
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="${1:-$HOME/paper-runs}"
mkdir -p "$root"
cd "$root"
# every CPU the machine has (nproc alone would answer OMP_NUM_THREADS, which is set to 1 below)
cpus="${CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}"
export OMP_NUM_THREADS=1
executor=("--executor" "local")

if [ "${EXECUTOR:-ray}" = ray ] && command -v ray >/dev/null; then
  export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
  unset RAY_ADDRESS
  address="127.0.0.1:${RAY_PORT:-6391}"
  if ! ray status --address "$address" >/dev/null 2>&1; then
    ray start --head --node-ip-address 127.0.0.1 --port "${RAY_PORT:-6391}" \
      --num-cpus "$cpus" --num-gpus 0 --include-dashboard=false \
      --object-store-memory $((1024 * 1024 * 1024)) --disable-usage-stats >>ray.log 2>&1 ||
      { echo "ray start failed: see $root/ray.log" >&2; exit 1; }
  fi
  executor=(--executor ray --address "$address" --cpus-per-arm 1)
fi

run() {  # run NAME [ARGS...]: one spec into ROOT/runs, its progress appended to ROOT/NAME.log
  local name="$1" todo
  shift
  case " ${SKIP:-} " in *" $name "*) echo "skipped $name (SKIP)" >>"$name.log"; return 0 ;; esac
  # only the arms no earlier session kept (docs/paper-arms), with the clean reference
  todo="$(python "$here/benchmarks/paper_arms.py" todo ${TODO:-} "$here/specs/$name.yaml")" || return
  if [ -z "$todo" ]; then
    echo "skipped $name: every arm is filed (leaderboard/entries) or kept (docs/paper-arms)" >>"$name.log"
    return 0
  fi
  harness eval "$here/specs/$name.yaml" --output runs --save-snapshots 5 "${executor[@]}" \
    --arms "$todo" "$@" >>"$name.log" 2>&1 &&
    python "$here/benchmarks/paper_arms.py" keep "runs/$name" >>"$name.log" 2>&1
}

lane_a() {  # Table 2's undefended arms: Table 1's adopted with its clean arm, or its own
  run paper-table1-cpu || return
  if [ -d runs/paper-table1-cpu ]; then
    run paper-table2-cpu --reuse-arms runs/paper-table1-cpu
  else
    run paper-table2-cpu
  fi
}
lane_b() {  # ResNet-50 last: an arm ~3.8 h on one core (54 scored layers; SAL ~640 s an epoch)
  run paper-table1-seeds-cpu && run paper-table3-senet18-cpu && run paper-table3-vit-cpu &&
    run paper-table3-resnet50-cpu
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
