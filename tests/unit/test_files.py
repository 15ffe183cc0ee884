"""Files and folders the daemon creates get the modes a shell would give them, never
more: under ``umask 000`` (common in containers) a folder anyone can write to is a
folder anyone can put a config or a map file in."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from servicerouter.haproxy.files import atomic_write, keep_rejected, make_dirs, umask


@pytest.fixture
def mask() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def no_mask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_umask_is_read_without_being_changed(mask: None) -> None:
    assert umask() == 0o027
    assert umask() == 0o027


def test_a_new_file_gets_its_mode_less_the_umask(tmp_path: Path, mask: None) -> None:
    atomic_write(tmp_path / "haproxy.cfg", "global\n")
    assert mode(tmp_path / "haproxy.cfg") == 0o640  # was 0644 whatever the umask


def test_an_existing_file_keeps_its_mode(tmp_path: Path, mask: None) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text("old\n")
    path.chmod(0o604)
    atomic_write(path, "new\n")
    assert (path.read_text(), mode(path)) == ("new\n", 0o604)


def test_a_forced_mode_wins_over_the_existing_one(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("old\n")
    path.chmod(0o644)
    atomic_write(path, "new\n", mode=0o600)
    assert mode(path) == 0o600


def test_a_rejected_candidate_is_as_private_as_the_config(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text("global\n")
    config.chmod(0o600)  # it may hold userlist passwords
    rejected = keep_rejected(config, "candidate\n")
    assert (rejected.name, mode(rejected)) == ("haproxy.cfg.rejected", 0o600)


def test_missing_folders_are_not_world_writable_under_umask_000(
        tmp_path: Path, no_mask: None) -> None:
    make_dirs(tmp_path / "etc" / "haproxy" / "haproxy.cfg.d")
    for folder in ("etc", "etc/haproxy", "etc/haproxy/haproxy.cfg.d"):
        assert mode(tmp_path / folder) == 0o755, folder  # was 0777


def test_missing_folders_get_less_under_a_stricter_umask(tmp_path: Path, mask: None) -> None:
    make_dirs(tmp_path / "a" / "b")
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "b")) == (0o750, 0o750)
    make_dirs(tmp_path / "a" / "b")  # there already: nothing to do


def test_a_file_in_the_way_of_a_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "maps").write_text("")
    with pytest.raises(OSError, match="maps"):
        make_dirs(tmp_path / "maps" / "x")


def test_a_new_haproxy_config_is_not_world_readable(tmp_path: Path) -> None:
    """It holds the password hashes of apps' AUTH labels: 0644 less a usual umask of 022
    let every local user read them."""
    from servicerouter.haproxy.control import ConfigFile

    old = os.umask(0o022)
    try:
        ConfigFile(tmp_path / "haproxy.cfg").write("global\n")
    finally:
        os.umask(old)
    assert mode(tmp_path / "haproxy.cfg") == 0o640


def test_a_written_config_is_unconfirmed_on_disk_until_haproxy_loads_it(
        tmp_path: Path) -> None:
    """A daemon killed between writing a config and HAProxy loading it left nothing to
    tell the next one that HAProxy may not run the file: it adopted HAProxy as though
    it did (the integration test kills one during a reload)."""
    from servicerouter.haproxy.control import ConfigFile

    config = ConfigFile(tmp_path / "haproxy.cfg")
    assert config.unconfirmed() is None
    old = os.umask(0o022)
    try:
        config.write("global\n")
    finally:
        os.umask(old)
    why = config.unconfirmed()
    assert why is not None and "haproxy.cfg.unconfirmed" in why
    assert mode(tmp_path / "haproxy.cfg.unconfirmed") == 0o640
    assert mode(tmp_path / "haproxy.cfg") == 0o640
    config.loaded()
    assert config.unconfirmed() is None and not (tmp_path / "haproxy.cfg.unconfirmed").exists()
    config.write("global\n")
    config.remove()  # no file: nothing HAProxy might not run
    assert config.unconfirmed() is None
