"""``servicerouter sync``: the old ``servicerouter.py`` workflow, for cron.

Fetch, render, compare with the file on disk. Only when it changed: validate
(``haproxy -c``), replace the file atomically and reload HAProxy (a reload
command or the master socket). Exit 0 when nothing changed or the change was
applied; 1 with one clear line otherwise, leaving the running config as it was.

When ``haproxy -c`` rejects the candidate, the services it blames are left out and
reported, as the daemon does (guard.py): one app's value never blocks every run. So is
a service whose frontend address cannot be bound (cli.render_config), which haproxy -c
would pass and the reload fail on.

With ``--service-port-range`` the config names map files (``<config>.d``, as ``run``
writes them): they count as part of the config (a change to them alone reloads too),
are in place before ``haproxy -c``, and are put back with the file when it fails.

SIGTERM or SIGINT (``stopping.run_stoppable``) ends a sync with 143 or 130, and puts the
config and the map files back as they were when it had started changing them, unless
HAProxy has reloaded them already: then they are what it serves, and stay.

SIGKILL runs no code: as the daemon's (haproxy/control.py), ``<config>.unconfirmed`` is
on disk from before the first file changes until HAProxy is seen to reload them, so a
sync killed in between leaves it, and the next sync (or daemon) reloads even though the
file matches its render.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import owners
from .cli import sockets_clash
from .haproxy.children import brief
from .haproxy.control import ConfigFile
from .haproxy.files import CONFIG_MODE, atomic_write, keep_rejected, make_dirs, remove_leftovers
from .haproxy.lock import ConfigLock
from .haproxy.master_cli import HAProxyProcessError, MasterCLI, MasterUnavailable, ProcInfo
from .haproxy.process import run_reload_command, validate
from .haproxy.render import prune_crt_lists
from .owners import Owners

log = logging.getLogger("servicerouter")


class SyncError(Exception):
    """What went wrong and what was left as it was; exit status 1."""


@dataclass(frozen=True)
class Rendered:
    """One rendered config and, in range mode, the map files it reads from ``map_dir``."""

    text: str
    map_dir: str = ""
    maps: Mapping[str, str] = field(default_factory=dict)
    owners: Owners | None = None  # sync: who owns ports and hosts, kept once it is served
    # Given haproxy -c's output on ``text``: the config without the services it blames
    # (each reported), or None when no service can be blamed.
    isolate: Callable[[str], Awaitable[Rendered | None]] | None = None


ISOLATION_ROUNDS = 3  # a service blamed only once another is out costs another round
STOP_LOOK = 2.0  # seconds: the look at the master after a stop during its reload


@dataclass
class Reload:
    """How HAProxy is reloaded (``how``, for messages) and ``run``, which does it and says
    how in one line. ``happened``: after a stop during ``run``, whether HAProxy has
    reloaded all the same (one bounded look, where there is something to look at)."""

    how: str
    run: Callable[[], Awaitable[str]]
    happened: Callable[[], Awaitable[bool]]


async def _cannot_tell() -> bool:
    return False


def read_maps(rendered: Rendered) -> dict[str, str | None]:
    """The map files on disk now, for the names ``rendered`` has (None: missing)."""
    out: dict[str, str | None] = {}
    for name in rendered.maps:
        try:
            out[name] = (Path(rendered.map_dir) / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            out[name] = None
    return out


def write_maps(map_dir: str, maps: Mapping[str, str | None]) -> None:
    """Each map file replaced atomically (None: removed); OSError as it comes."""
    if maps:
        make_dirs(Path(map_dir))
    for name, text in maps.items():
        if text is None:
            (Path(map_dir) / name).unlink(missing_ok=True)
        else:
            atomic_write(Path(map_dir) / name, text)


def reload_with(args: argparse.Namespace) -> Reload:
    """The reload to use; SyncError when none is known."""
    if args.haproxy_master_socket:
        clash = sockets_clash(args.haproxy_master_socket, getattr(args, "haproxy_socket", None))
        if clash:
            raise SyncError(f"{clash}; nothing was changed")
        master = MasterCLI(args.haproxy_master_socket)
        asked: list[ProcInfo] = []  # the master before the reload, once it was asked for

        async def via_master() -> str:
            before = await master.show_proc()
            with contextlib.suppress(MasterUnavailable):  # 2.6 closes without a reply
                await master.command("reload")
            asked.append(before)
            info = await master.wait_reloaded(before)
            return f"reload {info.reloads}, worker(s) {info.worker_pids}"

        async def happened() -> bool:
            """A reload the master has done (a new worker) though it was not yet read."""
            if not asked:
                return False
            try:
                info = await master.show_proc(patience=STOP_LOOK, timeout=STOP_LOOK)
            except HAProxyProcessError:
                return False
            before = asked[0]
            return (info.master_pid == before.master_pid and info.reloads > before.reloads
                    and bool(set(info.worker_pids) - set(before.worker_pids)))

        return Reload(f"master socket {args.haproxy_master_socket}", via_master, happened)
    command = args.reload_command
    if command is None:
        from .daemon import detect_reload_command

        command = detect_reload_command()
    if command is None:
        raise SyncError("say how HAProxy is reloaded: --haproxy-master-socket PATH or "
                        "--reload-command CMD (no systemd haproxy.service or "
                        "/etc/init.d/haproxy found); nothing was changed")

    async def via_command() -> str:
        await run_reload_command(command)
        return "exit status 0"

    return Reload(f"command {command!r}", via_command, _cannot_tell)


def _put_back(map_dir: str, old: Mapping[str, str | None]) -> None:
    """The map files as they were, as far as possible (the error being reported says
    what failed first)."""
    with contextlib.suppress(OSError):
        write_maps(map_dir, old)


async def sync(args: argparse.Namespace,
               render_config: Callable[[], Awaitable[Rendered]]) -> str:
    """One sync; returns what was done in one line ("" when nothing changed). Refused
    while a daemon (or another sync) holds the config's lock (haproxy/lock.py)."""
    reload = reload_with(args)  # before fetching, or locking: no reload, no point
    with ConfigLock(Path(args.haproxy_config)).held(SyncError, "nothing was changed"):
        remove_leftovers(Path(args.haproxy_config))  # of a killed run; ours alone now
        try:
            return await _sync(args, render_config, reload)
        finally:
            _prune(Path(args.haproxy_config))


