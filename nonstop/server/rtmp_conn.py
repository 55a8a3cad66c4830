"""RtmpConnection: the asyncio protocol that feeds one socket's bytes to an RtmpSession and acts on its events.

No coroutine per connection (architecture decision 5): callbacks feed the sans-IO session, and everything the
connection knows lives in plain attributes, so it can be snapshotted and handed to another process.
Deadlines are `time.monotonic()` values checked by the worker's one-second sweep (decision 6).
"""

from __future__ import annotations

import asyncio
import time

from nonstop.access.state import ConnAccess
from nonstop.cluster.urls import host_of_url
from nonstop.log import log
from nonstop.media.consumer import Consumer
from nonstop.media.packet import rtmp_format
from nonstop.media.registry import new_id
from nonstop.protocol import rtmp
from nonstop.protocol.errors import ProtocolError

ROLE_NONE = ""
ROLE_PUBLISH = "publish"
ROLE_PLAY = "play"
# SRS waits up to 3 s after a refusal or redirect before closing, so the client can read it.
CLOSE_AFTER_REFUSAL_S = 3.0


class RtmpConnection(asyncio.Protocol):
    kind = "rtmp"

    def __init__(self, worker, listener: str = "rtmp"):
        self.worker = worker
        self.cid = new_id()
        self.listener = listener
        self.session = rtmp.RtmpSession(rtmp.SERVER, server_info=worker.server_info())
        self.transport = None
        self.ip = ""
        self.role = ROLE_NONE
        self.vhost = None            # the config.Vhost serving this client
        self.source = None
        self.consumer: Consumer | None = None
        self.stream_id = 0
        self.publish_fmle = False
        now = time.monotonic()
        self.created_at = now
        self.created_wall = time.time()
        self.deadline: float | None = now + worker.config.handshake_timeout / 1000
        self.last_media_at = now
        self.got_media = False
        self.closed = False
        self.close_reason = ""
        self.handing_over = False
        self.control_bytes = 0
        self.restored: dict | None = None   # the snapshot this connection was restored from, until resumed
        self.page_url = ""
        self.swf_url = ""
        self.access = ConnAccess()          # what access control granted and is owed (nonstop/access)
        self.held_events: list = []         # what the client sent while its verdict was pending

    # ----- asyncio callbacks -------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.restored is not None:
            self._resume_restored()
            return
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        # uvloop turns TCP_NODELAY on for every TCP transport; `tcp_nodelay off` is not honoured (README).
        self.worker.admit(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._on_events(self.session.receive_data(data))
        except ProtocolError as e:
            self._flush_session()
            self.close(f"protocol error: {e}")
            return
        self._flush_session()

    def eof_received(self):
        self.close("client closed the connection")
        return False

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self.close("connection lost" + (f": {exc}" if exc else ""))
        self.worker.forget(self)

    def pause_writing(self) -> None:
        pass  # the consumer checks the buffer itself before each flush

    def resume_writing(self) -> None:
        if self.consumer is not None:
            self.consumer.flush(time.monotonic())

    # ----- events -----------------------------------------------------------------------------------------

    def _flush_session(self) -> None:
        out = self.session.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.control_bytes += len(out)
            self.transport.write(out)

    def _on_events(self, events) -> None:
        for i, event in enumerate(events):
            if self.access.pending is not None:     # a verdict is pending: the rest waits for it
                self.held_events.extend(events[i:])
                return
            self._on_event(event)

    def _on_event(self, event) -> None:
        if isinstance(event, rtmp.Media):
            if self.role == ROLE_PUBLISH:
                self.last_media_at = time.monotonic()
                if not self.got_media:
                    self.deadline = None    # the first packet came in time: normal_timeout applies from now
                self.got_media = True
                self.source.on_media(event.type_id, event.timestamp, event.payload, self.last_media_at)
        elif isinstance(event, rtmp.ConnectRequest):
            self._on_connect(event)
        elif isinstance(event, rtmp.PublishRequest):
            self._on_publish(event)
        elif isinstance(event, rtmp.PlayRequest):
            self._on_play(event)
        elif isinstance(event, rtmp.Unpublish):
            self._stop_publishing("client unpublished")
        elif isinstance(event, rtmp.StopPlay):
            self._stop_playing()
        elif isinstance(event, rtmp.Pause):
            if self.consumer is not None:
                self.consumer.paused = event.paused
                log.trace(self.cid, f"{'pause' if event.paused else 'resume'} play")
                if not event.paused:
                    self.consumer.flush(time.monotonic())

    def _on_connect(self, event: rtmp.ConnectRequest) -> None:
        host = host_of_url(event.tc_url)
        query = rtmp.parse_query(event.query)
        vhost = self.worker.config.vhost_for(query.get("vhost") or host)
        if vhost is None or not vhost.enabled:
            log.warn(self.cid, f"connect refused: no vhost for host={host!r}, tcUrl={event.tc_url}")
            self.session.reject_connect(event, f"no such vhost: {host}")
            self.close_later("no such vhost")
            return
        self.vhost = vhost
        # For the API's client JSON (SRS shows them): the Flash-era page and SWF URLs of the connect command.
        self.page_url = _text(event.command_object.get("pageUrl"))
        self.swf_url = _text(event.command_object.get("swfUrl"))
        self.session.out_chunk_size = vhost.chunk_size or self.worker.config.chunk_size
        self.session.accept_connect(event)
        self.deadline = None
        log.trace(self.cid, f"connect ip={self.ip}, vhost={vhost.name}, app={event.app}, tcUrl={event.tc_url}"
                            + (f", query={event.query}" if event.query else ""))

    def _on_publish(self, event: rtmp.PublishRequest) -> None:
        if self.role != ROLE_NONE:
            raise rtmp.RtmpError(f"publish while already {self.role}ing")
        if self.worker.access.rtmp_request(self, ROLE_PUBLISH, event):
            return  # asking for a verdict (reading paused), or refused
        if self.worker.cluster.on_publish(self, event):
            return  # the origin cluster decides later (publish uniqueness)
        now = time.monotonic()
        source = self.worker.fetch_source(self.vhost, self.session.app, event.name, now)
        if not source.can_publish():
            log.warn(self.cid, f"publish refused: stream {source.key} is busy (publisher {source.publisher.cid})")
            self.session.reject_publish(event)
            self.close_later("stream busy")
            return
        self.role = ROLE_PUBLISH
        self.source = source
        self.stream_id = event.stream_id
        self.publish_fmle = event.fmle
        self.session.accept_publish(event)
        source.on_publish(self, now)
        self.last_media_at = now
        self.deadline = now + self.vhost.publish.firstpkt_timeout / 1000
        log.trace(self.cid, f"publish {source.key}, type={event.publish_type}, fmle={event.fmle}"
                            + (f", query={event.query}" if event.query else ""))

    def _on_play(self, event: rtmp.PlayRequest) -> None:
        if self.role != ROLE_NONE:
            raise rtmp.RtmpError(f"play while already {self.role}ing")
        if self.worker.access.rtmp_request(self, ROLE_PLAY, event):
            return  # asking for a verdict (reading paused), or refused
        if self.worker.cluster.on_play(self, event):
            return  # answered by the origin cluster (redirect or StreamNotFound)
        now = time.monotonic()
        source = self.worker.fetch_source(self.vhost, self.session.app, event.name, now)
        self.role = ROLE_PLAY
        self.source = source
        self.stream_id = event.stream_id
        self.session.accept_play(event)
        self._flush_session()
        self.consumer = Consumer(source, rtmp_format(self.session.out_chunk_size), self)
        self.consumer.start(now)
        log.trace(self.cid, f"play {source.key}, start={event.start:g}, duration={event.duration:g}, "
                            f"publisher={'yes' if source.publisher else 'waiting'}"
                            + (f", query={event.query}" if event.query else ""))

    def _stop_publishing(self, reason: str) -> None:
        if self.role == ROLE_PUBLISH and self.source is not None:
            self.source.on_unpublish(time.monotonic())
            log.trace(self.cid, f"unpublish {self.source.key}: {reason}")
            self.worker.access.left(self, ROLE_PUBLISH)
            self.role = ROLE_NONE
            self.source = None
            self.deadline = None

    def _stop_playing(self) -> None:
        if self.consumer is not None:
            self.consumer.stop(time.monotonic())
            self.control_bytes += self.consumer.bytes_sent   # keep the total once the consumer is gone
            self.worker.closed_dropped += self.consumer.dropped     # the same for /metrics' dropped messages
            log.trace(self.cid, f"stop play {self.source.key}")
            self.worker.access.left(self, ROLE_PLAY)
            self.consumer = None
            self.source = None
            self.role = ROLE_NONE

    # ----- what the source tells a player ------------------------------------------------------------------

    def on_source_unpublish(self) -> None:
        self.session.send_unpublish_notify(self.stream_id)
        self._flush_session()

    def on_source_publish(self) -> None:
        self.session.send_stream_begin(self.stream_id)
        self.session.send_publish_notify(self.stream_id)
        self._flush_session()

    def kick(self, reason: str) -> None:
        log.warn(self.cid, f"kick: {reason}")
        self.close(reason)

    # ----- access control (nonstop/access/gate.py) ----------------------------------------------------------

    def hold_for_access(self) -> None:
        """A publish or play waits for its verdict: read nothing more meanwhile."""
        self.transport.pause_reading()

    def resume_access(self, request) -> None:
        """The verdict allowed `request`: go on with it, then with what the client sent meanwhile."""
        held, self.held_events = self.held_events, []
        if not self.handing_over:
            self.transport.resume_reading()
        try:
            self._on_events([request, *held])
        except ProtocolError as e:
            self._flush_session()
            self.close(f"protocol error: {e}")
            return
        self._flush_session()

    def refuse_access(self, action: str, request, reason: str) -> None:
        """Refused: an error onStatus, NetStream.Publish.Rejected or NetStream.Play.Rejected (every RTMP client
        reads level=error as a refusal: ffmpeg says "Server error: Publish access denied."), then a close. The
        reason stays in the log: it may name a hook URL."""
        self.held_events = []
        self.session.send_status(request.stream_id, "error", f"NetStream.{action.capitalize()}.Rejected",
                                 f"{action.capitalize()} access denied.")
        self._flush_session()
        self.close_later(f"{action} refused")

    def send_status(self, code: str, description: str) -> None:
        """An onStatus on this client's stream, e.g. a publisher's last NetStream.Unpublish.Success at quit."""
        self.session.send_status(self.stream_id, "status", code, description)
        self._flush_session()

    # ----- deadlines and closing ---------------------------------------------------------------------------

    def check_deadline(self, now: float) -> None:
        if self.closed:
            return
        if self.deadline is not None and now >= self.deadline:
            if self.role == ROLE_PUBLISH:
                self.close(f"publisher sent no media for {self.vhost.publish.firstpkt_timeout} ms")
            elif self.close_reason:
                self.close(self.close_reason)
            else:
                self.close(f"handshake and connect not done within {self.worker.config.handshake_timeout} ms")
            return
        if self.role == ROLE_PUBLISH and self.got_media:
            if (now - self.last_media_at) * 1000 > self.vhost.publish.normal_timeout:
                self.close(f"publisher idle for {self.vhost.publish.normal_timeout} ms")

    def close_later(self, reason: str) -> None:
        """Refusals leave the client time to read the answer (SRS waits up to 3 s), then close."""
        self.close_reason = reason
        self.deadline = time.monotonic() + CLOSE_AFTER_REFUSAL_S
        self.transport.pause_reading()

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.role == ROLE_PUBLISH:
            self._stop_publishing(reason)
        elif self.consumer is not None:
            self._stop_playing()
        self.session.close()
        self.worker.access.closed(self)     # on_close (and what else is owed) to the hook server
        if self.transport is not None:
            self.transport.close()
        alive = time.monotonic() - self.created_at
        log.trace(self.cid, f"close ip={self.ip}, alive={alive:.2f}s, reason={reason}")

    # ----- handover -----------------------------------------------------------------------------------------

    def fileno(self) -> int:
        return self.transport.get_extra_info("socket").fileno()

    def begin_handover(self) -> None:
        """Quiesce: read nothing more, feed the player nothing more, so its position becomes exact."""
        self.handing_over = True
        self.transport.pause_reading()
        if self.consumer is not None:
            self.source.consumers.discard(self.consumer)

    def cancel_handover(self) -> None:
        self.handing_over = False
        if self.closed:
            return
        self.transport.resume_reading()
        if self.consumer is not None and self.source is not None:
            self.source.consumers.add(self.consumer)
            self.consumer.flush(time.monotonic())

    def finish_handover(self) -> None:
        """The receiver holds the socket now: close our fd only, so the client sees no FIN and no RST."""
        self.closed = True
        self.handed_over = True
        self.consumer = None
        self.worker.forget(self)
        self.transport.abort()
        log.trace(self.cid, "handed over to the new worker")

    def snapshot(self) -> dict:
        return {
            "kind": self.kind, "cid": self.cid, "listener": self.listener, "ip": self.ip, "role": self.role,
            "vhost": self.vhost.name if self.vhost is not None else None,
            "source_key": self.source.key if self.source is not None else None,
            "stream_id": self.stream_id, "publish_fmle": self.publish_fmle,
            "session": self.session.snapshot(),
            "consumer": self.consumer.snapshot() if self.consumer is not None else None,
            "created_at": self.created_at, "created_wall": self.created_wall, "deadline": self.deadline,
            "last_media_at": self.last_media_at, "got_media": self.got_media,
            "control_bytes": self.control_bytes, "close_reason": self.close_reason,
            "page_url": self.page_url, "swf_url": self.swf_url,
            "access": self.access.snapshot(),
        }

    @classmethod
    def restore(cls, worker, snap: dict) -> "RtmpConnection":
        self = cls(worker, snap["listener"])
        self.cid, self.ip, self.role = snap["cid"], snap["ip"], snap["role"]
        self.session = rtmp.RtmpSession.restore(snap["session"])
        if snap["vhost"] is not None:
            self.vhost = worker.config.vhosts.get(snap["vhost"]) or worker.config.vhost_for(None)
        if snap["source_key"] is not None:
            self.source = worker.registry.sources.get(snap["source_key"])
        self.stream_id, self.publish_fmle = snap["stream_id"], snap["publish_fmle"]
        self.created_at, self.created_wall = snap["created_at"], snap["created_wall"]
        self.deadline, self.last_media_at = snap["deadline"], snap["last_media_at"]
        self.got_media, self.control_bytes = snap["got_media"], snap["control_bytes"]
        self.close_reason = snap["close_reason"]
        self.page_url, self.swf_url = snap.get("page_url", ""), snap.get("swf_url", "")
        self.access = ConnAccess.restore(snap.get("access"))
        self.restored = snap
        return self

    def _resume_restored(self) -> None:
        snap, self.restored = self.restored, None
        self.worker.register_restored(self)
        now = time.monotonic()
        if self.role == ROLE_PUBLISH and self.source is not None:
            self.source.publisher = self
            self.source.idle_since = None
        elif self.role == ROLE_PLAY and self.source is not None and snap["consumer"] is not None:
            self.consumer = Consumer(self.source, snap["consumer"]["fmt"], self)
            self.consumer.restore_counters(snap["consumer"])
            self.consumer.attach(snap["consumer"]["position"])
            self.consumer.flush(now)
        elif self.role:
            self.close("handed over without its source")
            return
        pending = self.worker.access.pending_request(self)
        if pending is not None:
            self._on_event(pending)
        self._flush_session()
        log.trace(self.cid, f"taken over: {self.role or 'idle'} {self.source.key if self.source else ''}".rstrip())

    # ----- stats, read by the API and metrics ---------------------------------------------------------------

    @property
    def send_bytes(self) -> int:
        return self.control_bytes + (self.consumer.bytes_sent if self.consumer is not None else 0)

    @property
    def recv_bytes(self) -> int:
        return self.session.bytes_received


def _text(value) -> str:
    return value if isinstance(value, str) else ""
