"""Every Prometheus metric PyStacker exports, in one place (docs/observability.md lists them).

All metrics live in prometheus_client's default registry, which also carries the process, platform
and GC collectors. `pystacker up` runs several services in one process and so one registry: metrics
that more than one service records carry a `service` label, gateway metrics a `gateway` label (the
gateway id), so every series says where it comes from. Call sites add one line each; counters are
exact (the tests compare them with what they sent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

log = logging.getLogger("pystacker.metrics")

# Without this every counter and histogram also exports a `*_created` timestamp series: twice the
# series for nothing a dashboard uses (rate() does not need it).
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client declares no types for it

# Latency buckets in seconds, from a fast in-memory hop to a slow SQL-backed request.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# -- HTTP (every service, in the request-log middleware) --------------------------------------------

HTTP_REQUESTS = Counter(
    "pystacker_http_requests_total", "HTTP requests answered, by route (its canonical path), method and status.",
    ["service", "route", "method", "status"])
HTTP_LATENCY = Histogram(
    "pystacker_http_request_duration_seconds", "Time to answer an HTTP request (for /api/ws: the socket's "
    "lifetime, as the handler ends when the socket does).", ["service", "route", "method"], buckets=_LATENCY_BUCKETS)

# -- WebSocket (gateway) ----------------------------------------------------------------------------

WS_CONNECTIONS = Gauge("pystacker_ws_connections", "Open WebSocket connections.", ["gateway"])
WS_CONNECTS = Counter("pystacker_ws_connects_total", "WebSocket connections accepted.", ["gateway"])
WS_DISCONNECTS = Counter("pystacker_ws_disconnects_total", "WebSocket connections ended, by close code "
                         "(the server's code when it closed the socket, else the client's; 1006: none).",
                         ["gateway", "code"])
WS_FRAMES_IN = Counter("pystacker_ws_frames_in_total", "Frames received from clients, by type "
                       "(send, ack, sync, ping; invalid: not a known frame; binary).", ["gateway", "type"])
WS_FRAMES_OUT = Counter("pystacker_ws_frames_out_total", "Frames written to clients, by type (chat, batch, ack, "
                        "system, send_ok, error, pong, ...).", ["gateway", "type"])
WS_SLOW_CONSUMERS = Counter("pystacker_ws_slow_consumer_disconnects_total",
                            "Connections closed with 4008 because their queue was full.", ["gateway"])
WS_DEVICE_LIMIT_CLOSES = Counter("pystacker_ws_device_limit_closes_total",
                                 "Devices closed with 4011 because their user had limits.devices_per_user online.",
                                 ["gateway"])

# -- messages ---------------------------------------------------------------------------------------

MESSAGES_ACCEPTED = Counter("pystacker_messages_accepted_total",
                            "New messages stored with a seq (HTTP send_message and WebSocket send frames).")
MESSAGES_DUPLICATE = Counter("pystacker_messages_duplicate_total",
                             "Sends that repeated a client_msg_id already accepted (answered, nothing stored).")
INBOX_ENTRIES_WRITTEN = Counter("pystacker_inbox_entries_written_total",
                                "Inbox entries written by the fan-out: `message` (one per gateway holding "
                                "members), `ack` (one per message, to the sender's gateway).", ["kind"])
FANOUT_FAILURES = Counter("pystacker_fanout_failures_total",
                          "Fan-outs that failed (members get the message by gap fill or catch-up).")
MESSAGES_DELIVERED = Counter("pystacker_messages_delivered_total",
                             "Room messages written to a client socket, by any path (live push, gap fill, "
                             "catch-up batch); each message once per member.", ["gateway"])
MESSAGES_CAUGHT_UP = Counter("pystacker_messages_caught_up_total",
                             "Room messages written in catch-up `batch` frames (part of delivered).", ["gateway"])
MESSAGES_GAP_FILLED = Counter("pystacker_messages_gap_filled_total",
                              "Room messages written from the message log to fill a hole in the seq order "
                              "(part of delivered).", ["gateway"])
CLIENT_ACKS = Counter("pystacker_client_acks_total", "`ack` frames received from clients.", ["gateway"])
HANDED_ON = Counter("pystacker_handed_on_total", "Users an inbox entry was handed on to, at the gateway that "
                    "holds them now (source: gateway, msgflusher).", ["source"])
RECLAIMED = Counter("pystacker_inbox_reclaimed_total", "Idle or orphaned inbox entries finished by msgflusher.")
# Their label values are known: present (at 0) from the start, so rate() and dashboards see the first one.
for _kind in ("message", "ack"):
    INBOX_ENTRIES_WRITTEN.labels(_kind)
for _source in ("gateway", "msgflusher"):
    HANDED_ON.labels(_source)
DELIVERY_LATENCY = Histogram(
    "pystacker_delivery_latency_seconds", "From a message's creation (accepted by send) to its write to a socket, "
    "for live pushes and gap fills (catch-up is excluded: it measures how long the user was away).",
    ["gateway"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))

# -- read state -------------------------------------------------------------------------------------

READ_MARKS_MOVED = Counter("pystacker_read_marks_moved_total",
                           "Read marks clients moved (`read` frames and POST /api/chat/read).")
READ_RECEIPTS = Counter("pystacker_read_receipts_total", "Read receipts of groups for the other members, by "
                        "outcome: sent, coalesced (held to the end of the interval), shed (dropped under load).",
                        ["outcome"])
OFFLINE_NOTIFICATIONS = Counter("pystacker_offline_notifications_total", "Messages for members with no device "
                                "online, by outcome at the webhook: sent, given_up (retries ran out), dropped "
                                "(the buffer was full).", ["outcome"])
OFFLINE_NOTIFICATIONS_RETRIES = Counter("pystacker_offline_notification_retries_total",
                                        "Webhook batches sent again after a failure.")
TYPING_SIGNALS = Counter("pystacker_typing_signals_total", "Typing signals from clients, by outcome: forwarded "
                         "(to the room's other members), dropped (another within 3 s, or nobody to tell).", ["outcome"])
TYPING_SHED = Counter("pystacker_typing_shed_total", "Typing frames a gateway dropped for a connection whose queue "
                      "was more than half full.", ["gateway"])

# -- flusher ----------------------------------------------------------------------------------------

FLUSHER_BATCH_SIZE = Histogram("pystacker_flusher_batch_size", "Messages per batch written to SQL.",
                               buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000))
FLUSHER_MESSAGES = Counter("pystacker_flusher_messages_flushed_total", "Messages written to SQL by the flusher.")
FLUSHER_CURSORS = Counter("pystacker_flusher_cursors_flushed_total", "Delivery cursors copied to SQL by the flusher.")
FLUSHER_READ_MARKS = Counter("pystacker_flusher_read_marks_flushed_total",
                             "Read marks (read state) copied to SQL by the flusher.")
FLUSHER_ROSTERS = Counter("pystacker_flusher_rosters_flushed_total",
                          "Room rosters (memberships) written to SQL by the flusher.")
FLUSHER_FAILURES = Counter("pystacker_flusher_failures_total",
                           "Flush rounds that failed (the batch is handed out again later).")

# -- stores: Redis (the engine) and SQL ------------------------------------------------------------
# Fed in one place each (observability/stores.py): a wrapper around the Redis engine's contract
# methods, and SQLAlchemy's cursor events on every engine db/engine.py creates. `operation` is a fixed,
# small set (an engine method such as `messages.append`; a statement kind), never a key or a statement.

REDIS_CALL_SECONDS = Histogram(
    "pystacker_redis_call_seconds", "Time of one Redis engine call (an engine method such as messages.append, "
    "with all its round trips; failed calls included). inbox.read_new includes its blocking wait.",
    ["operation"], buckets=_LATENCY_BUCKETS)
REDIS_ERRORS = Counter("pystacker_redis_errors_total", "Redis engine calls that raised, by operation.",
                       ["operation"])
SQL_QUERY_SECONDS = Histogram(
    "pystacker_sql_query_seconds", "Time of one SQL statement on the driver (cursor execute; failed ones "
    "included), by kind: select, insert, update, delete, other.", ["operation"], buckets=_LATENCY_BUCKETS)
SQL_ERRORS = Counter("pystacker_sql_errors_total", "SQL statements that failed, by kind (select, insert, "
                     "update, delete, other; connect: a connection that could not be opened).", ["operation"])
SQL_KINDS = ("select", "insert", "update", "delete", "other")
for _kind in (*SQL_KINDS, "connect"):  # at 0 from the start: rate() sees the first error
    SQL_ERRORS.labels(_kind)

# -- inbox and registry gauges (refreshed periodically) ---------------------------------------------

INBOX_LENGTH = Gauge("pystacker_inbox_length", "Entries kept in the gateway's inbox stream.", ["gateway"])
INBOX_PENDING = Gauge("pystacker_inbox_pending", "Inbox entries read by the gateway and not yet acknowledged.",
                      ["gateway"])
INBOX_OLDEST_PENDING = Gauge("pystacker_inbox_oldest_pending_seconds",
                             "Idle time of the gateway's oldest pending inbox entry (0: none).", ["gateway"])
REGISTRY_LIVE_GATEWAYS = Gauge("pystacker_registry_live_gateways", "Gateways with a live registry entry.")
REGISTRY_GATEWAY_LOAD = Gauge("pystacker_registry_gateway_load",
                              "A live gateway's load (connected users / capacity), as it last reported.", ["gateway"])

GAUGE_REFRESH_SECONDS = 5.0


def route_of(request: Any) -> str:
    """The matched route's canonical path (`/api/chat/history`, `/registry/gateway/{id}`), never the raw
    path: raw paths with ids or junk would make one series per URL. Unmatched requests (404, 405) share one."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(unmatched)"


