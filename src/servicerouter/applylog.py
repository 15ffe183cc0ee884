"""What the daemon says about what it applied, per app. Pure.

One INFO line per apply step and app (``/shop/web: +1 -1 tasks, runtime, 6 commands,
3 ms``), and the apps behind each reload, so an operator can follow a task from
Marathon to HAProxy in the log without DEBUG.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import zip_longest

from .layout import BackendShape, DesiredService, Layout, SlotTable
from .model import Endpoint
from .pool import SPARE_PREFIX

MAX_APPS_PER_REASON = 5


def command_backend(command: str) -> str | None:
    """The backend a runtime command changes (``set server web_80/s1 ...`` → ``web_80``;
    ``add map <file> <key> web_80`` → ``web_80``)."""
    if command.startswith(("add map ", "set map ")):
        return command.rsplit(" ", 1)[1]
    words = command.split(None, 3)  # the third word names backend/server
    if len(words) > 2 and "/" in words[2]:
        return words[2].split("/", 1)[0]
    return None


def runtime_lines(commands: list[str], slots: Mapping[str, list[Endpoint | None]],
                  before: SlotTable, layout: Mapping[str, BackendShape], ms: float
                  ) -> list[str]:
    """One line per app whose backends ``commands`` changed into ``slots``. (Range mode:
    a spare returned to the pool is no app's; a service in a spare is counted by the
    spare's commands.)"""
    per_backend: dict[str | None, int] = {}
    for c in commands:
        b = command_backend(c)
        per_backend[b] = per_backend.get(b, 0) + 1
    apps: dict[str, list[int]] = {}
    for name, new_slots in slots.items():
        shape = layout.get(name)
        if (shape is not None and not shape.app_id) or name.startswith(SPARE_PREFIX):
            continue  # a spare backend (pool.py), back in the pool (keyed _pool_...)
        app_id = shape.app_id if shape else name
        # Only the slots that differ (a slot list is copied, then edited: an untouched
        # slot holds the same object); a task sits in one slot at a time.
        old_slots = before.get(name, [])
        old: dict[str, Endpoint] = {}
        new: dict[str, Endpoint] = {}
        for o, n in zip_longest(old_slots, new_slots):
            if o is not n:
                if o is not None:
                    old[o.task_id] = o
                if n is not None:
                    new[n.task_id] = n
        total = apps.setdefault(app_id, [0, 0, 0, 0])
        total[0] += len(new.keys() - old.keys())
        total[1] += len(old.keys() - new.keys())
        total[2] += sum(1 for t in new.keys() & old.keys() if new[t] != old[t])
        total[3] += per_backend.get(shape.name if shape else name, 0)
    return [f"{app}: +{a} -{r}{f' ~{c}' if c else ''} tasks, runtime, {n} commands, "
            f"{ms:.0f} ms" for app, (a, r, c, n) in sorted(apps.items())]


def reload_causes(pending: Mapping[str, str], desired: Mapping[str, DesiredService],
                  layout: Layout, first: str = "") -> str:
    """``new_app: /a, /b; removed_app: /c`` for the pending reload's backends (``*``,
    a reload of everything, shows its reason alone); reason ``first`` (the one the
    reload is counted under) comes first."""
    by_reason: dict[str, set[str]] = {}
    for name, reason in pending.items():
        apps = by_reason.setdefault(str(reason), set())
        if name == "*":
            continue
        if name in desired:
            apps.add(desired[name].service.app_id)
        elif name in layout:
            apps.add(layout[name].app_id)
        else:
            apps.add(name)
    parts = []
    for reason, apps in sorted(by_reason.items(), key=lambda kv: (kv[0] != first, kv[0])):
        shown = sorted(apps)[:MAX_APPS_PER_REASON]
        more = f" +{len(apps) - len(shown)} more" if len(apps) > len(shown) else ""
        parts.append(f"{reason}: {', '.join(shown)}{more}" if shown else reason)
    return "; ".join(parts)
