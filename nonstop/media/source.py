"""Source: one live stream (`vhost/app/stream`), its metadata, sequence headers, GOP cache and shared log.

The source keeps one *shared log*: the recent packets in order, each with a sequence number, and for every
output format in use a parallel list of the encoded bytes. A player (Consumer) is only a position in that log,
so a new message costs one encoding per format, not one per player; a flush hands a slice of the shared list to
`transport.writelines`. The GOP cache is the part of the log from the latest keyframe on.

The log is trimmed at each keyframe to what someone still needs: the GOP, and the oldest position a player has
not received yet, but never more than `queue_length` seconds behind the newest message.
"""

from __future__ import annotations

from nonstop import SERVER_NAME, __version__
from nonstop.media.hls import Segmenter
from nonstop.media.jitter import Jitter
from nonstop.media.packet import Packet, encode_packet
from nonstop.protocol import amf0, flv
from nonstop.protocol.rtmp import MSG_AUDIO, MSG_DATA_AMF0, MSG_VIDEO

# Trim the log at least this often when no keyframe comes (audio-only streams).
TRIM_EVERY_PACKETS = 512
# Even with no keyframe and no player, never keep more than this many packets (audio-only at 50 msg/s: 80 s).
MAX_LOG_PACKETS = 4096
# The log's payload bytes are bounded too, at this many times gop_cache_max_bytes: the GOP cache plus as much
# again for players behind it. A player whose position falls out of the log is cut back to the GOP (as when
# it is queue_length behind). So one publisher makes a source hold at most 2 x gop_cache_max_bytes of payload,
# plus one encoded copy of it per output format in use while it has players (README: Operations).
LOG_BYTES_PER_GOP_BYTES = 2
DEFAULT_GOP_CACHE_MAX_BYTES = 32 << 20
SNAPSHOT_VERSION = 1
# E-RTMP multitrack sequence headers kept per source (one per track set): track ids are a byte, and a
# publisher could name endless sets; past this many the oldest goes (bounded memory and handover frames).
MAX_TRACK_HEADERS = 16


class StreamInfo:
    """What the API shows about the codecs, read from the sequence headers and metadata."""

    __slots__ = ("video_codec", "audio_codec", "video", "audio", "metadata")

    def __init__(self):
        self.video_codec: str | None = None
        self.audio_codec: str | None = None
        self.video: dict | None = None
        self.audio: dict | None = None
        self.metadata: dict = {}


