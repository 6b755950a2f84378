"""A TCP fault proxy between a deployment and its SQL server.

The shared MariaDB/PostgreSQL must never be stopped, so the harness puts this proxy in front of it
(the deployment's database URL names the proxy's port) and fails the database here instead:

- `take_down()` aborts every proxied connection and refuses new ones (accepted, then aborted at once)
  until `bring_up()`: to every service the database is down;
- on MySQL/MariaDB it reads the commands clients send (the protocol's packets: 3-byte length,
  sequence id, then for a command a type byte; COM_QUERY is 0x03 followed by the SQL text) and
  counts statements by verb and table (`select chat_messages`, `insert room_cursors`, ...): how many
  reads a reconnect storm really costs the database, seen from the database's side;
- `arm_commit_trap()` catches the flusher in the middle of a batch: the first connection that sends
  COMMIT after an INSERT into chat_messages has that COMMIT forwarded (the database keeps the rows)
  and the answer withheld, so the flusher waits with its batch written to SQL but not yet confirmed
  to the engine. Killing it then is the worst moment for a write-behind.

Forwarding never waits for the counting: it parses a copy of what it forwards.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter

log = logging.getLogger("pystacker_tools.chaos.proxy")

COM_QUERY = 0x03
_TABLE = re.compile(r"\b(?:from|into|update|join)\s+[`\"]?(\w+)", re.IGNORECASE)
READ_SIZE = 65536


def classify(sql: str) -> str:
    """`<verb> <table>` of one SQL statement, e.g. `select chat_messages`; `commit`, `begin`, ..."""
    words = sql.lstrip().split(None, 1)
    if not words:
        return "empty"
    verb = words[0].lower()
    table = _TABLE.search(sql[:500])
    return f"{verb} {table.group(1).lower()}" if table else verb


class _MySQLCommands:
    """Splits the client-to-server byte stream of one MySQL connection into packets and reports the
    SQL of each COM_QUERY. Handshake packets carry a sequence id above 0: only commands start at 0."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        statements = []
        while len(self._buffer) >= 4:
            length = self._buffer[0] | self._buffer[1] << 8 | self._buffer[2] << 16
            if len(self._buffer) < 4 + length:
                break
            sequence = self._buffer[3]
            if sequence == 0 and length > 0 and self._buffer[4] == COM_QUERY:
                statements.append(bytes(self._buffer[5:4 + min(length, 600)]).decode("utf-8", "replace"))
            del self._buffer[:4 + length]
        return statements


class _Link:
    """One proxied connection: the client's socket and ours to the server."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter, parse: bool) -> None:
        self.client = client
        self.server = server
        self.commands = _MySQLCommands() if parse else None
        self.inserted_messages = False  # this connection sent an INSERT into chat_messages
        self.withhold_answers = False  # the commit trap caught it: the server's answers are dropped

    def abort(self) -> None:
        for writer in (self.client, self.server):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, parse_mysql: bool) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.parse_mysql = parse_mysql
        self.port = 0
        self.statements: Counter[str] = Counter()
        self.connections = 0
        self.refused = 0  # connections turned away while down
        self.cut = 0  # open connections aborted by take_down()
        self._down = False
        self._links: set[_Link] = set()
        self._server: asyncio.AbstractServer | None = None
        self._trap_armed = False
        self._trapped: _Link | None = None
        self.trap_sprung = asyncio.Event()

    @property
    def counts_statements(self) -> bool:
        return self.parse_mysql

    @property
    def down(self) -> bool:
        return self._down

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        for link in list(self._links):
            link.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- faults -------------------------------------------------------------------------------------

    def take_down(self) -> None:
        """The database is gone: every open connection aborted, new ones refused."""
        self._down = True
        for link in list(self._links):
            self.cut += 1
            link.abort()

    def bring_up(self) -> None:
        self._down = False

    def arm_commit_trap(self) -> None:
        self.trap_sprung.clear()
        self._trap_armed = True

    def release_trap(self) -> None:
        """Abort the trapped connection (its owner is dead by now) and disarm."""
        self._trap_armed = False
        if self._trapped is not None:
            self._trapped.abort()
            self._trapped = None

    def statements_since(self, before: Counter[str]) -> dict[str, int]:
        return {kind: n - before.get(kind, 0) for kind, n in self.statements.items() if n > before.get(kind, 0)}

    # -- forwarding -----------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        link = _Link(writer, server_writer, self.parse_mysql)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump_up(reader, link), self._pump_down(server_reader, link))
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump_up(self, reader: asyncio.StreamReader, link: _Link) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                if link.commands is not None:
                    for sql in link.commands.feed(data):
                        self._saw(link, sql)
                link.server.write(data)
                await link.server.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            link.abort()

    async def _pump_down(self, reader: asyncio.StreamReader, link: _Link) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                if link.withhold_answers:
                    continue  # the trapped client waits for an answer that never comes
                link.client.write(data)
                await link.client.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            link.abort()

    def _saw(self, link: _Link, sql: str) -> None:
        kind = classify(sql)
        self.statements[kind] += 1
        if kind == "insert chat_messages":
            link.inserted_messages = True
        elif kind == "commit" and link.inserted_messages:
            if self._trap_armed and self._trapped is None:
                # The COMMIT still goes to the server (the rows are kept); its answer is withheld.
                link.withhold_answers = True
                self._trapped = link
                self.trap_sprung.set()
            link.inserted_messages = False
        elif kind in ("rollback", "begin"):
            link.inserted_messages = False
