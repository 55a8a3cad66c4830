"""Cluster: the worker's one entry point into origin clusters and edges.

The connection classes call three hooks, each a line long, and go on as usual when the hook returns False:
- `on_play(conn, event)` from RtmpConnection's play, `on_flv_play(conn, ...)` from HttpConnection's play:
  on an edge, start or join the stream's upstream pull (then the play proceeds on the shared source); on an
  origin in a cluster that lacks the stream, ask the coworkers and answer with SRS's RTMP 302 (HTTP-FLV: a
  `302 Location`), else `NetStream.Play.StreamNotFound` and close (HTTP-FLV: 404). True means "answered
  here, maybe later".
- `on_publish(conn, event)` from RtmpConnection's publish: on an edge, start the push to an origin; on an
  origin in a cluster, refuse with `NetStream.Publish.BadName` a stream a coworker already has.
- `on_hls_play(path, query, host_header, now)` from hls_http.serve, for a playlist path no segmenter serves yet, and
  `hls_pull(vhost, app, stream, query, host_header, now)` for every playlist request of a stream: on an edge, start or
  join the stream's pull as a player does; the request is held by hls_http until the first segment (HLS
  viewers are not consumers: the sweep asks the worker's HLS sessions which streams they watch).
When the coworkers have answered, the connection is told what to do through its public methods (`play_local`,
`publish_local`, `answer_redirect`, `answer_stream_not_found` / `answer_not_found`, `refuse_publish`): the
protocol's answers are the connection's to write.
The worker calls `sweep(now)` every second (linger, deadlines, links whose source went away, and links to
re-establish after a handover) and `stop()` when it quits. What a play of an absent stream gets is the table
in architecture.md.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from nonstop.cluster.answer import has_stream
from nonstop.cluster.balance import OriginPool
from nonstop.cluster.coworkers import Coworkers, Hit
from nonstop.cluster.edge import EdgeForwarder, EdgeIngester
from nonstop.cluster.upstream import ENDED
from nonstop.cluster.urls import (
    DEFAULT_RTMP_PORT, flv_location, host_of_header, host_of_url, redirect_tc_url, rtmp_url, split_host_port,
)
from nonstop.log import log
from nonstop.media.hls import m3u8_pattern
from nonstop.media.registry import source_key

MODE_EDGE = "remote"
# How long stop() waits for the links' control loops to end.
STOP_WAIT_S = 2.0
# After a handover brings an edge source, its connections arrive in the frames that follow: look for them
# this often, this many times, before leaving the source to the sweep.
ADOPT_POLL_S = 0.02
ADOPT_POLL_TRIES = 50
FLV_RESOLVED = "flv"
# Query parameters of an HLS request that are the HLS server's, not tokens for the origin.
HLS_OWN_PARAMS = ("hls_ctx", "_HLS_msn", "_HLS_part", "_HLS_skip")


class Cluster:
    def __init__(self, worker):
        self.worker = worker
        self.coworkers = Coworkers(worker.server_id)
        self.ingesters: dict[str, EdgeIngester] = {}      # by source key
        self.forwarders: dict[str, EdgeForwarder] = {}    # by source key
        self.pools: dict[tuple, OriginPool] = {}          # one per vhost's origin list: shared health
        self._resolved: dict[str, object] = {}            # conn cid -> the request the coworkers cleared
        self._tasks: set[asyncio.Task] = set()
        self.redirects_total = 0
        self.not_found_total = 0
        self.refused_publish_total = 0

    # ----- hooks ----------------------------------------------------------------------------------------

    def on_play(self, conn, event) -> bool:
        vhost, app = conn.vhost, conn.session.app
        cluster = vhost.cluster
        if cluster.mode == MODE_EDGE:
            self.ensure_ingester(vhost, app, event.name, event.query, host_of_url(conn.session.tc_url),
                                 time.monotonic())
            return False
        if not cluster.origin_cluster or self._resolved.pop(conn.cid, None) is event:
            return False
        if has_stream(self.worker.registry.get(vhost.name, app, event.name)):
            return False
        conn.transport.pause_reading()
        self._spawn(self._route_play(conn, event, vhost, app))
        return True

    def on_publish(self, conn, event) -> bool:
        vhost, app = conn.vhost, conn.session.app
        cluster = vhost.cluster
        if cluster.mode == MODE_EDGE:
            self._edge_publish(conn, event, vhost, app, time.monotonic())
            return False
        if not (cluster.origin_cluster and cluster.coworkers) or self._resolved.pop(conn.cid, None) is event:
            return False
        source = self.worker.registry.get(vhost.name, app, event.name)
        if source is not None and source.publisher is not None:
            return False    # busy here: the usual refusal
        conn.transport.pause_reading()
        self._spawn(self._check_publish(conn, event, vhost, app))
        return True

    def on_flv_play(self, conn, method: str, vhost, app: str, stream: str) -> bool:
        cluster = vhost.cluster
        if cluster.mode == MODE_EDGE:
            if method == "GET":
                self.ensure_ingester(vhost, app, stream, conn.query, host_of_header(conn.headers.get("host", "")),
                                     time.monotonic())
            return False
        if not cluster.origin_cluster or self._resolved.pop(conn.cid, None) == FLV_RESOLVED:
            return False
        if has_stream(self.worker.registry.get(vhost.name, app, stream)):
            return False
        self._spawn(self._route_flv(conn, method, vhost, app, stream))
        return True

    def on_hls_play(self, path: str, query: str, host_header: str, now: float):
        """A playlist request for `path` (no leading /) that no segmenter serves yet. On an edge vhost with HLS
        on whose hls_m3u8_file names this path (the first such vhost, in config order), start the stream's
        pull, exactly one however many requests ask (ensure_ingester), and return the stream's segmenter, for
        the request to wait on its first segment; None when no edge vhost names the path."""
        for vhost in self.worker.config.vhosts.values():
            if not (vhost.enabled and vhost.hls.enabled and vhost.cluster.mode == MODE_EDGE and vhost.cluster.origin):
                continue
            pattern = m3u8_pattern(vhost.hls.hls_m3u8_file, vhost.name)
            match = pattern.fullmatch(path) if pattern is not None else None
            if match is None:
                continue
            segmenter = self.hls_pull(vhost.name, match.group("app"), match.group("stream"), query, host_header,
                                      now)
            ingester = self.ingesters.get(source_key(vhost.name, match.group("app"), match.group("stream")))
            if ingester is not None and segmenter is not None and segmenter.playlist is None:
                ingester.hls_waited = True
            return segmenter
        return None

    def hls_edge_target(self, path: str):
        """(vhost, app, stream) that a playlist request for `path` would make this edge pull (on_hls_play's
        choice), or None: for access control to check the viewer before any pull starts."""
        for vhost in self.worker.config.vhosts.values():
            if not (vhost.enabled and vhost.hls.enabled and vhost.cluster.mode == MODE_EDGE and vhost.cluster.origin):
                continue
            pattern = m3u8_pattern(vhost.hls.hls_m3u8_file, vhost.name)
            match = pattern.fullmatch(path) if pattern is not None else None
            if match is not None:
                return vhost, match.group("app"), match.group("stream")
        return None

    def hls_pull(self, vhost_name: str, app: str, stream: str, query: str, host_header: str, now: float):
        """A playlist request of a stream: on an edge, (re)start its pull if it has no publisher (the pull
        stopped while its playlist stayed for hls_dispose, or a handover brought the source without its
        upstream). Returns the stream's segmenter, or None when the vhost is no edge with HLS on."""
        vhost = self.worker.config.vhosts.get(vhost_name)
        if vhost is None or not vhost.hls.enabled or vhost.cluster.mode != MODE_EDGE or not vhost.cluster.origin:
            return None
        source = self.worker.registry.get(vhost_name, app, stream)
        if source is None or source.publisher is None:
            upstream_query = "&".join(p for p in query.split("&") if p and p.partition("=")[0] not in HLS_OWN_PARAMS)
            log.trace("cluster", f"edge pull {vhost_name}/{app}/{stream}: asked for by an HLS viewer")
            self.ensure_ingester(vhost, app, stream, upstream_query, host_of_header(host_header), now)
            source = self.worker.registry.get(vhost_name, app, stream)
        return source.hls if source is not None else None

    # ----- origin cluster -------------------------------------------------------------------------------

    async def _find(self, vhost, host: str, app: str, stream: str) -> Hit | None:
        self.coworkers.server_id = self.worker.server_id
        cluster = vhost.cluster
        own = self.worker.config.http_api.auth
        auth = aiohttp.BasicAuth(own.username, own.password) if own.enabled else None
        return await self.coworkers.find(cluster.coworkers, cluster.coworker_timeout, vhost=vhost.name, ip=host,
                                         app=app, stream=stream, auth=auth)

    async def _route_play(self, conn, event, vhost, app: str) -> None:
        host = host_of_url(conn.session.tc_url)
        key = f"{vhost.name}/{app}/{event.name}"
        try:
            hit = await self._find(vhost, host, app, event.name)
            if conn.closed:
                return
            if has_stream(self.worker.registry.get(vhost.name, app, event.name)):
                conn.transport.resume_reading()     # published here while we asked
                self._resolved[conn.cid] = event
                conn.play_local(event)
                return
            if hit is None:
                self.not_found_total += 1
                log.trace(conn.cid, f"play {key}: no origin of the cluster has it, StreamNotFound")
                conn.answer_stream_not_found(event, "stream not found in the cluster")
                return
            self.redirects_total += 1
            rurl = rtmp_url(hit.ip, hit.port, host, vhost.name, app, event.name, event.query)
            _, port = split_host_port(conn.session.tc_url.partition("://")[2].split("/", 1)[0], DEFAULT_RTMP_PORT)
            log.trace(conn.cid, f"rtmp: redirect in cluster, from={host}:{port}, target={hit.ip}:{hit.port}, "
                                f"coworker={hit.coworker}, rurl={rurl}")
            conn.answer_redirect(event, redirect_tc_url(rurl), rurl)
        except Exception as e:  # a bug here must cost one client, not the worker
            log.error(conn.cid, f"play {key}: cluster routing failed: {e!r}")
            conn.close("cluster routing failed")

    async def _check_publish(self, conn, event, vhost, app: str) -> None:
        key = f"{vhost.name}/{app}/{event.name}"
        try:
            hit = await self._find(vhost, host_of_url(conn.session.tc_url), app, event.name)
            if conn.closed:
                return
            if hit is None:
                conn.transport.resume_reading()
                self._resolved[conn.cid] = event
                conn.publish_local(event)
                return
            self.refused_publish_total += 1
            log.warn(conn.cid, f"publish refused: stream {key} is live on coworker {hit.coworker} "
                               f"({hit.ip}:{hit.port})")
            conn.refuse_publish(event, f"Stream is already being published at {hit.ip}:{hit.port}.",
                                "stream busy in the cluster")
        except Exception as e:
            log.error(conn.cid, f"publish {key}: cluster check failed: {e!r}")
            conn.close("cluster check failed")

    async def _route_flv(self, conn, method: str, vhost, app: str, stream: str) -> None:
        key = f"{vhost.name}/{app}/{stream}"
        try:
            hit = await self._find(vhost, host_of_header(conn.headers.get("host", "")), app, stream)
            if conn.closed:
                return
            if has_stream(self.worker.registry.get(vhost.name, app, stream)):
                self._resolved[conn.cid] = FLV_RESOLVED
                conn.play_local(method, vhost, app, stream)
                return
            if hit is None:
                self.not_found_total += 1
                log.trace(conn.cid, f"flv play {key}: no origin of the cluster has it, 404")
                conn.answer_not_found()
                return
            self.redirects_total += 1
            if hit.http:
                ip, port = split_host_port(hit.http, 80)
            else:   # an SRS coworker does not say: assume its HTTP server port is ours
                ip, port = hit.ip, self.worker.config.http_server.listen.port
            path = conn.url.decode("latin-1").partition("?")[0]
            location = flv_location(ip, port, path, conn.query)
            log.trace(conn.cid, f"flv: redirect in cluster, target={hit.ip}:{hit.port}, coworker={hit.coworker}, "
                                f"location={location}")
            conn.answer_redirect(location)
        except Exception as e:
            log.error(conn.cid, f"flv play {key}: cluster routing failed: {e!r}")
            conn.close("cluster routing failed")

    # ----- edge -----------------------------------------------------------------------------------------

    def pool_for(self, vhost) -> OriginPool:
        c = vhost.cluster
        key = (vhost.name, tuple(c.origin), c.retry_min, c.retry_max)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = OriginPool(list(c.origin), c.retry_min, c.retry_max)
        return pool

    def _chunk_size(self, vhost) -> int:
        return vhost.chunk_size or self.worker.config.chunk_size

    def ensure_ingester(self, vhost, app: str, stream: str, query: str, host: str, now: float):
        """The stream's pull on this edge, started by its first player. The source is created now, with the
        ingester as its publisher, so the play (RTMP or HTTP-FLV) proceeds on it as on a published stream."""
        if not vhost.cluster.origin:
            return None
        source = self.worker.fetch_source(vhost, app, stream, now)
        if source.publisher is not None:
            return self.ingesters.get(source.key)
        ingester = EdgeIngester(source, vhost, self.pool_for(vhost), app=app, stream=stream, query=query,
                                host=host, chunk_size=self._chunk_size(vhost), now=now)
        self.ingesters[source.key] = ingester
        ingester.start(now)
        return ingester

    def _edge_publish(self, conn, event, vhost, app: str, now: float) -> None:
        if not vhost.cluster.origin:
            return
        source = self.worker.fetch_source(vhost, app, event.name, now)
        ingester = self.ingesters.get(source.key)
        if ingester is not None and source.publisher is ingester:
            # The stream starts here now: the local publisher replaces the pull, its players stay.
            ingester.stop(now, "a publisher on this edge takes the stream over", unpublish=False)
            del self.ingesters[source.key]
        if not source.can_publish():
            return      # the usual refusal follows
        self.start_forwarder(vhost, source, conn, app, event.name, event.query,
                             host_of_url(conn.session.tc_url), now)

    def start_forwarder(self, vhost, source, conn, app: str, stream: str, query: str, host: str, now: float):
        previous = self.forwarders.pop(source.key, None)
        if previous is not None:
            previous.stop(now, "replaced by a new publisher")
        forwarder = EdgeForwarder(source, vhost, self.pool_for(vhost), conn, app=app, stream=stream, query=query,
                                  host=host, chunk_size=self._chunk_size(vhost), now=now)
        self.forwarders[source.key] = forwarder
        forwarder.start(now)
        return forwarder

    # ----- the worker's sweep -----------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        sources = self.worker.registry.sources
        watched: set | None = None

        def hls_watched(source) -> bool:
            """HLS viewers keep a pull as players do (asked once per sweep, when a pull has no player)."""
            nonlocal watched
            if watched is None:
                watched = self.worker.hls_sessions.watched(now)
            return (source.vhost, source.app, source.stream) in watched

        for key, ingester in list(self.ingesters.items()):
            source = ingester.source
            if ingester.stopped:
                del self.ingesters[key]
            elif sources.get(key) is not source or source.publisher is not ingester:
                ingester.stop(now, "its source was handed over, freed or taken over", unpublish=False)
                del self.ingesters[key]
            elif source.consumers or hls_watched(source):
                ingester.empty_since = None
                ingester.check(now)
            elif ingester.hls_waited and source.hls is not None and source.hls.playlist is None:
                # The HLS requests that started it gave up with no segment: the origin has no such stream.
                ingester.stop(now, "no segment for the HLS requests that asked for it")
                del self.ingesters[key]
            elif ingester.empty_since is None:
                ingester.empty_since = now
            elif (now - ingester.empty_since) * 1000 >= ingester.vhost.cluster.linger:
                ingester.stop(now, f"no player for {ingester.vhost.cluster.linger} ms (linger)")
                del self.ingesters[key]
        for key, forwarder in list(self.forwarders.items()):
            if forwarder.stopped:
                del self.forwarders[key]
            elif sources.get(key) is not forwarder.source or forwarder.source.publisher is not forwarder.publisher:
                forwarder.stop(now, "the publisher left")
                del self.forwarders[key]
            else:
                forwarder.check(now)
        self._heal(now)

    def _heal(self, now: float) -> None:
        """Re-establish links for edge sources that have none: after a handover, the new worker receives the
        sources with their players (and a local publisher) but not the upstream sessions. The pull resumes
        where the players are (Resync), the push sends the GOP again."""
        for source in list(self.worker.registry.sources.values()):
            self._heal_source(source, now)

    def _heal_source(self, source, now: float) -> None:
        vhost = self.worker.config.vhosts.get(source.vhost)
        if vhost is None or vhost.cluster.mode != MODE_EDGE or not vhost.cluster.origin:
            return
        # A segmenter that never saw its publisher leave was fed by a pull when the source was handed over: its
        # HLS viewers come back within a target duration, so the pull goes on for them (then linger, if not).
        hls_live = source.hls is not None and source.hls.playlist is not None and source.hls.unpublished_at is None
        if source.publisher is None and (source.consumers or hls_live):
            query, host = _first_request(source)
            log.trace("cluster", f"edge pull {source.key}: {'players' if source.consumers else 'HLS viewers'} "
                                 f"without an upstream, re-establishing it")
            self.ensure_ingester(vhost, source.app, source.stream, query, host, now)
        elif source.publisher is not None and not isinstance(source.publisher, EdgeIngester) \
                and source.key not in self.forwarders and not getattr(source.publisher, "closed", False):
            session = getattr(source.publisher, "session", None)
            log.trace("cluster", f"edge push {source.key}: publisher without an upstream, re-establishing it")
            self.start_forwarder(vhost, source, source.publisher, source.app, source.stream,
                                 getattr(session, "stream_query", ""), host_of_url(getattr(session, "tc_url", "")),
                                 now)

    def adopt_source(self, source) -> None:
        """A source handed over from another worker (Worker.adopt_source): its players and publisher follow in
        the next frames. Re-establish its upstream as soon as they are here, not at the next sweep, so the
        players' stall is the reconnect, not a second more (the sweep stays the backstop)."""
        vhost = self.worker.config.vhosts.get(source.vhost)
        if vhost is not None and vhost.cluster.mode == MODE_EDGE and vhost.cluster.origin:
            self._spawn(self._heal_adopted(source.key))

    async def _heal_adopted(self, key: str) -> None:
        for _ in range(ADOPT_POLL_TRIES):
            await asyncio.sleep(ADOPT_POLL_S)
            source = self.worker.registry.sources.get(key)
            if source is None:
                return
            if source.consumers or source.publisher is not None:
                self._heal_source(source, time.monotonic())
                return

    # ----- quitting and handover -----------------------------------------------------------------------------

    async def stop(self) -> None:
        now = time.monotonic()
        links = list(self.ingesters.values()) + list(self.forwarders.values())
        for ingester in self.ingesters.values():
            ingester.stop(now, "server quit")
        for forwarder in self.forwarders.values():
            forwarder.stop(now, "server quit")
        self.ingesters.clear()
        self.forwarders.clear()
        for task in list(self._tasks):
            task.cancel()
        if links:
            await asyncio.wait([asyncio.ensure_future(link.wait_closed()) for link in links], timeout=STOP_WAIT_S)
        await self.coworkers.close()

    def snapshot(self) -> dict:
        """Plain data on every link and pool, for a handover (the upgrade issue) and for debugging."""
        return {"version": 1,
                "ingesters": [i.snapshot() for i in self.ingesters.values()],
                "forwarders": [f.snapshot() for f in self.forwarders.values()],
                "pools": [{"vhost": k[0], "pool": p.snapshot()} for k, p in self.pools.items()],
                "known_self": sorted(self.coworkers.known_self)}

    def stats(self) -> dict:
        return {"pulls": len(self.ingesters), "pushes": len(self.forwarders),
                "upstreams": sum(1 for link in list(self.ingesters.values()) + list(self.forwarders.values())
                                 if link.upstream is not None and link.upstream.phase != ENDED),
                "redirects": self.redirects_total, "not_found": self.not_found_total,
                "refused_publish": self.refused_publish_total, "coworker_queries": self.coworkers.queries}

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _first_request(source) -> tuple[str, str]:
    """The query string and host of one of a source's players, to pull on their behalf (tokens)."""
    for consumer in list(source.consumers):
        sink = consumer.sink
        session = getattr(sink, "session", None)
        if session is not None:
            return session.stream_query, host_of_url(session.tc_url)
        if getattr(sink, "query", None) is not None:
            return sink.query, host_of_header(getattr(sink, "headers", {}).get("host", ""))
    return "", ""
