"""SourceRegistry: the one owner of all live sources in a worker: create, look up, free idle ones.

SRS before 6.0 never freed a source, so memory grew with every stream name ever used (#413, #1509); since 6.0
it frees one about 3 s after it died. We free from day one, and at once: a source whose last publisher or
player leaves is freed right then (Source.on_idle), since nothing in it is of use to anyone (a player that comes
later starts at a fresh keyframe either way). Keeping dead sources for seconds would make memory follow the
rate of stream churn: 3,000 names a second kept 3 s is 9,000 sources, and an allocator rarely gives that back.
The sweep the worker runs every second frees what never had a publisher or player leave, such as a source
whose first player vanished before it attached, SOURCE_IDLE_FREE_S after it was created.

Pins (the handover's invariant I2, nonstop/handover/transfer.py): a source being received from an upgrade's
old worker is pinned until its publisher is attached or the stream is known to be gone; a pinned source is
never freed as idle, neither by `free_idle` (Source.on_idle) nor by the sweep. `unpin` frees it then if it is
idle.
"""

from __future__ import annotations

import os

from nonstop.log import log
from nonstop.media.source import Source

# The sweep's grace for a source nobody ever left (see above): long enough for a player to attach after
# creating it. With a 1 s sweep, such a source is freed within 4 s (the contract is 5 s).
SOURCE_IDLE_FREE_S = 3.0


def new_id(prefix: str = "") -> str:
    """Random ids (architecture decision 7): a per-process counter would collide after a handover."""
    return prefix + os.urandom(5).hex()


def source_key(vhost: str, app: str, stream: str) -> str:
    return f"{vhost}/{app}/{stream}"


class SourceRegistry:
    def __init__(self):
        self.sources: dict[str, Source] = {}
        self.created_total = 0
        self.freed_total = 0
        self.pinned: set[Source] = set()

    def get(self, vhost: str, app: str, stream: str) -> Source | None:
        return self.sources.get(source_key(vhost, app, stream))

    def fetch_or_create(self, vhost: str, app: str, stream: str, now: float, **settings) -> Source:
        key = source_key(vhost, app, stream)
        source = self.sources.get(key)
        if source is None:
            source = Source(key, vhost, app, stream, source_id=new_id("vid-"), **settings)
            source.created_at = now
            source.idle_since = now
            source.on_idle = self.free_idle
            self.sources[key] = source
            self.created_total += 1
        return source

    def adopt(self, source: Source) -> None:
        """Take a source restored from a handover."""
        source.on_idle = self.free_idle
        self.sources[source.key] = source
        self.created_total += 1

    def pin(self, source: Source) -> None:
        self.pinned.add(source)

    def unpin(self, source: Source) -> None:
        self.pinned.discard(source)
        if source.on_idle is not None:
            self.free_idle(source)

    def moved_away(self, source: Source) -> None:
        """The source went to another worker with its connections (an upgrade's handover): forget it here."""
        self.pinned.discard(source)
        self.remove(source)

    def by_id(self, source_id: str) -> Source | None:
        for source in self.sources.values():
            if source.id == source_id:
                return source
        return None

    def sweep(self, now: float) -> list[Source]:
        """Free every source idle for SOURCE_IDLE_FREE_S; returns those freed (for the log)."""
        freed = []
        for key, source in list(self.sources.items()):
            if source in self.pinned:
                continue
            if source.is_idle() and source.idle_since is not None and now - source.idle_since >= SOURCE_IDLE_FREE_S:
                del self.sources[key]
                source.on_idle = None
                freed.append(source)
        self.freed_total += len(freed)
        return freed

    def free_idle(self, source: Source) -> None:
        """Source.on_idle: its last publisher or player left."""
        if source.is_idle() and source not in self.pinned:
            self.remove(source)
            log.trace("source", f"free source {source.key} (idle)")

    def remove(self, source: Source) -> None:
        source.on_idle = None
        self.pinned.discard(source)
        if self.sources.get(source.key) is source:
            del self.sources[source.key]
            self.freed_total += 1

    def __len__(self) -> int:
        return len(self.sources)
