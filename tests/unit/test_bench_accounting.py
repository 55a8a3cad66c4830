"""The load generator's accounting: percentiles, frame statistics, latency matching, the report, the options."""

from __future__ import annotations

import json
import os
import struct

import pytest

from nonstop.bench import report
from nonstop.bench.cli import UsageError, options_from_args
from nonstop.bench.context import Context
from nonstop.bench.loadgen import Options, make_schedule
from nonstop.bench.player import RtmpPlayerConnection, Viewer
from nonstop.bench.procs import sample_tree
from nonstop.bench.publisher import STREAM_SHIFT, latency_key, video_header_len
from nonstop.bench.stats import LATENCY_BUCKET_S, FrameStats, LatencyHistogram, percentile, summary
from nonstop.bench.target import TargetError, parse_target


# ----- percentiles ---------------------------------------------------------------------------------------

def test_percentile_is_nearest_rank():
    data = list(range(1, 101))
    assert percentile(data, 50) == 50
    assert percentile(data, 99) == 99
    assert percentile(data, 100) == 100
    assert percentile(data, 0) == 1
    assert percentile([7], 99) == 7
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2  # unsorted input


def test_summary_scales_and_rounds():
    s = summary([0.0012, 0.0034, 0.002], scale=1000)
    assert s == {"count": 3, "min": 1.2, "p50": 2.0, "p99": 3.4, "max": 3.4}
    assert summary([])["count"] == 0 and summary([])["p50"] is None


# ----- frame statistics ----------------------------------------------------------------------------------

def test_frames_before_the_window_are_not_counted():
    s = FrameStats(stall_s=1.0, hole_ms=50)
    s.on_video(0, 10.0)
    s.on_video(500, 15.0)  # a hole and a 5 s gap, but not measuring yet
    assert (s.frames, s.holes, s.stalls, s.max_gap) == (0, 0, 0, 0.0)


def test_stalls_holes_and_repeats():
    s = FrameStats(stall_s=1.0, hole_ms=50)
    s.start(100.0)
    s.on_video(0, 100.0)
    s.on_video(33, 100.033)      # normal step
    s.on_video(133, 100.1)       # hole: 100 ms > 50
    s.on_video(133, 100.2)       # repeat: step 0
    s.on_video(100, 100.3)       # repeat: backwards
    s.on_video(166, 101.8)       # stall: 1.5 s gap, and a hole of 66 ms
    assert s.frames == 6
    assert s.holes == 2
    assert s.repeats == 2
    assert s.stalls == 1
    assert s.max_gap == pytest.approx(1.5)
    s.finish(104.0)              # 2.2 s of silence before the window closed: a stall too
    assert s.stalls == 2
    assert s.max_gap == pytest.approx(2.2)


def test_a_gap_that_began_before_the_window_counts():
    s = FrameStats(stall_s=1.0, hole_ms=50)
    s.on_video(0, 10.0)
    s.start(10.5)
    s.on_video(33, 12.0)
    assert s.stalls == 1 and s.max_gap == pytest.approx(2.0)


def test_a_player_that_never_gets_a_frame_is_one_long_stall():
    s = FrameStats(stall_s=1.0, hole_ms=50)
    s.start(50.0)
    s.finish(70.0)
    assert s.stalls == 1 and s.max_gap == pytest.approx(20.0) and s.frames == 0


def test_a_new_connection_starts_a_new_timeline():
    s = FrameStats(stall_s=1.0, hole_ms=50)
    s.start(0.0)
    s.on_video(5000, 0.1)
    s.new_connection()
    s.on_video(0, 0.2)  # the GOP again, from 0: neither a repeat nor a hole
    s.on_video(33, 0.25)
    assert (s.holes, s.repeats, s.frames) == (0, 0, 3)


# ----- latency histogram ---------------------------------------------------------------------------------

def test_latency_histogram_percentiles_are_bucket_upper_edges():
    h = LatencyHistogram()
    assert h.percentile(50) is None and h.max() is None
    for ms in range(1, 101):
        h.add(ms / 1000 - LATENCY_BUCKET_S / 2)
    assert h.count == 100
    assert h.percentile(50) == pytest.approx(0.050)
    assert h.percentile(99) == pytest.approx(0.099)
    assert h.max() == pytest.approx(0.100)


