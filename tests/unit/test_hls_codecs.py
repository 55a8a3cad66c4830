"""HEVC in both HLS segment formats, from legacy FLV (codec id 12) and from Enhanced RTMP (`hvc1`, CodedFrames and
CodedFramesX): the same bytes out of the TS and fMP4 muxers, which ffprobe reads as hevc with every frame's
timestamp and FFmpeg decodes. Which codecs each muxer says it carries (the segmenter logs the others)."""

from __future__ import annotations

import json
import subprocess

import pytest

from nonstop.protocol import flv
from nonstop.protocol.fmp4 import Fmp4Muxer
from nonstop.protocol.mpegts import STREAM_TYPES, TsMuxer
from tests.unit.test_mpegts import FFMPEG, hevc_test_payloads

FFPROBE = "ffprobe"


@pytest.fixture(scope="module")
def hevc_payloads(tmp_path_factory) -> list[tuple[int, bytes]]:
    payloads = hevc_test_payloads(tmp_path_factory.mktemp("hevc") / "in.hevc")
    # configurationVersion 1, as every encoder writes it (the helper leaves 0; FFmpeg then takes the record for
    # Annex B and finds no start code in an MP4 sample).
    ts, sh = payloads[0]
    payloads[0] = (ts, sh[:5] + b"\x01" + sh[6:])
    return payloads


def enhanced(payloads: list[tuple[int, bytes]], frames_x: bool) -> list[tuple[int, bytes]]:
    """The same stream as Enhanced RTMP sends it (ffmpeg 9 with `-rtmp_enhanced_codecs hvc1`): SequenceStart,
    then CodedFrames (with a composition time) or CodedFramesX (without: it is 0)."""
    out = []
    for ts, p in payloads:
        frame_type = p[0] >> 4
        if p[1] == flv.AVC_SEQUENCE_HEADER:
            out.append((ts, bytes((0x80 | frame_type << 4 | flv.PACKET_SEQUENCE_START,)) + b"hvc1" + p[5:]))
        elif frames_x:
            out.append((ts, bytes((0x80 | frame_type << 4 | flv.PACKET_CODED_FRAMES_X,)) + b"hvc1" + p[5:]))
        else:
            out.append((ts, bytes((0x80 | frame_type << 4 | flv.PACKET_CODED_FRAMES,)) + b"hvc1" + p[2:5] + p[5:]))
    return out


def ts_of(payloads) -> bytes:
    mux = TsMuxer()
    body = [mux.video(ts, p) for ts, p in payloads]
    return mux.tables() + b"".join(body)


def fmp4_of(payloads) -> bytes:
    mux = Fmp4Muxer()
    samples = [s for s in (mux.video(ts, p) for ts, p in payloads) if s is not None]
    return mux.init_segment() + mux.fragment(samples, payloads[-1][0] + 40)


def test_enhanced_rtmp_hevc_makes_the_same_segments_as_legacy_flv(hevc_payloads):
    for frames_x in (False, True):
        e = enhanced(hevc_payloads, frames_x)
        assert ts_of(e) == ts_of(hevc_payloads)
        assert fmp4_of(e) == fmp4_of(hevc_payloads)


def test_hevc_in_fmp4_has_hvc1_with_hvcc_and_is_read_back_and_decoded(hevc_payloads, tmp_path):
    data = fmp4_of(enhanced(hevc_payloads, False))
    assert b"hvc1" in data and b"hvcC" in data and b"avcC" not in data
    path = tmp_path / "out.mp4"
    path.write_bytes(data)
    proc = subprocess.run([FFPROBE, "-v", "error", "-print_format", "json", "-show_packets", "-show_streams",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    probe = json.loads(proc.stdout)
    assert [s["codec_name"] for s in probe["streams"]] == ["hevc"]
    dts = [round(float(p["dts_time"]) * 1000) for p in probe["packets"]]
    assert dts == [ts for ts, _ in hevc_payloads[1:]]
    proc = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-f", "framecrc", "-"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line and not line.startswith("#")]) == 50


def test_hevc_in_ts_is_stream_type_0x24_in_the_pmt(hevc_payloads):
    data = ts_of(enhanced(hevc_payloads, True))
    pmt = data[188:376]
    assert STREAM_TYPES["HEVC"] == 0x24 and bytes((0x24, 0xE1, 0x00)) in pmt     # stream type 0x24 on PID 0x100


def test_each_muxer_says_which_codecs_it_carries():
    assert set(TsMuxer.video_codecs + TsMuxer.audio_codecs) == set(STREAM_TYPES)
    assert Fmp4Muxer.video_codecs == ("H264", "HEVC") and Fmp4Muxer.audio_codecs == ("AAC",)
