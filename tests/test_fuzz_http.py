"""HTTP fuzzing: schemathesis against each service's own /openapi.json, over real HTTP.

For every documented operation of meta, send, registry and gateway, schemathesis generates requests
(valid ones and, in negative mode, ones that break the schema) and checks each answer:
- `not_a_server_error`: never a 5xx, except a 503 where the document lists it (see schemathesis_config);
- `status_code_conformance`: the status is one the document lists for that operation;
- `response_schema_conformance`: the body matches the documented schema (the envelope included).
It sends a valid bearer token and the internal token with every request, so that the fuzzing gets
past authentication; `test_documented_security_is_enforced` checks the other side (no credentials,
no entry) for every operation.

Bounded for CI: PYSTACKER_FUZZ_EXAMPLES (default 20) examples per operation and phase, from a fixed
seed (PYSTACKER_FUZZ_SEED) so that a failure reproduces; tests/fuzzing.py has the long-run command.

The system runs on an event loop in a thread of its own: schemathesis calls it synchronously (with
`requests`) from the test's thread, which therefore must not be the one serving.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
import schemathesis.engine
from aiohttp import web
from schemathesis.engine import events

from pystacker.config import Config, load_config
from pystacker.embedded import EmbeddedSystem
from pystacker.web.auth import INTERNAL_TOKEN_HEADER
from pystacker.web.openapi import OPENAPI_PATH
from tests import databases
from tests.conftest import TEST_JWT_SECRET
from tests.fuzzing import FUZZ_EXAMPLES, FUZZ_SEED

INTERNAL_TOKEN = "fuzz-internal-token-0123456789abcdef"
SERVICES = ("meta", "send", "registry", "gateway")
# Registry and gateway never reach SQL, and the document is the same whatever the database: those run
# on one database kind only, meta and send on each selected one.
ONE_DATABASE = pytest.mark.parametrize("database_url", databases.selected()[:1], indirect=True)
START_TIMEOUT = 30.0
HTTP_TIMEOUT = 10.0  # a request that takes longer than this is a hang, and fails the example


class ThreadedSystem:
    """The embedded system (`pystacker up`) served by an event loop in its own thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.urls: dict[str, str] = {}
        self.apps: dict[str, web.Application] = {}  # read-only from the test's thread (routes are frozen)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="fuzzed-system", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError(f"the embedded system did not start within {START_TIMEOUT}s")
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive(), "the embedded system did not stop"

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        system = EmbeddedSystem(self.config)
        try:
            await system.start()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise
        self.urls = dict(system.urls)
        self.apps = dict(system.apps)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await system.stop()


@dataclass
class FuzzTarget:
    system: ThreadedSystem
    token: str
    user_id: int
    room_ids: list[int] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN}

    def url(self, service: str) -> str:
        return self.system.urls[service]


def call(method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, timeout=HTTP_TIMEOUT, **kwargs)


def register_and_login(meta_url: str, prefix: str) -> tuple[int, str]:
    username, password = f"{prefix}{uuid.uuid4().hex[:10]}", "fuzz-password-1"
    registered = call("POST", meta_url + "/register", json={"username": username, "password": password})
    assert registered.status_code == 200, registered.text
    login = call("POST", meta_url + "/login", json={"username": username, "password": password})
    assert login.status_code == 200, login.text
    return registered.json()["data"]["user_id"], login.json()["data"]["token"]


@pytest.fixture(scope="module")
def fuzz_target(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    """The embedded system on the session's database of each kind (meta and send reach SQL, and each
    database refuses different things: PostgreSQL NUL characters, MySQL and SQLite out-of-range numbers)."""
    # A known internal token, so the internal routes are fuzzed behind their documented security.
    # Limits stay at their defaults: 429 is documented.
    config = load_config(None, overrides={
        "engine": "memory", "data_dir": str(tmp_path_factory.mktemp("fuzz-http")), "host": "127.0.0.1",
        "database": {"url": database_url},
        "jwt": {"secret": TEST_JWT_SECRET}, "ports": {"send": 0, "meta": 0, "registry": 0, "gateway": 0},
        "internal": {"token": INTERNAL_TOKEN}})
    system = ThreadedSystem(config)
    system.start()
    try:
        meta = system.urls["meta"]
        user_id, token = register_and_login(meta, "fuzz")
        other_id, _ = register_and_login(meta, "fuzzpeer")
        target = FuzzTarget(system, token, user_id)
        # Some state for the generated ids to hit (small integers are frequent): a group, a private
        # room and a message, so that the fuzzing reaches past "room not found".
        for body in ({"name": "fuzz group", "is_group": True, "member_ids": [other_id]},
                     {"name": "fuzz private", "is_group": False, "member_ids": [other_id]}):
            created = call("POST", meta + "/api/chat/group/create", json=body, headers=target.headers)
            assert created.status_code == 200, created.text
            target.room_ids.append(created.json()["data"]["room_id"])
        sent = call("POST", system.urls["send"] + "/api/chat/send_message", headers=target.headers,
                    json={"room_id": target.room_ids[0], "content": {"type": "text", "text": "fuzz"}})
        assert sent.status_code == 200, sent.text
        yield target
    finally:
        system.stop()


def schemathesis_config(base_url: str, headers: dict[str, str]) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": FUZZ_SEED,
        "base-url": base_url,
        "headers": headers,
        "request-timeout": HTTP_TIMEOUT,
        "generation": {"mode": "all", "max-examples": FUZZ_EXAMPLES, "database": "none"},
        # 503 is documented where it is the answer (no gateway or send instance alive, /ready while a
        # dependency is down, a room whose membership keeps changing) and the fuzzing causes the first:
        # it unregisters the live gateway, until its next heartbeat. A 503 on a route that does not
        # document it still fails status_code_conformance; any other 5xx fails here.
        "checks": {"enabled": False,
                   "not_a_server_error": {"enabled": True, "expected-statuses": ["2xx", "3xx", "4xx", "503"]},
                   "status_code_conformance": {"enabled": True}, "response_schema_conformance": {"enabled": True}},
    })


