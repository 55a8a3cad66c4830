"""FLV, both ways: the file header and tags we write for HTTP-FLV players, an incremental tag reader, and
the payload inspection the media layer needs (keyframes, sequence headers, codecs, SPS / AAC config).

An RTMP audio/video/data message and an FLV tag carry the same payload bytes, so the helpers here serve
RTMP too. Sans-IO: bytes in, tags and values out; `FlvReader` raises `FlvError` for anything malformed.

Enhanced RTMP (veovera's enhanced-rtmp v1/v2) is understood for video (`IsExHeader` bit, FourCC) and for
audio (sound format 9, FourCC), with ModEx and multitrack: `parse_video_header` / `parse_audio_header` read
one header, `video_kind` tells the source what a video message is, and the sequence-header parsers give the
API's codec details (H.264, HEVC, AV1, VP9, AAC, Opus, FLAC), so every codec gets a GOP cache and codec info.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nonstop.protocol.errors import ProtocolError

__all__ = [
    "FlvError", "TAG_AUDIO", "TAG_VIDEO", "TAG_SCRIPT", "FLV_HEADER_SIZE", "PREV_TAG_SIZE_LEN",
    "TAG_HEADER_SIZE", "MAX_TAG_SIZE", "file_header", "encode_tag", "FlvTag", "FlvReader", "read_file_tags",
    "is_video_keyframe", "is_video_sequence_header", "is_audio_sequence_header", "video_codec",
    "audio_codec", "parse_avc_sequence_header", "parse_aac_sequence_header", "MediaHeader", "Track",
    "parse_video_header", "parse_audio_header", "video_kind", "sequence_header_slot",
    "parse_video_sequence_header", "parse_hevc_sequence_header", "parse_av1_sequence_header",
    "parse_vp9_sequence_header", "parse_audio_sequence_header", "keyframe_picture_size", "KIND_SEQUENCE_HEADER", "KIND_KEYFRAME", "KIND_FRAME", "KIND_TRACK_KEYFRAME",
    "KIND_OTHER",
]

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18
TAG_TYPES = frozenset((TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT))

FLV_HEADER_SIZE = 9     # 'FLV', version, flags, u32 DataOffset
PREV_TAG_SIZE_LEN = 4   # u32 PreviousTagSize after the header and after every tag
TAG_HEADER_SIZE = 11    # type, u24 size, u24 timestamp, u8 timestamp extension, u24 stream id

FLV_SIGNATURE = b"FLV"
FLV_VERSION = 1
FLAG_AUDIO = 0x04
FLAG_VIDEO = 0x01
# The tag size field is a u24, so no tag can exceed 16 MiB - 1 anyway; RTMP's message length is the same u24,
# so every message a publisher can send fits. Callers reading untrusted peers may pass a smaller cap.
MAX_TAG_SIZE = 16 * 1024 * 1024
MAX_PAYLOAD = 0xFFFFFF
# DataOffset may point past the 9-byte header (the spec leaves room for later versions); every writer we
# know puts 9. A little padding is skipped; a huge offset is garbage that would swallow the stream silently.
MAX_HEADER_PADDING = 1024
TIMESTAMP_MODULO = 1 << 32  # 24 low bits + 8 extension bits

_TAG_WORDS = struct.Struct(">II3x")  # (type << 24 | size), (ts low 24 << 8 | ts bits 24..31), stream id 0
_U32 = struct.Struct(">I")


class FlvError(ProtocolError):
    """The bytes are not a valid FLV stream, or a tag exceeds the cap."""


# ----- writing -------------------------------------------------------------------------------------------
def file_header(has_audio: bool, has_video: bool) -> bytes:
    """The 9-byte FLV header followed by PreviousTagSize0 (four zero bytes): 13 bytes."""
    flags = (FLAG_AUDIO if has_audio else 0) | (FLAG_VIDEO if has_video else 0)
    return FLV_SIGNATURE + bytes((FLV_VERSION, flags)) + _U32.pack(FLV_HEADER_SIZE) + b"\x00\x00\x00\x00"


def encode_tag(tag_type: int, timestamp: int, payload: bytes) -> bytes:
    """One FLV tag: 11-byte header, payload, then its u32 PreviousTagSize (11 + payload length).

    The timestamp is taken modulo 2**32 (RTMP timestamps wrap there too); bits 24..31 go into the
    extension byte. Raises FlvError if the payload does not fit the u24 size field.
    """
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise FlvError(f"tag payload of {size} bytes exceeds the u24 size field")
    if not 0 <= tag_type <= 0xFF:
        raise FlvError(f"tag type {tag_type} is not a byte")
    ts = timestamp % TIMESTAMP_MODULO
    header = _TAG_WORDS.pack((tag_type << 24) | size, ((ts & 0xFFFFFF) << 8) | (ts >> 24))
    return b"".join((header, payload, _U32.pack(TAG_HEADER_SIZE + size)))


# ----- reading -------------------------------------------------------------------------------------------
@dataclass(slots=True)
class FlvTag:
    """One tag: its type (TAG_AUDIO / TAG_VIDEO / TAG_SCRIPT), 32-bit timestamp in ms, and payload."""

    tag_type: int
    timestamp: int
    payload: bytes


class FlvReader:
    """Incremental parser of an FLV byte stream (a file, or an HTTP-FLV response body).

    `feed(data)` accepts any split of the stream and returns the tags completed by it. A tag is returned
    as soon as its payload is complete; the PreviousTagSize that follows is skipped, not checked (writers
    get it wrong, e.g. leaving out the 11-byte header, and the tag sizes alone delimit the stream).
    Buffered bytes never exceed TAG_HEADER_SIZE + max_tag_size. After an FlvError every feed raises again.
    """

    def __init__(self, max_tag_size: int = MAX_TAG_SIZE) -> None:
        self.max_tag_size = max_tag_size
        self.header: tuple[bool, bool] | None = None  # (has_audio, has_video) once the header is parsed
        self._buf = bytearray()   # bytes of the header or of the tag in progress
        self._skip = 0            # bytes to discard before the next tag (PreviousTagSize, header padding)
        self._error: str | None = None

    def feed(self, data) -> list[FlvTag]:
        """Parse `data`; return the tags it completes (possibly none). Raises FlvError for bad input."""
        if self._error is not None:
            raise FlvError(f"reader already failed: {self._error}")
        tags: list[FlvTag] = []
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        try:
            self._parse(view, tags)
        except FlvError as e:
            self._error = str(e)
            self._buf = bytearray()
            raise
        return tags

    def _parse(self, view: memoryview, tags: list[FlvTag]) -> None:
        pos, end = 0, len(view)
        buf = self._buf
        while pos < end:
            if self._skip:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                continue
            if self.header is not None and not buf and end - pos >= TAG_HEADER_SIZE:
                # Fast path: a tag wholly inside `data` is sliced out of it, not copied through the buffer.
                head = view[pos:pos + TAG_HEADER_SIZE]
                self._check_tag_header(head)
                tag_end = pos + TAG_HEADER_SIZE + _u24(head, 1)
                if tag_end <= end:
                    timestamp = _u24(head, 4) | (head[7] << 24)
                    tags.append(FlvTag(head[0], timestamp, bytes(view[pos + TAG_HEADER_SIZE:tag_end])))
                    pos = tag_end
                    self._skip = PREV_TAG_SIZE_LEN
                    continue
            # Fill the buffer to what the current element needs: the file header, a tag header, or the tag.
            if self.header is None:
                need = FLV_HEADER_SIZE
            elif len(buf) < TAG_HEADER_SIZE:
                need = TAG_HEADER_SIZE
            else:
                need = TAG_HEADER_SIZE + _u24(buf, 1)
            n = min(need - len(buf), end - pos)
            buf += view[pos:pos + n]
            pos += n
            if len(buf) < need:
                break  # wait for more
            if self.header is None:
                self._on_file_header(buf)
                buf.clear()
            elif need == TAG_HEADER_SIZE:
                self._check_tag_header(buf)
                if _u24(buf, 1) == 0:  # an empty tag is complete with its header
                    tags.append(self._tag(buf))
                    buf.clear()
                    self._skip = PREV_TAG_SIZE_LEN
            else:
                tags.append(self._tag(buf))
                buf.clear()
                self._skip = PREV_TAG_SIZE_LEN

    def _on_file_header(self, buf: bytearray) -> None:
        if buf[:3] != FLV_SIGNATURE:
            raise FlvError(f"not an FLV stream: signature {bytes(buf[:3])!r}")
        data_offset = _U32.unpack_from(buf, 5)[0]
        if not FLV_HEADER_SIZE <= data_offset <= FLV_HEADER_SIZE + MAX_HEADER_PADDING:
            raise FlvError(f"FLV DataOffset {data_offset} is outside 9..{FLV_HEADER_SIZE + MAX_HEADER_PADDING}")
        # The version byte is not checked (some writers put 0); DataOffset beyond 9 is padding, skipped.
        flags = buf[4]
        self.header = (bool(flags & FLAG_AUDIO), bool(flags & FLAG_VIDEO))
        self._skip = data_offset - FLV_HEADER_SIZE + PREV_TAG_SIZE_LEN

    def _check_tag_header(self, buf: bytearray) -> None:
        tag_type = buf[0]
        if tag_type not in TAG_TYPES:
            # This also refuses the Filter bit (0x20, encrypted tags) and the reserved bits.
            raise FlvError(f"bad FLV tag type 0x{tag_type:02x}")
        size = _u24(buf, 1)
        if size > self.max_tag_size:
            raise FlvError(f"FLV tag of {size} bytes exceeds the cap of {self.max_tag_size}")

    @staticmethod
    def _tag(buf: bytearray) -> FlvTag:
        timestamp = _u24(buf, 4) | (buf[7] << 24)
        return FlvTag(buf[0], timestamp, bytes(buf[TAG_HEADER_SIZE:]))

    @property
    def in_tag(self) -> bool:
        """True until the file header is complete and while a tag is partly received: a stream that ends
        now is truncated."""
        return self.header is None or bool(self._buf)

    def snapshot(self) -> dict:
        """Plain-data state (bytes for the partial tag) for a handover; `restore` takes it back."""
        return {
            "max_tag_size": self.max_tag_size,
            "header": list(self.header) if self.header is not None else None,
            "buffer": bytes(self._buf),
            "skip": self._skip,
            "error": self._error,
        }

    @classmethod
    def restore(cls, d: dict) -> FlvReader:
        """A reader that goes on exactly where the one that produced `d` (from `snapshot`) stopped."""
        try:
            reader = cls(int(d["max_tag_size"]))
            header = d["header"]
            reader.header = None if header is None else (bool(header[0]), bool(header[1]))
            reader._buf = bytearray(d["buffer"])
            reader._skip = int(d["skip"])
            reader._error = d["error"]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise FlvError(f"bad FlvReader snapshot: {e!r}") from None
        return reader


def read_file_tags(data: bytes) -> list[FlvTag]:
    """All tags of a whole FLV file. Raises FlvError if it is malformed or ends inside the header or a tag.

    A missing final PreviousTagSize is tolerated (the last tag is complete without it).
    """
    reader = FlvReader()
    tags = reader.feed(data)
    if reader.header is None:
        raise FlvError("truncated FLV file: incomplete header")
    if reader.in_tag:
        raise FlvError("truncated FLV file: it ends inside a tag")
    return tags


def _u24(buf, offset: int) -> int:
    return (buf[offset] << 16) | (buf[offset + 1] << 8) | buf[offset + 2]


# ----- payload inspection --------------------------------------------------------------------------------
# Legacy video tag: byte 0 = FrameType (4 bits) | CodecID (4 bits); AVC/HEVC/AV1 then AVCPacketType.
FRAME_KEY = 1
FRAME_INTER = 2
FRAME_COMMAND = 5            # a command (seek start/end), no picture
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2
LEGACY_VIDEO_CODECS = {
    2: "H263", 3: "ScreenVideo", 4: "VP6", 5: "VP6Alpha", 6: "ScreenVideo2", 7: "H264",
    12: "HEVC", 13: "AV1",  # 12 and 13 are the de-facto (ffmpeg/SRS) extensions before Enhanced RTMP
}
CODECS_WITH_PACKET_TYPE = (7, 12, 13)

# Enhanced RTMP (veovera enhanced-rtmp v1/v2) video: byte 0 = IsExHeader (1 bit) | FrameType (3 bits) |
# VideoPacketType (4 bits); then ModEx blocks, the Multitrack byte, FourCC(s) and per-track ids and sizes.
VIDEO_EX_HEADER = 0x80
EX_FOURCC_END = 5      # a single-track E-RTMP header's FourCC is payload[1:5]
PACKET_SEQUENCE_START = 0
PACKET_CODED_FRAMES = 1
PACKET_SEQUENCE_END = 2
PACKET_CODED_FRAMES_X = 3    # coded frames with composition time 0 (no SI24 offset)
PACKET_METADATA = 4          # AMF-encoded video metadata (colorInfo), not a picture; FrameType is ignored
PACKET_MPEG2TS_SEQUENCE_START = 5
VIDEO_PACKET_MULTITRACK = 6
VIDEO_PACKET_MODEX = 7
VIDEO_PACKET_TYPES = frozenset(range(8))
# Names as SRS's API prints them (srs_video_codec_id2str: H264, HEVC, AV1; VP9 in SRS 7).
VIDEO_FOURCCS = {b"avc1": "H264", b"hvc1": "HEVC", b"av01": "AV1", b"vp09": "VP9", b"vp08": "VP8",
                 b"vvc1": "VVC"}

# Legacy audio tag: byte 0 = SoundFormat (4 bits) | rate | size | type; AAC then AACPacketType.
SOUND_AAC = 10
SOUND_EX_HEADER = 9          # Enhanced RTMP v2: byte 0 = 9 << 4 | AudioPacketType, then FourCC
AAC_SEQUENCE_HEADER = 0
AUDIO_SEQUENCE_START = 0
AUDIO_CODED_FRAMES = 1
AUDIO_SEQUENCE_END = 2
AUDIO_MULTICHANNEL_CONFIG = 4
AUDIO_PACKET_MULTITRACK = 5
AUDIO_PACKET_MODEX = 7
AUDIO_PACKET_TYPES = frozenset((AUDIO_SEQUENCE_START, AUDIO_CODED_FRAMES, AUDIO_SEQUENCE_END,
                                AUDIO_MULTICHANNEL_CONFIG, AUDIO_PACKET_MULTITRACK, AUDIO_PACKET_MODEX))  # 3: reserved
LEGACY_AUDIO_CODECS = {
    0: "PCM", 1: "ADPCM", 2: "MP3", 3: "PCM", 4: "Nellymoser", 5: "Nellymoser", 6: "Nellymoser",
    7: "G711A", 8: "G711U", 10: "AAC", 11: "Speex",
    13: "Opus",  # SRS's extension (SrsAudioCodecIdOpus), used for WebRTC-to-RTMP
    14: "MP3",   # MP3 8 kHz
}
# AAC, MP3 and Opus as SRS names them; SRS has no name for the others ("Other"): we keep a useful one.
AUDIO_FOURCCS = {b"mp4a": "AAC", b"Opus": "Opus", b".mp3": "MP3", b"fLaC": "FLAC", b"ac-3": "AC3",
                 b"ec-3": "EAC3"}

# AvMultitrackType, shared by audio and video.
MULTITRACK_ONE_TRACK = 0
MULTITRACK_MANY_TRACKS = 1
MULTITRACK_MANY_TRACKS_MANY_CODECS = 2
# Track ids are a byte; a message naming more tracks than that is garbage (and this bounds the parse).
MAX_TRACKS = 256
# ModEx blocks before the real packet type: the spec defines one (TimestampOffsetNano); more is garbage.
MAX_MODEX = 8

# What a video message is to the source (video_kind).
KIND_SEQUENCE_HEADER = "sequence_header"
KIND_KEYFRAME = "keyframe"
KIND_FRAME = "frame"
KIND_TRACK_KEYFRAME = "track_keyframe"   # multitrack: a keyframe of tracks other than the default (0) only
KIND_OTHER = "other"         # end of sequence, command, metadata, unknown: passed through, not counted


@dataclass(slots=True, frozen=True)
class Track:
    """One track of a media message: its id (0 unless multitrack), FourCC, and where its bytes are."""

    track_id: int
    fourcc: bytes
    offset: int              # index in the payload where the track's body starts
    size: int                # bytes of the body


@dataclass(slots=True, frozen=True)
class MediaHeader:
    """The parsed header of an audio or video message, legacy or Enhanced RTMP.

    `packet_type` is the VideoPacketType / AudioPacketType of an enhanced message (after ModEx and the
    Multitrack byte), or for a legacy AVC/HEVC/AV1 video or AAC audio message its AVCPacketType /
    AACPacketType; -1 for legacy codecs that have none. `multitrack` is the AvMultitrackType, or None.
    `tracks` lists every track of an enhanced message (one, id 0, when it is not multitrack) and is empty
    for legacy messages. `codec` is the name of the first track's codec (None when unknown).
    """

    enhanced: bool
    frame_type: int          # video only (0 for audio)
    packet_type: int
    codec: str | None
    multitrack: int | None = None
    tracks: tuple[Track, ...] = ()
    command: int | None = None       # video command (FrameType 5), when present
    nano_offset: int = 0             # ModEx TimestampOffsetNano, in nanoseconds


class _Reader:
    """Bounds-checked reads of a payload; any overrun raises FlvError."""

    __slots__ = ("data", "pos")

    def __init__(self, data, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise FlvError(f"media header truncated: needs {end} bytes, has {len(self.data)}")
        out = bytes(self.data[self.pos:end])
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")


def _read_modex(r: _Reader, packet_type: int, modex_type: int) -> tuple[int, int]:
    """Skip ModEx blocks: (the real packet type, TimestampOffsetNano or 0)."""
    nano = 0
    count = 0
    while packet_type == modex_type:
        count += 1
        if count > MAX_MODEX:
            raise FlvError(f"more than {MAX_MODEX} ModEx blocks")
        size = r.u8() + 1
        if size == 256:
            size = r.u16() + 1
        data = r.take(size)
        byte = r.u8()
        if byte >> 4 == 0 and size >= 3:   # TimestampOffsetNano: a UI24 of nanoseconds
            nano = int.from_bytes(data[:3], "big")
        packet_type = byte & 0x0F
    return packet_type, nano


def _read_tracks(r: _Reader, multitrack: int | None, fourcc: bytes | None) -> tuple[Track, ...]:
    """The track list of an enhanced body (spec's ExVideoTagBody / ExAudioTagBody loop)."""
    end = len(r.data)
    if multitrack is None:
        return (Track(0, fourcc, r.pos, end - r.pos),)
    tracks = []
    while r.pos < end or not tracks:
        if len(tracks) >= MAX_TRACKS:
            raise FlvError(f"more than {MAX_TRACKS} tracks in one message")
        track_fourcc = r.take(4) if multitrack == MULTITRACK_MANY_TRACKS_MANY_CODECS else fourcc
        track_id = r.u8()
        if multitrack == MULTITRACK_ONE_TRACK:
            tracks.append(Track(track_id, track_fourcc, r.pos, end - r.pos))
            break
        size = r.u24()
        if r.pos + size > end:
            raise FlvError(f"track {track_id} of {size} bytes overruns the message")
        tracks.append(Track(track_id, track_fourcc, r.pos, size))
        r.pos += size
    return tuple(tracks)


def _read_multitrack(r: _Reader, packet_type: int, multitrack_type: int, modex_type: int, known: object,
                     what: str) -> tuple[int | None, int, tuple[Track, ...]]:
    """After an ExHeader's packet type: the multitrack byte when there is one (its AvMultitrackType and the
    packet type inside), the FourCC unless each track names its own, then the tracks. The same for video and
    audio but for their constants. Returns (multitrack or None, packet type, tracks)."""
    multitrack = None
    fourcc = None
    if packet_type == multitrack_type:
        byte = r.u8()
        multitrack, packet_type = byte >> 4, byte & 0x0F
        if multitrack > MULTITRACK_MANY_TRACKS_MANY_CODECS:
            raise FlvError(f"reserved AvMultitrackType {multitrack}")
        if packet_type in (multitrack_type, modex_type) or packet_type not in known:
            raise FlvError(f"{what} {packet_type} inside a multitrack message")
        if multitrack != MULTITRACK_MANY_TRACKS_MANY_CODECS:
            fourcc = r.take(4)
    else:
        fourcc = r.take(4)
    return multitrack, packet_type, _read_tracks(r, multitrack, fourcc)


def parse_video_header(payload) -> MediaHeader:
    """The header of a video message. Raises FlvError when it is empty, truncated or uses a reserved
    value of Enhanced RTMP (an unknown FourCC is not an error: its codec is None)."""
    if not payload:
        raise FlvError("empty video message")
    first = payload[0]
    if not first & VIDEO_EX_HEADER:
        frame_type, codec_id = first >> 4, first & 0x0F
        packet_type = -1
        command = None
        if frame_type == FRAME_COMMAND:
            command = payload[1] if len(payload) > 1 else None
        elif codec_id in CODECS_WITH_PACKET_TYPE:
            if len(payload) < 2:
                raise FlvError("video message without its packet type")
            packet_type = payload[1]
        return MediaHeader(False, frame_type, packet_type, LEGACY_VIDEO_CODECS.get(codec_id), command=command)
    r = _Reader(payload, 1)
    frame_type = (first >> 4) & 0x07
    packet_type, nano = _read_modex(r, first & 0x0F, VIDEO_PACKET_MODEX)
    if packet_type not in VIDEO_PACKET_TYPES:
        raise FlvError(f"reserved VideoPacketType {packet_type}")
    if frame_type == FRAME_COMMAND and packet_type != PACKET_METADATA:
        return MediaHeader(True, frame_type, packet_type, None, command=r.u8(), nano_offset=nano)
    multitrack, packet_type, tracks = _read_multitrack(r, packet_type, VIDEO_PACKET_MULTITRACK, VIDEO_PACKET_MODEX,
                                                       VIDEO_PACKET_TYPES, "VideoPacketType")
    return MediaHeader(True, frame_type, packet_type, VIDEO_FOURCCS.get(tracks[0].fourcc), multitrack,
                       tracks, nano_offset=nano)


def parse_audio_header(payload) -> MediaHeader:
    """The header of an audio message (legacy SoundFormat, or Enhanced RTMP's ExHeader). Raises FlvError
    when it is empty, truncated or uses a reserved value."""
    if not payload:
        raise FlvError("empty audio message")
    sound_format = payload[0] >> 4
    if sound_format != SOUND_EX_HEADER:
        packet_type = -1
        if sound_format == SOUND_AAC:
            if len(payload) < 2:
                raise FlvError("AAC message without its packet type")
            packet_type = payload[1]
        return MediaHeader(False, 0, packet_type, LEGACY_AUDIO_CODECS.get(sound_format))
    r = _Reader(payload, 1)
    packet_type, nano = _read_modex(r, payload[0] & 0x0F, AUDIO_PACKET_MODEX)
    if packet_type not in AUDIO_PACKET_TYPES:
        raise FlvError(f"reserved AudioPacketType {packet_type}")
    multitrack, packet_type, tracks = _read_multitrack(r, packet_type, AUDIO_PACKET_MULTITRACK, AUDIO_PACKET_MODEX,
                                                       AUDIO_PACKET_TYPES, "AudioPacketType")
    return MediaHeader(True, 0, packet_type, AUDIO_FOURCCS.get(tracks[0].fourcc), multitrack, tracks,
                       nano_offset=nano)


def _video_header(payload) -> MediaHeader | None:
    try:
        return parse_video_header(payload)
    except FlvError:
        return None


def _audio_header(payload) -> MediaHeader | None:
    try:
        return parse_audio_header(payload)
    except FlvError:
        return None


def _is_default_track(header: MediaHeader) -> bool:
    # A multitrack message is a GOP boundary only when it carries track 0, the default track (the spec
    # recommends track 0 for it; ffmpeg sends track 0 as a plain message and the others as multitrack).
    return header.multitrack is None or any(t.track_id == 0 for t in header.tracks)


def video_kind(payload) -> str:
    """What a video message is for the GOP cache: KIND_SEQUENCE_HEADER (codec configuration, cached
    apart), KIND_KEYFRAME (a player can start decoding here: a GOP starts), KIND_FRAME (another picture),
    KIND_TRACK_KEYFRAME (a picture: a keyframe of multitrack tracks other than the default one), or
    KIND_OTHER (end of sequence, command, metadata, malformed: passed through, not a frame).

    Enhanced RTMP: SequenceStart and MPEG2TSSequenceStart are headers; CodedFrames(X) with FrameType
    KeyFrame is a keyframe when its codec is known and it carries the default track (0).
    """
    # Runs for every video message: the common headers are read here without building a MediaHeader.
    if not payload:
        return KIND_OTHER
    first = payload[0]
    if not first & VIDEO_EX_HEADER:
        frame_type = first >> 4
        if frame_type == FRAME_COMMAND:
            return KIND_OTHER
        if first & 0x0F not in CODECS_WITH_PACKET_TYPE:   # legacy codecs without packet type
            return KIND_KEYFRAME if frame_type == FRAME_KEY else KIND_FRAME
        if len(payload) < 2:
            return KIND_OTHER
        if payload[1] == AVC_SEQUENCE_HEADER:
            return KIND_SEQUENCE_HEADER
        if payload[1] == AVC_NALU:
            return KIND_KEYFRAME if frame_type == FRAME_KEY else KIND_FRAME
        return KIND_OTHER                # AVC end of sequence, reserved
    packet_type = first & 0x0F
    if packet_type in (VIDEO_PACKET_MULTITRACK, VIDEO_PACKET_MODEX):
        header = _video_header(payload)
        if header is None:
            return KIND_OTHER
        frame_type, packet_type = header.frame_type, header.packet_type
        known = header.codec is not None
        if known and not _is_default_track(header) and frame_type == FRAME_KEY \
                and packet_type in (PACKET_CODED_FRAMES, PACKET_CODED_FRAMES_X):
            return KIND_TRACK_KEYFRAME
    else:
        if len(payload) < 5:
            return KIND_OTHER
        frame_type = (first >> 4) & 0x07
        known = bytes(payload[1:5]) in VIDEO_FOURCCS
    if frame_type == FRAME_COMMAND and packet_type != PACKET_METADATA:
        return KIND_OTHER
    if packet_type in (PACKET_SEQUENCE_START, PACKET_MPEG2TS_SEQUENCE_START):
        return KIND_SEQUENCE_HEADER
    if packet_type in (PACKET_CODED_FRAMES, PACKET_CODED_FRAMES_X):
        return KIND_KEYFRAME if frame_type == FRAME_KEY and known else KIND_FRAME
    return KIND_OTHER


def is_video_keyframe(payload) -> bool:
    """True for a video frame a player can start decoding at (where a GOP starts); see video_kind."""
    return video_kind(payload) == KIND_KEYFRAME


def is_video_sequence_header(payload) -> bool:
    """True for codec configuration: legacy AVC/HEVC/AV1 packet type 0, or Enhanced RTMP SequenceStart
    (also MPEG2TSSequenceStart, and inside a multitrack message)."""
    return video_kind(payload) == KIND_SEQUENCE_HEADER


def is_audio_sequence_header(payload) -> bool:
    """True for audio codec configuration: AAC packet type 0, or Enhanced RTMP audio SequenceStart
    (also inside a multitrack message)."""
    header = _audio_header(payload)
    if header is None:
        return False
    if header.enhanced:
        return header.packet_type == AUDIO_SEQUENCE_START
    return header.codec == "AAC" and header.packet_type == AAC_SEQUENCE_HEADER


def sequence_header_slot(tag_type: int, payload) -> str:
    """Which cached sequence header a TAG_VIDEO / TAG_AUDIO header message replaces: '' for the default
    track (a plain message), else 'tracks:<ids>' for a multitrack one, so each track's configuration is
    kept and sent to new players (the caller keeps video and audio apart)."""
    header = _video_header(payload) if tag_type == TAG_VIDEO else _audio_header(payload)
    if header is None or header.multitrack is None:
        return ""
    return "tracks:" + ",".join(str(t.track_id) for t in header.tracks)


def video_codec(payload) -> str | None:
    """'H264', 'HEVC', 'AV1', 'VP9' (and legacy 'H263', 'VP6', ...) from a video payload, else None."""
    if not payload:
        return None
    if payload[0] & VIDEO_EX_HEADER:
        header = _video_header(payload)
        return header.codec if header is not None else None
    return LEGACY_VIDEO_CODECS.get(payload[0] & 0x0F)


def audio_codec(payload) -> str | None:
    """'AAC', 'MP3', 'Speex', 'Opus', ... from an audio payload's sound format (or FourCC), else None."""
    if not payload:
        return None
    sound_format = payload[0] >> 4
    if sound_format == SOUND_EX_HEADER:
        header = _audio_header(payload)
        return header.codec if header is not None else None
    return LEGACY_AUDIO_CODECS.get(sound_format)


def _config_record(payload, codec: str) -> bytes | None:
    """The configuration record of a video sequence header for `codec` (its first such track)."""
    header = _video_header(payload)
    if header is None:
        return None
    if not header.enhanced:
        if header.packet_type != AVC_SEQUENCE_HEADER or header.codec != codec:
            return None
        return bytes(payload[AVC_RECORD_OFFSET:])
    if header.packet_type != PACKET_SEQUENCE_START:
        return None
    for track in header.tracks:
        if VIDEO_FOURCCS.get(track.fourcc) == codec:
            return bytes(payload[track.offset:track.offset + track.size])
    return None


def parse_video_sequence_header(payload) -> dict | None:
    """Profile, level and picture size of any video sequence header whose codec we read (H.264, HEVC, AV1,
    VP9 without size): {'profile', 'level', 'width', 'height'}. None when unknown or malformed."""
    codec = video_codec(payload)
    if codec == "H264":
        return parse_avc_sequence_header(payload)
    if codec == "HEVC":
        return parse_hevc_sequence_header(payload)
    if codec == "AV1":
        return parse_av1_sequence_header(payload)
    if codec == "VP9":
        return parse_vp9_sequence_header(payload)
    return None


# ----- H.264 SPS (ITU-T H.264 section 7.3.2.1.1) ---------------------------------------------------------
AVC_RECORD_OFFSET = 5        # legacy: byte 0, AVCPacketType, SI24 composition time (enhanced: see _config_record)
NAL_TYPE_SPS = 7
MAX_EXP_GOLOMB_ZEROS = 31    # ue(v) values in an SPS fit in 32 bits; more leading zeros is garbage
MAX_POC_CYCLE = 255          # num_ref_frames_in_pic_order_cnt_cycle range, 0..255
AVC_PROFILES = {
    66: "Baseline", 77: "Main", 88: "Extended", 100: "High", 110: "High10", 122: "High422",
    244: "High444", 44: "CAVLC444", 83: "ScalableBaseline", 86: "ScalableHigh", 118: "MultiviewHigh",
    128: "StereoHigh",
}  # names as SRS's HTTP API prints them ("High", "High10", ...)
# Profiles whose SPS carries chroma_format_idc, bit depths and scaling lists.
HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))
LEVEL_1B = 9                 # level_idc 9 is level 1b (as is 11 with constraint_set3 in Baseline/Main/Extended)
CHROMA_444 = 3


