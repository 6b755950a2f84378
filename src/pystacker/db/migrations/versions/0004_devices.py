"""devices and device_cursors: every device of a user online at once, each with its own cursors

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
DeviceId = sa.String(64).with_variant(mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_key", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("device_id", DeviceId, nullable=False),
        sa.Column("last_seen_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("device_key", name="pk_devices"),
        sa.UniqueConstraint("user_id", "device_id", name="uq_devices_user_id_device_id"),
    )
    op.create_index("ix_devices_last_seen_at", "devices", ["last_seen_at"])
    op.create_table(
        "device_cursors",
        sa.Column("device_key", Id, nullable=False),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("delivered_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("device_key", "room_id", name="pk_device_cursors"),
    )


def downgrade() -> None:
    op.drop_table("device_cursors")
    op.drop_index("ix_devices_last_seen_at", "devices")
    op.drop_table("devices")
