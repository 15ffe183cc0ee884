"""Crash-safe file replacement for the HAProxy configuration."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "keep_rejected"]


def atomic_write(path: str | os.PathLike[str], text: str, new_mode: int = 0o644) -> None:
    """Replace ``path`` atomically: temp file in the same directory, fsync, rename, fsync
    the directory. Keeps the old file's mode bits (``new_mode`` for a new file)."""
    target = Path(path)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = new_mode
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
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


def keep_rejected(path: str | os.PathLike[str], text: str) -> Path:
    """Write a candidate that failed validation next to the live file, for inspection."""
    target = Path(path)
    rejected = target.with_name(target.name + ".rejected")
    atomic_write(rejected, text)
    return rejected
