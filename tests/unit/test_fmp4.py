"""The fMP4 muxer: an init segment and fragments that ffprobe reads back with every frame's timestamps, and that
FFmpeg decodes without an error."""

from __future__ import annotations

import json
import struct
import subprocess

from hypothesis import given, settings, strategies as st

from nonstop.protocol import flv
from nonstop.protocol.fmp4 import Fmp4Muxer
from tests.unit.test_mpegts import AAC_SH, AVC_SH, _make_flv

FFMPEG, FFPROBE = "ffmpeg", "ffprobe"


def boxes(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        size = struct.unpack(">I", data[pos:pos + 4])[0]
        assert size >= 8 and pos + size <= len(data)
        out.append(data[pos + 4:pos + 8])
        pos += size
    return out


def mux_file(flv_bytes: bytes, fragment_ms: int = 1000) -> tuple[bytes, list]:
    mux = Fmp4Muxer()
    frames, pending, fragments = [], [], []
    start = None
    for tag in flv.read_file_tags(flv_bytes):
        if tag.tag_type not in (flv.TAG_VIDEO, flv.TAG_AUDIO):
            continue
        sample = (mux.video if tag.tag_type == flv.TAG_VIDEO else mux.audio)(tag.timestamp, tag.payload)
        if sample is None:
            continue
        if sample.track == 1 and sample.sync and pending and start is not None \
                and tag.timestamp - start >= fragment_ms:
            fragments.append(mux.fragment(pending, tag.timestamp))
            pending = []
        if not pending:
            start = tag.timestamp
        pending.append(sample)
        frames.append(("video" if sample.track == 1 else "audio", sample.dts, sample.dts + sample.cts))
    fragments.append(mux.fragment(pending, frames[-1][1] + 40))
    return mux.init_segment() + b"".join(fragments), frames


def test_init_segment_and_fragment_structure():
    mux = Fmp4Muxer()
    mux.video(0, AVC_SH)
    mux.audio(0, AAC_SH)
    init = mux.init_segment()
    assert boxes(init) == [b"ftyp", b"moov"]
    assert b"avcC" in init and b"esds" in init and init.count(b"trex") == 2
    nal = b"\x65" + bytes(50)
    sample = mux.video(0, b"\x17\x01\x00\x00\x00" + len(nal).to_bytes(4, "big") + nal)
    frag = mux.fragment([sample], 40)
    assert boxes(frag) == [b"moof", b"mdat"] and frag.endswith(nal)


def test_h264_aac_fragments_read_back_by_ffprobe_and_decode(tmp_path):
    data = _make_flv(tmp_path / "in.flv", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25",
                     "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "3",
                     "-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", "25", "-pix_fmt", "yuv420p",
                     "-c:a", "aac", "-b:a", "64k")
    out, frames = mux_file(data)
    path = tmp_path / "out.mp4"
    path.write_bytes(out)
    proc = subprocess.run([FFPROBE, "-v", "error", "-print_format", "json", "-show_packets", "-show_streams",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    probe = json.loads(proc.stdout)
    kinds = {s["index"]: s["codec_type"] for s in probe["streams"]}
    assert sorted(s["codec_name"] for s in probe["streams"]) == ["aac", "h264"]
    for kind in ("video", "audio"):
        want = [(d, p) for k, d, p in frames if k == kind]
        have = [(round(float(p["dts_time"]) * 1000), round(float(p["pts_time"]) * 1000))
                for p in probe["packets"] if kinds[p["stream_index"]] == kind]
        if kind == "audio":
            # FLV stamps AAC frames in whole ms; the fragments place them 1024 samples apart exactly, so each is
            # within a ms of its FLV timestamp.
            assert len(have) == len(want)
            assert all(abs(a - b) <= 1 and abs(c - d) <= 1 for (a, c), (b, d) in zip(have, want)), \
                [(a, b) for a, b in zip(want, have) if a != b][:5]
        else:
            assert have == want, f"{kind}: {[(a, b) for a, b in zip(want, have) if a != b][:5]}"
    audio = [p for p in probe["packets"] if kinds[p["stream_index"]] == "audio"]
    # one run of 1024-sample frames across the fragments: no overlap, no hole where a fragment begins
    assert [int(p["dts"]) for p in audio] == [int(audio[0]["dts"]) + 1024 * i for i in range(len(audio))]
    proc = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2 ** 31), st.booleans())
def test_any_payload_gives_a_sample_or_none_and_whole_boxes(payload, timestamp, audio):
    mux = Fmp4Muxer()
    mux.video(0, AVC_SH)
    mux.audio(0, AAC_SH)
    try:
        sample = mux.audio(timestamp, payload) if audio else mux.video(timestamp, payload)
    except ValueError:      # TsError: a broken AudioSpecificConfig
        return
    if sample is not None:
        frag = mux.fragment([sample], timestamp + 40)
        assert boxes(frag) == [b"moof", b"mdat"]
    assert boxes(mux.init_segment())[0] == b"ftyp"


def test_aac_frames_follow_each_other_exactly_and_a_real_gap_starts_a_new_run():
    """FLV's ms timestamps (0, 23, 46, 70, ...) become one run of 1024-sample frames at 44.1 kHz; a frame more
    than half a frame away from where the run expects it (a lost frame, a jump) starts a new run there."""
    mux = Fmp4Muxer()
    mux.audio(0, AAC_SH)
    aac = b"\xaf\x01" + b"\x21" * 10
    stamps = [i * 1024 * 1000 // 44100 for i in range(6)] + [1000, 1023]
    samples = [mux.audio(ts, aac) for ts in stamps]
    assert [s.ticks for s in samples] == [1024 * i for i in range(6)] + [44100, 44100 + 1024]
    frag = mux.fragment(samples, 1100)
    trun = frag[frag.index(b"trun") - 4:]
    count = struct.unpack(">I", trun[12:16])[0]
    durations = [struct.unpack(">I", trun[20 + 16 * i:24 + 16 * i])[0] for i in range(count)]
    assert durations == [1024] * 5 + [44100 - 5 * 1024, 1024, 1024]
    tfdt = frag[frag.index(b"tfdt") - 4:]
    assert struct.unpack(">Q", tfdt[12:20])[0] == 0
