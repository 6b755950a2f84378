from pystacker.messaging.ordering import RoomSequencer, Verdict


def test_unknown_room_until_started() -> None:
    sequencer = RoomSequencer()
    assert sequencer.decide(7, 1).verdict is Verdict.UNKNOWN_ROOM
    sequencer.start(7, 3)
    assert sequencer.knows(7) and sequencer.last(7) == 3


def test_deliver_duplicate_and_gap() -> None:
    sequencer = RoomSequencer()
    sequencer.start(1, 0)
    assert sequencer.decide(1, 1).verdict is Verdict.DELIVER
    sequencer.delivered(1, 1)
    assert sequencer.decide(1, 1).verdict is Verdict.DUPLICATE
    gap = sequencer.decide(1, 5)
    assert (gap.verdict, gap.missing_from, gap.missing_to) == (Verdict.GAP, 2, 4)


def test_start_never_moves_a_known_room_back_and_delivered_only_forward() -> None:
    sequencer = RoomSequencer()
    sequencer.start(1, 10)
    sequencer.start(1, 2)
    assert sequencer.last(1) == 10
    sequencer.delivered(1, 4)
    assert sequencer.last(1) == 10
    assert sequencer.positions() == {1: 10}
