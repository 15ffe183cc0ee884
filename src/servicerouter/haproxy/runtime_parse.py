"""Pure parsers for HAProxy 2.6 Runtime API output (no I/O; unit-tested on their own).

Framing (measured on 2.6.12, see ``runtime.py``): the client runs each session in
interactive mode (``prompt``), where HAProxy follows every command's output, including each
command of a ``;``-separated line, with the prompt ``"\\n> "``. Non-interactive mode ends
each reply with a bare ``"\\n"`` instead, which is ambiguous: a reply that itself ends
without a newline (2.6 prints ``Empty weight string empty or preceded by garbage`` that
way) merges with the next reply, and ``show`` replies contain blank lines.
"""

from __future__ import annotations

import csv
import enum
import io
from dataclasses import dataclass

PROMPT = "\n> "

# srv_admin_state bits (include/haproxy/server-t.h, 2.6).
ADMF_FMAINT = 0x01  # forced into maintenance (CLI ``state maint``, or ``disabled`` in config)
ADMF_IMAINT = 0x02  # inherited maintenance from a tracked server
ADMF_CMAINT = 0x04  # declared ``disabled`` in the config: a sticky MARKER, not a maint state
ADMF_FDRAIN = 0x08  # forced drain (CLI ``state drain``)
ADMF_IDRAIN = 0x10  # inherited drain
ADMF_RMAINT = 0x20  # maintenance because of a DNS resolution failure
ADMF_HMAINT = 0x40  # FQDN set from the stats socket
ADMF_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT  # 0x23, HAProxy's SRV_ADMF_MAINT
ADMF_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN  # 0x18, HAProxy's SRV_ADMF_DRAIN

# srv_op_state values.
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3


class Status(str, enum.Enum):
    OK = "ok"
    ERROR = "error"  # HAProxy answered and refused (nothing changed)
    UNKNOWN = "unknown"  # written, but no complete reply: it may or may not have been applied
    NOT_SENT = "not_sent"  # never written: certainly not applied


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: Status
    reply: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


# Replies that mean success for commands whose normal answer is empty. Anything else that
# is not empty is an error (``No such server.``, ``Invalid addr ...``, ``Unknown command``,
# ``Require 'backend/server'.``, ``Only servers in maintenance mode can be deleted.`` ...).
SUCCESS_PREFIXES: tuple[str, ...] = (
    "IP changed from",
    "no need to change the addr",
    "New server registered.",
    "Server deleted.",
    "health check port updated.",
    "agent port updated.",
    "Done.",
)

# ``show``-like commands: their normal reply is arbitrary text; these prefixes mean failure.
QUERY_ERROR_PREFIXES: tuple[str, ...] = (
    "Unknown command",
    "Can't find",
    "No such",
    "Permission denied",
    "Require ",
    "Missing ",
    "Unknown ",
)

QUERY_PREFIXES: tuple[str, ...] = ("show", "help")


def is_query(command: str) -> bool:
    """Commands whose reply is free text (may contain blank lines): sent one per session."""
    return command.lstrip().startswith(QUERY_PREFIXES)


def classify(command: str, reply: str) -> Status:
    """OK or ERROR for one complete reply to one command."""
    if not reply and not is_query(command):
        return Status.OK
    text = reply.strip("\n")
    if is_query(command):
        return Status.ERROR if text.startswith(QUERY_ERROR_PREFIXES) else Status.OK
    if not text or text.startswith(SUCCESS_PREFIXES):
        return Status.OK
    return Status.ERROR


