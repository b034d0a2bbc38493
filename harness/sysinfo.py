"""Facts about the machine and the code that produced a result, recorded with every entry."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from harness._version import __version__


def hardware(device: torch.device) -> dict[str, object]:
    """The machine and the settings its float arithmetic depends on (provenance, not identity).

    Bit-identical results need the same device, the same torch build and the same number of
    threads (`torch_threads`, set by `OMP_NUM_THREADS`): sums are split across threads, and
    a different split rounds differently. The determinism switches are recorded as they were.

    Nor do all CPUs round alike at one thread: torch and oneDNN pick their kernels by the
    instruction sets the CPU offers (`cpu_capability`, `cpu_isa`), and machines with the same
    platform, torch and thread count have been seen to train the same arm to different losses
    (forcing MKL onto its AVX path moved the quickstart's final loss by 1.3% on one of them).
    The variables that force these libraries onto another path are recorded when set.
    """
    model, isa = _cpu_model_and_isa()
    info: dict[str, object] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": model,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_isa": isa,
        "kernel_dispatch_env": {k: os.environ[k] for k in _DISPATCH_ENV if k in os.environ},
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


#: the vector instruction sets whose presence changes which float kernels torch and oneDNN run
_ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "amx")
#: environment variables that make torch, MKL or oneDNN run other kernels than the CPU allows
_DISPATCH_ENV = (
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
)


@functools.cache
def _cpu_model_and_isa() -> tuple[str | None, list[str]]:
    """The CPU's model name and vector instruction sets as Linux reports them (None, [] elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, []
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = fields.get("flags", "").split()
    isa = sorted(f for f in flags if f in _ISA_FLAGS or f.startswith(("avx512", "amx_", "avx_")))
    return fields.get("model name"), isa


def hardware_differs(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether an arm resumed on `current` runs on other hardware than it `recorded`.

    Facts the record does not hold (written by an older harness that did not collect them) are
    not counted as a change: the same machine must not look like another after an upgrade.
    """
    return any(key not in current or current[key] != value for key, value in recorded.items())


def git_revision() -> str | None:
    """The harness's own git revision when it runs from a checkout (with '+dirty' for local edits)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def harness_version() -> str:
    return __version__


def code_digest(obj: Any) -> str | None:
    """A digest of the code behind a plugin's factory, or None when it cannot be read.

    It covers the source of the module that defines `obj` and of every module that module
    imports from its own top-level package, transitively (`from ._common import x`,
    `from mypkg.util import y`, `import mypkg.other`): what a plugin author edits when changing
    a method. Code of other packages (the harness, torch, numpy) is covered by their versions.
    """
    target = getattr(obj, "func", obj)  # functools.partial
    module = inspect.getmodule(target)
    if module is None:
        return None
    return _module_digest(module.__name__)


@functools.cache
def _module_digest(name: str) -> str | None:
    top = name.split(".")[0]
    digest = hashlib.sha256()
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        path = _source_file(current)
        if path is None:
            if current == name:
                return None  # no source to digest (built in a notebook, or compiled)
            continue
        source = path.read_bytes()
        digest.update(f"{current}\0{len(source)}\0".encode())
        digest.update(source)
        todo += sorted(_own_imports(current, source, top, path.name == "__init__.py") - seen)
    return digest.hexdigest()


def _source_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    origin = getattr(getattr(module, "__spec__", None), "origin", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return None
    return Path(origin)


def _own_imports(name: str, source: bytes, top: str, is_package: bool) -> set[str]:
    """The modules of package `top` that the source of module `name` imports."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                try:
                    base = importlib.util.resolve_name(
                        "." * node.level + (node.module or ""), package
                    )
                except (ImportError, ValueError):
                    continue
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules imported
    out = set()
    for module in found:
        if module.split(".")[0] != top:
            continue
        # `import a.b.c` also runs a and a.b: their code counts too
        parts = module.split(".")
        out.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return {m for m in out if _source_file(m) is not None}
