"""Small SQL helpers that differ by dialect."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Table
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql.dml import Insert


def insert_ignoring_duplicates(table: Table, dialect: str) -> Insert:
    """INSERT that skips rows whose key already exists, leaving the existing row untouched."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        # Not INSERT IGNORE: MySQL answers each skipped row with a warning, which the driver fetches
        # (one more round trip) and logs at WARNING, so every retried batch and every cursor save
        # filled the logs with an expected case. Setting a key column to itself on a duplicate is a
        # no-op that raises no warning. (IGNORE also hid real errors, such as truncation.)
        key = next(iter(table.primary_key.columns))
        return mysql.insert(table).on_duplicate_key_update({key.name: key})
    raise ValueError(f"unsupported SQL dialect {dialect!r}")


def utcnow() -> datetime:
    """Naive UTC, the form stored in every DATETIME column (the three databases agree on it)."""
    return datetime.now(UTC).replace(tzinfo=None)


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def escape_like(text: str, escape: str = "\\") -> str:
    """Make `%` and `_` in user input match themselves (GoStacker passes them through)."""
    return text.replace(escape, escape * 2).replace("%", escape + "%").replace("_", escape + "_")