def test_latency_histogram_overflow_and_negative_rounding():
    h = LatencyHistogram()
    h.add(-0.00001)
    h.add(12.5)
    h.add(30.0)
    assert h.count == 3
    assert h.percentile(1) == pytest.approx(LATENCY_BUCKET_S)
    assert h.percentile(100) == 30.0
    assert h.max() == 30.0


def test_latency_histograms_merge_across_processes_through_json():
    a, b, merged = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for v in (0.01, 0.02, 0.03):
        a.add(v)
    for v in (0.04, 11.0):
        b.add(v)
    for h in (a, b):
        merged.merge_dict(json.loads(json.dumps(h.to_dict())))
    assert merged.count == 5
    assert merged.percentile(50) == pytest.approx(0.0301, abs=LATENCY_BUCKET_S)
    assert merged.max() == 11.0


# ----- latency keys and matching --------------------------------------------------------------------------

AVC_FRAME = bytes([0x27, 0x01, 0, 0, 0]) + bytes(range(100))
AVC_KEYFRAME = bytes([0x17, 0x01, 0, 0, 0]) + bytes(range(1, 101))


def test_latency_key_ignores_the_video_header_and_includes_the_length():
    assert video_header_len(AVC_FRAME) == 5
    assert video_header_len(bytes([0x91, 0, 0, 0, 0])) == 8   # Enhanced RTMP CodedFrames: 8
    assert video_header_len(bytes([0x93, 0, 0, 0, 0])) == 5   # Enhanced RTMP CodedFramesX: 5
    assert video_header_len(bytes([0x22])) == 1               # a codec without packet type (H.263)
    # Same codec data behind a different composition time: the same key (servers may rewrite it).
    other_header = bytes([0x27, 0x01, 0, 0, 9]) + AVC_FRAME[5:]
    assert latency_key(len(AVC_FRAME), AVC_FRAME[:48]) == latency_key(len(other_header), other_header[:48])
    assert latency_key(len(AVC_FRAME), AVC_FRAME) != latency_key(len(AVC_FRAME) + 1, AVC_FRAME)
    assert latency_key(len(AVC_FRAME), AVC_FRAME) != latency_key(len(AVC_KEYFRAME), AVC_KEYFRAME)


def _player(measuring: bool = True):
    opts = Options(stall_threshold=1.0, hole_ms=50)
    ctx = Context(opts, loop=None)
    ctx.local_streams.add(0)
    ctx.measuring = measuring
    viewer = Viewer(ctx, 0, parse_target("rtmp://127.0.0.1/live/s"), 0)
    conn = RtmpPlayerConnection(viewer)
    conn.got_frame = True  # skip the first-frame path (it sets SO_RCVLOWAT on a real socket)
    conn.play_sent_at = 100.0
    return ctx, viewer, conn


def test_players_match_frames_to_publisher_send_times_by_payload_hash():
    ctx, viewer, conn = _player()
    base = 0 << STREAM_SHIFT
    ctx.sent_times[latency_key(len(AVC_FRAME), AVC_FRAME) | base] = 100.5
    ctx.sent_times[latency_key(len(AVC_KEYFRAME), AVC_KEYFRAME) | base] = 99.0  # before play: GOP cache
    seq_header = bytes([0x17, 0x00, 0, 0, 0, 1, 2, 3])
    unknown = bytes([0x27, 0x01, 0, 0, 0]) + b"x" * 60
    conn._videos([(0, len(seq_header), seq_header[:48]),
                  (10, len(AVC_KEYFRAME), AVC_KEYFRAME[:48]),
                  (43, len(AVC_FRAME), AVC_FRAME[:48]),
                  (76, len(unknown), unknown[:48])], now=100.75)
    assert ctx.latency.count == 1
    assert ctx.latency.percentile(50) == pytest.approx(0.25, abs=LATENCY_BUCKET_S)
    assert ctx.latency_unmatched == 1
    assert viewer.stats.frames == 0  # the window has not started for this viewer's stats


def test_no_latency_outside_the_window_or_for_remote_streams():
    ctx, viewer, conn = _player(measuring=False)
    ctx.sent_times[latency_key(len(AVC_FRAME), AVC_FRAME)] = 100.5
    conn._videos([(0, len(AVC_FRAME), AVC_FRAME[:48])], now=101.0)
    assert ctx.latency.count == 0
    remote = Viewer(ctx, 1, parse_target("rtmp://127.0.0.1/live/s"), 3)
    assert remote.latency_base is None


