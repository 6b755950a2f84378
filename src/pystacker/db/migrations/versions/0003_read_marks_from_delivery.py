"""room_cursors.read_seq becomes the read state: rows written before it existed start at their
delivered seq (what a user was sent before read state existed is not news to him)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    cursors = sa.table("room_cursors", sa.column("delivered_seq", sa.BigInteger), sa.column("read_seq", sa.BigInteger))
    op.execute(cursors.update().where(cursors.c.read_seq < cursors.c.delivered_seq)
               .values(read_seq=cursors.c.delivered_seq))


def downgrade() -> None:
    pass  # read_seq keeps what it holds: before 0003 nothing read it
