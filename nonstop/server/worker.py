"""Worker: serves every connection of one nonstop process generation.

It owns the connections, the SourceRegistry and one periodic tick (not a task per connection): every
FLUSH_TICK_S it flushes sources whose players wait for data (a publisher that paused), and every second it
checks connection deadlines and frees idle sources. Listening sockets come from outside (the master, or the
single-process runner) and are only wrapped here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from nonstop import SERVER_NAME
from nonstop.access.gate import Access
from nonstop.cluster.manager import Cluster
from nonstop.log import log
from nonstop.master.sockets import RTMP as LISTENER_RTMP   # listener kinds are the master's (master/sockets.py)
from nonstop.media.hls import HlsIndex, Segmenter, settings_from_config
from nonstop.media.registry import SourceRegistry, new_id
from nonstop.server.hls_http import HlsSessions
from nonstop.server.http_conn import HttpConnection, mount_pattern
from nonstop.server.rtmp_conn import RtmpConnection

# The stale-flush tick: players of a source whose publisher paused still get what is pending within this.
FLUSH_TICK_S = 0.05
# Deadlines (handshake, publisher timeouts) and idle sources are checked once a second.
SWEEP_EVERY_S = 1.0
# A tick this late means the process did not run (SIGSTOP, a VM pause, a swapped-out page storm): the sockets
# hold data nobody has read yet, so the sweep waits for the loop to poll them once before judging anyone idle.
LATE_TICK_S = 0.5


class Worker:
    def __init__(self, config, *, server_id: str | None = None, service_id: str | None = None):
        self.config = config
        self.registry = SourceRegistry()
        self.conns: dict[str, object] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.server_id = server_id or new_id("vid-")
        self.service_id = service_id or new_id()
        self.started_at = time.time()
        self._flv_routes: list = []
        self._api_apps: dict[str, object] = {}
        self._tick_task: asyncio.Task | None = None
        self.draining = False
        # Readiness for new connections (/readyz): set by the lifecycle (nonstop/server/lifecycle.py), false
        # from the moment a graceful quit starts.
        self.ready = True
        # Totals that outlive connections (one owner: the worker).
        self.accepted_total = 0
        self.rejected_total = 0
        self.closed_send_bytes = 0
        self.closed_recv_bytes = 0
        # Messages skipped for slow players whose play has ended (live players hold their own count).
        self.closed_dropped = 0
        # Upgrades: this worker's generation and the master's view of the last upgrade (for the API), what an
        # earlier worker counted (api/metrics.py), and the handover under way as the receiving worker.
        self.generation = 1
        self.upgrade_info: dict | None = None
        self.workers_info: list[dict] = []      # the master's worker list, as it last told (master/upgrading.py)
        self.carried_totals: dict = {}
        self.taking_over = False
        self.adopted_sources = 0
        self.on_adopt_source = None     # test hook (worker_main: NONSTOP_TEST_UPGRADE_FAIL=handover)
        self._waiting_flv: list = []
        # HLS (nonstop/media/hls.py, server/hls_http.py): which segmenter serves which path, and the viewers.
        self.hls_index = HlsIndex()
        self.hls_sessions = HlsSessions()
        self.apply_config(config)
        # Origin cluster and edge (nonstop/cluster): hooks in the connections, the sweep and stop.
        self.cluster = Cluster(self)
        # Access control (nonstop/access): security, refer, signed URLs, http_hooks. It reads the config in
        # force at each question, so a reload applies to new requests; granted verdicts are kept.
        self.access = Access(self)

    # ----- configuration ---------------------------------------------------------------------------------

    def apply_config(self, config) -> None:
        self.config = config
        self._flv_routes = [(mount_pattern(v.http_remux.mount, v.name), v)
                            for v in config.vhosts.values() if v.enabled and v.http_remux.enabled]

    def server_info(self) -> dict:
        return {"srs_id": self.server_id, "service_id": self.service_id, "pid": float(os.getpid())}

    # ----- listeners -------------------------------------------------------------------------------------

    async def serve(self, sockets: dict[str, list[socket.socket]]) -> None:
        """Start serving on already-bound listening sockets, by kind (rtmp, http, api)."""
        loop = asyncio.get_running_loop()
        for kind, socks in sockets.items():
            for sock in socks:
                factory = self._factory(kind)
                self.servers.append(await loop.create_server(factory, sock=sock, backlog=4096))
        if self._tick_task is None:
            self._tick_task = loop.create_task(self._tick())

    def _factory(self, kind: str):
        if kind == LISTENER_RTMP:
            return lambda: RtmpConnection(self, kind)
        return lambda: HttpConnection(self, kind)

    def set_api_app(self, kind: str, app) -> None:
        """The API application that takes non-FLV requests on an HTTP listener of this kind."""
        self._api_apps[kind] = app

    def api_app_for(self, kind: str):
        return self._api_apps.get(kind)

    async def close_listeners(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()

    # ----- connections -----------------------------------------------------------------------------------

    def admit(self, conn) -> bool:
        """Enforce max_connections at accept: all TCP connections counted together, as SRS does."""
        if len(self.conns) >= self.config.max_connections:
            self.rejected_total += 1
            log.warn(conn.cid, f"reject connection from {conn.ip}: max_connections {self.config.max_connections} "
                               f"reached")
            conn.closed = True
            conn.transport.close()
            return False
        self.accepted_total += 1
        self.conns[conn.cid] = conn
        log.verbose(conn.cid, f"accept {conn.kind} connection from {conn.ip}")
        return True

    def forget(self, conn) -> None:
        if self.conns.pop(conn.cid, None) is conn and not getattr(conn, "handed_over", False):
            # A handed-over connection's counters moved with it: the new worker counts them.
            self.closed_send_bytes += conn.send_bytes
            self.closed_recv_bytes += conn.recv_bytes

    def fetch_source(self, vhost, app: str, stream: str, now: float):
        play = vhost.play
        source = self.registry.fetch_or_create(
            vhost.name, app, stream, now,
            gop_cache=play.gop_cache, gop_cache_max_frames=play.gop_cache_max_frames,
            gop_cache_max_bytes=play.gop_cache_max_bytes,
            queue_length_ms=int(play.queue_length * 1000), time_jitter=play.time_jitter,
            mw_latency_ms=play.mw_latency, mw_msgs=play.mw_msgs, min_latency=vhost.min_latency)
        if source.hls is None and vhost.hls.enabled:
            # One segmenter per stream, fed by the source's publish path, whoever plays.
            source.hls = Segmenter(settings_from_config(vhost.hls), vhost.name, app, stream, self.hls_index,
                                   cid=source.id)
        return source

    def match_flv(self, path: str):
        for pattern, vhost in self._flv_routes:
            m = pattern.match(path)
            if m:
                return vhost, m.group("app"), m.group("stream")
        return None

    # ----- the tick ----------------------------------------------------------------------------------------

    async def _tick(self) -> None:
        next_sweep = time.monotonic() + SWEEP_EVERY_S
        last = time.monotonic()
        deferred = False
        while True:
            await asyncio.sleep(FLUSH_TICK_S)
            now = time.monotonic()
            late = now - last - FLUSH_TICK_S
            last = now
            try:
                for source in list(self.registry.sources.values()):
                    if source.consumers and source.has_unflushed() and \
                            (now - source.flushed_at) * 1000 >= source.mw_latency_ms:
                        source.flush(now)
                if now >= next_sweep:
                    if late > LATE_TICK_S and not deferred:
                        # Read before judging: this timer may have fired before the I/O that piled up during
                        # the stall was polled. The next tick comes after at least one poll of every socket (and
                        # a publisher's unread bytes also spare it in check_deadline). Deferred once only, so
                        # a loop that is late at every tick (overload) still sweeps.
                        deferred = True
                        log.warn("tick", f"the worker did not run for {late:.1f}s; deadline checks wait for the "
                                         f"pending input to be read")
                    else:
                        deferred = False
                        next_sweep = now + SWEEP_EVERY_S
                        self.sweep(now)
            except Exception as e:  # the tick must never die: log it and go on
                log.error("tick", f"tick failed: {e!r}")

    def sweep(self, now: float) -> None:
        for conn in list(self.conns.values()):
            conn.check_deadline(now)
        self.cluster.sweep(now)
        for source in self.registry.sweep(now):
            log.trace("sweep", f"free source {source.key} (idle)")
        for segmenter in self.hls_index.sweep(now):
            log.trace("sweep", f"hls {segmenter.m3u8_name} disposed (no publisher for {segmenter.linger_s():.0f}s)")
        self.hls_sessions.sweep(now)
        if self.draining:
            for conn in list(self.conns.values()):
                if conn.kind == "http" and not conn.role and conn.deadline is not None and not conn.url \
                        and not conn.left_behind:   # a response left behind by a handover drains first (I5)
                    conn.close("draining: idle keep-alive closed")

    # ----- stats ------------------------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        send = self.closed_send_bytes + sum(c.send_bytes for c in self.conns.values())
        recv = self.closed_recv_bytes + sum(c.recv_bytes for c in self.conns.values())
        return send, recv

    def summary_line(self) -> str:
        return f"{SERVER_NAME} conns={len(self.conns)} sources={len(self.registry)}"

    # ----- handover ---------------------------------------------------------------------------------------

    def adopt_source(self, source) -> None:
        """A source handed over by an upgrade's old worker (transfer.py registers it with its connections in
        one step). Players that joined here before it arrived move to it: their consumer is the one owner of
        which source they play (the connections ask it), so the next handover moves them with it too."""
        self.adopted_sources += 1
        if self.on_adopt_source is not None:
            self.on_adopt_source(self.adopted_sources)
        existing = self.registry.sources.get(source.key)
        self.registry.adopt(source)
        if source.hls is not None:
            source.hls.attach(self.hls_index)
        else:
            vhost = self.config.vhosts.get(source.vhost)
            if vhost is not None and vhost.hls.enabled:
                # From a build or a config without HLS: start segmenting here, at the next keyframe.
                source.hls = Segmenter(settings_from_config(vhost.hls), source.vhost, source.app, source.stream,
                                       self.hls_index, cid=source.id)
        if existing is not None and existing is not source:
            # Players that joined here before the handover restart on the handed-over source, at its GOP.
            now = time.monotonic()
            existing.on_idle = None
            for consumer in list(existing.consumers):
                existing.consumers.discard(consumer)
                consumer.source = source
                consumer.start(now)
        self.cluster.adopt_source(source)   # an edge source: re-establish its upstream (nonstop/cluster)

    def wait_for_takeover(self, conn) -> bool:
        """An HTTP-FLV play of a stream not here yet (or here without its publisher), while an upgrade's
        handover is under way: the stream may be on its way, so the play waits for it (until its publisher is
        attached, or the handover ends) instead of a 404."""
        if not self.taking_over:
            return False
        self._waiting_flv.append(conn)
        return True

    def retry_waiting_flv(self, key=None) -> None:
        waiting, self._waiting_flv = self._waiting_flv, []
        for conn in waiting:
            if conn.closed:
                continue
            if key is not None and conn.wanted_key != key:
                self._waiting_flv.append(conn)
                continue
            conn.retry_play()

    def restore_connection(self, snap: dict, source):
        """A connection restored from a handover snapshot, of the stream whose source comes in the same batch
        (None for a connection with no stream). Raises if it cannot be restored; nothing is registered
        until transfer.py commits the batch."""
        cls = RtmpConnection if snap["kind"] == "rtmp" else HttpConnection
        return cls.restore(self, snap, source)

    def register_restored(self, conn) -> None:
        self.conns[conn.cid] = conn

    # ----- quitting -----------------------------------------------------------------------------------------

    def close_all(self, reason: str) -> None:
        for conn in list(self.conns.values()):
            conn.close(reason)

    async def stop(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            self._tick_task = None
        await self.close_listeners()
        await self.cluster.stop()
        self.close_all("server quit")
        self.hls_sessions.end_all("server quit")      # each HLS viewer's on_stop, as the closes' above
        await self.access.stop()    # the notifications the closes owe, bounded by the hook timeout