def test_a_connection_the_run_closed_while_it_was_opening_is_not_a_failure():
    ctx, viewer, conn = _player()
    viewer.on_closed(conn, "reset", was_playing=False)
    assert ctx.failed == {"reset": 1}
    ctx.stopping = True  # e.g. a reconnecting player that had just hung up when the window ended
    viewer.on_closed(conn, "reset", was_playing=False)
    assert ctx.failed == {"reset": 1}


# ----- the report ----------------------------------------------------------------------------------------

def _player_result(rate_kbps: float, window: float = 10.0, **extra) -> dict:
    out = {"stream": 0, "bytes": int(rate_kbps * 1000 / 8 * window), "ttff": 0.05, "max_gap": 0.3, "stalls": 0,
           "holes": 0, "repeats": 0, "frames": 300, "reconnects": 0, "reconnect_gaps": [],
           "reconnecting": False}
    out.update(extra)
    return out


def _process_result(players: list[dict], **extra) -> dict:
    latency = LatencyHistogram()
    for v in (0.1, 0.2, 0.3):
        latency.add(v)
    out = {"share": 0, "players": players, "playing_at_end": len(players),
           "connections": {"attempts": len(players) + 1, "ok": len(players), "failed": {"timeout": 1},
                           "dropped": 0, "hangups": 2},
           "latency": latency.to_dict(), "latency_unmatched": 4, "latency_players": len(players),
           "publishers": [{"index": 0, "url": "rtmp://x/live/s", "ok": True, "error": "",
                           "payload_bytes_window": 2500 * 10, "frames_sent": 300, "loops": 0,
                           "max_write_buffer": 0}],
           "churn": {"attempted": 10, "ok": 8, "failed": {"timeout": 1, "refused": 1}, "dropped": 0,
                     "connect_times": [0.001] * 8},
           "idle": None}
    out.update(extra)
    return out


def test_report_counts_starved_players_and_server_cost():
    opts = Options(target=parse_target("rtmp://127.0.0.1/live/s"), players=3, publishers=1, churn=2.0,
                   duration=10.0, hole_ms=50)
    schedule = {"ramp_start": 0.0, "window_start": 5.0, "window_end": 15.0}
    players = [_player_result(2.0, reconnect_gaps=[0.01], reconnects=1), _player_result(2.0),
               _player_result(1.0, stalls=2, holes=1, max_gap=1.5)]
    samples = {
        "baseline": {"server": {"pids": [1], "utime": 0.0, "stime": 0.0, "rss_kb": 10_000}},
        "window_start": {"bench_per_process": {1: 1.0}, "server": {"pids": [1], "utime": 1.0, "stime": 0.5,
                                                                    "rss_kb": 10_030}},
        "window_end": {"bench_per_process": {1: 1.5}, "server": {"pids": [1, 2], "utime": 2.0, "stime": 1.0,
                                                                  "rss_kb": 10_060}},
    }
    r = report.build(opts, None, [_process_result(players)], samples, schedule)
    json.dumps(r)  # plain data
    assert r["stream"]["kbps"] == 20.0  # 25,000 payload bytes in 10 s
    assert r["players"]["rate_kbps"] == {"min": 1.0, "median": 2.0, "max": 2.0}
    assert r["players"]["starved"] == 3  # all below 90% of 20 kb/s
    stalls = r["players"]["stalls"]
    assert (stalls["max_gap_ms"], stalls["threshold_ms"], stalls["count"], stalls["players"]) == (1500.0, 1000.0, 2, 1)
    assert r["players"]["timestamps"]["holes"] == 1
    assert r["connections"]["failed_by_kind"] == {"timeout": 1}
    assert r["reconnects"]["count"] == 1 and r["reconnects"]["gap_ms"]["max"] == 10.0
    assert r["latency_ms"]["samples"] == 3 and r["latency_ms"]["p50"] == pytest.approx(200.0, abs=0.2)
    assert r["latency_ms"]["unmatched"] == 4
    assert r["churn"]["unanswered"] == 1 and r["churn"]["refused"] == 1 and r["churn"]["failed"] == 2
    server = r["server"]
    delivered = sum(p["bytes"] for p in players)
    assert server["bytes_delivered"] == delivered
    assert server["cpu_s"] == 1.5 and server["cpu_pct_of_core"] == 15.0
    assert server["cpu_s_per_gb"] == pytest.approx(1.5 / (delivered / 1e9), rel=1e-3)
    assert server["rss_kb_per_connection"] == 15.0  # 60 KB grown over 3 players and 1 publisher
    assert r["bench"]["cpu_s"] == 0.5
    text = report.format_text(r)
    assert "starved" in text and "CPU-s/GB" in text and "churn" in text


