"""Marathon event payloads (same keys, same order as Marathon 1.10) and the event bus.

The bus fans events out to ``/v2/events`` subscribers as ready-made SSE frames
(``event: <type>\\r\\ndata: <json>\\r\\n\\r\\n``), keeps a bounded log of what was
emitted when (``/_sim/events/log``) and implements the test controls (drop the
next N events, stall all streams, close all streams).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from .faults import Faults
from .model import CONDITIONS, Deployment, JsonDict, Task, iso_ms

NO_IP_YET = frozenset({"TASK_STAGING", "TASK_STARTING"})
MAX_OUTSTANDING = 1024  # Marathon >=1.8 closes a stream with more outstanding events
LOG_SIZE = 10_000


def status_update(task: Task, message: str = "") -> JsonDict:
    return {
        "slaveId": task.slave_id,
        "taskId": task.id,
        "taskStatus": task.state,
        "message": message,
        "appId": task.app.id,
        "host": task.host,
        "ipAddresses": task.ip_addresses if task.state not in NO_IP_YET else [],
        "ports": task.ports,
        "version": task.version,
        "eventType": "status_update_event",
        "timestamp": iso_ms(),
    }


def instance_changed(task: Task, condition: str | None = None) -> JsonDict:
    return {
        "instanceId": task.instance_id,
        "condition": condition or CONDITIONS.get(task.state, "Unknown"),
        "runSpecId": task.app.id,
        "agentId": task.slave_id,
        "host": task.host,
        "runSpecVersion": task.version,
        "timestamp": iso_ms(),
        "eventType": "instance_changed_event",
    }


def health_status_changed(task: Task, alive: bool) -> JsonDict:
    return {
        "appId": task.app.id,
        "instanceId": task.instance_id,
        "version": task.version,
        "alive": alive,
        "eventType": "health_status_changed_event",
        "timestamp": iso_ms(),
    }


def instance_health_changed(task: Task, healthy: bool | None) -> JsonDict:
    return {
        "instanceId": task.instance_id,
        "runSpecId": task.app.id,
        "healthy": healthy,
        "runSpecVersion": task.version,
        "timestamp": iso_ms(),
        "eventType": "instance_health_changed_event",
    }


def failed_health_check(task: Task, check: JsonDict) -> JsonDict:
    return {
        "appId": task.app.id,
        "eventType": "failed_health_check_event",
        "healthCheck": check,
        "taskId": task.instance_id,
        "timestamp": iso_ms(),
    }


def unhealthy_instance_kill(task: Task, reason: str) -> JsonDict:
    return {
        "appId": task.app.id,
        "taskId": task.id,
        "instanceId": task.instance_id,
        "version": task.version,
        "reason": reason,
        "host": task.host,
        "slaveId": task.slave_id,
        "eventType": "unhealthy_instance_kill_event",
        "timestamp": iso_ms(),
    }


def api_post(client_ip: str, uri: str, definition: JsonDict) -> JsonDict:
    return {
        "clientIp": client_ip,
        "uri": uri,
        "appDefinition": definition,
        "eventType": "api_post_event",
        "timestamp": iso_ms(),
    }


def group_change_success(version: str) -> JsonDict:
    return {
        "groupId": "/",
        "version": version,
        "eventType": "group_change_success",
        "timestamp": iso_ms(),
    }


def add_health_check(app_id: str, check: JsonDict, version: str) -> JsonDict:
    return {
        "appId": app_id,
        "eventType": "add_health_check_event",
        "healthCheck": check,
        "timestamp": iso_ms(),
        "version": version,
    }


def app_terminated(app_id: str) -> JsonDict:
    return {"appId": app_id, "eventType": "app_terminated_event", "timestamp": iso_ms()}


def deployment_step(kind: str, dep: Deployment) -> JsonDict:
    """``deployment_info`` or ``deployment_step_success``/``_failure``."""
    return {
        "plan": dep.plan_json(),
        "currentStep": dep.step_json(),
        "eventType": kind,
        "timestamp": iso_ms(),
    }


def deployment_done(dep: Deployment, reason: str | None = None) -> JsonDict:
    """``deployment_success``, or ``deployment_failed`` when a reason is given."""
    out: JsonDict = {
        "id": dep.id,
        "plan": dep.plan_json(),
        "eventType": "deployment_success" if reason is None else "deployment_failed",
        "timestamp": iso_ms(),
    }
    if reason is not None:
        out["reason"] = reason
    return out


def stream_attached(kind: str, remote: str) -> JsonDict:
    return {"remoteAddress": remote, "eventType": kind, "timestamp": iso_ms()}


def sse_frame(payload: JsonDict) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"event: {payload['eventType']}\r\ndata: {data}\r\n\r\n".encode()


class Subscriber:
    """One ``/v2/events`` connection: a queue of frames and a wake-up event."""

    def __init__(self, remote: str, event_types: Iterable[str] = ()) -> None:
        self.remote = remote
        self.event_types = frozenset(event_types)
        self.queue: deque[bytes] = deque()
        self.wakeup = asyncio.Event()
        self.closed = False
        self.close_reason = ""

    def accepts(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types

    def push(self, frame: bytes) -> None:
        if self.closed:
            return
        if len(self.queue) >= MAX_OUTSTANDING:
            self.close("slow consumer")
            return
        self.queue.append(frame)
        self.wakeup.set()

    def close(self, reason: str = "closed") -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self.queue.clear()
        self.wakeup.set()


class EventBus:
    def __init__(self, log_size: int = LOG_SIZE) -> None:
        self.subscribers: set[Subscriber] = set()
        self.drop_remaining = 0
        self.stalled = False
        self.seq = 0
        self.log: deque[JsonDict] = deque(maxlen=log_size)
        self.faults = Faults()

    def publish(self, payload: JsonDict) -> None:
        """Record and fan out one event (called synchronously by the state), as the
        event fault switches (malformed, late) would have it go out."""
        for out in self.faults.apply_to_event(payload):
            self._publish(out)

    def _publish(self, payload: JsonDict) -> None:
        self.seq += 1
        event_type = payload["eventType"]
        entry: JsonDict = {"seq": self.seq, "eventType": event_type, "time": time.time()}
        for key in ("taskId", "appId", "taskStatus", "alive", "instanceId", "id", "host", "ports"):
            if key in payload:
                entry[key] = payload[key]
        if "appId" not in entry and "runSpecId" in payload:
            entry["appId"] = payload["runSpecId"]
        if self.drop_remaining > 0:
            self.drop_remaining -= 1
            entry["dropped"] = True
            self.log.append(entry)
            return
        self.log.append(entry)
        if not self.subscribers:
            return
        frame: bytes | None = None
        for sub in tuple(self.subscribers):
            if sub.accepts(event_type):
                if frame is None:
                    frame = sse_frame(payload)
                sub.push(frame)

    def subscribe(self, remote: str, event_types: Iterable[str] = ()) -> Subscriber:
        sub = Subscriber(remote, event_types)
        self.subscribers.add(sub)
        # Marathon sends the attach event to the new stream (and to everyone else).
        self.publish(stream_attached("event_stream_attached", remote))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            sub.close("detached")
            self.publish(stream_attached("event_stream_detached", sub.remote))

    def close_all(self, reason: str = "closed by control") -> int:
        subs = tuple(self.subscribers)
        for sub in subs:
            sub.close(reason)
        return len(subs)

    def stall(self) -> None:
        self.stalled = True

    def resume(self) -> None:
        self.stalled = False
        for sub in self.subscribers:
            sub.wakeup.set()

    def log_since(self, since: int, limit: int = LOG_SIZE) -> list[JsonDict]:
        if not self.log or since >= self.seq:
            return []
        first = self.log[0]["seq"]
        start = max(0, since + 1 - first)
        out: list[JsonDict] = []
        for i in range(start, len(self.log)):
            out.append(self.log[i])
            if len(out) >= limit:
                break
        return out


async def stream_frames(bus: EventBus, sub: Subscriber, heartbeat_interval: float) -> Any:
    """Async generator of byte chunks for one subscriber (frames and heartbeats)."""
    while not sub.closed:
        if bus.stalled:
            sub.wakeup.clear()
            await sub.wakeup.wait()
            continue
        if sub.queue:
            chunk = b"".join(sub.queue)
            sub.queue.clear()
            yield chunk
            continue
        sub.wakeup.clear()
        try:
            await asyncio.wait_for(sub.wakeup.wait(), timeout=heartbeat_interval)
        except asyncio.TimeoutError:
            if not bus.stalled and not sub.closed:
                yield b"\r\n"
