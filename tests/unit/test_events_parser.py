"""SSEParser and decode_frame on Marathon's wire format: CRLF frames, bare-CRLF heartbeats."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from httpx_sse import EventSource

from servicerouter.marathon.events import (
    DEFAULT_EVENT_TYPES,
    SSEParser,
    decode_frame,
    reconnect_delays,
)

TASK = "nginx-bridge.instance-1883a887-7b50-11eb-9836-026ee08d9f6f._app.1"
INSTANCE = "nginx-bridge.instance-1883a887-7b50-11eb-9836-026ee08d9f6f"
PLAN = {
    "id": "5c4a1b36-2f0e-4a7a-a0c9-3f9b3f2f6a10",
    "steps": [{"actions": [{"action": "StartApplication", "app": "/nginx-bridge"}]}],
    "version": "2021-03-02T08:11:40.004Z",
}


def status(state: str, ips: list[dict[str, str]]) -> dict[str, object]:
    return {
        "slaveId": "1f09399d-0cb0-4484-afd7-f08e99d2acbb-S1",
        "taskId": TASK,
        "taskStatus": state,
        "message": "",
        "appId": "/nginx-bridge",
        "host": "10.0.6.25",
        "ipAddresses": ips,
        "ports": [16916, 16917],
        "version": "2021-03-02T08:11:40.004Z",
        "eventType": "status_update_event",
        "timestamp": "2021-03-02T08:11:41.700Z",
    }


def frame(name: str, payload: dict[str, object]) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    return b"event: " + name.encode() + b"\r\ndata: " + data + b"\r\n\r\n"


HEARTBEAT = b"\r\n"

# Byte-for-byte the shape of a Marathon 1.x stream: the first frame is verbatim.
ATTACHED = (
    b"event: event_stream_attached\r\n"
    b'data: {"remoteAddress":"10.0.5.20","eventType":"event_stream_attached",'
    b'"timestamp":"2021-03-02T08:11:30.061Z"}\r\n'
    b"\r\n"
)
EXPECTED = [
    "event_stream_attached",
    "api_post_event",
    "group_change_success",
    "deployment_info",
    "status_update_event",
    "status_update_event",
    "status_update_event",
    "instance_health_changed_event",
    "deployment_success",
]
WIRE = b"".join(
    [
        ATTACHED,
        frame(
            "api_post_event",
            {
                "clientIp": "10.0.5.31",
                "uri": "/v2/apps",
                "appDefinition": {
                    "id": "/nginx-bridge",
                    "instances": 2,
                    "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": "nginx.example.com"},
                    "container": {"type": "DOCKER", "docker": {"image": "nginx:1.19"}},
                    "networks": [{"mode": "container/bridge"}],
                    "version": "2021-03-02T08:11:40.004Z",
                },
                "eventType": "api_post_event",
                "timestamp": "2021-03-02T08:11:40.010Z",
            },
        ),
        frame(
            "group_change_success",
            {
                "groupId": "/",
                "version": "2021-03-02T08:11:40.004Z",
                "eventType": "group_change_success",
            },
        ),
        frame("deployment_info", {"plan": PLAN, "currentStep": PLAN["steps"][0]}),
        frame("status_update_event", status("TASK_STAGING", [])),
        frame("status_update_event", status("TASK_STARTING", [])),
        HEARTBEAT,
        frame(
            "status_update_event",
            status("TASK_RUNNING", [{"ipAddress": "172.17.0.4", "protocol": "IPv4"}]),
        ),
        frame(
            "instance_health_changed_event",
            {"instanceId": INSTANCE, "runSpecId": "/nginx-bridge", "healthy": True},
        ),
        frame("deployment_success", {"id": PLAN["id"], "plan": PLAN}),
        HEARTBEAT,
        HEARTBEAT,
    ]
)


def parse_all(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    parser = SSEParser()
    frames: list[tuple[str, bytes]] = []
    for chunk in chunks:
        frames.extend(parser.feed(chunk))
    return frames


def test_wire_bytes_parse_into_frames_and_heartbeats_are_ignored() -> None:
    frames = parse_all([WIRE])
    assert [name for name, _ in frames] == EXPECTED
    for _, data in frames:
        assert not data.endswith(b"\r")
        json.loads(data)
    assert json.loads(frames[0][1])["remoteAddress"] == "10.0.5.20"


def test_heartbeats_alone_produce_nothing() -> None:
    assert parse_all([HEARTBEAT] * 50) == []


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_any_chunking_gives_the_same_frames(size: int) -> None:
    chunks = [WIRE[i : i + size] for i in range(0, len(WIRE), size)]
    assert parse_all(chunks) == parse_all([WIRE])


def test_split_at_every_position_including_between_cr_and_lf() -> None:
    whole = parse_all([WIRE[:600]])
    for cut in range(600):
        assert parse_all([WIRE[:cut], WIRE[cut:600]]) == whole


async def test_agrees_with_httpx_sse() -> None:
    """httpx-sse (0.4.3) also handles CRLF and heartbeats: same frames, same data."""
    response = httpx.Response(
        200, headers={"Content-Type": "text/event-stream;charset=UTF-8"}, content=WIRE
    )
    theirs = [(e.event, e.data) async for e in EventSource(response).aiter_sse()]
    assert [(n, d.decode()) for n, d in parse_all([WIRE])] == theirs


def test_lf_only_multiline_data_and_comments() -> None:
    wire = b': comment\nevent: x\ndata: {"a":\ndata: 1}\nid: 7\nretry: 10\n\n'
    assert parse_all([wire]) == [("x", b'{"a":\n1}')]


def test_event_line_without_data_dispatches_nothing_and_resets() -> None:
    assert parse_all([b"event: lonely\r\n\r\ndata: {}\r\n\r\n"]) == [("message", b"{}")]


def test_an_event_over_the_limit_is_skipped_unread_and_the_next_one_parses() -> None:
    parser = SSEParser(max_event=100)
    big = b"event: status_update_event\r\ndata: " + b"x" * 10_000 + b"\r\n\r\n"
    small = b'event: app_terminated_event\r\ndata: {"appId":"/a"}\r\n\r\n'
    frames = []
    for cut in range(0, len(big + small), 333):  # the big line arrives in pieces
        frames += parser.feed((big + small)[cut : cut + 333])
        assert sum(len(p) for p in parser._pieces) <= 100  # never buffered
    assert frames == [("app_terminated_event", b'{"appId":"/a"}')]
    assert parser.skipped == [("status_update_event", len(big) - 6)]  # 3 CRLFs not counted
    assert parser.lines == 6


def test_an_event_over_the_limit_ends_at_its_crlf_however_the_crlf_is_split() -> None:
    # Marathon ends lines with CRLF. Once a frame was over the limit, a chunk ending in
    # the CR of its blank line was taken for the start of another long line, and the
    # blank line was lost: the frame never ended, the frames after it were swallowed
    # into it, and (byte by byte) no event was ever seen again, not even as skipped.
    big = b"event: status_update_event\r\ndata: " + b"x" * 200 + b"\r\n\r\n"
    small = b'event: app_terminated_event\r\ndata: {"appId":"/a"}\r\n\r\n'
    wire = big + small + HEARTBEAT + small
    expected = [("app_terminated_event", b'{"appId":"/a"}')] * 2
    splits = [[wire[i : i + 1] for i in range(len(wire))]]  # byte by byte
    splits += [[wire[:cut], wire[cut:]] for cut in range(len(big) - 4, len(big) + 1)]
    for chunks in splits:
        parser = SSEParser(max_event=100)
        frames = [f for chunk in chunks for f in parser.feed(chunk)]
        assert frames == expected, [len(c) for c in chunks]
        assert [name for name, _ in parser.skipped] == ["status_update_event"]


@pytest.mark.parametrize("size", [1, 7, 64, 5000])
def test_the_limit_holds_for_many_data_lines_and_any_chunking(size: int) -> None:
    wire = b"event: x\ndata: " + b"\ndata: ".join([b"y" * 50] * 40) + b"\n\n" + WIRE
    parser = SSEParser(max_event=1000)
    frames = []
    for cut in range(0, len(wire), size):
        frames += parser.feed(wire[cut : cut + size])
    assert [name for name, _ in frames] == EXPECTED
    assert [name for name, _ in parser.skipped] == ["x"]


def test_a_frame_just_under_the_limit_is_kept() -> None:
    line = b"data: " + b"z" * 94
    parser = SSEParser(max_event=100)
    assert parser.feed(line + b"\n\n") == [("message", b"z" * 94)]
    assert parser.skipped == []


def test_decode_frame_skips_malformed_json_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="servicerouter.marathon.events"):
        assert decode_frame("http://m1:8080", "status_update_event", b"{not json", 1.0) is None
        assert decode_frame("http://m1:8080", "app_terminated_event", b"[1, 2]", 1.0) is None
    assert "status_update_event" in caplog.records[0].getMessage()
    assert "http://m1:8080" in caplog.records[0].getMessage()
    assert "app_terminated_event" in caplog.records[1].getMessage()


def test_decode_frame_skips_json_nested_too_deep_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """A RecursionError from the decoder ended the daemon's event loop for good (churn
    stopped until the next resync while /healthz said ok): it is one unreadable frame."""
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with caplog.at_level(logging.WARNING, logger="servicerouter.marathon.events"):
        assert decode_frame("http://m1:8080", "status_update_event", deep, 1.0) is None
    (record,) = caplog.records
    assert "status_update_event" in record.getMessage()
    assert "nested too deep" in record.getMessage()


def test_decode_frame_skips_a_string_with_an_unpaired_surrogate(
        caplog: pytest.LogCaptureFixture) -> None:
    """A task id holding "\\ud800" got into the model by the fast path, and /status
    answered 500 to everyone until the task left."""
    data = b'{"appId":"/a","taskId":"t\\ud800","taskStatus":"TASK_RUNNING"}'
    with caplog.at_level(logging.WARNING, logger="servicerouter.marathon.events"):
        assert decode_frame("http://m1:8080", "status_update_event", data, 1.0) is None
    (record,) = caplog.records
    assert "'t\\ud800' holds an unpaired UTF-16 surrogate" in record.getMessage()
    pair = decode_frame("u", "status_update_event", b'{"taskId":"t\\ud83d\\ude00"}', 1.0)
    assert pair is not None and pair.data["taskId"] == "t\U0001f600"
    nan = decode_frame("u", "status_update_event", b'{"taskId":"t","x":NaN}', 1.0)
    assert nan is not None and nan.data["taskId"] == "t"


def test_decode_frame_builds_the_event() -> None:
    event = decode_frame("u", "app_terminated_event", b'{"appId":"/a"}', 12.5)
    assert event is not None
    assert (event.type, event.data, event.received_at) == (
        "app_terminated_event",
        {"appId": "/a"},
        12.5,
    )
    unnamed = decode_frame("u", "message", b'{"eventType":"deployment_failed"}', 0.0)
    assert unnamed is not None and unnamed.type == "deployment_failed"
    unknown = decode_frame("u", "brand_new_event", b"{}", 0.0)
    assert unknown is not None and unknown.type == "brand_new_event"


def test_default_event_types() -> None:
    assert "status_update_event" in DEFAULT_EVENT_TYPES
    assert len(set(DEFAULT_EVENT_TYPES)) == len(DEFAULT_EVENT_TYPES)


def test_reconnect_delays_double_to_the_cap_with_jitter() -> None:
    no_jitter = reconnect_delays(rand=lambda: 0.0)
    assert [round(next(no_jitter), 3) for _ in range(10)] == [
        0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0,
    ]  # fmt: skip
    full_jitter = reconnect_delays(initial=1.0, maximum=4.0, jitter=0.5, rand=lambda: 1.0)
    assert [next(full_jitter) for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    for delay, _ in zip(reconnect_delays(), range(100), strict=False):
        assert 0.05 <= delay <= 10.0
    with pytest.raises(ValueError):
        reconnect_delays(initial=0).__next__()
