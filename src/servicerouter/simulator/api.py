"""Marathon REST endpoints served by the leader (``/v2/...``, ``/ping``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .context import SimContext
from .model import JsonDict, Task
from .serialize import (
    Embed,
    SelectorError,
    app_bytes,
    apps_bytes,
    dumps,
    parse_embed,
    parse_selector,
    task_json,
    tasks_json_bytes,
    tasks_text,
)
from .sse import events_endpoint
from .state import ApiError
from .validation import ValidationError, canonical_app_id

JSON = "application/json"
Handler = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = body if isinstance(body, bytes) else dumps(body)
    return Response(data, status_code=status, media_type=JSON, headers=headers)


def _ctx(request: Request) -> SimContext:
    ctx: SimContext = request.app.state.ctx
    return ctx


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "127.0.0.1"


def _flag(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    return default if value is None else value.lower() in ("true", "1", "")


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(
            400, {"message": "Invalid JSON", "details": [{"path": "/", "errors": [str(exc)]}]}
        ) from exc


def handle_errors(fn: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except ValidationError as exc:
            return json_response(exc.body(), 422)
        except ApiError as exc:
            return json_response(exc.body, exc.status)

    wrapper.__name__ = fn.__name__
    return wrapper


def _deployment_result(version: str, deployment_id: str) -> JsonDict:
    return {"version": version, "deploymentId": deployment_id}


# --- reads ---------------------------------------------------------------------------


async def ping(request: Request) -> Response:
    return PlainTextResponse("pong")


async def info(request: Request) -> Response:
    ctx = _ctx(request)
    host, _, port = ctx.advertised.rpartition(":")
    return json_response(
        {
            "name": "marathon",
            "version": "1.10.26",
            "buildref": "servicerouter-simulator",
            "elected": ctx.is_leader,
            "leader": ctx.advertised,
            "frameworkId": "1f09399d-0cb0-4484-afd7-f08e99d2acbb-0001",
            "marathon_config": {
                "hostname": host,
                "http_port": int(port or 0),
                "local_port_min": ctx.state.service_port_range[0],
                "local_port_max": ctx.state.service_port_range[1],
                "ha": True,
                "mesos_role": "*",
                "framework_name": "marathon",
            },
            "zookeeper_config": {"zk": "zk://127.0.0.1:2181/marathon"},
            "http_config": {"http_port": int(port or 0), "https_port": 8443},
        }
    )


async def leader(request: Request) -> Response:
    return json_response({"leader": _ctx(request).advertised})


@handle_errors
async def list_apps(request: Request) -> Response:
    ctx = _ctx(request)
    params = request.query_params
    embed = parse_embed(params.getlist("embed"), always=Embed(counts=True, deployments=True))
    apps = list(ctx.state.iter_apps())
    if params.get("id"):
        needle = params["id"].lower()
        apps = [a for a in apps if needle in a.id.lower()]
    if params.get("cmd"):
        apps = [a for a in apps if params["cmd"] in str(a.definition.get("cmd", ""))]
    if params.get("label"):
        try:
            selector = parse_selector(params["label"])
        except SelectorError as exc:
            raise ApiError(400, {"message": str(exc)}) from exc
        apps = [a for a in apps if selector(a.labels)]
    return json_response(apps_bytes(apps, embed))


@handle_errors
async def get_app(request: Request) -> Response:
    ctx = _ctx(request)
    app = ctx.state.get_app(request.path_params["app_id"])
    embed = parse_embed(
        request.query_params.getlist("embed"),
        always=Embed(tasks=True, counts=True, deployments=True, last_task_failure=True),
    )
    return json_response(b'{"app":' + app_bytes(app, embed) + b"}")


@handle_errors
async def app_tasks(request: Request) -> Response:
    app = _ctx(request).state.get_app(request.path_params["app_id"])
    ports = app.service_ports
    return json_response({"tasks": [task_json(t, ports) for t in app.tasks.values()]})


async def list_tasks(request: Request) -> Response:
    ctx = _ctx(request)
    accept = request.headers.get("accept", "")
    if "text/plain" in accept and JSON not in accept:
        return PlainTextResponse(tasks_text(ctx.state.iter_apps()))
    return json_response(
        tasks_json_bytes(ctx.state.iter_apps(), request.query_params.get("status"))
    )


async def list_deployments(request: Request) -> Response:
    return json_response([d.to_json() for d in _ctx(request).state.deployments.values()])


# --- writes --------------------------------------------------------------------------


@handle_errors
async def create_app(request: Request) -> Response:
    ctx = _ctx(request)
    app = ctx.scheduler.create_app(await _body(request), client_ip=_client_ip(request))
    embed = Embed(tasks=True, counts=True, deployments=True)
    return json_response(app_bytes(app, embed), 201, headers={"Location": f"/v2/apps{app.id}"})


@handle_errors
async def update_app(request: Request) -> Response:
    ctx = _ctx(request)
    app, created, dep = ctx.scheduler.update_app(
        canonical_app_id(request.path_params["app_id"]),
        await _body(request),
        force=_flag(request, "force"),
        partial=_flag(request, "partialUpdate", True),
        client_ip=_client_ip(request),
    )
    return json_response(_deployment_result(app.version, dep.id), 201 if created else 200)


@handle_errors
async def delete_app(request: Request) -> Response:
    ctx = _ctx(request)
    dep = ctx.scheduler.delete_app(request.path_params["app_id"], force=_flag(request, "force"))
    return json_response(_deployment_result(dep.version, dep.id))


@handle_errors
async def restart_app(request: Request) -> Response:
    ctx = _ctx(request)
    dep = ctx.scheduler.restart_app(request.path_params["app_id"], force=_flag(request, "force"))
    return json_response(_deployment_result(dep.version, dep.id))


@handle_errors
async def kill_task(request: Request) -> Response:
    ctx = _ctx(request)
    result = ctx.scheduler.kill_task(
        request.path_params["app_id"],
        request.path_params["task_id"],
        scale=_flag(request, "scale"),
    )
    if isinstance(result, Task):
        return json_response({"task": task_json(result, result.app.service_ports)})
    return json_response(_deployment_result(result.version, result.id))


@handle_errors
async def kill_app_tasks(request: Request) -> Response:
    """``DELETE /v2/apps/{id}/tasks[?host=..&scale=..]``: kill every (matching) task."""
    ctx = _ctx(request)
    app = ctx.state.get_app(request.path_params["app_id"])
    host = request.query_params.get("host")
    victims = [t for t in app.tasks.values() if host is None or t.host == host]
    scale = _flag(request, "scale")
    if scale:
        for task in victims:
            ctx.scheduler.kill(task, "remove")
        _, _, dep = ctx.scheduler.update_app(
            app.id, {"instances": max(0, app.instances - len(victims))}, force=True
        )
        return json_response(_deployment_result(dep.version, dep.id))
    for task in victims:
        ctx.scheduler.kill(task, "replace")
    ctx.scheduler.mark(app)
    return json_response({"tasks": [task_json(t, app.service_ports) for t in victims]})


def routes() -> list[Route]:
    return [
        Route("/ping", ping, methods=["GET", "HEAD"]),
        Route("/v2/info", info, methods=["GET"]),
        Route("/v2/leader", leader, methods=["GET"]),
        Route("/v2/events", events_endpoint, methods=["GET"]),
        Route("/v2/tasks", list_tasks, methods=["GET"]),
        Route("/v2/deployments", list_deployments, methods=["GET"]),
        Route("/v2/apps", list_apps, methods=["GET"]),
        Route("/v2/apps", create_app, methods=["POST"]),
        Route("/v2/apps/{app_id:path}/tasks/{task_id}", kill_task, methods=["DELETE"]),
        Route("/v2/apps/{app_id:path}/tasks", app_tasks, methods=["GET"]),
        Route("/v2/apps/{app_id:path}/tasks", kill_app_tasks, methods=["DELETE"]),
        Route("/v2/apps/{app_id:path}/restart", restart_app, methods=["POST"]),
        Route("/v2/apps/{app_id:path}", get_app, methods=["GET"]),
        Route("/v2/apps/{app_id:path}", update_app, methods=["PUT"]),
        Route("/v2/apps/{app_id:path}", delete_app, methods=["DELETE"]),
    ]
