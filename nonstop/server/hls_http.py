"""HLS on the HTTP server: playlists and segments served from memory at SRS's URLs, and HLS viewers as sessions.

`GET /APP/STREAM.m3u8` and `GET /APP/STREAM-SEQ.ts` (per hls_m3u8_file and hls_ts_file) are answered from the
stream's segmenter (nonstop/media/hls.py) with no disk I/O and no copy: the segment's bytes go to the transport
as they are. HTTP-FLV mounts are matched first, as before; what no segmenter serves goes on to the static
files and the API. Responses keep the connection alive (a player polls every few seconds), with a short
Cache-Control for the playlist and a long one for segments, which never change once listed.

Viewers, as SRS 5+ tracks them (srs_app_http_static.cpp, hls_ctx): a playlist request without `hls_ctx` gets a
one-variant master playlist pointing at the same URL with a new `?hls_ctx=ID`; requests with it renew the
session, and segment URIs carry it too (hls_ts_ctx), so /api/v1/clients lists each viewer with its bytes. A
session ends 2 * hls_window after its last request, as in SRS. The sessions of a stream move with its source in an
upgrade (HlsSessions.snapshot_for / restore, plain data). Unlike SRS, an `hls_ctx` this worker does not know (one
that did not move) is adopted rather than answered with a new master playlist, so a player polling through an
upgrade keeps getting media playlists.

During an upgrade: a held LL-HLS request moves with its stream (Held.snapshot, resume_held) and a connection
between two requests moves with the idle ones (HttpConnection, transfer.py). A new worker still taking over holds
an HLS request for a stream not here yet until the stream arrives (as HTTP-FLV does); an old worker that handed
its streams over answers a request it was reading from the frozen copy it still has, with `Connection: close`,
and answers a path it does not know with a redirect to itself, so the player's next connection reaches the new
worker instead of a 404.
"""

from __future__ import annotations

import os
import time
import urllib.parse

from nonstop import SERVER_NAME
from nonstop.log import log

CONTENT_TYPE_M3U8 = "application/vnd.apple.mpegurl"
CONTENT_TYPE_TS = "video/mp2t"
CONTENT_TYPE_MP4 = "video/mp4"                    # fMP4 segments and their init segment
CONTENT_TYPE_KEY = "application/octet-stream"     # hls_keys: the 16 bytes of an AES-128 key
# The playlist changes every segment: a CDN or browser may reuse it for a second at most (a player asks again
# after half a target duration or more). Segments never change once listed: cache them for a day.
CACHE_PLAYLIST = "max-age=1"
CACHE_SEGMENT = "max-age=86400"
# An idle keep-alive connection is closed after this (nginx's keepalive_timeout is 75 s; a player asks at least
# every target duration, 10 s by default, so 30 s covers it with margin).
KEEPALIVE_IDLE_S = 30.0
SESSION_ID_BYTES = 4        # 8 hex characters, as SRS's srs_random_str(8)
CTX = "hls_ctx"
HLS_SUFFIXES = (".m3u8", ".ts")
CLIENT_TYPE = "hls-play"    # SRS's srs_client_type_string(SrsHlsPlay)
# An upgrade moves each stream's sessions with its source (transfer.py), most recently seen first, at most this
# many (about 150 bytes each pickled: 15 MB, far under the handover frame's bound). Any beyond it are adopted
# by the new worker as new sessions at their next request, as a session from an older build is.
MAX_SESSIONS_MOVED = 100_000
# A held request as it moves in an upgrade (HttpConnection.snapshot): plain data.
HELD_FIELDS = ("method", "path", "query", "deadline")
_SESSION_FIELDS = ("cid", "vhost", "app", "stream", "ip", "created_at", "created_wall", "last_seen", "send_bytes",
                   "recv_bytes", "requests", "window_s", "closed")

_CORS = ("Access-Control-Allow-Origin: *\r\n"
         "Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
         "Access-Control-Allow-Headers: *\r\n"
         "Access-Control-Expose-Headers: Server, Content-Length\r\n")


