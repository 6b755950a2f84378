"""OpenAPI 3.1 documents of the HTTP services, built from the route tables they install.

Every service registers its routes with `add_routes(app, [Route(...), ...])`: the same table installs the
handlers, decides who may call them and describes them, so a route cannot exist without being in the
document, and the security the document gives a route (`Route.auth`) is the check it runs: `add_routes`
installs each handler behind the check of its `Auth` (`guarded` in web/auth.py), made against the
application's credentials (`new_app(credentials=...)`). Request bodies and query strings are described
by the pydantic models the handlers validate them with (`model_json_schema()`), so the document cannot
drift from the validation either. Response shapes are
written once, as named components (`component()`), next to the code that produces them.

`GET /openapi.json` serves the document of the service it is asked on. It is public (it describes only
what every client of GoStacker's contract already knows) and built once, on the first request.

What a route table entry implies, so that tables only list what is particular to a route:
- a JSON body: 400 (unparseable or invalid) and 413 (over `limits.max_body_bytes`);
- a query model (`params`): 400;
- bearer or internal-token security: 401;
- every failure is GoStacker's envelope `{"code": <status>, "msg": ...}` without `data`.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from pystacker.messaging.model import INT64_MAX
from pystacker.web.auth import CREDENTIALS_KEY, INTERNAL_TOKEN_HEADER, Auth, Credentials, guarded

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
MAX_ID = INT64_MAX  # ids are signed 64-bit in SQL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JsonSchema = dict[str, Any]


# -- shared schema components ------------------------------------------------------------------------

_COMPONENTS: dict[str, JsonSchema] = {}


def component(name: str, schema: JsonSchema) -> JsonSchema:
    """Define a named response schema once (at import time) and return a `$ref` to it."""
    if name in _COMPONENTS and _COMPONENTS[name] != schema:
        raise ValueError(f"OpenAPI component {name!r} defined twice with different schemas")
    _COMPONENTS[name] = schema
    return ref(name)


def ref(name: str) -> JsonSchema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Mapping[str, JsonSchema], *, optional: Iterable[str] = ()) -> JsonSchema:
    """An object whose properties are all required except `optional` (extra keys allowed: clients
    must ignore keys they do not know, which is how PyStacker extends GoStacker's answers)."""
    skipped = set(optional)
    return {"type": "object", "properties": dict(properties),
            "required": [name for name in properties if name not in skipped]}


def array(items: JsonSchema) -> JsonSchema:
    return {"type": "array", "items": items}


def nullable(schema: JsonSchema) -> JsonSchema:
    return {"anyOf": [schema, {"type": "null"}]}


INTEGER: JsonSchema = {"type": "integer"}
ID: JsonSchema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
STRING: JsonSchema = {"type": "string"}
BOOLEAN: JsonSchema = {"type": "boolean"}
NUMBER: JsonSchema = {"type": "number"}
TIMESTAMP: JsonSchema = {"type": "string", "format": "date-time"}

ERROR = component("Error", {
    "type": "object",
    "description": "GoStacker's failure envelope: `code` repeats the HTTP status, `data` is absent.",
    "properties": {"code": {"type": "integer", "minimum": 400, "maximum": 599},
                   "msg": {"type": "string", "minLength": 1}},
    "required": ["code", "msg"],
    "additionalProperties": False,
})


def envelope(data: JsonSchema | None = None) -> JsonSchema:
    """GoStacker's success envelope `{"code": 0, "msg", "data"?}` around `data`."""
    properties: dict[str, JsonSchema] = {"code": {"const": 0}, "msg": STRING}
    if data is None:
        return {"type": "object", "properties": properties, "required": ["code", "msg"],
                "not": {"required": ["data"]}}
    return {"type": "object", "properties": {**properties, "data": data}, "required": ["code", "msg", "data"]}


OK = component("Ok", envelope())
HEALTH = component("Health", obj({"status": {"const": "ok"}, "service": STRING}))
READINESS = component("Readiness", obj({
    "status": {"enum": ["ready", "unready"]}, "service": STRING,
    "checks": {"type": "object", "description": "dependency -> `ok`, `timeout` or `error: <kind>`",
               "additionalProperties": STRING}}))
DEBUG_STATS = component("DebugStats", obj({"window_seconds": INTEGER, "monitors": {"type": "object"}}))

_ERROR_TEXT = {
    400: "Invalid request: a missing, malformed or out-of-range field",
    401: "Missing or invalid credentials",
    403: "Permission denied",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body or content over the limit",
    429: "Rate limited: retry after `Retry-After` seconds",
    503: "Temporarily unavailable",
}


# -- the route table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """The success answer of a route."""

    schema: JsonSchema | None = field(default_factory=lambda: OK)  # the envelope without data; None: no body
    status: int = 200
    description: str = "Success"
    media_type: str = "application/json"


@dataclass(frozen=True)
class Param:
    """A query or path parameter described by hand (for the few routes without a query model)."""

    name: str
    schema: JsonSchema
    description: str = ""
    required: bool = False
    location: str = "query"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth = Auth.NONE
    body: type[BaseModel] | JsonSchema | None = None  # a model, or a schema for a body parsed by hand
    # The query model the handler validates with, or parameters described by hand (path, or a query
    # parsed by hand: such a route lists its 400 in `errors` if it has one).
    params: type[BaseModel] | Sequence[Param] = ()
    reply: Reply = field(default_factory=Reply)
    errors: tuple[int, ...] = ()  # statuses particular to the route (the implied ones are added)
    error_text: Mapping[int, str] = field(default_factory=dict)  # when a status means something precise
    # A failure whose body is not the error envelope (None: no body), e.g. /ready's 503.
    error_bodies: Mapping[int, JsonSchema | None] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def implied_errors(self) -> set[int]:
        statuses = set(self.errors)
        if self.body is not None:
            statuses |= {400, 413}
        if isinstance(self.params, type):
            statuses.add(400)
        if self.auth in (Auth.BEARER, Auth.INTERNAL, Auth.WEBSOCKET):
            statuses.add(401)
        return statuses


ROUTES_KEY = web.AppKey("openapi_routes", list[Route])


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Install the handlers, each behind the check its `auth` names, and remember the routes for the
    application's OpenAPI document. A route that needs credentials the application was not given
    (`new_app(credentials=...)`) is a ValueError here, at start."""
    if ROUTES_KEY not in app:
        app[ROUTES_KEY] = []
    credentials = app.get(CREDENTIALS_KEY, Credentials())
    for route in routes:
        handler = guarded(route.auth, route.handler, credentials, route=f"{route.method} {route.path}")
        if route.method == "GET":
            app.router.add_get(route.path, handler)  # also answers HEAD, as aiohttp's add_get does
        else:
            app.router.add_route(route.method, route.path, handler)
        app[ROUTES_KEY].append(route)


def install_openapi(app: web.Application, title: str) -> None:
    """Serve the application's document at /openapi.json (built from its routes on first request)."""
    built: list[bytes] = []

    async def openapi(_: web.Request) -> web.Response:
        if not built:
            routes: list[Route] = app[ROUTES_KEY]
            built.append(orjson.dumps(build_document(title, routes)))
        return web.Response(body=built[0], content_type="application/json")

    add_routes(app, [Route("GET", OPENAPI_PATH, openapi, "This document (OpenAPI 3.1)",
                           reply=Reply({"type": "object", "required": ["openapi", "paths"]}), tags=("meta-data",))])


# -- building the document ---------------------------------------------------------------------------


SECURITY_SCHEMES: JsonSchema = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "The token of POST /login (meta); HS256, claims `user_id` and `username`."},
    "internalToken": {"type": "apiKey", "in": "header", "name": INTERNAL_TOKEN_HEADER,
                      "description": "The shared `internal.token` of the deployment (services only)."},
    "queryToken": {"type": "apiKey", "in": "query", "name": "token",
                   "description": "The JWT as `?token=`: accepted on the WebSocket route only."},
}

