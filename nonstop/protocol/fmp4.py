"""Fragmented MP4 (ISO/IEC 14496-12, CMAF-shaped) muxer, sans-IO: FLV payloads in, an init segment and
moof/mdat fragments out.

Track 1 is video (H.264 `avc1`/`avcC` or HEVC `hvc1`/`hvcC`, timescale 90 kHz), track 2 audio (AAC `mp4a`/`esds`,
timescale = its sample rate). Video samples stay as FLV carries them (length-prefixed NAL units), so nothing is
rewritten; the configuration records go into the init segment as they came. One fragment holds one `traf` per
track with a `tfdt` (decode time of its first sample) and a `trun` (duration, size, flags, composition offset
of each sample); `default-base-is-moof` makes the data offsets relative to the fragment, so fragments can be
served alone. The state between fragments is plain data: the fragment sequence number and the configuration.
"""

from __future__ import annotations

import struct

from nonstop.protocol import flv
from nonstop.protocol.mpegts import TsError, parse_audio_specific_config

VIDEO_TRACK, AUDIO_TRACK = 1, 2
VIDEO_TIMESCALE = 90000
AAC_SAMPLES_PER_FRAME = 1024
SAMPLE_SYNC = 0x02000000        # sample_depends_on = 2 (an I picture): a sync sample
SAMPLE_NON_SYNC = 0x01010000    # depends on others, sample_is_non_sync_sample
MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def _descriptor(tag: int, payload: bytes) -> bytes:
    """An MPEG-4 descriptor with its size in the 4-byte expandable form (14496-1 8.3.3)."""
    n = len(payload)
    size = bytes((0x80 | (n >> 21) & 0x7F, 0x80 | (n >> 14) & 0x7F, 0x80 | (n >> 7) & 0x7F, n & 0x7F))
    return bytes((tag,)) + size + payload


class Sample:
    """One frame: `dts` and `cts` in ms (FLV's clock); `ticks`, when not None, its decode time in its track's
    timescale, exact where the ms value is rounded (AAC: a frame is 1024 samples, not 23 or 24 ms)."""
    __slots__ = ("track", "dts", "cts", "data", "sync", "ticks")

    def __init__(self, track: int, dts: int, cts: int, data: bytes, sync: bool, ticks: int | None = None):
        self.track, self.dts, self.cts, self.data, self.sync = track, dts, cts, data, sync
        self.ticks = ticks