class _Garbage(Exception):
    """Internal: the bitstream ended or held an impossible value; the parsers turn it into None."""


class _Bits:
    """MSB-first bit reader with Exp-Golomb codes, over an RBSP held in one int."""

    __slots__ = ("value", "left")

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def u(self, n: int) -> int:
        if n > self.left:
            raise _Garbage("bitstream ended")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > MAX_EXP_GOLOMB_ZEROS:
                raise _Garbage("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    # Not bytes.replace: after 00 00 03 the counting of zeros starts again, so 00 00 03 00 00 03 needs a scan.
    out = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            next_scale = (last + bits.se() + 256) % 256
        last = last if next_scale == 0 else next_scale


def _parse_sps(nal: bytes) -> dict:
    if len(nal) < 4 or nal[0] & 0x1F != NAL_TYPE_SPS:
        raise _Garbage("not an SPS")
    bits = _Bits(_rbsp(nal[1:]))
    profile_idc = bits.u(8)
    constraints = bits.u(8)
    level_idc = bits.u(8)
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc = 1  # 4:2:0 unless a high profile says otherwise
    separate_colour_planes = 0
    if profile_idc in HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc > CHROMA_444:
            raise _Garbage("bad chroma_format_idc")
        if chroma_format_idc == CHROMA_444:
            separate_colour_planes = bits.u(1)
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma_format_idc == CHROMA_444 else 8):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        cycle = bits.ue()
        if cycle > MAX_POC_CYCLE:
            raise _Garbage("bad num_ref_frames_in_pic_order_cnt_cycle")
        for _ in range(cycle):
            bits.se()
    elif poc_type != 2:
        raise _Garbage("bad pic_order_cnt_type")
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    crop_left = crop_right = crop_top = crop_bottom = 0
    if bits.u(1):  # frame_cropping_flag
        crop_left, crop_right, crop_top, crop_bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
    # Crop offsets count chroma samples: CropUnitX/Y from ChromaArrayType (Table 6-1, equations 7-19..7-22).
    chroma_array_type = 0 if separate_colour_planes else chroma_format_idc
    if chroma_array_type == 0:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        sub_width = 1 if chroma_array_type == CHROMA_444 else 2
        sub_height = 2 if chroma_array_type == 1 else 1
        unit_x, unit_y = sub_width, sub_height * (2 - frame_mbs_only)
    width = width_mbs * 16 - unit_x * (crop_left + crop_right)
    height = (2 - frame_mbs_only) * height_map_units * 16 - unit_y * (crop_top + crop_bottom)
    if width <= 0 or height <= 0:
        raise _Garbage("cropped to nothing")
    if level_idc == LEVEL_1B or (level_idc == 11 and constraints & 0x10 and profile_idc in (66, 77, 88)):
        level = "1b"
    else:
        level = str(level_idc // 10) + (f".{level_idc % 10}" if level_idc % 10 else "")
    return {"profile": AVC_PROFILES.get(profile_idc, f"Profile{profile_idc}"), "level": level,
            "width": width, "height": height}


def parse_avc_sequence_header(payload: bytes) -> dict | None:
    """Profile, level and picture size of an H.264 sequence header, from the first SPS of its
    AVCDecoderConfigurationRecord: {'profile': 'High', 'level': '3.1', 'width': 1280, 'height': 720}.

    Returns None for anything that is not a well-formed H.264 sequence header; never raises.
    """
    try:
        record = _config_record(payload, "H264")
        if record is None:
            return None
        # configurationVersion, profile, compatibility, level, lengthSizeMinusOne, numOfSequenceParameterSets
        if len(record) < 8 or record[5] & 0x1F == 0:
            return None
        sps_length = (record[6] << 8) | record[7]
        sps = record[8:8 + sps_length]
        if len(sps) < sps_length:
            return None
        return _parse_sps(sps)
    except (_Garbage, IndexError, ValueError):
        return None


# ----- HEVC (ISO/IEC 14496-15 8.3.3.1 record; ITU-T H.265 7.3.2.2 SPS) -----------------------------------
HEVC_RECORD_HEADER = 23      # the fixed part of HEVCDecoderConfigurationRecord, before numOfArrays' arrays
HEVC_NAL_SPS = 33
HEVC_MAX_SUB_LAYERS = 7
# general_profile_idc names as SRS prints them (srs_hevc_profile2str); others are "Other" there too.
HEVC_PROFILES = {1: "Main", 2: "Main10", 3: "Main Still Picture", 4: "Rext"}


def _hevc_level(level_idc: int) -> str:
    # general_level_idc is 30 times the level: 93 is level 3.1 (SRS's srs_hevc_level2str).
    major, minor = divmod(level_idc, 30)
    return str(major) + (f".{minor // 3}" if minor else "")


def _parse_hevc_sps(nal: bytes) -> dict:
    if len(nal) < 3 or (nal[0] >> 1) & 0x3F != HEVC_NAL_SPS:
        raise _Garbage("not an HEVC SPS")
    bits = _Bits(_rbsp(nal[2:]))   # after the two-byte NAL unit header
    bits.u(4)                      # sps_video_parameter_set_id
    max_sub_layers_minus1 = bits.u(3)
    if max_sub_layers_minus1 >= HEVC_MAX_SUB_LAYERS:
        raise _Garbage("bad sps_max_sub_layers_minus1")
    bits.u(1)                      # sps_temporal_id_nesting_flag
    # profile_tier_level(1, sps_max_sub_layers_minus1)
    bits.u(2)                      # general_profile_space
    bits.u(1)                      # general_tier_flag
    profile_idc = bits.u(5)
    bits.u(32)                     # general_profile_compatibility_flag[32]
    bits.u(48)                     # progressive/interlaced/non-packed/frame-only + 44 constraint bits
    level_idc = bits.u(8)
    present = [(bits.u(1), bits.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        bits.u(2 * (8 - max_sub_layers_minus1))   # reserved_zero_2bits
    for profile_present, level_present in present:
        if profile_present:
            bits.u(88)
        if level_present:
            bits.u(8)
    bits.ue()                      # sps_seq_parameter_set_id
    chroma_format_idc = bits.ue()
    if chroma_format_idc > CHROMA_444:
        raise _Garbage("bad chroma_format_idc")
    separate_colour_planes = bits.u(1) if chroma_format_idc == CHROMA_444 else 0
    width = bits.ue()
    height = bits.ue()
    if bits.u(1):                  # conformance_window_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma = 0 if separate_colour_planes else chroma_format_idc
        sub_width = 2 if chroma in (1, 2) else 1
        sub_height = 2 if chroma == 1 else 1
        width -= sub_width * (left + right)
        height -= sub_height * (top + bottom)
    if width <= 0 or height <= 0:
        raise _Garbage("cropped to nothing")
    return {"profile": HEVC_PROFILES.get(profile_idc, "Other"), "level": _hevc_level(level_idc),
            "width": width, "height": height}


def parse_hevc_sequence_header(payload) -> dict | None:
    """Profile, level and picture size of an HEVC sequence header (legacy codec id 12 or Enhanced RTMP
    hvc1), from the first SPS of its HEVCDecoderConfigurationRecord:
    {'profile': 'Main', 'level': '3.1', 'width': 1280, 'height': 720}. None when malformed; never raises.
    """
    try:
        record = _config_record(payload, "HEVC")
        if record is None or len(record) < HEVC_RECORD_HEADER:
            return None
        pos = HEVC_RECORD_HEADER - 1
        arrays = record[pos]
        pos += 1
        for _ in range(arrays):
            nal_type = record[pos] & 0x3F
            count = (record[pos + 1] << 8) | record[pos + 2]
            pos += 3
            for _ in range(count):
                length = (record[pos] << 8) | record[pos + 1]
                nal = record[pos + 2:pos + 2 + length]
                if len(nal) < length:
                    return None
                pos += 2 + length
                if nal_type == HEVC_NAL_SPS:
                    return _parse_hevc_sps(nal)
        return None
    except (_Garbage, IndexError, ValueError):
        return None


# ----- AV1 (AV1-ISOBMFF 2.3 av1C record; AV1 spec 5.5 sequence header OBU) ----------------------------------
AV1_RECORD_HEADER = 4        # marker/version, profile/level, tier/bitdepth/chroma, presentation delay
OBU_SEQUENCE_HEADER = 1
MAX_LEB128_BYTES = 8
AV1_PROFILES = {0: "Main", 1: "High", 2: "Professional"}


def _av1_level(idx: int) -> str:
    # seq_level_idx: level X.Y with X = 2 + (idx >> 2), Y = idx & 3 (AV1 spec annex A.3); 31 is "no limit".
    return "Max" if idx == 31 else f"{2 + (idx >> 2)}.{idx & 3}"


def _uvlc(bits: _Bits) -> int:
    zeros = 0
    while not bits.u(1):
        zeros += 1
        if zeros >= 32:
            return (1 << 32) - 1
    return bits.u(zeros) + (1 << zeros) - 1


def _parse_av1_sequence_header_obu(obu: bytes) -> dict:
    bits = _Bits(obu)
    profile = bits.u(3)
    bits.u(1)                      # still_picture
    if bits.u(1):                  # reduced_still_picture_header
        level_idx = bits.u(5)
    else:
        decoder_model_info = False
        buffer_delay_length = 0
        if bits.u(1):              # timing_info_present_flag
            bits.u(32)             # num_units_in_display_tick
            bits.u(32)             # time_scale
            if bits.u(1):          # equal_picture_interval
                _uvlc(bits)        # num_ticks_per_picture_minus_1
            decoder_model_info = bool(bits.u(1))
            if decoder_model_info:
                buffer_delay_length = bits.u(5) + 1
                bits.u(32)         # num_units_in_decoding_tick
                bits.u(5)          # buffer_removal_time_length_minus_1
                bits.u(5)          # frame_presentation_time_length_minus_1
        initial_display_delay = bits.u(1)
        level_idx = 0
        for i in range(bits.u(5) + 1):   # operating_points_cnt_minus_1
            bits.u(12)             # operating_point_idc
            idx = bits.u(5)
            if i == 0:
                level_idx = idx
            if idx > 7:
                bits.u(1)          # seq_tier
            if decoder_model_info and bits.u(1):
                bits.u(buffer_delay_length)   # decoder_buffer_delay
                bits.u(buffer_delay_length)   # encoder_buffer_delay
                bits.u(1)                     # low_delay_mode_flag
            if initial_display_delay and bits.u(1):
                bits.u(4)          # initial_display_delay_minus_1
    width_bits = bits.u(4) + 1
    height_bits = bits.u(4) + 1
    width = bits.u(width_bits) + 1
    height = bits.u(height_bits) + 1
    return {"profile": AV1_PROFILES.get(profile, "Other"), "level": _av1_level(level_idx),
            "width": width, "height": height}


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(MAX_LEB128_BYTES):
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise _Garbage("leb128 too long")


def parse_av1_sequence_header(payload) -> dict | None:
    """Profile, level and picture size of an AV1 sequence header (Enhanced RTMP av01 SequenceStart), from
    the sequence header OBU in its AV1CodecConfigurationRecord's configOBUs:
    {'profile': 'Main', 'level': '3.0', 'width': 640, 'height': 360}. None when malformed; never raises.
    """
    try:
        record = _config_record(payload, "AV1")
        if record is None or len(record) < AV1_RECORD_HEADER or not record[0] & 0x80:
            return None
        pos = AV1_RECORD_HEADER
        while pos < len(record):
            obu_header = record[pos]
            obu_type = (obu_header >> 3) & 0x0F
            pos += 2 if obu_header & 0x04 else 1     # obu_extension_flag: one more header byte
            if obu_header & 0x02:                    # obu_has_size_field
                size, pos = _leb128(record, pos)
            else:
                size = len(record) - pos
            obu = record[pos:pos + size]
            if len(obu) < size:
                return None
            if obu_type == OBU_SEQUENCE_HEADER:
                return _parse_av1_sequence_header_obu(obu)
            pos += size
        return None
    except (_Garbage, IndexError, ValueError):
        return None


# ----- VP9 (VP Codec ISO-BMFF binding, vpcC record) --------------------------------------------------------
VP9_RECORD_SIZE = 8          # profile, level, bitDepth/chroma/range, primaries, transfer, matrix, u16 init size


def parse_vp9_sequence_header(payload) -> dict | None:
    """Profile and level of a VP9 sequence header (Enhanced RTMP vp09 SequenceStart), from its
    VPCodecConfigurationRecord; the record carries no picture size (width and height are 0 until
    keyframe_picture_size reads a keyframe).
    None when malformed; never raises."""
    record = _config_record(payload, "VP9")
    if record is None:
        return None
    if len(record) >= 4 + VP9_RECORD_SIZE and record[0] == 1 and record[1:4] == b"\x00\x00\x00":
        record = record[4:]    # the vpcC box's version 1 and flags, as ffmpeg writes them
    if len(record) < VP9_RECORD_SIZE:
        return None
    level = record[1]
    return {"profile": f"Profile{record[0]}", "level": str(level // 10) + (f".{level % 10}" if level % 10 else ""),
            "width": 0, "height": 0}


# ----- AAC AudioSpecificConfig (ISO/IEC 14496-3 section 1.6.2.1) ------------------------------------------
AAC_CONFIG_OFFSET = 2        # byte 0 (format/rate/size/type), AACPacketType
AOT_ESCAPE = 31
AOT_SBR = 5                  # HE-AAC (explicit signalling)
AOT_PS = 29                  # HE-AAC v2
AAC_PROFILES = {1: "Main", 2: "LC", 3: "SSR", 4: "LTP", 5: "HE", 29: "HEv2", 23: "LD", 39: "ELD"}
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
AAC_EXPLICIT_RATE = 15       # the rate follows as a 24-bit value
AAC_CHANNELS = (0, 1, 2, 3, 4, 5, 6, 8)  # channelConfiguration -> channels; 0 = defined in a PCE


def _aac_object_type(bits: _Bits) -> int:
    aot = bits.u(5)
    return 32 + bits.u(6) if aot == AOT_ESCAPE else aot


def _aac_sample_rate(bits: _Bits) -> int:
    index = bits.u(4)
    if index == AAC_EXPLICIT_RATE:
        return bits.u(24)
    if index >= len(AAC_SAMPLE_RATES):
        raise _Garbage("reserved sampling frequency index")
    return AAC_SAMPLE_RATES[index]


def parse_aac_sequence_header(payload: bytes) -> dict | None:
    """Profile, sample rate and channels of an AAC sequence header, from its AudioSpecificConfig:
    {'profile': 'LC', 'sample_rate': 44100, 'channel': 2}.

    For explicitly signalled HE-AAC (object type 5 or 29) the profile is 'HE'/'HEv2' and the rate is the
    SBR output rate, what a listener hears. Returns None for anything malformed; never raises.
    """
    try:
        header = _audio_header(payload)
        if header is None or not is_audio_sequence_header(payload):
            return None
        if header.enhanced:
            track = next((t for t in header.tracks if t.fourcc == b"mp4a"), None)
            if track is None:
                return None
            config = bytes(payload[track.offset:track.offset + track.size])
        elif header.codec == "AAC":
            config = bytes(payload[AAC_CONFIG_OFFSET:])
        else:
            return None
        if len(config) < 2:
            return None
        bits = _Bits(config)
        aot = _aac_object_type(bits)
        sample_rate = _aac_sample_rate(bits)
        channel_config = bits.u(4)
        if aot == 0 or channel_config >= len(AAC_CHANNELS):
            return None
        if aot in (AOT_SBR, AOT_PS):
            sample_rate = _aac_sample_rate(bits)  # extensionSamplingFrequencyIndex
        return {"profile": AAC_PROFILES.get(aot, f"AOT{aot}"), "sample_rate": sample_rate,
                "channel": AAC_CHANNELS[channel_config]}
    except (_Garbage, IndexError, ValueError):
        return None


VP9_FRAME_MARKER = 2
VP9_SYNC_CODE = 0x498342
VP9_CS_RGB = 7


def keyframe_picture_size(payload) -> tuple[int, int] | None:
    """(width, height) of a keyframe for codecs whose sequence header has no picture size: VP9, from the
    keyframe's uncompressed header (VP9 bitstream spec 6.2). None otherwise; never raises."""
    try:
        header = _video_header(payload)
        if header is None or not header.tracks or VIDEO_FOURCCS.get(header.tracks[0].fourcc) != "VP9":
            return None
        track = header.tracks[0]
        bits = _Bits(bytes(payload[track.offset:track.offset + min(track.size, 16)]))
        if bits.u(2) != VP9_FRAME_MARKER:
            return None
        profile = bits.u(1) | bits.u(1) << 1
        if profile == 3:
            bits.u(1)                  # reserved_zero
        if bits.u(1) or bits.u(1):     # show_existing_frame; frame_type 1 is a non-key frame
            return None
        bits.u(2)                      # show_frame, error_resilient_mode
        if bits.u(24) != VP9_SYNC_CODE:
            return None
        if profile >= 2:
            bits.u(1)                  # ten_or_twelve_bit
        if bits.u(3) != VP9_CS_RGB:    # color_space
            bits.u(1)                  # color_range
            if profile in (1, 3):
                bits.u(3)              # subsampling_x, subsampling_y, reserved_zero
        elif profile in (1, 3):
            bits.u(1)                  # reserved_zero
        return bits.u(16) + 1, bits.u(16) + 1
    except _Garbage:
        return None


# ----- Opus ID header (RFC 7845 5.1) and FLAC STREAMINFO (RFC 9639 8.2) ----------------------------------
OPUS_HEAD = b"OpusHead"
OPUS_OUTPUT_RATE = 48000     # Opus always decodes at 48 kHz; the header's input rate is informative
FLAC_STREAMINFO_SIZE = 18   # STREAMINFO up to its sample rate and channel bits


def _audio_config(payload, fourcc: bytes) -> bytes | None:
    header = _audio_header(payload)
    if header is None or not header.enhanced or header.packet_type != AUDIO_SEQUENCE_START:
        return None
    track = next((t for t in header.tracks if t.fourcc == fourcc), None)
    return None if track is None else bytes(payload[track.offset:track.offset + track.size])


def parse_audio_sequence_header(payload) -> dict | None:
    """Sample rate and channels (and the AAC profile) of any audio sequence header we read: AAC (legacy
    or mp4a), Opus (ID header) and FLAC (STREAMINFO). None when unknown or malformed; never raises."""
    codec = audio_codec(payload)
    if codec == "AAC":
        return parse_aac_sequence_header(payload)
    if codec == "Opus":
        config = _audio_config(payload, b"Opus")
        if config is None or len(config) < 19 or not config.startswith(OPUS_HEAD) or config[9] == 0:
            return None
        return {"profile": "", "sample_rate": OPUS_OUTPUT_RATE, "channel": config[9]}
    if codec == "FLAC":
        config = _audio_config(payload, b"fLaC")
        if config is None:
            return None
        # The spec puts 'fLaC' and a metadata block header first; ffmpeg sends the bare STREAMINFO.
        info = config[8:] if config.startswith(b"fLaC") else config
        if len(info) < FLAC_STREAMINFO_SIZE:
            return None
        rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)
        return {"profile": "", "sample_rate": rate, "channel": ((info[12] >> 1) & 0x07) + 1}
    return None