class HlsSession:
    """One HLS viewer (SRS's SrsHlsVirtualConn), listed by the API like a connection."""

    kind = "hls"
    role = "play"

    __slots__ = ("cid", "worker", "vhost", "app", "stream", "ip", "created_at", "created_wall", "last_seen",
                 "send_bytes", "recv_bytes", "requests", "window_s", "closed", "headers")

    def __init__(self, cid: str, worker, segmenter, ip: str, now: float):
        self.cid = cid
        self.worker = worker
        self.vhost, self.app, self.stream = segmenter.vhost, segmenter.app, segmenter.stream
        self.ip = ip
        self.created_at = self.last_seen = now
        self.created_wall = time.time()
        self.send_bytes = 0
        self.recv_bytes = 0
        self.requests = 0
        self.window_s = segmenter.settings["window_ms"] / 1000
        self.closed = False         # kicked: its requests get 404 until it expires (SRS: "HLS stream is EOF")
        self.headers: dict = {}

    def kick(self, reason: str) -> None:
        log.warn(self.cid, f"kick: {reason}")
        self.closed = True

    @property
    def source(self):
        """The stream's source while it is here (the API lists a session with its stream)."""
        return self.worker.registry.get(self.vhost, self.app, self.stream)

    def snapshot(self) -> list:
        """Plain data, in _SESSION_FIELDS order (times are time.monotonic(): system-wide, as deadlines are)."""
        return [getattr(self, name) for name in _SESSION_FIELDS]

    @classmethod
    def restore(cls, worker, snap: list) -> "HlsSession":
        if not isinstance(snap, (list, tuple)) or len(snap) != len(_SESSION_FIELDS):
            raise ValueError(f"an HLS session snapshot that does not fit: {snap!r:.200}")
        self = cls.__new__(cls)
        self.worker, self.headers = worker, {}
        for name, value in zip(_SESSION_FIELDS, snap):
            setattr(self, name, value)
        return self

    def expired(self, now: float) -> bool:
        return now - self.last_seen > 2 * self.window_s