def observe_request(service: str, request: Any, status: int, seconds: float) -> None:
    route = route_of(request)
    HTTP_REQUESTS.labels(service, route, request.method, str(status)).inc()
    HTTP_LATENCY.labels(service, route, request.method).observe(seconds)


def frame_type(text: str) -> str:
    """The `type` of a frame PyStacker encoded, read without decoding it (orjson writes `"type":"x"`)."""
    start = text.find('"type":"')
    if start < 0:
        return "other"
    start += 8
    end = text.find('"', start)
    return text[start:end] if 0 < end - start <= 32 else "other"


async def refresh_inbox_gauges(engine: Any, gateway_id: str, interval: float = GAUGE_REFRESH_SECONDS) -> None:
    """Copy the gateway's inbox stats into its gauges every `interval` seconds (a gateway task)."""
    while True:
        try:
            stats = await engine.inbox.stats(gateway_id)
            INBOX_LENGTH.labels(gateway_id).set(stats.length)
            INBOX_PENDING.labels(gateway_id).set(stats.pending)
            INBOX_OLDEST_PENDING.labels(gateway_id).set(stats.oldest_pending_ms / 1000)
        except asyncio.CancelledError:
            raise
        except Exception:  # a store hiccup must not end the loop: the next round tries again
            log.warning("reading the inbox stats failed", exc_info=True)
        await asyncio.sleep(interval)


