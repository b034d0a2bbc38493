"""Unpacking data-set archives into a cache folder, safely and once.

Data sets never live in the repository; they are extracted into the user's cache
(`$HARNESS_CACHE`, default `~/.cache/harness`) by `harness data extract ARCHIVE`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import DataError

COMPLETE_MARKER = ".complete"
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", "~/.cache/harness")).expanduser()


def default_destination(archive: Path) -> Path:
    """`<cache>/data/<archive name without its suffix>`."""
    name = Path(archive).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return cache_root() / "data" / name


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    parts = Path(member.name).parts
    if member.name.startswith(("/", "\\")) or Path(member.name).is_absolute():
        return "has an absolute path"
    if ".." in parts:
        return "contains '..'"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith(("/", "\\")) or ".." in Path(target).parts:
            return f"links outside the archive ({target})"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "is a device, fifo or other special file"
    return None


def _checked(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    # Checking while iterating reads a compressed archive once instead of twice.
    for member in tar:
        reason = _unsafe_reason(member)
        if reason is not None:
            raise DataError(f"refusing to extract {archive}: member {member.name!r} {reason}")
        yield member


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a .tar / .tar.gz / .tar.xz into `dest` once, safely and atomically.

    The archive is unpacked into a sibling temporary folder that is renamed to `dest` only when
    complete (with a `.complete` marker inside), so an interrupted run or a concurrent one never
    leaves a half-filled cache that a later run would trust. Members with absolute paths, '..'
    or links leaving the tree are refused before anything is written outside the temporary
    folder.
    """
    archive = Path(archive).expanduser()
    dest = Path(dest).expanduser()
    if (dest / COMPLETE_MARKER).is_file():
        return dest
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest} exists and is not a folder")
    if dest.exists() and any(dest.iterdir()):
        raise DataError(
            f"{dest} exists but has no {COMPLETE_MARKER} marker (an unfinished or foreign "
            "extraction); remove it and run again"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{dest.name}.partial-", dir=dest.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _checked(tar, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(partial, members=members, filter="data")
                else:  # Python without PEP 706: _checked already refused what the filter would
                    tar.extractall(partial, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"cannot extract {archive} ({type(exc).__name__}: {exc})") from exc
        (partial / COMPLETE_MARKER).write_text(f"{archive.name}\n")
        try:
            if dest.exists():
                dest.rmdir()  # empty, checked above
            partial.rename(dest)
        except OSError:
            if not (dest / COMPLETE_MARKER).is_file():  # not merely a concurrent extraction
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return dest
