"""Test-only control endpoints under ``/_sim/`` (NOT part of Marathon's API).

=====================================  ==============================================
``POST /_sim/streams/close``           close every ``/v2/events`` stream now
                                       (like a leader stepping down) -> ``{"closed": n}``
``POST /_sim/streams/stall``           streams send nothing (heartbeats included) but
                                       stay open; events queue up (>1024 closes)
``POST /_sim/streams/resume``          undo ``stall``
``POST /_sim/events/drop?count=N``     the next N events are not sent to any stream
                                       (still logged, flagged ``dropped``)
``POST /_sim/tasks/{taskId}/health``   body ``{"alive": false, "index": 0, "cause": ".."}``:
                                       record a health result as a check would, with
                                       ``health_status_changed_event`` and a re-sent
                                       ``status_update_event``; never kills the task
``POST /_sim/tasks/{taskId}/fail``     the task dies by itself (``?status=TASK_FAILED``,
                                       ``&message=..``); Marathon replaces it
``GET /_sim/events/log?since=SEQ``     emitted events after SEQ (bounded ring of 10,000):
                                       ``{"seq": last, "events": [{"seq", "eventType",
                                       "time" (epoch seconds), "taskId"?, "appId"?,
                                       "taskStatus"?, "host"?, "ports"?, "alive"?,
                                       "dropped"?}]}``
``GET /_sim/status``                   counts of apps, tasks, deployments, streams
``POST /_sim/apps/{appId}/tamper``      body ``{"definition": {..}, "taskPorts": [..]}``:
                                       store these values verbatim, unvalidated (what an
                                       older or laxer Marathon lets through), then an
                                       ``api_post_event``; for tests of bad input
``GET|POST|DELETE /_sim/faults``       show, set (JSON object, merged) or clear the
                                       fault switches (see :mod:`.faults`)
``POST /_sim/events/inject``           body ``{"events": [payload, ...], "pad_bytes": N}``:
                                       publish these payloads as events (each needs
                                       ``eventType``), each padded with a ``padding``
                                       field of N bytes when asked (oversized events);
                                       or ``{"raw": "text", "repeat": N}``: write the
                                       text (N times) to every stream verbatim, as
                                       UTF-8, unframed and unfiltered (broken frames)
=====================================  ==============================================

They are exempt from basic auth so tests can drive a protected simulator.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .api import handle_errors, json_response
from .context import SimContext
from .events import api_post
from .model import TASK_FAILED, TERMINAL_STATES, Task
from .serialize import definition_json
from .state import ApiError


def _ctx(request: Request) -> SimContext:
    ctx: SimContext = request.app.state.ctx
    return ctx


def _task(ctx: SimContext, task_id: str) -> Task:
    task = ctx.state.tasks.get(task_id)
    if task is None:
        raise ApiError(404, {"message": f"Task '{task_id}' does not exist"})
    return task


async def close_streams(request: Request) -> Response:
    return json_response({"closed": _ctx(request).bus.close_all()})


async def stall_streams(request: Request) -> Response:
    _ctx(request).bus.stall()
    return json_response({"stalled": True})


async def resume_streams(request: Request) -> Response:
    _ctx(request).bus.resume()
    return json_response({"stalled": False})


@handle_errors
async def drop_events(request: Request) -> Response:
    try:
        count = int(request.query_params.get("count", "1"))
    except ValueError as exc:
        raise ApiError(400, {"message": "count must be an integer"}) from exc
    bus = _ctx(request).bus
    bus.drop_remaining = max(0, count)
    return json_response({"dropping": bus.drop_remaining})


@handle_errors
async def task_health(request: Request) -> Response:
    ctx = _ctx(request)
    task = _task(ctx, request.path_params["task_id"])
    try:
        body = await request.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict) or not isinstance(body.get("alive"), bool):
        raise ApiError(400, {"message": 'body must be {"alive": true|false}'})
    index = int(body.get("index", 0))
    changed = ctx.state.record_health(task, index, body["alive"], body.get("cause"))
    ctx.scheduler.mark(task.app)
    return json_response({"taskId": task.id, "alive": body["alive"], "changed": changed})


@handle_errors
async def task_fail(request: Request) -> Response:
    ctx = _ctx(request)
    task = _task(ctx, request.path_params["task_id"])
    status = request.query_params.get("status", TASK_FAILED)
    if status not in TERMINAL_STATES:
        raise ApiError(400, {"message": f"{status} is not a terminal task state"})
    message = request.query_params.get("message", "Command exited with status 1")
    ctx.scheduler.task_update(task, status, message)
    return json_response({"taskId": task.id, "state": status})


@handle_errors
async def events_log(request: Request) -> Response:
    bus = _ctx(request).bus
    try:
        since = int(request.query_params.get("since", "0"))
        limit = int(request.query_params.get("limit", "10000"))
    except ValueError as exc:
        raise ApiError(400, {"message": "since and limit must be integers"}) from exc
    return json_response({"seq": bus.seq, "events": bus.log_since(since, limit)})


@handle_errors
async def tamper(request: Request) -> Response:
    ctx = _ctx(request)
    app = ctx.state.get_app(request.path_params["app_id"])
    try:
        body = await request.json()  # Python's json: NaN and Infinity are allowed
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, {"message": 'body must be {"definition": {..}, "taskPorts": [..]}'})
    app.definition.update(body.get("definition") or {})
    if "taskPorts" in body:
        for task in app.tasks.values():
            task.ports = list(body["taskPorts"])
            task.cache = None
    app.cache.clear()
    ctx.state.emit(api_post("127.0.0.1", f"/v2/apps{app.id}", definition_json(app)))
    return json_response(definition_json(app))


async def status(request: Request) -> Response:
    ctx = _ctx(request)
    return json_response(
        {
            "leader": ctx.is_leader,
            "apps": len(ctx.state.apps),
            "tasks": len(ctx.state.tasks),
            "deployments": len(ctx.state.deployments),
            "streams": len(ctx.bus.subscribers),
            "stalled": ctx.bus.stalled,
            "seq": ctx.bus.seq,
        }
    )


@handle_errors
async def faults(request: Request) -> Response:
    current = _ctx(request).bus.faults
    if request.method == "DELETE":
        current.reset()
    elif request.method == "POST":
        try:
            current.update(await request.json())
        except ValueError as exc:
            raise ApiError(400, {"message": str(exc)}) from exc
    return json_response(current.as_json())


MAX_PAD = 256 * 1024 * 1024


@handle_errors
async def inject_events(request: Request) -> Response:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, {"message": "body must be JSON"}) from exc
    if isinstance(body, dict) and "raw" in body:
        return _inject_raw(request, body)
    events = body.get("events") if isinstance(body, dict) else None
    pad = body.get("pad_bytes", 0) if isinstance(body, dict) else 0
    if not isinstance(events, list) or not all(
            isinstance(e, dict) and isinstance(e.get("eventType"), str) for e in events):
        raise ApiError(400, {"message": 'body must be {"events": [{"eventType": ..}, ..]}'})
    if not isinstance(pad, int) or not 0 <= pad <= MAX_PAD:
        raise ApiError(400, {"message": f"pad_bytes must be 0..{MAX_PAD}"})
    bus = _ctx(request).bus
    for payload in events:
        bus.publish({**payload, "padding": "x" * pad} if pad else payload)
    return json_response({"published": len(events), "seq": bus.seq})


MAX_RAW = 256 * 1024 * 1024


def _inject_raw(request: Request, body: dict[str, object]) -> Response:
    raw, repeat = body.get("raw"), body.get("repeat", 1)
    if not isinstance(raw, str) or type(repeat) is not int or repeat < 1 \
            or len(raw) * repeat > MAX_RAW:
        raise ApiError(400, {"message": f'body must be {{"raw": "text", "repeat": N}}, '
                                        f"at most {MAX_RAW} bytes in all"})
    data = raw.encode("utf-8", "surrogatepass") * repeat
    subscribers = tuple(_ctx(request).bus.subscribers)
    for sub in subscribers:
        sub.push(data)
    return json_response({"streams": len(subscribers), "bytes": len(data)})


def routes() -> list[Route]:
    return [
        Route("/_sim/streams/close", close_streams, methods=["POST"]),
        Route("/_sim/streams/stall", stall_streams, methods=["POST"]),
        Route("/_sim/streams/resume", resume_streams, methods=["POST"]),
        Route("/_sim/events/drop", drop_events, methods=["POST"]),
        Route("/_sim/events/log", events_log, methods=["GET"]),
        Route("/_sim/tasks/{task_id}/health", task_health, methods=["POST"]),
        Route("/_sim/tasks/{task_id}/fail", task_fail, methods=["POST"]),
        Route("/_sim/status", status, methods=["GET"]),
        Route("/_sim/apps/{app_id:path}/tamper", tamper, methods=["POST"]),
        Route("/_sim/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/events/inject", inject_events, methods=["POST"]),
    ]
