"""message lifecycle: replies, room events' targets and the state they leave, message numbers, reactions, hidden messages

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Emoji = sa.String(32).with_variant(mysql.VARCHAR(32, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("chat_messages") as batch:
        batch.add_column(sa.Column("reply_to", sa.BigInteger))
        batch.add_column(sa.Column("target_id", sa.BigInteger))
        batch.add_column(sa.Column("edited_at", sa.DateTime))
        batch.add_column(sa.Column("recalled_by", sa.BigInteger))
        batch.add_column(sa.Column("recalled_at", sa.DateTime))
        batch.add_column(sa.Column("rev_seq", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("msg_no", sa.BigInteger, nullable=False, server_default="0"))
    # Every row so far is a message: the n-th of its room is its n-th message.
    op.execute("UPDATE chat_messages SET msg_no = seq")
    op.create_index("ix_chat_messages_target_id", "chat_messages", ["target_id"])
    op.create_table(
        "message_reactions",
        sa.Column("message_id", sa.BigInteger, nullable=False),
        sa.Column("user_id", Id, nullable=False),
        sa.Column("emoji", Emoji, nullable=False),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("message_id", "user_id", "emoji", name="pk_message_reactions"),
    )
    op.create_table(
        "hidden_messages",
        sa.Column("user_id", Id, nullable=False),
        sa.Column("message_id", sa.BigInteger, nullable=False),
        sa.Column("room_id", Id, nullable=False),
        sa.Column("hidden_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("user_id", "message_id", name="pk_hidden_messages"),
    )


def downgrade() -> None:
    op.drop_table("hidden_messages")
    op.drop_table("message_reactions")
    op.drop_index("ix_chat_messages_target_id", "chat_messages")
    with op.batch_alter_table("chat_messages") as batch:
        for column in ("msg_no", "rev_seq", "recalled_at", "recalled_by", "edited_at", "target_id", "reply_to"):
            batch.drop_column(column)
