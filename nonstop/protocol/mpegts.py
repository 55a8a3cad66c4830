"""MPEG-TS muxer (ISO/IEC 13818-1), sans-IO: FLV audio/video payloads in, 188-byte transport packets out.

What HLS players need from a TS segment, and no more: a PAT and a PMT at the start of each segment, one PES
per frame, a PCR on the video PID (the audio PID when there is no video), continuity counters that run on
across segments, H.264/HEVC as Annex B with an access unit delimiter and the parameter sets before each
random access picture, AAC as ADTS frames built from the AudioSpecificConfig, MP3 frames as they come.

The muxer's state is plain data (`snapshot()`/`restore()`): the continuity counters and the codec
configuration, so a segmenter handed over to another process goes on with the same counters.
"""

from __future__ import annotations

from nonstop.protocol import flv

TS_PACKET_SIZE = 188
TS_PAYLOAD_SIZE = 184
SYNC_BYTE = 0x47
CLOCK_HZ = 90                   # PES timestamps tick at 90 kHz: 90 per millisecond
TIMESTAMP_MASK = (1 << 33) - 1  # PTS/DTS are 33 bits; they wrap after 26.5 hours, as the standard allows

# PIDs as FFmpeg's muxer picks them (players do not care; a reader of hexdumps is used to these).
PID_PAT = 0x0000
PID_PMT = 0x1000
PID_VIDEO = 0x0100
PID_AUDIO = 0x0101
PROGRAM_NUMBER = 1
TRANSPORT_STREAM_ID = 1

STREAM_TYPES = {"H264": 0x1B, "HEVC": 0x24, "AAC": 0x0F, "MP3": 0x03}
STREAM_ID_VIDEO = 0xE0
STREAM_ID_AUDIO = 0xC0
MAX_PES_LENGTH = 0xFFFF         # above it (video) PES_packet_length is 0: "unbounded", allowed for video only

ANNEXB_START = b"\x00\x00\x00\x01"
H264_AUD = ANNEXB_START + b"\x09\xf0"            # nal_unit_type 9, primary_pic_type 7 (any), stop bit
HEVC_AUD = ANNEXB_START + b"\x46\x01\x50"        # nal_unit_type 35, layer 0, tid 1; pic_type 2, stop bit
H264_NAL_IDR, H264_NAL_SPS, H264_NAL_PPS, H264_NAL_AUD = 5, 7, 8, 9
HEVC_NAL_IRAP = range(16, 24)                    # BLA, IDR, CRA (and reserved IRAP types)
HEVC_NAL_VPS, HEVC_NAL_SPS, HEVC_NAL_PPS, HEVC_NAL_AUD = 32, 33, 34, 35

ADTS_HEADER_SIZE = 7
ADTS_MAX_FRAME = (1 << 13) - 1  # frame_length is 13 bits, header included
AAC_LC = 2                      # ADTS cannot signal SBR/PS: HE-AAC goes out as its AAC-LC core


class TsError(ValueError):
    """A payload the muxer cannot turn into TS (malformed configuration record or frame)."""


def _crc32_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc32_table()


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 of PSI sections: polynomial 0x04C11DB7, initial all ones, not reflected, no final xor."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _timestamp_field(prefix: int, value: int) -> bytes:
    """A 5-byte PTS or DTS: 4-bit prefix, 33 bits split 3/15/15 with marker bits."""
    value &= TIMESTAMP_MASK
    return bytes((
        (prefix << 4) | ((value >> 29) & 0x0E) | 1,
        (value >> 22) & 0xFF,
        ((value >> 14) & 0xFE) | 1,
        (value >> 7) & 0xFF,
        ((value << 1) & 0xFE) | 1,
    ))


def _pcr_field(base: int) -> bytes:
    """6-byte PCR: 33-bit base (90 kHz), 6 reserved bits, 9-bit extension (27 MHz remainder, here 0)."""
    base &= TIMESTAMP_MASK
    return bytes(((base >> 25) & 0xFF, (base >> 17) & 0xFF, (base >> 9) & 0xFF, (base >> 1) & 0xFF,
                  ((base & 1) << 7) | 0x7E, 0))


