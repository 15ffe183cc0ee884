"""The seed bridge's system mode: ``install_haproxy_system`` and ``refresh_system_haproxy``.

``install_haproxy_system HOST:PORT ...`` (as root) installs HAProxy with the
system's package manager, records the Marathon list, installs the command and a
cron job that runs ``refresh_system_haproxy`` every minute.
``refresh_system_haproxy`` regenerates the config and, only when it differs
from the file on disk, validates it, replaces it atomically and reloads HAProxy
without breaking connections.

Every path lives under ``root`` (``--root DIR``, ``/`` by default), so the whole
install can be run into a scratch tree. This module is the I/O edge; the config
itself comes from :func:`servicerouter.bridge.render_bridge`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .haproxy.files import CONFIG_MODE, atomic_write, keep_rejected, make_dirs, remove_leftovers
from .haproxy.lock import ConfigLock
from .haproxy.master_cli import HAProxyProcessError, MasterCLI
from .haproxy.process import run_reload_command, validate

PROG = "haproxy-marathon-bridge"
MARATHONS = "etc/haproxy-marathon-bridge/marathons"
COMMAND = "usr/local/bin/haproxy-marathon-bridge"
CRON = "etc/cron.d/haproxy-marathon-bridge"
HAPROXY_CONFIG = "etc/haproxy/haproxy.cfg"
# Debian's haproxy.service starts HAProxy with ``-Ws -S /run/haproxy-master.sock``.
MASTER_SOCKET = "run/haproxy-master.sock"
LOCK = "run/haproxy-marathon-bridge.lock"

# How each package manager installs one package without asking.
PACKAGE_MANAGERS: dict[str, list[list[str]]] = {
    "apt-get": [["update", "-qq"], ["install", "-y", "-qq", "haproxy"]],
    "dnf": [["install", "-y", "haproxy"]],
    "yum": [["install", "-y", "haproxy"]],
    "zypper": [["--non-interactive", "install", "haproxy"]],
}


class BridgeError(Exception):
    """A one-line error for the operator; the command exits 1."""


@dataclass(frozen=True)
class Paths:
    root: Path

    def __truediv__(self, rel: str) -> Path:
        return self.root / rel

    @property
    def marathons(self) -> Path:
        return self / MARATHONS

    @property
    def command(self) -> Path:
        return self / COMMAND

    @property
    def cron(self) -> Path:
        return self / CRON

    @property
    def config(self) -> Path:
        return self / HAPROXY_CONFIG

    @property
    def master_socket(self) -> Path:
        return self / MASTER_SOCKET


# --- install ------------------------------------------------------------------------------


def detect_package_manager(which: Callable[[str], str | None] = shutil.which) -> str:
    for name in PACKAGE_MANAGERS:
        found = which(name)
        if found:
            return found
    raise BridgeError("no supported package manager found (looked for "
                       f"{', '.join(PACKAGE_MANAGERS)}); install HAProxy yourself and "
                       "pass --package-manager, or use one of those")


def package_commands(manager: str) -> list[list[str]]:
    """The commands that install HAProxy with ``manager`` (a path; its name picks the
    arguments)."""
    name = Path(manager).name
    if name not in PACKAGE_MANAGERS:
        raise BridgeError(f"--package-manager {manager}: {name!r} is not one of "
                           f"{', '.join(PACKAGE_MANAGERS)} (the file name picks the arguments)")
    return [[manager, *args] for args in PACKAGE_MANAGERS[name]]


def cron_entry(extra: Sequence[str] = ()) -> str:
    command = shlex.join(["/" + COMMAND, "refresh_system_haproxy", *extra])
    return (f"# Installed by {PROG} install_haproxy_system: regenerate HAProxy's config from\n"
            f"# the Marathons in /{MARATHONS} every minute; reloads only on change.\n"
            "SHELL=/bin/sh\n"
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"* * * * * root {command}\n")


def command_script(python: str = sys.executable) -> str:
    """``/usr/local/bin/haproxy-marathon-bridge``: this Python, this package."""
    return (f"#!{python}\n"
            f"# Installed by {PROG} install_haproxy_system.\n"
            "import sys\n"
            "from servicerouter.bridge import main\n"
            "sys.exit(main())\n")


def install(paths: Paths, marathons: Sequence[str], package_manager: str | None,
            cron_extra: Sequence[str] = (), out: Callable[[str], None] = print) -> None:
    manager = package_manager or detect_package_manager()
    for argv in package_commands(manager):
        out(f"running {shlex.join(argv)}")
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=900, check=False,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BridgeError(f"{shlex.join(argv)} failed: {exc}; nothing else was "
                               "installed") from None
        if done.returncode != 0:
            raise BridgeError(f"{shlex.join(argv)} exited with {done.returncode}; "
                               "nothing else was installed")
    # The Marathon list may hold credentials (user:pass@host): root's only, even over a
    # list an earlier install left readable.
    for path, text, mode in ((paths.marathons, "".join(f"{m}\n" for m in marathons), 0o600),
                             (paths.command, command_script(), 0o755),
                             (paths.cron, cron_entry(cron_extra), 0o644)):
        make_dirs(path.parent)
        atomic_write(path, text, mode=mode)
        out(f"wrote {path}")
    out(f"installed: cron runs '/{COMMAND} refresh_system_haproxy' every minute; "
        "run it now to apply at once")


# --- refresh ------------------------------------------------------------------------------


def read_marathons(paths: Paths) -> list[str]:
    """The Marathons the list names. A list an older install left readable by others is
    made root's only (it may hold user:password@host)."""
    try:
        lines = paths.marathons.read_text(encoding="utf-8").splitlines()
        if paths.marathons.stat().st_mode & 0o077:
            paths.marathons.chmod(0o600)
    except FileNotFoundError:
        raise BridgeError(f"no Marathon list at {paths.marathons}: run "
                           f"'{PROG} install_haproxy_system HOST:PORT ...' first") from None
    except OSError as exc:
        raise BridgeError(f"cannot read {paths.marathons}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise BridgeError(f"{paths.marathons} is not UTF-8 text ({exc.reason} at byte "
                           f"{exc.start})") from None
    marathons = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    if not marathons:
        raise BridgeError(f"{paths.marathons} lists no Marathon (one HOST:PORT per line)")
    return marathons


def _body(text: str) -> str:
    """The config without its ``# Generated ... from <url>`` line: which Marathon
    answered is no reason to reload."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("# Generated "))


def routed_listeners(config: Path) -> int:
    """How many app listeners the config on disk has (the bridge's ``listen`` sections
    other than ``stats``; 0 for no file or one it cannot read)."""
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 0
    return sum(1 for line in text.splitlines()
               if line.startswith("listen ") and line.split()[1:2] != ["stats"])


def differs(candidate: str, path: Path) -> bool:
    try:
        return _body(path.read_text(encoding="utf-8")) != _body(candidate)
    except (FileNotFoundError, UnicodeDecodeError):  # not ours: replaced (and put back if
        return True  # the reload fails)


@contextlib.contextmanager
def refresh_lock(paths: Paths) -> Iterator[bool]:
    """Cron starts a refresh every minute; a slow one must not overlap the next.

    The lock file is root's only (0600, an older 0644 one too): ``flock`` needs only read
    access, so a file others can open lets any local user hold the lock and stop every
    refresh. Close-on-exec, so a reload command cannot keep holding it."""
    lock = paths / LOCK
    make_dirs(lock.parent)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "r+b", buffering=0) as f:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def reload_plan(paths: Paths) -> tuple[str, str | list[str]]:
    """How to reload HAProxy here: ("master", socket) or ("command", argv)."""
    if paths.master_socket.exists():
        return "master", str(paths.master_socket)
    if paths.root == Path("/"):
        if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
            return "command", ["systemctl", "reload", "haproxy"]
        if Path("/etc/init.d/haproxy").is_file():
            return "command", ["/etc/init.d/haproxy", "reload"]
    raise BridgeError(f"no running HAProxy to reload: no master socket at "
                       f"{paths.master_socket}" + (
                           ", no systemd haproxy.service, no /etc/init.d/haproxy"
                           if paths.root == Path("/") else "")
                       + "; start HAProxy (e.g. 'systemctl start haproxy')")


async def refresh(paths: Paths, generate: Callable[[list[str]], Awaitable[str]],
                  haproxy_bin: str = "haproxy", marathons: Sequence[str] | None = None) -> str:
    """Regenerate from ``marathons``, else the installed list; when the config changed,
    validate, replace and reload. Returns what was done, in one line. Raises BridgeError
    (or MarathonError) with the reason; after a failed reload the file HAProxy runs is
    back in place, so the next run retries. Refused while a servicerouter (a daemon, a
    sync) manages the config: its lock is held (a cron job left from before a move to
    ``servicerouter run`` would replace the daemon's config every minute)."""
    listed = list(marathons) if marathons else read_marathons(paths)
    lock = ConfigLock(paths.config, "", f"Remove /{CRON} (the bridge's cron job) if "
                                        "servicerouter now manages HAProxy here")
    with lock.held(BridgeError, "nothing was changed"):
        remove_leftovers(paths.config)  # of a refresh killed mid-write; ours alone now
        return await _refresh(paths, generate, haproxy_bin, listed)


async def _refresh(paths: Paths, generate: Callable[[list[str]], Awaitable[str]],
                   haproxy_bin: str, marathons: list[str]) -> str:
    candidate = await generate(marathons)
    if not differs(candidate, paths.config):
        return "unchanged"
    how, target = reload_plan(paths)  # before writing: a file nobody reloads is a lie
    checked = await validate(candidate, haproxy_bin)
    if not checked.ok:
        kept = keep_rejected(paths.config, candidate)
        raise BridgeError(f"haproxy -c rejected the new config (kept as {kept}); "
                           f"{paths.config} and the running HAProxy are unchanged: "
                           f"{checked.output.strip()}")
    try:
        running: bytes | None = paths.config.read_bytes()
    except FileNotFoundError:
        running = None
    make_dirs(paths.config.parent)
    atomic_write(paths.config, candidate, new_mode=CONFIG_MODE)
    try:
        if how == "master":
            info = await MasterCLI(str(target)).reload()
            return (f"{paths.config} replaced; HAProxy reloaded through {target} "
                    f"(reload {info.reloads}, worker(s) {info.worker_pids})")
        await run_reload_command(list(target))
        return f"{paths.config} replaced; HAProxy reloaded with {shlex.join(list(target))}"
    except (HAProxyProcessError, OSError) as exc:
        raise BridgeError(f"HAProxy was not reloaded: {exc}; "
                          f"{_put_back(paths.config, running, candidate)}") from None


def _put_back(config: Path, running: bytes | None, candidate: str) -> str:
    """After a failed reload: the file HAProxy runs goes back (none if there was none),
    else the next run would find its candidate unchanged and never retry the reload.
    The candidate is kept beside it. Returns what was done, for the error."""
    try:
        kept = f"kept as {keep_rejected(config, candidate)}"
    except OSError as exc:
        kept = f"not kept: {exc}"
    try:
        if running is None:
            config.unlink(missing_ok=True)
        else:
            atomic_write(config, running)
    except OSError as exc:
        return (f"{config} could not be put back ({exc}); it holds the new config "
                f"({kept}), which the next refresh sees as unchanged: fix the reload, "
                "then reload HAProxy yourself")
    done = "removed (there was none before)" if running is None else "put back"
    return (f"{config} {done}, the new config {kept}; the next refresh retries")
