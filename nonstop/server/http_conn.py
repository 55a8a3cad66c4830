"""HttpConnection: the HTTP server port, parsed with httptools; serves HTTP-FLV through the shared fan-out.

`GET /live/s.flv` (per `http_remux.mount`) answers 200 `video/x-flv` with CORS, then the FLV header, the
metadata, the sequence headers, the GOP and the live tags, from the same per-format bytes every other FLV player
gets. The body runs until the connection closes (no Content-Length, no chunked framing), which srs-reference.md
§7 allows and which lets the tags go out as shared bytes with no per-player framing.

Requests that are not FLV go to the API application when the API shares this port (set by the worker), else
get 404.
"""

from __future__ import annotations

import asyncio
import re
import time

import httptools

from nonstop import SERVER_NAME
from nonstop.access.state import ConnAccess
from nonstop.log import log
from nonstop.media.consumer import Consumer
from nonstop.media.packet import FORMAT_FLV
from nonstop.media.registry import new_id, source_key
from nonstop.protocol import flv

# A request head larger than this is refused: an FLV GET is a few hundred bytes (h11 picks 16 KiB too).
MAX_REQUEST_HEAD = 16 * 1024

_CORS = ("Access-Control-Allow-Origin: *\r\n"
         "Access-Control-Allow-Methods: GET, HEAD, OPTIONS\r\n"
         "Access-Control-Allow-Headers: *\r\n"
         "Access-Control-Expose-Headers: Server\r\n")


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
        self.source = None
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
        self.wanted = None          # (method, vhost, app, stream) of a play waiting for a handover
        self.waited = False
        self.access = ConnAccess()  # what access control granted and is owed (nonstop/access)

    # ----- asyncio callbacks -------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.restored is not None:
            self._resume_restored()
            return
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        self.worker.admit(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.recv_bytes += len(data)
        if self.role:
            return  # a streaming player sends nothing we need
        self.buffered.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._respond(400, "Bad Request")
        except httptools.HttpParserError as e:
            log.warn(self.cid, f"bad HTTP request from {self.ip}: {e}")
            self._respond(400, "Bad Request")

    def eof_received(self):
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
        method = self.parser.get_method().decode("latin-1")
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self._respond(400, "Bad Request")
            return
        path = (parsed.path or b"/").decode("utf-8", "replace")
        self.query = (parsed.query or b"").decode("utf-8", "replace")
        if method == "OPTIONS":
            self._respond(200, "OK", body=b"")
            return
        match = self.worker.match_flv(path) if method in ("GET", "HEAD") else None
        if match is None:
            if self.worker.api_app_for(self.listener) is not None:
                self._hand_to_api()
                return
            self._respond(404, "Not Found")
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
        if (source is None or source.publisher is None) and not self.waited:
            self.wanted = (method, vhost, app, stream)
            if self.worker.wait_for_takeover(self):
                return
        if source is None or source.publisher is None:
            log.trace(self.cid, f"flv play {vhost.name}/{app}/{stream}: not published, 404")
            self._respond(404, "Not Found")
            return
        head = ("HTTP/1.1 200 OK\r\n"
                "Content-Type: video/x-flv\r\n"
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
        self._write(head + flv.file_header(has_audio, has_video))
        self.consumer = Consumer(source, FORMAT_FLV, self)
        self.consumer.start(now)
        log.trace(self.cid, f"flv play {source.key} ip={self.ip}" + (f", query={self.query}" if self.query else ""))

    @property
    def wanted_key(self):
        if self.wanted is None:
            return None
        _, vhost, app, stream = self.wanted
        return source_key(vhost.name, app, stream)

    def retry_play(self) -> None:
        """After waiting for an upgrade's handover (worker.wait_for_takeover): play now, or 404."""
        self.waited = True
        self._play(*self.wanted)

    def on_source_unpublish(self) -> None:
        pass  # an FLV body has no status messages: the player waits for the next publisher's tags

    def on_source_publish(self) -> None:
        pass

    def kick(self, reason: str) -> None:
        log.warn(self.cid, f"kick: {reason}")
        self.close(reason)

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

    def _respond(self, status: int, reason: str, body: bytes | None = None) -> None:
        if body is None:
            body = f"{status} {reason}\n".encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_NAME}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n" + _CORS + "\r\n").encode()
        self._write(head + body)
        self.close(f"answered {status}")

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.control_bytes += len(data)
            self.transport.write(data)

    def check_deadline(self, now: float) -> None:
        if not self.closed and self.deadline is not None and now >= self.deadline:
            self.close("no complete request in time")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.consumer is not None:
            self.consumer.stop(time.monotonic())
            self.control_bytes += self.consumer.bytes_sent
            self.worker.closed_dropped += self.consumer.dropped     # for /metrics' dropped messages
            self.consumer = None
        self.worker.access.closed(self)     # on_stop to the hook server, if it is owed one
        if self.transport is not None:
            self.transport.close()
        if self.role:
            log.trace(self.cid, f"close flv player ip={self.ip}, alive={time.monotonic() - self.created_at:.2f}s, "
                                f"reason={reason}")

    # ----- handover (FLV players only; a request in flight drains here) ------------------------------------

    def fileno(self) -> int:
        return self.transport.get_extra_info("socket").fileno()

    def begin_handover(self) -> None:
        self.handing_over = True
        if self.consumer is not None:
            self.source.consumers.discard(self.consumer)

    def cancel_handover(self) -> None:
        self.handing_over = False
        if not self.closed and self.consumer is not None and self.source is not None:
            self.source.consumers.add(self.consumer)
            self.consumer.flush(time.monotonic())

    def finish_handover(self) -> None:
        self.closed = True
        self.handed_over = True
        self.consumer = None
        self.worker.forget(self)
        self.transport.abort()
        log.trace(self.cid, "handed over to the new worker")

    def snapshot(self) -> dict:
        return {"kind": self.kind, "cid": self.cid, "listener": self.listener, "ip": self.ip, "role": self.role,
                "vhost": self.vhost.name if self.vhost is not None else None, "app": self.app,
                "stream": self.stream, "query": self.query,
                "source_key": self.source.key if self.source is not None else None,
                "consumer": self.consumer.snapshot() if self.consumer is not None else None,
                "created_at": self.created_at, "created_wall": self.created_wall,
                "control_bytes": self.control_bytes, "recv_bytes": self.recv_bytes,
                "access": self.access.snapshot()}

    @classmethod
    def restore(cls, worker, snap: dict) -> "HttpConnection":
        self = cls(worker, snap["listener"])
        self.cid, self.ip, self.role = snap["cid"], snap["ip"], snap["role"]
        if snap["vhost"] is not None:
            self.vhost = worker.config.vhosts.get(snap["vhost"]) or worker.config.vhost_for(None)
        self.app, self.stream, self.query = snap["app"], snap["stream"], snap["query"]
        if snap["source_key"] is not None:
            self.source = worker.registry.sources.get(snap["source_key"])
        self.created_at, self.created_wall = snap["created_at"], snap["created_wall"]
        self.control_bytes, self.recv_bytes = snap["control_bytes"], snap["recv_bytes"]
        self.deadline = None
        self.access = ConnAccess.restore(snap.get("access"))
        self.restored = snap
        return self

    def _resume_restored(self) -> None:
        snap, self.restored = self.restored, None
        self.worker.register_restored(self)
        if self.source is None or snap["consumer"] is None:
            self.close("handed over without its source")
            return
        self.consumer = Consumer(self.source, snap["consumer"]["fmt"], self)
        self.consumer.restore_counters(snap["consumer"])
        self.consumer.attach(snap["consumer"]["position"])
        self.consumer.flush(time.monotonic())
        log.trace(self.cid, f"taken over: flv play {self.source.key}")

    @property
    def send_bytes(self) -> int:
        return self.control_bytes + (self.consumer.bytes_sent if self.consumer is not None else 0)
