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
reads it unchanged, with two differences: each task is a :class:`TaskJSON` (typed, so
the parser's per-task work is only the values), and the ``apps`` list is a :class:`DecodedApps`,
which decodes each app when it is read. The body is scanned once for the apps'
extent (``msgspec.Raw``, no copy); a full sync then decodes, parses and drops one app
at a time, so the decoded payload (~60 MB at 10,000 apps) never exists at once.

A field the parser starts to read must be added to ``_App`` or :class:`TaskJSON`:
``tests/unit/test_appsdecode.py`` compares both decoders' parse results over every
fixture and sample payload.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, TypedDict, overload

import msgspec


class TaskJSON(msgspec.Struct, gc=False):
    """A task's fields :func:`.parse.parse_task` reads, each of the JSON type it expects.

    50,000 of these at 10,000 apps: a Struct without dicts (``ipAddresses`` entries stay
    raw JSON text until an IP-per-task app reads them) and with msgspec checking the
    types, so the parser checks only values. A task with any field of another type
    fails this type, and its app is decoded by ``json.loads`` instead: the parser's
    dict path then reports it exactly as before. (gc=False: JSON values hold no cycles.)
    """

    id: str | None = None
    host: str | None = None
    ipAddresses: list[msgspec.Raw] | None = None
    ports: list[int] | None = None
    state: str | None = None
    healthCheckResults: Any = None


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
    tasks: list[TaskJSON] | None
    tasksRunning: Any  # with no "tasks" at all: embed=apps.tasks was not honoured


class _Apps(TypedDict):
    apps: list[msgspec.Raw]


_outer = msgspec.json.Decoder(_Apps)
_app = msgspec.json.Decoder(_App)


class DecodedApps(Sequence[Any]):
    """The ``apps`` of a ``/v2/apps`` body, each decoded when it is read (not kept).

    Setting an item (to anything) drops that app's raw JSON: a consumer that reads
    each app once releases it behind it (``parse_apps(..., consume=True)``). An app
    of another shape than ``_App`` is decoded whole by ``json.loads``, so the parser
    reports it exactly as before; the rest of the body is unaffected."""

    __slots__ = ("_raws",)

    def __init__(self, raws: list[msgspec.Raw | None]) -> None:
        self._raws = raws

    def __len__(self) -> int:
        return len(self._raws)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self._raws))[index]]
        raw = self._raws[index]
        if raw is None:
            raise LookupError(f"app {index} was already read and released")
        try:
            return _app.decode(raw)
        except msgspec.ValidationError:
            return json.loads(bytes(raw))

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self._raws)):
            yield self[i]

    def raw_json(self, index: int) -> msgspec.Raw | None:
        """App ``index``'s JSON text as it came (a view of the body), or None once read
        and released."""
        return self._raws[index]

    def __setitem__(self, index: int, _: object) -> None:
        self._raws[index] = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (list, DecodedApps)) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it stands for

    def __repr__(self) -> str:
        return f"DecodedApps({len(self._raws)} apps)"


def decode_apps(content: bytes) -> Any:
    """The ``/v2/apps`` body as :func:`json.loads` gives it, with only the fields the
    parser reads, and ``apps`` decoded lazily (:class:`DecodedApps`). Raises ValueError
    when the body is not JSON.

    A body of another shape than Marathon's (no ``apps`` list, an app that is not an
    object, NaN) is decoded by ``json.loads`` instead, whole: the parser then reports
    it exactly as before."""
    try:
        return {"apps": DecodedApps(list(_outer.decode(content)["apps"]))}
    except (msgspec.ValidationError, msgspec.DecodeError):
        return json.loads(content)
    except RecursionError:
        # msgspec recurses to skip each app too: one app nested past the recursion limit
        # failed the scan, so the whole full sync. Its extent is found without recursion
        # instead, and decoding that app alone fails it alone (parse_apps reports it).
        raws = _apps_extents(content)
        if raws is None:  # nested too deep outside the apps, or not JSON: the body's error
            raise
        return {"apps": DecodedApps(raws)}


# A JSON string (escapes included), or one of the characters that frame values.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]', re.DOTALL)


def _apps_extents(content: bytes) -> list[msgspec.Raw | None] | None:
    """The text of each element of the top-level object's ``apps`` array, found in one
    flat pass (no recursion, however deep an app is); None when the body is not an
    object holding an ``apps`` array, or is nested deeper than ``_MAX_OUTSIDE`` outside
    its apps (then the body as a whole is at fault, not an app)."""
    view = memoryview(content)
    depth, key, start, end = 0, b"", -1, 0  # start: where the app begins; -2: all read
    raws: list[msgspec.Raw | None] = []
    for match in _TOKEN.finditer(content):
        token = match.group()
        if token[0] == 0x22:  # '"': a string; at depth 1 after '{' or ',', a key
            if depth == 1 and key == b"":
                key = token
        elif token in (b"{", b"["):
            if depth == 0 and (token != b"{" or start == -2):
                return None
            depth += 1
            if depth == 2 and start == -1 and key == b'"apps"' and token == b"[":
                start = match.end()
            elif depth > _MAX_OUTSIDE and start < 0:
                return None
        elif token in (b"}", b"]"):
            depth -= 1
            end = match.end()
            if depth == 1 and start >= 0:  # the end of the apps array
                last = bytes(view[start:match.start()]).strip()
                if last or raws:
                    raws.append(msgspec.Raw(last))
                start = -2
        elif depth == 2 and start >= 0:  # ',' between apps
            raws.append(msgspec.Raw(bytes(view[start:match.start()]).strip()))
            start = match.end()
        elif depth == 1:  # ',' between the keys of the body
            key = b""
    return raws if depth == 0 and start == -2 and not content[end:].strip() else None


_MAX_OUTSIDE = 64
