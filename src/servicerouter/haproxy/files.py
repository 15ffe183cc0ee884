"""Crash-safe file replacement for the HAProxy configuration, and the folders it lives in.

New files and folders get the modes a shell would give them (``new_mode`` less the
process umask): ``mkstemp`` alone creates 0600 and ``Path.mkdir(parents=True)`` creates
parents 0777 less the umask, which under ``umask 000`` (a common container default) left
folders anyone could write a config or a map file into."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "keep_rejected", "make_dirs", "remove_leftovers", "umask"]


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it to read it,
    a race with any thread creating a file meanwhile)."""
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)  # no /proc (or a kernel before 4.7): the racy way
    os.umask(old)
    return old


def make_dirs(path: str | os.PathLike[str], mode: int = 0o755) -> None:
    """``mkdir -p`` with every missing folder created ``mode`` less the umask."""
    target = Path(path)
    missing = []
    while not target.is_dir():
        missing.append(target)
        if target.parent == target:
            break
        target = target.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode)
    if missing and not missing[0].is_dir():
        raise NotADirectoryError(f"{missing[0]} is not a folder")


CONFIG_MODE = 0o640
"""A new HAProxy config (less the umask): it holds the password hashes of apps' AUTH
labels (userlists), so it is not world-readable. HAProxy reads it as root or as the
daemon's user; an HAProxy user of the file's group can read it too."""


def atomic_write(path: str | os.PathLike[str], text: str | bytes, new_mode: int = 0o644,
                 mode: int | None = None) -> None:
    """Replace ``path`` atomically: temp file in the same directory, fsync, rename, fsync
    the directory. Keeps the old file's mode bits; a new file gets ``new_mode`` less the
    umask. ``mode`` forces the mode (a file of secrets stays private whoever loosened it)."""
    target = Path(path)
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = new_mode & ~umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=_TMP)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


_TMP = ".tmp"
_RANDOM = "[a-z0-9_]{8}"  # what tempfile.mkstemp puts between the prefix and the suffix


def _temp_files(folder: Path, names: list[str] | None) -> list[str]:
    """The temp files of :func:`atomic_write` in ``folder`` for the files ``names`` (None:
    for any file): regular files named ``.<name>.<8 random characters>.tmp``."""
    name = "|".join(map(re.escape, names)) if names is not None else r"[^/]+"
    pattern = re.compile(rf"\.(?:{name})\.{_RANDOM}{re.escape(_TMP)}")
    try:
        with os.scandir(folder) as entries:
            return [e.path for e in entries
                    if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    except OSError:  # no such folder (yet): nothing left in it
        return []


def remove_leftovers(config: Path) -> None:
    """Remove what an :func:`atomic_write` killed between its temp file and the rename (a
    SIGKILL, a power cut) left of the files written for ``config``: next to it, those of
    the config, its ``.rejected`` and its ``.owners.json``; in ``<config>.d`` (map files,
    crt-lists: a folder of ours alone) those of any file. Nothing else: the config's
    folder is the operator's too (/etc/haproxy)."""
    beside = [config.name, f"{config.name}.rejected",  # keep_rejected
              f"{config.name}.owners.json"]  # owners.owners_path
    for path in (_temp_files(config.parent, beside)
                 + _temp_files(Path(f"{config.resolve()}.d"), None)):
        with contextlib.suppress(OSError):
            os.unlink(path)


def keep_rejected(path: str | os.PathLike[str], text: str) -> Path:
    """Write a candidate that failed validation next to the live file, for inspection,
    as private as the live file (it may hold the same credentials)."""
    target = Path(path)
    rejected = target.with_name(target.name + ".rejected")
    try:
        mode: int | None = target.stat().st_mode & 0o777
    except OSError:
        mode = None
    atomic_write(rejected, text, mode=mode)
    return rejected
