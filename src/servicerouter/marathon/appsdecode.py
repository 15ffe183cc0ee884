"""``/v2/apps`` bytes straight into the fields :mod:`.parse` reads (msgspec). Pure.

At 10,000 apps x 5 tasks the response is ~30 MB. ``json.loads`` builds every
field of every app and task (cmd, env, resources, versionInfo, slaveId,
stagedAt, ...) as Python objects: 344 ms and 103 MB measured, most of it thrown
away by the parser. msgspec decodes into TypedDicts that name only the fields
:mod:`.parse` reads and skips the rest while scanning (issue #11 measured 102 ms and
38 MB for typed Structs on that payload; TypedDicts give the parser its plain dicts
with no copy: 78 ms here). Sub-objects whose shape the parser checks itself
(``container``, ``networks``, ``healthChecks``, ``labels``, ...) stay ``Any``, so
their validation, and every error message naming an app and a field, is the
parser's as before.

:func:`decode_apps` returns the same shape ``json.loads`` would, reduced to those
fields (absent fields stay absent, ``null`` stays ``None``), and :func:`.parse.parse_apps`
reads it unchanged. A field the parser starts to read must be added to
``_App`` or ``_Task``: ``tests/unit/test_appsdecode.py`` compares both
decoders' parse results over every fixture and sample payload.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

import msgspec


class _Task(TypedDict, total=False):
    id: Any
    host: Any
    ipAddresses: Any
    ports: Any
    state: Any
    healthCheckResults: Any


class _App(TypedDict, total=False):
    id: Any
    version: Any
    labels: Any
    networks: Any
    ipAddress: Any
    container: Any
    portDefinitions: Any
    ports: Any
    healthChecks: Any
    tasks: list[_Task] | None


class _Apps(TypedDict):
    apps: list[_App]


_decoder = msgspec.json.Decoder(_Apps)


def decode_apps(content: bytes) -> Any:
    """The ``/v2/apps`` body as :func:`json.loads` gives it, with only the fields the
    parser reads. Raises ValueError when the body is not JSON.

    A body of another shape than Marathon's (no ``apps`` list, an app or a task that
    is not an object, ``tasks`` that is not a list, NaN) is decoded by ``json.loads``
    instead, whole: the parser then reports it exactly as before."""
    try:
        return {"apps": _decoder.decode(content)["apps"]}
    except (msgspec.ValidationError, msgspec.DecodeError):
        return json.loads(content)
