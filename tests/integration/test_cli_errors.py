"""Operator mistakes: one line naming the flag and the value, a non-zero exit, no traceback.

Run as the operator runs it: ``python -m servicerouter`` in a subprocess.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import needs_haproxy
from .harness import free_port

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).parent.parent / "fixtures" / "apps_host_2ports.json"


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "servicerouter", *argv], capture_output=True,
                       text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    return p.returncode, p.stderr


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_listen_on_a_busy_port(tmp_path: Path, busy_port: int) -> None:
    code, err = run("run", "--marathon", "http://127.0.0.1:1", "--start-haproxy",
                    "--haproxy-config", str(tmp_path / "h.cfg"),
                    "--listen", f"127.0.0.1:{busy_port}")
    assert code == 1
    assert f"--listen 127.0.0.1:{busy_port}" in one_error_line(err)
    assert "listening" not in err  # never claimed


@needs_haproxy
def test_existing_config_with_a_busy_port(tmp_path: Path, busy_port: int) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"global\n    stats socket {tmp_path}/admin.sock mode 600 level admin\n"
                      "defaults\n    mode tcp\n    timeout client 1s\n    timeout server 1s\n"
                      f"    timeout connect 1s\nlisten busy\n    bind 127.0.0.1:{busy_port}\n")
    code, err = run("run", "--marathon", "http://127.0.0.1:1", "--start-haproxy",
                    "--haproxy-config", str(config), "--haproxy-socket",
                    str(tmp_path / "admin.sock"), "--listen", f"127.0.0.1:{free_port()}")
    assert code == 1
    line = one_error_line(err)
    assert f"--haproxy-config {config}" in line and f"127.0.0.1:{busy_port}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg"]


@pytest.mark.parametrize("command, unchanged", [("render", "nothing was written"),
                                                 ("sync", "nothing was changed")])
def test_a_lock_that_cannot_be_made_is_one_line_naming_it(tmp_path: Path, command: str,
                                                         unchanged: str) -> None:
    """Where the config's lock cannot be created (a folder in its way here; a read-only
    /etc/haproxy), render -o and sync say which flag, which file and that nothing was
    done, in the same words (haproxy/lock.py ConfigLock.held, as the bridge does)."""
    config = tmp_path / "haproxy.cfg"
    config.write_text("# the operator's\n")
    lock = tmp_path / "haproxy.cfg.lock"
    lock.mkdir()
    argv = (["render", "--apps-json", str(FIXTURE), "-o", str(config)] if command == "render"
            else ["sync", "--marathon", "http://127.0.0.1:1", "--reload-command", "true",
                  "--haproxy-config", str(config)])
    code, err = run(*argv)
    assert code == 1, err
    flag = "--output" if command == "render" else "--haproxy-config"
    assert one_error_line(err).endswith(
        f"error: {flag} {config}: cannot create the lock {lock}: Is a directory; "
        f"{unchanged}"), err
    assert config.read_text() == "# the operator's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg", "haproxy.cfg.lock"]


# Exit status 1: the host lacks something (a file, a directory, a port); 2: the flags
# themselves cannot work, as argparse's own errors (systemd: RestartPreventExitStatus=2).
@pytest.mark.parametrize("argv, status, expected", [
    (["run", "--haproxy-bin", "/nonexistent"], 1,
     "--haproxy-bin /nonexistent: no such executable"),
    (["run", "--templates", "/nonexistent"], 1, "--templates /nonexistent: no such directory"),
    (["render", "--apps-json", str(FIXTURE), "-o", "/nonexistent/dir/haproxy.cfg"], 1,
     "--output /nonexistent/dir/haproxy.cfg: directory /nonexistent/dir does not exist"),
    (["render", "--apps-json", str(FIXTURE), "--templates", "/nonexistent"], 1,
     "--templates /nonexistent: no such directory"),
    (["run", "--stats-port", "http"], 2, "argument --stats-port: 'http' is not a port"),
    # A typo in a Marathon URL exited 1, so systemd restarted the daemon for ever.
    (["run", "--marathon", "ftp://m1"], 2,
     "--marathon: Marathon URL 'ftp://m1' must start with http:// or https://"),
    (["sync", "--marathon", "http://m1:8080,http://m2:8080", "--reload-command", "true"], 2,
     "--marathon: Marathon URL 'http://m1:8080,http://m2:8080'"),
    (["run", "--listen", "9091"], 2, "argument --listen: '9091' is not HOST:PORT"),
    (["run", "--resync-interval", "-3"], 2, "argument --resync-interval: '-3' is not a number"),
    (["run", "--ssl-certs", "certs/site.pem"], 2,
     "--ssl-certs: 'certs/site.pem' is not an absolute path"),
    (["render", "--apps-json", str(FIXTURE), "--mesos-dns", "marathon.mesos"], 2,
     "--mesos-dns needs --dns-resolver IP:PORT"),
    (["run", "--service-port-range", "10000-9000"], 2, "--service-port-range: "),
    (["run", "--haproxy-socket", "/run/sr/h.sock", "--haproxy-master-socket",
      "/run/sr/../sr/h.sock"], 2, "--haproxy-master-socket /run/sr/../sr/h.sock is also "
     "--haproxy-socket: HAProxy's master CLI and its worker's stats socket need a path each"),
    (["sync", "--marathon", "http://127.0.0.1:1", "--haproxy-socket", "/run/sr/h.sock",
      "--haproxy-master-socket", "/run/sr/h.sock"], 1, "--haproxy-master-socket "
     "/run/sr/h.sock is also --haproxy-socket: HAProxy's master CLI and its worker's stats "
     "socket need a path each; nothing was changed"),
    (["sync", "--marathon", "http://127.0.0.1:1", "--reload-command", "true",
      "--haproxy-config", ""], 2, "--haproxy-config is empty"),
    (["sync", "--marathon", "http://127.0.0.1:1", "--reload-command", "true",
      "--haproxy-config", "/tmp"], 1, "--haproxy-config /tmp: is a directory"),
])
def test_bad_flag_values(tmp_path: Path, argv: list[str], status: int, expected: str) -> None:
    if argv[0] == "run":
        argv += ["--marathon", "http://127.0.0.1:1", "--start-haproxy",
                 "--haproxy-config", str(tmp_path / "h.cfg"),
                 "--listen", f"127.0.0.1:{free_port()}"]
    code, err = run(*argv)
    assert code == status, err
    line = one_error_line(err)
    assert expected in line
    assert "_port" not in line and "_seconds" not in line and "_hostport" not in line
    assert line.endswith("(see --help)") == (status == 2)


def test_keep_haproxy_on_exit_needs_start_haproxy(tmp_path: Path) -> None:
    code, err = run("run", "--marathon", "http://127.0.0.1:1", "--keep-haproxy-on-exit",
                    "--haproxy-master-socket", str(tmp_path / "m.sock"),
                    "--haproxy-config", str(tmp_path / "h.cfg"),
                    "--listen", f"127.0.0.1:{free_port()}")
    assert code == 2
    assert "--keep-haproxy-on-exit goes with --start-haproxy" in one_error_line(err)


@pytest.mark.parametrize("config, status, expected", [
    ("", 2, "--haproxy-config is empty"),
    ("folder", 1, "--haproxy-config {tmp}/folder: is a directory, not the config file"),
])
def test_a_config_path_that_cannot_be_the_config_file(
        tmp_path: Path, config: str, status: int, expected: str) -> None:
    """Empty, it failed as "PosixPath('.') has an empty name"; a folder, the daemon ran
    and failed every write for as long as it ran."""
    if config:
        (tmp_path / config).mkdir()
        config = str(tmp_path / config)
    code, err = run("run", "--marathon", "http://127.0.0.1:1", "--start-haproxy",
                    "--haproxy-config", config, "--haproxy-socket", str(tmp_path / "a.sock"),
                    "--listen", f"127.0.0.1:{free_port()}")
    assert code == status, err
    assert expected.format(tmp=tmp_path) in one_error_line(err)


def test_sync_without_haproxy_says_so_before_asking_marathon(tmp_path: Path) -> None:
    """It fetched from Marathon, then said "haproxy -c rejected the new config" and kept
    a .rejected file, where the README promises "no such executable", as run says."""
    config = tmp_path / "haproxy.cfg"
    code, err = run("sync", "--marathon", "http://127.0.0.1:1", "--reload-command", "true",
                    "--haproxy-bin", "/nonexistent", "--haproxy-config", str(config))
    assert code == 1, err
    assert "--haproxy-bin /nonexistent: no such executable" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []
