"""What a killed daemon or sync left of an ``atomic_write`` (a SIGKILL between the temp
file and the rename) is removed: next to the config and in ``<config>.d`` (map files,
crt-lists); an operator's files, even look-alikes, stay."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from servicerouter.haproxy.control import ConfigFile


def killed_write(folder: Path, name: str) -> Path:
    """A temp file named as atomic_write names them, as a killed one leaves it."""
    fd, path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    return Path(path)


def leftovers_and_others(tmp: Path) -> tuple[set[Path], set[Path]]:
    """(the temp files a killed run left, files that are not ours to remove)."""
    config, maps = tmp / "haproxy.cfg", tmp / "haproxy.cfg.d"
    maps.mkdir()
    config.write_text("global\n")
    (maps / "ports.map").write_text("")
    ours = {killed_write(tmp, "haproxy.cfg"), killed_write(tmp, "haproxy.cfg.rejected"),
            killed_write(tmp, "haproxy.cfg.owners.json"), killed_write(maps, "ports.map"),
            killed_write(maps, "spares.json"), killed_write(maps, "crt-0123456789abcdef.list")}
    others = {config, maps / "ports.map", tmp / ".haproxy.cfg.swp", tmp / "haproxy.cfg.tmp",
              tmp / ".haproxy.cfg.backup.tmp", tmp / ".other.cfg.abcd1234.tmp",
              maps / "notes.tmp", maps / ".ports.map.tmp", maps / ".ports.map.ABCD1234.tmp"}
    for path in others - {config, maps / "ports.map"}:
        path.write_text("not ours\n")
    (maps / ".dir.abcd1234.tmp").mkdir()  # a folder, whatever its name
    others.add(maps / ".dir.abcd1234.tmp")
    return ours, others


def files(tmp: Path) -> set[Path]:
    return set(tmp.rglob("*")) - {tmp / "haproxy.cfg.d"}


def test_the_daemons_cleanup_removes_leftovers_in_the_map_folder_too(tmp_path: Path) -> None:
    ours, others = leftovers_and_others(tmp_path)
    assert files(tmp_path) == ours | others
    ConfigFile(tmp_path / "haproxy.cfg").cleanup()
    assert files(tmp_path) == others


def test_cleanup_without_a_map_folder_or_a_config(tmp_path: Path) -> None:
    ConfigFile(tmp_path / "missing" / "haproxy.cfg").cleanup()  # nothing to do, no error
    leftover = killed_write(tmp_path, "haproxy.cfg")
    ConfigFile(tmp_path / "haproxy.cfg").cleanup()
    assert not leftover.exists()
