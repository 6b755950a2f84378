"""client_msg_id is unique per room, sender and key, as the engines' idempotency scope

A client that reused a key in two rooms got two messages from the engine, and SQL kept only the first
(the second was skipped as a duplicate of it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chat_messages") as batch:
        batch.drop_constraint("uq_chat_messages_sender_id_client_msg_id", type_="unique")
        batch.create_unique_constraint("uq_chat_messages_room_id_sender_id_client_msg_id",
                                       ["room_id", "sender_id", "client_msg_id"])


def downgrade() -> None:
    with op.batch_alter_table("chat_messages") as batch:
        batch.drop_constraint("uq_chat_messages_room_id_sender_id_client_msg_id", type_="unique")
        batch.create_unique_constraint("uq_chat_messages_sender_id_client_msg_id", ["sender_id", "client_msg_id"])
