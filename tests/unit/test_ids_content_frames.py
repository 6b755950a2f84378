import pytest

from pystacker.messaging.content import MAX_TEXT_CHARS, parse_content
from pystacker.messaging.errors import Refused
from pystacker.messaging.ids import EPOCH_MS, Snowflake, timestamp_ms
from pystacker.messaging.model import PushEntry, decode_entry
from pystacker.web.envelope import refusal_status


def test_snowflake_layout_node_and_uniqueness() -> None:
    clock = iter([EPOCH_MS + 1000] * 5000 + [EPOCH_MS + 1001] * 10)
    ids = Snowflake(5, clock_ms=lambda: next(clock))
    made = [ids.next_id() for _ in range(4100)]
    assert len(set(made)) == len(made) and made == sorted(made)
    assert (made[0] >> 12) & 0x3FF == 5
    assert timestamp_ms(made[0]) == EPOCH_MS + 1000


def test_snowflake_survives_a_clock_step_back() -> None:
    times = iter([EPOCH_MS + 5000, EPOCH_MS + 4000, EPOCH_MS + 4000])
    ids = Snowflake(1, clock_ms=lambda: next(times))
    first, second, third = ids.next_id(), ids.next_id(), ids.next_id()
    assert first < second < third


def test_snowflake_refuses_a_bad_node() -> None:
    with pytest.raises(ValueError):
        Snowflake(1024)


def test_content_types_defaults_and_errors() -> None:
    assert parse_content({"type": "text", "text": "hi"}) == ("text", {"text": "hi"})
    assert parse_content({"type": "image", "url": "u"}) == ("image", {"url": "u", "width": 0, "height": 0})
    assert parse_content({"type": "file", "url": "u", "file_name": "a", "size": 3})[1]["size"] == 3
    for bad, status in (({"type": "video"}, 400), ({"text": "x"}, 400), ("text", 400),
                        ({"type": "text", "text": 5}, 400), ({"type": "text", "text": " "}, 400),
                        ({"type": "voice", "duration": True}, 400),
                        ({"type": "text", "text": "x" * (MAX_TEXT_CHARS + 1)}, 413)):
        with pytest.raises(Refused) as caught:
            parse_content(bad)
        assert refusal_status(caught.value) == status


def test_inbox_entries_round_trip_and_read_both_key_styles() -> None:
    entry = PushEntry(type="chat", msg_id=9, room_id=3, sender_id=4, target_ids=[1, 2], payload={"text": "hi"}, seq=7,
                      client_msg_id="c1", ts=123)
    assert decode_entry(entry.encode()) == entry
    snake = decode_entry(b'{"id": 9, "type": "chat", "room_id": 3, "sender_id": 4, "target_ids": [1], "payload": null}')
    assert (snake.msg_id, snake.room_id, snake.target_ids, snake.seq) == (9, 3, [1], 0)
    with pytest.raises(ValueError):
        decode_entry(b'{"TargetIDs": "x"}')
    with pytest.raises(ValueError):
        decode_entry(b"[1]")
