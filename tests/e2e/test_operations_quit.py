"""Quitting as operators and orchestrators drive it: SIGQUIT's graceful drain with a live ffmpeg player,
grace_max_wait's bound, SIGTERM and force_grace_quit, `-s stop`, and the signals a drain ignores or refuses.

Every time bound is asserted with a margin of at least 3x over its goal, and the measured value is printed.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time

import pytest

from tests.e2e.ops_helpers import (OpsServer, connect_refused, http_status, measure, process_alive,
                                   rtmp_connect_ok, status_codes_until_eof)
from tests.helpers import (assert_frames_match_timestamps, finish_player, publish_file, start_player, stop_proc,
                           wait_for)
from tests.rtmp_client import RtmpTestClient

pytestmark = pytest.mark.timeout(120)

MARGIN = 3
# Goals. A signal acts at once (SRS polls once a second); a fast quit exits within 1 s.
SIGNAL_GOAL_S = 0.1
FAST_QUIT_GOAL_S = 1.0
# After the last client left (or the bound closed it), the drain notices within its 50 ms poll, and a process
# exits in about 0.1 s more.
DRAIN_NOTICE_GOAL_S = 0.15


def grace_server(start_ms: int, final_ms: int, max_ms: int = 0, extra: str = "") -> OpsServer:
    return OpsServer(extra_global=f"grace_start_wait {start_ms}; grace_final_wait {final_ms}; "
                                  f"grace_max_wait {max_ms}; {extra}")


def wait_published(server: OpsServer, stream: str = "livestream") -> None:
    wait_for(lambda: http_status(server.flv_url(stream), timeout=2) == 200, 15, interval=0.2,
             what=f"stream {stream} to be published")


def test_sigquit_drains_while_an_ffmpeg_player_keeps_playing(test_flv):
    start_ms, final_ms, play_s = 1500, 500, 6
    server = grace_server(start_ms, final_ms).start()
    publisher = publish_file(server.rtmp_url(), test_flv)
    player = None
    try:
        wait_published(server)
        player = start_player(server.rtmp_url(), play_s)
        server.wait_log("play __defaultVhost__/live/livestream, start=")
        time.sleep(1)  # mid-stream
        assert http_status(server.api("/readyz")) == 200
        quit_at = time.monotonic()
        server.signal(signal.SIGQUIT)

        # 1. Readiness turns false at once.
        to_503 = measure(lambda: http_status(server.api("/readyz")) == 503, 5, what="/readyz 503")
        print(f"/readyz answered 503 {to_503 * 1000:.0f} ms after SIGQUIT (goal {SIGNAL_GOAL_S * 1000:.0f} ms)")
        assert to_503 <= SIGNAL_GOAL_S * MARGIN
        # 2. During grace_start_wait, new connects still succeed (RTMP and HTTP-FLV).
        assert rtmp_connect_ok(server.rtmp_port), "an RTMP connect during grace_start_wait is served"
        assert http_status(server.flv_url(), timeout=2) == 200
        assert time.monotonic() - quit_at < start_ms / 1000, "those checks ran inside grace_start_wait"

        # 3. Then the RTMP and HTTP-FLV listeners close; the API stays.
        wait_for(lambda: connect_refused(server.rtmp_port), 10, interval=0.01, what="RTMP connects refused")
        refused_after = time.monotonic() - quit_at
        print(f"RTMP connects refused {refused_after:.3f}s after SIGQUIT (grace_start_wait {start_ms} ms)")
        assert start_ms / 1000 <= refused_after <= start_ms / 1000 + SIGNAL_GOAL_S * MARGIN
        assert connect_refused(server.http_port)
        assert http_status(server.api("/healthz")) == 200
        assert http_status(server.api("/readyz")) == 503

        # 4. The player plays on, to its end, with every frame.
        result = finish_player(player, 30)
        left_after = time.monotonic() - quit_at
        assert result.returncode == 0 and result.stderr.strip() == "", result.stderr[-2000:]
        assert_frames_match_timestamps(result)
        pts = result.video_pts()
        assert pts[-1] - pts[0] >= play_s - 0.5, "the player got all it asked for"
        assert left_after > refused_after + 1, "the player kept receiving frames after the listeners closed"
        assert re.search(r"wait for \d+ conns to quit", server.log()), server.log()

        # 5. Once the publisher leaves too, the process exits after grace_final_wait.
        stop_proc(publisher)
        last_left = time.monotonic()
        assert server.proc.wait(10) == 0
        exit_after = time.monotonic() - last_left
        goal = final_ms / 1000 + DRAIN_NOTICE_GOAL_S
        print(f"exited {exit_after:.3f}s after the last client left (grace_final_wait {final_ms} ms, "
              f"goal {goal:.2f}s)")
        assert final_ms / 1000 <= exit_after <= goal * MARGIN
        log = server.log()
        for line in ("sig=3, user start gracefully quit", "cleanup for quit signal fast=0, grace=1",
                     "nonstop gracefully quit"):
            assert line in log, line
    finally:
        stop_proc(publisher)
        if player is not None:
            stop_proc(player)
        server.stop()


def test_grace_max_wait_closes_the_rest_at_the_bound(test_flv):
    start_ms, max_ms, final_ms = 300, 1500, 200
    server = grace_server(start_ms, final_ms, max_ms).start()
    publisher = publish_file(server.rtmp_url("a"), test_flv)
    player = None
    try:
        wait_published(server, "a")
        player = start_player(server.rtmp_url("a"), 60)      # would play far past the bound
        server.wait_log("play __defaultVhost__/live/a, start=")
        player_left: list[float] = []
        watcher = threading.Thread(target=lambda: (player.wait(30), player_left.append(time.monotonic())))
        watcher.start()

        async def scenario():
            # A publisher and a player of our own on stream b, to read the status messages they get.
            pub = await RtmpTestClient().open(server.rtmp_port)
            assert (await pub.publish("b")).code == "NetStream.Publish.Start"
            viewer = await RtmpTestClient().open(server.rtmp_port)
            await viewer.play("b")
            quit_at = time.monotonic()
            server.signal(signal.SIGQUIT)
            (pub_codes, pub_eof), (viewer_codes, viewer_eof) = await asyncio.gather(
                status_codes_until_eof(pub, 20), status_codes_until_eof(viewer, 20))
            await pub.close()
            await viewer.close()
            return quit_at, pub_codes, pub_eof, viewer_codes, viewer_eof

        quit_at, pub_codes, pub_eof, viewer_codes, viewer_eof = asyncio.run(scenario())
        bound = (start_ms + max_ms) / 1000
        assert "NetStream.Unpublish.Success" in pub_codes, pub_codes
        assert viewer_codes and viewer_codes[-1] == "NetStream.Play.UnpublishNotify", viewer_codes
        for who, eof in (("publisher", pub_eof), ("player", viewer_eof)):
            closed_after = eof - quit_at
            print(f"{who} closed {closed_after:.3f}s after SIGQUIT (bound {bound:.2f}s)")
            assert bound <= closed_after <= bound + DRAIN_NOTICE_GOAL_S * MARGIN
        watcher.join(30)
        ffmpeg_after = player_left[0] - quit_at
        print(f"the ffmpeg player left {ffmpeg_after:.3f}s after SIGQUIT (bound {bound:.2f}s)")
        assert bound <= ffmpeg_after <= bound + DRAIN_NOTICE_GOAL_S * MARGIN + 1.0
        assert server.proc.wait(10) == 0
        exit_after = time.monotonic() - quit_at
        goal = bound + final_ms / 1000 + DRAIN_NOTICE_GOAL_S
        print(f"exited {exit_after:.3f}s after SIGQUIT (goal {goal:.2f}s)")
        assert exit_after <= bound + (final_ms / 1000 + DRAIN_NOTICE_GOAL_S) * MARGIN
        assert f"grace_max_wait={max_ms} ms reached" in server.log()
    finally:
        stop_proc(publisher)
        if player is not None:
            stop_proc(player)
        server.stop()


def test_sigterm_is_a_fast_quit_with_clients_connected(test_flv):
    server = OpsServer().start()
    publisher = publish_file(server.rtmp_url(), test_flv)
    player = None
    try:
        wait_published(server)
        player = start_player(server.rtmp_url(), 60)
        server.wait_log("play __defaultVhost__/live/livestream, start=")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.proc.wait(10)
        took = time.monotonic() - started
        print(f"SIGTERM: exited in {took:.3f}s with a publisher and a player (goal {FAST_QUIT_GOAL_S}s)")
        assert took <= FAST_QUIT_GOAL_S * MARGIN
        assert server.proc.returncode == 0
        assert "sig=15, user terminate program, fast quit" in server.log()
        finish_player(player, 10)      # the player's connection is gone: ffmpeg ends
    finally:
        stop_proc(publisher)
        if player is not None:
            stop_proc(player)
        server.stop()


def test_force_grace_quit_makes_sigterm_graceful_while_s_stop_stays_fast():
    server = grace_server(10000, 200, extra="force_grace_quit on;").start()
    try:
        server.signal(signal.SIGTERM)
        server.wait_log("force gracefully quit, signo=15")
        wait_for(lambda: http_status(server.api("/readyz")) == 503, 5, what="/readyz 503")
        time.sleep(0.5)
        assert server.proc.poll() is None, "a graceful quit waits grace_start_wait"
        assert rtmp_connect_ok(server.rtmp_port), "and keeps accepting meanwhile"
        started = time.monotonic()
        result = server.ctl("stop")
        assert result.returncode == 0, result.stderr
        server.proc.wait(10)
        took = time.monotonic() - started
        print(f"-s stop during a forced graceful quit: exited in {took:.3f}s (goal {FAST_QUIT_GOAL_S}s)")
        assert took <= FAST_QUIT_GOAL_S * MARGIN
        assert "sig=2, user terminate program, fast quit" in server.log()
    finally:
        server.stop()


def test_a_drain_ignores_a_second_quit_refuses_reload_and_upgrade_and_ends_at_a_fast_quit(test_flv):
    server = grace_server(200, 200).start()          # no grace_max_wait: the publisher keeps it draining
    publisher = publish_file(server.rtmp_url(), test_flv)
    try:
        wait_published(server)
        # SIGUSR2 never kills, before or during a drain: before, it upgrades (tests/e2e/test_upgrade.py).
        server.signal(signal.SIGUSR2)
        server.wait_log("upgrade done", timeout=30)
        assert server.proc.poll() is None and rtmp_connect_ok(server.rtmp_port)

        server.signal(signal.SIGQUIT)
        server.wait_log("closed the listeners rtmp")   # the QUIT was handled: a second one is not merged with it
        server.signal(signal.SIGQUIT)
        server.wait_log("graceful quit already in progress; ignored")
        server.signal(signal.SIGHUP)
        server.wait_log("reload refused: a graceful quit is in progress")
        server.signal(signal.SIGUSR2)
        server.wait_log("upgrade refused: a graceful quit is in progress")
        server.wait_log("wait for 1 conns to quit")
        assert server.proc.poll() is None and publisher.poll() is None, "still draining, publisher served"

        started = time.monotonic()
        server.signal(signal.SIGINT)
        server.proc.wait(10)
        took = time.monotonic() - started
        print(f"SIGINT during a drain: exited in {took:.3f}s (goal {FAST_QUIT_GOAL_S}s)")
        assert took <= FAST_QUIT_GOAL_S * MARGIN
        assert server.proc.returncode == 0
        assert "reload config success" not in server.log()
    finally:
        stop_proc(publisher)
        server.stop()


def test_master_process_off_runs_one_process_with_the_same_signals():
    server = grace_server(200, 200, extra="master_process off;").start()
    try:
        server.wait_log("serving as a single process")
        assert server.worker_pids() == [], "no worker: one process"
        server.signal(signal.SIGUSR2)
        server.wait_log("upgrade is not available with master_process off")
        server.signal(signal.SIGHUP)
        server.wait_log("reload config success")
        assert rtmp_connect_ok(server.rtmp_port)
        server.signal(signal.SIGQUIT)
        server.wait_log("sig=3, user start gracefully quit")
        assert server.proc.wait(10) == 0
        assert "nonstop gracefully quit" in server.log()
        assert not process_alive(server.proc.pid)
    finally:
        server.stop()
