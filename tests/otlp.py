"""A tiny OTLP/HTTP traces receiver for the tracing tests: what an OpenTelemetry Collector or Jaeger
does on 4318, reduced to keeping the spans.

It serves `POST /v1/traces` on a free port of 127.0.0.1 in the test's event loop, decodes each
protobuf `ExportTraceServiceRequest` with opentelemetry-proto and keeps every span with its
resource's `service.name` and `service.instance.id`. PyStacker's exporter posts from its own thread,
so the loop stays free to answer.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # "internal", "producer", "consumer", ...
    attributes: dict[str, Any]
    service: str
    instance: str


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind is not None else None


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


_KINDS = {value: name.removeprefix("SPAN_KIND_").lower() for name, value in Span.SpanKind.items()}


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    url: str = ""  # the base URL, as `tracing.otlp_endpoint` takes it
    _runner: web.AppRunner | None = None

    async def start(self) -> OtlpReceiver:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        self.requests += 1
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(ReceivedSpan(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), name=span.name, kind=_KINDS[span.kind],
                        attributes=_attributes(span.attributes), service=str(resource.get("service.name", "")),
                        instance=str(resource.get("service.instance.id", ""))))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def of_message(self, msg_id: int) -> list[ReceivedSpan]:
        """The spans that name this message."""
        return [span for span in self.spans if span.attributes.get("msg_id") == msg_id]


def message_trace(spans: list[ReceivedSpan], *, members: int, gateways: int = 1) -> dict[str, list[ReceivedSpan]] | None:
    """The spans of one message's trace by name, once all of them are in: send, fanout, the dispatch
    of its chat entry on each of `gateways`, one socket write per member. None while some are missing."""
    by_name: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        if span.name == "gateway.dispatch" and span.attributes.get("type") != "chat":
            continue  # the sender's ack entry is dispatched in the same trace; not what is counted here
        by_name.setdefault(span.name, []).append(span)
    complete = (len(by_name.get("send", [])) == 1 and len(by_name.get("fanout", [])) == 1
                and len(by_name.get("gateway.dispatch", [])) >= gateways
                and len(by_name.get("socket.write", [])) >= members)
    return by_name if complete else None
