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
import re
import time
import urllib.parse

from nonstop import SERVER_NAME
from nonstop.access import signed
from nonstop.access.state import ConnAccess
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
# A verdict given to an edge's playlist request waits at most this long for the request to be answered (the
# request's own hold is 3 target durations; this only bounds a grant whose request ended some other way).
GRANT_KEPT_S = 120.0

_URI_ATTR = re.compile(rb'URI="([^"]*)"')
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.-]{1,128}")

_CORS = ("Access-Control-Allow-Origin: *\r\n"
         "Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
         "Access-Control-Allow-Headers: *\r\n"
         "Access-Control-Expose-Headers: Server, Content-Length\r\n")


class HlsSession:
    """One HLS viewer (SRS's SrsHlsVirtualConn), listed by the API like a connection."""

    kind = "hls"
    role = "play"

    __slots__ = ("cid", "worker", "vhost", "app", "stream", "ip", "created_at", "created_wall", "last_seen",
                 "send_bytes", "recv_bytes", "requests", "window_s", "closed", "headers", "access")

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
        # What access control granted this viewer and what it is owed (its on_stop): a ConnAccess, or None
        # when no access control applied (nonstop/access/gate.py, the HLS path).
        self.access = None

    def serves(self, segmenter) -> bool:
        """Whether this session was allowed for `segmenter`'s stream (a session is no pass to another)."""
        return (self.vhost, self.app, self.stream) == (segmenter.vhost, segmenter.app, segmenter.stream)

    def kick(self, reason: str) -> None:
        log.warn(self.cid, f"kick: {reason}")
        self.closed = True
        if self.access is not None:
            self.worker.access.hls_ended(self.access)      # its on_stop now, once (SRS: at its expiry)

    @property
    def source(self):
        """The stream's source while it is here (the API lists a session with its stream)."""
        return self.worker.registry.get(self.vhost, self.app, self.stream)

    def snapshot(self) -> list:
        """Plain data, in _SESSION_FIELDS order (times are time.monotonic(): system-wide, as deadlines are), then
        its access verdict (a ConnAccess snapshot, or None), so the new worker asks the hook server nothing."""
        return [getattr(self, name) for name in _SESSION_FIELDS] + \
            [self.access.snapshot() if self.access is not None else None]

    @classmethod
    def restore(cls, worker, snap: list) -> "HlsSession":
        if not isinstance(snap, (list, tuple)) or len(snap) not in (len(_SESSION_FIELDS), len(_SESSION_FIELDS) + 1):
            raise ValueError(f"an HLS session snapshot that does not fit: {snap!r:.200}")
        self = cls.__new__(cls)
        self.worker, self.headers, self.access = worker, {}, None
        for name, value in zip(_SESSION_FIELDS, snap):
            setattr(self, name, value)
        if len(snap) > len(_SESSION_FIELDS) and snap[-1] is not None:
            try:
                self.access = ConnAccess.restore(snap[-1])
            except (TypeError, KeyError, AttributeError) as e:
                raise ValueError(f"an HLS session's access snapshot that does not fit: {e!r:.200}") from None
        return self

    def expired(self, now: float) -> bool:
        return now - self.last_seen > 2 * self.window_s


