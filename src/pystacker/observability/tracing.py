"""OpenTelemetry tracing of each message, from its send to every socket write. Off by default.

One trace per message (docs/observability.md shows it in Jaeger):

    send                 the send service (or a gateway, for a WebSocket `send` frame) accepts it
    └─ fanout            a fan-out worker writes its inbox entries; each entry carries this span's
       │                 W3C trace context as `TraceParent` (messaging/model.py), so the trace
       │                 crosses the engine (memory or Redis) to the gateways' processes
       └─ gateway.dispatch   a gateway reads one entry and offers it to its local targets
          └─ socket.write    one member's socket write (one span per member)

Attributes use the names of the log fields (`msg_id`, `room_id`, `seq`, `user_id`, ...), so an id
found in a trace also finds the log lines, and the other way round.

Cost when off: the hot paths test the module-level `enabled` (one global lookup) and do nothing else;
no span is made, no context is injected into an entry, and OpenTelemetry is not even imported (it is
an optional extra). When on, spans are batched and exported by OpenTelemetry's BatchSpanProcessor on
its own thread, over OTLP/HTTP (protobuf).

One process has one tracing setup: the Runtime that enabled it owns it and shuts it down on close
(which exports what is still queued). A Runtime with tracing off leaves the module alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from pystacker import __version__
from pystacker.observability.monitor import counts_as_failure

log = logging.getLogger("pystacker.tracing")

# Read by the hot paths before anything else: False means "do nothing at all".
enabled = False

_tracer: Any = None  # opentelemetry.trace.Tracer while enabled
_propagator: Any = None  # the W3C trace-context propagator while enabled
_span_kinds: dict[str, Any] = {}  # "internal", "producer", "consumer" -> SpanKind, once imported
_owner: Tracing | None = None

TRACE_PATH = "/v1/traces"
SHUTDOWN_SECONDS = 3.0  # how long a stopping service waits for its last spans to be exported
INSTALL_HINT = "pip install 'pystacker[tracing]'"


class TracingUnavailable(Exception):
    """Tracing is enabled but cannot run (OpenTelemetry not installed); one line for the operator."""


def _settle(exported: asyncio.Future[None]) -> None:
    if not exported.done():
        exported.set_result(None)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (`http://host:4318`), or the URL itself
    when it already names the traces path."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACE_PATH) else endpoint + TRACE_PATH


class Tracing:
    """A process's tracing setup, as `configure` made it."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    async def shutdown(self) -> None:
        """Stop tracing in this process and export what is still queued, for SHUTDOWN_SECONDS at most.

        In a thread of its own: the export is a blocking HTTP request (whose receiver may even be
        served by this event loop, in tests). A daemon thread, so that a collector that is down (the
        exporter retries for up to 10 s) holds neither the stop nor the process's exit beyond the limit."""
        global enabled, _tracer, _propagator, _owner
        if _owner is self:
            enabled, _tracer, _propagator, _owner = False, None, None, None
        loop = asyncio.get_running_loop()
        exported = loop.create_future()

        def shut_down() -> None:
            try:
                self.provider.shutdown()
            finally:
                try:
                    loop.call_soon_threadsafe(_settle, exported)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass

        threading.Thread(target=shut_down, name="tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(exported, SHUTDOWN_SECONDS)
        except TimeoutError:
            log.warning("tracing: the last spans were not exported within %.0f s; dropped", SHUTDOWN_SECONDS)


def configure(config: Any, *, service_name: str, instance_id: str) -> Tracing | None:
    """Start tracing for this process as `config` (a config.TracingConfig) says; None when it is off.

    `service_name` is the `service.name` of the spans unless the config names one; `instance_id`
    tells the processes of one service apart (`service.instance.id`)."""
    global enabled, _tracer, _propagator, _owner
    if not config.enabled:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        raise TracingUnavailable(f"tracing.enabled is true but OpenTelemetry is not installed ({exc.name}): "
                                 f"{INSTALL_HINT}") from None
    resource = Resource.create({"service.name": config.service_name or service_name,
                                "service.instance.id": instance_id, "service.version": __version__})
    # The ratio decides where a trace starts (send); everywhere else the parent's decision, carried in
    # the entry's trace flags, is followed, so a message is traced on its whole way or not at all.
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    # endpoint None: the exporter's own settings (OTEL_EXPORTER_OTLP_*_ENDPOINT, else localhost:4318).
    exporter = OTLPSpanExporter(endpoint=traces_url(config.otlp_endpoint) if config.otlp_endpoint else None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    handle = Tracing(provider)
    # A provider of our own rather than OpenTelemetry's global one: the global can be set only once
    # per process, and tests start and stop several systems in one.
    _tracer = provider.get_tracer("pystacker", __version__)
    _propagator = TraceContextTextMapPropagator()
    _span_kinds.update(internal=SpanKind.INTERNAL, producer=SpanKind.PRODUCER, consumer=SpanKind.CONSUMER)
    _owner = handle
    enabled = True
    return handle


# -- spans ------------------------------------------------------------------------------------------


def _context_of(parent: Any) -> Any:
    """An OpenTelemetry Context from a parent: None (a new trace), a span of this process, or the
    `traceparent` text of an inbox entry (an invalid one starts a new trace)."""
    if parent is None:
        return None
    if isinstance(parent, str):
        return _propagator.extract({"traceparent": parent})
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context(parent)


def start_span(name: str, *, parent: Any = None, kind: str = "internal",
               attributes: dict[str, Any] | None = None) -> Any:
    """A started span (end it with `end_span`), or None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return None
    return tracer.start_span(name, context=_context_of(parent), kind=_span_kinds[kind], attributes=attributes)


def end_span(span: Any, error: BaseException | None = None) -> None:
    """End a span; an error marks it failed, unless it is the client's mistake (a 4xx such as 403 not
    a member: the service did its job, as the monitors count it) or a cancellation."""
    if error is not None and not isinstance(error, asyncio.CancelledError) and counts_as_failure(error):
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def traceparent(span: Any) -> str | None:
    """The W3C `traceparent` of a span, to carry in an inbox entry (None: no span, or tracing off)."""
    propagator = _propagator
    if span is None or propagator is None:
        return None
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=_context_of(span))
    return carrier.get("traceparent")


def message_attributes(message: Any) -> dict[str, Any]:
    """A stored message's ids, named as in the log lines."""
    return {"msg_id": message.msg_id, "room_id": message.room_id, "seq": message.seq}
