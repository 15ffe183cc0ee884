"""contrib/systemd: what `make install-files` installs, checked by systemd's own tools
where they exist (systemd-analyze verify and security, systemd-sysusers), and the
SERVICEROUTER_* names in the units and the example file against the real flags."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servicerouter import cli
from servicerouter.envflags import env_name

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "contrib" / "systemd"
UNITS = ["servicerouter.service", "servicerouter-haproxy.service"]
MAX_EXPOSURE = 3.0  # systemd-analyze security: "OK" and better
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives(text: str) -> list[tuple[str, str]]:
    """(key, value) pairs in order, continuation lines joined; duplicates kept."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [(k.strip(), v.strip()) for k, v in
            (line.split("=", 1) for line in joined.splitlines()
             if "=" in line and not line.lstrip().startswith(("#", ";", "[")))]


def env_names() -> set[str]:
    """Every SERVICEROUTER_* variable `run` reads (one per long flag)."""
    sub = next(a for a in cli.build_parser({})._actions
               if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    return {env_name(o) for a in run._actions for o in a.option_strings[:1]
            if o.startswith("--") and o != "--help"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("destdir")
    subprocess.run(["make", "-s", "install-files", f"DESTDIR={dest}"], cwd=ROOT, check=True,
                   timeout=60, capture_output=True)
    return dest


@pytest.mark.parametrize("unit", UNITS)
def test_unit_stops_gracefully_reloads_and_reads_the_environment_file(unit: str) -> None:
    d = directives((SYSTEMD / unit).read_text())
    keys = dict(d)
    assert keys["KillMode"] == "mixed", "SIGTERM must reach servicerouter only"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert ("EnvironmentFile", "-/etc/default/servicerouter") in d
    assert keys["ExecStart"] == "/opt/servicerouter/bin/servicerouter run"
    # Documentation= names the README that `make install-files` installs.
    doc = keys["Documentation"]
    assert doc == "file:///usr/share/doc/servicerouter/README.md"
    assert "README.md $(DESTDIR)/usr/share/doc/servicerouter/README.md" in \
        (ROOT / "Makefile").read_text()
    assert keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict"
    # A usage error (exit 2, cli.UsageError) is not restarted every 2 s for ever.
    assert keys["Restart"] == "on-failure" and keys["RestartPreventExitStatus"] == "2"


def test_units_and_example_use_only_real_variables() -> None:
    known = env_names()
    assert "SERVICEROUTER_NO_VERIFY_TLS" in known
    for name in [*UNITS, "servicerouter.default"]:
        used = set(re.findall(r"\bSERVICEROUTER_[A-Z0-9_]+", (SYSTEMD / name).read_text()))
        assert used, name
        assert not used - known, f"{name} sets variables no flag reads: {sorted(used - known)}"


def test_start_haproxy_unit_runs_as_its_own_user_with_one_capability() -> None:
    keys = dict(directives((SYSTEMD / "servicerouter.service").read_text()))
    assert keys["User"] == "servicerouter"
    assert keys["AmbientCapabilities"] == keys["CapabilityBoundingSet"] == \
        "CAP_NET_BIND_SERVICE"
    sysusers = (SYSTEMD / "servicerouter.sysusers").read_text().split()
    assert sysusers[:2] == ["u", "servicerouter"]
    beside = dict(directives((SYSTEMD / "servicerouter-haproxy.service").read_text()))
    assert beside["CapabilityBoundingSet"] == "", "root, but without any capability"


def test_make_install_files_puts_everything_in_place(installed: Path) -> None:
    for path in ["etc/systemd/system/servicerouter.service",
                 "etc/systemd/system/servicerouter-haproxy.service",
                 "usr/lib/sysusers.d/servicerouter.conf",
                 "usr/share/doc/servicerouter/README.md", "etc/default/servicerouter"]:
        assert (installed / path).is_file(), path
    assert (installed / "etc/default/servicerouter").stat().st_mode & 0o077 == 0, \
        "the environment file may hold credentials"


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(unit: str, installed: Path,
                                                 tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's servicerouter,
    # the only change made to the installed unit.
    program = Path(sys.executable).with_name("servicerouter")
    if not program.exists():
        pytest.skip(f"{program} is not installed (make install)")
    text = (installed / "etc/systemd/system" / unit).read_text()
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/servicerouter/bin/servicerouter", str(program)))
    r = subprocess.run([str(ANALYZE), "verify", str(copy)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_security_rates_the_unit_ok(unit: str, installed: Path) -> None:
    r = subprocess.run([str(ANALYZE), "security", "--offline=true", "--no-pager",
                        str(installed / "etc/systemd/system" / unit)],
                       capture_output=True, text=True, timeout=60, check=False)
    if "--offline" in r.stderr and r.returncode != 0:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {r.stderr}")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, m.group(0) + "\n" + "\n".join(
        line for line in r.stdout.splitlines() if "✗" in line)


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers is not installed")
def test_systemd_sysusers_creates_the_user(installed: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    conf = installed / "usr/lib/sysusers.d/servicerouter.conf"
    r = subprocess.run(["systemd-sysusers", f"--root={root}", str(conf)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    passwd = (root / "etc/passwd").read_text()
    assert re.search(r"^servicerouter:x:\d+:\d+:.*:/var/lib/servicerouter:", passwd, re.M), \
        passwd


WEB_STOP_WAIT = 5.0  # daemon.run_daemon: asyncio.wait_for(web, 5) before HAProxy stops


@pytest.mark.parametrize("unit", UNITS)
def test_unit_waits_longer_than_the_daemons_graceful_stop(unit: str) -> None:
    """systemctl stop: the daemon may take the web listener's wait, then STOP_GRACE for
    HAProxy's soft stop and STOP_GRACE more for its SIGTERM. A TimeoutStopSec shorter
    than that SIGKILLs HAProxy with connections still finishing; a KillSignal other than
    SIGTERM/SIGINT/SIGQUIT does not start the graceful stop at all."""
    from servicerouter.haproxy.control import STOP_GRACE

    keys = dict(directives((SYSTEMD / unit).read_text()))
    assert keys.get("KillSignal", "SIGTERM") in {"SIGTERM", "SIGINT", "SIGQUIT"}
    timeout = keys.get("TimeoutStopSec", "90")  # systemd's DefaultTimeoutStopSec
    assert timeout.isdigit(), f"TimeoutStopSec={timeout}: write whole seconds"
    assert int(timeout) > WEB_STOP_WAIT + 2 * STOP_GRACE, \
        f"TimeoutStopSec={timeout} cuts the daemon's graceful stop short"
