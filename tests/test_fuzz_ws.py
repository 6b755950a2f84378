"""WebSocket fuzzing: the gateway's /api/ws over real sockets, with seeded random input.

Whatever a client sends, the gateway answers each frame (an `error` frame for anything it cannot
serve) or closes the socket with a defined code, within a deadline; it never crashes the connection's
handler, never leaves a connection hanging, and keeps serving everybody else. Categories: garbage
text, JSON that is not an object, unknown frame types, known types with wrong field types and
out-of-range numbers, deep nesting, binary frames, frames over the 64 KiB limit (1009), invalid UTF-8
(1007), WebSocket protocol violations sent as raw bytes (1002), and floods.

After every frame the fuzzing client sends `{"type":"ping","ref":<n>}` and reads up to the matching
`pong`: frames are handled in order on a connection, so the pong proves that the frame before it was
handled, including the frames that get no answer (a valid `ack`). A control client in the same room
checks between cases that the gateway still serves others, and no ERROR is logged by the server.

The counts scale with PYSTACKER_FUZZ_EXAMPLES and the input comes from PYSTACKER_FUZZ_SEED
(tests/fuzzing.py): a failure names the seed and the case number, and reproduces.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from pystacker.gateway.routes import MAX_FRAME_BYTES
from pystacker.messaging.frames import CloseCode
from tests.client import User
from tests.fuzzing import FUZZ_EXAMPLES, FUZZ_SEED
from tests.ws import Api, Client, Closed, make_room, open_api, poll, send_http

REPLY_DEADLINE = 5.0  # an answer or a close within this, or the connection counts as hung
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
DEFINED_CLOSE_CODES = {CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_PAYLOAD, CloseCode.FRAME_TOO_BIG, CloseCode.SLOW_CONSUMER}
SERVER_FRAME_TYPES = {"system", "chat", "batch", "ack", "info", "error", "send_ok", "pong"}
PUSHED = {"chat", "ack"}  # frames that come through the inbox, not in order with the answers
ERROR_CODES = {400, 403, 404, 413, 429}
INT64_MAX = 2**63 - 1
RANDOM_FRAMES = FUZZ_EXAMPLES * 10
OVERSIZED_FRAMES = max(4, FUZZ_EXAMPLES // 4)
FLOOD_FRAMES = max(2000, FUZZ_EXAMPLES * 100)


@pytest.fixture
async def api(system) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with open_api(system) as api:
        yield api


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """ERROR records of the server (pystacker's loggers, and aiohttp's "Error handling request")."""
    caplog.set_level(logging.WARNING)
    return lambda: [f"{r.name}: {r.getMessage()}" for r in caplog.records
                    if r.levelno >= logging.ERROR and r.name.startswith(("pystacker", "aiohttp"))]


class Fuzzing:
    """A fuzzing user, a control user in the same room, and the checks between cases."""

    def __init__(self, api: Api, fuzzer: User, control: User, room_id: int, foreign_room_id: int) -> None:
        self.api = api
        self.fuzzer = fuzzer
        self.control_user = control
        self.room_id = room_id
        self.foreign_room_id = foreign_room_id  # a room the fuzzer is not in: 403s
        self.control: Client | None = None
        self.probes = 0

    async def start(self) -> None:
        self.control = await self.api.connect(self.control_user, catchup=False)

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.close()

    async def probe(self, client: Client) -> list[dict[str, Any]]:
        """Ping with a fresh ref and read up to its pong: the frames before it, each well formed."""
        self.probes += 1
        ref = f"probe-{self.probes}"
        await client.send_frame({"type": "ping", "ref": ref})
        before: list[dict[str, Any]] = []
        while True:
            frame = await client.recv(REPLY_DEADLINE)
            assert_well_formed(frame)
            if frame["type"] == "pong" and frame["payload"] == ref:
                return before
            before.append(frame)

    async def assert_still_serving(self) -> None:
        """The control client still gets its pong, and HTTP on the gateway still answers."""
        assert self.control is not None
        await self.probe(self.control)
        ping = await self.api.gateway.get("/ping")
        assert ping.status == 200, ping

    async def assert_closed_and_forgotten(self, client: Client, allowed: set[int]) -> int:
        code = await client.wait_closed(REPLY_DEADLINE)
        assert code in allowed, f"closed with {code}, expected one of {sorted(allowed)}"
        await self.assert_forgotten()
        return code

    async def assert_forgotten(self) -> None:
        """The gateway dropped the fuzzing user's connection (it had only the one just closed)."""
        users = self.api.gateway_service.users
        await poll(lambda: self.fuzzer.id not in users, "the gateway forgets the closed connection",
                   timeout=REPLY_DEADLINE)