async def refresh_registry_gauges(engine: Any, interval: float = GAUGE_REFRESH_SECONDS) -> None:
    """Copy the registry's live gateways and their load into gauges every `interval` seconds."""
    reported: set[str] = set()
    while True:
        try:
            gateways = await engine.registry.list_gateways()
            REGISTRY_LIVE_GATEWAYS.set(len(gateways))
            current = {g.gateway_id for g in gateways}
            for gone in reported - current:  # a departed gateway's series must not stay at its last load
                REGISTRY_GATEWAY_LOAD.remove(gone)
            for gateway in gateways:
                REGISTRY_GATEWAY_LOAD.labels(gateway.gateway_id).set(gateway.load)
            reported = current
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("reading the registry failed", exc_info=True)
        await asyncio.sleep(interval)


def background(coro_factory: Any) -> Any:
    """An aiohttp cleanup_ctx that runs one refresher task for the application's lifetime."""
    async def context(_: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(coro_factory(), name="metrics-refresh")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return context


class GatewayMetrics:
    """One gateway's series, bound once (a `.labels()` lookup per frame would be wasted work)."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.connections = WS_CONNECTIONS.labels(gateway_id)
        self.connects = WS_CONNECTS.labels(gateway_id)
        self.slow_consumers = WS_SLOW_CONSUMERS.labels(gateway_id)
        self.device_limit_closes = WS_DEVICE_LIMIT_CLOSES.labels(gateway_id)
        self.typing_shed = TYPING_SHED.labels(gateway_id)
        self.delivered = MESSAGES_DELIVERED.labels(gateway_id)
        self.caught_up = MESSAGES_CAUGHT_UP.labels(gateway_id)
        self.gap_filled = MESSAGES_GAP_FILLED.labels(gateway_id)
        self.client_acks = CLIENT_ACKS.labels(gateway_id)
        self.latency = DELIVERY_LATENCY.labels(gateway_id)
        # Frame counters by type, bound on first use: frame_out runs once per frame written, and
        # `.labels()` (tuple building, a lock, a dict lookup) was 1.5% of a loaded gateway's CPU.
        self._frames_out: dict[str, Any] = {}
        self._frames_in: dict[str, Any] = {}

    def disconnected(self, code: int | None) -> None:
        self.connections.dec()
        WS_DISCONNECTS.labels(self.gateway_id, str(code if code is not None else 1006)).inc()

    def frame_in(self, kind: str) -> None:
        self._bound(self._frames_in, WS_FRAMES_IN, kind).inc()

    def frame_out(self, kind: str, count: int = 1) -> None:
        self._bound(self._frames_out, WS_FRAMES_OUT, kind).inc(count)

    def _bound(self, cache: dict[str, Any], metric: Any, kind: str) -> Any:
        child = cache.get(kind)
        if child is None:
            child = cache[kind] = metric.labels(self.gateway_id, kind)
        return child

    def delivered_live(self, created_at_ms: int) -> None:
        """A room message written by a live push or a gap fill."""
        self.delivered.inc()
        if created_at_ms > 0:
            self.latency.observe(max(time.time() - created_at_ms / 1000, 0.0))