class Fmp4Muxer:
    """Configure with the FLV sequence headers (`video()`/`audio()` return None for them), turn frames into
    Samples (`video()`/`audio()`), and write `init_segment()` and `fragment(samples, end_ms)`."""

    # What it carries; the frames of other codecs are left out (the segmenter says so once).
    video_codecs = ("H264", "HEVC")
    audio_codecs = ("AAC",)

    def __init__(self):
        self.video_codec: str | None = None
        self.video_record = b""
        self.width = self.height = 0
        self.audio_asc = b""
        self.sample_rate = 0
        self.channels = 0
        self.sequence = 0
        # The decode time (in audio samples) the next AAC frame has if it follows the last one without a gap.
        self.audio_next: int | None = None

    def video(self, timestamp: int, payload: bytes) -> Sample | None:
        if len(payload) < 5:
            return None
        if payload[0] & flv.VIDEO_EX_HEADER:
            codec = flv.VIDEO_FOURCCS.get(bytes(payload[1:5]))
            packet_type = payload[0] & 0x0F
            sync = (payload[0] >> 4) & 0x07 == flv.FRAME_KEY
            if packet_type == flv.PACKET_SEQUENCE_START:
                return self._configure(codec, bytes(payload[5:]), payload)
            if packet_type == flv.PACKET_CODED_FRAMES and len(payload) >= 8:
                cts, data = _si24(payload[5:8]), payload[8:]
            elif packet_type == flv.PACKET_CODED_FRAMES_X:
                cts, data = 0, payload[5:]
            else:
                return None
        else:
            codec = flv.LEGACY_VIDEO_CODECS.get(payload[0] & 0x0F)
            sync = payload[0] >> 4 == flv.FRAME_KEY
            if payload[1] == flv.AVC_SEQUENCE_HEADER:
                return self._configure(codec, bytes(payload[5:]), payload)
            if payload[1] != flv.AVC_NALU:
                return None
            cts, data = _si24(payload[2:5]), payload[5:]
        if codec != self.video_codec or not data:
            return None
        return Sample(VIDEO_TRACK, timestamp, cts, bytes(data), sync)

    def _configure(self, codec: str | None, record: bytes, payload: bytes) -> None:
        if codec not in ("H264", "HEVC") or not record:
            return None
        self.video_codec, self.video_record = codec, record
        info = flv.parse_avc_sequence_header(payload) if codec == "H264" else None
        self.width, self.height = (info["width"], info["height"]) if info else (0, 0)
        return None

    def audio(self, timestamp: int, payload: bytes) -> Sample | None:
        if len(payload) < 2 or flv.audio_codec(payload) != "AAC":
            return None
        ex = payload[0] >> 4 == flv.SOUND_EX_HEADER
        data = payload[5:] if ex else payload[2:]
        if flv.is_audio_sequence_header(payload):
            _, rate_index, channels = parse_audio_specific_config(bytes(data))
            self.audio_asc, self.sample_rate, self.channels = bytes(data), flv.AAC_SAMPLE_RATES[rate_index], channels
            self.audio_next = None
            return None
        if not self.sample_rate or not data or (ex and payload[0] & 0x0F != flv.PACKET_CODED_FRAMES):
            return None
        # FLV stamps AAC frames in whole ms, so 1024 samples at 44.1 kHz come 23 or 24 ms apart. Taken as they
        # are, the frames' durations jitter (1014..1059 samples) and each fragment's tfdt overlaps or leaves a hole
        # after the previous fragment's last frame. A frame within half a frame of where the previous one ends
        # is placed exactly there; a real gap or jump (a lost frame, a republish) starts a new run.
        ticks = timestamp * self.sample_rate // 1000
        if self.audio_next is not None and abs(ticks - self.audio_next) < AAC_SAMPLES_PER_FRAME // 2:
            ticks = self.audio_next
        self.audio_next = ticks + AAC_SAMPLES_PER_FRAME
        return Sample(AUDIO_TRACK, timestamp, 0, bytes(data), True, ticks)

    # ----- the init segment ------------------------------------------------------------------------------

    def init_segment(self) -> bytes:
        tracks, trexes = [], []
        if self.video_codec:
            tracks.append(self._video_trak())
            trexes.append(full_box(b"trex", 0, 0, struct.pack(">5I", VIDEO_TRACK, 1, 0, 0, 0)))
        if self.sample_rate:
            tracks.append(self._audio_trak())
            trexes.append(full_box(b"trex", 0, 0, struct.pack(">5I", AUDIO_TRACK, 1, 0, 0, 0)))
        ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6cmfcisommp41")
        mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0), struct.pack(">IH10x", 0x10000, 0x100),
                        MATRIX, bytes(24), struct.pack(">I", 3))
        return ftyp + box(b"moov", mvhd, *tracks, box(b"mvex", *trexes))

    @staticmethod
    def _trak(track: int, timescale: int, handler: bytes, media_header: bytes, entry: bytes, width: int = 0,
              height: int = 0, volume: int = 0) -> bytes:
        tkhd = full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, track, 0, 0), bytes(8),
                        struct.pack(">hhhH", 0, 0, volume, 0), MATRIX, struct.pack(">II", width << 16, height << 16))
        mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, 0x55C4, 0))   # 'und'
        hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I", 0), handler, bytes(12), b"nonstop\0")
        dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
        stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
                   full_box(b"stts", 0, 0, bytes(4)), full_box(b"stsc", 0, 0, bytes(4)),
                   full_box(b"stsz", 0, 0, bytes(8)), full_box(b"stco", 0, 0, bytes(4)))
        return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl)))

    def _video_trak(self) -> bytes:
        kind, config = (b"avc1", b"avcC") if self.video_codec == "H264" else (b"hvc1", b"hvcC")
        entry = box(kind, bytes(6), struct.pack(">H", 1), bytes(16), struct.pack(">HH", self.width, self.height),
                    struct.pack(">IIIH", 0x480000, 0x480000, 0, 1), bytes(32), struct.pack(">Hh", 0x18, -1),
                    box(config, self.video_record))
        return self._trak(VIDEO_TRACK, VIDEO_TIMESCALE, b"vide", full_box(b"vmhd", 0, 1, bytes(8)), entry,
                          self.width, self.height)

    def _audio_trak(self) -> bytes:
        decoder = _descriptor(4, bytes((0x40, 0x15)) + bytes(3) + struct.pack(">II", 0, 0)
                              + _descriptor(5, self.audio_asc))
        esds = full_box(b"esds", 0, 0, _descriptor(3, struct.pack(">HB", AUDIO_TRACK, 0) + decoder
                                                   + _descriptor(6, b"\x02")))
        entry = box(b"mp4a", bytes(6), struct.pack(">H", 1), bytes(8), struct.pack(">HHHH", self.channels, 16, 0, 0),
                    struct.pack(">I", min(self.sample_rate, 0xFFFF) << 16), esds)
        return self._trak(AUDIO_TRACK, self.sample_rate, b"soun", full_box(b"smhd", 0, 0, bytes(4)), entry,
                          volume=0x100)

    # ----- fragments -------------------------------------------------------------------------------------

    def fragment(self, samples: list[Sample], end_ms: int) -> bytes:
        """One moof + mdat of `samples` (in decode order per track). A sample lasts until the next one of its
        track; the last video sample until `end_ms` (the next fragment's start), the last AAC frame 1024
        samples."""
        self.sequence += 1
        trafs, datas = [], []
        for track in (VIDEO_TRACK, AUDIO_TRACK):
            mine = [s for s in samples if s.track == track]
            if not mine:
                continue
            trafs.append((track, mine))
            datas.append(b"".join(s.data for s in mine))
        # First pass with zero offsets to learn the moof's size, then the real ones.
        moof = self._moof(trafs, [0] * len(trafs), end_ms)
        offsets, offset = [], len(moof) + 8
        for data in datas:
            offsets.append(offset)
            offset += len(data)
        moof = self._moof(trafs, offsets, end_ms)
        mdat = b"".join(datas)
        return moof + struct.pack(">I", 8 + len(mdat)) + b"mdat" + mdat

    def _moof(self, trafs: list, offsets: list[int], end_ms: int) -> bytes:
        boxes = [full_box(b"mfhd", 0, 0, struct.pack(">I", self.sequence))]
        for (track, samples), offset in zip(trafs, offsets):
            video = track == VIDEO_TRACK
            scale = VIDEO_TIMESCALE if video else self.sample_rate
            ticks = [s.dts * scale // 1000 if s.ticks is None else s.ticks for s in samples]
            entries = []
            for i, s in enumerate(samples):
                if i + 1 < len(samples):
                    duration = ticks[i + 1] - ticks[i]
                elif video:
                    duration = end_ms * scale // 1000 - ticks[i]
                    if duration <= 0:
                        duration = entries[-1][0] if entries else VIDEO_TIMESCALE // 25
                else:
                    duration = AAC_SAMPLES_PER_FRAME
                flags = SAMPLE_SYNC if s.sync else SAMPLE_NON_SYNC
                entries.append((max(duration, 0), len(s.data), flags, s.cts * scale // 1000))
            trun = full_box(b"trun", 1, 0x000F01, struct.pack(">Ii", len(samples), offset),
                            b"".join(struct.pack(">IIIi", *e) for e in entries))
            boxes.append(box(b"traf", full_box(b"tfhd", 0, 0x020000, struct.pack(">I", track)),
                             full_box(b"tfdt", 1, 0, struct.pack(">Q", ticks[0])), trun))
        return box(b"moof", *boxes)

    def snapshot(self) -> dict:
        return {"video_codec": self.video_codec, "video_record": self.video_record, "width": self.width,
                "height": self.height, "audio_asc": self.audio_asc, "sample_rate": self.sample_rate,
                "channels": self.channels, "sequence": self.sequence, "audio_next": self.audio_next}

    @classmethod
    def restore(cls, snap: dict) -> "Fmp4Muxer":
        self = cls()
        for key, value in snap.items():
            setattr(self, key, value)
        return self


def _si24(b: bytes) -> int:
    value = (b[0] << 16) | (b[1] << 8) | b[2]
    return value - (1 << 24) if value & 0x800000 else value


__all__ = ["Fmp4Muxer", "Sample", "TsError"]