def test_report_starved_uses_the_stream_rate_option_without_publishers():
    opts = Options(target=parse_target("http://127.0.0.1:8080/live/s.flv"), players=2, duration=10.0,
                   stream_kbps=2.0)
    schedule = {"ramp_start": 0.0, "window_start": 1.0, "window_end": 11.0}
    result = _process_result([_player_result(2.0), _player_result(1.7)], publishers=[], churn=None)
    r = report.build(opts, None, [result], {}, schedule)
    assert r["protocol"] == "http-flv"
    assert r["stream"] == {"kbps": 2.0, "source": "option", "file_kbps": None, "video_frames_in_file": None,
                           "ambiguous_frames_in_file": None}
    assert r["players"]["starved"] == 1
    assert r["server"] is None and r["churn"] is None


# ----- options, targets, schedule, /proc -------------------------------------------------------------------

def test_targets_and_their_per_stream_variants():
    t = parse_target("rtmp://127.0.0.1:1940/live/s?k=v")
    assert (t.host, t.port, t.app, t.stream) == ("127.0.0.1", 1940, "live", "s?k=v")
    assert t.tc_url == "rtmp://127.0.0.1:1940/live"
    assert t.for_stream(2, 5).stream == "s_2?k=v"
    assert t.for_stream(0, 1) is t
    h = parse_target("http://127.0.0.1:8080/live/s.flv")
    assert h.for_stream(1, 3).path == "/live/s_1.flv"
    assert parse_target("rtmp://h/a/b").port == 1935
    for bad in ("ftp://h/a/b", "rtmp:///a/b", "rtmp://h/a", "rtmp://h:99999/a/b"):
        with pytest.raises(TargetError):
            parse_target(bad)


def test_options_from_the_command_line():
    o = options_from_args(["rtmp://127.0.0.1:1935/live/s", "--players", "20", "--reconnecting", "2",
                           "--churn", "20", "--publishers", "1", "--file", "x.flv", "--server-pid", "7",
                           "--rcvlowat", "0", "--json"])
    assert o.players == 20 and o.reconnecting == 2 and o.churn == 20.0 and o.publishers == 1
    assert o.publish_target == o.target and o.churn_target == o.target
    assert o.server_pids == [7] and o.rcvlowat == 0 and o.json
    auto = options_from_args(["http://127.0.0.1:8080/live/s.flv", "--players", "1"])
    assert auto.rcvlowat == -1 and auto.publish_target is None


@pytest.mark.parametrize("argv", [
    [],
    ["rtmp://h/a/b"],                                                 # nothing to do
    ["--players", "3"],                                               # no URL
    ["rtmp://h/a/b", "--players", "1", "--reconnecting", "2"],
    ["rtmp://h/a/b", "--publishers", "1"],                            # no --file
    ["http://h/a.flv", "--publishers", "1", "--file", "x"],           # cannot publish over HTTP
    ["http://h/a.flv", "--idle", "3"],                                # idle needs RTMP
    ["rtmp://h/a/b", "--players", "1", "--rcvlowat", "lots"],
    ["rtmp://h/a/b", "--players", "1", "--duration", "0"],
    ["rtmp://h/a/b", "--players", "-1"],
    ["rtmp://h/a/b", "--players", "1", "--bogus"],
])
def test_bad_command_lines_are_usage_errors(argv):
    with pytest.raises(UsageError):
        options_from_args(argv)


def test_schedule_leaves_room_for_the_ramp_and_warmup():
    s = make_schedule(Options(players=100, idle=100, ramp=100.0, warmup=2.0, duration=20.0), 10.0)
    assert s == {"ramp_start": 10.0, "window_start": 14.0, "window_end": 34.0}


def test_sample_tree_reads_this_process():
    s = sample_tree([os.getpid()])
    assert os.getpid() in s.pids
    assert s.rss_kb > 1000 and s.cpu > 0
    assert sample_tree([2 ** 22 + 12345]).pids == []
