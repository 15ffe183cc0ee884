"""sd_notify: one datagram of KEY=VALUE lines to $NOTIFY_SOCKET, a path or an abstract name."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from servicerouter.sdnotify import ENV, Notifier


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert Notifier.from_environment().send(READY="1") is False


def test_a_path_gets_the_lines_and_children_do_not_inherit_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        monkeypatch.setenv(ENV, str(path))
        notifier = Notifier.from_environment()
        assert ENV not in os.environ
        assert notifier.send(READY="1", STATUS="two\nlines") is True
        assert systemd.recv(4096) == b"READY=1\nSTATUS=two lines\n"


def test_an_abstract_name_starts_with_at() -> None:
    name = f"servicerouter-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        assert Notifier("@" + name).send(STOPPING="1") is True
        assert systemd.recv(4096) == b"STOPPING=1\n"


def test_a_socket_that_is_gone_is_logged_once_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.send(READY="1") is False
    assert notifier.send(STATUS="later") is False  # given up: not logged every 5 s
    assert caplog.text.count("cannot tell systemd") == 1
    assert "READY through NOTIFY_SOCKET" in caplog.text
