"""What every part of the Marathon parser shares: the resolver it is given, the error
that names a field, and null-tolerant field access. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..model import shown

# host name -> IP (None when it cannot be resolved). Injected, so parsing stays pure.
Resolver = Callable[[str], "str | None"]


class AppParseError(ValueError):
    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        super().__init__(f"field {field_name}: {problem}")


def get(obj: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    """``obj[key]``, treating a missing object, a missing key and null alike."""
    if type(obj) is not dict and not isinstance(obj, Mapping):  # dict: skip the ABC check
        return default
    value = obj.get(key)
    return default if value is None else value


def get_list(obj: Mapping[str, Any] | None, key: str, where: str) -> list[Any]:
    value = get(obj, key, [])
    if not isinstance(value, list):
        raise AppParseError(where, f"expected a list, got {type(value).__name__}")
    return value


def get_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AppParseError(where, f"expected an integer, got {shown(repr(value))}")
    return value


def tasks_left_out(app: Mapping[str, Any]) -> bool:
    """An app with no ``tasks`` key at all though ``tasksRunning`` says some run: the
    answer was not to ``embed=apps.tasks`` (or ``app.tasks``), a proxy dropping the query
    string, say; read as an app without tasks it would empty its backends."""
    return "tasks" not in app and bool(app.get("tasksRunning"))


def unpaired_surrogate(value: Any) -> str | None:
    """The first string of a decoded JSON value (keys included) holding an unpaired UTF-16
    surrogate, escaped to ASCII and cut short; or None.

    ``json.loads`` takes ``"\\ud800"`` (msgspec does not), and UTF-8 cannot encode the
    string it makes: let in, it failed ``/status`` for every caller (a task id) or the
    render of every app (an app id). Checked only where ``json.loads`` decoded."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    text = ascii(item)
                    return text if len(text) <= 80 else text[:77] + "..."
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None
