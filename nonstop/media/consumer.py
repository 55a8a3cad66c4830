"""Consumer: one player's position in a source's shared log, and the rules for a player that falls behind.

A player's position is a number, the sequence number of the last message handed to its transport
(architecture decision 3). It is not a reference into a queue, so it survives a handover. A flush hands the
transport everything after the position in one `writelines` call, from the source's shared encoded bytes.

Memory per player is bounded twice over:
- bytes: a player whose transport holds more than MAX_BUFFERED_BYTES unsent is not given more;
- seconds: a player more than `queue_length` behind the newest message is cut back to the newest keyframe
  (the GOP cache); one that keeps falling behind is disconnected with a log line.
"""

from __future__ import annotations

# What a player's transport may hold unsent before we stop feeding it. SRS bounds its per-consumer queue
# only in seconds (30 s, ~7.5 MB at 2 Mb/s); with thousands of players that is gigabytes, so we bound the
# bytes too. 1 MiB is ~4 s of a 2 Mb/s stream, plenty for a healthy TCP path to absorb a burst (the GOP).
MAX_BUFFERED_BYTES = 1 << 20
# A player that had to be cut back this many times within CUTBACK_WINDOW_S cannot keep up: disconnect it.
MAX_CUTBACKS = 3
CUTBACK_WINDOW_S = 60.0


class Consumer:
    """A player of one source. `sink` is its connection: it has `transport`, `kick(reason)` (which must end the
    connection at once, a reset rather than a drain: the player it is called for is one that does not read),
    `on_source_unpublish()` and `on_source_publish()`."""

    __slots__ = ("source", "fmt", "sink", "position", "paused", "bytes_sent", "dropped", "cutbacks",
                 "first_cutback_at", "behind_since", "closed", "chunked")

    def __init__(self, source, fmt: str, sink):
        self.source = source
        self.fmt = fmt
        self.sink = sink
        self.position = 0
        self.paused = False
        self.bytes_sent = 0
        self.dropped = 0
        self.cutbacks = 0
        self.first_cutback_at = 0.0
        self.behind_since: float | None = None
        self.closed = False
        # HTTP/1.1 chunked transfer coding: each flush is one chunk around the shared bytes (two small framing
        # objects per flush, the tags themselves are still the shared ones).
        self.chunked = False

    def start(self, now: float) -> None:
        """Join the source: headers at once, then the GOP from the latest keyframe, then live messages."""
        source = self.source
        source.add_consumer(self)
        self.position = source.start_position()
        headers = source.header_bytes(self.fmt, self.position)
        if headers:
            size = sum(len(h) for h in headers)
            self._write(self.sink.transport, headers, size)
            self.bytes_sent += size
        self.flush(now)

    def _write(self, transport, parts: list, size: int) -> None:
        if self.chunked:
            transport.writelines([b"%x\r\n" % size, *parts, b"\r\n"])
        else:
            transport.writelines(parts)

    def attach(self, position: int) -> None:
        """Join the source at a known position (after a handover): nothing is resent, nothing skipped."""
        self.source.add_consumer(self)
        self.position = position

    def flush(self, now: float) -> None:
        source = self.source
        head = source.next_seq - 1
        if self.position >= head or self.paused or self.closed:
            return
        transport = self.sink.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            if self.behind_since is None:
                self.behind_since = now
            elif (now - self.behind_since) * 1000 > source.queue_length_ms:
                self.sink.kick(f"player too slow: {transport.get_write_buffer_size()} bytes unsent for "
                               f"{now - self.behind_since:.1f}s")
            return
        self.behind_since = None
        start = self.position + 1 - source.base_seq
        if start < 0 or source.jitter.last_out - source.packets[start].timestamp > source.queue_length_ms:
            if not self._cut_back(now):
                return
            start = self.position + 1 - source.base_seq
            if self.position >= head:
                return
        encoded = source.encodings[self.fmt]
        sizes = source.sizes[self.fmt]
        size = sizes[-1] - sizes[start]
        self._write(transport, encoded[start:], size)
        self.bytes_sent += size
        self.position = head

    def _cut_back(self, now: float) -> bool:
        """Skip to the newest keyframe (or the newest message when there is no GOP). False if kicked."""
        source = self.source
        if now - self.first_cutback_at > CUTBACK_WINDOW_S:
            self.first_cutback_at = now
            self.cutbacks = 0
        self.cutbacks += 1
        if self.cutbacks > MAX_CUTBACKS:
            self.sink.kick(f"player stays behind: cut back {MAX_CUTBACKS} times in {CUTBACK_WINDOW_S:.0f}s")
            return False
        target = source.start_position()
        if target <= self.position:
            target = source.next_seq - 1
        self.dropped += target - self.position
        self.position = target
        return True

    def detach(self) -> None:
        """Stop being fed, without leaving (a handover's quiesce, which pins the source meanwhile so it is not
        freed as idle: SourceRegistry.pin)."""
        self.source.consumers.discard(self)

    def reattach(self, now: float) -> None:
        """Be fed again after `detach` (the handover kept this player here)."""
        if not self.closed:
            self.source.consumers.add(self)
            self.flush(now)

    def stop(self, now: float) -> None:
        if not self.closed:
            self.closed = True
            self.source.remove_consumer(self, now)

    def on_source_unpublish(self) -> None:
        self.sink.on_source_unpublish()

    def on_source_publish(self) -> None:
        self.sink.on_source_publish()

    def snapshot(self) -> dict:
        return {"fmt": self.fmt, "position": self.position, "paused": self.paused,
                "bytes_sent": self.bytes_sent, "dropped": self.dropped, "chunked": self.chunked}

    def restore_counters(self, snap: dict) -> None:
        self.paused = snap["paused"]
        self.bytes_sent = snap["bytes_sent"]
        self.dropped = snap["dropped"]
        self.chunked = snap.get("chunked", False)
