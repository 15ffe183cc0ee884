"""Batched asyncio client for HAProxy's Runtime API (the admin stats socket).

Design (measured on HAProxy 2.6.12, 2-core VM, unix socket, ``set server addr`` commands;
``benchmarks/runtime_client.py``):

* One kept interactive (``prompt``) session for command batches: opened once, then each
  :meth:`RuntimeClient.execute` writes all its command lines at once and reads until it
  has one prompt per command. Commands are joined by ``;`` into lines that stay
  ``margin`` bytes below ``tune.bufsize``. (Until issue #11 every call opened a
  connection of its own; at 100 replacements/s that connect and teardown was a large
  part of the daemon's CPU.) Throughput: batch 1 ~4.8k/s, 10 ~39k/s, 100 ~120k/s, 1000+ ~160-185k/s
  (one raw connection per command: ~6-7k/s). HAProxy itself takes ~300k/s over one
  prompt session; the rest is our validation and reply parsing. One non-interactive
  connection per line (~280-310k/s raw) or 2-4 concurrent sessions (~280-350k/s raw) are
  no faster, and concurrency would lose ordering between lines (``addr`` then
  ``state ready`` must apply in order), so neither is used.
* Interactive (``prompt``) mode because its framing is unambiguous: HAProxy ends every
  command's reply, also inside a ``;`` line, with ``"\\n> "``. Non-interactive mode ends
  a reply with one ``"\\n"``, so a message printed without its own newline (2.6 does this
  for ``set server ... weight abc``) merges with the next reply.
* A session opened before a reload stays attached to the OLD worker (measured on 2.6.12:
  it keeps answering with the old pid until that worker exits), so commands sent on it
  after the reload would be lost. The owner calls :meth:`RuntimeClient.reset` after
  every reload it confirms and whenever it sees a new worker pid (the engine checks
  every second and then reconciles). Should a batch still reach an old worker (a
  reload by someone else), that worker refuses every command with ``Proxy is
  disabled.``: nothing was applied, so the batch is sent once more on a new session.
  A session idle for ``idle`` seconds is reopened before use (HAProxy closes idle CLI
  sessions after ``stats timeout``, 10 s by default), and so is one whose end HAProxy
  has already sent: in both cases nothing of the batch has been written yet.
* ``show``/``help`` commands (free-text replies) run on a short-lived connection each,
  as does :meth:`RuntimeClient.servers_state_chunks` (so a long dump runs beside
  command batches instead of holding them up).
* Never resend: a failure to connect means nothing was written (:class:`RuntimeUnavailable`,
  commands ``NOT_SENT``); any failure after the write leaves the commands without a
  complete reply ``UNKNOWN`` and raises :class:`RuntimeUncertain`, so the caller restores
  a known state (read back ``show servers state``, reconcile or reload), never retries
  blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from servicerouter.haproxy import runtime_commands as cmd
from servicerouter.haproxy.runtime_errors import (
    HAProxyRuntimeError,
    RuntimeCommandError,
    RuntimeProtocolError,
    RuntimeUnavailable,
    RuntimeUncertain,
    RuntimeUncertainError,
    raise_for_errors,
)
from servicerouter.haproxy.runtime_parse import (
    CommandResult,
    ParseError,
    ServerState,
    Status,
    classify,
    is_query,
    parse_servers_state,
    parse_show_info,
    parse_show_stat,
    split_prompt_replies,
)
from servicerouter.haproxy.session import (
    MAX_REPLY,
    PROMPT_BYTES,
    REPLY_SPAN,
    PromptSession,
    Watchdog,
)

# 2.6's answer from a worker whose proxies stopped (it is soft-stopping after a reload).
_STOPPED = b"Proxy is disabled.\n"

__all__ = [
    "CommandResult",
    "HAProxyRuntimeError",
    "RuntimeClient",
    "RuntimeCommandError",
    "RuntimeProtocolError",
    "RuntimeUnavailable",
    "RuntimeUncertain",
    "RuntimeUncertainError",
    "ServerState",
    "Status",
    "raise_for_errors",
    "respell_socket_path",
]

DEFAULT_BUFSIZE = 16384
DEFAULT_IDLE = 5.0  # seconds; below HAProxy's default ``stats timeout`` (10 s)
DEFAULT_MARGIN = 1024
_READ_CHUNK = 1 << 20
# A whole reply read to EOF (show stat: ~56 MB at 10,000 apps x 16 slots): more is not
# HAProxy answering, and is not held in memory.
MAX_DUMP = 256 << 20
_STREAM_CHUNK = 1 << 17  # ~1,500 'show servers state' lines
# Bytes written to an old worker in its grace that it has not read yet: past this it is
# not keeping up (or stuck), and is sent nothing more.
MIRROR_BACKLOG = 1 << 20
# Before connecting again when the worker to avoid (``not_from``) answered: in its grace
# the kernel hands each connection to either worker, so the next one soon reaches the
# new worker; a changed server waits for it (measured at 10,000 apps: 10 ms made the
# replay after a reload ~20 ms later).
RETRY_OLD = 0.001
# Looking for the old worker (``mirror``): connections made for up to this long, pausing
# RETRY_OLD, doubled after each miss up to MIRROR_PAUSE. Idle, a pair of workers hands the
# old one ~9 connections in 10; right after a reload the new one took all 16 made in 4 ms
# (the old worker then got no runtime change for its whole grace).
MIRROR_SEARCH = 5.0
MIRROR_PAUSE = 0.05


log = logging.getLogger(__name__)

_FORBIDDEN = re.compile(r"[;\n\r\0]")
_T = TypeVar("_T")
_TCP = re.compile(r"^(?:(ipv4|ipv6|tcp)@)?\[?([0-9A-Za-z.:-]+?)\]?:(\d{1,5})$")


def parse_address(address: str) -> tuple[str, int] | str:
    """``/run/haproxy.sock`` or ``unix@/path`` -> path; ``[ipv4@]127.0.0.1:9999`` or
    ``ipv6@[::1]:9999`` -> ``(host, port)``."""
    if address.startswith("unix@"):
        return address[len("unix@") :]
    if "/" not in address:
        m = _TCP.match(address)
        if m and (m.group(1) or m.group(2).count(":") == 0):
            return m.group(2), int(m.group(3))
    return address


def respell_socket_path(path: str, live: str) -> str:
    """Another spelling of the unix socket ``path`` than ``live`` (the one the running
    config has): ``/run/haproxy/./admin.sock`` for ``/run/haproxy/admin.sock``, and
    back. Measured on 2.6.12: a reload hands every listener whose address is spelled
    the same to the new worker (``sock_unix_addrcmp`` compares the strings), so a
    removed socket file stays removed; a config that spells the path differently makes
    the new worker bind (and create) the file anew. Both spellings name one file."""
    if live != path:
        return path
    head, sep, name = path.rpartition("/")
    return f"{head}/./{name}" if sep else f"./{path}"


class RuntimeClient:
    """Runtime API client for one admin socket (unix path or TCP ``host:port``).

    ``timeout`` bounds the connect and every wait for data while reading replies.
    ``bufsize`` must match the target's ``tune.bufsize``; lines stay ``margin`` below it.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 5.0,
        bufsize: int = DEFAULT_BUFSIZE,
        margin: int = DEFAULT_MARGIN,
        idle: float = DEFAULT_IDLE,
    ) -> None:
        if bufsize - margin < 256:
            raise ValueError(f"bufsize {bufsize} - margin {margin} leaves no room for a line")
        self.address = address
        self.timeout = timeout
        self.idle = idle
        self.max_line = bufsize - margin
        self._target = parse_address(address)
        self._kept: PromptSession | None = None
        self._watch: Watchdog | None = None  # the kept session's reply timer
        self._kept_used = 0.0
        self._lock = asyncio.Lock()
        self.sessions_opened = 0  # kept sessions opened (for tests and benchmarks)
        # While a reload hands over: the old worker's pid, which a new kept session
        # must not be with (it may still accept one for a moment after it was told to
        # stop, and whatever it is told is lost to the new worker).
        # With HAProxy's `grace` that old worker also answers new connections for a while:
        # a query (show info, show servers state) must not be answered by it either.
        self.not_from: int | None = None
        # The old worker in its grace (``mirror``): it is sent every batch too, on a
        # session of its own, so that the clients it still accepts reach the same servers.
        self._mirror: Mirror | None = None

    def reset(self) -> None:
        """Close the kept session: the next batch connects anew and so reaches the
        current worker. Call it after a reload and when the worker pid changed."""
        kept, self._kept = self._kept, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
        if kept is not None:
            kept.close()

    def mirror(self, pid: int, seconds: float) -> None:
        """For ``seconds`` (HAProxy's ``grace`` after a reload), also send every batch to
        the worker ``pid``, which still accepts clients meanwhile. Replaces any earlier
        mirror; 0 seconds ends it."""
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
        if seconds > 0:
            self._mirror = Mirror(self, pid, time.monotonic() + seconds)

    @property
    def mirroring(self) -> bool:
        """Whether batches still go to an old worker too."""
        m = self._mirror
        return m is not None and m.alive()

    def __repr__(self) -> str:
        return f"RuntimeClient({self.address!r})"

    def socket_missing(self) -> bool:
        """Whether this is a unix socket whose file is gone (removed by hand, or by a
        tmp cleaner). HAProxy still holds the listener, and a reload hands that same
        listener to the new worker, so the file only comes back through
        :func:`respell_socket_path`."""
        return isinstance(self._target, str) and not os.path.exists(self._target)

    # ------------------------------------------------------------------ batching
    def _size(self, command: str) -> int:
        """Encoded length; ValueError for anything that could split or break a line."""
        if not command or command.isspace():
            raise ValueError("empty Runtime API command")
        if _FORBIDDEN.search(command):
            raise ValueError(f"Runtime API command contains ';' or a line break: {command!r}")
        size = len(command) if command.isascii() else len(command.encode())
        if size + 1 > self.max_line:
            raise ValueError(f"Runtime API command longer than {self.max_line - 1} bytes")
        return size

    def plan(self, commands: Sequence[str]) -> list[list[list[int]]]:
        """Sessions (one connection each) of lines of command indexes, in order."""
        sessions: list[list[list[int]]] = []
        lines: list[list[int]] = []
        line: list[int] = []
        size = 0
        for i, c in enumerate(commands):
            n = self._size(c) + 1  # ';' or '\n'
            if is_query(c):
                if line:
                    lines.append(line)
                if lines:
                    sessions.append(lines)
                sessions.append([[i]])
                lines, line, size = [], [], 0
                continue
            if line and size + n > self.max_line:
                lines.append(line)
                line, size = [], 0
            line.append(i)
            size += n
        if line:
            lines.append(line)
        if lines:
            sessions.append(lines)
        return sessions

    async def execute(self, commands: Sequence[str]) -> list[CommandResult]:
        """Run ``commands`` in order; one :class:`CommandResult` (OK/ERROR) per command.

        Raises :class:`RuntimeUnavailable` if a connection cannot be opened (nothing of
        that session or later was sent) or :class:`RuntimeUncertain` if a session broke
        after its write; both carry ``results`` for every command (OK/ERROR for what is
        known, UNKNOWN/NOT_SENT for the rest). Later sessions are never sent after one
        fails. Raises ValueError (before sending anything) for a malformed command.
        """
        commands = list(commands)
        plan = self.plan(commands)
        results: list[CommandResult | None] = [None] * len(commands)
        for s, lines in enumerate(plan):
            try:
                uncertain = await self._session(commands, lines, results)
            except RuntimeUnavailable as exc:
                rest = [i for ls in plan[s:] for ln in ls for i in ln]
                for i in rest:
                    results[i] = CommandResult(commands[i], Status.NOT_SENT)
                sent = len(commands) - len(rest)
                raise RuntimeUnavailable(
                    f"{exc} ({sent} of {len(commands)} commands were sent before)",
                    self.address,
                    _done(results),
                ) from exc.__cause__
            if uncertain is not None:
                for ls in plan[s + 1 :]:
                    for ln in ls:
                        for i in ln:
                            results[i] = CommandResult(commands[i], Status.NOT_SENT)
                unknown = sum(r is not None and r.status is Status.UNKNOWN for r in results)
                raise RuntimeUncertain(
                    f"HAProxy runtime socket {self.address}: {uncertain}; {unknown} "
                    "command(s) may or may not have been applied (not resent)",
                    self.address,
                    _done(results),
                )
        return _done(results)

    async def _session(
        self, commands: list[str], lines: list[list[int]], results: list[CommandResult | None]
    ) -> str | None:
        """Run one session; fill ``results``; return why it is uncertain, or None."""
        payload = b"".join(b";".join(commands[i].encode() for i in ln) + b"\n" for ln in lines)
        order = [i for ln in lines for i in ln]
        if len(order) == 1 and is_query(commands[order[0]]):
            data, problem = await self._query(payload)
        else:
            async with self._lock:
                data, problem = await self._kept_exchange(payload, len(order))
                if problem is None and data.count(_STOPPED) == len(order):
                    # The session outlived its worker (a reload not ours): that worker
                    # refused every command, so none was applied and sending them again
                    # on a new session, to the current worker, is safe. Once.
                    self.reset()
                    data, problem = await self._kept_exchange(payload, len(order))
            data = PROMPT_BYTES + data  # the transcript as split_prompt_replies reads it
        replies, exact = split_prompt_replies(data.decode("utf-8", "replace"), len(order))
        if not exact and len(replies) > len(order):
            replies = []  # a reply contained the prompt: no reply can be attributed safely
            problem = problem or "could not attribute replies to commands"
        elif not exact:
            problem = problem or f"connection closed after {len(replies)} of {len(order)} replies"
        for k, i in enumerate(order):
            if k < len(replies):
                status = classify(commands[i], replies[k])
                results[i] = CommandResult(commands[i], status, replies[k])
            else:
                results[i] = CommandResult(commands[i], Status.UNKNOWN)
        return None if exact else problem

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        target = self._target
        if isinstance(target, str):
            return await self._dial(asyncio.open_unix_connection(target, limit=_READ_CHUNK))
        return await self._dial(asyncio.open_connection(target[0], target[1],
                                                        limit=_READ_CHUNK))

    async def _dial(self, connecting: Awaitable[_T]) -> _T:
        """A connection being made, within the timeout; RuntimeUnavailable if not."""
        try:
            return await asyncio.wait_for(connecting, self.timeout)
        except asyncio.TimeoutError as exc:
            raise RuntimeUnavailable(
                f"cannot connect to HAProxy runtime socket {self.address}: "
                f"timed out after {self.timeout}s",
                self.address,
            ) from exc
        except OSError as exc:
            raise RuntimeUnavailable(
                f"cannot connect to HAProxy runtime socket {self.address}: {exc.strerror or exc}",
                self.address,
            ) from exc

    async def _open_kept(self) -> PromptSession:
        """The kept session, (re)opened when needed; RuntimeUnavailable if it cannot be
        (nothing of the caller's batch was written then)."""
        kept = self._kept
        if kept is not None and (not kept.is_usable()
                                 or time.monotonic() - self._kept_used > self.idle):
            self.reset()  # HAProxy ended it, or will soon: nothing was written on it yet
            kept = None
        if kept is not None:
            return kept
        async def attempt() -> PromptSession | None:
            session, pid = await self._prompt_session(ask_pid=self.not_from is not None)
            if self.not_from is None or pid != self.not_from:
                return session
            session.close()  # the old worker's: nothing was written on it yet
            return None

        session = await self._avoiding_old(attempt)
        assert session.transport is not None
        self._kept = session
        self._watch = session.watch = Watchdog(self.timeout, session.transport)
        self.sessions_opened += 1
        return session

    async def _avoiding_old(self, attempt: Callable[[], Awaitable[_T | None]]) -> _T:
        """``attempt()`` until it returns something (None: the worker it reached was
        ``not_from``, and it closed that connection), within the timeout; then
        RuntimeUnavailable (nothing was written to the current worker). In the old
        worker's grace the kernel hands each connection to either worker."""
        deadline = time.monotonic() + self.timeout
        while True:
            got = await attempt()
            if got is not None:
                return got
            if time.monotonic() >= deadline:
                raise RuntimeUnavailable(
                    f"HAProxy runtime socket {self.address}: still answered by the old "
                    f"worker {self.not_from} after {self.timeout}s", self.address)
            await asyncio.sleep(RETRY_OLD)

    async def _prompt_session(self, ask_pid: bool) -> tuple[PromptSession, int | None]:
        """A new session in prompt mode and, if asked, the pid of the worker it reached;
        RuntimeUnavailable if there is none (nothing was written on it)."""
        session = await self._connect_session()
        try:
            ack, _ = await asyncio.wait_for(session.exchange(b"prompt\n", 1), self.timeout)
            if ack != PROMPT_BYTES:
                raise OSError(f"unexpected answer to 'prompt': {ack!r}"
                              + (" (then HAProxy closed the session)" if session.closed
                                 else ""))
            return session, (await self._pid(session) if ask_pid else None)
        except (OSError, asyncio.TimeoutError) as exc:
            session.close()
            raise RuntimeUnavailable(
                f"HAProxy runtime socket {self.address}: no prompt session "
                f"({exc or type(exc).__name__})", self.address) from exc
        except BaseException:  # cancelled (a mirror closed while it was opening)
            session.close()
            raise

    async def _connect_session(self) -> PromptSession:
        """A new connection for a kept session; RuntimeUnavailable as :meth:`_connect`."""
        loop = asyncio.get_running_loop()
        target = self._target
        if isinstance(target, str):
            _, session = await self._dial(loop.create_unix_connection(PromptSession, target))
        else:
            _, session = await self._dial(loop.create_connection(PromptSession, target[0],
                                                                 target[1]))
        return session

    async def _pid(self, session: PromptSession) -> int:
        """The pid of the worker at the other end of a prompt session."""
        reply, _ = await asyncio.wait_for(session.exchange(b"show info\n", 1), self.timeout)
        try:
            return int(parse_show_info(reply.decode("utf-8", "replace"))["Pid"])
        except (KeyError, ValueError):
            raise OSError("no Pid in the answer to 'show info'") from None

    async def _kept_exchange(self, payload: bytes, replies: int) -> tuple[bytes, str | None]:
        """Write ``payload`` on the kept session, wait until ``replies`` prompts came;
        return (data, problem-after-write). A problem ends the session."""
        session = await self._open_kept()
        problem: str | None = None
        seen = 0
        # The session's one timer, not one per batch or read (hundreds of batches a
        # second under churn): it ends the session once `timeout` passed without a byte.
        watch = self._watch
        assert watch is not None  # made with the session
        watch.start()
        try:
            data, seen = await session.exchange(payload, replies)
            if seen < replies or not data.endswith(PROMPT_BYTES):
                error = session.error
                if watch.fired:
                    problem = watch.fired
                elif session.overflowed:
                    problem = f"a reply of over {MAX_REPLY >> 20} MB without a prompt"
                elif isinstance(error, OSError):
                    problem = f"connection failed after the write: {error.strerror or error}"
                else:
                    problem = "HAProxy closed the session"
        finally:
            watch.stop()
            if problem is not None or seen != replies:
                self.reset()  # never reuse a session whose state is in doubt
            else:
                self._kept_used = time.monotonic()
        mirror = self._mirror
        if mirror is not None and not mirror.send(payload):
            mirror.close()
            self._mirror = None
        return data, problem

    async def _query(self, payload: bytes) -> tuple[bytes, str | None]:
        """One query on a connection of its own, in prompt mode; while ``not_from`` is
        set, asked after ``show info`` on the same connection, and asked again while the
        old worker answers (:meth:`_avoiding_old`)."""
        if self.not_from is None:
            return await self._exchange(b"prompt\n" + payload + b"quit\n")

        async def attempt() -> tuple[bytes, str | None] | None:
            data, problem = await self._exchange(b"prompt\nshow info\n" + payload + b"quit\n")
            cut = data.find(PROMPT_BYTES, len(PROMPT_BYTES))
            if not data.startswith(PROMPT_BYTES) or cut < 0:
                return data, problem or "no answer to 'show info'"
            info = parse_show_info(data[len(PROMPT_BYTES):cut].decode("utf-8", "replace"))
            if info.get("Pid") == str(self.not_from):
                return None
            return data[cut:], problem

        return await self._avoiding_old(attempt)

    async def _exchange(self, payload: bytes) -> tuple[bytes, str | None]:
        """Write ``payload`` and read until EOF; return (data, problem-after-write)."""
        reader, writer = await self._connect()
        buf = bytearray()
        problem: str | None = None
        span = REPLY_SPAN * self.timeout
        end = time.monotonic() + span
        try:
            writer.write(payload)  # the transport buffers; we read while it drains
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    problem = f"no complete reply within {span:g}s"
                    break
                chunk = await asyncio.wait_for(reader.read(_READ_CHUNK),
                                               min(self.timeout, left))
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_DUMP:
                    problem = f"a reply of over {MAX_DUMP >> 20} MB"
                    break
        except asyncio.TimeoutError:
            problem = (f"no reply for {self.timeout}s" if end > time.monotonic() else
                       f"no complete reply within {span:g}s")
        except OSError as exc:
            problem = f"connection failed after the write: {exc.strerror or exc}"
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        return bytes(buf), problem

    # ------------------------------------------------------------------ helpers
    async def query(self, command: str) -> str:
        """Run one command, return its reply; raise RuntimeCommandError if refused."""
        results = await self.execute([command])
        raise_for_errors(results, self.address)
        return results[0].reply

    async def execute_checked(self, commands: Sequence[str]) -> list[CommandResult]:
        results = await self.execute(commands)
        raise_for_errors(results, self.address)
        return results

    async def show_servers_state(self, backend: str | None = None) -> list[ServerState]:
        text = await self.query(cmd.show_servers_state(backend))
        try:
            return parse_servers_state(text)
        except ParseError as exc:
            raise RuntimeProtocolError(f"{self.address}: {exc}", self.address) from exc

    async def servers_state_chunks(
        self, chunk: int = _STREAM_CHUNK, backends: Sequence[str] | None = None
    ) -> AsyncIterator[list[str]]:
        """``show servers state`` as it streams: lists of whole lines, about ``chunk``
        bytes each, on a connection of its own (non-interactive: one command, then
        HAProxy closes). The caller compares each chunk and yields to the event loop in
        between, so a 13.6 MB dump (10,000 apps) never sits in memory whole nor holds
        the loop. Raises :class:`RuntimeUnavailable` if it cannot connect and
        :class:`HAProxyRuntimeError` if the dump breaks off (a query: nothing to undo).

        ``backends``: only these, ``show servers state <backend>`` each, as many to a
        connection as fit on one command line (each answer has its own version line;
        an unknown backend's is ``Can't find backend.``).

        A connection that closes before every command on it was answered (the dump cut
        short; or, measured on 2.6.12, a line that reached HAProxy in two reads split
        after a ';': it ends a non-interactive session as soon as its input runs out)
        raises :class:`HAProxyRuntimeError`: the backends left out are not missing.
        """
        if backends is None:
            async for lines in self._stream(b"show servers state\n", chunk, 1):
                yield lines
            return
        room = self.max_line - len("show info;")  # _dump_from_current may prefix it
        group: list[str] = []
        for name in [*backends, None]:
            command = f"show servers state {name}" if name is not None else ""
            if group and (name is None or len(";".join([*group, command])) > room):
                async for lines in self._stream((";".join(group) + "\n").encode(), chunk,
                                                len(group)):
                    yield lines
                group = []
            if command:
                group.append(command)

    async def _stream(self, request: bytes, chunk: int, replies: int
                      ) -> AsyncIterator[list[str]]:
        """The whole lines of the reply to ``request``, in chunks (servers_state_chunks);
        HAProxyRuntimeError if the connection closes before ``replies`` answers ended
        (each ends with an empty line: the only empty lines of such a reply)."""
        reader, writer, tail = await self._dump_from_current(request)
        what = request.decode("utf-8", "replace").strip()[:60]
        ended = 0
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(chunk), self.timeout)
                except asyncio.TimeoutError as exc:
                    raise HAProxyRuntimeError(
                        f"HAProxy runtime socket {self.address}: '{what}' "
                        f"gave no data for {self.timeout}s", self.address) from exc
                except OSError as exc:
                    raise HAProxyRuntimeError(
                        f"HAProxy runtime socket {self.address}: '{what}' "
                        f"broke off: {exc.strerror or exc}", self.address) from exc
                if not data:
                    break
                data = tail + data
                cut = data.rfind(b"\n") + 1
                tail = data[cut:]
                if cut:
                    lines = data[:cut].decode("utf-8", "replace").splitlines()
                    ended += lines.count("")
                    yield lines
            if tail:  # (a reply read with the pid check may hold whole lines yet)
                lines = tail.decode("utf-8", "replace").splitlines()
                ended += lines.count("")
                yield lines
            if ended < replies:
                raise HAProxyRuntimeError(
                    f"HAProxy runtime socket {self.address}: '{what}' closed after "
                    f"{ended} of {replies} replies", self.address)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _dump_from_current(
        self, request: bytes
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """A connection sent ``request`` (non-interactive), answered by a worker other
        than ``not_from``, and the first bytes of its reply already read. While
        ``not_from`` is set, ``show info`` goes first on the line (each reply ends with
        an empty line) and another connection is tried, within the timeout, as long as
        the old worker answers."""
        if self.not_from is None:
            reader, writer = await self._connect()
            writer.write(request)
            return reader, writer, b""

        async def attempt() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes] | None:
            reader, writer = await self._connect()
            writer.write(b"show info;" + request)
            head = b""
            try:
                while b"\n\n" not in head and len(head) < _READ_CHUNK:
                    chunk = await asyncio.wait_for(reader.read(_READ_CHUNK), self.timeout)
                    if not chunk:
                        break
                    head += chunk
            except (OSError, asyncio.TimeoutError) as exc:
                writer.close()
                raise HAProxyRuntimeError(
                    f"HAProxy runtime socket {self.address}: no answer to 'show info' "
                    f"({exc or type(exc).__name__})", self.address) from exc
            info, sep, rest = head.partition(b"\n\n")
            if sep and parse_show_info(info.decode("utf-8", "replace")).get("Pid") \
                    != str(self.not_from):
                return reader, writer, rest
            writer.close()
            return None

        return await self._avoiding_old(attempt)

    async def show_info(self) -> dict[str, str]:
        """``show info`` as a dict (``Pid``, ``Uptime_sec``, ``Version``, ...)."""
        return parse_show_info(await self.query("show info"))

    async def show_stat(self) -> list[dict[str, str]]:
        try:
            return parse_show_stat(await self.query("show stat"))
        except ParseError as exc:
            raise RuntimeProtocolError(f"{self.address}: {exc}", self.address) from exc

    async def show_backends(self) -> list[str]:
        text = await self.query("show backend")
        return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


