"""Does this machine round like the one that filed an entry? The quickstart under forced kernels.

Machines of this workplace with the same platform, torch build and thread count train the same
arm to different losses: torch (ATen), MKL and oneDNN pick their kernels by the instruction sets
the CPU offers. This trains the quickstart once per setting of the variables that force those
libraries onto another path, each in its own process on one thread, and prints the clean arm's
final training loss beside the one filed in `leaderboard/entries`: a setting that reproduces the
filed number says which path the filing machine took.

    OMP_NUM_THREADS=1 python benchmarks/kernel_dispatch.py [--settings NAME,...] [--out DIR]

Measured 2026-12-02 on an AVX-512 Xeon with AMX (`cpu_capability` AVX512), filed entry from
another machine 0.004110324: default 0.004057579; ATEN_CPU_CAPABILITY=avx2 0.004003218;
ONEDNN_MAX_CPU_ISA=AVX2 0.004061490; MKL_ENABLE_INSTRUCTIONS=SSE4_2 (or AVX, which MKL runs as
SSE4.2) 0.004110329; MKL_CBWR=COMPATIBLE 0.004094963; all three on AVX2 0.004629083. MKL's path
moves the loss by 1.3%, and forcing it to SSE4.2 comes within 1e-6 of the filed number without
equalling it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "quickstart.yaml"
FILED = ROOT / "leaderboard" / "entries" / "quickstart__clean__none__s0.json"

#: name -> the environment it adds (nothing: the CPU's own choice)
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "onednn-avx512-core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "mkl-sse4.2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},  # what MKL runs when asked for AVX
    "mkl-cbwr-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "all-avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
}


def final_loss(setting: str, out: Path) -> float:
    """The quickstart's clean arm trained under `setting`, in a process of its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **SETTINGS[setting]}
    folder = out / setting
    subprocess.run(
        [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())"]
        + ["eval", str(SPEC), "--output", str(folder), "--quiet"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    entry = json.loads((folder / "quickstart" / "entries" / "clean__none__s0.json").read_text())
    return float(entry["results"]["final_train_loss"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    parser.add_argument("--out", type=Path, help="run folders here (default: a temporary one)")
    args = parser.parse_args(argv)
    names = [n for n in args.settings.split(",") if n]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    filed_entry = json.loads(FILED.read_text())
    filed = float(filed_entry["results"]["final_train_loss"])
    print(f"filed ({filed_entry['hardware'].get('platform')}): {filed:.9f}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for name in names:
            loss = final_loss(name, out)
            mark = "equal" if loss == filed else f"{loss / filed - 1:+.2e} relative"
            print(f"{name:22s} {loss:.9f}  {mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
