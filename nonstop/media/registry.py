"""SourceRegistry: the one owner of all live sources in a worker: create, look up, free idle ones.

SRS before 6.0 never freed a source, so memory grew with every stream name ever used (#413, #1509); since 6.0
it frees one about 3 s after it died. We free from day one: a source with no publisher and no player is
freed SOURCE_IDLE_FREE_S after it became idle, by a sweep the worker runs every second.
"""

from __future__ import annotations

import os

from nonstop.media.source import Source

# SRS 6 frees a dead source after ~3 s; keeping it a little while lets a publisher that reconnects at once
# keep its players' timeline. With a 1 s sweep, a source is freed within 4 s (the contract is 5 s).
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

    def get(self, vhost: str, app: str, stream: str) -> Source | None:
        return self.sources.get(source_key(vhost, app, stream))

    def fetch_or_create(self, vhost: str, app: str, stream: str, now: float, **settings) -> Source:
        key = source_key(vhost, app, stream)
        source = self.sources.get(key)
        if source is None:
            source = Source(key, vhost, app, stream, source_id=new_id("vid-"), **settings)
            source.created_at = now
            source.idle_since = now
            self.sources[key] = source
            self.created_total += 1
        return source

    def adopt(self, source: Source) -> None:
        """Take a source restored from a handover."""
        self.sources[source.key] = source
        self.created_total += 1

    def by_id(self, source_id: str) -> Source | None:
        for source in self.sources.values():
            if source.id == source_id:
                return source
        return None

    def sweep(self, now: float) -> list[Source]:
        """Free every source idle for SOURCE_IDLE_FREE_S; returns those freed (for the log)."""
        freed = []
        for key, source in list(self.sources.items()):
            if source.is_idle() and source.idle_since is not None and now - source.idle_since >= SOURCE_IDLE_FREE_S:
                del self.sources[key]
                freed.append(source)
        self.freed_total += len(freed)
        return freed

    def remove(self, source: Source) -> None:
        if self.sources.get(source.key) is source:
            del self.sources[source.key]
            self.freed_total += 1

    def __len__(self) -> int:
        return len(self.sources)
