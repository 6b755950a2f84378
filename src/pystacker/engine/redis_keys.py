"""Every Redis key and channel name of the `redis` engine, in one place.

Where GoStacker has a key, we keep its name (spec Appendix A), so its tools and dashboards still find
them: `<gateway_id>_stream` with group `<gateway_id>_group`, `registry:gateway:<id>`,
`registry:gateway:instances`, `registry:send:<id>`, `registry:send:instances`, `route:user:<uid>`.

Our own keys are laid out for Redis Cluster, which runs a Lua script only if all its keys hash to one
slot. A room's keys (seq counter, window, unflushed seqs, idempotency keys) and the flush queue they
feed must change together in one script, so they share a hash tag: the room's *partition*
(room_id % partitions), e.g. `{pystacker:p3}:seq:1234`. Partitions (16 by default) spread the message
log over up to that many slots; more would mean more flush queues for the flusher to poll. Cursors use
their own partitions (by user id) so that a cursor and its dirty mark move in one script.

The number of partitions is part of the key layout: changing it on a store that holds unflushed
messages orphans them (and their seq counters). Drain the flusher first.

An optional prefix goes in front of every key and channel, *inside* the hash tags, so that a prefixed
store (tests, or two deployments sharing one Redis) keeps the same slot grouping.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PARTITIONS = 16


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = ""
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        # A brace in the prefix would start a different hash tag than the one we mean.
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"a Redis key prefix cannot contain braces: {self.prefix!r}")
        if self.partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {self.partitions}")

    # -- inbox (GoStacker's names) --------------------------------------------------------------------

    def stream(self, gateway_id: str) -> str:
        return f"{self.prefix}{gateway_id}_stream"

    @staticmethod
    def group(gateway_id: str) -> str:
        return f"{gateway_id}_group"

    @property
    def inbox_gateways(self) -> str:
        """SET of the gateway ids that have a stream: msgflusher visits them, live or not."""
        return f"{self.prefix}pystacker:inbox:gateways"

    # -- message log (one hash tag per room partition) -----------------------------------------------

    def room_partition(self, room_id: int) -> int:
        return room_id % self.partitions

    def _log_tag(self, partition: int) -> str:
        return f"{{{self.prefix}pystacker:p{partition}}}"

    def seq(self, room_id: int) -> str:
        """STRING: the room's last allocated seq."""
        return f"{self._log_tag(self.room_partition(room_id))}:seq:{room_id}"

    def window(self, room_id: int) -> str:
        """ZSET: the room's recent messages (JSON), scored by seq."""
        return f"{self._log_tag(self.room_partition(room_id))}:win:{room_id}"

    def unflushed(self, room_id: int) -> str:
        """ZSET: the seqs of the room's messages SQL does not have yet (member = score = seq)."""
        return f"{self._log_tag(self.room_partition(room_id))}:unfl:{room_id}"

    def idempotency(self, room_id: int, sender_id: int, client_msg_id: str) -> str:
        """STRING with a TTL: the first message sent under this key (JSON)."""
        return f"{self._log_tag(self.room_partition(room_id))}:idem:{room_id}:{sender_id}:{client_msg_id}"

    def msg_no(self, room_id: int) -> str:
        """The msg_no of the room's last entry: how many messages its log holds (seeded with `seq`)."""
        return f"{self._log_tag(self.room_partition(room_id))}:mno:{room_id}"

    def revision(self, room_id: int, msg_id: int) -> str:
        """STRING: the revision record of a message that room events changed (base.TargetChange)."""
        return f"{self._log_tag(self.room_partition(room_id))}:rev:{room_id}:{msg_id}"

    def unflushed_ids(self, partition: int) -> str:
        """HASH: msg id -> "<room>:<seq>" of the partition's messages SQL does not have yet, so that a
        message can be found by id alone before the flusher wrote it."""
        return f"{self._log_tag(partition)}:unfl:ids"

    def flush(self, partition: int) -> str:
        """STREAM: the partition's messages waiting for SQL, read through a consumer group."""
        return f"{self._log_tag(partition)}:flush"

    def flush_clock(self, partition: int) -> str:
        """STRING: the last flush entry id's time part (microseconds), kept strictly increasing."""
        return f"{self._log_tag(partition)}:flush:clock"

    def room_keys(self, room_id: int) -> list[str]:
        """The keys an append touches (besides the idempotency key), in the order the scripts take them."""
        partition = self.room_partition(room_id)
        return [self.seq(room_id), self.window(room_id), self.unflushed(room_id), self.flush(partition),
                self.flush_clock(partition), self.unflushed_ids(partition), self.msg_no(room_id)]

    # -- rosters (the room's partition: a roster and its dirty mark change in one script) -------------

    def roster(self, room_id: int) -> str:
        """HASH: field "v" = the roster's version; each other field a member's user id -> entry (JSON)."""
        return f"{self._log_tag(self.room_partition(room_id))}:roster:{room_id}"

    def dirty_rosters(self, partition: int) -> str:
        """ZSET: rooms of the partition whose roster changed since flushed, scored by the first change."""
        return f"{self._log_tag(partition)}:roster:dirty"

    # -- cursors (one hash tag per user partition) ---------------------------------------------------------

    def user_partition(self, user_id: int) -> int:
        return user_id % self.partitions

    def _cursor_tag(self, partition: int) -> str:
        return f"{{{self.prefix}pystacker:c{partition}}}"

    def cursors(self, user_id: int) -> str:
        """HASH: room id -> delivered seq, for one user."""
        return f"{self._cursor_tag(self.user_partition(user_id))}:cur:{user_id}"

    def dirty_cursors(self, partition: int) -> str:
        """ZSET: "<user>:<room>:<seq>" of cursors changed since taken, scored by when they first changed."""
        return f"{self._cursor_tag(partition)}:dirty"

    def read_marks(self, user_id: int) -> str:
        """HASH: room id -> the seq the user has read up to (his read state), for one user."""
        return f"{self._cursor_tag(self.user_partition(user_id))}:read:{user_id}"

    def dirty_read_marks(self, partition: int) -> str:
        """ZSET: "<user>:<room>:<seq>" of read marks changed since taken, like dirty_cursors."""
        return f"{self._cursor_tag(partition)}:read:dirty"

    def device_cursors(self, device_key: int) -> str:
        """HASH: room id -> delivered seq, for one named device (partitioned by its device key)."""
        return f"{self._cursor_tag(self.user_partition(device_key))}:dcur:{device_key}"

    def dirty_device_cursors(self, partition: int) -> str:
        """ZSET: "<device key>:<room>:<seq>" of device cursors changed since taken, like dirty_cursors."""
        return f"{self._cursor_tag(partition)}:dcur:dirty"

    # -- registry (GoStacker's names) ----------------------------------------------------------------------

    def gateway(self, gateway_id: str) -> str:
        return f"{self.prefix}registry:gateway:{gateway_id}"

    @property
    def gateway_instances(self) -> str:
        return f"{self.prefix}registry:gateway:instances"

    def send(self, instance_id: str) -> str:
        return f"{self.prefix}registry:send:{instance_id}"

    @property
    def send_instances(self) -> str:
        return f"{self.prefix}registry:send:instances"

    def route(self, user_id: int) -> str:
        return f"{self.prefix}route:user:{user_id}"

    def last_seen(self, user_id: int) -> str:
        """STRING: unix seconds when the user's last device left (presence), with a TTL."""
        return f"{self.prefix}presence:seen:{user_id}"

    # -- bus ----------------------------------------------------------------------------------------------

    def channel(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def channel_name(self, channel: str) -> str:
        """The bus channel a Redis channel carries (the prefix removed)."""
        return channel[len(self.prefix):] if channel.startswith(self.prefix) else channel