def assert_well_formed(frame: Any) -> None:
    assert isinstance(frame, dict) and frame.get("type") in SERVER_FRAME_TYPES, frame
    if frame["type"] == "error":
        payload = frame["payload"]
        assert payload["code"] in ERROR_CODES and isinstance(payload["msg"], str) and payload["msg"], frame


@pytest.fixture
async def fuzzing(api: Api) -> AsyncIterator[Fuzzing]:
    fuzzer, control, stranger = await api.users(3, "wsfuzz")
    room_id = await make_room(api.meta, fuzzer, [control])
    foreign_room_id = await make_room(api.meta, stranger, [])
    await send_http(api.send, control, room_id, "something to sync")
    state = Fuzzing(api, fuzzer, control, room_id, foreign_room_id)
    await state.start()
    yield state
    await state.stop()


# -- random input -------------------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, -1, 2, 49, 50, 200, 201, 2**31, 2**53 + 1, INT64_MAX, INT64_MAX + 1, 2**64 - 1, 2**64,
                    -(2**63), 10**30]
INTERESTING_STRINGS = ["", " ", "send", "SEND", "ack", "sync", "ping", "pong", "error", "chat", "\x00", "\n", "\u202e",
                       "%s%n", "{}", "[]", "null", "🙂" * 3, "a" * 65, "\ud7ff\ue000", "text", "image"]


def dumps(value: Any) -> str:
    # The standard library's encoder: orjson refuses integers over 64 bits, which are part of the input.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def random_text(rng: random.Random, max_len: int = 40) -> str:
    # Any code point except surrogates (a str with one cannot be encoded as UTF-8, so never reaches the wire).
    def char() -> str:
        while True:
            point = rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0, 0x20), rng.randrange(0x80, 0x800),
                                rng.randrange(0x800, 0x10000), rng.randrange(0x10000, 0x110000)])
            if not 0xD800 <= point <= 0xDFFF:
                return chr(point)
    return "".join(char() for _ in range(rng.randrange(max_len + 1)))


def random_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(INTERESTING_INTS)
    if kind == 1:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 3.0, float(2**63)])
    if kind == 2:
        return rng.choice(INTERESTING_STRINGS)
    if kind == 3:
        return random_text(rng)
    return rng.choice([True, False, None])


def random_value(rng: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rng.random() < 0.6:
        return random_scalar(rng)
    if rng.random() < 0.5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng, 8): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    """Nesting built as text: deeper than any JSON encoder would write (orjson stops at 255)."""
    return "[" * depth + "1" + "]" * depth


NESTING_DEPTHS = [2, 64, 254, 255, 256, 300, 1000, 1023, 1024, 1025, 5000]


