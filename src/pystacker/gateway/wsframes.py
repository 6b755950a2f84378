"""WebSocket frames as bytes, built once and written to many sockets (RFC 6455, section 5.2).

aiohttp builds the header and copies header + payload into the transport on every send_str, and makes
one transport write per frame. A room message goes to every member with the same bytes, so the gateway
builds the whole frame once per inbox entry and a connection writes everything its queue holds in one
transport write. Only server-to-client frames are built here: unmasked, FIN set, no extension bits
(a permessage-deflate connection may always receive an uncompressed message; compression is off anyway).
"""

from __future__ import annotations

import struct

OPCODE_TEXT = 0x1
OPCODE_PING = 0x9
OPCODE_PONG = 0xA
_FIN = 0x80


def text_frame(payload: str | bytes) -> bytes:
    """One complete, unfragmented text frame holding `payload` (UTF-8)."""
    return _frame(OPCODE_TEXT, payload.encode() if isinstance(payload, str) else payload)


def ping_frame(token: bytes) -> bytes:
    """A ping whose pong echoes `token` (a control frame: at most 125 bytes)."""
    if len(token) > 125:
        raise ValueError("a ping carries at most 125 bytes")
    return _frame(OPCODE_PING, token)


def pong_frame(data: bytes) -> bytes:
    """The answer to a client's ping: a pong echoing its data (a control frame: at most 125 bytes)."""
    if len(data) > 125:
        raise ValueError("a pong carries at most 125 bytes")
    return _frame(OPCODE_PONG, data)


def _frame(opcode: int, data: bytes) -> bytes:
    length = len(data)
    first = _FIN | opcode
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + data
