"""Writing files so that a kill at any moment leaves either the old file or the new one.

Every file the harness writes goes through `atomic_write`:

- **atomically**: the content goes into a new temporary file beside the target, which is
  flushed, synced and then renamed over the target;
- **without following symbolic links**: the temporary file is created with `O_EXCL |
  O_NOFOLLOW` and the rename replaces a link at the target instead of writing through it. With
  `root` (the folder the file belongs to, e.g. a run folder), every folder between `root` and
  the file is also opened with `O_NOFOLLOW`, so a planted link (`entries -> /elsewhere`) is
  refused instead of written through (`UnsafePathError`);
- **with the umask's mode**: the file is created with mode 0666 and the process umask applies,
  as for any file a program creates (not the 0600 of `tempfile.mkstemp`), so pages and entries
  can be served and shared.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from harness.errors import UnsafePathError

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def atomic_write(
    path: Path, write: Callable[[IO[bytes]], None], *, root: Path | None = None
) -> None:
    """Write `path` atomically with `write(file)`; with `root`, through real folders only."""
    path = Path(path)
    dir_fd = open_folder(path.parent, root)
    tmp = f".{path.name}.{secrets.token_hex(6)}.partial"
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
            0o666,
            dir_fd=dir_fd,
        )
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        with contextlib.suppress(OSError):  # the rename itself survives a power cut
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str, *, root: Path | None = None) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), root=root)


def open_folder(folder: Path, root: Path | None = None) -> int:
    """A descriptor of `folder`, created if missing; with `root`, refusing any link below it.

    `root` itself is trusted (the user named it) and may be a link; each folder from `root`
    down to `folder` is opened with `O_NOFOLLOW`, so none of them can lead elsewhere.
    """
    folder = Path(folder)
    if root is None:
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(folder, _DIR_FLAGS)
    root = Path(root)
    try:
        parts = Path(os.path.abspath(folder)).relative_to(os.path.abspath(root)).parts
    except ValueError:
        raise UnsafePathError(f"{folder} is not inside {root}; refusing to write there") from None
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, _DIR_FLAGS)
    here = root
    try:
        for part in parts:
            here = here / part
            if part in ("", ".", ".."):
                raise UnsafePathError(f"{here}: refusing to write through '{part}'")
            try:
                child = os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = _open_child(part, fd, here)
            except OSError as exc:
                raise _not_a_folder(here, exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child(part: str, fd: int, here: Path) -> int:
    try:
        return os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        raise _not_a_folder(here, exc) from None


def _not_a_folder(path: Path, exc: OSError) -> UnsafePathError:
    if os.path.islink(path):
        return UnsafePathError(
            f"{path} is a symbolic link (to {os.readlink(path)}); the harness never writes "
            "through links inside the folders it owns: remove it"
        )
    if exc.errno == errno.ENOTDIR:
        return UnsafePathError(f"{path} is not a folder; remove it or choose another folder")
    return UnsafePathError(f"{path}: cannot be opened as a folder ({exc.strerror})")