def split_prompt_replies(data: str, expected: int) -> tuple[list[str], bool]:
    """Split a ``prompt``-mode session transcript into per-command replies.

    ``data`` is everything read from ``prompt\\n<lines>\\nquit\\n``: the acknowledgement
    of ``prompt`` (``"\\n> "``), then each reply followed by ``"\\n> "``. Returns
    ``(replies, exact)``: the complete replies in order, and whether their count and the
    transcript's shape prove that ``replies[i]`` belongs to command ``i``. ``exact=False``
    with fewer replies than expected means the session was cut short (the tail is
    unknown); with more, some reply contained the prompt and the mapping is ambiguous.
    A single command is always mapped exactly, whatever its reply contains.
    """
    if not data.startswith(PROMPT):
        return [], False
    body = data[len(PROMPT) :]
    if expected == 1 and body.endswith(PROMPT):
        return [_strip_reply(body[: -len(PROMPT)])], True
    parts = body.split(PROMPT)
    complete = parts[:-1]  # the last part is what followed the final prompt
    trailing = parts[-1]
    replies = [_strip_reply(p) for p in complete]
    exact = len(replies) == expected and trailing == ""
    return replies, exact


def _strip_reply(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


@dataclass(frozen=True)
class ServerState:
    """One line of ``show servers state`` (format version 1)."""

    backend_id: int
    backend: str
    server_id: int
    server: str
    addr: str
    op_state: int
    admin_state: int
    weight: int  # srv_uweight: the user weight (what ``set server weight`` changes)
    initial_weight: int  # srv_iweight
    check_status: int
    check_result: int
    check_health: int
    check_state: int
    port: int
    fqdn: str | None = None

    @property
    def in_maint(self) -> bool:
        """Effectively in maintenance (forced, inherited or DNS). Not the CMAINT marker:
        a ``disabled`` slot set ``ready`` keeps 0x04 and takes traffic (measured)."""
        return bool(self.admin_state & ADMF_MAINT)

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & ADMF_DRAIN) and not self.in_maint

    @property
    def configured_disabled(self) -> bool:
        return bool(self.admin_state & ADMF_CMAINT)

    @property
    def ready(self) -> bool:
        """Administratively ready (not maint, not drain); health is :attr:`up`."""
        return not self.admin_state & (ADMF_MAINT | ADMF_DRAIN)

    @property
    def up(self) -> bool:
        return self.op_state in (OP_RUNNING, OP_STARTING)

    @property
    def admin(self) -> str:
        return "maint" if self.in_maint else "drain" if self.draining else "ready"


class ParseError(ValueError):
    """Runtime API output did not have the documented shape."""


_MIN_FIELDS = 19  # up to srv_port


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse ``show servers state [backend]`` output (version ``1``)."""
    out: list[ServerState] = []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return out
    if lines[0].strip() != "1":
        raise ParseError(f"unsupported 'show servers state' format version: {lines[0]!r}")
    for line in lines[1:]:
        if line.startswith("#"):
            continue
        f = line.split(" ")
        if len(f) < _MIN_FIELDS:
            raise ParseError(f"short 'show servers state' line ({len(f)} fields): "
                             f"{line[:200]!r}")
        try:
            out.append(
                ServerState(
                    backend_id=int(f[0]),
                    backend=f[1],
                    server_id=int(f[2]),
                    server=f[3],
                    addr=f[4],
                    op_state=int(f[5]),
                    admin_state=int(f[6]),
                    weight=int(f[7]),
                    initial_weight=int(f[8]),
                    check_status=int(f[10]),
                    check_result=int(f[11]),
                    check_health=int(f[12]),
                    check_state=int(f[13]),
                    fqdn=None if f[17] == "-" else f[17],
                    port=0 if f[18] == "-" else int(f[18]),
                )
            )
        except ValueError as exc:
            raise ParseError(f"bad 'show servers state' line {line[:200]!r}: "
                             f"{str(exc)[:200]}") from exc
    return out


def parse_show_info(text: str) -> dict[str, str]:
    """Parse ``show info`` (``Key: value`` lines)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def parse_show_stat(text: str) -> list[dict[str, str]]:
    """Parse ``show stat`` CSV (header line starts with ``# ``)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise ParseError("'show stat' output lacks its '# pxname,...' header")
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    try:
        return [{k: v for k, v in row.items() if k} for row in reader]
    except csv.Error as exc:  # a field over csv's size limit, a stray NUL: not ValueError
        raise ParseError(f"'show stat' output is not CSV: {exc}") from None
