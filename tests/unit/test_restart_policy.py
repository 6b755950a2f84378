"""The restart policy of `pystacker cluster`: backoff, reset after a stable run, crash-loop verdict."""

from pystacker.supervisor import Backoff, RestartPolicy

POLICY = RestartPolicy(first_delay=0.5, max_delay=3.0, stable_after=60.0, crash_loop_exits=5)


def test_quick_exits_back_off_doubling_up_to_the_cap() -> None:
    backoff = Backoff(POLICY)
    assert [backoff.after_exit(ran_for=1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_one_more_quick_exit_than_allowed_is_a_crash_loop() -> None:
    backoff = Backoff(POLICY)
    for _ in range(5):
        assert backoff.after_exit(ran_for=2.0) is not None
    assert backoff.after_exit(ran_for=2.0) is None


def test_a_stable_run_starts_the_backoff_over() -> None:
    backoff = Backoff(POLICY)
    for _ in range(4):
        backoff.after_exit(ran_for=1.0)
    assert backoff.after_exit(ran_for=60.0) == 0.5
    assert backoff.after_exit(ran_for=1.0) == 1.0


def test_exits_far_apart_never_make_a_crash_loop() -> None:
    backoff = Backoff(POLICY)
    assert all(backoff.after_exit(ran_for=600.0) == 0.5 for _ in range(50))