_SECURITY: dict[Auth, list[dict[str, list[str]]] | None] = {
    Auth.NONE: None,
    Auth.BEARER: [{"bearerAuth": []}],
    Auth.OPTIONAL_BEARER: [{}, {"bearerAuth": []}],
    Auth.INTERNAL: [{"internalToken": []}],
    Auth.WEBSOCKET: [{"bearerAuth": []}, {"queryToken": []}],
}


class _Models:
    """Request models turned into components; nested models (`$defs`) become components too."""

    def __init__(self) -> None:
        self.schemas: dict[str, JsonSchema] = {}

    def schema_of(self, model: type[BaseModel]) -> JsonSchema:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
        for name, nested in schema.pop("$defs", {}).items():
            self.schemas[name] = nested
        self.schemas[model.__name__] = schema
        return ref(model.__name__)


def _parameters(route: Route) -> list[JsonSchema]:
    if isinstance(route.params, type):
        schema = route.params.model_json_schema(mode="validation")
        required = set(schema.get("required", []))
        return [{"name": name, "in": "query", "required": name in required,
                 "schema": {k: v for k, v in prop.items() if k != "title"},
                 **({"description": prop["description"]} if "description" in prop else {})}
                for name, prop in schema.get("properties", {}).items()]
    return [{"name": p.name, "in": p.location, "required": p.required or p.location == "path", "schema": p.schema,
             **({"description": p.description} if p.description else {})} for p in route.params]


