"""A disk cache of generated poisons, shared by every run, arm, defence and backbone that uses them.

Generating a poison can cost far more than training on it (surrogate models, thousands of PGD
steps), so a poison is stored under a key made of everything that determines it:

- the method: its name, resolved parameters and label, the plugin's distribution and version,
  and a **digest of its code** (`harness.sysinfo.code_digest`: the source of the module that
  defines the generator and of every module it imports from its own package), so an edited
  generator misses the cache even when its version was not bumped;
- the crafting task, when the spec names one;
- the data set: its name, parameters (without those naming files or folders) and subset, and a
  fingerprint of the actual clean training inputs, labels and targets;
- the seed, and the cache's format.

The key is the SHA-256 of that identity as canonical JSON; the entry lives in
`$HARNESS_CACHE/poisons/<key[:2]>/<key>.pt` (`~/.cache/harness/poisons` by default), with
what it holds in `meta` (method, label, seed, data set, shape, when it was made) for
`harness cache list`. Entries are written atomically and hold the SHA-256 of their tensor's
bytes: a damaged entry (unreadable, or whose bytes no longer match) is reported, deleted and
generated again, never used. Generators whose code cannot be read are never cached.

A generation under way keeps its checkpoint (`DiskCheckpoint`, the state a long generator hands
`ctx.checkpoint`) in `partial/<key>.pt` under the same key, so it can only be resumed by the
very generation that wrote it; it is deleted when the poison is stored, listed by
`harness cache list` and removed by `harness cache clear` like an entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.archive import cache_root
from harness.atomic import atomic_write
from harness.errors import HarnessError
from harness.poison import GenerationCheckpoint

FORMAT = 2


def data_fingerprint(x: Tensor, y: Tensor, targets: dict[str, Tensor] | None = None) -> str:
    digest = hashlib.blake2b(digest_size=16)
    tensors = [x, y] + [targets[k] for k in sorted(targets or {})]
    for name, t in zip(["x", "y", *sorted(targets or {})], tensors, strict=True):
        if name not in ("x", "y"):
            digest.update(name.encode())
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


def tensor_digest(x: Tensor) -> str:
    t = x.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)}:{t.dtype}\0".encode())
    digest.update(t.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One cached poison as `harness cache list` shows it."""

    path: Path
    size: int
    modified: float
    meta: dict[str, Any]

    @property
    def key(self) -> str:
        return self.path.stem

    @property
    def method(self) -> str:
        return str(self.meta.get("poison", "?"))

    @property
    def partial(self) -> bool:
        """A generation's checkpoint rather than a finished poison."""
        return self.path.parent.name == PARTIAL


#: the folder, under the cache's root, of checkpoints of unfinished generations
PARTIAL = "partial"
#: the folder of the generations' lock files (`PoisonCache.generating`)
LOCKS = "locks"

#: seconds between two checkpoints of a generation (`HARNESS_POISON_CHECKPOINT_S` overrides)
CHECKPOINT_INTERVAL_S = 120.0


def checkpoint_interval_s() -> float:
    value = os.environ.get("HARNESS_POISON_CHECKPOINT_S")
    if value is None:
        return CHECKPOINT_INTERVAL_S
    try:
        return max(0.0, float(value))
    except ValueError:
        raise HarnessError(
            f"environment variable HARNESS_POISON_CHECKPOINT_S: expected a number of seconds, "
            f"got {value!r}"
        ) from None


class DiskCheckpoint(GenerationCheckpoint):
    """A generation's state in `partial/<key>.pt`, written atomically at most every
    `interval_s` seconds (the first save after `interval_s` from the start).

    A checkpoint that cannot be read is reported to `on_damaged`, deleted and ignored (the
    generation starts over); `on_resume(age_s)` is told when a saved state is handed back.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        interval_s: float,
        root: Path,
        on_resume: Callable[[float], None] | None = None,
        on_damaged: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.path, self.meta, self.interval_s, self.root = path, meta, interval_s, root
        self.on_resume, self.on_damaged = on_resume, on_damaged
        self._last = self._started = time.monotonic()
        self._earlier = 0.0

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            record = torch.load(self.path, weights_only=True)
            state = record["state"]
            if not isinstance(state, dict):
                raise TypeError("its state is not a dict")
        except Exception as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if self.on_damaged is not None:
                self.on_damaged(self.path, f"it cannot be read ({type(exc).__name__})")
            return None
        meta = record.get("meta", {})
        self._earlier = float(meta.get("seconds", 0.0))
        self._started = time.monotonic()
        if self.on_resume is not None:
            self.on_resume(max(0.0, time.time() - float(meta.get("saved", 0))))
        return state

    @property
    def earlier_seconds(self) -> float:
        return self._earlier

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval_s

    def save(self, state: dict[str, Any]) -> None:
        seconds = self._earlier + time.monotonic() - self._started
        record = {"state": state, "meta": {**self.meta, "saved": time.time(), "seconds": seconds}}
        atomic_write(self.path, lambda f: torch.save(record, f), root=self.root)
        self._last = time.monotonic()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _lock(handle: Any, on_wait: Callable[[], None] | None) -> bool:
    """Take `handle`'s exclusive lock, waiting for its holder; False where flock is refused."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass  # held by another process
    except OSError:
        return False  # a file system without flock
    if on_wait is not None:
        on_wait()
    fcntl.flock(handle, fcntl.LOCK_EX)
    return True


class PoisonCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "poisons"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def partial_path(self, key: str) -> Path:
        """Where the checkpoint of an unfinished generation of `key` is kept."""
        return self.root / PARTIAL / f"{key}.pt"

    def checkpoint(
        self,
        key: str,
        meta: dict[str, Any],
        on_resume: Callable[[float], None] | None = None,
        on_damaged: Callable[[Path, str], None] | None = None,
    ) -> DiskCheckpoint:
        """The checkpoint of the generation of the poison stored under `key`."""
        return DiskCheckpoint(
            self.partial_path(key),
            meta,
            checkpoint_interval_s(),
            self.root,
            on_resume,
            on_damaged,
        )

    def load(
        self,
        key: str,
        shape: tuple[int, ...],
        on_damaged: Callable[[Path, str], None] | None = None,
    ) -> tuple[Tensor, dict[str, Any]] | None:
        """The cached poison, or None. A damaged entry is deleted, reported to `on_damaged`
        (path, why) and treated as a miss, so the poison is generated again."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            entry = torch.load(path, weights_only=True)
            x, stored = entry["x"], entry["sha256"]
            ok = isinstance(x, Tensor) and tensor_digest(x) == stored
            why = "its content does not match the digest stored with it"
        except Exception as exc:  # unreadable: a miss, never an error
            ok, why = False, f"it cannot be read ({type(exc).__name__})"
        if ok and tuple(x.shape) != tuple(shape):
            ok, why = False, f"it holds shape {tuple(x.shape)}, not {tuple(shape)}"
        if not ok:
            with contextlib.suppress(OSError):
                path.unlink()
            if on_damaged is not None:
                on_damaged(path, why)
            return None
        return x.to(torch.float32), entry.get("meta", {})

    def save(self, key: str, x: Tensor, meta: dict[str, Any]) -> Path:
        path = self.path(key)
        x = x.detach().cpu()
        record = {"x": x, "sha256": tensor_digest(x), "meta": {"created": time.time(), **meta}}
        atomic_write(path, lambda f: torch.save(record, f), root=self.root)
        return path

    @contextlib.contextmanager
    def generating(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Within: no other process generates the poison stored under `key`.

        Two runs that share a poison (Table 2's and Table 3's EM) started side by side would
        otherwise both generate it, an hour of surrogate training each; the second now waits
        for the first (after `on_wait`), then finds the entry in the cache. An advisory lock
        (`flock`) on `locks/<key>.lock`: released when its holder ends, however it ends, so a
        killed generation blocks nobody. A file system without `flock` (some network mounts)
        raises OSError on it: there the generations go on unlocked, as before.
        """
        lock_dir = self.root / LOCKS
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{key}.lock", "a+b") as handle:
            locked = _lock(handle, on_wait)
            try:
                yield
            finally:
                if locked:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def entries(self) -> Iterator[CacheEntry]:
        """Every entry and every unfinished generation's checkpoint, with its meta (read
        without loading the tensors); oldest first."""
        found = []
        paths = [*self.root.glob("??/*.pt"), *self.root.glob(f"{PARTIAL}/*.pt")]
        for path in paths:
            if path.is_symlink() or not path.is_file():
                continue
            try:
                meta = dict(torch.load(path, weights_only=True, mmap=True).get("meta", {}))
            except Exception:  # unreadable: still listed, so it can be cleared
                meta = {"poison": "<unreadable>"}
            stat = path.stat()
            found.append(CacheEntry(path, stat.st_size, stat.st_mtime, meta))
        yield from sorted(found, key=lambda e: e.modified)

    def clear(
        self, *, method: str | None = None, older_than_s: float | None = None
    ) -> list[CacheEntry]:
        """Delete entries (of `method`, or older than `older_than_s` seconds); returns them."""
        now = time.time()
        removed = []
        for entry in self.entries():
            if method is not None and entry.method != method:
                continue
            if older_than_s is not None and now - entry.modified < older_than_s:
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
            removed.append(entry)
        for folder in [*self.root.glob("??"), self.root / PARTIAL]:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        return removed
