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


# Debian's and Ubuntu's haproxy package makes HAProxy's runtime folder with
# systemd-tmpfiles (/usr/lib/tmpfiles.d/haproxy.conf): the admin socket's folder under
# servicerouter-haproxy.service.
DEBIAN_RUN_HAPROXY = "d /run/haproxy 2775 haproxy haproxy -"


def unit_env(keys: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for key, value in keys:
        if key == "Environment":
            name, _, val = value.strip('"').partition("=")
            out[name] = val
    return out


def writable_roots(d: list[tuple[str, str]]) -> list[str]:
    """The folders ProtectSystem=strict leaves writable: ReadWritePaths= (a leading '-'
    only lets it be missing) and the State/Runtime/Cache/LogsDirectory= a unit gets."""
    roots = [p.lstrip("-") for k, v in d if k == "ReadWritePaths" for p in v.split()]
    for key, base in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run"),
                      ("CacheDirectory", "/var/cache"), ("LogsDirectory", "/var/log")):
        roots += [f"{base}/{name}" for k, v in d if k == key for name in v.split()]
    return roots


def written_folders(d: list[tuple[str, str]]) -> set[str]:
    """The folders the daemon writes under the unit's defaults: the config's (the config,
    its lock, its .d folder, the owners file) and the admin socket's (its lock)."""
    env = unit_env(d)
    return {str(Path(env["SERVICEROUTER_HAPROXY_CONFIG"]).parent),
            str(Path(env["SERVICEROUTER_HAPROXY_SOCKET"]).parent)}


@pytest.mark.parametrize("unit", UNITS)
def test_unit_leaves_writable_every_folder_the_daemon_writes(unit: str) -> None:
    """ProtectSystem=strict makes /run read-only too: the socket's lock (haproxy/lock.py)
    could not be made next to /run/haproxy/admin.sock, so a second daemon on the same
    HAProxy went unnoticed (and every start logged that)."""
    d = directives((SYSTEMD / unit).read_text())
    roots = writable_roots(d)
    for folder in written_folders(d):
        assert any(folder == r or folder.startswith(r + "/") for r in roots), \
            f"{unit}: {folder} is read-only under ProtectSystem=strict ({roots})"


@pytest.mark.parametrize("unit", UNITS)
def test_unit_claims_no_runtime_directory_of_haproxys(unit: str) -> None:
    """RuntimeDirectory=haproxy would have systemd chown Debian's /run/haproxy to this
    unit's user and remove it, HAProxy's admin socket with it, whenever the unit stops."""
    d = directives((SYSTEMD / unit).read_text())
    for key in ("RuntimeDirectory", "StateDirectory"):
        for name in (v for k, value in d if k == key for v in value.split()):
            assert name.split("/")[0] == "servicerouter", f"{unit}: {key}={name}"


def test_beside_unit_takes_its_locks_in_debians_haproxy_folders(tmp_path: Path) -> None:
    """servicerouter-haproxy.service runs as root without any capability: no
    CAP_DAC_OVERRIDE, so Debian's /run/haproxy (haproxy:haproxy, 2775) is not writable
    for it as plain root, and the socket's lock could not be made there. Here the
    daemon's lock code runs with the unit's own credentials (user, groups, an empty
    capability bounding set, as systemd would start it) on folders laid out as
    Debian's."""
    import grp
    import os
    import pwd

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to take the unit's credentials")
    tmpfiles = Path("/usr/lib/tmpfiles.d/haproxy.conf")
    if tmpfiles.exists():  # the installed package agrees with what this test assumes
        assert DEBIAN_RUN_HAPROXY in tmpfiles.read_text().splitlines()
    _, path, mode, owner, group, _ = DEBIAN_RUN_HAPROXY.split()
    try:
        uid, gid = pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        pytest.skip(f"no {owner} user or {group} group here (apt-get install haproxy)")
    d = directives((SYSTEMD / "servicerouter-haproxy.service").read_text())
    keys, env = dict(d), unit_env(d)
    config, socket = Path(env["SERVICEROUTER_HAPROXY_CONFIG"]), \
        Path(env["SERVICEROUTER_HAPROXY_SOCKET"])
    assert socket.parent == Path(path)
    root = tmp_path / "root"
    run_dir = root / path.lstrip("/")
    run_dir.mkdir(parents=True)
    os.chown(run_dir, uid, gid)
    run_dir.chmod(int(mode, 8))
    (root / str(config.parent).lstrip("/")).mkdir(parents=True)  # root's, 0755
    user = keys.get("User", "root")
    groups = [g for k, v in d if k == "SupplementaryGroups" for g in v.split()]
    assert keys["CapabilityBoundingSet"] == ""
    credentials = ["--reuid", user, "--regid", keys.get("Group", user),
                   *(["--groups", ",".join(groups)] if groups else ["--clear-groups"]),
                   "--bounding-set", "-all", "--inh-caps", "-all"]
    script = ("import sys\nfrom pathlib import Path\n"
              "from servicerouter.haproxy.lock import ConfigLock\n"
              "ConfigLock(Path(sys.argv[1])).acquire()\n"
              "ConfigLock(Path(sys.argv[2]), '--haproxy-socket').acquire()\n"
              "print('locked')\n")
    r = subprocess.run([setpriv, *credentials, sys.executable, "-c", script,
                        str(root / str(config).lstrip("/")),
                        str(root / str(socket).lstrip("/"))],
                       capture_output=True, text=True, timeout=60, check=False,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0 and r.stdout.strip() == "locked", r.stdout + r.stderr
