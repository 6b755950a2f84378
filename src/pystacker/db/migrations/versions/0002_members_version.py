"""chat_rooms.members_version: the roster version room_members holds (membership write-back cache)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chat_rooms") as batch:  # batch: SQLite cannot ALTER most things in place
        batch.add_column(sa.Column("members_version", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("chat_rooms") as batch:
        batch.drop_column("members_version")
