"""``/v2/apps`` bytes straight into the fields :mod:`.parse` reads (msgspec). Pure.

At 10,000 apps x 5 tasks the response is ~30 MB. ``json.loads`` builds every
field of every app and task (cmd, env, resources, versionInfo, slaveId,
stagedAt, ...) as Python objects: 344 ms and 103 MB measured, most of it thrown
away by the parser. msgspec decodes into typed Structs that name only the fields
:mod:`.parse` reads and skips the rest while scanning: 102 ms and 38 MB on the
same payload (issue #11). Sub-objects whose shape the parser checks itself
(``container``, ``networks``, ``healthChecks``, ``labels``, ...) stay ``Any``, so
their validation, and every error message naming an app and a field, is the
parser's as before.

:func:`decode_apps` returns the same shape ``json.loads`` would, reduced to those
fields (absent fields stay absent, ``null`` stays ``None``), and :func:`.parse.parse_apps`
reads it unchanged. A field the parser starts to read must be added to
:class:`_App` or :class:`_Task`: ``tests/unit/test_appsdecode.py`` compares both
decoders' parse results over every fixture and sample payload.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_UNSET: Any = msgspec.UNSET


class _Task(msgspec.Struct, omit_defaults=True):
    id: Any = _UNSET
    host: Any = _UNSET
    ipAddresses: Any = _UNSET
    ports: Any = _UNSET
    state: Any = _UNSET
    healthCheckResults: Any = _UNSET


class _App(msgspec.Struct, omit_defaults=True):
    id: Any = _UNSET
    version: Any = _UNSET
    labels: Any = _UNSET
    networks: Any = _UNSET
    ipAddress: Any = _UNSET
    container: Any = _UNSET
    portDefinitions: Any = _UNSET
    ports: Any = _UNSET
    healthChecks: Any = _UNSET
    tasks: list[_Task] | None = _UNSET


class _Apps(msgspec.Struct):
    apps: list[_App]


_TASK_FIELDS = _Task.__struct_fields__
_APP_FIELDS = _App.__struct_fields__
_decoder = msgspec.json.Decoder(_Apps)


def _app(a: _App) -> dict[str, Any]:
    out = {f: v for f in _APP_FIELDS if (v := getattr(a, f)) is not _UNSET}
    tasks = out.get("tasks")
    if tasks is not None:
        out["tasks"] = [{f: v for f in _TASK_FIELDS if (v := getattr(t, f)) is not _UNSET}
                        for t in tasks]
    return out


def decode_apps(content: bytes) -> Any:
    """The ``/v2/apps`` body as :func:`json.loads` gives it, with only the fields the
    parser reads. Raises ValueError when the body is not JSON.

    A body of another shape than Marathon's (no ``apps`` list, an app or a task that
    is not an object, ``tasks`` that is not a list, NaN) is decoded by ``json.loads``
    instead, whole: the parser then reports it exactly as before."""
    try:
        decoded = _decoder.decode(content)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return json.loads(content)
    return {"apps": [_app(a) for a in decoded.apps]}
