from pystacker.messaging.acks import EntryTracker


def test_entry_completes_after_every_target() -> None:
    tracker = EntryTracker()
    tracker.open("1-0", 3)
    tracker.settle("1-0")
    tracker.settle("1-0")
    assert tracker.take_completed() == [] and tracker.in_flight == 1
    tracker.settle("1-0")
    assert tracker.take_completed() == ["1-0"]
    assert tracker.take_completed() == [] and tracker.in_flight == 0


def test_entry_with_no_local_target_completes_at_once_and_unknown_settles_are_ignored() -> None:
    tracker = EntryTracker()
    tracker.open("2-0", 0)
    tracker.settle("9-9")
    assert tracker.take_completed() == ["2-0"]


def test_reopening_adds_to_the_count() -> None:
    tracker = EntryTracker()
    tracker.open("3-0", 1)
    tracker.open("3-0", 1)
    tracker.settle("3-0", 1)
    assert tracker.take_completed() == []
    tracker.settle("3-0", 1)
    assert tracker.take_completed() == ["3-0"]
