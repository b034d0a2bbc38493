"""Wall time of a spec run locally and on a Ray cluster of loopback nodes, and whether they agree.

    python benchmarks/ray_vs_local.py specs/quickstart.yaml [--nodes 2] [--cpus-per-node 1]
        [--epochs N] [--out /tmp/ray-vs-local]

Runs `harness eval` twice from scratch (fresh poison caches): once with `--executor local`
under OMP_NUM_THREADS=1, once with `--executor ray` on a cluster of `--nodes` nodes started with
`ray start` on 127.0.0.1 (one CPU per arm, so one thread per arm as well), then compares every
dataset of the two run.h5 files but the timings, bit for bit, and every entry but its wall time.
`--epochs` cuts the spec's training short (the poisons are unchanged). Prints the times; nothing
is asserted.

`--only local` / `--only ray` runs one half (each time is kept in OUT/times.json), so that on a
shared machine the one-thread local half can run beside other work and the Ray half on idle
cores; the comparison is printed once both halves are there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from raycluster import RayCluster  # noqa: E402

from harness.entries import read_entries  # noqa: E402

TIMINGS = {"train_seconds", "sal_seconds"}


def arrays(run: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(run / "run.h5", "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] not in TIMINGS
                else None
            )
        )
    return out


def differences(a: Path, b: Path) -> list[str]:
    got, want = arrays(a), arrays(b)
    out = [f"only in one: {name}" for name in sorted(set(got) ^ set(want))]
    for name in sorted(set(got) & set(want)):
        x, y = got[name], want[name]
        kind = x.dtype.kind == "f"
        if x.shape != y.shape or not (
            np.array_equal(x, y, equal_nan=kind) if kind else np.array_equal(x, y)
        ):
            out.append(f"differs: {name}")
    # provenance, not results: when and from which commit (run.h5 records its creation time)
    volatile = {"wall_time_s", "hdf5", "git_revision"}
    ea = {e.arm_id: e.model_dump(exclude=volatile) for e in read_entries(a)}
    eb = {e.arm_id: e.model_dump(exclude=volatile) for e in read_entries(b)}
    out += [
        f"entry differs: {arm}" for arm in sorted(set(ea) | set(eb)) if ea.get(arm) != eb.get(arm)
    ]
    return out


def timed(args: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "harness.cli", "eval", *args],
            env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise SystemExit(f"harness eval {' '.join(args)} failed; see {log}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ray-vs-local"))
    parser.add_argument("--only", choices=("local", "ray"), default=None)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    yaml = YAML(typ="safe", pure=True)
    spec = yaml.load(args.spec.read_text())
    if args.epochs is not None:
        spec["training"]["epochs"] = args.epochs
    path = out / args.spec.name
    with path.open("w") as handle:
        yaml.dump(spec, handle)
    name = spec["name"]

    times_file = out / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    if args.only in (None, "local"):
        times["local"] = timed(
            [str(path), "--output", str(out / "local"), "--executor", "local", "--fresh"],
            {"HARNESS_CACHE": str(out / "cache-local")},
            out / "local.log",
        )
        times_file.write_text(json.dumps(times))
        print(f"local, one thread: {times['local']:.1f} s", flush=True)
    if args.only in (None, "ray"):
        cluster = RayCluster(args.cpus_per_node, env={"HARNESS_CACHE": str(out / "cache-ray")})
        try:
            for _ in range(args.nodes - 1):
                cluster.start_node(args.cpus_per_node)
            times["ray"] = timed(
                [str(path), "--output", str(out / "ray"), "--fresh"]
                + ["--executor", "ray", "--address", cluster.address, "--cpus-per-arm", "1"],
                {},
                out / "ray.log",
            )
        finally:
            cluster.stop()
        times_file.write_text(json.dumps(times))
        cpus = args.nodes * args.cpus_per_node
        print(f"ray, {args.nodes} node(s), {cpus} CPUs, one per arm: {times['ray']:.1f} s")
    if {"local", "ray"} <= set(times):
        problems = differences(out / "local" / name, out / "ray" / name)
        print(f"local {times['local']:.1f} s, ray {times['ray']:.1f} s")
        print("results: " + ("identical" if not problems else "; ".join(problems)))


if __name__ == "__main__":
    main()