class HlsSessions:
    """The HLS viewers of one worker, by hls_ctx; expired by the worker's sweep."""

    def __init__(self):
        self.sessions: dict[str, HlsSession] = {}
        self.total = 0
        self.held: list[Held] = []      # blocking requests, for their deadlines
        # With hls_ctx off there are no sessions: (vhost, app, stream) -> until when its last playlist request
        # counts as a viewer (2 * hls_window after it, as a session), for an edge's pull (Cluster.sweep).
        self.anonymous: dict[tuple, float] = {}

    def touch(self, ctx: str, worker, segmenter, ip: str, now: float) -> HlsSession:
        session = self.sessions.get(ctx)
        if session is None:
            session = self.sessions[ctx] = HlsSession(ctx, worker, segmenter, ip, now)
            self.total += 1
            log.trace(ctx, f"hls play {segmenter.vhost}/{segmenter.app}/{segmenter.stream} ip={ip}")
        session.last_seen = now
        session.requests += 1
        return session

    def seen(self, segmenter, now: float) -> None:
        """A playlist request without a session (hls_ctx off)."""
        self.anonymous[(segmenter.vhost, segmenter.app, segmenter.stream)] = \
            now + 2 * segmenter.settings["window_ms"] / 1000

    def watched(self, now: float) -> set[tuple]:
        """The streams ((vhost, app, stream)) HLS viewers watch now: live sessions, recent playlist requests
        without one, and requests held for a first segment. An edge keeps pulling these (Cluster.sweep)."""
        keys = {(s.vhost, s.app, s.stream) for s in self.sessions.values() if not s.closed and not s.expired(now)}
        keys.update(key for key, until in self.anonymous.items() if now < until)
        keys.update((h.segmenter.vhost, h.segmenter.app, h.segmenter.stream) for h in self.held
                    if not h.done and now < h.deadline and not h.conn.closed)
        return keys

    def sweep(self, now: float) -> None:
        if self.anonymous:
            self.anonymous = {key: until for key, until in self.anonymous.items() if now < until}
        if self.held:
            # One in an upgrade's batch waits for its batch (answered here if the batch stays, there if it moves);
            # one whose connection moved or closed is dropped.
            expired = [h for h in self.held if not h.done
                       and (h.conn.closed or (now >= h.deadline and not h.conn.handing_over))]
            gone = {id(h) for h in expired}
            self.held = [h for h in self.held if not h.done and id(h) not in gone]
            segmenters = {}
            for held in expired:
                held.answer(False)
                segmenters[id(held.segmenter)] = held.segmenter
            for segmenter in segmenters.values():   # one pass per segmenter, however many expired
                segmenter.waiters = [w for w in segmenter.waiters if not w[2].done]
        for ctx, session in list(self.sessions.items()):
            if session.expired(now):
                del self.sessions[ctx]
                log.trace(ctx, f"close hls player ip={session.ip}, alive={now - session.created_at:.2f}s, "
                               f"sent={session.send_bytes} bytes, reason=no request for {2 * session.window_s:.0f}s")

    def held_conns(self, segmenter) -> list:
        """The connections whose request `segmenter` holds (members of its stream in an upgrade: transfer.py I1)."""
        return [h.conn for h in self.held if h.segmenter is segmenter and not h.done and not h.conn.closed]

    def snapshot_for(self, vhost: str, app: str, stream: str) -> list:
        """The sessions of one stream, to move with its source in an upgrade (bounded: MAX_SESSIONS_MOVED)."""
        mine = [s for s in self.sessions.values() if (s.vhost, s.app, s.stream) == (vhost, app, stream)]
        if len(mine) > MAX_SESSIONS_MOVED:
            mine.sort(key=lambda s: s.last_seen, reverse=True)
            del mine[MAX_SESSIONS_MOVED:]
        return [s.snapshot() for s in mine]

    def check(self, snaps: list) -> None:
        """Raise ValueError unless `snaps` are sessions restore() can merge (a handover batch is refused then)."""
        if not isinstance(snaps, list):
            raise ValueError("HLS sessions that are not a list")
        for snap in snaps:
            session = HlsSession.restore(None, snap)
            if not isinstance(session.cid, str) or not all(isinstance(getattr(session, n), (int, float))
                                                           for n in ("created_at", "last_seen", "send_bytes")):
                raise ValueError(f"an HLS session snapshot that does not fit: {snap!r:.200}")

    def restore(self, worker, snaps: list) -> None:
        """Sessions moved by an upgrade. A player that reached this worker during the upgrade was adopted as a
        new session with its ctx: it is merged into the moved one (its counters add up, a kick holds)."""
        for snap in snaps[:MAX_SESSIONS_MOVED]:
            moved = HlsSession.restore(worker, snap)
            here = self.sessions.get(moved.cid)
            if here is not None:
                moved.send_bytes += here.send_bytes
                moved.recv_bytes += here.recv_bytes
                moved.requests += here.requests
                moved.last_seen = max(moved.last_seen, here.last_seen)
                moved.closed = moved.closed or here.closed
            else:
                self.total += 1
            self.sessions[moved.cid] = moved

    def clients(self) -> list[HlsSession]:
        return [s for s in self.sessions.values() if not s.closed and s.source is not None]

    def get(self, ctx: str) -> HlsSession | None:
        return self.sessions.get(ctx)


# ----- requests --------------------------------------------------------------------------------------------------

