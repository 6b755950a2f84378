"""Registry HTTP routes with GoStacker's paths, fields and answers, fixed:
`user_id` is optional on /registry/gateway/available (the shipped clients omit it; a Bearer token, if
sent, names the user for the lease); dead gateways never answer, and one that stopped beating or that
the client names in `exclude` is asked for its /health first (liveness.py); batch route queries return
only live, connected routes; a heartbeat that carries address and port re-registers an expired instance.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import Field, StrictFloat, StrictInt, StringConstraints

from pystacker.engine.base import Engine, GatewayInfo, SendInfo
from pystacker.messaging.devices import DEVICE_ID_PATTERN
from pystacker.messaging.fanout import route_is_live
from pystacker.messaging.model import DEFAULT_DEVICE, INT64_MAX, INT64_MIN, PositiveId, Seq
from pystacker.registry.service import RegistryService
from pystacker.web.auth import Auth, optional_identity
from pystacker.web.envelope import ApiError, ok
from pystacker.web.openapi import (
    ID,
    INTEGER,
    NUMBER,
    STRING,
    TIMESTAMP,
    Param,
    Reply,
    Route,
    add_routes,
    array,
    component,
    envelope,
    nullable,
    obj,
)
from pystacker.web.requests import RequestModel, parse_json, request_device

InstanceId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
Host = Annotated[str, StringConstraints(min_length=1, max_length=255)]
UserId = PositiveId
# Counts and loads are bounded like every number we store (64 bits): the OpenAPI document says so.
Count = Seq  # (the same bounds)
Capacity = PositiveId  # (the same bounds)
Load = StrictFloat | Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]


class GatewayRegister(RequestModel):
    gateway_id: InstanceId
    address: Host
    port: Port
    capacity: Capacity


class GatewayHeartbeat(RequestModel):
    gateway_id: InstanceId
    load: Load = 0.0
    connected_users: Count | None = None
    connections: Count | None = None  # what GoStacker's gateway really sends
    address: Host | None = None
    port: Port | None = None
    capacity: Capacity | None = None


class SendRegister(RequestModel):
    instance_id: InstanceId
    address: Host
    port: Port


class SendHeartbeat(RequestModel):
    instance_id: InstanceId
    address: Host | None = None
    port: Port | None = None


class UserConnection(RequestModel):
    user_id: UserId
    gateway_id: InstanceId
    device_id: Annotated[str, Field(max_length=64, pattern=DEVICE_ID_PATTERN)] = DEFAULT_DEVICE  # PyStacker: one device


class RouteBatch(RequestModel):
    user_ids: Annotated[list[UserId], Field(max_length=10_000)]


# -- answers, as OpenAPI components ------------------------------------------------------------------

INSTANCE_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 200}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
REGISTRY_HEALTH = component("RegistryHealth", obj({
    "status": {"enum": ["healthy", "unhealthy"]}, "redis": {"enum": ["connected", "disconnected"]},
    "gateway_count": {"type": "integer", "minimum": 0}, "send_count": {"type": "integer", "minimum": 0},
    "user_route_count": {"type": "integer", "minimum": 0}}))
GATEWAY = component("Gateway", obj({
    "gateway_id": STRING, "address": STRING, "port": _PORT, "load": NUMBER, "capacity": INTEGER,
    "connected_users": INTEGER, "last_heartbeat": TIMESTAMP, "epoch": STRING}))
GATEWAY_LIST = component("GatewayList", obj({"gateways": nullable(array(GATEWAY)), "count": INTEGER}))
AVAILABLE_GATEWAY = component("AvailableGateway", obj({"gateway_id": STRING, "address": STRING, "port": _PORT}))
SEND_INSTANCE = component("SendInstance", obj({
    "instance_id": STRING, "address": STRING, "port": _PORT, "last_heartbeat": TIMESTAMP}))
SEND_LIST = component("SendInstanceList", obj({"instances": nullable(array(SEND_INSTANCE)), "count": INTEGER}))
AVAILABLE_SEND = component("AvailableSend", obj({"instance_id": STRING, "address": STRING, "port": _PORT,
                                                 "url": STRING}))
USER_ROUTES = component("UserRoutes", {
    "type": "object", "description": "user id (as a string) -> his live route; users without one are absent",
    "additionalProperties": obj({"gateway_id": STRING, "address": STRING})})


MAX_EXCLUDED = 16  # a client tries a few gateways before it backs off; more would only cost probes
MAX_EXCLUDE_LENGTH = MAX_EXCLUDED * 201


def _excluded(request: web.Request) -> list[str]:
    raw = request.query.get("exclude", "")
    if len(raw) > MAX_EXCLUDE_LENGTH:
        raise ApiError(400, f"exclude: at most {MAX_EXCLUDE_LENGTH} characters")
    ids = list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if len(ids) > MAX_EXCLUDED or any(len(gateway_id) > 200 for gateway_id in ids):
        raise ApiError(400, f"exclude: at most {MAX_EXCLUDED} gateway ids of at most 200 characters")
    return ids


def _stamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def _gateway_json(info: GatewayInfo) -> dict[str, Any]:
    return {**info.to_json(), "last_heartbeat": _stamp(info.last_heartbeat)}


class RegistryRoutes:
    def __init__(self, engine: Engine, service: RegistryService, *, gateway_ttl: int, send_ttl: int) -> None:
        self.engine = engine
        self.registry = engine.registry
        self.service = service
        self.gateway_ttl = gateway_ttl
        self.send_ttl = send_ttl

    def install(self, app: web.Application) -> None:
        # The route table: handlers and their OpenAPI description (GET /openapi.json) in one place.
        # Writes need the internal token (`auth=internal`: add_routes installs the check).
        internal, gateways, sends, users = Auth.INTERNAL, ("gateways",), ("send instances",), ("user routes",)
        add_routes(app, [
            Route("GET", "/health", self.health, "GoStacker's registry health (a raw object, not the envelope)",
                  reply=Reply(REGISTRY_HEALTH), errors=(503,), error_bodies={503: REGISTRY_HEALTH},
                  error_text={503: "the engine does not answer"}, tags=("operations",)),
            Route("POST", "/registry/gateway/register", self.gateway_register, "Register a gateway", auth=internal,
                  body=GatewayRegister, tags=gateways),
            Route("POST", "/registry/gateway/heartbeat", self.gateway_heartbeat,
                  "A gateway's heartbeat (with address and port it re-registers an expired gateway)", auth=internal,
                  body=GatewayHeartbeat, errors=(404,), error_text={404: "Gateway not registered"}, tags=gateways),
            Route("DELETE", "/registry/gateway/{gateway_id}", self.gateway_unregister, "Unregister a gateway",
                  auth=internal, params=[Param("gateway_id", INSTANCE_ID, location="path")], tags=gateways),
            Route("GET", "/registry/gateway/instances", self.gateway_instances, "The live gateways",
                  reply=Reply(envelope(GATEWAY_LIST)), tags=gateways),
            Route("GET", "/registry/gateway/available", self.gateway_available,
                  "The gateway a client should connect to (least load; a reconnecting user gets his previous one)",
                  auth=Auth.OPTIONAL_BEARER,
                  params=[Param("user_id", ID, "The user, for the reconnect lease (else the bearer token's user)"),
                          Param("exclude", {"type": "string", "maxLength": MAX_EXCLUDE_LENGTH},
                                "Comma-separated ids of gateways the client could not reach: each is checked, "
                                f"and chosen only when no other gateway can take the user (at most {MAX_EXCLUDED})"),
                          Param("device_id", {"type": "string", "pattern": DEVICE_ID_PATTERN},
                                "The connecting device, for its own reconnect lease (also `X-Device-Id`; none: "
                                "`default`)")],
                  reply=Reply(envelope(AVAILABLE_GATEWAY)), errors=(400, 503),
                  error_text={503: "No available gateway"}, tags=gateways),
            Route("POST", "/registry/send/register", self.send_register, "Register a send instance", auth=internal,
                  body=SendRegister, tags=sends),
            Route("POST", "/registry/send/heartbeat", self.send_heartbeat,
                  "A send instance's heartbeat (with address and port it re-registers)", auth=internal,
                  body=SendHeartbeat, errors=(404,), error_text={404: "Send instance not registered"}, tags=sends),
            Route("DELETE", "/registry/send/{instance_id}", self.send_unregister, "Unregister a send instance",
                  auth=internal, params=[Param("instance_id", INSTANCE_ID, location="path")], tags=sends),
            Route("GET", "/registry/send/instances", self.send_instances, "The live send instances",
                  reply=Reply(envelope(SEND_LIST)), tags=sends),
            Route("GET", "/registry/send/available", self.send_available, "A live send instance",
                  reply=Reply(envelope(AVAILABLE_SEND)), errors=(503,),
                  error_text={503: "No available send instance"}, tags=sends),
            Route("POST", "/registry/user/connect", self.user_connect, "Record that a user connected to a gateway",
                  auth=internal, body=UserConnection, errors=(404,),
                  error_text={404: "the gateway is not registered"}, tags=users),
            Route("POST", "/registry/user/disconnect", self.user_disconnect,
                  "Record that a user left a gateway (his route becomes a reconnect lease)", auth=internal,
                  body=UserConnection, tags=users),
            Route("POST", "/registry/user/routes/batch", self.user_routes, "The live routes of some users",
                  auth=internal, body=RouteBatch, reply=Reply(envelope(USER_ROUTES)), tags=users),
        ])

    async def health(self, _: web.Request) -> web.Response:
        # GoStacker answers a raw object here, not the envelope.
        try:
            await self.engine.ping()
            gateways = await self.registry.list_gateways()
            sends = await self.registry.list_send()
        except Exception:
            body = {"status": "unhealthy", "redis": "disconnected", "gateway_count": 0, "send_count": 0,
                    "user_route_count": 0}
            return web.json_response(body, status=503, dumps=lambda v: orjson.dumps(v).decode())
        body = {"status": "healthy", "redis": "connected", "gateway_count": len(gateways),
                "send_count": len(sends), "user_route_count": sum(g.connected_users for g in gateways)}
        return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())

    # -- gateways --------------------------------------------------------------------------------

    async def gateway_register(self, request: web.Request) -> web.Response:
        body = await parse_json(request, GatewayRegister)
        info = GatewayInfo(body.gateway_id, body.address, body.port, body.capacity, last_heartbeat=time.time())
        await self.registry.put_gateway(info, self.gateway_ttl)
        return ok("Gateway registered successfully")

    async def gateway_heartbeat(self, request: web.Request) -> web.Response:
        body = await parse_json(request, GatewayHeartbeat)
        info = await self.registry.get_gateway(body.gateway_id)
        if info is None:
            if body.address is None or body.port is None:
                raise ApiError(404, "Gateway not registered")
            info = GatewayInfo(body.gateway_id, body.address, body.port, body.capacity or 10000)
        users = body.connected_users if body.connected_users is not None else body.connections
        if users is not None:
            info.connected_users = users
        info.load = float(body.load)
        info.last_heartbeat = time.time()
        await self.registry.put_gateway(info, self.gateway_ttl)
        return ok("Heartbeat updated successfully")

    async def gateway_unregister(self, request: web.Request) -> web.Response:
        await self.registry.remove_gateway(request.match_info["gateway_id"])
        return ok("Gateway unregistered successfully")

    async def gateway_instances(self, _: web.Request) -> web.Response:
        gateways = await self.registry.list_gateways()
        return ok("success", {"gateways": [_gateway_json(g) for g in gateways] or None, "count": len(gateways)})

    async def gateway_available(self, request: web.Request) -> web.Response:
        user_id = self._user_for_lease(request)
        gateway = await self.service.available_gateway(user_id, _excluded(request), request_device(request))
        if gateway is None:
            raise ApiError(503, "No available gateway")
        return ok("available", {"gateway_id": gateway.gateway_id, "address": gateway.address, "port": gateway.port})

    def _user_for_lease(self, request: web.Request) -> int | None:
        raw = request.query.get("user_id")
        if raw is not None and raw != "":
            try:
                user_id = int(raw)
            except ValueError:
                raise ApiError(400, "Invalid user_id format") from None
            if user_id <= 0 or user_id > INT64_MAX:
                raise ApiError(400, "Invalid user_id format")
            return user_id
        # Auth.OPTIONAL_BEARER: a valid token names the caller; a bad one still gets a gateway (the
        # lease is an optimisation).
        caller = optional_identity(request)
        return caller.user_id if caller is not None else None

    # -- send instances --------------------------------------------------------------------------

    async def send_register(self, request: web.Request) -> web.Response:
        body = await parse_json(request, SendRegister)
        await self.registry.put_send(SendInfo(body.instance_id, body.address, body.port, time.time()), self.send_ttl)
        return ok("Send instance registered successfully")

    async def send_heartbeat(self, request: web.Request) -> web.Response:
        body = await parse_json(request, SendHeartbeat)
        info = await self.registry.get_send(body.instance_id)
        if info is None:
            if body.address is None or body.port is None:
                raise ApiError(404, "Send instance not registered")
            info = SendInfo(body.instance_id, body.address, body.port)
        info.last_heartbeat = time.time()
        await self.registry.put_send(info, self.send_ttl)
        return ok("Heartbeat updated successfully")

    async def send_unregister(self, request: web.Request) -> web.Response:
        await self.registry.remove_send(request.match_info["instance_id"])
        return ok("Send instance unregistered successfully")

    async def send_instances(self, _: web.Request) -> web.Response:
        instances = await self.registry.list_send()
        return ok("success", {"instances": [{**i.to_json(), "last_heartbeat": _stamp(i.last_heartbeat)}
                                            for i in instances] or None, "count": len(instances)})

    async def send_available(self, _: web.Request) -> web.Response:
        instance = await self.service.available_send()
        if instance is None:
            raise ApiError(503, "No available send instance")
        return ok("available", {"instance_id": instance.instance_id, "address": instance.address,
                                "port": instance.port, "url": f"http://{instance.address}:{instance.port}"})

    # -- user routes -----------------------------------------------------------------------------

    async def user_connect(self, request: web.Request) -> web.Response:
        body = await parse_json(request, UserConnection)
        gateway = await self.registry.get_gateway(body.gateway_id)
        if gateway is None:
            raise ApiError(404, "Failed to record user connection: gateway not found")
        await self.service.connect_user(body.user_id, gateway, body.device_id)
        return ok("User connection recorded successfully")

    async def user_disconnect(self, request: web.Request) -> web.Response:
        body = await parse_json(request, UserConnection)
        await self.service.disconnect_user(body.user_id, body.gateway_id, body.device_id)
        return ok("User disconnection recorded successfully")

    async def user_routes(self, request: web.Request) -> web.Response:
        body = await parse_json(request, RouteBatch)
        if not body.user_ids:
            raise ApiError(400, "user_ids cannot be empty")
        routes = await self.registry.get_routes(body.user_ids)
        live = {g.gateway_id: g for g in await self.registry.list_gateways()}
        # One gateway per user, as GoStacker answers: his most recent device that is live.
        found = {uid: next((r for r in record.devices() if route_is_live(r, live)), None)
                 for uid, record in routes.items()}
        return ok("success", {str(uid): {"gateway_id": r.gateway_id, "address": r.address}
                              for uid, r in found.items() if r is not None})
