"""HttpConnection: the HTTP server port, parsed with httptools; serves HTTP-FLV through the shared fan-out.

`GET /live/s.flv` (per `http_remux.mount`) answers 200 `video/x-flv` with CORS, then the FLV header, the
metadata, the sequence headers, the GOP and the live tags, from the same per-format bytes every other FLV player
gets. An HTTP/1.1 body is chunked, as SRS sends it, one chunk per flush around the shared bytes, so its end is
explicit; an HTTP/1.0 body runs until the connection closes (srs-reference.md §7 allows both).

When the publisher leaves, a player waits `http_remux.republish_window` ms for the next one (a reconnecting
encoder) and goes on with the source's continuous timeline; after the window, or at once during a graceful quit,
the body ends cleanly (the chunked terminator, then close). RTMP players are told UnpublishNotify instead.

Requests that are not FLV go to the API application when the API shares this port (set by the worker), else
get 404.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.parse

import httptools

from nonstop import SERVER_NAME
from nonstop.access.state import ConnAccess
from nonstop.log import log, quote
from nonstop.media.consumer import Consumer
from nonstop.media.packet import FORMAT_FLV
from nonstop.media.registry import new_id, source_key
from nonstop.protocol import flv
from nonstop.console import pages as console_pages
from nonstop.server.names import name_problem
from nonstop.reset import reset
from nonstop.server import static
from nonstop.server import hls_http
from nonstop.server.hls_http import HELD_FIELDS

# A request head larger than this is refused: an FLV GET is a few hundred bytes (h11 picks 16 KiB too).
MAX_REQUEST_HEAD = 16 * 1024

_CORS = ("Access-Control-Allow-Origin: *\r\n"
         "Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
         "Access-Control-Allow-Headers: *\r\n"
         "Access-Control-Expose-Headers: Server\r\n")
# What an FLV URL answers; anything else gets 405 with this Allow (OPTIONS is the CORS preflight, answered apart).
FLV_METHODS = ("GET", "HEAD")
_ENCODED_SLASH = re.compile(rb"%2f", re.IGNORECASE)


def decode_path(raw: bytes) -> tuple[str, str | None]:
    """The request path percent-decoded once (RFC 3986 §2.1: `a%20b` is `a b`, `a%2520b` is `a%20b`), and the
    reason it cannot name a stream, or None. Refused: a path that is not UTF-8 after decoding, one with control
    characters (server/names.py), and an encoded slash, which would turn one path segment into two (Apache
    refuses it too, AllowEncodedSlashes Off): the mount's [stream] is the last segment, so a stream name never
    holds a slash."""
    problem = "an encoded slash (%2F)" if _ENCODED_SLASH.search(raw) else None
    data = urllib.parse.unquote_to_bytes(raw)
    try:
        path = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), "bytes that are not UTF-8 once percent-decoded"
    return path, problem or name_problem(path)


def mount_pattern(mount: str, vhost_name: str) -> re.Pattern:
    """`[vhost]/[app]/[stream].flv` -> a regex with groups app and stream. `__defaultVhost__/` is dropped."""
    template = mount
    if vhost_name == "__defaultVhost__":
        template = template.replace("[vhost]/", "").replace("[vhost]", "")
    pattern = re.escape(template).replace(re.escape("[vhost]"), re.escape(vhost_name))
    pattern = pattern.replace(re.escape("[app]"), "(?P<app>[^?#]+?)").replace(re.escape("[stream]"),
                                                                             "(?P<stream>[^/?#]+)")
    return re.compile("^/?" + pattern + "$")


class HttpConnection(asyncio.Protocol):
    kind = "http"

    def __init__(self, worker, listener: str = "http"):
        self.worker = worker
        self.cid = new_id()
        self.listener = listener
        self.transport = None
        self.ip = ""
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.buffered: list[bytes] = []
        self.role = ""
        self._source = None          # until the consumer exists; then the consumer's (see `source`)
        self.consumer: Consumer | None = None
        self.vhost = None
        self.app = ""
        self.stream = ""
        self.query = ""
        now = time.monotonic()
        self.created_at = now
        self.created_wall = time.time()
        self.deadline: float | None = now + worker.config.handshake_timeout / 1000
        self.closed = False
        self.control_bytes = 0
        self.recv_bytes = 0
        self.handing_over = False
        self.restored: dict | None = None
        self._held_eof = False
        self.wanted = None          # (method, vhost, app, stream) of a play waiting for a handover
        self.complete = False       # the request was read whole (and answered, handed on, or playing)
        self.left_behind = False
        self.access = ConnAccess()  # what access control granted and is owed (nonstop/access)
        # HLS (server/hls_http.py): the LL-HLS request this connection waits on (a hls_http.Held), set and
        # cleared by hls_http; whether the last request was answered with keep-alive and no next one has begun
        # (so the connection sits between requests, movable in an upgrade); bytes read while staged by a handover.
        self.held = None
        self.kept_alive = False
        self.in_message = False
        self._staged_data: list[bytes] = []

    @property
    def source(self):
        """The stream this player plays: its consumer's (one owner; Worker.adopt_source moves it)."""
        if self.consumer is not None:
            return self.consumer.source
        return self._source

    @source.setter
    def source(self, value) -> None:
        self._source = value

    # ----- asyncio callbacks -------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.restored is not None:
            # Taken over: nothing is read or written until the whole batch commits (transfer.py, I3).
            transport.pause_reading()
            return
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        self.worker.admit(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.restored is not None:
            self._staged_data.append(data)     # staged by a handover batch: parsed once it commits (I3)
            return
        self.recv_bytes += len(data)
        if self.role:
            return  # a streaming player sends nothing we need
        self.buffered.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Raised after the request was read whole (on_message_complete answered it: 501 for WebSocket);
            # nonstop speaks no other protocol on this connection, so what follows the request is ignored.
            if not self.complete:
                self._respond(400, "Bad Request")
        except httptools.HttpParserError as e:
            log.warn(self.cid, f"bad HTTP request from {self.ip}: {e}")
            self._respond(400, "Bad Request")

    def eof_received(self):
        if self.restored is not None:
            self._held_eof = True       # staged by a handover batch: acted on once it commits
            return True
        self.close("client closed the connection")
        return False

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self.close("connection lost" + (f": {exc}" if exc else ""))
        self.worker.forget(self)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        if self.consumer is not None:
            self.consumer.flush(time.monotonic())

    # ----- httptools callbacks -----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.kept_alive = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_REQUEST_HEAD:
            raise httptools.HttpParserError("request head too large")

    def on_message_complete(self) -> None:
        if self.closed:
            return  # a pipelined request after one that was answered or handed to the API (it has the bytes)
        self.in_message = False
        self.complete = True
        method = self.parser.get_method().decode("latin-1")
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self._respond(400, "Bad Request")
            return
        raw_path = parsed.path or b"/"
        path, problem = decode_path(raw_path)
        self.query = (parsed.query or b"").decode("utf-8", "replace")
        if method == "OPTIONS":
            self._respond(200, "OK", body=b"")
            return
        match = self.worker.match_flv(path)
        if match is None:
            if method in ("GET", "HEAD") and hls_http.serve(self, method, path, self.query):
                return  # HLS from memory (nonstop/server/hls_http.py)
            page = console_pages.answer(method, path, self.worker.config)    # /console/, /players/, /
            if page is not None:
                self._write(page)
                self.close("answered a console page")
                return
            if method in ("GET", "HEAD") and self._static(method, parsed.path or b"/"):
                return
            if self.worker.api_app_for(self.listener) is not None:
                self._hand_to_api()
                return
            self._respond(404, "Not Found")
            return
        if problem is not None:
            log.warn(self.cid, f"flv request refused: path {quote(raw_path.decode('latin-1'))} has {problem}, "
                               f"ip={self.ip}")
            self._respond(400, "Bad Request", body=f"400 Bad Request: the path has {problem}\n".encode())
            return
        if method not in FLV_METHODS:
            self._respond(405, "Method Not Allowed", headers=f"Allow: {', '.join(FLV_METHODS)}\r\n")
            return
        if self.headers.get("upgrade", "").strip().lower() == "websocket":
            log.trace(self.cid, f"flv request refused: WebSocket-FLV is not served, path {quote(path)}, ip={self.ip}")
            self._respond(501, "Not Implemented",
                          body=b"501 Not Implemented: nonstop serves HTTP-FLV over plain HTTP, not WebSocket-FLV\n")
            return
        vhost, app, stream = match
        self._play(method, vhost, app, stream)

    # ----- HTTP-FLV ----------------------------------------------------------------------------------------

    def _play(self, method: str, vhost, app: str, stream: str) -> None:
        if self.worker.access.flv_request(self, method, vhost, app, stream):
            return  # asking for a verdict, or refused (403)
        if self.worker.cluster.on_flv_play(self, method, vhost, app, stream):
            return  # answered by the origin cluster (302 or 404)
        now = time.monotonic()
        source = self.worker.registry.get(vhost.name, app, stream)
        if source is None or source.publisher is None:
            # During an upgrade's handover the stream may be on its way: wait until its publisher is
            # attached here, or the handover ends (Worker.retry_waiting_flv), instead of a 404.
            self.wanted = (method, vhost, app, stream)
            if self.worker.wait_for_takeover(self):
                return
        if source is None or source.publisher is None:
            log.trace(self.cid, f"flv play {quote(source_key(vhost.name, app, stream))}: not published, 404")
            self._respond(404, "Not Found")
            return
        chunked = self.parser.get_http_version() != "1.0"
        head = ("HTTP/1.1 200 OK\r\n"
                "Content-Type: video/x-flv\r\n"
                + ("Transfer-Encoding: chunked\r\n" if chunked else "") +
                f"Server: {SERVER_NAME}\r\n"
                "Cache-Control: no-cache\r\n"
                "Connection: close\r\n" + _CORS + "\r\n").encode()
        self.deadline = None
        if method == "HEAD":
            self._write(head)
            self.close("HEAD answered")
            return
        self.role = "play"
        self.vhost, self.app, self.stream, self.source = vhost, app, stream, source
        has_audio = source.audio_sh is not None or source.info.audio_codec is not None
        has_video = source.video_sh is not None or source.info.video_codec is not None
        if not has_audio and not has_video:
            has_audio = has_video = True
        file_header = flv.file_header(has_audio, has_video)
        if chunked:
            file_header = b"%x\r\n%s\r\n" % (len(file_header), file_header)
        self._write(head + file_header)
        self.consumer = Consumer(source, FORMAT_FLV, self)
        self.consumer.chunked = chunked
        self.consumer.start(now)
        log.trace(self.cid, f"flv play {quote(source.key)} ip={self.ip}"
                            + (f", query={quote(self.query)}" if self.query else ""))

    @property
    def wanted_key(self):
        if self.wanted is None:
            return None
        _, vhost, app, stream = self.wanted
        return source_key(vhost.name, app, stream)

    def retry_play(self) -> None:
        """After waiting for an upgrade's handover (worker.wait_for_takeover): play now, wait on, or 404."""
        self._play(*self.wanted)

    def on_source_unpublish(self) -> None:
        """An FLV body has no status messages: wait `republish_window` for the next publisher (the sweep ends
        the body after it), or end now during a graceful quit."""
        window = self.vhost.http_remux.republish_window if self.vhost is not None else 0
        if self.worker.draining or not window:
            self.end_body("the publisher left" + (" during a graceful quit" if self.worker.draining else ""))
        else:
            self.deadline = time.monotonic() + window / 1000

    def on_source_publish(self) -> None:
        self.deadline = None     # republished within the window: the timeline goes on

    def end_body(self, reason: str) -> None:
        """End the FLV body cleanly: the chunked terminator (an HTTP/1.0 body ends with the FIN), then close."""
        if self.closed:
            return
        if self.consumer is not None and self.consumer.chunked:
            self._write(b"0\r\n\r\n")
        self.close(reason)

    # ----- what the origin cluster decided (nonstop/cluster/manager.py), after Cluster.on_flv_play ----------

    def play_local(self, method: str, vhost, app: str, stream: str) -> None:
        """Serve the play from this worker's source: the cluster found the stream published here after all."""
        self._play(method, vhost, app, stream)

    def answer_not_found(self) -> None:
        self._respond(404, "Not Found")

    def answer_redirect(self, location: str) -> None:
        """A `302 Found` to the coworker that has the stream, then close."""
        body = f"302 Found: {location}\n".encode()
        self._write((f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nServer: {SERVER_NAME}\r\n"
                     f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
                     "Access-Control-Allow-Origin: *\r\n\r\n").encode() + body)
        self.close("answered 302")

    def kick(self, reason: str) -> None:
        """Disconnect now: reset, not drained (a kicked player may never read; see nonstop/reset.py)."""
        log.warn(self.cid, f"kick: {reason}")
        self.close(reason, abort=True)

    def _static(self, method: str, raw_path: bytes) -> bool:
        """A file from `http_server.dir` (nonstop/server/static.py), after the FLV mounts; the API's paths stay
        the API's when it shares this port. True when answered."""
        url_path = raw_path.decode("utf-8", "replace")
        if self.worker.api_app_for(self.listener) is not None and static.is_api_path(url_path):
            return False
        root = self.worker.config.http_server.dir
        if not root or not os.path.isdir(root):
            return False
        self.deadline = None        # the body may take longer than a request may
        return static.serve(self, method, url_path, self.headers, root)

    # ----- access control (nonstop/access/gate.py) ----------------------------------------------------------

    def resume_access(self, request) -> None:
        """The verdict allowed the play: go on with it."""
        self._play(*request)

    def refuse_access(self, action: str, request, reason: str) -> None:
        self._respond(403, "Forbidden")

    # ----- plumbing ----------------------------------------------------------------------------------------

    def _hand_to_api(self) -> None:
        """Give this connection, and the bytes read so far, to the aiohttp API application."""
        self.worker.forget(self)
        self.closed = True
        self.worker.api_app_for(self.listener).adopt(self.transport, b"".join(self.buffered))

    def _respond(self, status: int, reason: str, body: bytes | None = None, headers: str = "") -> None:
        """A whole answer, then close. `headers`: more header lines, each ending in CRLF."""
        if body is None:
            body = f"{status} {reason}\n".encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n" + headers + _CORS + "\r\n").encode()
        self._write(head + body)
        self.close(f"answered {status}")

    def send_response(self, parts: list[bytes], keep_alive_s: float | None, reason: str) -> None:
        """A whole response (HLS): then either wait up to `keep_alive_s` for the next request on this
        connection, or close it (None)."""
        if self.transport is not None and not self.transport.is_closing():
            self.control_bytes += sum(len(p) for p in parts)
            self.transport.writelines(parts)
        if keep_alive_s is None:
            self.close(reason)
            return
        self.url, self.headers, self.head_bytes, self.buffered = b"", {}, 0, []
        self.deadline = time.monotonic() + keep_alive_s
        self.kept_alive = True

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.control_bytes += len(data)
            self.transport.write(data)

    def check_deadline(self, now: float) -> None:
        if self.closed:
            return
        if self.left_behind:
            if not self.role and self.transport is not None and not self.transport.get_write_buffer_size():
                self.close("left behind by an upgrade's handover: its response went out")    # a FIN
            elif self.deadline is not None and now >= self.deadline:
                self.close("left behind by an upgrade's handover")
            return
        if self.role == "play":
            if self.source is None or self.source.publisher is not None or self.handing_over:
                return
            if self.worker.draining:
                self.end_body("no publisher during a graceful quit")
            elif self.deadline is not None and now >= self.deadline:
                self.end_body(f"no publisher within republish_window={self.vhost.http_remux.republish_window} ms")
            return
        if self.deadline is not None and now >= self.deadline:
            self.close("no complete request in time")

    def close(self, reason: str, abort: bool = False) -> None:
        """Close gracefully (what was written still goes out), or with `abort` reset the socket at once."""
        if self.closed:
            return
        self.closed = True
        if self.consumer is not None:
            self.consumer.stop(time.monotonic())
            self.control_bytes += self.consumer.bytes_sent
            self.worker.closed_dropped += self.consumer.dropped     # for /metrics' dropped messages
            self.consumer = None
        self.worker.access.closed(self)     # what the hook server is owed (on_stop / on_close)
        if abort or (self.left_behind and (self.role or (self.transport is not None
                                                         and self.transport.get_write_buffer_size()))):
            reset(self.transport)       # a kick, or a left-behind connection whose bound is up
        elif self.transport is not None:
            self.transport.close()
        if self.role:
            log.trace(self.cid, f"close flv player ip={self.ip}, alive={time.monotonic() - self.created_at:.2f}s, "
                                f"reason={reason}")

    # ----- handover ---------------------------------------------------------------------------------------
    # What moves: FLV players (with their stream), connections holding an LL-HLS request (with the stream whose
    # segmenter holds it: the request travels as plain data and is held again, or answered, by the new worker),
    # and connections between requests (a keep-alive HLS player between two polls, or a new connection that has
    # sent nothing yet; they move with the idle RTMP connections). A request half read, or being answered, drains
    # here (its parser state does not move).

    def fileno(self) -> int:
        return self.transport.get_extra_info("socket").fileno()

    def between_requests(self) -> bool:
        """Nothing in flight on this connection: no request begun, none held, no body being written by us."""
        return (not self.role and not self.closed and not self.in_message and self.held is None
                and not self.left_behind and self.restored is None and self.transport is not None
                and (self.kept_alive or self.recv_bytes == 0))

    def begin_handover(self) -> None:
        self.handing_over = True
        if self.consumer is not None:
            self.consumer.detach()
        elif not self.role and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()      # no next request starts here: the receiver reads it

    def cancel_handover(self) -> None:
        self.handing_over = False
        if not self.closed and self.consumer is not None:
            self.consumer.reattach(time.monotonic())
        elif not self.closed and not self.role and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def finish_handover(self) -> None:
        self.closed = True
        self.handed_over = True
        self.consumer = None
        self.worker.forget(self)
        self.transport.abort()
        log.trace(self.cid, "handed over to the new worker")

    def leave_behind(self, deadline: float, source_gone: bool) -> None:
        """Left here by the handover alone (transfer.py I5): it drains, and is cut at `deadline`."""
        self.handing_over = False
        if not self.closed:
            self.left_behind = True
            self.deadline = deadline

    def snapshot(self) -> dict:
        return {"kind": self.kind, "cid": self.cid, "listener": self.listener, "ip": self.ip, "role": self.role,
                "vhost": self.vhost.name if self.vhost is not None else None, "app": self.app,
                "stream": self.stream, "query": self.query,
                "source_key": self.source.key if self.source is not None else None,
                "consumer": self.consumer.snapshot() if self.consumer is not None else None,
                "created_at": self.created_at, "created_wall": self.created_wall,
                "control_bytes": self.control_bytes, "recv_bytes": self.recv_bytes, "deadline": self.deadline,
                "access": self.access.snapshot(),
                # HLS: the held request (method, path, query, deadline) with the headers it came with, or None.
                "held": self.held.snapshot() if self.held is not None else None,
                "headers": dict(self.headers) if self.held is not None else {},
                "kept_alive": self.kept_alive}

    @classmethod
    def restore(cls, worker, snap: dict, source=None) -> "HttpConnection":
        """An FLV player from a handover snapshot, with its stream's source from the same batch, or a connection
        with no player (between requests, or holding an LL-HLS request). Raises on a snapshot that does not fit
        (transfer.py refuses the whole batch then, I3)."""
        self = cls(worker, snap["listener"])
        self.cid, self.ip, self.role = snap["cid"], snap["ip"], snap["role"]
        if snap["vhost"] is not None:
            self.vhost = worker.config.vhosts.get(snap["vhost"]) or worker.config.vhost_for(None)
        self.app, self.stream, self.query = snap["app"], snap["stream"], snap["query"]
        if not self.role:
            held = snap.get("held")
            if held is not None and not (isinstance(held, dict) and set(HELD_FIELDS) <= set(held)):
                raise ValueError(f"a held HLS request that does not fit: {held!r}")
            self.created_at, self.created_wall = snap["created_at"], snap["created_wall"]
            self.control_bytes, self.recv_bytes = snap["control_bytes"], snap["recv_bytes"]
            self.deadline = snap.get("deadline")
            self.headers = dict(snap.get("headers") or {})
            self.kept_alive = bool(snap.get("kept_alive"))
            self.complete = self.recv_bytes > 0
            self.access = ConnAccess.restore(snap.get("access"))
            self.restored = snap
            return self
        if source is None or snap["source_key"] != source.key or snap["consumer"] is None:
            raise ValueError(f"an FLV player of {snap['source_key']} came without its source or position")
        self._source = source
        self.created_at, self.created_wall = snap["created_at"], snap["created_wall"]
        self.control_bytes, self.recv_bytes = snap["control_bytes"], snap["recv_bytes"]
        self.deadline = snap.get("deadline")      # a republish window in progress (monotonic: system-wide)
        self.access = ConnAccess.restore(snap.get("access"))
        self.restored = snap
        return self

    def resume_takeover(self, rejoin=None) -> None:
        """The batch committed (transfer.py): register, attach at the position, write again. With `rejoin`
        (a live source here that replaces the one it came with) it restarts there from the latest keyframe."""
        snap, self.restored = self.restored, None
        if self.closed:
            return      # it went away while staged (a reset): nothing to register
        self.worker.register_restored(self)
        if not self.role:
            self._resume_between_requests(snap)
            return
        self.recv_bytes += sum(len(d) for d in self._staged_data)     # a player's bytes are not parsed
        self._staged_data = []
        if rejoin is not None:
            self._source = rejoin
        self.consumer = Consumer(self._source, snap["consumer"]["fmt"], self)
        self.consumer.restore_counters(snap["consumer"])
        if rejoin is not None:
            self.consumer.start(time.monotonic())
        else:
            self.consumer.attach(snap["consumer"]["position"])
        self.transport.resume_reading()
        self.consumer.flush(time.monotonic())
        log.trace(self.cid, f"taken over: flv play {self._source.key}")
        if self._held_eof:
            self.close("client closed the connection")

    def _resume_between_requests(self, snap: dict) -> None:
        """An HTTP connection with no player: answer (or hold again) the request it held, then read on."""
        self.transport.resume_reading()
        if snap.get("held") is not None:
            hls_http.resume_held(self, snap["held"])
            log.trace(self.cid, f"taken over: held hls request {quote(snap['held']['path'])}")
        staged, self._staged_data = self._staged_data, []
        for data in staged:
            self.data_received(data)
        if self._held_eof:
            self.close("client closed the connection")

    def abandon_takeover(self) -> None:
        """The batch did not commit: let go of our copy of the socket without a FIN (the sender keeps it)."""
        self.restored = None
        self.closed = True
        self.transport.abort()

    @property
    def send_bytes(self) -> int:
        return self.control_bytes + (self.consumer.bytes_sent if self.consumer is not None else 0)
