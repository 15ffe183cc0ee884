"""``servicerouter sync``: the old ``servicerouter.py`` workflow, for cron.

Fetch, render, compare with the file on disk. Only when it changed: validate
(``haproxy -c``), replace the file atomically and reload HAProxy (a reload
command or the master socket). Exit 0 when nothing changed or the change was
applied; 1 with one clear line otherwise, leaving the running config as it was.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from .haproxy.files import atomic_write, keep_rejected
from .haproxy.master_cli import HAProxyProcessError, MasterCLI
from .haproxy.process import run_reload_command, validate

log = logging.getLogger("servicerouter")


class SyncError(Exception):
    """What went wrong and what was left as it was; exit status 1."""


def reload_with(args: argparse.Namespace) -> tuple[str, Callable[[], Awaitable[str]]]:
    """The reload to use, as (description, action); SyncError when none is known."""
    if args.haproxy_master_socket:
        master = MasterCLI(args.haproxy_master_socket)

        async def via_master() -> str:
            info = await master.reload()
            return f"reload {info.reloads}, worker(s) {info.worker_pids}"

        return f"master socket {args.haproxy_master_socket}", via_master
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

    return f"command {command!r}", via_command


async def sync(args: argparse.Namespace, render_text: Callable[[], Awaitable[str]]) -> str:
    """One sync; returns what was done in one line ("" when nothing changed)."""
    config = Path(args.haproxy_config)
    how, reload = reload_with(args)  # before fetching: no reload, no point
    candidate = await render_text()
    try:
        current: str | None = config.read_text()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise SyncError(f"cannot read {config}: {exc.strerror}; nothing was changed") from None
    if current == candidate:
        log.debug("%s is up to date; nothing to do", config)
        return ""
    checked = await validate(candidate, args.haproxy_bin)
    if not checked.ok:
        kept = keep_rejected(config, candidate)
        raise SyncError(f"haproxy -c rejected the new config (kept at {kept}); {config} and "
                        f"the running HAProxy are unchanged: {checked.output.strip()}")
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(config, candidate)
    except OSError as exc:
        raise SyncError(f"cannot write {config}: {exc}; the running HAProxy is "
                        "unchanged") from None
    try:
        detail = await reload()
    except (HAProxyProcessError, OSError) as exc:
        # Put the old file back: it is what HAProxy runs, and the next sync must see
        # the difference again and retry the reload.
        if current is None:
            config.unlink(missing_ok=True)
        else:
            atomic_write(config, current)
        raise SyncError(f"reload via {how} failed: {exc}; {config} was restored to the "
                        "config HAProxy is running, the next sync retries") from None
    return f"{config} updated; HAProxy reloaded via {how} ({detail})"
