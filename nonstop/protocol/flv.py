"""FLV, both ways: the file header and tags we write for HTTP-FLV players, an incremental tag reader, and
the payload inspection the media layer needs (keyframes, sequence headers, codecs, SPS / AAC config).

An RTMP audio/video/data message and an FLV tag carry the same payload bytes, so the helpers here serve
RTMP too. Sans-IO: bytes in, tags and values out; `FlvReader` raises `FlvError` for anything malformed.

Enhanced RTMP (veovera's enhanced-rtmp v1/v2) is understood for video (`IsExHeader` bit, FourCC) and for
audio (sound format 9, FourCC), so HEVC/AV1/VP9/Opus publishers get a GOP cache and codec info too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nonstop.protocol.errors import ProtocolError

__all__ = [
    "FlvError", "TAG_AUDIO", "TAG_VIDEO", "TAG_SCRIPT", "FLV_HEADER_SIZE", "PREV_TAG_SIZE_LEN",
    "TAG_HEADER_SIZE", "MAX_TAG_SIZE", "file_header", "encode_tag", "FlvTag", "FlvReader", "read_file_tags",
    "is_video_keyframe", "is_video_sequence_header", "is_audio_sequence_header", "video_codec",
    "audio_codec", "parse_avc_sequence_header", "parse_aac_sequence_header",
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
FRAME_COMMAND = 5
AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
LEGACY_VIDEO_CODECS = {
    2: "H263", 3: "ScreenVideo", 4: "VP6", 5: "VP6Alpha", 6: "ScreenVideo2", 7: "H264",
    12: "HEVC", 13: "AV1",  # 12 and 13 are the de-facto (ffmpeg/SRS) extensions before Enhanced RTMP
}
CODECS_WITH_PACKET_TYPE = (7, 12, 13)
# Enhanced RTMP video: byte 0 = IsExHeader (1 bit) | FrameType (3 bits) | PacketType (4 bits), FourCC.
VIDEO_EX_HEADER = 0x80
PACKET_SEQUENCE_START = 0
PACKET_CODED_FRAMES = 1
PACKET_CODED_FRAMES_X = 3  # coded frames with composition time 0 (no SI24 offset)
VIDEO_FOURCCS = {b"avc1": "H264", b"hvc1": "HEVC", b"av01": "AV1", b"vp09": "VP9"}
EX_FOURCC_END = 5  # the FourCC is payload[1:5]

# Legacy audio tag: byte 0 = SoundFormat (4 bits) | rate | size | type; AAC then AACPacketType.
SOUND_AAC = 10
SOUND_EX_HEADER = 9  # Enhanced RTMP v2: byte 0 = 9 << 4 | AudioPacketType, then FourCC
AAC_SEQUENCE_HEADER = 0
LEGACY_AUDIO_CODECS = {
    0: "PCM", 1: "ADPCM", 2: "MP3", 3: "PCM", 4: "Nellymoser", 5: "Nellymoser", 6: "Nellymoser",
    7: "G711A", 8: "G711U", 10: "AAC", 11: "Speex",
    13: "Opus",  # SRS's extension (SrsAudioCodecIdOpus), used for WebRTC-to-RTMP
    14: "MP3",   # MP3 8 kHz
}
AUDIO_FOURCCS = {b"mp4a": "AAC", b"Opus": "Opus", b".mp3": "MP3", b"fLaC": "FLAC", b"ac-3": "AC3",
                 b"ec-3": "EAC3"}


def _video_ex(payload) -> tuple[int, int, bytes] | None:
    """(frame type, packet type, FourCC) of an Enhanced RTMP video payload, else None."""
    if len(payload) < EX_FOURCC_END or not payload[0] & VIDEO_EX_HEADER:
        return None
    return (payload[0] >> 4) & 0x07, payload[0] & 0x0F, bytes(payload[1:EX_FOURCC_END])


def is_video_keyframe(payload: bytes) -> bool:
    """True for a video frame a player can start decoding at (where a GOP starts).

    Sequence headers (and AVC end-of-sequence) are not keyframes here, in either syntax: they are not
    pictures, and sequence headers are cached apart.
    Enhanced RTMP multitrack/ModEx packets are not inspected (False).
    """
    if not payload:
        return False
    if payload[0] & VIDEO_EX_HEADER:
        ex = _video_ex(payload)
        return (ex is not None and ex[0] == FRAME_KEY and ex[2] in VIDEO_FOURCCS
                and ex[1] in (PACKET_CODED_FRAMES, PACKET_CODED_FRAMES_X))
    if payload[0] >> 4 != FRAME_KEY:
        return False
    if payload[0] & 0x0F in CODECS_WITH_PACKET_TYPE:
        # Only coded pictures: not the sequence header (0) nor AVC end of sequence (2).
        return len(payload) >= 2 and payload[1] == AVC_NALU
    return True


def is_video_sequence_header(payload: bytes) -> bool:
    """True for codec configuration: legacy AVC/HEVC/AV1 packet type 0, or Enhanced RTMP SequenceStart."""
    if len(payload) < 2:
        return False
    if payload[0] & VIDEO_EX_HEADER:
        ex = _video_ex(payload)
        return ex is not None and ex[1] == PACKET_SEQUENCE_START and ex[0] != FRAME_COMMAND
    return (payload[0] & 0x0F) in CODECS_WITH_PACKET_TYPE and payload[1] == AVC_SEQUENCE_HEADER


def is_audio_sequence_header(payload: bytes) -> bool:
    """True for audio codec configuration: AAC packet type 0, or Enhanced RTMP audio SequenceStart."""
    if len(payload) < 2:
        return False
    sound_format = payload[0] >> 4
    if sound_format == SOUND_EX_HEADER:
        return len(payload) >= EX_FOURCC_END and payload[0] & 0x0F == PACKET_SEQUENCE_START
    return sound_format == SOUND_AAC and payload[1] == AAC_SEQUENCE_HEADER


def video_codec(payload: bytes) -> str | None:
    """'H264', 'HEVC', 'AV1', 'VP9' (and legacy 'H263', 'VP6', ...) from a video payload, else None."""
    if not payload:
        return None
    if payload[0] & VIDEO_EX_HEADER:
        ex = _video_ex(payload)
        return VIDEO_FOURCCS.get(ex[2]) if ex is not None else None
    return LEGACY_VIDEO_CODECS.get(payload[0] & 0x0F)


def audio_codec(payload: bytes) -> str | None:
    """'AAC', 'MP3', 'Speex', 'Opus', ... from an audio payload's sound format (or FourCC), else None."""
    if not payload:
        return None
    sound_format = payload[0] >> 4
    if sound_format == SOUND_EX_HEADER:
        return AUDIO_FOURCCS.get(bytes(payload[1:EX_FOURCC_END]))
    return LEGACY_AUDIO_CODECS.get(sound_format)


# ----- H.264 SPS (ITU-T H.264 section 7.3.2.1.1) ---------------------------------------------------------
AVC_RECORD_OFFSET = 5        # legacy: byte 0, AVCPacketType, SI24 composition time; enhanced: byte 0, FourCC
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
        if not is_video_sequence_header(payload) or video_codec(payload) != "H264":
            return None
        record = bytes(payload[AVC_RECORD_OFFSET:])
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
        if not is_audio_sequence_header(payload) or audio_codec(payload) != "AAC":
            return None
        offset = EX_FOURCC_END if payload[0] >> 4 == SOUND_EX_HEADER else AAC_CONFIG_OFFSET
        config = bytes(payload[offset:])
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
