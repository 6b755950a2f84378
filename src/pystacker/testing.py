"""What the tools (`pystacker bench`, `pystacker chaos`: the pystacker-tools distribution in tools/)
may rely on from inside the product.

Besides this module they use only the SDK (`pystacker.client`) and the launcher of `pystacker
cluster` (`pystacker.cluster`: `plan`, `Deployment`, `Member`, `migrate`, which the command, chaos and
the distributed tests share so that they start deployments the same way); tests/unit/test_tools_imports.py
holds them to that. Whatever else a tool needs from the inside is named here, with why, so that a change
of the product sees what the tools depend on and the tools never reach into a module. Tests may use it
too, though they are white-box and import what they test.

The bench's client processes import this module, and they must not pay for the gateway's or SQL's
imports: what needs those is a function that imports on call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pystacker.engine.base import EngineSettings

# The loop the servers run on (uvloop when installed): the bench's client processes use it too.
from pystacker.event_loop import run as run_event_loop

# The gateway's own frame encoder: the raw limit writes exactly the bytes a gateway writes.
from pystacker.gateway.wsframes import text_frame

if TYPE_CHECKING:
    from sqlalchemy import Table

__all__ = ["FLUSH_CLAIM_TIMEOUT", "WINDOW_SIZE", "catchup_batch_size", "flush_queue", "issue_token",
           "run_event_loop", "stored_messages", "text_frame"]

# The engine's fixed settings (runtime.py sets only the roster TTLs from the config): chaos waits out
# the claim timeout after killing a flusher, and sizes its reconnect storm beyond the window.
FLUSH_CLAIM_TIMEOUT = EngineSettings().flush_claim_timeout  # a batch a dead flusher took is handed out again
WINDOW_SIZE = EngineSettings().window_size  # newest messages per room the engine keeps beyond SQL


def catchup_batch_size() -> int:
    """Messages per `batch` frame of a gateway's catch-up: a reconnect storm spans several pages."""
    from pystacker.gateway.connection import BATCH_SIZE

    return BATCH_SIZE


def flush_queue(key_prefix: str) -> tuple[list[str], str]:
    """The Redis streams of the write-behind queue under `key_prefix` (one per partition) and the
    consumer group the flushers read them with: chaos counts the entries a killed flusher took and
    never confirmed (XPENDING)."""
    from pystacker.engine.redis_keys import RedisKeys
    from pystacker.engine.redis_messages import FLUSH_GROUP

    keys = RedisKeys(key_prefix)
    return [keys.flush(partition) for partition in range(keys.partitions)], FLUSH_GROUP


def stored_messages() -> Table:
    """The SQL table the flusher writes messages to: chaos judges what the clients showed against it."""
    from pystacker.db.schema import chat_messages

    return chat_messages


def issue_token(secret: str, user_id: int, username: str, lifetime_s: int) -> str:
    """A JWT the services accept, signed with the deployment's own secret: chaos registers hundreds of
    users and spares each the second bcrypt check a login costs."""
    from pystacker.web.auth import TokenService

    return TokenService(secret, lifetime_s).issue(user_id, username)
