"""``SERVICEROUTER_<FLAG>``: each long flag's default taken from the environment, and
shown in ``--help`` with the default in force.

``--haproxy-socket`` → ``SERVICEROUTER_HAPROXY_SOCKET``; repeatable flags take a
comma-separated list; yes/no flags take 1/0, true/false, yes/no, on/off (or empty). A
value that does not fit its flag is an argparse error naming the variable.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from typing import Any

ENV_PREFIX = "SERVICEROUTER_"
Mask = Callable[[str], str]


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def apply_env(parser: argparse.ArgumentParser, env: dict[str, str],
              masks: Mapping[str, Mask] | None = None) -> None:
    """Use ``SERVICEROUTER_<FLAG>`` as the default of each long flag, and show the
    variable and the default in ``--help`` (for every flag, set or not). ``masks``: by
    flag, what ``--help`` and errors show of a value instead (help ends up in terminals,
    tickets and CI logs; a token or a password must not)."""
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if not longs or action.default == argparse.SUPPRESS:
            continue
        name = env_name(longs[0])
        mask = (masks or {}).get(longs[0], str)
        if name in env:
            try:
                action.default = _env_value(action, longs[0], name, env[name], mask)
            except _BadValue as exc:  # said when this command runs, not when another does
                env_errors(parser).append(str(exc))
            action.required = False
        action.help = _help_with_env(action, name, name in env, mask)


def env_errors(parser: argparse.ArgumentParser) -> list[str]:
    """The variables :func:`apply_env` found unfit for ``parser``'s flags. The parser
    reports them when it parses (``parser.error``), so that a variable bad for one
    command (say ``run``'s ``--resync-interval``) neither stops another command nor is
    reported under another command's name."""
    errors: list[str] | None = getattr(parser, "_servicerouter_env_errors", None)
    if errors is None:
        errors = []
        parser._servicerouter_env_errors = errors  # type: ignore[attr-defined]
    return errors


class _BadValue(Exception):
    pass


def _env_value(action: argparse.Action, flag: str, name: str, raw: str, mask: Mask) -> Any:
    convert = action.type if callable(action.type) else str
    try:
        if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
            word = raw.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(raw)
            return word in _TRUE
        if isinstance(action, argparse._AppendAction):
            return [convert(v) for v in (p.strip() for p in raw.split(",")) if v]
        value: Any = convert(raw)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise _BadValue(f"environment variable {name}={mask(raw)!r} is not valid for "
                        f"{flag}") from None
    if action.choices is not None and value not in action.choices:
        raise _BadValue(f"environment variable {name}={mask(raw)!r} is not one of "
                        f"{', '.join(map(str, action.choices))} ({flag})")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _shown_default(action: argparse.Action, mask: Mask = str) -> str:
    value = action.default
    if isinstance(value, bool) or action.nargs == 0:
        return "on" if value else "off"
    if value is None or value == []:
        return "none"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return f"{value[0]}:{value[1]}"  # HOST:PORT
    if isinstance(value, list):
        return ",".join(mask(str(v)) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return mask(str(value))


def _help_with_env(action: argparse.Action, name: str, set_: bool, mask: Mask = str) -> str:
    """``help [env NAME, default X]``; the help's own "(default ...)" is replaced so
    the default shown is the one in force (the variable's value when it is set)."""
    text = (action.help or "").replace("%(default)s", "DEFAULT")
    said = re.search(r"\(default:? ([^)]*)\)", text)
    text = re.sub(r"\s*\(default:? [^)]*\)", "", text).strip()
    shown = _shown_default(action, mask)
    if shown == "none" and said and said.group(1) != "DEFAULT":
        shown = said.group(1)  # "every app" says more than "none"
    return f"{text} [env {name}{' (set)' if set_ else ''}, default {shown}]".replace(
        "%", "%%").strip()
