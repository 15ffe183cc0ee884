"""The kept interactive (``prompt``) session of :class:`~.runtime.RuntimeClient`: its end
of the admin socket as an asyncio protocol, and the reply watchdog.

Under churn a batch goes out hundreds of times a second. Read through a StreamReader,
each reply cost a read call, a future, a buffer copy and a wake-up per chunk; here the
bytes land in one buffer (``BufferedProtocol``: no allocation per read) and the waiting
batch is woken once, when every reply it expects has come, or the session ended.
"""

from __future__ import annotations

import asyncio

PROMPT_BYTES = b"\n> "
_CHUNK = 1 << 16  # bytes read per socket read
# A batch's replies are kilobytes; a peer that sends more without a prompt is not HAProxy
# answering: the session ends rather than hold it all in memory.
MAX_REPLY = 16 << 20
# However steadily bytes come, a reply is awaited at most this many times the timeout.
REPLY_SPAN = 10


class PromptSession(asyncio.BufferedProtocol):
    """One prompt session: :meth:`exchange` writes a batch and waits for its prompts."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.watch: Watchdog | None = None  # told of every byte that comes
        self.closed = False  # HAProxy ended the session, or it broke
        self.overflowed = False  # ended by us: more than MAX_REPLY bytes without a prompt
        self.error: Exception | None = None  # why it broke, if it did
        self._chunk = memoryview(bytearray(_CHUNK))
        self._buf = bytearray()  # what came since the last exchange's reply was taken
        self._want = 0
        self._seen = 0
        self._waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------- the protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._chunk

    def buffer_updated(self, nbytes: int) -> None:
        if self.watch is not None:
            self.watch.touch()
        buf = self._buf
        start = max(len(buf) - len(PROMPT_BYTES) + 1, 0)  # a prompt split across reads
        buf += self._chunk[:nbytes]
        if len(buf) > MAX_REPLY:
            self.overflowed = True
            self._buf = bytearray()
            assert self.transport is not None
            self.transport.abort()  # connection_lost wakes the waiting exchange
            return
        if self._waiter is not None:
            self._seen += buf.count(PROMPT_BYTES, start)
            if self._seen >= self._want and buf.endswith(PROMPT_BYTES):
                self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------------- for the client
    def is_usable(self) -> bool:
        """Not ended by HAProxy nor closed by us."""
        return not self.closed and self.transport is not None \
            and not self.transport.is_closing()

    async def exchange(self, payload: bytes, prompts: int) -> tuple[bytes, int]:
        """Write ``payload``; wait until ``prompts`` prompts came (the data ending in
        one) or the session ended. Returns everything read and the prompts in it.
        Bytes that came while no exchange waited count as this one's, as a stream
        read would have returned them."""
        assert self.transport is not None
        buf = self._buf
        self._want, self._seen = prompts, buf.count(PROMPT_BYTES)
        if not (self._seen >= prompts and buf.endswith(PROMPT_BYTES)) and not self.closed:
            self._waiter = self._loop.create_future()
            try:
                self.transport.write(payload)
                await self._waiter
            finally:
                self._waiter = None
        else:
            self.transport.write(payload)
        data, seen = bytes(self._buf), self._seen
        self._buf = bytearray()
        return data, seen

    def send(self, payload: bytes) -> None:
        """Write ``payload`` without waiting for its replies; those to earlier sends
        are dropped (a mirrored session: see ``RuntimeClient.reset``)."""
        assert self.transport is not None
        self._buf = bytearray()
        self.transport.write(payload)

    def backlog(self) -> int:
        """Bytes written that the peer has not read yet (beyond the socket's buffer)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Watchdog:
    """Aborts a session's ``transport`` once a reply has been awaited for ``timeout``
    seconds without a byte, or for ``REPLY_SPAN`` times that however bytes trickle in
    (``fired`` says why). One timer for the session's life: it re-arms itself when it
    finds bytes came meanwhile, or no reply is awaited, so a batch costs two clock
    reads instead of a timer."""

    __slots__ = ("_handle", "_last", "_loop", "_started", "_timeout", "_transport", "busy",
                 "fired")

    def __init__(self, timeout: float, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._transport = transport
        self._last = self._started = self._loop.time()
        self.busy = False  # a reply is awaited
        self.fired: str | None = None  # why it ended the session
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._last + timeout, self._check)

    def start(self) -> None:
        """A reply is awaited from now on."""
        self._last = self._started = self._loop.time()
        self.busy = True

    def touch(self) -> None:
        self._last = self._loop.time()

    def stop(self) -> None:
        self.busy = False

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        now = self._loop.time()
        span = self._started + REPLY_SPAN * self._timeout
        due = min(self._last + self._timeout, span)
        if not self.busy:
            due = now + self._timeout  # idle: look again later
        elif now >= due:
            self._handle = None
            self.fired = (f"no reply for {self._timeout}s" if due < span else
                          f"no complete reply within {REPLY_SPAN * self._timeout:g}s")
            assert isinstance(self._transport, asyncio.Transport)
            self._transport.abort()  # the session ends: the waiting exchange returns
            return
        self._handle = self._loop.call_at(due, self._check)
