"""SQL store: SQLAlchemy 2 Core (async) over SQLite, MySQL/MariaDB and PostgreSQL; Alembic migrations."""
