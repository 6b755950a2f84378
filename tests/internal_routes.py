"""Every internal and registry-write route, with a request that each accepts once past the token
check: one table for the tests of the token on an in-process system and on `pystacker up`.

tests/test_fuzz_http.py checks separately that every operation documented as needing the token
answers 401 without it, so a route added to the documents but missing here is still covered."""

from __future__ import annotations

from typing import Any

from pystacker.web.auth import INTERNAL_TOKEN_HEADER
from tests.client import Http


def internal_calls(send: Http, registry: Http, gateway: Http, user_id: int) -> list[tuple[Http, str, str, Any, int | None]]:
    """(service, method, path, body, status with the token); None: any status but 401."""
    gateway_entry = {"gateway_id": "gw-security-test", "address": "127.0.0.1", "port": 9, "capacity": 10}
    return [
        (send, "POST", "/internal/pushback", {"target_id": user_id, "forward_req": {"type": "chat"}}, 200),
        (send, "POST", "/internal/push/notify_online", {"target_id": user_id}, 202),
        (registry, "POST", "/registry/gateway/register", gateway_entry, 200),
        (registry, "POST", "/registry/gateway/heartbeat", {"gateway_id": "gw-security-test"}, 200),
        (registry, "POST", "/registry/user/connect", {"user_id": user_id, "gateway_id": "gw-security-test"}, 200),
        (registry, "POST", "/registry/user/disconnect", {"user_id": user_id, "gateway_id": "gw-security-test"}, 200),
        (registry, "POST", "/registry/user/routes/batch", {"user_ids": [user_id]}, 200),
        (registry, "DELETE", "/registry/gateway/gw-security-test", None, 200),
        (registry, "POST", "/registry/send/register",
         {"instance_id": "send-security-test", "address": "127.0.0.1", "port": 9}, 200),
        (registry, "POST", "/registry/send/heartbeat", {"instance_id": "send-security-test"}, 200),
        (registry, "DELETE", "/registry/send/send-security-test", None, 200),
        (gateway, "POST", "/center/forward", {}, None),
    ]


async def assert_internal_routes_need(token: str, send: Http, registry: Http, gateway: Http, user_id: int) -> None:
    """Each internal route: 401 (our envelope, naming the header) without the token or with a wrong
    one; accepted with it. Reads of the registry stay open to clients."""
    good, wrong = {INTERNAL_TOKEN_HEADER: token}, {INTERNAL_TOKEN_HEADER: token + "x"}
    for http, method, path, body, expected in internal_calls(send, registry, gateway, user_id):
        for headers in (None, wrong):
            answer = await http.request(method, path, json=body, headers=headers)
            assert answer.status == 401 and answer.body["code"] == 401, (path, headers, answer)
            assert INTERNAL_TOKEN_HEADER in answer.body["msg"]
        answer = await http.request(method, path, json=body, headers=good)
        if expected is None:
            assert answer.status != 401, (path, answer)
        else:
            assert answer.status == expected, (path, answer)
    assert (await registry.get("/registry/gateway/available")).status != 401