class Mirror:
    """A prompt session with one given worker (an old one, in its grace), opened in the
    background: batches sent before it is open wait for it (up to MIRROR_BACKLOG bytes).
    Its replies are dropped; what it refuses (a backend only the new config has) it
    refuses alone. It never holds up the batches of the current worker."""

    def __init__(self, client: RuntimeClient, pid: int, until: float) -> None:
        self.client, self.pid, self.until = client, pid, until
        self.session: PromptSession | None = None
        self.waiting: list[bytes] = []
        self.waiting_bytes = 0
        self.opening: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._open())

    def alive(self) -> bool:
        return time.monotonic() <= self.until and (
            self.opening is not None or (self.session is not None and self.session.is_usable()))

    def send(self, payload: bytes) -> bool:
        """Send (or queue) a batch; False once the mirror is over (grace ended, the
        worker not found or gone, or not reading)."""
        if not self.alive():
            return False
        if self.session is None:
            self.waiting_bytes += len(payload)
            if self.waiting_bytes > MIRROR_BACKLOG:
                return False
            self.waiting.append(payload)
            return True
        if self.session.backlog() > MIRROR_BACKLOG:
            return False
        self.session.send(payload)
        return True

    async def _open(self) -> None:
        """Connect until the worker ``pid`` answers (the kernel hands each connection to
        either worker), for up to MIRROR_SEARCH seconds with a growing pause between
        tries, each within the client's timeout."""
        client = self.client
        started = time.monotonic()
        give_up = min(self.until, started + MIRROR_SEARCH)
        tries, pause = 0, RETRY_OLD
        try:
            while True:
                tries += 1
                try:
                    session, pid = await client._prompt_session(ask_pid=True)
                except HAProxyRuntimeError:
                    pass
                else:
                    if pid == self.pid:
                        session.send(b"".join(self.waiting))
                        self.session, self.waiting = session, []
                        return
                    session.close()
                if time.monotonic() + pause > give_up:
                    break
                await asyncio.sleep(pause)
                pause = min(2 * pause, MIRROR_PAUSE)
            if time.monotonic() <= self.until:
                log.warning(
                    "HAProxy's old worker %d, in its grace, was not reached in %d connections "
                    "to %s over %.1fs; until its grace ends, the clients it accepts get no "
                    "runtime changes", self.pid, tries, client.address,
                    time.monotonic() - started)
        finally:
            self.opening = None

    def close(self) -> None:
        if self.opening is not None:
            self.opening.cancel()
            self.opening = None
        if self.session is not None:
            self.session.close()
            self.session = None


def _done(results: list[CommandResult | None]) -> list[CommandResult]:
    out = [r for r in results if r is not None]
    assert len(out) == len(results)
    return out
