"""The engine as a whole: readiness."""

from __future__ import annotations

from pystacker.engine.base import Engine


async def test_ping_answers_while_open(engine: Engine) -> None:
    await engine.ping()
