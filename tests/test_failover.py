"""A gateway killed under load: every user it held is back on the other gateway and caught up within
5 s, nothing lost, nothing shown twice (issue 12).

The deployment runs as separate processes with the registry's gateway TTL at GoStacker's 30 s, so
what brings the users back is the registry's liveness check and the clients' `exclude`, never the
TTL. Two kinds of client are on the killed gateway:
- the SDK (`pystacker.client` Session): it names the dead gateway to the registry and tries the next
  one at once;
- a GoStacker-style client: after each failed connect it pauses, asks the registry again (no
  `exclude`, no acks) and connects where it is told; it deduplicates by message id. It asks with its
  token, so the registry's reconnect lease names the gateway it was on: the dead one, which a
  registry trusting its 30 s TTL kept handing out.
With only GoStacker-style clients, nobody names the dead gateway: the registry finds it by its missed
beats (1 s apart) and a failed probe; that case runs too.
Recovery of a client = from the kill until it has the first message accepted after the kill (the
SDK releases in seq order, so it then has everything before it too; the GoStacker-style client is
checked for completeness at the end).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest

from pystacker.client import PyStackerClient
from pystacker.client.session import Session
from tests.client import User
from tests.deployment import TestDeployment, start_deployment
from tests.ws import chats_of, make_room, poll

pytestmark = pytest.mark.distributed

RATE = 40.0  # messages per second from the sender
AFTER_KILL = 6.0  # seconds of load after the kill
GOSTACKER_PAUSE = 0.5  # seconds between a GoStacker-style client's attempts
RECOVERY_BOUND = 5.0  # the target: back and caught up within 5 s of the kill
DELIVERY_DEADLINE = 30.0


@pytest.fixture
async def dep(distributed_mariadb: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TestDeployment]:
    deployment = await start_deployment(tmp_path_factory.mktemp("failover-logs"), distributed_mariadb, sends=1,
                                        env={"PYSTACKER_REGISTRY__GATEWAY_HEARTBEAT_TIMEOUT": "30"})
    yield deployment
    await deployment.stop()


@dataclass
class Arrivals:
    """What one client received: the first arrival of each seq, by monotonic time."""

    seqs: dict[int, float] = field(default_factory=dict)
    copies: int = 0  # every copy received, duplicates included (the GoStacker client dedups)

    def add(self, seq: int) -> None:
        self.copies += 1
        self.seqs.setdefault(seq, time.monotonic())

    def first_after(self, seq: int) -> float | None:
        later = [at for s, at in self.seqs.items() if s > seq]
        return min(later) if later else None


@dataclass
class SdkClient:
    user: User
    session: Session
    arrivals: Arrivals = field(default_factory=Arrivals)

    @property
    def gateway_id(self) -> str | None:
        return self.session.gateway.gateway_id if self.session.gateway else None

    async def read(self, room_id: int) -> None:
        async for item in self.session:
            if getattr(item, "room_id", None) == room_id:
                self.arrivals.add(item.seq)


@dataclass
class GoStackerClient:
    """What GoStacker's own client does after a failed connect: ask the registry again (with its
    token: the lease) and go where it says; it reads `chat` frames live and `batch` frames on
    reconnect and never acks."""

    user: User
    http: aiohttp.ClientSession
    registry_url: str
    first_gateway: str  # its first connection goes here, so that both gateways hold some of these
    arrivals: Arrivals = field(default_factory=Arrivals)
    gateway_id: str | None = None
    failed_connects: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def pause(self) -> None:
        """The client's own retry pause, cut short when the test stops it."""
        try:
            await asyncio.wait_for(self.stopped.wait(), GOSTACKER_PAUSE)
        except TimeoutError:
            pass

    async def run(self, room_id: int) -> None:
        url: str | None = self.first_gateway
        while not self.stopped.is_set():
            if url is None:
                async with self.http.get(f"{self.registry_url}/registry/gateway/available",
                                         headers={"Authorization": f"Bearer {self.user.token}"}) as answer:
                    body = await answer.json(content_type=None)
                if answer.status != 200:
                    await self.pause()
                    continue
                url = f"http://{body['data']['address']}:{body['data']['port']}"
            try:
                ws = await self.http.ws_connect(f"{url}/api/ws", headers={"Authorization": f"Bearer {self.user.token}"})
            except (aiohttp.ClientError, OSError):
                self.failed_connects += 1
                url = None
                await self.pause()
                continue
            url = None
            await self._read(ws, room_id)
            await ws.close()
            await self.pause()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, room_id: int) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            frame = orjson.loads(message.data)
            if frame.get("type") == "system" and "gateway_id" in frame:
                self.gateway_id = frame["gateway_id"]
            for chat in chats_of(frame):
                if chat["room_id"] == room_id:
                    self.arrivals.add(chat["seq"])