class Source:
    """One live stream. The publisher feeds it with `on_media`; consumers read its shared log."""

    def __init__(self, key: str, vhost: str, app: str, stream: str, *, gop_cache: bool = True,
                 gop_cache_max_frames: int = 2500, queue_length_ms: int = 30000, time_jitter: str = "full",
                 mw_latency_ms: int = 350, mw_msgs: int = 8, min_latency: bool = False, source_id: str = "",
                 gop_cache_max_bytes: int = DEFAULT_GOP_CACHE_MAX_BYTES):
        self.key = key
        self.vhost = vhost
        self.app = app
        self.stream = stream
        self.id = source_id
        self.gop_cache = gop_cache
        self.gop_cache_max_frames = gop_cache_max_frames
        self.gop_cache_max_bytes = gop_cache_max_bytes
        self.queue_length_ms = queue_length_ms
        self.mw_latency_ms = mw_latency_ms
        self.mw_msgs = mw_msgs
        self.min_latency = min_latency
        self.jitter = Jitter(time_jitter)
        # The shared log.
        self.packets: list[Packet] = []
        self.base_seq = 1            # seq of packets[0]
        self.next_seq = 1            # seq the next packet will get
        self.encodings: dict[str, list[bytes]] = {}
        self.sizes: dict[str, list[int]] = {}    # running byte totals, parallel to encodings
        self.gop_start_seq = 0       # seq of the latest keyframe in the log, 0 when there is no GOP cache
        self.gop_frames = 0
        self.gop_bytes = 0           # payload bytes of the log from gop_start_seq on (0 with no GOP cache)
        self.log_bytes = 0           # payload bytes of the whole log: sum(len(p.payload) for p in packets)
        self.gop_cache_cleared = 0   # times a bound (frames or bytes) cleared the GOP cache, for tests and logs
        self.since_trim = 0
        # The stream's header state, sent to each new player before the GOP.
        self.metadata: Packet | None = None
        self.video_sh: Packet | None = None
        self.audio_sh: Packet | None = None
        # Enhanced RTMP multitrack: the sequence headers of the other tracks, by 'video:tracks:1' etc.
        # (flv.sequence_header_slot), in the order they last came; sent to new players after the two above.
        self.track_sh: dict[str, Packet] = {}
        self.info = StreamInfo()
        # Who is here.
        self.publisher = None        # the publishing connection, or None
        self.consumers: set = set()
        self.idle_since: float | None = None
        # Called with this source when its last publisher or player leaves; the registry frees it then, so a
        # burst of short-lived streams never piles up (set by SourceRegistry; None for a detached source).
        self.on_idle = None
        # Flush bookkeeping: where the last flush of this source ended.
        self.flushed_seq = 0
        self.flushed_ts = 0
        self.flushed_at = 0.0
        # Counters, read by the API and metrics (one owner).
        self.frames = 0
        self.recv_bytes = 0
        self.created_at = 0.0
        self.last_packet_at = 0.0
        # The HLS segmenter (nonstop/media/hls.py) when the vhost has HLS on, set by the worker; fed below.
        self.hls = None

    # ----- publishing --------------------------------------------------------------------------------------

    def can_publish(self) -> bool:
        return self.publisher is None

    # ----- what others ask of the source (it owns these fields: one owner, no outside writers) -------------

    def attach_publisher(self, publisher, now: float | None = None) -> None:
        """A publisher that continues the stream as it is (a handed-over connection, an edge's upstream pull):
        no new timeline, no notice to the players (on_publish is for a publisher that starts a stream). With
        `now` (an edge's pull starting again), a segmenter whose publisher had left is told it came back, so it
        is not disposed while fed (and marks a discontinuity after the republish window)."""
        self.publisher = publisher
        self.idle_since = None
        if now is not None and self.hls is not None and self.hls.unpublished_at is not None:
            self.hls.on_publish(now)

    def release_publisher(self, publisher) -> None:
        """`publisher` lets go without an unpublish (an edge pull replaced by a local publisher): the players are
        not told, and the stream's header state and GOP go, since the next publisher brings its own."""
        if self.publisher is publisher:
            self.publisher = None
            self.forget_stream()

    def discontinuity(self) -> None:
        """What comes next does not continue the log: drop the GOP (a player joining now must not start on stale
        frames) and restart the input timeline (time_jitter carries the output on, +10 ms)."""
        self.gop_start_seq = 0
        self.gop_frames = 0
        self.gop_bytes = 0
        self.jitter.on_new_publisher()

    def forget_stream(self) -> None:
        """Drop the stream's header state and GOP, as an unpublish does, without telling the players."""
        self.metadata = self.video_sh = self.audio_sh = None
        self.track_sh = {}
        self.discontinuity()

    def continue_input_timeline(self, last_in: int) -> None:
        """The next message continues the input timeline from `last_in` (an edge's resync after skipping)."""
        self.jitter.last_in = last_in

    def on_publish(self, publisher, now: float) -> None:
        self.publisher = publisher
        self.idle_since = None
        self.jitter.on_new_publisher()
        self.last_packet_at = now
        if self.hls is not None:
            self.hls.on_publish(now)
        for consumer in list(self.consumers):
            consumer.on_source_publish()

    def on_unpublish(self, now: float) -> None:
        """The publisher left: drop the stream's header state (a new publisher brings its own)."""
        self.publisher = None
        self.metadata = self.video_sh = self.audio_sh = None
        if self.hls is not None:
            self.hls.on_unpublish(now)
        self.track_sh = {}
        self.gop_start_seq = 0
        self.gop_frames = 0
        self.gop_bytes = 0
        self.flush(now)
        for consumer in list(self.consumers):
            consumer.on_source_unpublish()
        if not self.consumers:
            self._turned_idle(now)

    def on_media(self, type_id: int, timestamp: int, payload: bytes, now: float) -> None:
        """One message from the publisher: correct its time, number it, encode it once per format, flush."""
        self.recv_bytes += len(payload)
        self.last_packet_at = now
        is_metadata = False
        if type_id == MSG_DATA_AMF0:
            payload = self._on_data(payload)
            if payload is None:
                return
            is_metadata = self.metadata is not None and payload is self.metadata.payload
        keyframe = header = False
        if type_id == MSG_VIDEO:
            # One reading of the header (legacy or Enhanced RTMP, any codec, multitrack) in flv.video_kind.
            kind = flv.video_kind(payload)
            if kind == flv.KIND_SEQUENCE_HEADER:
                header = True
                self._on_video_header(payload)
            elif kind != flv.KIND_OTHER:   # end of sequence, commands, video metadata are not frames
                self.frames += 1
                keyframe = kind == flv.KIND_KEYFRAME
                if keyframe and self.info.video is not None and not self.info.video.get("width"):
                    self._size_from_keyframe(payload)
        elif type_id == MSG_AUDIO and flv.is_audio_sequence_header(payload):
            self._on_audio_header(payload)
        # onMetaData goes out at time 0: FFmpeg's FLV demuxer turns a metadata tag with a non-zero time into
        # a data (subtitle) stream of its own.
        timestamp = 0 if is_metadata else self.jitter.correct(timestamp)
        packet = Packet(self.next_seq, type_id, timestamp, payload, keyframe)
        self.next_seq += 1
        self._append(packet)
        if self.hls is not None and not is_metadata and type_id != MSG_DATA_AMF0:
            self.hls.on_media(type_id, timestamp, payload)
        if keyframe:
            self._on_keyframe(packet)
        elif self.gop_start_seq:
            self.gop_bytes += len(payload)
            if type_id == MSG_VIDEO and not header:
                self.gop_frames += 1
            if self.gop_frames > self.gop_cache_max_frames or self.gop_bytes > self.gop_cache_max_bytes:
                # SRS clears the GOP cache when it grows past its frame cap, and so do we past the byte cap:
                # the cache holds a whole GOP from its keyframe or nothing, so a new player still starts at a
                # keyframe (the next one). Players already here keep their place: trim() keeps their positions.
                self.gop_start_seq = 0
                self.gop_frames = self.gop_bytes = 0
                self.gop_cache_cleared += 1
                self.trim()
        self.since_trim += 1
        if self.since_trim >= TRIM_EVERY_PACKETS or self.log_bytes > self.max_log_bytes:
            self.trim()
        if self.min_latency or (packet.seq - self.flushed_seq >= self.mw_msgs
                                and timestamp - self.flushed_ts >= self.mw_latency_ms):
            self.flush(now)

    def _on_data(self, payload: bytes) -> bytes | None:
        """`@setDataFrame`/`onMetaData`: keep the metadata, signed with our name (srs-reference.md §3)."""
        try:
            values = amf0.decode_data_message(payload)
        except amf0.DecodeError:
            return payload
        meta = amf0.metadata_object(values)
        if meta is None:
            return amf0.encode(*values) if values else None
        # Players get an AMF0 Object, as SRS sends (SrsOnMetaDataPacket copies an ECMA array into an Object),
        # whatever the publisher used. FFmpeg reads the two differently: in an ECMA array, an `audiocodecid`
        # makes it wait for an audio stream, so a video-only stream that names one (nginx-rtmp's `push` sends
        # `audiocodecid 0`) decodes nothing over RTMP; in an Object it is only a hint. The publisher's keys,
        # codec ids of tracks not seen (yet) included, go through as SRS passes them: audio may still come,
        # and the FLV header and the sequence headers, not the metadata, say which tracks there are.
        meta = {k: v for k, v in meta.items() if k != "duration"}
        meta["server"] = SERVER_NAME
        meta["server_version"] = __version__
        self.info.metadata = dict(meta)
        payload = amf0.encode("onMetaData", meta)
        self.metadata = Packet(0, MSG_DATA_AMF0, 0, payload)
        return payload

    def _on_video_header(self, payload: bytes) -> None:
        packet = Packet(0, MSG_VIDEO, 0, payload)
        if self._on_track_header("video", packet) and self.info.video_codec is not None:
            return  # the API shows the default track's codec
        self.info.video_codec = flv.video_codec(payload)
        self.info.video = flv.parse_video_sequence_header(payload)

    def _on_audio_header(self, payload: bytes) -> None:
        packet = Packet(0, MSG_AUDIO, 0, payload)
        if self._on_track_header("audio", packet) and self.info.audio_codec is not None:
            return
        self.info.audio_codec = flv.audio_codec(payload)
        self.info.audio = flv.parse_audio_sequence_header(payload)

    def _size_from_keyframe(self, payload: bytes) -> None:
        # VP9's sequence header has no picture size: the API takes it from the first keyframe.
        size = flv.keyframe_picture_size(payload)
        if size is not None:
            self.info.video = {**self.info.video, "width": size[0], "height": size[1]}

    def cached_header(self, type_id: int, payload: bytes) -> Packet | None:
        """The sequence header this header message would replace (same media, same tracks), or None."""
        media = "video" if type_id == MSG_VIDEO else "audio"
        slot = flv.sequence_header_slot(type_id, payload)
        return self.track_sh.get(f"{media}:{slot}") if slot else getattr(self, f"{media}_sh")

    def _on_track_header(self, media: str, packet: Packet) -> bool:
        """Keep a sequence header in its slot: the default track's in video_sh/audio_sh, a multitrack
        message's in track_sh. True when it was a multitrack one."""
        slot = flv.sequence_header_slot(packet.type_id, packet.payload)
        if not slot:
            setattr(self, f"{media}_sh", packet)
            return False
        key = f"{media}:{slot}"
        self.track_sh.pop(key, None)   # re-inserted last: a new player gets the newest configuration last
        self.track_sh[key] = packet
        while len(self.track_sh) > MAX_TRACK_HEADERS:
            del self.track_sh[next(iter(self.track_sh))]
        return True

    def _on_keyframe(self, packet: Packet) -> None:
        if self.gop_cache:
            self.gop_start_seq = packet.seq
            self.gop_frames = 1
            self.gop_bytes = len(packet.payload)
            # E-RTMP multitrack: keyframes of the other tracks sent just before this one, at the same time,
            # belong to its GOP. The GOP still starts at a keyframe (the first of them), and a new player
            # gets every track's keyframe, whatever order the publisher sent them in.
            index = len(self.packets) - 2      # the packet before this one
            while index >= 0:
                before = self.packets[index]
                if (before.type_id != MSG_VIDEO or before.timestamp != packet.timestamp
                        or flv.video_kind(before.payload) != flv.KIND_TRACK_KEYFRAME):
                    break
                self.gop_start_seq = before.seq
                self.gop_frames += 1
                self.gop_bytes += len(before.payload)
                index -= 1
        self.trim()

    @property
    def max_log_bytes(self) -> int:
        return LOG_BYTES_PER_GOP_BYTES * self.gop_cache_max_bytes

    def _append(self, packet: Packet) -> None:
        self.packets.append(packet)
        self.log_bytes += len(packet.payload)
        for fmt, encoded in self.encodings.items():
            data = encode_packet(fmt, packet.type_id, packet.timestamp, packet.payload)
            encoded.append(data)
            sizes = self.sizes[fmt]
            sizes.append(sizes[-1] + len(data))

    # ----- the shared log ----------------------------------------------------------------------------------

    def ensure_format(self, fmt: str) -> None:
        """Start keeping encodings for one more output format (the first player of that format)."""
        if fmt in self.encodings:
            return
        encoded = [p.encode(fmt) for p in self.packets]
        sizes = [0]
        total = 0
        for data in encoded:
            total += len(data)
            sizes.append(total)
        # sizes[i] is the byte total of encodings[0:i]; it has one more entry than the log.
        self.encodings[fmt] = encoded
        self.sizes[fmt] = sizes

    def header_bytes(self, fmt: str, position: int) -> list[bytes]:
        """What a new player gets before the GOP: metadata and sequence headers, stamped with the time of
        the first message it will get after them, so its timeline never runs backwards."""
        now_ts = self.timestamp_at(position + 1)
        if now_ts is None:
            now_ts = self.jitter.last_out
        out = []
        if self.metadata is not None:
            out.append(encode_packet(fmt, MSG_DATA_AMF0, 0, self.metadata.payload))
        for packet in (self.video_sh, self.audio_sh, *self.track_sh.values()):
            if packet is not None:
                out.append(encode_packet(fmt, packet.type_id, now_ts, packet.payload))
        return out

    def start_position(self) -> int:
        """Where a new player starts: just before the latest keyframe, else at the newest message."""
        if self.gop_start_seq and self.gop_start_seq >= self.base_seq:
            return self.gop_start_seq - 1
        return self.next_seq - 1

    def timestamp_at(self, seq: int) -> int | None:
        index = seq - self.base_seq
        if 0 <= index < len(self.packets):
            return self.packets[index].timestamp
        return None

    def trim(self) -> None:
        """Drop packets nobody needs: older than the GOP and every player's position, or too old anyway."""
        self.since_trim = 0
        if not self.packets:
            return
        keep_from = self.next_seq
        if self.gop_start_seq:
            keep_from = self.gop_start_seq
        for consumer in self.consumers:
            if consumer.position + 1 < keep_from:
                keep_from = consumer.position + 1
        newest_ts = self.packets[-1].timestamp
        cutoff_ts = newest_ts - self.queue_length_ms
        first = max(keep_from - self.base_seq, 0)
        # Nothing older than queue_length (players that far behind are cut back to the GOP at their next flush).
        while first < len(self.packets) and self.packets[first].timestamp < cutoff_ts \
                and self.packets[first].seq < (self.gop_start_seq or self.next_seq):
            first += 1
        first = max(first, len(self.packets) - MAX_LOG_PACKETS)
        # Nothing beyond the byte bound either (the GOP alone never exceeds it: on_media clears a GOP that
        # grows past gop_cache_max_bytes, half the bound), however few seconds the bytes span.
        first = max(first, 0)
        dropped = sum(len(p.payload) for p in self.packets[:first])
        while self.log_bytes - dropped > self.max_log_bytes and first < len(self.packets):
            dropped += len(self.packets[first].payload)
            first += 1
        if first <= 0:
            return
        if self.gop_start_seq and self.gop_start_seq < self.base_seq + first:
            self.gop_start_seq = 0      # (cannot happen while gop_bytes <= gop_cache_max_bytes; kept safe)
            self.gop_frames = self.gop_bytes = 0
        self.log_bytes -= dropped
        del self.packets[:first]
        for fmt in self.encodings:
            del self.encodings[fmt][:first]
            del self.sizes[fmt][:first]
        self.base_seq += first

    def flush(self, now: float) -> None:
        """Hand each player what it has not received yet (one writelines per player)."""
        self.flushed_seq = self.next_seq - 1
        self.flushed_ts = self.jitter.last_out
        self.flushed_at = now
        for consumer in list(self.consumers):
            consumer.flush(now)

    def has_unflushed(self) -> bool:
        return self.flushed_seq < self.next_seq - 1

    # ----- players -----------------------------------------------------------------------------------------

    def add_consumer(self, consumer) -> None:
        self.ensure_format(consumer.fmt)
        self.consumers.add(consumer)
        self.idle_since = None

    def remove_consumer(self, consumer, now: float) -> None:
        self.consumers.discard(consumer)
        if not self.consumers:
            # With no player left, only the GOP cache needs to stay; formats can be rebuilt on demand.
            for fmt in list(self.encodings):
                del self.encodings[fmt]
                del self.sizes[fmt]
            if self.publisher is None:
                self._turned_idle(now)

    def is_idle(self) -> bool:
        # HLS viewers are not consumers: the segmenter says whether its playlist is still of use.
        return self.publisher is None and not self.consumers and (self.hls is None or self.hls.is_idle())

    def _turned_idle(self, now: float) -> None:
        self.idle_since = now
        if self.on_idle is not None:
            self.on_idle(self)

    # ----- handover ----------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Plain data: metadata, sequence headers and the log with its sequence numbers."""
        return {
            "version": SNAPSHOT_VERSION,
            "key": self.key, "vhost": self.vhost, "app": self.app, "stream": self.stream, "id": self.id,
            "config": {"gop_cache": self.gop_cache, "gop_cache_max_frames": self.gop_cache_max_frames,
                       "queue_length_ms": self.queue_length_ms, "mw_latency_ms": self.mw_latency_ms,
                       "mw_msgs": self.mw_msgs, "min_latency": self.min_latency},
            "jitter": self.jitter.snapshot(),
            "packets": [p.snapshot() for p in self.packets],
            "base_seq": self.base_seq, "next_seq": self.next_seq,
            "gop_start_seq": self.gop_start_seq, "gop_frames": self.gop_frames,
            # Outside "config": an older build passes "config" to Source() and would refuse an unknown key.
            "gop_cache_max_bytes": self.gop_cache_max_bytes,
            "metadata": None if self.metadata is None else self.metadata.snapshot(),
            "video_sh": None if self.video_sh is None else self.video_sh.snapshot(),
            "audio_sh": None if self.audio_sh is None else self.audio_sh.snapshot(),
            "track_sh": [[key, packet.snapshot()] for key, packet in self.track_sh.items()],
            "info": {"video_codec": self.info.video_codec, "audio_codec": self.info.audio_codec,
                     "video": self.info.video, "audio": self.info.audio},
            "frames": self.frames, "recv_bytes": self.recv_bytes,
            "flushed_seq": self.flushed_seq, "flushed_ts": self.flushed_ts,
            "hls": None if self.hls is None else self.hls.snapshot(),
        }

    @classmethod
    def restore(cls, snap: dict, now: float) -> "Source":
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown Source snapshot version {snap.get('version')!r}")
        cfg = snap["config"]
        self = cls(snap["key"], snap["vhost"], snap["app"], snap["stream"], source_id=snap["id"],
                   time_jitter=snap["jitter"]["mode"], **cfg)
        self.jitter = Jitter.restore(snap["jitter"])
        self.packets = [Packet.restore(p) for p in snap["packets"]]
        self.base_seq, self.next_seq = snap["base_seq"], snap["next_seq"]
        self.gop_start_seq, self.gop_frames = snap["gop_start_seq"], snap["gop_frames"]
        self.gop_cache_max_bytes = snap.get("gop_cache_max_bytes", DEFAULT_GOP_CACHE_MAX_BYTES)
        self.log_bytes = sum(len(p.payload) for p in self.packets)
        if self.gop_start_seq >= self.base_seq:
            self.gop_bytes = sum(len(p.payload) for p in self.packets[self.gop_start_seq - self.base_seq:])
        for name in ("metadata", "video_sh", "audio_sh"):
            value = snap[name]
            setattr(self, name, None if value is None else Packet.restore(value))
        self.track_sh = {key: Packet.restore(value) for key, value in snap.get("track_sh", [])}
        info = snap["info"]
        self.info.video_codec, self.info.audio_codec = info["video_codec"], info["audio_codec"]
        self.info.video, self.info.audio = info["video"], info["audio"]
        if self.metadata is not None:
            try:
                self.info.metadata = dict(amf0.metadata_object(amf0.decode_all(self.metadata.payload)) or {})
            except amf0.DecodeError:
                pass
        self.frames, self.recv_bytes = snap["frames"], snap["recv_bytes"]
        self.flushed_seq, self.flushed_ts = snap["flushed_seq"], snap["flushed_ts"]
        self.created_at = self.last_packet_at = self.flushed_at = now
        self.idle_since = now
        hls = snap.get("hls")
        if hls is not None:
            self.hls = Segmenter.restore(hls, cid=self.id)     # the worker attaches it to its HLS index
        return self