def _responses(route: Route) -> JsonSchema:
    reply = route.reply
    ok: JsonSchema = {"description": reply.description}
    if reply.schema is not None:
        ok["content"] = {reply.media_type: {"schema": reply.schema}}
    responses: JsonSchema = {str(reply.status): ok}
    for status in sorted(route.implied_errors):
        answer: JsonSchema = {"description": route.error_text.get(status, _ERROR_TEXT.get(status, "Error"))}
        body = route.error_bodies.get(status, ERROR)
        if body is not None:
            answer["content"] = {"application/json": {"schema": body}}
        if status == 429:
            answer["headers"] = {"Retry-After": {"description": "Whole seconds to wait before retrying",
                                                 "schema": {"type": "integer", "minimum": 1}}}
        responses[str(status)] = answer
    return responses


def _operation(route: Route, models: _Models) -> JsonSchema:
    operation: JsonSchema = {"summary": route.summary, "operationId": _operation_id(route),
                             "responses": _responses(route)}
    if route.tags:
        operation["tags"] = list(route.tags)
    security = _SECURITY[route.auth]
    if security is not None:
        operation["security"] = security
    parameters = _parameters(route)
    path_names = {p["name"] for p in parameters if p["in"] == "path"}
    for name in _path_names(route.path) - path_names:
        parameters.append({"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}})
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        schema = models.schema_of(route.body) if isinstance(route.body, type) else route.body
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return operation


def _path_names(path: str) -> set[str]:
    return {part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")}


def _operation_id(route: Route) -> str:
    words = [part.strip("{}") for part in route.path.split("/") if part]
    return "_".join([route.method.lower(), *words]).replace(".", "_") or route.method.lower()


def _referenced(schemas: Iterable[Any]) -> set[str]:
    """Names of the components that the given schemas reference, directly or through other components."""
    found: set[str] = set()
    pending = list(schemas)
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            target = node.get("$ref")
            if isinstance(target, str) and target.startswith("#/components/schemas/"):
                name = target.rsplit("/", 1)[1]
                if name not in found:
                    found.add(name)
                    pending.append(_COMPONENTS.get(name))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def build_document(title: str, routes: Iterable[Route]) -> JsonSchema:
    from pystacker import __version__

    models = _Models()
    paths: dict[str, dict[str, JsonSchema]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, models)
    used = {name: copy.deepcopy(_COMPONENTS[name])
            for name in sorted(_referenced([paths, models.schemas])) if name in _COMPONENTS}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": __version__,
                 "description": "PyStacker speaks GoStacker's wire contract; see docs/compatibility.md."},
        "paths": paths,
        "components": {"schemas": {**used, **models.schemas}, "securitySchemes": SECURITY_SCHEMES},
    }
