"""The SQL databases the suite runs against: SQLite always, MariaDB and PostgreSQL on this machine.

`PYSTACKER_TEST_DATABASES=sqlite,mariadb,postgres` (the default) picks them. A server that is not
reachable fails the run: CI must never skip a database silently.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

ALL = ("sqlite", "mariadb", "postgres")
MARIADB_ADMIN = os.environ.get("PYSTACKER_TEST_MARIADB", "mysql+asyncmy://root:@127.0.0.1:3306/test")
POSTGRES_ADMIN = os.environ.get("PYSTACKER_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


def selected() -> list[str]:
    names = [n.strip() for n in os.environ.get("PYSTACKER_TEST_DATABASES", ",".join(ALL)).split(",") if n.strip()]
    unknown = set(names) - set(ALL)
    if unknown:
        raise ValueError(f"unknown PYSTACKER_TEST_DATABASES entries: {sorted(unknown)}")
    return names


async def create_database(kind: str, tmp_dir: Path) -> str:
    """A fresh, empty database of that kind; returns its SQLAlchemy URL."""
    name = f"pystacker_test_{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_dir / (name + '.db')}"
    if kind == "mariadb":
        admin = create_async_engine(MARIADB_ADMIN)
        async with admin.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
        await admin.dispose()
        return MARIADB_ADMIN.rsplit("/", 1)[0] + f"/{name}?charset=utf8mb4"
    if kind == "postgres":
        admin = create_async_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {name}"))
        await admin.dispose()
        return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    raise ValueError(kind)


async def drop_database(kind: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?")[0]
    if kind == "mariadb":
        admin = create_async_engine(MARIADB_ADMIN)
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        await admin.dispose()
    elif kind == "postgres":
        admin = create_async_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()