def random_frame(rng: random.Random, fuzz: Fuzzing) -> str:
    """One text frame from one of the categories."""
    rooms = [fuzz.room_id, fuzz.foreign_room_id, 0, -1, INT64_MAX, INT64_MAX + 1, 2**62]
    category = rng.randrange(9)
    if category == 0:  # garbage
        return random_text(rng, 200)
    if category == 1:  # JSON, but not an object
        return dumps(random_value(rng)) if rng.random() < 0.8 else rng.choice(["[]", "1", '"x"', "null"])
    if category == 2:  # an unknown or non-string type
        return dumps({"type": rng.choice([random_text(rng, 10), random_scalar(rng), random_value(rng)]),
                      "ref": random_scalar(rng)})
    if category in (3, 4):  # a known type with random fields
        frame: dict[str, Any] = {"type": rng.choice(["send", "ack", "sync", "ping"])}
        for name in ("room_id", "content", "client_msg_id", "seq", "after_seq", "limit", "ref"):
            if rng.random() < 0.6:
                frame[name] = random_value(rng)
        if rng.random() < 0.5:
            frame["room_id"] = rng.choice(rooms)
        return dumps(frame)
    if category == 5:  # deep nesting: as the whole frame or inside a field
        depth = rng.choice(NESTING_DEPTHS)
        place = rng.choice(["frame", "ref", "type", "content", "room_id", "payload"])
        if place == "frame":
            return nested_text(depth)
        kind = "ping" if place in ("ref", "payload") else "send"
        return f'{{"type":"{kind}","room_id":{fuzz.room_id},"{place}":{nested_text(depth)}}}' if place != "type" \
            else f'{{"type":{nested_text(depth)},"ref":{nested_text(depth)}}}'
    if category == 6:  # valid frames, so that the connection also does real work in between
        return dumps(rng.choice([
            {"type": "send", "room_id": fuzz.room_id, "content": {"type": "text", "text": random_text(rng) or "x"},
             "ref": rng.randrange(1000)},
            {"type": "sync", "room_id": fuzz.room_id, "after_seq": rng.randrange(3), "limit": rng.randrange(1, 201)},
            {"type": "ack", "room_id": fuzz.room_id, "seq": rng.randrange(3)},
            {"type": "send", "room_id": fuzz.foreign_room_id, "content": {"type": "text", "text": "not mine"}},
        ]))
    if category == 7:  # out-of-range numbers where numbers are expected
        return dumps({"type": rng.choice(["send", "ack", "sync"]), "room_id": rng.choice(rooms),
                      "seq": rng.choice(INTERESTING_INTS), "after_seq": rng.choice(INTERESTING_INTS),
                      "limit": rng.choice(INTERESTING_INTS),
                      "content": {"type": rng.choice(["text", "image", "voice", "file"]), "text": "x",
                                  "width": rng.choice(INTERESTING_INTS), "url": random_text(rng)}})
    # big but under the frame limit: a long text (413 over 8000 characters) or many keys
    size = rng.randrange(8_000, MAX_FRAME_BYTES - 1_000)
    return dumps({"type": "send", "room_id": fuzz.room_id, "content": {"type": "text", "text": "y" * size}})


# -- the tests ----------------------------------------------------------------------------------------


async def test_random_frames_are_answered_and_never_break_the_gateway(
        fuzzing: Fuzzing, server_errors: Callable[[], list[str]]) -> None:
    rng = random.Random(FUZZ_SEED)
    client = await fuzzing.api.connect(fuzzing.fuzzer, catchup=False)
    try:
        for case in range(RANDOM_FRAMES):
            text = random_frame(rng, fuzzing) if rng.random() < 0.9 else None
            context = f"seed {FUZZ_SEED}, case {case}: {(text or '<binary>')[:200]!r}"
            if text is None:
                await client.ws.send_bytes(rng.randbytes(rng.randrange(1, 300)))
            else:
                await client.ws.send_str(text)
            try:
                answers = await fuzzing.probe(client)
            except Closed as closed:
                raise AssertionError(f"{context}: the gateway closed the socket ({closed.code})") from None
            except TimeoutError:
                raise AssertionError(f"{context}: no answer within {REPLY_DEADLINE}s") from None
            if text is None:  # pushes of earlier sends (chat, ack) may come in between: not answers
                assert [a["type"] for a in answers if a["type"] not in PUSHED] == ["error"], (context, answers)
            assert not server_errors(), (context, server_errors())
            if case % 50 == 0:
                await fuzzing.assert_still_serving()
    finally:
        await client.close()
    assert fuzzing.probes >= RANDOM_FRAMES  # every case was answered up to its probe
    await fuzzing.assert_still_serving()
    assert not server_errors(), server_errors()


async def test_frames_over_the_limit_close_with_1009(fuzzing: Fuzzing, server_errors: Callable[[], list[str]]) -> None:
    rng = random.Random(FUZZ_SEED + 1)
    for case in range(OVERSIZED_FRAMES):
        size = rng.choice([MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES + rng.randrange(2, 100_000), 1 << 20])
        client = await fuzzing.api.connect(fuzzing.fuzzer, catchup=False)
        if rng.random() < 0.5:
            await client.ws.send_str(orjson.dumps({"type": "ping", "ref": "x" * size}).decode())
        else:
            await client.ws.send_bytes(rng.randbytes(size))
        assert await fuzzing.assert_closed_and_forgotten(client, {CloseCode.FRAME_TOO_BIG}) == CloseCode.FRAME_TOO_BIG, case
        await fuzzing.assert_still_serving()
    assert not server_errors(), server_errors()


