"""HLS of what Enhanced RTMP brings (issue 13: "HEVC from ffmpeg 9 plays over HLS"): ffmpeg 9 (the imageio-ffmpeg
wheel, as in test_enhanced_rtmp.py) publishes HEVC + AAC over E-RTMP; ffmpeg plays the m3u8 (MPEG-TS segments, and
fMP4 with hls_use_fmp4) and decodes every frame, codec hevc, its timestamps stepping one frame at a time. A codec
HLS does not carry (AV1, Opus) is left out of the segments with one log line, never a traceback.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.test_enhanced_rtmp import ENCODERS, FPS, ffmpeg9  # noqa: F401 (ffmpeg9 is a fixture)
from tests.e2e.test_hls import m3u8_url, wait_segments
from tests.helpers import FFPROBE, Server, assert_frames_match_timestamps, parse_framecrc, stop_proc

pytestmark = pytest.mark.timeout(90)

TS_BODY = "hls { enabled on; hls_fragment 1; hls_window 6; hls_dispose 30; }"
FMP4_BODY = "hls { enabled on; hls_fragment 1; hls_window 6; hls_dispose 30; hls_use_fmp4 on; }"
SECONDS = 2


def publish(ffmpeg: str, url: str, video: str, audio: list[str], fourccs: str) -> subprocess.Popen:
    """A live lavfi picture and tone over Enhanced RTMP (the connect declares `fourccs`)."""
    args = [ffmpeg, "-v", "error", "-re", "-f", "lavfi", "-i", f"testsrc=size=160x120:rate={FPS}",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-map", "0:v", "-map", "1:a",
            *ENCODERS[video], "-pix_fmt", "yuv420p", *audio, "-rtmp_enhanced_codecs", fourccs, "-f", "flv", url]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


AAC = ["-c:a", "aac", "-b:a", "48k"]
OPUS = ["-c:a", "libopus", "-b:a", "32k"]


def probe_codecs(url: str) -> dict[str, str]:
    proc = subprocess.run([FFPROBE, "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "csv=p=0",
                           url], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split(",")[1]: line.split(",")[0] for line in proc.stdout.split() if "," in line}


@pytest.mark.parametrize("body, fourccs", [
    pytest.param(TS_BODY, "hvc1,mp4a", id="ts-e-rtmp-aac"), pytest.param(FMP4_BODY, "hvc1,mp4a", id="fmp4-e-rtmp-aac"),
    pytest.param(TS_BODY, "hvc1", id="ts-legacy-aac", marks=pytest.mark.long),
    # Legacy AAC beside E-RTMP HEVC: the same segments but for the audio path, which the E-RTMP tests cover: long.
    pytest.param(FMP4_BODY, "hvc1", id="fmp4-legacy-aac", marks=pytest.mark.long)])
def test_ffmpeg9_hevc_and_aac_play_over_hls_every_frame_one_step_apart(ffmpeg9, body, fourccs):  # noqa: F811
    started = time.monotonic()
    with Server(vhost_body=body) as server:
        publisher = publish(ffmpeg9, server.rtmp_url(), "hevc", AAC, fourccs)
        try:
            wait_segments(server, 3, timeout=30)
            assert publisher.poll() is None, publisher.stderr.read().decode()[-2000:]
            url = m3u8_url(server)
            assert probe_codecs(url) == {"video": "hevc", "audio": "aac"}
            proc = subprocess.run([ffmpeg9, "-v", "error", "-i", url, "-t", str(SECONDS), "-f", "framecrc", "-"],
                                  capture_output=True, text=True, timeout=40)
            result = parse_framecrc(proc.returncode, proc.stdout, proc.stderr)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert not proc.stderr.strip(), proc.stderr[-2000:]     # no decode error, no timestamp warning
            assert_frames_match_timestamps(result, min_frames=SECONDS * FPS - 1)
            pts = sorted(result.video_pts())
            steps = {round(b - a, 3) for a, b in zip(pts, pts[1:])}
            assert steps == {round(1 / FPS, 3)}, f"video timestamps do not step one frame at a time: {steps}"
            assert result.audio, "no audio decoded"
            print(f"HEVC over HLS ({'fMP4' if 'fmp4' in body else 'TS'}, {fourccs}): {len(pts)} frames "
                  f"{1000 / FPS:.0f} ms apart, {len(result.audio)} audio frames, "
                  f"{time.monotonic() - started:.1f}s")
        finally:
            stop_proc(publisher)
        assert "Traceback" not in server.log()


@pytest.mark.parametrize("video, audio, fourccs, left_out", [
    ("av1", AAC, "av01", "AV1"), ("hevc", OPUS, "hvc1,Opus", "Opus")], ids=["av1", "opus"])
def test_a_codec_hls_does_not_carry_is_left_out_with_one_log_line(ffmpeg9, video, audio, fourccs, left_out):  # noqa
    with Server(vhost_body=TS_BODY) as server:
        publisher = publish(ffmpeg9, server.rtmp_url(), video, audio, fourccs)
        try:
            wait_segments(server, 2, timeout=30)
            codecs = probe_codecs(m3u8_url(server))
            print(f"{left_out} published: HLS carries {codecs}")
            assert left_out.lower() not in codecs
        finally:
            stop_proc(publisher)
        log = server.log()
        assert "Traceback" not in log
        lines = [line for line in log.splitlines() if f"{left_out} " in line and "HLS" in line]
        assert len(lines) == 1, "\n".join(lines)
