"""Integrity checking: what every client received, against what the server accepted.

Receivers call `arrive` for every chat message (live or inside a catch-up `batch`). At the end,
`finish` is given the messages the server accepted (msgID -> room and step) and the members of each
room, and counts per step:

- lost: an accepted message that never reached one of its room's members (by the end of the grace
  period);
- duplicates: the same msgID arriving twice at one client;
- order violations: a room's `seq` going backwards at one client (PyStacker and GoStacker-compatible
  servers that send `seq`; servers without it are not checked and say so);
- sender order violations: a sender's message number going backwards at one client (GoStacker's own
  measure; meaningful only when each sender has one send in flight, i.e. closed loops);
- unexpected: a bench message of this run that nobody should have received (e.g. a send that timed
  out on the client but was stored by the server).

Latency is taken at arrival (the send time is in the message text), excluding the sender's own copy:
the figure is how long the others waited. Everything is per client process; counts add up across
processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pystacker_tools.bench.histogram import Histogram
from pystacker_tools.bench.tags import Tag


@dataclass
class StepCounts:
    arrived: int = 0  # first arrivals of this run's messages (unique per client)
    duplicates: int = 0
    order_violations: int = 0
    sender_order_violations: int = 0
    expected: int = 0  # filled by finish()
    lost: int = 0
    unexpected: int = 0
    seq_checked: int = 0  # arrivals that carried a seq (0 means order could not be checked)
    first_arrival_ns: int | None = None
    last_arrival_ns: int | None = None
    latency: Histogram = field(default_factory=Histogram)

    def merge(self, other: StepCounts) -> StepCounts:
        for name in ("arrived", "duplicates", "order_violations", "sender_order_violations", "expected", "lost",
                     "unexpected", "seq_checked"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        firsts = [t for t in (self.first_arrival_ns, other.first_arrival_ns) if t is not None]
        lasts = [t for t in (self.last_arrival_ns, other.last_arrival_ns) if t is not None]
        self.first_arrival_ns = min(firsts) if firsts else None
        self.last_arrival_ns = max(lasts) if lasts else None
        self.latency.merge(other.latency)
        return self

    @property
    def delivered(self) -> int:
        """Expected deliveries that happened."""
        return self.expected - self.lost

    def to_json(self) -> dict[str, Any]:
        return {"arrived": self.arrived, "duplicates": self.duplicates, "order_violations": self.order_violations,
                "sender_order_violations": self.sender_order_violations, "expected": self.expected,
                "lost": self.lost, "unexpected": self.unexpected, "seq_checked": self.seq_checked,
                "first_arrival_ns": self.first_arrival_ns, "last_arrival_ns": self.last_arrival_ns,
                "latency": self.latency.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepCounts:
        counts = cls(**{k: v for k, v in data.items() if k != "latency"})
        counts.latency = Histogram.from_json(data["latency"])
        return counts


class _Client:
    __slots__ = ("seen", "last_seq", "last_n")

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last_seq: dict[int, int] = {}  # room id -> highest seq received
        self.last_n: dict[int, int] = {}  # sender index -> highest message number received


class IntegrityChecker:
    def __init__(self, run: str) -> None:
        self.run = run
        self.clients: dict[int, _Client] = {}
        self.steps: dict[int, StepCounts] = {}
        self.foreign = 0  # chat messages that are not this run's (other traffic, earlier runs)
        # When set, latency is measured from this instant instead of the send (catch-up: from the
        # reconnect, since the messages were sent while everyone was away).
        self.latency_origin_ns: int | None = None

    def _step(self, step: int) -> StepCounts:
        counts = self.steps.get(step)
        if counts is None:
            counts = self.steps[step] = StepCounts()
        return counts

    def arrive(self, client: int, msg_id: Any, room_id: Any, seq: Any, tag: Tag | None, arrived_ns: int) -> bool:
        """Record one chat message at one client; True if it is this client's first copy of it."""
        if tag is None or tag.run != self.run or not isinstance(msg_id, int):
            self.foreign += 1
            return False
        state = self.clients.get(client)
        if state is None:
            state = self.clients[client] = _Client()
        counts = self._step(tag.step)
        if msg_id in state.seen:
            counts.duplicates += 1
            return False
        state.seen.add(msg_id)
        counts.arrived += 1
        if counts.first_arrival_ns is None or arrived_ns < counts.first_arrival_ns:
            counts.first_arrival_ns = arrived_ns
        if counts.last_arrival_ns is None or arrived_ns > counts.last_arrival_ns:
            counts.last_arrival_ns = arrived_ns
        if isinstance(seq, int) and isinstance(room_id, int):
            counts.seq_checked += 1
            last = state.last_seq.get(room_id)
            if last is not None and seq < last:
                counts.order_violations += 1
            else:
                state.last_seq[room_id] = seq
        last_n = state.last_n.get(tag.sender)
        if last_n is not None and tag.n < last_n:
            counts.sender_order_violations += 1
        else:
            state.last_n[tag.sender] = tag.n
        if tag.sender != client:
            origin = self.latency_origin_ns if self.latency_origin_ns is not None else tag.sent_ns
            counts.latency.add((arrived_ns - origin) / 1e9)
        return True

    def finish(self, accepted: Mapping[int, tuple[int, int]], members: Mapping[int, Iterable[int]]) -> dict[int, StepCounts]:
        """Count lost and unexpected deliveries.

        accepted: msgID -> (room id, step) for every send the server accepted (all processes);
        members: room id -> the clients of this process that should receive the room's messages.
        """
        expected_here: dict[int, int] = {}
        for msg_id, (room_id, step) in accepted.items():
            counts = self._step(step)
            for client in members.get(room_id, ()):
                counts.expected += 1
                state = self.clients.get(client)
                if state is None or msg_id not in state.seen:
                    counts.lost += 1
                else:
                    expected_here[step] = expected_here.get(step, 0) + 1
        for step, counts in self.steps.items():
            counts.unexpected = counts.arrived - expected_here.get(step, 0)
        return self.steps
