"""RtmpSession: one RTMP connection's state machine, server role and client role, sans-IO.

Everything in nonstop's RTMP handling revolves around this class. Bytes from the socket go into
`receive_data()`, which returns events; the shell answers with method calls (`accept_connect`, `accept_play`,
...), whose bytes it collects with `data_to_send()`. The same class serves both roles, as h11's Connection
does: the server role is the origin/edge facing clients, the client role is used by edges (pull, push) and by
the load generator.

Media that a server *sends* to players does not go through here: per architecture decision 2 every outgoing
message starts with a type 0 header, so the media layer encodes each message once and the same bytes go to every
player. The session only has to agree on the chunk size, which it announces in `accept_connect`.

All state is plain data: `snapshot()` returns a dict and `restore()` continues mid-stream in another process.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from nonstop import SERVER_NAME, __version__
from nonstop.protocol import amf0
from nonstop.protocol.chunk import MAX_MESSAGE_SIZE, MAX_PARTIAL_BYTES, ChunkReader, ChunkWriter, Message
from nonstop.protocol.errors import ProtocolError
from nonstop.protocol.handshake import ClientHandshake, ServerHandshake

SERVER = "server"
CLIENT = "client"

# Session states. One object owns one state machine; after an error nothing goes on half-broken.
HANDSHAKE = "handshake"
CONNECTING = "connecting"   # server: waiting for `connect`; client: `connect` sent, waiting for _result
CONNECTED = "connected"
ERROR = "error"
CLOSED = "closed"

# Message type ids (RTMP spec 5.4 and 7.1).
MSG_SET_CHUNK_SIZE = 1
MSG_ABORT = 2
MSG_ACK = 3
MSG_USER_CONTROL = 4
MSG_WINDOW_ACK_SIZE = 5
MSG_SET_PEER_BANDWIDTH = 6
MSG_AUDIO = 8
MSG_VIDEO = 9
MSG_DATA_AMF3 = 15
MSG_COMMAND_AMF3 = 17
MSG_DATA_AMF0 = 18
MSG_COMMAND_AMF0 = 20
MEDIA_TYPES = (MSG_AUDIO, MSG_VIDEO, MSG_DATA_AMF0, MSG_DATA_AMF3)

# User control event types.
UC_STREAM_BEGIN = 0
UC_STREAM_EOF = 1
UC_STREAM_DRY = 2
UC_SET_BUFFER_LENGTH = 3
UC_STREAM_IS_RECORDED = 4
UC_PING_REQUEST = 6
UC_PING_RESPONSE = 7

# Chunk stream ids as SRS uses them (srs-reference.md §3): 2 protocol control, 3 connection commands,
# 5 stream commands and data, 6 video, 7 audio.
CSID_CONTROL = 2
CSID_CONNECTION = 3
CSID_STREAM = 5
CSID_VIDEO = 6
CSID_AUDIO = 7

# What SRS announces after `connect` (srs-reference.md §3). 2.5 MB is SRS's and FMS's window.
WINDOW_ACK_SIZE = 2_500_000
PEER_BANDWIDTH = 2_500_000
PEER_BANDWIDTH_DYNAMIC = 2
# SRS sends Set Chunk Size 60000 before `_result` because OBS needs it; fewer chunk headers per message.
DEFAULT_OUT_CHUNK_SIZE = 60000
# createStream always answers message stream id 1, as SRS does, so every player's media bytes are the same.
PLAY_STREAM_ID = 1
FMS_VERSION = "FMS/3,5,3,888"
# The client announces itself like ffmpeg does (servers such as nginx-rtmp look at flashVer).
CLIENT_FLASH_VERSION = "FMLE/3.0 (compatible; nonstop)"
# A window below this would make us acknowledge every few bytes: refuse it as a protocol error.
MIN_WINDOW_ACK_SIZE = 1024

# Enhanced RTMP's connect (veovera enhanced-rtmp v2, "Enhancing NetConnection connect Command"): a client that
# declares E-RTMP (fourCcList, [audio|video]FourCcInfoMap or capsEx in its command object) is told, in the
# _result's properties object, what the server does with each codec. nonstop relays every codec's bytes
# unchanged (it decodes none): fourCcList names the FourCCs whose headers it reads (keyframes, sequence
# headers, codec info), and the info maps say CanForward for every codec ("*").
ERTMP_FOURCC_LIST = ("av01", "vp09", "vp08", "hvc1", "avc1", "vvc1", "ac-3", "ec-3", "Opus", ".mp3", "fLaC",
                     "mp4a")
ERTMP_CONNECT_KEYS = ("fourCcList", "videoFourCcInfoMap", "audioFourCcInfoMap", "capsEx")
FOURCC_CAN_FORWARD = 0x04          # FourCcInfoMask: CanDecode 0x01, CanEncode 0x02, CanForward 0x04
CAPS_EX_MULTITRACK = 0x02          # CapsExMask: Reconnect 0x01 (we never ask a client to reconnect),
CAPS_EX_MODEX = 0x04               # Multitrack 0x02, ModEx 0x04, TimestampNanoOffset 0x08 (passed, not used)


def enhanced_connect_properties(command_object: dict) -> dict:
    """The E-RTMP properties of our connect _result, or {} for a client that did not declare E-RTMP (its
    answer stays byte for byte what legacy clients always got)."""
    if not isinstance(command_object, dict) or not any(k in command_object for k in ERTMP_CONNECT_KEYS):
        return {}
    return {"fourCcList": list(ERTMP_FOURCC_LIST),
            "videoFourCcInfoMap": {"*": float(FOURCC_CAN_FORWARD)},
            "audioFourCcInfoMap": {"*": float(FOURCC_CAN_FORWARD)},
            "capsEx": float(CAPS_EX_MULTITRACK | CAPS_EX_MODEX)}


# What a server session lets a peer cost it (issue 10, items 3, 4 and 7). A client is *identified* once it is
# publishing or playing; before that it is anybody on the internet who completed a TCP handshake.
# - Set Chunk Size below SRS's minimum (SRS_CONSTS_RTMP_MIN_CHUNK_SIZE, the spec's initial size) is refused:
#   no known client goes below 128, and 1-byte chunks turn every byte into a header parse.
MIN_PEER_CHUNK_SIZE = 128
# - Bytes a peer may send after the handshake before it is identified. connect, createStream and publish or
#   play take 1-3 KB from ffmpeg, OBS and Flash; past this the peer is only making us work. It also bounds, by
#   construction, what an unidentified client can make the reader hold (partials plus unparsed bytes).
MAX_BYTES_BEFORE_IDENTIFIED = 64 * 1024
# - Message size and partial-message bytes for a peer that is not publishing (a player only sends commands):
#   a publisher gets the full caps (chunk.py) when its publish is accepted, since keyframes can be megabytes.
MAX_MESSAGE_UNPUBLISHED = 32 * 1024
MAX_PARTIAL_UNPUBLISHED = 32 * 1024
# - Chunks parsed per receive_data() call. The rest waits in the reader (`input_pending`) for the shell to
#   call receive_data(b"") on its loop's next turn, so one connection's read never holds the loop for more than
#   about a millisecond of parsing (4 chunks of a 256 KiB read at chunk size 60000; 1024 chunks of 128 bytes).
MAX_CHUNKS_PER_CALL = 1024


class RtmpError(ProtocolError):
    """The peer broke the RTMP rules (bad command, bad control message, wrong state)."""


# ---------------------------------------------------------------------------------------------------------
# Events. Server role: ConnectRequest, CreateStream, PublishRequest, PlayRequest, Pause, Unpublish, StopPlay,
# Media. Client role: Connected, ConnectRejected, StreamCreated, Status, Media. Both: Command (anything else).
# ---------------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class ConnectRequest:
    transaction_id: float
    app: str
    tc_url: str
    query: str          # from `app?k=v` or the tcUrl's query, without the '?'
    command_object: dict


@dataclass(slots=True)
class CreateStream:
    stream_id: int


@dataclass(slots=True)
class PublishRequest:
    stream_id: int
    transaction_id: float
    name: str           # the stream key: the query string is kept out of it
    query: str
    publish_type: str   # 'live', 'record', 'append'
    fmle: bool          # the FMLE sequence (releaseStream/FCPublish) came first: ffmpeg, OBS


@dataclass(slots=True)
class PlayRequest:
    stream_id: int
    transaction_id: float
    name: str
    query: str
    start: float
    duration: float
    reset: bool


@dataclass(slots=True)
class Pause:
    stream_id: int
    paused: bool
    position_ms: float


@dataclass(slots=True)
class Unpublish:
    stream_id: int


@dataclass(slots=True)
class StopPlay:
    stream_id: int


@dataclass(slots=True)
class Media:
    """Audio (8), video (9) or data (18) message, AMF3 data already turned into AMF0 (15 -> 18)."""
    type_id: int
    timestamp: int
    stream_id: int
    payload: bytes


@dataclass(slots=True)
class Connected:
    info: dict
    properties: dict = field(default_factory=dict)   # the _result's first object (fmsVer, E-RTMP caps)


@dataclass(slots=True)
class ConnectRejected:
    info: dict
    redirect: str | None    # ex.redirect2, else ex.redirect (SRS's RTMP 302), else None


@dataclass(slots=True)
class StreamCreated:
    stream_id: int


@dataclass(slots=True)
class Status:
    stream_id: int
    level: str
    code: str
    description: str
    info: dict


@dataclass(slots=True)
class Command:
    """A command this session does not interpret itself (e.g. a client's custom call)."""
    stream_id: int
    name: str
    transaction_id: float
    args: list = field(default_factory=list)


def split_query(name: str) -> tuple[str, str]:
    """`live/s?token=x` -> ('live/s', 'token=x'). Stream keys never carry their query string."""
    base, sep, query = name.partition("?")
    return base, query


def parse_query(query: str) -> dict[str, str]:
    """A tolerant `a=1&b=2` parser (RTMP clients put tokens and `vhost=` there; some use ',' or '...')."""
    out: dict[str, str] = {}
    for part in query.replace(",", "&").split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        out.setdefault(key, value)
    return out


def _command_name(values: list) -> str:
    if not values or not isinstance(values[0], str):
        raise RtmpError("command message without a command name")
    return values[0]


def _number(values: list, index: int, default: float = 0.0) -> float:
    if len(values) > index and isinstance(values[index], (int, float)) and not isinstance(values[index], bool):
        return float(values[index])
    return default


def _string(values: list, index: int, default: str = "") -> str:
    if len(values) > index and isinstance(values[index], str):
        return values[index]
    return default


class RtmpSession:
    """One RTMP connection, either role. See the module docstring for the flow."""

    def __init__(self, role: str = SERVER, *, out_chunk_size: int = DEFAULT_OUT_CHUNK_SIZE,
                 random_bytes=os.urandom, server_info: dict | None = None):
        if role not in (SERVER, CLIENT):
            raise ValueError(f"role must be {SERVER!r} or {CLIENT!r}")
        self.role = role
        self.state = HANDSHAKE
        self.random_bytes = random_bytes
        if role == SERVER:
            self.handshake: ServerHandshake | ClientHandshake | None = ServerHandshake(random_bytes=random_bytes)
        else:
            self.handshake = ClientHandshake(random_bytes=random_bytes)
        self.reader = ChunkReader()
        if role == SERVER:
            self.reader.min_chunk_size = MIN_PEER_CHUNK_SIZE
            self.reader.max_message_size = MAX_MESSAGE_UNPUBLISHED
            self.reader.max_partial_bytes = MAX_PARTIAL_UNPUBLISHED
        # Server role: publishing or playing was accepted once; until then MAX_BYTES_BEFORE_IDENTIFIED applies.
        self.identified = role == CLIENT
        self.writer = ChunkWriter()
        # The chunk size this session will announce and use for everything it sends once connected.
        self.out_chunk_size = out_chunk_size
        self.server_info = dict(server_info or {})
        self._out: list[bytes] = []
        # Flow control: the peer's window tells us how often to acknowledge what we received.
        self.peer_window_ack_size = 0
        self.last_ack_sent = 0
        self.peer_acked = 0
        # Identity, for logs, the API, hooks and edges.
        self.app = ""
        self.tc_url = ""
        self.query = ""
        self.object_encoding = 0.0
        self.stream_name = ""
        self.stream_query = ""
        self.fmle_seen = False
        self.publishing_stream_id = 0
        self.playing_stream_id = 0
        # Client role: the transactions we are waiting for, tid -> what it was.
        self.next_transaction_id = 1
        self.pending: dict[int, str] = {}
        self._queued_after_handshake: list[bytes] = []
        if role == CLIENT:
            self._out.append(self.handshake.initial_bytes())

    # ----- bytes in, events out ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list:
        """Feed bytes read from the socket; returns the events they complete.

        Raises RtmpError (or another ProtocolError) on bad input; the session is then in the ERROR state and
        the caller should close the connection. `b""` is not special: the shell handles EOF itself.
        """
        if self.state in (ERROR, CLOSED):
            raise RtmpError(f"session is {self.state}")
        try:
            if self.state == HANDSHAKE:
                reply = self.handshake.receive_data(data)
                if reply:
                    self._out.append(reply)
                if not self.handshake.done:
                    return []
                data = self.handshake.trailing_data
                self.handshake = None
                self.state = CONNECTING
                if self._queued_after_handshake:
                    self._out.extend(self._queued_after_handshake)
                    self._queued_after_handshake.clear()
                if not data:
                    return []
            if not self.identified and self.reader.bytes_received + len(data) > MAX_BYTES_BEFORE_IDENTIFIED:
                raise RtmpError(f"more than {MAX_BYTES_BEFORE_IDENTIFIED} bytes sent before publishing or "
                                f"playing")
            messages = self.reader.feed(data, MAX_CHUNKS_PER_CALL if self.role == SERVER else None)
            events: list = []
            for message in messages:
                self._handle_message(message, events)
            self._maybe_acknowledge()
            return events
        except ProtocolError:
            self.state = ERROR
            raise

    def data_to_send(self) -> bytes:
        """The bytes the session wants written, in order; empties the outbox."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def input_pending(self) -> bool:
        """receive_data() stopped at its chunk budget: call receive_data(b"") again (on a later loop turn)."""
        return self.reader.input_pending

    @property
    def handshake_done(self) -> bool:
        return self.state not in (HANDSHAKE,)

    @property
    def bytes_received(self) -> int:
        return self.reader.bytes_received

    def trailing_data(self) -> bytes:
        """Bytes received but not yet parsed into a message (carried over a handover)."""
        return self.reader.buffered()

    # ----- incoming messages ----------------------------------------------------------------------------

    def _handle_message(self, message: Message, events: list) -> None:
        type_id = message.type_id
        if type_id in (MSG_AUDIO, MSG_VIDEO, MSG_DATA_AMF0):
            events.append(Media(type_id, message.timestamp, message.stream_id, message.payload))
        elif type_id == MSG_DATA_AMF3:
            # AMF3 data messages carry AMF0 after a leading format byte in practice (FMLE's @setDataFrame).
            events.append(Media(MSG_DATA_AMF0, message.timestamp, message.stream_id, message.payload[1:]))
        elif type_id in (MSG_COMMAND_AMF0, MSG_COMMAND_AMF3):
            payload = message.payload[1:] if type_id == MSG_COMMAND_AMF3 else message.payload
            try:
                values = amf0.decode_all(payload)
            except amf0.DecodeError as e:
                raise RtmpError(f"bad AMF0 in command message: {e}") from e
            if self.role == SERVER:
                self._server_command(message.stream_id, values, events)
            else:
                self._client_command(message.stream_id, values, events)
        elif type_id in (MSG_SET_CHUNK_SIZE, MSG_ABORT):
            pass  # the ChunkReader applies both itself, at the exact message boundary
        elif type_id == MSG_ACK:
            if len(message.payload) >= 4:
                self.peer_acked = struct.unpack_from(">I", message.payload)[0]
        elif type_id == MSG_WINDOW_ACK_SIZE:
            if len(message.payload) < 4:
                raise RtmpError("short Window Acknowledgement Size message")
            size = struct.unpack_from(">I", message.payload)[0]
            if size < MIN_WINDOW_ACK_SIZE:
                raise RtmpError(f"window acknowledgement size {size} is below {MIN_WINDOW_ACK_SIZE}")
            self.peer_window_ack_size = size
        elif type_id == MSG_SET_PEER_BANDWIDTH:
            if self.role == CLIENT and len(message.payload) >= 4:
                # Answer as ffmpeg and Flash do: announce our window back.
                self._send_control(MSG_WINDOW_ACK_SIZE, struct.pack(">I", WINDOW_ACK_SIZE))
        elif type_id == MSG_USER_CONTROL:
            self._user_control(message.payload, events)
        # Other types (shared objects 16/19, aggregate 22) are ignored, as SRS ignores them.

    def _user_control(self, payload: bytes, events: list) -> None:
        if len(payload) < 2:
            raise RtmpError("short user control message")
        event_type = struct.unpack_from(">H", payload)[0]
        if event_type == UC_PING_REQUEST and len(payload) >= 6:
            self._send_control(MSG_USER_CONTROL, struct.pack(">H", UC_PING_RESPONSE) + payload[2:6])

    def _maybe_acknowledge(self) -> None:
        window = self.peer_window_ack_size
        if window and self.reader.bytes_received - self.last_ack_sent >= window:
            self.last_ack_sent = self.reader.bytes_received
            self._send_control(MSG_ACK, struct.pack(">I", self.last_ack_sent & 0xFFFFFFFF))

    # ----- server role: commands ------------------------------------------------------------------------

    def _server_command(self, stream_id: int, values: list, events: list) -> None:
        name = _command_name(values)
        tid = _number(values, 1)
        if name == "connect":
            if self.state != CONNECTING:
                raise RtmpError("connect received twice")
            obj = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
            app = obj.get("app") if isinstance(obj.get("app"), str) else ""
            tc_url = obj.get("tcUrl") if isinstance(obj.get("tcUrl"), str) else ""
            app, app_query = split_query(app)
            _, tc_query = split_query(tc_url)
            self.app = app.strip("/")
            self.tc_url = tc_url
            self.query = app_query or tc_query
            encoding = obj.get("objectEncoding", 0.0)
            self.object_encoding = float(encoding) if isinstance(encoding, (int, float)) else 0.0
            events.append(ConnectRequest(tid, self.app, tc_url, self.query, obj))
            return
        if self.state != CONNECTED:
            raise RtmpError(f"{name!r} before connect was accepted")
        if name in ("releaseStream", "FCPublish"):
            self.fmle_seen = True
            self._send_command(CSID_CONNECTION, 0, "_result", tid, None, amf0.UNDEFINED)
        elif name == "createStream":
            self._send_command(CSID_CONNECTION, 0, "_result", tid, None, float(PLAY_STREAM_ID))
            events.append(CreateStream(PLAY_STREAM_ID))
        elif name == "publish":
            full = _string(values, 3)
            stream, query = split_query(full)
            if not stream:
                raise RtmpError("publish without a stream name")
            self.stream_name, self.stream_query = stream, query
            events.append(PublishRequest(stream_id or PLAY_STREAM_ID, tid, stream, query,
                                         _string(values, 4, "live"), self.fmle_seen))
        elif name == "play":
            full = _string(values, 3)
            stream, query = split_query(full)
            if not stream:
                raise RtmpError("play without a stream name")
            self.stream_name, self.stream_query = stream, query
            reset = values[6] if len(values) > 6 and isinstance(values[6], bool) else True
            events.append(PlayRequest(stream_id or PLAY_STREAM_ID, tid, stream, query,
                                      _number(values, 4, -2.0), _number(values, 5, -1.0), reset))
        elif name in ("pause", "pauseRaw"):
            paused = values[3] if len(values) > 3 and isinstance(values[3], bool) else True
            events.append(Pause(stream_id, paused, _number(values, 4)))
        elif name == "FCUnpublish":
            self._send_command(CSID_STREAM, 0, "onFCUnpublish", 0.0, None,
                               {"code": "NetStream.Unpublish.Success", "description": _string(values, 3)})
            self._send_command(CSID_CONNECTION, 0, "_result", tid, None, amf0.UNDEFINED)
            if self.publishing_stream_id:
                events.append(Unpublish(self.publishing_stream_id))
                self.send_status(self.publishing_stream_id, "status", "NetStream.Unpublish.Success",
                                 "Stream is now unpublished")
                self.publishing_stream_id = 0
        elif name in ("deleteStream", "closeStream"):
            # Answered as nginx-rtmp answers, on a connection that stays open: a publisher gets
            # NetStream.Unpublish.Success, a player the StreamEOF user control. Clients that wait for the
            # answer before they close (GStreamer's rtmpsrc, through librtmp) otherwise sit out their timeout.
            if self.publishing_stream_id:
                events.append(Unpublish(self.publishing_stream_id))
                self.send_status(self.publishing_stream_id, "status", "NetStream.Unpublish.Success",
                                 "Stream is now unpublished")
                self.publishing_stream_id = 0
            if self.playing_stream_id:
                events.append(StopPlay(self.playing_stream_id))
                self._send_control(MSG_USER_CONTROL, struct.pack(">HI", UC_STREAM_EOF, self.playing_stream_id))
                self.playing_stream_id = 0
        elif name == "getStreamLength":
            self._send_command(CSID_CONNECTION, 0, "_result", tid, None, 0.0)
        elif name in ("_checkbw", "receiveAudio", "receiveVideo", "FCSubscribe", "_result", "_error", "onBWDone"):
            pass  # harmless client chatter that needs no answer
        else:
            events.append(Command(stream_id, name, tid, values[2:]))

    # ----- server role: answers the shell chooses -------------------------------------------------------

    def accept_connect(self, request: ConnectRequest) -> None:
        """Answer `connect` in SRS's order: window, bandwidth, chunk size, _result, onBWDone."""
        self._send_control(MSG_WINDOW_ACK_SIZE, struct.pack(">I", WINDOW_ACK_SIZE))
        self._send_control(MSG_SET_PEER_BANDWIDTH, struct.pack(">IB", PEER_BANDWIDTH, PEER_BANDWIDTH_DYNAMIC))
        self.set_out_chunk_size(self.out_chunk_size)
        data = {"version": __version__, "server": SERVER_NAME, **self.server_info}
        properties = {"fmsVer": FMS_VERSION, "capabilities": 127.0, "mode": 1.0}
        properties.update(enhanced_connect_properties(request.command_object))
        self._send_command(CSID_CONNECTION, 0, "_result", request.transaction_id, properties,
                           {"level": "status", "code": "NetConnection.Connect.Success",
                            "description": "Connection succeeded", "objectEncoding": self.object_encoding,
                            "data": amf0.EcmaArray(data)})
        self._send_command(CSID_CONNECTION, 0, "onBWDone", 0.0, None)
        self.state = CONNECTED

    def reject_connect(self, request: ConnectRequest, description: str) -> None:
        self._send_command(CSID_CONNECTION, 0, "_error", request.transaction_id, None,
                           {"level": "error", "code": "NetConnection.Connect.Rejected",
                            "description": description})

    def set_out_chunk_size(self, size: int) -> None:
        self._send_control(MSG_SET_CHUNK_SIZE, struct.pack(">I", size))
        self.writer.chunk_size = size
        self.out_chunk_size = size

    def accept_publish(self, request: PublishRequest) -> None:
        self.publishing_stream_id = request.stream_id
        self.identified = True
        # A publisher's keyframes may be megabytes, interleaved with audio: the full caps from here on.
        self.reader.max_message_size = MAX_MESSAGE_SIZE
        self.reader.max_partial_bytes = MAX_PARTIAL_BYTES
        if request.fmle:
            self._send_command(CSID_STREAM, 0, "onFCPublish", 0.0, None,
                               {"code": "NetStream.Publish.Start", "description": "Started publishing stream."})
        self.send_status(request.stream_id, "status", "NetStream.Publish.Start", "Started publishing stream.")

    def reject_publish(self, request: PublishRequest, description: str = "Stream is already being published.",
                       code: str = "NetStream.Publish.BadName") -> None:
        self.send_status(request.stream_id, "error", code, description)

    def accept_play(self, request: PlayRequest) -> None:
        """StreamBegin, Play.Reset, Play.Start, |RtmpSampleAccess (srs-reference.md §3). No Data.Start."""
        self.playing_stream_id = request.stream_id
        self.identified = True
        self.send_stream_begin(request.stream_id)
        self.send_status(request.stream_id, "status", "NetStream.Play.Reset",
                         "Playing and resetting stream.")
        self.send_status(request.stream_id, "status", "NetStream.Play.Start", "Started playing stream.")
        self.send_data(request.stream_id, "|RtmpSampleAccess", True, True)

    def send_stream_begin(self, stream_id: int) -> None:
        self._send_control(MSG_USER_CONTROL, struct.pack(">HI", UC_STREAM_BEGIN, stream_id))

    def send_unpublish_notify(self, stream_id: int) -> None:
        self.send_status(stream_id, "status", "NetStream.Play.UnpublishNotify", "The stream is unpublished.")

    def send_publish_notify(self, stream_id: int) -> None:
        self.send_status(stream_id, "status", "NetStream.Play.PublishNotify", "The stream is published.")

    def send_stream_not_found(self, stream_id: int, name: str) -> None:
        self.send_status(stream_id, "error", "NetStream.Play.StreamNotFound", f"Stream not found: {name}")

    def send_redirect(self, stream_id: int, tc_url: str, stream_url: str) -> None:
        """SRS's RTMP 302 (srs-reference.md §3): onStatus on chunk stream 5, message stream 0."""
        self._send_command(CSID_STREAM, 0, "onStatus", 0.0, None,
                           {"level": "error", "code": "NetConnection.Connect.Rejected",
                            "description": "RTMP 302 Redirect",
                            "ex": {"code": 302.0, "redirect": tc_url, "redirect2": stream_url}})

    def send_status(self, stream_id: int, level: str, code: str, description: str, **extra) -> None:
        info = {"level": level, "code": code, "description": description}
        info.update(extra)
        self._send_command(CSID_STREAM, stream_id, "onStatus", 0.0, None, info)

    def send_data(self, stream_id: int, *values) -> None:
        self._out.append(self.writer.encode(CSID_STREAM, MSG_DATA_AMF0, 0, stream_id, amf0.encode(*values)))

    # ----- client role ----------------------------------------------------------------------------------

    def connect(self, app: str, tc_url: str, **extra) -> None:
        """Send `connect` (queued until the handshake is done)."""
        self.app, self.tc_url = app, tc_url
        obj = {"app": app, "flashVer": CLIENT_FLASH_VERSION, "tcUrl": tc_url, "fpad": False,
               "capabilities": 15.0, "audioCodecs": 4071.0, "videoCodecs": 252.0, "videoFunction": 1.0}
        obj.update(extra)
        self._client_call(CSID_CONNECTION, 0, "connect", "connect", obj)

    def create_stream(self) -> None:
        self._client_call(CSID_CONNECTION, 0, "createStream", "createStream", None)

    def publish(self, stream_id: int, name: str, publish_type: str = "live") -> None:
        """FMLE style, as ffmpeg and OBS do: releaseStream and FCPublish come before createStream; this sends
        `publish` itself once the stream exists. Call `release_stream()` first for FMLE compatibility."""
        self.stream_name = name
        self.publishing_stream_id = stream_id
        self._send_command(CSID_STREAM, stream_id, "publish", 0.0, None, name, publish_type)

    def release_stream(self, name: str) -> None:
        self._client_call(CSID_CONNECTION, 0, "releaseStream", "releaseStream", None, name)
        self._client_call(CSID_CONNECTION, 0, "FCPublish", "FCPublish", None, name)

    def play(self, stream_id: int, name: str, start: float = -2.0) -> None:
        self.stream_name = name
        self.playing_stream_id = stream_id
        self._send_command(CSID_STREAM, stream_id, "play", 0.0, None, name, start)
        # Ask for a buffer, as players do; servers such as nginx-rtmp start sending after it.
        self._send_control(MSG_USER_CONTROL, struct.pack(">HII", UC_SET_BUFFER_LENGTH, stream_id, 3000))

    def send_media(self, type_id: int, timestamp: int, stream_id: int, payload: bytes) -> bytes:
        """Encode one media message from a publishing client; returned, not queued, to avoid a copy."""
        csid = CSID_VIDEO if type_id == MSG_VIDEO else CSID_AUDIO if type_id == MSG_AUDIO else CSID_STREAM
        return self.writer.encode(csid, type_id, timestamp, stream_id, payload)

    def _client_call(self, csid: int, stream_id: int, name: str, kind: str, *args) -> None:
        tid = self.next_transaction_id
        self.next_transaction_id += 1
        self.pending[tid] = kind
        encoded = self.writer.encode(csid, MSG_COMMAND_AMF0, 0, stream_id, amf0.encode(name, float(tid), *args))
        if self.state == HANDSHAKE:
            self._queued_after_handshake.append(encoded)
        else:
            self._out.append(encoded)

    def _client_command(self, stream_id: int, values: list, events: list) -> None:
        name = _command_name(values)
        tid = int(_number(values, 1))
        if name in ("_result", "_error"):
            kind = self.pending.pop(tid, None)
            info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
            if kind == "connect":
                if name == "_result":
                    self.state = CONNECTED
                    properties = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
                    events.append(Connected(info, dict(properties)))
                else:
                    events.append(ConnectRejected(info, _redirect_of(info)))
            elif kind == "createStream":
                if name == "_result" and len(values) > 3 and isinstance(values[3], (int, float)):
                    events.append(StreamCreated(int(values[3])))
                else:
                    events.append(Status(0, "error", "NetStream.CreateStream.Failed", "createStream failed", {}))
            return
        if name == "onStatus":
            info = next((v for v in values[2:] if isinstance(v, dict)), {})
            code = info.get("code") if isinstance(info.get("code"), str) else ""
            if code == "NetConnection.Connect.Rejected" and self.state != CONNECTED:
                events.append(ConnectRejected(info, _redirect_of(info)))
                return
            if code == "NetConnection.Connect.Rejected":
                events.append(ConnectRejected(info, _redirect_of(info)))
                return
            events.append(Status(stream_id, str(info.get("level", "")), code,
                                 str(info.get("description", "")), info))
            return
        if name in ("onBWDone", "onFCPublish", "onFCUnpublish", "_onbwcheck", "_onbwdone", "|RtmpSampleAccess"):
            return
        events.append(Command(stream_id, name, float(tid), values[2:]))

    # ----- encoding helpers -----------------------------------------------------------------------------

    def _send_control(self, type_id: int, payload: bytes) -> None:
        self._out.append(self.writer.encode(CSID_CONTROL, type_id, 0, 0, payload))

    def _send_command(self, csid: int, stream_id: int, name: str, tid: float, *args) -> None:
        self._out.append(self.writer.encode(csid, MSG_COMMAND_AMF0, 0, stream_id, amf0.encode(name, tid, *args)))

    def close(self) -> None:
        self.state = CLOSED

    # ----- handover ---------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Plain data: together with the socket fd, `restore()` in another process continues mid-stream.

        Bytes already queued in the outbox are carried too; the caller quiesces the writer first so that
        nothing is half-written (architecture decision 4).
        """
        return {
            "version": 1,
            "role": self.role,
            "state": self.state,
            "handshake": None if self.handshake is None else self.handshake.snapshot(),
            "reader": self.reader.snapshot(),
            "writer": self.writer.snapshot(),
            "out_chunk_size": self.out_chunk_size,
            "server_info": dict(self.server_info),
            "out": b"".join(self._out),
            "queued_after_handshake": b"".join(self._queued_after_handshake),
            "peer_window_ack_size": self.peer_window_ack_size,
            "last_ack_sent": self.last_ack_sent,
            "peer_acked": self.peer_acked,
            "app": self.app, "tc_url": self.tc_url, "query": self.query,
            "object_encoding": self.object_encoding,
            "stream_name": self.stream_name, "stream_query": self.stream_query,
            "fmle_seen": self.fmle_seen,
            "publishing_stream_id": self.publishing_stream_id,
            "playing_stream_id": self.playing_stream_id,
            "identified": self.identified,
            "next_transaction_id": self.next_transaction_id,
            "pending": {str(k): v for k, v in self.pending.items()},
        }

    @classmethod
    def restore(cls, snap: dict, random_bytes=os.urandom) -> "RtmpSession":
        if snap.get("version") != 1:
            raise ValueError(f"unknown RtmpSession snapshot version {snap.get('version')!r}")
        self = cls.__new__(cls)
        self.role = snap["role"]
        self.state = snap["state"]
        self.random_bytes = random_bytes
        hs = snap["handshake"]
        if hs is None:
            self.handshake = None
        elif self.role == SERVER:
            self.handshake = ServerHandshake.restore(hs, random_bytes=random_bytes)
        else:
            self.handshake = ClientHandshake.restore(hs, random_bytes=random_bytes)
        self.reader = ChunkReader.restore(snap["reader"])
        self.writer = ChunkWriter.restore(snap["writer"])
        self.out_chunk_size = snap["out_chunk_size"]
        self.server_info = dict(snap["server_info"])
        self._out = [snap["out"]] if snap["out"] else []
        queued = snap["queued_after_handshake"]
        self._queued_after_handshake = [queued] if queued else []
        self.peer_window_ack_size = snap["peer_window_ack_size"]
        self.last_ack_sent = snap["last_ack_sent"]
        self.peer_acked = snap["peer_acked"]
        self.app, self.tc_url, self.query = snap["app"], snap["tc_url"], snap["query"]
        self.object_encoding = snap["object_encoding"]
        self.stream_name, self.stream_query = snap["stream_name"], snap["stream_query"]
        self.fmle_seen = snap["fmle_seen"]
        self.publishing_stream_id = snap["publishing_stream_id"]
        self.playing_stream_id = snap["playing_stream_id"]
        # Absent from an older build's snapshot: a session publishing or playing there was identified.
        self.identified = snap.get("identified", self.role == CLIENT or bool(self.publishing_stream_id
                                                                              or self.playing_stream_id))
        self.next_transaction_id = snap["next_transaction_id"]
        self.pending = {int(k): v for k, v in snap["pending"].items()}
        return self


def _redirect_of(info: dict) -> str | None:
    """SRS's RTMP 302: follow `ex.redirect2`, else `ex.redirect` (srs-reference.md §3)."""
    ex = info.get("ex")
    if isinstance(ex, dict):
        for key in ("redirect2", "redirect"):
            if isinstance(ex.get(key), str) and ex[key]:
                return ex[key]
    return None
