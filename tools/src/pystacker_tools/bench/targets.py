"""The servers a run loads, and the SDK client each setup call goes through.

`--send` may name several send instances: a room sticks to one of them (`send_for`), as behind a
balancer with affinity. Every target is checked to be on this machine unless --allow-remote.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from pystacker.client import PyStackerClient
from pystacker_tools.bench.safety import check_target

SETUP_TIMEOUT = 30.0  # seconds per setup request: registering costs a bcrypt check on a busy server


@dataclass(frozen=True)
class Targets:
    meta: str
    send: str  # one URL, or several separated by commas (a deployment with several send instances)
    registry: str

    @property
    def sends(self) -> list[str]:
        return [url.strip().rstrip("/") for url in self.send.split(",") if url.strip()]

    def send_for(self, room_id: int) -> str:
        """The send instance for a room: a room sticks to one, as behind a balancer with affinity."""
        sends = self.sends
        return sends[room_id % len(sends)]

    def check(self, allow_remote: bool) -> None:
        for name in ("meta", "registry"):
            check_target(getattr(self, name), allow_remote=allow_remote, what=f"--{name}")
        for url in self.sends:
            check_target(url, allow_remote=allow_remote, what="--send")

    def client(self, http: aiohttp.ClientSession, *, token: str | None = None, user_id: int | None = None,
               device_id: str | None = None, timeout: float = SETUP_TIMEOUT) -> PyStackerClient:
        """An SDK client on these servers as one user (anonymous without a token), on the run's HTTP
        session: one per user is cheap, and they share its connection pool. Setup calls only: it
        talks to the first send instance; measured sends go through `clients.post_send`."""
        client = PyStackerClient(self.meta, self.sends[0], self.registry, token=token, timeout=timeout, http=http,
                                 device_id=device_id)
        if user_id is not None:
            client.user_id = user_id  # known from the login: no need to trust the token's claim
        return client