# Byte sequences that are not UTF-8: a lone continuation byte, an overlong "/", an encoded surrogate,
# a truncated 4-byte sequence, bytes never used in UTF-8, a code point over U+10FFFF.
INVALID_UTF8 = [b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf0\x9f\x98", b"\xff\xfe", b"\xf4\x90\x80\x80"]


async def test_invalid_utf8_text_frames_close_with_1007(
        fuzzing: Fuzzing, server_errors: Callable[[], list[str]]) -> None:
    rng = random.Random(FUZZ_SEED + 2)
    for bad in INVALID_UTF8:
        client = await fuzzing.api.connect(fuzzing.fuzzer, catchup=False)
        prefix = b'{"type":"ping","ref":"' if rng.random() < 0.5 else b""
        await client.ws.send_frame(prefix + bad + b'"}', aiohttp.WSMsgType.TEXT)
        await fuzzing.assert_closed_and_forgotten(client, {CLOSE_INVALID_PAYLOAD})
        await fuzzing.assert_still_serving()
    assert not server_errors(), server_errors()


# -- protocol violations, as raw bytes on a socket of our own -----------------------------------------


class RawSocket:
    """A WebSocket client that writes frames byte by byte, so that it can break the protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, gateway_url: str, token: str) -> RawSocket:
        host, port = gateway_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /api/ws?catchup=0 HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"Authorization: Bearer {token}\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REPLY_DEADLINE)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True) -> None:
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        length = len(payload)
        mask_bit = 0x80 if masked else 0
        if length < 126:
            header = struct.pack("!BB", first, mask_bit | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", first, mask_bit | 126, length)
        else:
            header = struct.pack("!BBQ", first, mask_bit | 127, length)
        if masked:
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            header += mask
        self.writer.write(header + payload)

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def outcome(self) -> tuple[str, Any]:
        """The server's next answer: ("close", code) for a close frame (code None if TCP ended without
        one), or ("text", frame) for a text frame. Pings and pongs are skipped."""
        async def first_answer() -> tuple[str, Any]:
            try:
                while True:
                    opcode, payload = await self.read_frame()
                    if opcode == 0x8:
                        return "close", struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    if opcode == 0x1:
                        return "text", orjson.loads(payload)
            except asyncio.IncompleteReadError:
                return "close", None
        return await asyncio.wait_for(first_answer(), REPLY_DEADLINE)

    def close(self) -> None:
        self.writer.close()


CLOSED_AS_PROTOCOL_ERROR = ("close", CLOSE_PROTOCOL_ERROR)
# aiohttp does not insist on the client's mask (RFC 6455 says a server must close): the frame is read
# as it is. Masking protects proxies from cache poisoning, not the server; the frame is answered.
ANSWERED_WITH_PONG = ("text", "pong")
UNMASKED = "an unmasked client frame"


def protocol_violations(rng: random.Random) -> list[tuple[str, Callable[[RawSocket], None]]]:
    """Frames RFC 6455 forbids a client to send: each ends in a close 1002 (protocol error), except
    UNMASKED (see ANSWERED_WITH_PONG)."""
    text = b'{"type":"ping"}'
    return [
        (f"reserved opcode {op:#x}", lambda s, op=op: s.send(op, rng.randbytes(rng.randrange(20))))
        for op in rng.sample([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF], 4)
    ] + [
        (f"RSV bits {rsv:#b}", lambda s, rsv=rsv: s.send(0x1, text, rsv=rsv)) for rsv in (0b100, 0b010, 0b001)
    ] + [
        (UNMASKED, lambda s: s.send(0x1, text, masked=False)),
        ("a ping over 125 bytes", lambda s: s.send(0x9, rng.randbytes(126))),
        ("a fragmented ping", lambda s: s.send(0x9, b"x", fin=False)),
        ("a continuation with nothing to continue", lambda s: s.send(0x0, text)),
        ("a new text frame inside a fragmented one", lambda s: (s.send(0x1, b'{"type":', fin=False),
                                                                  s.send(0x1, b'"ping"}'))),
        ("a close frame with a 1-byte payload", lambda s: s.send(0x8, b"\x03")),
    ]


async def test_a_fragmented_message_with_a_ping_between_its_fragments_is_one_message(fuzzing: Fuzzing) -> None:
    """RFC 6455 5.4: a message may come in fragments, with control frames between them. The server
    answers the ping at once and the message once it is whole."""
    raw = await RawSocket.open(fuzzing.api.gateway_url, fuzzing.fuzzer.token)
    try:
        opcode, welcome = await asyncio.wait_for(raw.read_frame(), REPLY_DEADLINE)
        assert opcode == 0x1 and orjson.loads(welcome)["type"] == "system", welcome
        raw.send(0x1, b'{"type":"pi', fin=False)
        raw.send(0x9, b"between")
        raw.send(0x0, b'ng","ref":', fin=False)
        raw.send(0x0, b'"whole"}')
        await raw.writer.drain()
        assert await asyncio.wait_for(raw.read_frame(), REPLY_DEADLINE) == (0xA, b"between")
        kind, frame = await raw.outcome()
        assert (kind, frame["type"], frame["payload"]) == ("text", "pong", "whole")
    finally:
        raw.close()
    await fuzzing.assert_forgotten()


async def test_protocol_violations_close_with_1002(fuzzing: Fuzzing, server_errors: Callable[[], list[str]]) -> None:
    rng = random.Random(FUZZ_SEED + 3)
    for name, violate in protocol_violations(rng):
        raw = await RawSocket.open(fuzzing.api.gateway_url, fuzzing.fuzzer.token)
        try:
            opcode, welcome = await asyncio.wait_for(raw.read_frame(), REPLY_DEADLINE)
            assert opcode == 0x1 and orjson.loads(welcome)["type"] == "system", welcome
            violate(raw)
            await raw.writer.drain()
            try:
                kind, value = await raw.outcome()
            except TimeoutError:
                raise AssertionError(f"{name}: neither an answer nor a close within {REPLY_DEADLINE}s") from None
            if name == UNMASKED:
                assert (kind, value.get("type") if kind == "text" else value) == ANSWERED_WITH_PONG, (name, kind, value)
            else:
                assert (kind, value) == CLOSED_AS_PROTOCOL_ERROR, (name, kind, value)
        finally:
            raw.close()
        await fuzzing.assert_forgotten()
        await fuzzing.assert_still_serving()
    assert not server_errors(), server_errors()


# -- floods -------------------------------------------------------------------------------------------


async def test_a_flood_of_frames_is_answered_or_closed_as_a_slow_consumer(
        fuzzing: Fuzzing, server_errors: Callable[[], list[str]]) -> None:
    """Frames sent as fast as the socket takes them, nothing read meanwhile: the gateway answers all
    of them, or (its queue for this client full) closes with 4008; never anything else."""
    rng = random.Random(FUZZ_SEED + 4)
    client = await fuzzing.api.connect(fuzzing.fuzzer, catchup=False)
    frames = [orjson.dumps({"type": "ping", "ref": i}).decode() if rng.random() < 0.8 else random_frame(rng, fuzzing)
              for i in range(FLOOD_FRAMES)]
    try:
        try:
            for text in frames:
                await client.ws.send_str(text)
            await client.send_frame({"type": "ping", "ref": "end-of-flood"})
        except ConnectionError:
            pass  # the gateway closed the socket under the flood: its close frame says why, below
        try:
            await client.recv_until(lambda f: f["type"] == "pong" and f["payload"] == "end-of-flood",
                                    timeout=REPLY_DEADLINE * 4)
            pongs = {f["payload"] for f in client.frames if f["type"] == "pong"}
            assert {i for i, text in enumerate(frames) if text.startswith('{"type":"ping","ref":')} <= pongs
        except Closed as closed:
            assert closed.code == CloseCode.SLOW_CONSUMER, closed.code
        for frame in client.frames:
            assert_well_formed(frame)
    finally:
        await client.close()
    await fuzzing.assert_still_serving()
    assert not server_errors(), server_errors()


async def test_several_fuzzing_clients_at_once_leave_the_others_served(
        fuzzing: Fuzzing, server_errors: Callable[[], list[str]]) -> None:
    """Concurrent fuzzing users (each its own socket) while the control client keeps being served."""
    api = fuzzing.api
    users = await api.users(4, "wsfuzzmany")
    room_id = await make_room(api.meta, users[0], users[1:])

    async def fuzz_one(index: int, user: User) -> None:
        rng = random.Random(FUZZ_SEED + 100 + index)
        client = await api.connect(user, catchup=False)
        state = Fuzzing(api, user, fuzzing.control_user, room_id, fuzzing.foreign_room_id)
        try:
            for _ in range(max(20, RANDOM_FRAMES // 5)):
                await client.ws.send_str(random_frame(rng, state))
                await state.probe(client)
        finally:
            await client.close()

    await asyncio.gather(*(fuzz_one(i, user) for i, user in enumerate(users)), fuzzing.assert_still_serving())
    await fuzzing.assert_still_serving()
    assert not server_errors(), server_errors()


# -- what the fuzzing found: each of these was a crash (1011) or a 500 before its fix -----------------


async def test_a_ref_that_cannot_be_echoed_is_refused_and_the_socket_stays_open(fuzzing: Fuzzing) -> None:
    client = await fuzzing.api.connect(fuzzing.fuzzer, catchup=False)
    try:
        for frame in ('{"type":"ping","ref":' + nested_text(300) + "}",  # deeper than orjson encodes
                      dumps({"type": "ping", "ref": "r" * 129}), dumps({"type": "send", "ref": {"a": 1}}),
                      dumps({"type": "sync", "ref": [1]})):
            await client.ws.send_str(frame)
            answers = await fuzzing.probe(client)
            assert [(a["type"], a["payload"]["code"], a["payload"]["ref"]) for a in answers] == [("error", 400, None)]
            assert "ref must be" in answers[0]["payload"]["msg"]
        for ref in ("r" * 128, 7, 2.5, True, None, 2**64 - 1):  # what an answer can carry back is echoed
            await client.send_frame({"type": "ping", "ref": ref})
            assert (await client.recv_type("pong"))["payload"] == ref
    finally:
        await client.close()


async def test_a_type_that_is_not_a_string_is_refused_without_echoing_it(fuzzing: Fuzzing) -> None:
    client = await fuzzing.api.connect(fuzzing.fuzzer, catchup=False)
    try:
        await client.ws.send_str('{"type":' + nested_text(1000) + "}")  # repr() of it hit the recursion limit
        (answer,) = await fuzzing.probe(client)
        assert answer["payload"]["code"] == 400 and "string `type`" in answer["payload"]["msg"]
        await client.send_frame({"type": "t" * 10_000})
        (answer,) = await fuzzing.probe(client)
        assert answer["payload"]["code"] == 400 and len(answer["payload"]["msg"]) < 100
    finally:
        await client.close()


async def test_sync_and_ack_refuse_seqs_beyond_64_bits(fuzzing: Fuzzing) -> None:
    client = await fuzzing.api.connect(fuzzing.fuzzer, catchup=False)
    try:
        await client.send_frame({"type": "sync", "room_id": fuzzing.room_id, "after_seq": INT64_MAX, "ref": "end"})
        batch = await client.recv_type("batch")
        assert (batch["payload"], batch["has_more"], batch["ref"]) == ([], False, "end")
        for frame in ({"type": "sync", "room_id": fuzzing.room_id, "after_seq": INT64_MAX + 1},
                      {"type": "ack", "room_id": fuzzing.room_id, "seq": INT64_MAX + 1}):
            await client.ws.send_str(dumps(frame))
            (answer,) = await fuzzing.probe(client)
            assert answer["type"] == "error" and answer["payload"]["code"] == 400, answer
    finally:
        await client.close()


async def test_internal_pushes_with_numbers_beyond_64_bits_are_refused_or_ignored(fuzzing: Fuzzing) -> None:
    api = fuzzing.api
    internal = api.internal_headers
    client = await api.connect(fuzzing.fuzzer, catchup=False)
    try:
        # /center/forward: orjson reads 1e23 as a float, which became an int too wide to encode again.
        for raw in (b'{"ID": 99999999999999999999999, "TargetIDs": [%d]}' % fuzzing.fuzzer.id,
                    b'{"ID": 1, "TargetIDs": [18446744073709551615]}', b'{"ID": 1e400}'):
            answer = await api.gateway.request("POST", "/center/forward", data=raw, headers=internal)
            assert answer.status == 400 and answer.body["code"] == 400, (raw, answer)
        # /internal/pushback: a field out of range counts as absent, as a non-number does
        answer = await api.send.post("/internal/pushback", {"target_id": fuzzing.fuzzer.id, "forward_req": {
            "id": 2**80, "type": "chat", "room_id": fuzzing.room_id, "sender_id": fuzzing.control_user.id,
            "payload": {"text": "pushed back"}, "seq": 2**64 - 1}}, headers=internal)
        assert answer.status == 200, answer
        await fuzzing.probe(client)  # the socket still answers
    finally:
        await client.close()
