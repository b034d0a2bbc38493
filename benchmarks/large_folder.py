"""Peak memory of a run on a generated ImageFolder: uint8 in memory, and streamed from disk.

    python benchmarks/large_folder.py [--images 12000] [--size 96] [--budget-mb 64]
        [--out /tmp/large-folder] [--compare-python /path/to/other/venv/bin/python]

Writes `--images` random JPEGs (`--size` px, 10 classes; a tenth as many test images) once, then
runs one epoch of a small CNN on them with `harness eval`, each run in a fresh process whose peak
resident memory is printed: the data held in memory (uint8), and streamed from disk under a
`--budget-mb` memory budget. `--compare-python` runs the same spec with another installation's
interpreter too (e.g. a checkout from before uint8 storage, which holds float32). Nothing is
asserted; the training values of the runs are compared bit for bit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from ruamel.yaml import YAML

PEAK = (
    "import resource, sys\n"
    "from harness.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(f'PEAK {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}', flush=True)\n"
    "sys.exit(rc)\n"
)


def generate(root: Path, images: int, size: int) -> None:
    if (root / ".complete").exists():
        return
    rng = np.random.default_rng(0)
    for split, n in (("train", images), ("test", max(10, images // 10))):
        for i in range(n):
            c = i % 10
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 2  # something to learn
            Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
    (root / ".complete").write_text("")


def run(python: str, args: list[str], cache: Path) -> tuple[float, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [python, "-c", PEAK, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_CACHE": str(cache)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    peak = next(float(x.split()[1]) for x in done.stdout.splitlines() if x.startswith("PEAK"))
    return peak, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--budget-mb", type=float, default=64)
    parser.add_argument("--out", type=Path, default=Path("/tmp/large-folder"))
    parser.add_argument("--compare-python", default=None)
    args = parser.parse_args()
    out = args.out
    root = out / "folder"
    generate(root, args.images, args.size)
    train_bytes = args.images * 3 * args.size**2
    print(
        f"{args.images} training images of {args.size} px: {train_bytes / 2**20:.0f} MiB as uint8, "
        f"{4 * train_bytes / 2**20:.0f} MiB as float32; budget {args.budget_mb:g} MiB",
        flush=True,
    )
    spec = {
        "name": "large",
        "data": {"name": "image-folder", "params": {"root": str(root)}},
        "backbone": {"name": "small-cnn", "params": {"width": 4, "blocks": 2}},
        "training": {"epochs": 1, "batch_size": 128, "augmentation": [{"name": "flip"}]},
        "sal": {"iterations": 1, "probe_size": 64, "probe_batch_size": 64},
    }
    path = out / "large.yaml"
    with path.open("w") as handle:
        YAML(typ="safe", pure=True).dump(spec, handle)
    cache = out / "cache"
    base = ["eval", str(path), "--quiet", "--fresh"]
    runs = []
    if args.compare_python:
        runs.append(
            ("other installation", args.compare_python, base + ["--output", str(out / "other")])
        )
    runs.append(("uint8 in memory", sys.executable, base + ["--output", str(out / "memory")]))
    streamed = ["--output", str(out / "streamed"), "--memory-budget", str(args.budget_mb)]
    runs.append(("streamed from disk", sys.executable, base + streamed))
    folders = []
    for label, python, argv in runs:
        peak, seconds = run(python, argv, cache)
        folders.append(Path(argv[argv.index("--output") + 1]) / "large")
        print(f"{label:<20} peak RSS {peak:7.0f} MiB   {seconds:6.1f} s", flush=True)

    import h5py

    def sal(folder: Path) -> np.ndarray:
        with h5py.File(folder / "run.h5", "r") as f:
            return f["arms/clean__none__s0/sal"][()], f["arms/clean__none__s0/metrics/test_metric"][
                ()
            ]

    first = sal(folders[0])
    same = all(
        all(np.array_equal(a, b) for a, b in zip(first, sal(f), strict=True)) for f in folders[1:]
    )
    print("SAL and test metric: " + ("identical in every run" if same else "DIFFER"))


if __name__ == "__main__":
    main()
