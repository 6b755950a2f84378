"""The verified-token cache of TokenService never extends a token's life or accepts a changed token."""

from __future__ import annotations

import time

import pytest

from pystacker.web.auth import TokenService
from pystacker.web.envelope import ApiError


def test_a_cached_token_still_expires_on_time() -> None:
    tokens = TokenService("a-secret-that-is-long-enough-for-tests", lifetime_seconds=60)
    token = tokens.issue(7, "alice", now=time.time() - 58.5)  # valid for 0.5 to 1.5 s more (whole seconds)
    assert tokens.verify(token).user_id == 7  # checked in full, then remembered
    assert tokens.verify(token).user_id == 7  # from the cache
    deadline = time.monotonic() + 5
    while True:  # poll: the cache must start refusing it once exp has passed
        try:
            tokens.verify(token)
        except ApiError as exc:
            assert exc.status == 401 and "expired" in exc.msg.lower()
            break
        assert time.monotonic() < deadline, "an expired token was still accepted"
        time.sleep(0.01)  # polling interval; the deadline decides


def test_a_token_differing_from_a_cached_one_is_checked_in_full() -> None:
    tokens = TokenService("a-secret-that-is-long-enough-for-tests", lifetime_seconds=60)
    token = tokens.issue(7, "alice")
    tokens.verify(token)
    header, payload, signature = token.split(".")
    forged = ".".join([header, payload, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")])
    with pytest.raises(ApiError):
        tokens.verify(forged)