def serve(conn, method: str, path: str, query: str, block: bool = True) -> bool:
    """Answer `method path?query` if it is an HLS path of this worker; False to let the caller go on.
    `block` False answers a blocking request (LL-HLS) with what there is now (its hold expired)."""
    worker = conn.worker
    name = path.lstrip("/")
    segmenter = worker.hls_index.get(name)
    if segmenter is None:
        if not name.endswith(HLS_SUFFIXES):
            return False
        if worker.taking_over and worker.wait_for_takeover(_Waiting(conn, method, path, query)):
            return True     # a stream on its way in an upgrade: answered when it arrives (or 404 after)
        if worker.draining:
            # An old worker: the stream may live in the new one now. Let the player come back on a new
            # connection, which the new worker accepts.
            _redirect_to_self(conn, path, query)
            return True
        if block and name.endswith(".m3u8"):
            # An edge's stream not pulled yet (or with no segment yet): the request starts the pull and waits
            # for the first segment, held like a blocking reload, 404 at its deadline (3 target durations).
            segmenter = worker.cluster.on_hls_play(name, query, conn.headers.get("host", ""), time.monotonic())
            if segmenter is not None:
                _hold(conn, method, path, query, segmenter, lambda: segmenter.playlist is not None)
                return True
        return False
    now = time.monotonic()
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    ctx = (params.get(CTX) or [""])[0][:64]
    settings = segmenter.settings
    kicked = worker.hls_sessions.get(ctx) if ctx else None
    if kicked is not None and kicked.closed:
        _respond(conn, method, 404, "Not Found", "text/plain", f"404 HLS stream {ctx} is EOF\n".encode(), "no-cache")
        return True
    if name == segmenter.m3u8_name:
        if block:   # an edge pulls what its HLS viewers ask for (again after its pull stopped)
            worker.cluster.hls_pull(segmenter.vhost, segmenter.app, segmenter.stream, query,
                                    conn.headers.get("host", ""), now)
        if segmenter.playlist is None:
            _respond(conn, method, 404, "Not Found", "text/plain", b"404 Not Found: no segment yet\n", "no-cache")
            return True
        if settings["ctx"] and not ctx:
            ctx = os.urandom(SESSION_ID_BYTES).hex()
            worker.hls_sessions.touch(ctx, worker, segmenter, conn.ip, now)
            extra = "&" + query if query else ""
            body = (f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,AVERAGE-BANDWIDTH=1\n"
                    f"{path}?{CTX}={ctx}{extra}\n").encode()
            _respond(conn, method, 200, "OK", CONTENT_TYPE_M3U8, body, "no-cache")
            return True
        if block and segmenter.part_ms and ("_HLS_msn" in params or "_HLS_part" in params):
            try:
                msn = int(params["_HLS_msn"][0])
                part = int(params["_HLS_part"][0]) if "_HLS_part" in params else None
                if msn < 0 or (part is not None and part < 0):
                    raise ValueError
            except (KeyError, ValueError):
                # RFC 8216bis 6.2.5.2: _HLS_part without _HLS_msn is a bad request too.
                log.warn(conn.cid, f"hls blocking reload refused (400): bad _HLS_msn or _HLS_part in {query[:200]!r}, "
                                   f"ip={conn.ip}")
                _respond(conn, method, 400, "Bad Request", "text/plain", b"400 bad _HLS_msn or _HLS_part\n",
                         "no-cache")
                return True
            if segmenter.too_far_ahead(msn, part):
                log.warn(conn.cid, f"hls blocking reload refused (400): too far ahead of segment "
                                   f"{segmenter.next_seq} in {query[:200]!r}, ip={conn.ip}")
                _respond(conn, method, 400, "Bad Request", "text/plain", b"400 _HLS_msn or _HLS_part too far ahead\n",
                         "no-cache")
                return True
            if not segmenter.has(msn, part):
                _hold(conn, method, path, query, segmenter, lambda: segmenter.has(msn, part))
                return True
        body = segmenter.playlist
        if ctx and settings["ctx"]:
            session = worker.hls_sessions.touch(ctx, worker, segmenter, conn.ip, now)
            if settings["ts_ctx"]:
                body = _with_ctx(body, ctx)
            session.send_bytes += len(body)
        else:
            worker.hls_sessions.seen(segmenter, now)
        _respond(conn, method, 200, "OK", CONTENT_TYPE_M3U8, body, CACHE_PLAYLIST)
        return True
    if block and segmenter.part_ms and name == segmenter.preload_hint():
        # LL-HLS: the part the playlist hints at comes next; its request is held until it exists.
        _hold(conn, method, path, query, segmenter, lambda: segmenter.segment_data(name) is not None)
        return True
    data, content_type = segmenter.segment_data(name), CONTENT_TYPE_TS
    if data is None:
        data, content_type = segmenter.key_data(name), CONTENT_TYPE_KEY
    if data is None:
        data, content_type = segmenter.init_segment_data(name), CONTENT_TYPE_MP4
    elif segmenter.fmp4 and content_type == CONTENT_TYPE_TS:
        content_type = CONTENT_TYPE_MP4
    if data is None:
        _respond(conn, method, 404, "Not Found", "text/plain", b"404 Not Found\n", "no-cache")
        return True
    if ctx and settings["ctx"]:
        session = worker.hls_sessions.get(ctx) or worker.hls_sessions.touch(ctx, worker, segmenter, conn.ip, now)
        session.last_seen = now
        session.send_bytes += len(data)
    _respond(conn, method, 200, "OK", content_type, data, CACHE_SEGMENT)
    return True


