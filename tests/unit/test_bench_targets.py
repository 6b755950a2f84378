"""The bench's --send takes several send instances; a room always goes through the same one."""

from __future__ import annotations

import pytest

from pystacker_tools.bench.safety import BenchError
from pystacker_tools.bench.targets import Targets


def test_several_send_urls_share_the_rooms() -> None:
    targets = Targets(meta="http://127.0.0.1:8082", send="http://127.0.0.1:8081, http://127.0.0.1:8091/",
                      registry="http://127.0.0.1:8083")
    assert targets.sends == ["http://127.0.0.1:8081", "http://127.0.0.1:8091"]
    assert {targets.send_for(room) for room in range(10)} == set(targets.sends)
    assert targets.send_for(7) == targets.send_for(7)
    targets.check(allow_remote=False)


def test_every_send_url_must_be_local_unless_allowed() -> None:
    targets = Targets(meta="http://127.0.0.1:8082", send="http://127.0.0.1:8081,http://10.1.2.3:8081",
                      registry="http://127.0.0.1:8083")
    with pytest.raises(BenchError):
        targets.check(allow_remote=False)
