"""A disk cache of generated poisons, shared by every run, arm, defence and backbone that uses them.

Generating a poison can cost far more than training on it (surrogate models, thousands of PGD
steps), so a poison is stored under a key made of everything that determines it: the method and
its resolved parameters, the plugin's distribution version, the data set with its parameters and
subset, a fingerprint of the actual clean training data, and the seed. Entries are written
atomically, so an interrupted generation never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.archive import cache_root
from harness.atomic import atomic_write

FORMAT = 1


def data_fingerprint(x: Tensor, y: Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for t in (x, y):
        digest.update(str((tuple(t.shape), str(t.dtype))).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def poison_key(poison: dict[str, Any], dataset: dict[str, Any], fingerprint: str, seed: int) -> str:
    identity = {
        "format": FORMAT,
        "poison": poison,
        "dataset": dataset,
        "data": fingerprint,
        "seed": seed,
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class PoisonCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "poisons"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str, shape: tuple[int, ...]) -> tuple[Tensor, dict[str, Any]] | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, weights_only=True)
            x = entry["x"]
        except Exception:  # an unreadable entry is a cache miss, not an error
            return None
        if tuple(x.shape) != tuple(shape):
            return None
        return x.to(torch.float32), entry.get("meta", {})

    def save(self, key: str, x: Tensor, meta: dict[str, Any]) -> Path:
        path = self.path(key)
        atomic_write(path, lambda f: torch.save({"x": x.detach().cpu(), "meta": meta}, f))
        return path
