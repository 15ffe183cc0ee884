"""Taking over a running HAProxy at start, without a reload.

When the config file HAProxy runs has the shape the daemon would render, the
slot table is rebuilt from the addresses HAProxy serves (:func:`adopt.adopt`,
pure) and the apply loop starts from there; otherwise the first config is a
reload. This module is the I/O around that decision: the file, ``show servers
state`` and, in range mode, the running port map and the pool file.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import pool
from .adopt import adopt, config_shape
from .haproxy.render import TemplateError, render
from .haproxy.runtime import HAProxyRuntimeError
from .haproxy.runtime_parse import ServerState
from .layout import Layout, slot_counts

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("servicerouter.engine")


async def take_over(engine: Engine) -> bool:
    """Take over a running HAProxy whose config has our shape: no reload at start.

    Reads the running config file and ``show servers state``; the slot table is
    rebuilt from the addresses HAProxy serves (:func:`adopt.adopt`). True if the
    render of that layout and table has the running file's shape; then the apply
    loop plans every backend against the adopted table (a task replaced while the
    daemon was down is a runtime change) and reconcile follows."""
    running = engine.writer.read()
    if running is None:
        return False
    try:
        servers = await engine.runtime.show_servers_state()
    except HAProxyRuntimeError as exc:
        log.info("no running HAProxy to adopt (%s); the first config is a reload", exc)
        return False
    spares = await _adoptable_spares(engine, servers)  # range mode; None: not adoptable
    if spares is None:
        return False
    layout, table = adopt(engine.state.desired, servers, spares[0])
    layout.update(spares[1])
    table.update((name, [None] * shape.slots) for name, shape in spares[1].items()
                 if name not in table)
    engine.table = table  # even if the shape differs: tasks keep their slots
    unconfirmed = engine.writer.unconfirmed()
    if unconfirmed is not None:  # a daemon killed during a reload: it may hold a config
        log.info("%s; reloading rather than adopting HAProxy as though it ran it",
                 unconfirmed)  # HAProxy never loaded, whatever its shape
        return False
    try:
        text = render(layout, table, engine.config.settings, engine.config.templates)
    except TemplateError:
        return False  # the startup reload reports it
    ours, theirs = config_shape(text), config_shape(running)
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False))
                      if a != b),
                     min(len(ours), len(theirs)))
        log.info("the running HAProxy's config differs from ours (%d services in it, "
                 "%d wanted; first at line %d of its shape: %r, ours %r); reloading",
                 len(layout), len(engine.state.desired), first + 1,
                 theirs[first] if first < len(theirs) else None,
                 ours[first] if first < len(ours) else None)
        return False
    engine.layout, engine.running_config = layout, running
    # The maps beside the file are the last daemon's layout's: apps redefined meanwhile
    # (a host gone) differ in them, not in the file. HAProxy's are repaired by the
    # reconcile below; a worker restarted from the files must read the same.
    engine.write_maps(layout)
    engine.haproxy_answered(True)
    engine.guard.served(running)
    log.info("adopted the running HAProxy: %d services, %d endpoints in their slots, "
             "no reload", len(layout), slot_counts(table)[0])
    engine.mark(set(engine.state.desired))
    engine.request_reconcile()
    engine.ready.set()
    return True


async def _adoptable_spares(engine: Engine, servers: list[ServerState]
                            ) -> tuple[dict[str, str], Layout] | None:
    """Range mode, at start: (service → the spare backend it lives in, from the
    running port map; the free spares, from the pool file written with the config).
    Without the range mode: nothing to add. None: what HAProxy runs cannot be read."""
    settings = engine.config.settings
    if not pool.range_on(settings):
        return {}, {}
    read = getattr(engine.writer, "read_map_file", None)
    text = read(settings.map_dir, pool.SPARES_FILE) if read else None
    try:
        shapes = pool.parse_spares(text or "")
        ports = pool.parse_show_map(await engine.runtime.query(
            f"show map {pool.map_path(settings, pool.PORTS_MAP)}"))
    except (HAProxyRuntimeError, ValueError, TypeError, KeyError) as exc:
        log.info("range mode: the running pool cannot be read (%s); reloading", exc)
        return None
    held = {name: b for name, d in engine.state.desired.items()  # in a backend not its own
            if (b := ports.get(str(d.service.port), name)) != name}
    sizes: dict[str, int] = {}
    for s in servers:
        sizes[s.backend] = sizes.get(s.backend, 0) + 1
    free = {pool.spare_key(name): pool.spare(name, shape, sizes[name])
            for name, shape in shapes.items()
            if name not in held.values() and sizes.get(name)}
    return held, free
