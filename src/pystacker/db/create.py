"""Create the configured database if the server does not have it yet (`pystacker db upgrade`)."""

from __future__ import annotations

import re

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_]+$")


async def ensure_database(url: str) -> bool:
    """True if the database was created. SQLite files are created on first connect anyway."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    name = parsed.database
    if backend == "sqlite" or not name:
        return False
    if not _SAFE_NAME.match(name):
        raise ValueError(f"refusing to create a database with an unusual name: {name!r}")
    if backend in ("mysql", "mariadb"):
        server = create_async_engine(parsed.set(database=""))
        try:
            async with server.connect() as conn:
                exists = (await conn.execute(text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :n"),
                                             {"n": name})).first()
                if not exists:
                    await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
                return not exists
        finally:
            await server.dispose()
    if backend == "postgresql":
        server = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            async with server.connect() as conn:
                exists = (await conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})).first()
                if not exists:
                    await conn.execute(text(f'CREATE DATABASE "{name}"'))
                return not exists
        finally:
            await server.dispose()
    return False
