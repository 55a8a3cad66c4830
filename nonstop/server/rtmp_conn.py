"""RtmpConnection: the asyncio protocol that feeds one socket's bytes to an RtmpSession and acts on its events.

No coroutine per connection (architecture decision 5): callbacks feed the sans-IO session, and everything the
connection knows lives in plain attributes, so it can be snapshotted and handed to another process.
Deadlines are `time.monotonic()` values checked by the worker's one-second sweep (decision 6).
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
import time

from nonstop.access.state import ConnAccess
from nonstop.cluster.urls import host_of_url
from nonstop.log import log, quote
from nonstop.media.consumer import Consumer
from nonstop.media.packet import rtmp_format
from nonstop.media.registry import new_id
from nonstop.protocol import rtmp
from nonstop.protocol.errors import ProtocolError
from nonstop.server.names import name_problem
from nonstop.reset import reset

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
        self._source = None          # a publisher's source; a player's is its consumer's (see `source`)
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
        self.left_behind = False
        self.control_bytes = 0
        self.restored: dict | None = None   # the snapshot this connection was restored from, until resumed
        self._held: list[bytes] = []        # bytes read while staged by a handover, until resumed
        self._held_eof = False
        self.page_url = ""
        self.swf_url = ""
        self.access = ConnAccess()          # what access control granted and is owed (nonstop/access)
        self.held_events: list = []         # what the client sent while its verdict was pending

    @property
    def source(self):
        """The stream this connection publishes or plays. One owner: a player's consumer knows which source it
        plays (Worker.adopt_source moves it), so the handover, the API and this connection all ask it."""
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
            # Taken over: nothing is acted on or written until the whole batch commits (transfer.py, I3).
            # uvloop starts reading after this returns whatever we do here: what comes is held (below).
            transport.pause_reading()
            return
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        # uvloop turns TCP_NODELAY on for every TCP transport; `tcp_nodelay off` is not honoured (README).
        self.worker.admit(self)

    def data_received(self, data: bytes) -> None:
        """Feed the session, at most rtmp.MAX_CHUNKS_PER_CALL chunks per call. When bytes are left over, stop
        reading and parse on at the loop's next turn (call_soon), so one client's read never holds the loop:
        the other connections, the API and the tick run between two slices."""
        if self.closed:
            return
        if self.restored is not None:
            # Staged by a handover batch not yet committed: hold the bytes, read no more (resume_takeover
            # feeds them to the session once the batch is registered).
            self._held.append(data)
            self.transport.pause_reading()
            return
        try:
            self._on_events(self.session.receive_data(data))
        except ProtocolError as e:
            self._flush_session()
            self.close(f"protocol error: {e}")
            return
        self._flush_session()
        if self.closed:
            return
        if self.session.input_pending and not self.handing_over and self.transport.is_reading():
            # Reading paused here is ours to resume; one paused by someone else (a refusal, the cluster, a
            # handover) stays paused, and the pending bytes wait in the session for the next read.
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._read_pending)

    def _read_pending(self) -> None:
        """The next slice of bytes data_received() left in the session (see there)."""
        if self.closed or self.handing_over or self.close_reason:
            return
        self.transport.resume_reading()
        self.data_received(b"")

    def eof_received(self):
        if self.restored is not None:
            self._held_eof = True       # staged: acted on once the batch commits
            return True
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
                self._source.on_media(event.type_id, event.timestamp, event.payload, self.last_media_at)
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
        if self._refuse_bad_name(event, event.app, "app"):
            return
        host = host_of_url(event.tc_url)
        query = rtmp.parse_query(event.query)
        vhost = self.worker.config.vhost_for(query.get("vhost") or host)
        if vhost is None or not vhost.enabled:
            log.warn(self.cid, f"connect refused: no vhost for host={quote(host)!r}, tcUrl={quote(event.tc_url)}")
            self.session.reject_connect(event, f"no such vhost: {host}")
            self.close_later("no such vhost")
            return
        self.vhost = vhost
        # For the API's client JSON (SRS shows them): the Flash-era page and SWF URLs of the connect command.
        self.page_url = _text(event.command_object.get("pageUrl"))
        self.swf_url = _text(event.command_object.get("swfUrl"))
        self.session.out_chunk_size = vhost.chunk_size or self.worker.config.chunk_size
        self.session.accept_connect(event)
        # Connected is not identified: publish or play must follow within identify_timeout (check_deadline).
        self.deadline = time.monotonic() + self.worker.config.identify_timeout / 1000
        log.trace(self.cid, f"connect ip={self.ip}, vhost={vhost.name}, app={quote(event.app)}, "
                            f"tcUrl={quote(event.tc_url)}" + (f", query={quote(event.query)}" if event.query else ""))

    def _on_publish(self, event: rtmp.PublishRequest) -> None:
        if self.role != ROLE_NONE:
            raise rtmp.RtmpError(f"publish while already {self.role}ing")
        if self._refuse_bad_name(event, event.name, "stream"):
            return
        if self.worker.access.rtmp_request(self, ROLE_PUBLISH, event):
            return  # asking for a verdict (reading paused), or refused
        if self.worker.cluster.on_publish(self, event):
            return  # the origin cluster decides later (publish uniqueness)
        now = time.monotonic()
        source = self.worker.fetch_source(self.vhost, self.session.app, event.name, now)
        if not source.can_publish():
            log.warn(self.cid, f"publish refused: stream {quote(source.key)} is busy "
                               f"(publisher {source.publisher.cid})")
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
        log.trace(self.cid, f"publish {quote(source.key)}, type={quote(event.publish_type)}, fmle={event.fmle}"
                            + (f", query={quote(event.query)}" if event.query else ""))

    def _on_play(self, event: rtmp.PlayRequest) -> None:
        if self.role != ROLE_NONE:
            raise rtmp.RtmpError(f"play while already {self.role}ing")
        if self._refuse_bad_name(event, event.name, "stream"):
            return
        if self.worker.access.rtmp_request(self, ROLE_PLAY, event):
            return  # asking for a verdict (reading paused), or refused
        if self.worker.cluster.on_play(self, event):
            return  # answered by the origin cluster (redirect or StreamNotFound)
        now = time.monotonic()
        source = self.worker.fetch_source(self.vhost, self.session.app, event.name, now)
        self.role = ROLE_PLAY
        self.source = source
        self.stream_id = event.stream_id
        self.deadline = None    # identified: identify_timeout no longer applies
        self.session.accept_play(event)
        self._flush_session()
        self.consumer = Consumer(source, rtmp_format(self.session.out_chunk_size), self)
        self.consumer.start(now)
        log.trace(self.cid, f"play {quote(source.key)}, start={event.start:g}, duration={event.duration:g}, "
                            f"publisher={'yes' if source.publisher else 'waiting'}"
                            + (f", query={quote(event.query)}" if event.query else ""))

    def _refuse_bad_name(self, event, name: str, what: str) -> bool:
        """Refuse an app or stream name with control characters (server/names.py), as the protocol says no to
        each request (SRS's codes), then close after the usual wait. True when refused."""
        problem = name_problem(name)
        if problem is None:
            return False
        description = f"Invalid {what} name: {problem}."
        if isinstance(event, rtmp.ConnectRequest):
            verb = "connect"
            self.session.reject_connect(event, description)
        elif isinstance(event, rtmp.PublishRequest):
            verb = "publish"
            self.session.reject_publish(event, description, code="NetStream.Publish.BadName")
        else:
            verb = "play"
            self.session.send_status(event.stream_id, "error", "NetStream.Play.StreamNotFound", description)
        log.warn(self.cid, f"{verb} refused: {what} name \"{quote(name)}\" has a {problem}, ip={self.ip}")
        self.close_later(f"invalid {what} name")
        return True

    def _stop_publishing(self, reason: str) -> None:
        if self.role == ROLE_PUBLISH and self.source is not None:
            self.source.on_unpublish(time.monotonic())
            log.trace(self.cid, f"unpublish {quote(self.source.key)}: {reason}")
            self.worker.access.left(self, ROLE_PUBLISH)
            self.role = ROLE_NONE
            self.source = None
            self.deadline = None

    def _stop_playing(self) -> None:
        if self.consumer is not None:
            self.consumer.stop(time.monotonic())
            self.control_bytes += self.consumer.bytes_sent   # keep the total once the consumer is gone
            self.worker.closed_dropped += self.consumer.dropped     # the same for /metrics' dropped messages
            log.trace(self.cid, f"stop play {quote(self.source.key)}")
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

    # ----- what the origin cluster decided (nonstop/cluster/manager.py), after Cluster.on_play/on_publish ---

    def play_local(self, event: rtmp.PlayRequest) -> None:
        """Play from this worker's source: the cluster found the stream published here after all."""
        self._on_play(event)
        self._flush_session()

    def publish_local(self, event: rtmp.PublishRequest) -> None:
        """Publish here: no coworker has the stream."""
        self._on_publish(event)
        self._flush_session()

    def answer_stream_not_found(self, event: rtmp.PlayRequest, reason: str) -> None:
        """`NetStream.Play.StreamNotFound`, then close."""
        self.session.send_stream_not_found(event.stream_id, event.name)
        self._flush_session()
        self.close(reason)

    def answer_redirect(self, event: rtmp.PlayRequest, tc_url: str, stream_url: str) -> None:
        """SRS's RTMP 302 to the coworker that has the stream; closed once the client had time to read it."""
        self.session.send_redirect(event.stream_id, tc_url, stream_url)
        self._flush_session()
        self.close_later(f"redirected to {stream_url}")

    def refuse_publish(self, event: rtmp.PublishRequest, description: str, reason: str) -> None:
        """`NetStream.Publish.BadName` with `description`; closed once the client had time to read it."""
        self.session.reject_publish(event, description)
        self._flush_session()
        self.close_later(reason)

    def kick(self, reason: str) -> None:
        """Disconnect now (the API's DELETE, a player too slow): the socket is reset, not drained, since a kicked
        client may be one that never reads; it is forgotten and counted out at once (nonstop/reset.py)."""
        log.warn(self.cid, f"kick: {reason}")
        self.close(reason, abort=True)

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
        """Called by the worker's sweep. Nobody is judged idle while bytes from them wait unread in the socket
        or in the session: after a stall of the worker (SIGSTOP, a VM pause), a publisher's data is there, we
        just have not read it yet."""
        if self.closed:
            return
        if self.role == ROLE_NONE and self.deadline is None and self.vhost is not None and not self.close_reason:
            # Connected, and not (or no longer) publishing or playing: identify_timeout runs from now.
            self.deadline = now + self.worker.config.identify_timeout / 1000
        if self.deadline is not None and now >= self.deadline:
            if self.role == ROLE_PUBLISH:
                if self._input_waiting():
                    return
                self.close(f"publisher sent no media for {self.vhost.publish.firstpkt_timeout} ms")
            elif self.close_reason:
                self.close(self.close_reason)
            elif self.vhost is not None:
                self.close(f"connected but neither published nor played within identify_timeout "
                           f"{self.worker.config.identify_timeout} ms")
            else:
                self.close(f"handshake and connect not done within {self.worker.config.handshake_timeout} ms")
            return
        if self.role == ROLE_PUBLISH and self.got_media:
            if (now - self.last_media_at) * 1000 > self.vhost.publish.normal_timeout and not self._input_waiting():
                self.close(f"publisher idle for {self.vhost.publish.normal_timeout} ms")

    def _input_waiting(self) -> bool:
        """Bytes from the client not parsed yet: in the session (a read budget's leftover) or the socket."""
        if self.session.input_pending:
            return True
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] > 0
        except OSError:
            return False

    def close_later(self, reason: str) -> None:
        """Refusals leave the client time to read the answer (SRS waits up to 3 s), then close."""
        self.close_reason = reason
        self.deadline = time.monotonic() + CLOSE_AFTER_REFUSAL_S
        self.transport.pause_reading()

    def close(self, reason: str, abort: bool = False) -> None:
        """Close gracefully (what was written still goes out), or with `abort` reset the socket at once."""
        if self.closed:
            return
        self.closed = True
        if self.role == ROLE_PUBLISH:
            self._stop_publishing(reason)
        elif self.consumer is not None:
            self._stop_playing()
        self.session.close()
        self.worker.access.closed(self)     # what the hook server is owed (on_stop / on_close)
        if abort or self.left_behind:
            reset(self.transport)       # a kick, or a left-behind connection whose bound is up
        elif self.transport is not None:
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
            self.consumer.detach()

    def cancel_handover(self) -> None:
        self.handing_over = False
        if self.closed:
            return
        self.transport.resume_reading()
        if self.consumer is not None:
            self.consumer.reattach(time.monotonic())

    def finish_handover(self) -> None:
        """The receiver holds the socket now: close our fd only, so the client sees no FIN and no RST."""
        self.closed = True
        self.handed_over = True
        self.consumer = None
        self.worker.forget(self)
        self.transport.abort()
        log.trace(self.cid, "handed over to the new worker")

    def leave_behind(self, deadline: float, source_gone: bool) -> None:
        """Left here by the handover, alone (a writer that did not drain, or too big to move; transfer.py I5):
        it drains what it holds and is closed at `deadline`, so the old worker's exit is bounded. A player
        of a stream that moved is told the stream ended; a connection with no stream stays unread (it must
        not start a stream here that lives on in the new worker)."""
        self.handing_over = False
        if self.closed:
            return
        if source_gone and self.role:
            self.transport.resume_reading()
            if self.role == ROLE_PLAY:
                self.on_source_unpublish()
        self.close_reason = "left behind by an upgrade's handover"
        self.deadline = deadline
        self.left_behind = True

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
    def restore(cls, worker, snap: dict, source=None) -> "RtmpConnection":
        """A connection from a handover snapshot; `source` is its stream's source from the same batch. Raises
        on a snapshot that does not fit (transfer.py refuses the whole batch then, I3)."""
        self = cls(worker, snap["listener"])
        self.cid, self.ip, self.role = snap["cid"], snap["ip"], snap["role"]
        self.session = rtmp.RtmpSession.restore(snap["session"])
        if snap["vhost"] is not None:
            self.vhost = worker.config.vhosts.get(snap["vhost"]) or worker.config.vhost_for(None)
        if self.role:
            if source is None or snap["source_key"] != source.key:
                raise ValueError(f"a {self.role} connection of {snap['source_key']} came without its source")
            if self.role == ROLE_PLAY and snap["consumer"] is None:
                raise ValueError("a player came without its position")
            if self.vhost is None:
                raise ValueError(f"a {self.role} connection came without its vhost")
            self._source = source
        self.stream_id, self.publish_fmle = snap["stream_id"], snap["publish_fmle"]
        self.created_at, self.created_wall = snap["created_at"], snap["created_wall"]
        self.deadline, self.last_media_at = snap["deadline"], snap["last_media_at"]
        self.got_media, self.control_bytes = snap["got_media"], snap["control_bytes"]
        self.close_reason = snap["close_reason"]
        self.page_url, self.swf_url = snap.get("page_url", ""), snap.get("swf_url", "")
        self.access = ConnAccess.restore(snap.get("access"))
        self.restored = snap
        return self

    def resume_takeover(self, rejoin=None) -> None:
        """The batch committed (transfer.py): register, attach to the source, read and write again. With
        `rejoin` (a live source here that replaces the one this player came with), the player restarts on it
        from its latest keyframe, as a new player would."""
        snap, self.restored = self.restored, None
        if self.closed:
            return      # it went away while staged (a reset): nothing to register
        self.worker.register_restored(self)
        now = time.monotonic()
        if rejoin is not None and self.role == ROLE_PLAY:
            self._source = rejoin
        source = self._source
        if self.role == ROLE_PUBLISH and rejoin is not None:
            # Its stream has a publisher here already (it reconnected during the upgrade): this one is a
            # second publisher of a busy stream.
            self.role, self._source = ROLE_NONE, None
            self.close("stream busy: it has another publisher on the new worker")
            return
        if self.role == ROLE_PUBLISH:
            source.attach_publisher(self)
        elif self.role == ROLE_PLAY:
            self.consumer = Consumer(source, snap["consumer"]["fmt"], self)
            self.consumer.restore_counters(snap["consumer"])
            if rejoin is not None:
                self.on_source_publish()
                self.consumer.start(now)
            else:
                self.consumer.attach(snap["consumer"]["position"])
        self.transport.resume_reading()
        pending = self.worker.access.pending_request(self)
        if pending is not None:
            self._on_event(pending)
        if self.consumer is not None:
            self.consumer.flush(now)
        self._flush_session()
        log.trace(self.cid, f"taken over: {self.role or 'idle'} {source.key if source else ''}".rstrip())
        held, self._held = self._held, []
        if held:
            self.data_received(b"".join(held))
        if self._held_eof and not self.closed:
            self.close("client closed the connection")

    def abandon_takeover(self) -> None:
        """The batch did not commit: let go of our copy of the socket without a FIN (the sender keeps it)."""
        self.restored = None
        self.closed = True
        self.transport.abort()

    # ----- stats, read by the API and metrics ---------------------------------------------------------------

    @property
    def send_bytes(self) -> int:
        return self.control_bytes + (self.consumer.bytes_sent if self.consumer is not None else 0)

    @property
    def recv_bytes(self) -> int:
        return self.session.bytes_received


def _text(value) -> str:
    return value if isinstance(value, str) else ""
