"""The edge (`cluster { mode remote; origin a b; }`): EdgeIngester pulls a stream from an origin for every
player of it on this edge; EdgeForwarder pushes a stream published on this edge to an origin.

Both keep their upstream alive through an UpstreamLink (round robin with health, backoff, redirects). Their
states and log lines are SRS's (srs_app_edge.cpp), so SRS users can grep the same words:
`edge change from 100 to state 101 (pull).`, `edge change from 101 to 300 then 0 (init).`,
`edge change from 0 to state 200 (push).`, `edge change from 200 to state 0 (init).`

**Pull.** The ingester is the source's publisher from the first player on, so every player of the stream,
RTMP or HTTP-FLV, joins the one shared source: 100 players make one upstream connection. HLS viewers keep it
too (Cluster.on_hls_play, Cluster.sweep): the source's segmenter cuts what the pull brings. While the
upstream is gone the players stay, fed nothing; a new upstream session is joined on through Resync. When no
player is left for `linger` ms, the pull stops and the source is freed like any idle one.

**Push.** The forwarder is a Consumer of the local publisher's source: the origin gets the very bytes the
edge's RTMP players get (same chunk size, message stream 1), and after a failover the next origin gets the
metadata, the sequence headers and the GOP, exactly what a new player gets. The publisher never notices.
SRS disconnects an edge's publisher when its origin dies (srs-reference §4).
"""

from __future__ import annotations

import time

from nonstop.cluster.link import UpstreamLink
from nonstop.cluster.resync import IDLE, PASS, WALK, Resync
from nonstop.cluster.upstream import OUT_FAILED, PULL, PUSH, UpstreamConnection
from nonstop.log import log
from nonstop.media.consumer import Consumer
from nonstop.media.packet import rtmp_format
from nonstop.protocol.rtmp import PLAY_STREAM_ID

# SRS's SrsEdgeState values, printed in its state-change lines.
EDGE_INIT = 0
EDGE_PLAY = 100
EDGE_INGEST_CONNECTED = 101
EDGE_PUBLISH = 200
EDGE_INGEST_STOPPING = 300

# Origin status codes that mean its publisher changed: what follows may be another stream.
PUBLISHER_CHANGED = ("NetStream.Play.UnpublishNotify", "NetStream.Play.PublishNotify")


class EdgeIngester(UpstreamLink):
    """One stream's pull: the source's publisher on this edge."""

    role = PULL
    kind = "edge-pull"

    def __init__(self, source, vhost, pool, **kwargs):
        super().__init__(source, vhost, pool, **kwargs)
        self.state = EDGE_INIT
        self.resync = Resync()
        self.empty_since: float | None = None     # since when no player is left (linger)
        # HLS requests were held for this pull's first segment (Cluster.on_hls_play): if none came by the time
        # they gave up, the origin has nothing for them and the pull stops at once, with no linger.
        self.hls_waited = False
        self.ip = ""                              # the origin's host, for APIs listing publishers

    def start(self, now: float) -> None:
        source = self.source
        source.attach_publisher(self, now)
        self.state = EDGE_PLAY
        log.trace(self.cid, f"edge pull {self.key} from {', '.join(o.address for o in self.pool.origins)}"
                            + (f", query={self.query}" if self.query else ""))
        self.start_loop()

    def started(self, up: UpstreamConnection) -> None:
        self.ip = up.target.host
        if self.state == EDGE_PLAY:
            self.state = EDGE_INGEST_CONNECTED
            log.trace(self.cid, f"edge change from {EDGE_PLAY} to state {EDGE_INGEST_CONNECTED} (pull).")
        log.trace(self.cid, f"edge pull {self.key}: playing from {up.address}, url={up.target.tc_url}/"
                            f"{up.target.stream}, session {self.sessions}")
        self.resync.begin()

    def on_upstream_media(self, up: UpstreamConnection, event) -> None:
        mode = self.resync.mode
        if self.resync.admit(self.source, event.type_id, event.timestamp, event.payload) is PASS:
            self.source.on_media(event.type_id, event.timestamp, event.payload, time.monotonic())
        if mode != IDLE and self.resync.mode == IDLE:
            how = "continuing the players' timeline exactly" if mode == WALK else "from a new keyframe"
            log.trace(self.cid, f"edge pull {self.key}: joined the upstream session from {up.address} {how}, "
                                f"{self.resync.skipped} messages the players already had skipped")

    def on_upstream_status(self, up: UpstreamConnection, status) -> None:
        if status.code in PUBLISHER_CHANGED:
            log.trace(self.cid, f"edge pull {self.key}: origin {up.address} says {status.code}")
            self.resync.begin()

    def stop(self, now: float, reason: str, *, unpublish: bool = True) -> None:
        """Stop pulling. `unpublish` ends the source's stream as a publisher leaving would (its players are
        told); without it the source is left for a local publisher to take over."""
        if self.stopped:
            return
        self.stop_link(reason)
        previous, self.state = self.state, EDGE_INIT
        log.trace(self.cid, f"edge change from {previous} to {EDGE_INGEST_STOPPING} then {EDGE_INIT} (init).")
        log.trace(self.cid, f"edge pull {self.key} stopped after {self.attempts} attempts: {reason}")
        if self.source.publisher is self:
            if unpublish:
                self.source.on_unpublish(now)
            else:
                self.source.release_publisher(self)

    def snapshot(self) -> dict:
        snap = super().snapshot()
        snap.update(state=self.state, resync=self.resync.snapshot(), empty_since=self.empty_since,
                    hls_waited=self.hls_waited)
        return snap