def _with_ctx(playlist: bytes, ctx: str) -> bytes:
    """Segment URIs carry the session: `x.ts` -> `x.ts?hls_ctx=ID` (`x.ts?a=b` -> `x.ts?hls_ctx=ID&a=b`)."""
    lines = playlist.split(b"\n")
    tag = f"{CTX}={ctx}".encode()
    for i, line in enumerate(lines):
        if line and not line.startswith(b"#"):
            lines[i] = line.replace(b"?", b"?" + tag + b"&", 1) if b"?" in line else line + b"?" + tag
    return b"\n".join(lines)


def _respond(conn, method: str, status: int, reason: str, content_type: str, body: bytes, cache: str) -> None:
    keep = not conn.worker.draining and conn.headers.get("connection", "").lower() != "close"
    head = (f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: {cache}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n" + _CORS + "\r\n").encode()
    conn.send_response([head] if method == "HEAD" else [head, body],
                       keep_alive_s=KEEPALIVE_IDLE_S if keep else None, reason=f"answered {status}")


def _redirect_to_self(conn, path: str, query: str) -> None:
    location = path + ("?" + query if query else "")
    head = (f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nServer: {SERVER_NAME}\r\nContent-Length: 0\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n" + _CORS + "\r\n").encode()
    conn.send_response([head], keep_alive_s=None, reason="draining: sent back to the new worker")


class Held:
    """A blocking request (LL-HLS): answered by the segmenter the moment what it waits for exists, or by the
    worker's sweep at its deadline with what there is then. No task, no timer: a list entry on each side.
    In an upgrade it moves with its stream as plain data (snapshot(), HELD_FIELDS) and is held again there."""

    __slots__ = ("conn", "method", "path", "query", "segmenter", "deadline", "done")

    def __init__(self, conn, method: str, path: str, query: str, segmenter, deadline: float):
        self.conn, self.method, self.path, self.query = conn, method, path, query
        self.segmenter, self.deadline, self.done = segmenter, deadline, False

    def snapshot(self) -> dict:
        return {"method": self.method, "path": self.path, "query": self.query, "deadline": self.deadline}

    def answer(self, block: bool) -> None:
        if self.done:
            return
        self.done = True
        if self.conn.held is self:
            self.conn.held = None
        if not self.conn.closed and not serve(self.conn, self.method, self.path, self.query, block=block):
            _respond(self.conn, self.method, 404, "Not Found", "text/plain", b"404 Not Found\n", "no-cache")


def _hold(conn, method: str, path: str, query: str, segmenter, ready) -> None:
    # RFC 8216bis 6.2.5.2: a server that cannot answer within three target durations should answer anyway.
    limit = 3 * segmenter.settings["fragment_ms"] * segmenter.settings["td_ratio"] / 1000
    held = Held(conn, method, path, query, segmenter, time.monotonic() + limit)
    # Its answer is due by the hold's deadline (the sweep answers it then), not by the connection's deadline for
    # a request head (handshake_timeout, 10 s, shorter than 3 target durations of 10 s segments).
    conn.deadline = None
    # Not while its connection is in an upgrade's batch: the snapshot that went says "held" (transfer.py I1).
    segmenter.waiters.append([lambda: not conn.handing_over and ready(), lambda: held.answer(True), held])
    conn.worker.hls_sessions.held.append(held)
    conn.held = held


def resume_held(conn, spec: dict) -> None:
    """A request held by the old worker, moved with its connection in an upgrade: answered now if what it
    waits for is here (or its deadline passed), else held again here until its original deadline."""
    block = time.monotonic() < spec["deadline"]
    if not serve(conn, spec["method"], spec["path"], spec["query"], block=block):
        _respond(conn, spec["method"], 404, "Not Found", "text/plain", b"404 Not Found\n", "no-cache")
    elif conn.held is not None:
        conn.held.deadline = spec["deadline"]


class _Waiting:
    """An HLS request held while an upgrade hands the stream over (Worker.wait_for_takeover's protocol)."""

    def __init__(self, conn, method: str, path: str, query: str):
        self.conn, self.method, self.path, self.query = conn, method, path, query
        self.wanted_key = None      # any stream: the path names a stream only through the templates

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def retry_play(self) -> None:
        if not serve(self.conn, self.method, self.path, self.query):
            _respond(self.conn, self.method, 404, "Not Found", "text/plain", b"404 Not Found\n", "no-cache")
