"""Server-Sent Events framing for Marathon's `/v2/events`: bytes in, frames out.

Pure and incremental (no I/O): `events.EventStream` feeds it each chunk as it
arrives. It bounds what it holds (one event, `max_event` bytes) and counts
complete lines so the stream can tell a live connection from a trickle.
"""

from __future__ import annotations

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


class SSEParser:
    """Incremental SSE parser over bytes: `feed(chunk)` returns the completed frames.

    Lines end in LF or CRLF (Marathon sends CRLF); a bare-CR line ending is not
    supported. Only `event:` and `data:` are used; comments, `id:` and `retry:`
    are ignored; a blank line dispatches a frame if it has data (so heartbeats,
    which are bare blank lines, produce nothing).

    A frame whose lines add up to more than `max_event` bytes is never held in
    memory: from the byte that crosses the limit on, the rest of it is counted
    and discarded up to its blank line, and `(event type, size)` is appended to
    `skipped` for the caller to drain. `lines` counts complete lines (heartbeats
    included), so a caller can tell a live stream from one dripping a byte at a time.
    """

    __slots__ = ("_data", "_event", "_long", "_max", "_pending", "_pieces", "_size",
                 "_skipping", "lines", "skipped")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event < 1:
            raise ValueError(f"max_event must be >= 1, got {max_event}")
        self._max = max_event
        self._pieces: list[bytes] = []  # the incomplete line so far
        self._pending = 0  # bytes in _pieces
        self._long = False  # the incomplete line is over the limit and not kept
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self._size = 0  # bytes of the current frame's complete lines
        self._skipping = False  # the current frame is over the limit: discard to its end
        self.lines = 0
        self.skipped: list[tuple[str, int]] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        frames: list[tuple[str, bytes]] = []
        pos, end = 0, len(chunk)
        while pos < end:
            nl = chunk.find(b"\n", pos)
            if nl < 0:
                self._partial(chunk[pos:] if pos else chunk)
                break
            part = chunk[pos:nl]
            pos = nl + 1
            self.lines += 1
            if self._long:  # the end of a line already known to be too long
                self._long = False
                self._size += len(part) - part.endswith(b"\r")
                continue
            if self._pieces:
                self._pieces.append(part)
                part = b"".join(self._pieces)
                self._pieces, self._pending = [], 0
            self._line(part, frames)
        return frames

    def _partial(self, piece: bytes) -> None:
        if self._long:
            self._size += len(piece)
            return
        self._pieces.append(piece)
        self._pending += len(piece)
        # A lone CR may be the first half of a blank line's CRLF (a chunk can end
        # between them): kept, even past the limit, or the frame's end would be lost.
        if self._size + self._pending > self._max and self._pieces != [b"\r"]:
            self._size += self._pending
            self._pieces, self._pending = [], 0
            self._long = True
            self._skip()

    def _skip(self) -> None:
        if not self._skipping:
            self._skipping = True
            self._data = []

    def _line(self, line: bytes, frames: list[tuple[str, bytes]]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            name = self._event.decode("utf-8", "replace") if self._event else "message"
            if self._skipping:
                self.skipped.append((name, self._size))
            elif self._data:
                frames.append((name, b"\n".join(self._data)))
            self._event, self._data, self._size, self._skipping = None, [], 0, False
            return
        self._size += len(line)
        if self._size > self._max:
            self._skip()
        if line.startswith(b"event:"):
            value = line[6:]
            self._event = (value[1:] if value.startswith(b" ") else value)[:200]
        elif line.startswith(b"data:") and not self._skipping:
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        # else: a comment (":..."), id:, retry: or an unknown field: ignored