def split_avcc(data: bytes, length_size: int) -> list[bytes]:
    """NAL units of a length-prefixed (AVCC/HVCC) access unit. Raises TsError on a length past the end."""
    nals = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + length_size > end:
            raise TsError("truncated NAL unit length")
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if size > end - pos:
            raise TsError(f"NAL unit of {size} bytes past the end of the frame")
        if size:
            nals.append(bytes(data[pos:pos + size]))
        pos += size
    return nals


def parse_avc_config(record: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, [SPS..., PPS...]) of an AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1)."""
    if len(record) < 7:
        raise TsError("AVC configuration record too short")
    length_size = (record[4] & 0x03) + 1
    sets = []
    pos = 5
    for count_mask in (0x1F, 0xFF):    # numOfSequenceParameterSets (5 bits), numOfPictureParameterSets
        if pos >= len(record):
            raise TsError("AVC configuration record truncated")
        count = record[pos] & count_mask
        pos += 1
        for _ in range(count):
            if pos + 2 > len(record):
                raise TsError("AVC configuration record truncated")
            size = int.from_bytes(record[pos:pos + 2], "big")
            pos += 2
            if pos + size > len(record):
                raise TsError("AVC parameter set past the end of the record")
            sets.append(bytes(record[pos:pos + size]))
            pos += size
    if length_size == 3:
        raise TsError("NAL length size 3 is not allowed")
    return length_size, sets


def parse_hevc_config(record: bytes) -> tuple[int, list[bytes]]:
    """(NAL length size, [VPS, SPS, PPS, ...]) of an HEVCDecoderConfigurationRecord (14496-15 8.3.3.1)."""
    if len(record) < 23:
        raise TsError("HEVC configuration record too short")
    length_size = (record[21] & 0x03) + 1
    arrays = record[22]
    pos = 23
    sets = []
    for _ in range(arrays):
        if pos + 3 > len(record):
            raise TsError("HEVC configuration record truncated")
        count = int.from_bytes(record[pos + 1:pos + 3], "big")
        pos += 3
        for _ in range(count):
            if pos + 2 > len(record):
                raise TsError("HEVC configuration record truncated")
            size = int.from_bytes(record[pos:pos + 2], "big")
            pos += 2
            if pos + size > len(record):
                raise TsError("HEVC parameter set past the end of the record")
            sets.append(bytes(record[pos:pos + size]))
            pos += size
    if length_size == 3:
        raise TsError("NAL length size 3 is not allowed")
    return length_size, sets


def parse_audio_specific_config(asc: bytes) -> tuple[int, int, int]:
    """(object type, sampling frequency index, channel configuration) for ADTS, from an AudioSpecificConfig.
    HE-AAC (SBR/PS, object types 5 and 29) is given as its AAC-LC core, which is what ADTS can carry."""
    if len(asc) < 2:
        raise TsError("AudioSpecificConfig too short")
    bits = int.from_bytes(asc[:5].ljust(5, b"\0"), "big")    # 40 bits are enough for what we read
    aot = bits >> 35
    used = 5
    if aot == 31:
        aot = 32 + ((bits >> 29) & 0x3F)
        used += 6
    freq_index = (bits >> (40 - used - 4)) & 0x0F
    used += 4
    if freq_index == 15:
        raise TsError("explicit AAC sample rates cannot be carried in ADTS")
    channels = (bits >> (40 - used - 4)) & 0x0F
    if freq_index > 12 or aot == 0 or channels > 7:
        raise TsError(f"AudioSpecificConfig not usable for ADTS (object type {aot}, rate index {freq_index}, "
                      f"channels {channels})")
    if aot in (5, 29):
        aot = AAC_LC
    if aot > 4:
        raise TsError(f"AAC object type {aot} cannot be carried in ADTS")
    return aot, freq_index, channels


def adts_header(aot: int, freq_index: int, channels: int, payload_size: int) -> bytes:
    """The 7-byte ADTS header (ISO/IEC 13818-7 6.2, no CRC) of one raw AAC frame of `payload_size` bytes."""
    length = payload_size + ADTS_HEADER_SIZE
    if length > ADTS_MAX_FRAME:
        raise TsError(f"AAC frame of {payload_size} bytes too large for ADTS")
    return bytes((
        0xFF, 0xF1,                                                     # sync, MPEG-4, layer 0, no CRC
        ((aot - 1) << 6) | (freq_index << 2) | (channels >> 2),
        ((channels & 3) << 6) | (length >> 11),
        (length >> 3) & 0xFF,
        ((length & 7) << 5) | 0x1F,                                     # buffer fullness 0x7FF: VBR
        0xFC,                                                           # one raw data block
    ))


class TsMuxer:
    """Writes one program with up to one video and one audio stream. Feed it FLV payloads with `video()` and
    `audio()`; call `tables()` at the start of each segment. Sequence headers configure and return b""."""

    # What it carries (STREAM_TYPES); the frames of other codecs are left out (the segmenter says so once).
    video_codecs = ("H264", "HEVC")
    audio_codecs = ("AAC", "MP3")

    def __init__(self):
        self.cc: dict[int, int] = {PID_PAT: 0, PID_PMT: 0, PID_VIDEO: 0, PID_AUDIO: 0}
        self.video_codec: str | None = None     # "H264" | "HEVC"
        self.audio_codec: str | None = None     # "AAC" | "MP3"
        self.nal_length_size = 4
        self.parameter_sets: list[bytes] = []
        self.adts: tuple[int, int, int] | None = None    # (object type, rate index, channels)

    # ----- configuration ---------------------------------------------------------------------------------

    def has_video(self) -> bool:
        return self.video_codec is not None

    def has_audio(self) -> bool:
        return self.audio_codec is not None

    def tables(self, *, video: bool | None = None, audio: bool | None = None) -> bytes:
        """A PAT and a PMT for the streams known (or the ones asked for). The PCR is on the video PID when
        there is video, else on the audio PID."""
        video = self.has_video() if video is None else video
        audio = self.has_audio() if audio is None else audio
        pat = bytes((PROGRAM_NUMBER >> 8, PROGRAM_NUMBER & 0xFF, 0xE0 | (PID_PMT >> 8), PID_PMT & 0xFF))
        out = [self._section(PID_PAT, 0x00, TRANSPORT_STREAM_ID, pat)]
        streams = b""
        if video:
            streams += bytes((STREAM_TYPES[self.video_codec or "H264"], 0xE0 | (PID_VIDEO >> 8), PID_VIDEO & 0xFF,
                              0xF0, 0x00))
        if audio:
            streams += bytes((STREAM_TYPES[self.audio_codec or "AAC"], 0xE0 | (PID_AUDIO >> 8), PID_AUDIO & 0xFF,
                              0xF0, 0x00))
        pcr_pid = PID_VIDEO if video or not audio else PID_AUDIO
        pmt = bytes((0xE0 | (pcr_pid >> 8), pcr_pid & 0xFF, 0xF0, 0x00)) + streams
        out.append(self._section(PID_PMT, 0x02, PROGRAM_NUMBER, pmt))
        return b"".join(out)

    def _section(self, pid: int, table_id: int, table_id_ext: int, body: bytes) -> bytes:
        # section_length counts from after itself through the CRC: 5 bytes of header, the body, 4 of CRC.
        length = 5 + len(body) + 4
        section = bytes((table_id, 0xB0 | (length >> 8), length & 0xFF, table_id_ext >> 8, table_id_ext & 0xFF,
                         0xC1, 0x00, 0x00)) + body
        section += crc32_mpeg2(section).to_bytes(4, "big")
        payload = b"\x00" + section     # pointer_field
        header = bytes((SYNC_BYTE, 0x40 | (pid >> 8), pid & 0xFF, 0x10 | self._next_cc(pid)))
        return header + payload + b"\xff" * (TS_PAYLOAD_SIZE - len(payload))

    def _next_cc(self, pid: int) -> int:
        cc = self.cc[pid]
        self.cc[pid] = (cc + 1) & 0x0F
        return cc

    # ----- video -----------------------------------------------------------------------------------------

    def video(self, timestamp: int, payload: bytes) -> bytes:
        """TS packets of one FLV video payload (legacy or Enhanced RTMP H.264/HEVC); b"" for a sequence
        header (it configures the muxer) and for codecs TS cannot carry here. Raises TsError when malformed."""
        if len(payload) < 2:
            return b""
        if payload[0] & flv.VIDEO_EX_HEADER:
            if len(payload) < flv.EX_FOURCC_END:
                return b""
            codec = flv.VIDEO_FOURCCS.get(bytes(payload[1:5]))
            packet_type = payload[0] & 0x0F
            keyframe = (payload[0] >> 4) & 0x07 == flv.FRAME_KEY
            if packet_type == flv.PACKET_SEQUENCE_START:
                return self._configure_video(codec, payload[5:])
            if packet_type == flv.PACKET_CODED_FRAMES:
                if len(payload) < 8:
                    raise TsError("video frame too short")
                cts, data = _si24(payload[5:8]), payload[8:]
            elif packet_type == flv.PACKET_CODED_FRAMES_X:
                cts, data = 0, payload[5:]
            else:
                return b""
        else:
            codec = flv.LEGACY_VIDEO_CODECS.get(payload[0] & 0x0F)
            keyframe = payload[0] >> 4 == flv.FRAME_KEY
            if payload[1] == flv.AVC_SEQUENCE_HEADER:
                return self._configure_video(codec, payload[5:])
            if payload[1] != flv.AVC_NALU or len(payload) < 5:
                return b""
            cts, data = _si24(payload[2:5]), payload[5:]
        if codec not in ("H264", "HEVC") or codec != self.video_codec:
            return b""      # no configuration yet (or a codec TS cannot carry): nothing decodable
        es = self._annexb(data, keyframe)
        return self._pes(PID_VIDEO, STREAM_ID_VIDEO, es, (timestamp + cts) * CLOCK_HZ, timestamp * CLOCK_HZ,
                         pcr=True, random_access=keyframe)

    def _configure_video(self, codec: str | None, record: bytes) -> bytes:
        if codec == "H264":
            self.nal_length_size, self.parameter_sets = parse_avc_config(bytes(record))
        elif codec == "HEVC":
            self.nal_length_size, self.parameter_sets = parse_hevc_config(bytes(record))
        else:
            return b""
        self.video_codec = codec
        return b""

    def _annexb(self, data: bytes, keyframe: bool) -> bytes:
        """AVCC -> Annex B: an AUD first, then the parameter sets before a random access picture unless the
        frame brings its own, then every NAL unit with a 4-byte start code."""
        nals = split_avcc(data, self.nal_length_size)
        hevc = self.video_codec == "HEVC"
        types = [((n[0] >> 1) & 0x3F) if hevc else (n[0] & 0x1F) for n in nals]
        aud_type, sps_type = (HEVC_NAL_AUD, HEVC_NAL_SPS) if hevc else (H264_NAL_AUD, H264_NAL_SPS)
        random_access = any(t in HEVC_NAL_IRAP for t in types) if hevc else H264_NAL_IDR in types
        out = []
        if not types or types[0] != aud_type:
            out.append(HEVC_AUD if hevc else H264_AUD)
        if (random_access or keyframe) and sps_type not in types:
            for ps in self.parameter_sets:
                out.append(ANNEXB_START)
                out.append(ps)
        for nal in nals:
            out.append(ANNEXB_START)
            out.append(nal)
        return b"".join(out)

    # ----- audio -----------------------------------------------------------------------------------------

    def audio(self, timestamp: int, payload: bytes) -> bytes:
        """TS packets of one FLV audio payload (AAC, legacy or Enhanced RTMP, or MP3); b"" for a sequence
        header and for codecs TS cannot carry here. Raises TsError when malformed."""
        if len(payload) < 2:
            return b""
        sound_format = payload[0] >> 4
        if sound_format == flv.SOUND_EX_HEADER:
            if len(payload) < flv.EX_FOURCC_END:
                return b""
            codec = flv.AUDIO_FOURCCS.get(bytes(payload[1:5]))
            packet_type = payload[0] & 0x0F
            data = payload[5:]
            if packet_type == flv.PACKET_SEQUENCE_START:
                if codec == "AAC":
                    self.adts = parse_audio_specific_config(bytes(data))
                    self.audio_codec = "AAC"
                elif codec == "MP3":
                    self.audio_codec = "MP3"
                return b""
            if packet_type != flv.PACKET_CODED_FRAMES:
                return b""
        else:
            codec = flv.LEGACY_AUDIO_CODECS.get(sound_format)
            if codec == "AAC":
                if payload[1] == flv.AAC_SEQUENCE_HEADER:
                    self.adts = parse_audio_specific_config(bytes(payload[2:]))
                    self.audio_codec = "AAC"
                    return b""
                data = payload[2:]
            elif codec == "MP3":
                self.audio_codec = "MP3"     # MP3 has no sequence header: the first frame configures
                data = payload[1:]
            else:
                return b""
        if codec != self.audio_codec or not data:
            return b""
        if codec == "AAC":
            if self.adts is None:
                return b""
            data = adts_header(*self.adts, len(data)) + bytes(data)
        pts = timestamp * CLOCK_HZ
        return self._pes(PID_AUDIO, STREAM_ID_AUDIO, bytes(data), pts, pts,
                         pcr=not self.has_video(), random_access=False)

    # ----- PES and TS packets ----------------------------------------------------------------------------

    def _pes(self, pid: int, stream_id: int, es: bytes, pts: int, dts: int, *, pcr: bool,
             random_access: bool) -> bytes:
        if pts != dts:
            header = b"\x80\xc0\x0a" + _timestamp_field(3, pts) + _timestamp_field(1, dts)
        else:
            header = b"\x80\x80\x05" + _timestamp_field(2, pts)
        length = len(header) + len(es)
        if length > MAX_PES_LENGTH:
            length = 0     # allowed for video elementary streams only; audio frames are far smaller
        pes = b"\x00\x00\x01" + bytes((stream_id, length >> 8, length & 0xFF)) + header + es
        return self._packets(pid, pes, dts if pcr else None, random_access)

    def _packets(self, pid: int, data: bytes, pcr: int | None, random_access: bool) -> bytes:
        """Split one PES into transport packets; the first carries PUSI (and the PCR, random access flag);
        the last is padded with adaptation-field stuffing."""
        out = []
        pos, total = 0, len(data)
        first = True
        pid_hi, pid_lo = pid >> 8, pid & 0xFF
        while pos < total:
            remaining = total - pos
            if first and (pcr is not None or random_access):
                flags = 0x40 if random_access else 0x00
                adaptation = b""
                if pcr is not None:
                    flags |= 0x10
                    adaptation = _pcr_field(pcr)
                af_body = bytes((flags,)) + adaptation
            else:
                af_body = None
            room = TS_PAYLOAD_SIZE - (0 if af_body is None else 1 + len(af_body))
            if remaining < room:
                # Stuff the adaptation field so that the payload ends the packet exactly.
                stuffing = room - remaining
                if af_body is None:
                    af_body = b"" if stuffing == 1 else b"\x00" + b"\xff" * (stuffing - 2)
                else:
                    af_body += b"\xff" * stuffing
                room = remaining
            cc = self.cc[pid]
            self.cc[pid] = (cc + 1) & 0x0F
            if af_body is None:
                out.append(bytes((SYNC_BYTE, (0x40 if first else 0) | pid_hi, pid_lo, 0x10 | cc)))
            else:
                out.append(bytes((SYNC_BYTE, (0x40 if first else 0) | pid_hi, pid_lo, 0x30 | cc, len(af_body))))
                out.append(af_body)
            out.append(data[pos:pos + room])
            pos += room
            first = False
        return b"".join(out)

    # ----- handover ----------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {"cc": {str(pid): cc for pid, cc in self.cc.items()}, "video_codec": self.video_codec,
                "audio_codec": self.audio_codec, "nal_length_size": self.nal_length_size,
                "parameter_sets": list(self.parameter_sets),
                "adts": None if self.adts is None else list(self.adts)}

    @classmethod
    def restore(cls, snap: dict) -> "TsMuxer":
        self = cls()
        self.cc = {int(pid): cc for pid, cc in snap["cc"].items()}
        self.video_codec, self.audio_codec = snap["video_codec"], snap["audio_codec"]
        self.nal_length_size = snap["nal_length_size"]
        self.parameter_sets = list(snap["parameter_sets"])
        self.adts = None if snap["adts"] is None else tuple(snap["adts"])
        return self


def _si24(b: bytes) -> int:
    value = (b[0] << 16) | (b[1] << 8) | b[2]
    return value - (1 << 24) if value & 0x800000 else value
