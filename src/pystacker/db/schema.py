"""The tables. Column names follow GoStacker's schema where it has one.

Differences on purpose: one `room_members` table instead of a table per room; members get real roles
(owner 0, admin 1, member 2); messages carry a dense per-room `seq` and the sender's `client_msg_id`;
`join_requests` refuses a second pending request for the same room and user.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.dialects import mysql

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
Id = BigInteger().with_variant(Integer(), "sqlite")
# Device ids are printable ASCII compared byte for byte ("Phone" is not "phone"): MySQL's default
# collations would fold case in the unique key.
DeviceId = String(64).with_variant(mysql.VARCHAR(64, charset="ascii", collation="ascii_bin"), "mysql", "mariadb")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

ROLE_OWNER = 0
ROLE_ADMIN = 1
ROLE_MEMBER = 2

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(50), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("nickname", String(50), nullable=False, server_default=""),
    Column("avatar_url", String(255)),
    Column("is_banned", Boolean, nullable=False, server_default=false()),
    Column("last_login_at", DateTime(timezone=False)),
    Column("created_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
    Column("updated_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
    sqlite_autoincrement=True,
)
# (migration 0001 also makes usernames unique without case on SQLite and PostgreSQL.)

chat_rooms = Table(
    "chat_rooms",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("is_group", Boolean, nullable=False),
    Column("creator_id", Id, ForeignKey("users.id"), nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
    # The version of the room's roster (the membership write-back cache) that room_members holds: the
    # flusher writes only a newer one, and a roster loaded from SQL goes on counting from here.
    Column("members_version", BigInteger, nullable=False, server_default="0"),
    sqlite_autoincrement=True,
)

room_members = Table(
    "room_members",
    metadata,
    Column("room_id", Id, ForeignKey("chat_rooms.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", SmallInteger, nullable=False, server_default=str(ROLE_MEMBER)),
    Column("nickname", String(100)),
    Column("mute_until", DateTime(timezone=False)),
    Column("joined_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
    Index(None, "user_id"),
)

chat_messages = Table(
    "chat_messages",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),  # snowflake msgID
    Column("room_id", Id, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sender_id", Id, nullable=False),
    Column("type", String(20), nullable=False, server_default="text"),
    Column("content", Text, nullable=False),  # the payload JSON without its "type" key, as GoStacker
    Column("client_msg_id", String(64)),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("is_deleted", Boolean, nullable=False, server_default=false()),
    Column("recalled", Boolean, nullable=False, server_default=false()),
    # The message this one answers (a message of the same room).
    Column("reply_to", BigInteger),
    # A room event's message (edit, recall, reaction: messaging/lifecycle.py); its edit rows are found
    # by it when the message is recalled.
    Column("target_id", BigInteger),
    # A message's state after room events, applied by the flusher; `rev_seq` is the seq of the last
    # event applied, so that an event applied twice or late changes nothing.
    Column("edited_at", DateTime(timezone=False)),
    Column("recalled_by", BigInteger),
    Column("recalled_at", DateTime(timezone=False)),
    Column("rev_seq", BigInteger, nullable=False, server_default="0"),
    # How many messages the room holds up to this row (a room event adds none): unread counts.
    Column("msg_no", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("room_id", "seq"),
    # A retried send carries the same client_msg_id; at most one entry per room, sender and key (the
    # engines' idempotency scope: on a Redis Cluster a key must live in its room's slot).
    UniqueConstraint("room_id", "sender_id", "client_msg_id"),
    Index(None, "target_id"),
)

# Emoji are compared byte for byte (MySQL's default collations would fold some of them together).
Emoji = String(32).with_variant(mysql.VARCHAR(32, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb")

# Who reacted to which message with which emoji (written when the reaction is made).
message_reactions = Table(
    "message_reactions",
    metadata,
    Column("message_id", BigInteger, primary_key=True),
    Column("user_id", Id, primary_key=True),
    Column("emoji", Emoji, primary_key=True),
    Column("room_id", Id, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
)

# Messages a user deleted for himself: left out of his history on every device.
hidden_messages = Table(
    "hidden_messages",
    metadata,
    Column("user_id", Id, primary_key=True),
    Column("message_id", BigInteger, primary_key=True),
    Column("room_id", Id, nullable=False),
    Column("hidden_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
)

join_requests = Table(
    "join_requests",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("room_id", Id, ForeignKey("chat_rooms.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("message", Text),
    Column("created_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
    # Requests are deleted when answered, so this refuses only a second *pending* request.
    UniqueConstraint("room_id", "user_id"),
    sqlite_autoincrement=True,
)

# How far each member has received and read a room; the catch-up of old clients starts here.
room_cursors = Table(
    "room_cursors",
    metadata,
    Column("room_id", Id, primary_key=True),
    Column("user_id", Id, primary_key=True),
    Column("delivered_seq", BigInteger, nullable=False, server_default="0"),
    Column("read_seq", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
)


# A user's named devices (the `default` device uses room_cursors): the key their cursors are kept
# under, and when each was last seen (a device unseen for limits.device_ttl is forgotten).
devices = Table(
    "devices",
    metadata,
    Column("device_key", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, nullable=False),
    Column("device_id", DeviceId, nullable=False),
    Column("last_seen_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
    UniqueConstraint("user_id", "device_id"),
    Index(None, "last_seen_at"),
)

device_cursors = Table(
    "device_cursors",
    metadata,
    Column("device_key", Id, primary_key=True),
    Column("room_id", Id, primary_key=True),
    Column("delivered_seq", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=False), nullable=False, server_default=func.current_timestamp()),
)