@dataclass
class FuzzReport:
    operations: set[str] = field(default_factory=set)  # labels that got at least one request
    requests: int = 0
    failures: list[str] = field(default_factory=list)


def fuzz(target: FuzzTarget, service: str) -> FuzzReport:
    """Run schemathesis's engine (what its CLI runs: examples, coverage, fuzzing and stateful phases)
    on one service and collect every failed check and every error (a timeout is one) with a curl
    command that reproduces it."""
    base_url = target.url(service)
    config = schemathesis_config(base_url, target.headers)
    schema = schemathesis.openapi.from_url(base_url + OPENAPI_PATH, config=config)
    report = FuzzReport()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            report.requests += len(recorder.interactions)
            report.operations.update(node.value.operation.label for node in recorder.cases.values())
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        report.failures.append(f"{failure.operation}: {check.name}: {failure.title}\n"
                                               f"{failure.message}\n{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            report.failures.append(f"{event.label}: error: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return report


def assert_fuzzed_cleanly(target: FuzzTarget, service: str) -> None:
    documented = requests.get(target.url(service) + OPENAPI_PATH, timeout=HTTP_TIMEOUT).json()["paths"]
    report = fuzz(target, service)
    failures = list(dict.fromkeys(report.failures))  # one line per distinct failure
    assert not failures, f"{len(failures)} failure(s) fuzzing {service}:\n\n" + "\n\n".join(failures)
    # schemathesis leaves out the document's own route; every other one must have been called.
    operations = {f"{method.upper()} {path}" for path, methods in documented.items() for method in methods
                  if path != OPENAPI_PATH}
    assert report.operations == operations, f"not exercised: {sorted(operations - report.operations)}"
    assert report.requests >= len(operations)


def test_meta_answers_as_documented(fuzz_target: FuzzTarget) -> None:
    assert_fuzzed_cleanly(fuzz_target, "meta")


def test_send_answers_as_documented(fuzz_target: FuzzTarget) -> None:
    assert_fuzzed_cleanly(fuzz_target, "send")


@ONE_DATABASE
def test_registry_answers_as_documented(fuzz_target: FuzzTarget) -> None:
    assert_fuzzed_cleanly(fuzz_target, "registry")


@ONE_DATABASE
def test_gateway_answers_as_documented(fuzz_target: FuzzTarget) -> None:
    assert_fuzzed_cleanly(fuzz_target, "gateway")


# -- the document itself ------------------------------------------------------------------------------


def documents(target: FuzzTarget) -> dict[str, dict[str, Any]]:
    return {service: call("GET", target.url(service) + OPENAPI_PATH).json() for service in SERVICES}


@ONE_DATABASE
@pytest.mark.parametrize("service", SERVICES)
def test_every_route_is_in_the_document(fuzz_target: FuzzTarget, service: str) -> None:
    """The route tables install the handlers and describe them; this checks that nothing is installed
    around them (aiohttp's implicit HEAD for each GET aside)."""
    document = call("GET", fuzz_target.url(service) + OPENAPI_PATH).json()
    assert document["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    installed = {(route.method, route.resource.canonical) for route in fuzz_target.system.apps[service].router.routes()
                 if route.method != "HEAD" and route.resource is not None}
    assert installed == documented


def request_schemas(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """What a client sends: every parameter's schema and every request body, `$ref`s followed."""
    components = document["components"]["schemas"]

    def resolved(node: Any, seen: frozenset[str] = frozenset()) -> Any:
        if isinstance(node, dict):
            target = node.get("$ref", "")
            name = target.rsplit("/", 1)[-1]
            if target and name not in seen:
                return resolved(components[name], seen | {name})
            return {key: resolved(value, seen) for key, value in node.items()}
        if isinstance(node, list):
            return [resolved(value, seen) for value in node]
        return node

    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                yield f"{method.upper()} {path} {parameter['name']}", resolved(parameter["schema"])
            if "requestBody" in operation:
                yield f"{method.upper()} {path} body", resolved(operation["requestBody"]["content"]["application/json"])


def integers_in(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
            yield node
        for value in node.values():
            yield from integers_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from integers_in(value)


@ONE_DATABASE
def test_every_integer_a_client_sends_is_bounded(fuzz_target: FuzzTarget) -> None:
    """Ids, seqs and counts are signed 64-bit in SQL and in Go. An integer that a model left unbounded
    was a 500 (SQLite's OverflowError, the memory log's islice); the document comes from the models,
    so this holds the validation to 64 bits everywhere."""
    unbounded = [f"{service}: {where}" for service, document in documents(fuzz_target).items()
                 for where, schema in request_schemas(document) for integer in integers_in(schema)
                 if "maximum" not in integer and "exclusiveMaximum" not in integer]
    assert not unbounded, unbounded


@ONE_DATABASE
@pytest.mark.parametrize("service", SERVICES)
def test_documented_security_is_enforced(fuzz_target: FuzzTarget, service: str) -> None:
    """Each operation that documents a bearer or internal-token requirement answers 401 (the envelope)
    without credentials and with wrong ones; each public one never does."""
    document = call("GET", fuzz_target.url(service) + OPENAPI_PATH).json()
    base = fuzz_target.url(service)
    wrong = {"Authorization": "Bearer not.a.jwt", INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN + "x"}
    checked = 0
    for path, methods in document["paths"].items():
        url = base + path.replace("{gateway_id}", "gw-probe").replace("{instance_id}", "send-probe")
        for method, operation in methods.items():
            requirements = operation.get("security", [])
            required = bool(requirements) and {} not in requirements
            for headers in ({}, wrong):
                answer = call(method.upper(), url, headers=headers, json={})
                if required:
                    assert answer.status_code == 401, (method, path, headers, answer.text)
                    assert answer.json()["code"] == 401, (method, path, answer.text)
                else:
                    assert answer.status_code != 401, (method, path, headers, answer.text)
                checked += 1
    assert checked >= 2 * sum(len(methods) for methods in document["paths"].values())


# -- what the fuzzing found: each of these was a 500 before its fix -----------------------------------


def fresh_room(target: FuzzTarget) -> int:
    """A room of the fuzzing user's own: the fuzzing may have made him leave the fixture's rooms."""
    created = call("POST", target.url("meta") + "/api/chat/group/create", headers=target.headers,
                   json={"name": "regression", "is_group": True, "member_ids": []})
    assert created.status_code == 200, created.text
    return created.json()["data"]["room_id"]


def test_history_refuses_seqs_beyond_64_bits_and_reads_past_the_end(fuzz_target: FuzzTarget) -> None:
    history = fuzz_target.url("send") + "/api/chat/history"
    room_id = fresh_room(fuzz_target)
    sent = call("POST", fuzz_target.url("send") + "/api/chat/send_message", headers=fuzz_target.headers,
                json={"room_id": room_id, "content": {"type": "text", "text": "in the window"}})
    assert sent.status_code == 200, sent.text
    for params in ({"after_seq": 2**63 - 1}, {"before_seq": 2**63 - 1}):
        answer = call("GET", history, params={"room_id": room_id, **params}, headers=fuzz_target.headers)
        assert answer.status_code == 200, answer.text
    assert call("GET", history, params={"room_id": room_id, "after_seq": 2**63 - 1},
                headers=fuzz_target.headers).json()["data"]["messages"] == []
    for params in ({"after_seq": 2**63}, {"before_seq": 2**63}, {"after_seq": 2**64}):
        answer = call("GET", history, params={"room_id": room_id, **params}, headers=fuzz_target.headers)
        assert answer.status_code == 400 and answer.json()["code"] == 400, answer.text


def test_resend_refuses_ids_beyond_64_bits(fuzz_target: FuzzTarget) -> None:
    resend = fuzz_target.url("send") + "/api/chat/resend_message"
    for message_id in (2**63, 2**64 - 1):  # JSON numbers that still parse as integers, then reached SQL
        answer = call("POST", resend, json={"message_id": message_id}, headers=fuzz_target.headers)
        assert answer.status_code == 400 and answer.json()["code"] == 400, answer.text
    answer = call("POST", resend, json={"message_id": 2**63 - 1}, headers=fuzz_target.headers)
    assert answer.status_code == 404, answer.text