class HlsSessions:
    """The HLS viewers of one worker, by hls_ctx; expired by the worker's sweep."""

    def __init__(self):
        self.sessions: dict[str, HlsSession] = {}
        self.total = 0
        self.held: list[Held] = []      # blocking requests, for their deadlines
        self.worker = None              # set by the first grant (for the sweep's notifications)
        # With hls_ctx off there are no sessions: (vhost, app, stream) -> until when its last playlist request
        # counts as a viewer (2 * hls_window after it, as a session), for an edge's pull (Cluster.sweep).
        self.anonymous: dict[tuple, float] = {}
        # Verdicts given to a connection's request before its session exists (an edge's playlist request waits
        # for the pull's first segment): HTTP cid -> (path, session id, ConnAccess, until when). Taken by the
        # request when it is answered; one left (the request ended otherwise) owes its on_stop (sweep).
        self.grants: dict[str, tuple] = {}

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
        if self.grants:
            for cid, (_, _, who, until) in list(self.grants.items()):
                if now >= until:
                    del self.grants[cid]
                    if self.worker is not None:
                        self.worker.access.hls_ended(who)
        for ctx, session in list(self.sessions.items()):
            if session.expired(now):
                del self.sessions[ctx]
                if session.access is not None:
                    session.worker.access.hls_ended(session.access)     # its on_stop, once
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
                # Checked again here during the upgrade (an unknown hls_ctx on a vhost with access control): one
                # verdict, and one on_stop owed, for one client id.
                moved.access = moved.access or here.access
            else:
                self.total += 1
            self.sessions[moved.cid] = moved

    def moved_away(self, snaps: list) -> None:
        """Sessions an upgrade moved (their snapshots, acknowledged by the new worker): forgotten here, without
        an on_stop, which the new worker owes now. Sessions begun here since their snapshot stay, and end here."""
        for snap in snaps:
            self.sessions.pop(snap[0], None)

    def grant(self, conn, path: str, ctx: str, who, now: float) -> None:
        self.worker = conn.worker
        self.grants[conn.cid] = (path, ctx, who, now + GRANT_KEPT_S)

    def take_grant(self, conn, path: str):
        """The verdict given to this connection's request for `path`, if any: (session id, ConnAccess)."""
        held = self.grants.get(conn.cid)
        if held is None or held[0] != path:
            return None
        del self.grants[conn.cid]
        return held[1], held[2]

    def end_all(self, reason: str) -> None:
        """A quit: every session ends here and is owed its on_stop (sessions handed to a new worker in an
        upgrade are no longer in `sessions`)."""
        for ctx, session in list(self.sessions.items()):
            del self.sessions[ctx]
            if session.access is not None and session.access.playing:
                log.trace(ctx, f"close hls player ip={session.ip}, reason={reason}")
                session.worker.access.hls_ended(session.access)

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
            # Access control comes first: a viewer who may not play starts no pull (a made-up name costs nothing).
            target = worker.cluster.hls_edge_target(name)
            if target is not None and not _edge_allowed(conn, method, path, query, *target):
                return True     # refused (403), or asked: answered when the verdict comes
            segmenter = worker.cluster.on_hls_play(name, query, conn.headers.get("host", ""), time.monotonic())
            if segmenter is not None:
                _hold(conn, method, path, query, segmenter, lambda: segmenter.playlist is not None)
                return True
        granted = worker.hls_sessions.take_grant(conn, path)
        if granted is not None:     # allowed, but nothing to serve after all (404): the session never began
            worker.access.hls_ended(granted[1])
        return False
    now = time.monotonic()
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    ctx = (params.get(CTX) or [""])[0][:64]
    settings = segmenter.settings
    kicked = worker.hls_sessions.get(ctx) if ctx else None
    if kicked is not None and kicked.closed:
        _respond(conn, method, 404, "Not Found", "text/plain", f"404 HLS stream {ctx} is EOF\n".encode(), "no-cache")
        return True
    vhost = worker.config.vhosts.get(segmenter.vhost)
    guarded = vhost is not None and worker.access.hls_guarded(vhost)
    # With access control, segments are tied to an allowed session when their URIs carry it (hls_ctx and
    # hls_ts_ctx on, the defaults); otherwise each request is checked on its own by the rules needing no I/O.
    per_request = guarded and not (settings["ctx"] and settings["ts_ctx"])
    granted = None      # (session id, ConnAccess): a new session allowed by access control
    if name == segmenter.m3u8_name:
        if guarded and settings["ctx"]:
            session = worker.hls_sessions.get(ctx) if ctx else None
            if session is None or not session.serves(segmenter):
                # A new session, or an hls_ctx this worker does not know: checked like a play (an hls_ctx is
                # no bearer). One of another stream's session gets a new id.
                granted = worker.hls_sessions.take_grant(conn, path)
                if granted is None:
                    sid = ctx if ctx and session is None else os.urandom(SESSION_ID_BYTES).hex()
                    who = worker.access.hls_request(
                        conn, vhost, segmenter.app, segmenter.stream, sid, query,
                        lambda who: _resume(conn, method, path, query, sid, who))
                    if who is None:
                        return True     # refused (403), or asked: answered when the verdict comes
                    granted = (sid, who)
                if granted[0] != ctx:
                    ctx = ""            # answered with a master playlist naming the new session
                else:                   # the session begins now (a blocking reload may be held below)
                    worker.hls_sessions.touch(ctx, worker, segmenter, conn.ip, now).access = granted[1]
                    granted = None
        elif guarded and worker.access.hls_rules(conn, vhost, segmenter.app, segmenter.stream, query):
            return True
        if block:   # an edge pulls what its HLS viewers ask for (again after its pull stopped)
            worker.cluster.hls_pull(segmenter.vhost, segmenter.app, segmenter.stream, query,
                                    conn.headers.get("host", ""), now)
        if segmenter.playlist is None:
            if granted is not None:
                worker.access.hls_ended(granted[1])     # allowed, but the session never began
            _respond(conn, method, 404, "Not Found", "text/plain", b"404 Not Found: no segment yet\n", "no-cache")
            return True
        if settings["ctx"] and not ctx:
            ctx = granted[0] if granted is not None else os.urandom(SESSION_ID_BYTES).hex()
            session = worker.hls_sessions.touch(ctx, worker, segmenter, conn.ip, now)
            if granted is not None:
                session.access = granted[1]
            query = "&".join(p for p in query.split("&") if p and p.partition("=")[0] != CTX)
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
        if per_request:
            token = (params.get(signed.PARAM) or [""])[0]
            if token and _TOKEN_CHARS.fullmatch(token):
                body = _with_param(body, f"{signed.PARAM}={token}")     # its segments are checked by it too
        _respond(conn, method, 200, "OK", CONTENT_TYPE_M3U8, body, CACHE_PLAYLIST)
        return True
    if guarded:
        if per_request:
            if worker.access.hls_rules(conn, vhost, segmenter.app, segmenter.stream, query):
                return True
        else:
            session = worker.hls_sessions.get(ctx) if ctx else None
            if session is None or not session.serves(segmenter):
                # Keys (hls_keys) above all: only a viewer who was allowed the playlist gets them.
                worker.access.hls_refuse(conn, f"{name}: no allowed HLS session "
                                               + (f"{CTX}={ctx[:16]!r}" if ctx else f"(no {CTX})"))
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
    return _with_param(playlist, f"{CTX}={ctx}")


