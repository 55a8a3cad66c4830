"""The MPEG-TS muxer: byte-level rules (sync, continuity, PSI CRC, PES timestamps, ADTS, Annex B) and a read-back
of real FFmpeg output through ffprobe: every frame's PTS/DTS and duration must come out as they went in."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from nonstop.protocol import flv, mpegts
from nonstop.protocol.mpegts import TsError, TsMuxer

FFMPEG, FFPROBE = "ffmpeg", "ffprobe"
AVC_SH = bytes.fromhex("1700000000") + bytes.fromhex("0164001fffe1000b6764001facd9405005ba10") \
    + bytes.fromhex("01000468ebe3cb")   # a tiny (not necessarily decodable) AVC record: 1 SPS, 1 PPS
AAC_SH = bytes.fromhex("af001210")      # AAC LC, 44.1 kHz, stereo


def packets(ts: bytes) -> list[bytes]:
    assert len(ts) % 188 == 0
    return [ts[i:i + 188] for i in range(0, len(ts), 188)]


def pid_of(p: bytes) -> int:
    return ((p[1] & 0x1F) << 8) | p[2]


def pes_payloads(ts: bytes, pid: int) -> list[bytes]:
    """Reassemble the PES packets of one PID."""
    out: list[bytearray] = []
    for p in packets(ts):
        if pid_of(p) != pid:
            continue
        afc = (p[3] >> 4) & 3
        start = 4 + (1 + p[4] if afc & 2 else 0)
        if p[1] & 0x40:
            out.append(bytearray())
        out[-1] += p[start:]
    return [bytes(b) for b in out]


def decode_ts_field(b: bytes) -> int:
    return ((b[0] >> 1) & 7) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1


def test_crc32_mpeg2_check_value():
    assert mpegts.crc32_mpeg2(b"123456789") == 0x0376E6E7


def test_tables_are_two_packets_with_valid_crc_and_stream_types():
    mux = TsMuxer()
    mux.video(0, AVC_SH)
    mux.audio(0, AAC_SH)
    pat, pmt = packets(mux.tables())
    for p in (pat, pmt):
        assert p[0] == 0x47 and p[1] & 0x40
        length = ((p[6] & 0x0F) << 8) | p[7]
        section = p[5:5 + 3 + length]
        assert mpegts.crc32_mpeg2(section) == 0   # a section with its CRC appended checks to zero
    assert pid_of(pat) == 0 and pid_of(pmt) == mpegts.PID_PMT
    assert bytes((0x1B, 0xE1, 0x00)) in pmt and bytes((0x0F, 0xE1, 0x01)) in pmt


def test_continuity_counters_run_on_per_pid_and_wrap():
    mux = TsMuxer()
    mux.video(0, AVC_SH)
    frame = b"\x17\x01\x00\x00\x00" + (3000).to_bytes(4, "big") + b"\x65" + b"\xab" * 2999
    out = b"".join(mux.video(i * 40, frame) for i in range(10))
    ccs = [p[3] & 0x0F for p in packets(out)]
    assert all(b == (a + 1) % 16 for a, b in zip(ccs, ccs[1:]))
    snap = mux.snapshot()
    again = TsMuxer.restore(snap)
    assert again.video(400, frame)[3] & 0x0F == (ccs[-1] + 1) % 16


def test_idr_gets_aud_then_sps_pps_then_the_frame():
    mux = TsMuxer()
    mux.video(0, AVC_SH)
    frame = b"\x17\x01\x00\x00\x00" + (4).to_bytes(4, "big") + b"\x65\x88\x80\x00"
    pes = pes_payloads(mux.video(0, frame), mpegts.PID_VIDEO)[0]
    es = pes[9 + pes[8]:]
    sps = bytes.fromhex("6764001facd9405005ba10")
    assert es == mpegts.H264_AUD + b"\0\0\0\1" + sps + b"\0\0\0\1\x68\xeb\xe3\xcb" + b"\0\0\0\1\x65\x88\x80\x00"


def test_inter_frame_gets_aud_only_and_composition_time_makes_pts():
    mux = TsMuxer()
    mux.video(0, AVC_SH)
    frame = b"\x27\x01\x00\x00\x50" + (2).to_bytes(4, "big") + b"\x41\x9a"   # cts 80 ms
    pes = pes_payloads(mux.video(1000, frame), mpegts.PID_VIDEO)[0]
    assert pes[7] == 0xC0 and pes[8] == 10
    assert decode_ts_field(pes[9:14]) == 1080 * 90 and decode_ts_field(pes[14:19]) == 1000 * 90
    assert pes[19:] == mpegts.H264_AUD + b"\0\0\0\1\x41\x9a"


def test_aac_frames_get_adts_headers_from_the_audio_specific_config():
    mux = TsMuxer()
    assert mux.audio(0, AAC_SH) == b""
    raw = b"\x21" * 100
    pes = pes_payloads(mux.audio(23, b"\xaf\x01" + raw), mpegts.PID_AUDIO)[0]
    assert int.from_bytes(pes[4:6], "big") == len(pes) - 6
    es = pes[9 + pes[8]:]
    assert es[:2] == b"\xff\xf1" and es[7:] == raw
    assert (es[2] >> 6) + 1 == 2 and (es[2] >> 2) & 0xF == 4      # LC, 44.1 kHz
    assert ((es[3] & 3) << 11 | es[4] << 3 | es[5] >> 5) == 107    # frame length with the header


def test_he_aac_goes_out_as_its_lc_core():
    assert mpegts.parse_audio_specific_config(bytes.fromhex("2b920800")) [0] == 2   # AOT 5, 22.05 kHz core


@pytest.mark.parametrize("bad", [b"\x17\x01\x00\x00\x00\x00\x00\x00\x09\x65",    # NAL length past the end
                                 b"\x17\x01\x00\x00\x00\x00\x00"])                # truncated length
def test_malformed_frames_raise_tserror(bad):
    mux = TsMuxer()
    mux.video(0, AVC_SH)
    with pytest.raises(TsError):
        mux.video(0, bad)


def test_frames_before_any_configuration_are_dropped():
    mux = TsMuxer()
    assert mux.video(0, b"\x17\x01\x00\x00\x00\x00\x00\x00\x01\x65") == b""
    assert mux.audio(0, b"\xaf\x01\x21\x21") == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2 ** 32 - 1), st.booleans())
def test_any_payload_gives_whole_packets_or_a_tserror(payload, timestamp, audio):
    mux = TsMuxer()
    mux.video(0, AVC_SH)
    mux.audio(0, AAC_SH)
    try:
        out = mux.audio(timestamp, payload) if audio else mux.video(timestamp, payload)
    except TsError:
        return
    for p in packets(out):
        assert p[0] == 0x47


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000))
def test_every_pes_size_fills_whole_packets_and_reassembles(size):
    mux = TsMuxer()
    mux.video(0, AVC_SH)
    nal = b"\x41" + bytes(size)
    frame = b"\x27\x01\x00\x00\x00" + len(nal).to_bytes(4, "big") + nal
    pes = pes_payloads(mux.video(0, frame), mpegts.PID_VIDEO)[0]
    assert pes.endswith(nal)


# ----- read back with ffprobe ---------------------------------------------------------------------------------

def _make_flv(path: Path, *args: str) -> bytes:
    if not path.exists():
        subprocess.run([FFMPEG, "-v", "error", "-y", *args, "-f", "flv", str(path)], check=True, timeout=120)
    return path.read_bytes()


def mux_flv(data: bytes) -> tuple[bytes, list]:
    """Mux a whole FLV file; returns the TS and the input frames [(kind, dts_ms, pts_ms)]."""
    mux = TsMuxer()
    frames, body = [], []
    for tag in flv.read_file_tags(data):
        if tag.tag_type == flv.TAG_VIDEO:
            out = mux.video(tag.timestamp, tag.payload)
            if out:
                cts = int.from_bytes(tag.payload[2:5], "big", signed=True) if not tag.payload[0] & 0x80 else 0
                frames.append(("video", tag.timestamp, tag.timestamp + cts))
        elif tag.tag_type == flv.TAG_AUDIO:
            out = mux.audio(tag.timestamp, tag.payload)
            if out:
                frames.append(("audio", tag.timestamp, tag.timestamp))
        else:
            continue
        if out and not body:
            body.append(mux.tables())
        body.append(out)
    return b"".join(body), frames


def ffprobe_packets(path: Path) -> list[dict]:
    proc = subprocess.run([FFPROBE, "-v", "error", "-print_format", "json", "-show_packets", "-show_streams",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_read_back_matches(tmp_path: Path, flv_bytes: bytes, codecs: set):
    ts, frames = mux_flv(flv_bytes)
    out = tmp_path / "out.ts"
    out.write_bytes(ts)
    probe = ffprobe_packets(out)
    assert {s["codec_name"] for s in probe["streams"]} == codecs
    kinds = {s["index"]: s["codec_type"] for s in probe["streams"]}
    got = [(kinds[p["stream_index"]], round(float(p["dts_time"]) * 1000), round(float(p["pts_time"]) * 1000))
           for p in probe["packets"]]
    base = got[0][1] - frames[0][1] if frames[0][0] == got[0][0] else 0
    for kind in ("video", "audio"):
        want = [(d, p) for k, d, p in frames if k == kind]
        have = [(d - base, p - base) for k, d, p in got if k == kind]
        # ffprobe splits nothing and merges nothing: one packet per frame, same timestamps.
        assert have == want, f"{kind}: first differences {[(a, b) for a, b in zip(want, have) if a != b][:5]}"
    # Durations: each video packet lasts until the next one's DTS (what a player gets from the timestamps).
    vdts = [d for k, d, _ in got if k == "video"]
    assert vdts == sorted(vdts)
    print(f"read back {len(got)} packets, {len(ts)} TS bytes")


def test_h264_aac_read_back_by_ffprobe_with_bframes(tmp_path):
    data = _make_flv(tmp_path / "in.flv", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25",
                     "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "3",
                     "-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", "25", "-pix_fmt", "yuv420p",
                     "-c:a", "aac", "-b:a", "64k")
    assert_read_back_matches(tmp_path, data, {"h264", "aac"})
    # and it decodes frame by frame, without errors
    proc = subprocess.run([FFMPEG, "-v", "error", "-i", str(tmp_path / "out.ts"), "-f", "null", "-"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_mp3_audio_only_read_back_by_ffprobe(tmp_path):
    data = _make_flv(tmp_path / "in.flv", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                     "-t", "2", "-c:a", "libmp3lame", "-b:a", "64k")
    assert_read_back_matches(tmp_path, data, {"mp3"})


def _hevc_flv_payloads(raw: bytes) -> list[tuple[int, bytes]]:
    """FFmpeg 5 cannot write HEVC in FLV, so build the tags from an Annex B stream (x265 with an AUD per access
    unit): a sequence header with an hvcC of the VPS/SPS/PPS, then one length-prefixed frame per access unit, in
    the de-facto legacy syntax (codec id 12) that SRS and ffmpeg 6+ use."""
    nals = [n for n in raw.split(b"\x00\x00\x01") if n]
    nals = [n.rstrip(b"\x00") for n in nals]     # the zero byte of the next 4-byte start code
    nals = [n for n in nals if n]
    params: dict[int, bytes] = {}
    units: list[list[bytes]] = []
    for nal in nals:
        kind = (nal[0] >> 1) & 0x3F
        if kind == 35:
            units.append([])
        elif kind in (32, 33, 34):
            params.setdefault(kind, nal)
        elif units:
            units[-1].append(nal)
    record = bytes(21) + b"\xff" + bytes((len(params),))
    for kind, nal in sorted(params.items()):
        record += bytes((0x80 | kind,)) + (1).to_bytes(2, "big") + len(nal).to_bytes(2, "big") + nal
    out = [(0, b"\x1c\x00\x00\x00\x00" + record)]
    for i, unit in enumerate(units):
        key = any(16 <= (n[0] >> 1) & 0x3F <= 21 for n in unit)
        body = b"".join(len(n).to_bytes(4, "big") + n for n in unit)
        out.append((i * 40, bytes(((1 if key else 2) << 4 | 12, 1, 0, 0, 0)) + body))
    return out


def hevc_test_payloads(raw_path: Path) -> list[tuple[int, bytes]]:
    """2 s of 25 fps HEVC (x265, an AUD per frame, no B-frames, a keyframe a second) as FLV video payloads; the
    test is skipped where this ffmpeg has no libx265."""
    made = subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-t", "2",
                           "-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                           "-x265-params", "log-level=none:aud=1:bframes=0:keyint=25", str(raw_path)],
                          capture_output=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"no libx265 in this ffmpeg: {made.stderr[-200:]!r}")
    return _hevc_flv_payloads(raw_path.read_bytes())


def test_hevc_read_back_by_ffprobe_and_decoded(tmp_path):
    payloads = hevc_test_payloads(tmp_path / "in.hevc")
    mux = TsMuxer()
    body = [mux.video(ts, p) for ts, p in payloads]
    ts_bytes = mux.tables() + b"".join(body)
    out = tmp_path / "out.ts"
    out.write_bytes(ts_bytes)
    probe = ffprobe_packets(out)
    assert [s["codec_name"] for s in probe["streams"]] == ["hevc"]
    dts = [round(float(p["dts_time"]) * 1000) for p in probe["packets"]]
    assert [d - dts[0] for d in dts] == [ts for ts, _ in payloads[1:]]
    proc = subprocess.run([FFMPEG, "-v", "error", "-i", str(out), "-f", "framecrc", "-"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line and not line.startswith("#")]) == 50