@dataclass
class Load:
    """One sender posting at RATE over HTTP; `accepted` holds (seq, monotonic time of the answer)."""

    dep: TestDeployment
    sender: User
    room_id: int
    accepted: list[tuple[int, float]] = field(default_factory=list)
    stop_at: float = float("inf")
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        send = self.dep.sends[0]
        started, count = time.monotonic(), 0
        while time.monotonic() < self.stop_at and not self.stopped.is_set():
            answer = await send.post("/api/chat/send_message",
                                     {"room_id": self.room_id, "content": {"type": "text", "text": f"m{count}"}},
                                     token=self.sender.token)
            assert answer.status == 200, answer
            self.accepted.append((answer.data["seq"], time.monotonic()))
            count += 1
            pause = started + count / RATE - time.monotonic()
            if pause > 0:  # the next send's turn, at RATE (or at once when the test stops the load)
                try:
                    await asyncio.wait_for(self.stopped.wait(), pause)
                except TimeoutError:
                    pass

    def last_before(self, moment: float) -> int:
        return max(seq for seq, at in self.accepted if at < moment)


def figures(recoveries: list[float]) -> str:
    return f"p50 {statistics.median(recoveries):.2f} s, max {max(recoveries):.2f} s, n={len(recoveries)}"


@pytest.mark.parametrize(("sdk_clients", "gostacker_clients"), [(10, 6), (0, 8)], ids=["sdk-and-gostacker", "gostacker-only"])
async def test_users_of_a_killed_gateway_are_back_and_caught_up_within_seconds(
        dep: TestDeployment, sdk_clients: int, gostacker_clients: int) -> None:
    labels = await dep.ensure_gateways(2)
    users = await dep.users(sdk_clients + gostacker_clients + 1, "fo")
    sender, sdk_users, gostacker_users = users[0], users[1:1 + sdk_clients], users[1 + sdk_clients:]
    room_id = await make_room(dep.meta, sender, users[1:])
    urls = {name: dep.url(name) for name in ("meta", "registry")}
    send_url = dep.url(dep.labels("send")[0])

    sdks: list[SdkClient] = []
    for user in sdk_users:
        client = PyStackerClient(urls["meta"], send_url, urls["registry"], token=user.token)
        sdks.append(SdkClient(user, await client.connect()))
    async with aiohttp.ClientSession() as http:
        gostackers = [GoStackerClient(user, http, urls["registry"], dep.url(labels[i % 2]))
                      for i, user in enumerate(gostacker_users)]
        tasks = [asyncio.create_task(c.read(room_id)) for c in sdks]
        tasks += [asyncio.create_task(c.run(room_id)) for c in gostackers]
        load = Load(dep, sender, room_id)
        loading = asyncio.create_task(load.run())
        everyone: list[SdkClient | GoStackerClient] = [*sdks, *gostackers]
        try:
            await poll(lambda: all(c.arrivals.seqs for c in everyone) and all(c.gateway_id for c in gostackers),
                       "every client receiving the load", timeout=DELIVERY_DEADLINE)
            # The victim: the gateway holding more SDK clients (each gateway holds GoStacker ones).
            on = {label: [c for c in sdks if c.gateway_id == dep.gateway_id(label)] for label in labels}
            victim = max(labels, key=lambda label: len(on[label]))
            victim_id = dep.gateway_id(victim)
            affected = [c for c in everyone if c.gateway_id == victim_id]
            kinds = {type(c) for c in affected}
            assert GoStackerClient in kinds and (SdkClient in kinds or not sdks), [c.gateway_id for c in everyone]

            killed_at = time.monotonic()
            dep.signal(victim, signal.SIGKILL)
            load.stop_at = killed_at + AFTER_KILL
            await loading
            last_seq = load.accepted[-1][0]
            await poll(lambda: all(max(c.arrivals.seqs) >= last_seq for c in everyone),
                       "every client having the last message", timeout=DELIVERY_DEADLINE)
        finally:
            for client in gostackers:
                client.stopped.set()
            load.stopped.set()
            loading.cancel()
            for session in (c.session for c in sdks):
                await session.close()
                await session.client.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(loading, *tasks, return_exceptions=True)

    # nothing lost, nothing shown twice (the SDK by itself, the GoStacker client after its dedup)
    expected = {seq for seq, _ in load.accepted}
    for client in everyone:
        assert expected <= set(client.arrivals.seqs), (client.user.id, sorted(expected - set(client.arrivals.seqs))[:10])
    for client in sdks:
        assert client.arrivals.copies == len(client.arrivals.seqs), client.user.id

    cut = load.last_before(killed_at)
    recoveries: dict[str, list[float]] = {"sdk": [], "gostacker": []} if sdks else {"gostacker": []}
    for client in affected:
        back = client.arrivals.first_after(cut)
        assert back is not None
        recoveries["sdk" if isinstance(client, SdkClient) else "gostacker"].append(back - killed_at)
    report = "; ".join(f"{kind}: {figures(times)}" for kind, times in recoveries.items())
    print(f"\nrecovery after kill -9 of {victim} (gateway TTL 30 s): {report}")
    for kind, times in recoveries.items():
        assert max(times) <= RECOVERY_BOUND, f"{kind} clients back too late: {report}"
    # the SDK clients went straight to the other gateway (GoStacker-style ones may have tried the
    # dead one before its probe failed); none of them is on the dead gateway now
    assert all(c.gateway_id != victim_id for c in sdks)
