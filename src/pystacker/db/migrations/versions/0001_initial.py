"""initial schema: users, chat_rooms, room_members, chat_messages, join_requests, room_cursors

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(50), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("nickname", sa.String(50), nullable=False, server_default=""),
        sa.Column("avatar_url", sa.String(255)),
        sa.Column("is_banned", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("last_login_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
        sqlite_autoincrement=True,  # ids are never reused after a delete
    )
    # Usernames are unique whatever their case. MySQL/MariaDB's utf8mb4 collations already compare
    # without case; SQLite and PostgreSQL need an index on lower(username).
    if op.get_bind().dialect.name in ("sqlite", "postgresql"):
        op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    op.create_table(
        "chat_rooms",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("is_group", sa.Boolean, nullable=False),
        sa.Column("creator_id", Id, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("id", name="pk_chat_rooms"),
        sa.ForeignKeyConstraint(["creator_id"], ["users.id"], name="fk_chat_rooms_creator_id_users"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "room_members",
        sa.Column("room_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("role", sa.SmallInteger, nullable=False, server_default="2"),
        sa.Column("nickname", sa.String(100)),
        sa.Column("mute_until", sa.DateTime),
        sa.Column("joined_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("room_id", "user_id", name="pk_room_members"),
        sa.ForeignKeyConstraint(["room_id"], ["chat_rooms.id"], ondelete="CASCADE",
                                name="fk_room_members_room_id_chat_rooms"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_room_members_user_id_users"),
    )
    op.create_index("ix_room_members_user_id", "room_members", ["user_id"])
    op.create_table(
        "chat_messages",
        sa.Column("id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("sender_id", Id, nullable=False),
        sa.Column("type", sa.String(20), nullable=False, server_default="text"),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("client_msg_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("is_deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("recalled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name="pk_chat_messages"),
        sa.UniqueConstraint("room_id", "seq", name="uq_chat_messages_room_id_seq"),
        sa.UniqueConstraint("sender_id", "client_msg_id", name="uq_chat_messages_sender_id_client_msg_id"),
    )
    op.create_table(
        "join_requests",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("id", name="pk_join_requests"),
        sa.UniqueConstraint("room_id", "user_id", name="uq_join_requests_room_id_user_id"),
        sa.ForeignKeyConstraint(["room_id"], ["chat_rooms.id"], ondelete="CASCADE",
                                name="fk_join_requests_room_id_chat_rooms"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_join_requests_user_id_users"),
        sqlite_autoincrement=True,  # a stale approve must never hit a newer request with a reused id
    )
    op.create_table(
        "room_cursors",
        sa.Column("room_id", Id, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("delivered_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("read_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("room_id", "user_id", name="pk_room_cursors"),
    )


def downgrade() -> None:
    for table in ("room_cursors", "join_requests", "chat_messages", "room_members", "chat_rooms", "users"):
        op.drop_table(table)
