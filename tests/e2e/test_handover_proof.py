"""The proof the upgrade builds on: a *playing* RTMP connection moves to another process mid-stream.

Process A serves an ffmpeg publisher and an ffmpeg player. Process B waits on a UNIX socket. On SIGUSR2, A
quiesces the player's writer, and passes the sockets (SCM_RIGHTS) with the session snapshots, the source and
the player's position to B, then exits. The player must keep decoding with no error and no gap, and the
publisher must keep publishing: nobody saw a FIN or an RST.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers import (Server, assert_frames_match_timestamps, finish_player, publish_file, start_player,
                           stop_proc, wait_for)

pytestmark = pytest.mark.timeout(120)


def test_playing_rtmp_connection_moves_to_another_process_without_a_gap(test_flv, tmp_path):
    path = str(tmp_path / "handover.sock")
    old = Server(env={"NONSTOP_TEST_HANDOVER_TO": path}).start()
    new = Server(args=("--takeover", path)).start()
    publisher = publish_file(old.rtmp_url(), test_flv)
    try:
        wait_for(lambda: "publish __defaultVhost__/live/livestream" in old.log(), 15, what="publish")
        player = start_player(old.rtmp_url(), 8)
        wait_for(lambda: "play __defaultVhost__/live/livestream" in old.log(), 15, what="play")
        time.sleep(3)  # mid-stream
        wait_for(lambda: os.path.exists(path), 10, what="the receiver's socket")
        started = time.monotonic()
        old.signal(signal.SIGUSR2)
        wait_for(lambda: old.proc.poll() is not None, 15, what="the old process to exit")
        print(f"old process handed over and exited in {time.monotonic() - started:.3f}s")
        assert "handed over __defaultVhost__/live/livestream: 2 conns" in old.log(), old.log()
        assert new.log().count("taken over") == 2, new.log()
        result = finish_player(player, 40)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", f"decode errors after the handover: {result.stderr}"
        assert_frames_match_timestamps(result)
        pts = result.video_pts()
        assert pts == sorted(pts) and len(set(pts)) == len(pts), "no frame repeated"
        steps = [b - a for a, b in zip(pts, pts[1:])]
        assert max(steps) <= 0.041, f"a hole in the video timeline: {max(steps):.3f}s"
        assert pts[-1] - pts[0] >= 7.5, "the player got the whole 8 s"
        assert publisher.poll() is None, "the publisher kept its connection"
    finally:
        stop_proc(publisher)
        old.stop()
        new.stop()