def _with_param(playlist: bytes, param: str) -> bytes:
    """Every URI of the playlist gets `param` (k=v, URL-safe): segments, and the URI="..." of the key, the
    init segment, parts and the preload hint, so that each request of a viewer carries its session (or its
    token)."""
    tag = param.encode()

    def add(uri: bytes) -> bytes:
        return uri.replace(b"?", b"?" + tag + b"&", 1) if b"?" in uri else uri + b"?" + tag

    lines = playlist.split(b"\n")
    for i, line in enumerate(lines):
        if line and not line.startswith(b"#"):
            lines[i] = add(line)
        elif b'URI="' in line:
            lines[i] = _URI_ATTR.sub(lambda m: b'URI="' + add(m.group(1)) + b'"', line)
    return b"\n".join(lines)


def _resume(conn, method: str, path: str, query: str, sid: str, who) -> None:
    """A new session's request allowed after asking the hook server: answer it now, with the verdict."""
    conn.worker.hls_sessions.grant(conn, path, sid, who, time.monotonic())
    if not serve(conn, method, path, query):
        _respond(conn, method, 404, "Not Found", "text/plain", b"404 Not Found\n", "no-cache")


def _edge_allowed(conn, method: str, path: str, query: str, vhost, app: str, stream: str) -> bool:
    """An edge's playlist request for a stream not pulled yet: whether its viewer may play (then it may start
    the pull). False: refused (403 sent), or asked (the answer replays the request)."""
    worker = conn.worker
    if not worker.access.hls_guarded(vhost):
        return True
    if not vhost.hls.hls_ctx:
        return not worker.access.hls_rules(conn, vhost, app, stream, query)
    ctx = (urllib.parse.parse_qs(query).get(CTX) or [""])[0][:64]
    session = worker.hls_sessions.get(ctx) if ctx else None
    if session is not None and not session.closed and (session.vhost, session.app, session.stream) == \
            (vhost.name, app, stream):
        return True
    granted = worker.hls_sessions.grants.get(conn.cid)
    if granted is not None and granted[0] == path:
        return True     # allowed already: the playlist branch takes it when the first segment is here
    sid = ctx if ctx and session is None else os.urandom(SESSION_ID_BYTES).hex()
    who = worker.access.hls_request(conn, vhost, app, stream, sid, query,
                                    lambda who: _resume(conn, method, path, query, sid, who))
    if who is None:
        return False
    worker.hls_sessions.grant(conn, path, sid, who, time.monotonic())
    return True


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
