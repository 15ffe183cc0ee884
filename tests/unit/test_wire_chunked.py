"""The event stream transport's `Transfer-Encoding: chunked` decoder (marathon/wire.py)."""

from __future__ import annotations

import re

import pytest

from servicerouter.marathon.wire import ChunkedDecoder

ATTACHED = (
    b"event: event_stream_attached\r\n"
    b'data: {"remoteAddress":"127.0.0.1","eventType":"event_stream_attached"}\r\n\r\n'
)
TERMINATED = b'event: app_terminated_event\r\ndata: {"appId":"/shop/web"}\r\n\r\n'


def chunked(*parts: bytes, ext: bytes = b"", trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in parts)
    return body + b"0\r\n" + trailers + b"\r\n"


def decode_in_pieces(wire: bytes, size: int) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(wire[i : i + size]) for i in range(0, len(wire), size))
    return out, decoder


WIRE = chunked(ATTACHED, b"\r\n", TERMINATED, b"\r\n")
PAYLOAD = ATTACHED + b"\r\n" + TERMINATED + b"\r\n"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, len(WIRE)])
def test_any_split_gives_the_payload_and_ends_at_the_last_chunk(size: int) -> None:
    out, decoder = decode_in_pieces(WIRE, size)
    assert out == PAYLOAD
    assert decoder.done


def test_split_at_every_position_including_inside_the_size_line_and_crlf() -> None:
    for cut in range(1, len(WIRE)):
        decoder = ChunkedDecoder()
        assert decoder.feed(WIRE[:cut]) + decoder.feed(WIRE[cut:]) == PAYLOAD, cut
        assert decoder.done


def test_extensions_trailers_uppercase_hex_and_bare_lf_are_accepted() -> None:
    big = b"x" * 300  # size 12C
    wire = (b"12C;name=value\r\n" + big + b"\r\n" + b"3\n" + b"abc\n"
            + b"0\r\nX-Trailer: yes\r\n\r\n")
    out, decoder = decode_in_pieces(wire, 10)
    assert out == big + b"abc"
    assert decoder.done


def test_nothing_is_returned_after_the_end() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(chunked(b"abc") + b"5\r\nextra\r\n") == b"abc"
    assert decoder.done
    assert decoder.feed(b"more") == b""


def test_a_chunk_larger_than_every_read_is_passed_on_as_it_comes() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"10\r\n0123") == b"0123"
    assert decoder.feed(b"456789") == b"456789"
    assert decoder.feed(b"abcdef\r\n") == b"abcdef"
    assert not decoder.done


@pytest.mark.parametrize("wire, problem", [
    (b"zz\r\nhello\r\n", "bad chunk size b'zz'"),
    (b"-5\r\nhello\r\n", "bad chunk size"),
    (b"\r\n", "bad chunk size b''"),
    (b"3\r\nabcde\r\n", "b'de' after a chunk, not CRLF"),
    (b"1" * 2000, "over 1024 bytes"),
])
def test_bad_framing_is_an_error_naming_the_bytes(wire: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^chunked body: .*" + re.escape(problem)):
        ChunkedDecoder().feed(wire)


def test_endless_trailers_are_a_framing_error_not_a_silent_stream() -> None:
    # After the last chunk nothing reaches the SSE parser, so the event stream's stall
    # check (run per chunk of payload) never ran, and each trailer line re-armed the read
    # timeout: a server sending trailer lines forever held the stream open with no event
    # and no reconnect. Marathon sends none; a trailer section past 64 KiB is refused.
    decoder = ChunkedDecoder()
    assert decoder.feed(chunked(b"abc")[:-2]) == b"abc"  # up to the trailers
    with pytest.raises(ValueError, match=r"^chunked body: trailers over 65536 bytes"):
        for _ in range(10_000):
            decoder.feed(b"X-Trailer: " + b"y" * 100 + b"\r\n")
    assert not decoder.done