class EdgeForwarder(UpstreamLink):
    """One locally published stream's push to an origin; the publisher connection stays ours."""

    role = PUSH
    kind = "edge-push"

    def __init__(self, source, vhost, pool, publisher, **kwargs):
        super().__init__(source, vhost, pool, **kwargs)
        self.publisher = publisher
        self.state = EDGE_INIT
        self.consumer: Consumer | None = None

    def start(self, now: float) -> None:
        self.state = EDGE_PUBLISH
        log.trace(self.cid, f"edge change from {EDGE_INIT} to state {EDGE_PUBLISH} (push).")
        log.trace(self.cid, f"edge push {self.key} to {', '.join(o.address for o in self.pool.origins)}"
                            + (f", query={self.query}" if self.query else ""))
        self.start_loop()

    def started(self, up: UpstreamConnection) -> None:
        now = time.monotonic()
        if self.source.publisher is not self.publisher:
            self.stop(now, "the publisher left while the upstream started")
            return
        if up.stream_id != PLAY_STREAM_ID:
            # The shared bytes carry message stream 1 (what SRS, nginx-rtmp and nonstop answer createStream
            # with); an origin that counts streams otherwise gets them anyway, and most accept them.
            log.warn(self.cid, f"edge push {self.key}: {up.address} gave message stream {up.stream_id}, "
                               f"media goes on stream {PLAY_STREAM_ID}")
        log.trace(self.cid, f"edge push {self.key}: publishing to {up.address}, url={up.target.tc_url}/"
                            f"{up.target.stream}, session {self.sessions}")
        self.consumer = Consumer(self.source, rtmp_format(self.chunk_size), self)
        self.consumer.start(now)

    def ended(self, up: UpstreamConnection) -> None:
        if self.consumer is not None:
            self.consumer.stop(time.monotonic())
            self.consumer = None

    def on_upstream_writable(self, up: UpstreamConnection) -> None:
        if self.consumer is not None:
            self.consumer.flush(time.monotonic())

    def stop(self, now: float, reason: str) -> None:
        if self.stopped:
            return
        self.stop_link(reason)
        if self.consumer is not None:
            self.consumer.stop(now)
            self.consumer = None
        previous, self.state = self.state, EDGE_INIT
        log.trace(self.cid, f"edge change from {previous} to state {EDGE_INIT} (init).")
        log.trace(self.cid, f"edge push {self.key} stopped after {self.attempts} attempts: {reason}")

    # ----- the Consumer's sink: what the source tells a player -----------------------------------------

    @property
    def transport(self):
        return self.upstream.transport if self.upstream is not None else None

    def kick(self, reason: str) -> None:
        """The origin does not keep up: treat it as a failed upstream and go to the next one."""
        if self.upstream is not None:
            self.upstream.end(OUT_FAILED, f"origin too slow: {reason}")

    def on_source_unpublish(self) -> None:
        self.stop(time.monotonic(), "the publisher left")

    def on_source_publish(self) -> None:
        pass

    def snapshot(self) -> dict:
        snap = super().snapshot()
        snap.update(state=self.state, publisher=getattr(self.publisher, "cid", ""),
                    consumer=self.consumer.snapshot() if self.consumer is not None else None)
        return snap
