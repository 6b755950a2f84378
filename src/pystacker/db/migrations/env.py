"""Alembic environment: always run with a connection handed in by `pystacker.db.migrate`."""

from alembic import context

from pystacker.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `pystacker db upgrade`, which provides the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