def _prune(config: Path) -> None:
    """Only the crt-list the config on disk names stays (a rejected candidate's goes)."""
    from .daemon import crt_list_dir

    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # nothing to tell what is in use
    prune_crt_lists(crt_list_dir(config), text)


@dataclass
class _Progress:
    file: ConfigFile  # its marker: from before the first change until HAProxy reloaded
    unconfirmed: str | None  # why the file may not be what HAProxy runs, at the start
    reloaded: bool = False  # HAProxy runs the new files: a stop keeps them

    def loaded(self) -> None:
        self.reloaded = True
        self.file.loaded()

    def put_back(self) -> None:
        """The files are as they were: unconfirmed only if they were so before."""
        if self.unconfirmed is None:
            self.file.loaded()


async def _sync(args: argparse.Namespace, render_config: Callable[[], Awaitable[Rendered]],
                reload: Reload) -> str:
    config = Path(args.haproxy_config)
    rendered = await render_config()
    candidate = rendered.text
    try:
        current: str | None = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise SyncError(f"cannot read {config}: {exc.strerror}; nothing was changed") from None
    except UnicodeDecodeError as exc:  # it could not be put back if the reload failed
        raise SyncError(f"{config} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "nothing was changed: move it aside or save it as UTF-8") from None
    old_maps = read_maps(rendered)
    file = ConfigFile(config, args.haproxy_bin)
    progress = _Progress(file, file.unconfirmed())
    if current == candidate and old_maps == rendered.maps:
        if progress.unconfirmed is None:
            log.debug("%s is up to date; nothing to do", config)
            _keep_owners(config, rendered)
            return ""
        log.warning("%s; reloading rather than taking it for the config HAProxy runs",
                    progress.unconfirmed)
    try:
        return await _apply(args, config, rendered, current, old_maps, reload, progress)
    except asyncio.CancelledError:  # a stop (SIGTERM): no half-applied change stays
        if progress.reloaded:
            log.warning("stopped after HAProxy had reloaded: %s is the config it serves "
                        "and stays", config)
        elif _undo(config, current, rendered.map_dir, old_maps):
            progress.put_back()
            log.warning("stopped before HAProxy reloaded: %s and its map files are put "
                        "back as they were", config)
        raise


def _undo(config: Path, current: str | None, map_dir: str,
          old_maps: Mapping[str, str | None]) -> bool:
    """The config and its map files as they were before this run: a sync stopped midway
    or whose reload failed must leave neither maps the running config does not read
    nor a config HAProxy does not run (the next sync sees the change again and applies
    it whole). False (logged) if the config could not be put back."""
    try:
        now: str | None = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        now = None
    except (OSError, UnicodeDecodeError):
        now = ""
    ok = True
    try:
        if now != current:
            if current is None:
                config.unlink(missing_ok=True)
            else:
                atomic_write(config, current)
    except OSError as exc:
        log.error("cannot put %s back as it was: %s", config, exc.strerror or exc)
        ok = False
    _put_back(map_dir, old_maps)
    return ok


async def _apply(args: argparse.Namespace, config: Path, rendered: Rendered,
                 current: str | None, old_maps: Mapping[str, str | None], reload: Reload,
                 progress: _Progress) -> str:
    """Validate, write and reload the change ``rendered`` is to ``current``."""
    how = reload.how
    candidate = rendered.text
    try:  # on disk before any file changes: a SIGKILL from now on leaves it
        progress.file.unconfirm()
    except OSError as exc:
        raise SyncError(f"cannot write {progress.file.marker}: {exc.strerror or exc}; "
                        "nothing was changed") from None
    try:  # haproxy -c opens the map files the candidate names
        write_maps(rendered.map_dir, rendered.maps)
    except OSError as exc:
        _put_back(rendered.map_dir, old_maps)
        progress.put_back()
        raise SyncError(f"cannot write the map files in {rendered.map_dir}: {exc}; the "
                        "running HAProxy is unchanged") from None
    checked = await validate(candidate, args.haproxy_bin)
    first = rendered
    for _ in range(ISOLATION_ROUNDS):
        if checked.ok or rendered.isolate is None:
            break
        keep_rejected(config, candidate)  # the guard's report names it
        isolated = await rendered.isolate(checked.output)
        if isolated is None:
            break
        rendered, candidate = isolated, isolated.text
        if current == candidate and old_maps == rendered.maps \
                and progress.unconfirmed is None:
            _put_back(rendered.map_dir, old_maps)  # the first candidate's are on disk
            progress.put_back()
            _keep_owners(config, rendered)
            return ""  # what HAProxy serves is all that can be served
        checked = await validate(candidate, args.haproxy_bin)
    if not checked.ok:
        _put_back(rendered.map_dir, old_maps)
        progress.put_back()
        kept = keep_rejected(config, candidate)
        raise SyncError(f"haproxy -c rejected the new config (kept at {kept}); {config} and "
                        f"the running HAProxy are unchanged: {brief(checked.output)}")
    try:  # the maps of the config that passed (leaving services out changes them)
        if rendered is not first:
            write_maps(rendered.map_dir, rendered.maps)
    except OSError as exc:
        _put_back(rendered.map_dir, old_maps)
        progress.put_back()
        raise SyncError(f"cannot write the map files in {rendered.map_dir}: {exc}; the "
                        "running HAProxy is unchanged") from None
    try:
        make_dirs(config.parent)
        atomic_write(config, candidate, new_mode=CONFIG_MODE)
    except OSError as exc:
        _put_back(rendered.map_dir, old_maps)
        progress.put_back()
        raise SyncError(f"cannot write {config}: {exc}; the running HAProxy is "
                        "unchanged") from None
    try:
        detail = await reload.run()
    except asyncio.CancelledError:
        # A stop once HAProxy has reloaded, before that was read: the new files are what
        # it serves. Put back, they would say otherwise, and the next sync reload again.
        if await reload.happened():
            progress.loaded()
            _keep_owners(config, rendered)
        raise
    except (HAProxyProcessError, OSError) as exc:
        # Put the old file back: it is what HAProxy runs, and the next sync must see
        # the difference again and retry the reload.
        restored = _undo(config, current, rendered.map_dir, old_maps)
        if restored:  # else the file holds what HAProxy did not load: the marker stays
            progress.put_back()
        try:  # for whoever looks into the failure: what was to be loaded
            saved = f"the new one is kept at {keep_rejected(config, candidate)}"
        except OSError as exc2:
            saved = f"the new one could not be kept ({exc2.strerror or exc2})"
        if not restored:
            raise SyncError(f"reload via {how} failed: {exc}; {config} could not be put "
                            f"back ({saved}): put back the config HAProxy runs") from None
        if current is None:
            raise SyncError(f"reload via {how} failed: {exc}; {config} was removed, as "
                            f"there was none before ({saved}); the next sync "
                            "retries") from None
        raise SyncError(f"reload via {how} failed: {exc}; {config} was restored to the "
                        f"config HAProxy is running ({saved}), the next sync "
                        "retries") from None
    progress.loaded()
    _keep_owners(config, rendered)
    return f"{config} updated; HAProxy reloaded via {how} ({detail})"


def _keep_owners(config: Path, rendered: Rendered) -> None:
    """Who owns ports and hosts in the config HAProxy now serves: the next run's claims
    start from them (owners.py)."""
    if rendered.owners is not None:
        owners.save(owners.owners_path(config), rendered.owners)
