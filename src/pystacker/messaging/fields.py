"""The shared fields of requests and frames: ids, seqs and keys, with the bounds every store holds.

Ids and seqs are SQL's signed 64 bits (GoStacker's int64): a larger number reached SQLite or the
memory log as a 500 before; bounded here, it is a 400 that the OpenAPI documents say. JSON bodies and
client frames are strict (a string is not a number); query strings are lax, since every query value
arrives as a string.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field, StrictInt, StringConstraints, WithJsonSchema

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

PositiveId = Annotated[StrictInt, Field(gt=0, le=INT64_MAX)]
Seq = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
QueryId = Annotated[int, Field(gt=0, le=INT64_MAX)]
QuerySeq = Annotated[int, Field(ge=0, le=INT64_MAX)]
# The sender's idempotency key: printable ASCII without spaces, as the unique key in SQL holds it.
ClientMsgId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


_DECIMAL_ID = re.compile(r"[1-9][0-9]{0,18}")


def _id_from_string(value: object) -> object:
    """A decimal string is read as the number it spells; anything else is left to the int checks."""
    if isinstance(value, str) and _DECIMAL_ID.fullmatch(value):
        return int(value)
    return value


# A message id as a number or as its decimal string (`id_str`): JavaScript cannot hold 64-bit numbers.
MessageId = Annotated[PositiveId, BeforeValidator(_id_from_string), WithJsonSchema({
    "oneOf": [{"type": "integer", "minimum": 1, "maximum": INT64_MAX},
              {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}],
    "description": "a message id, as a number or a decimal string (at most 2^63-1)"})]


def in_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX
