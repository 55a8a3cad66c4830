"""An edge's upstream across a handover to a new process (the test hook, and a real upgrade): re-established, not
handed over, without the edge's players noticing.

The old edge process hands its source and its player (socket, session, position) to the new process, which
has no upstream session for it. The new process pulls the stream again at once, and Resync joins the
origin's answer (its GOP) onto the log the player is in: the player decodes on with no error, no repeated
frame and no hole in its timeline.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.test_upgrade import GAP_BOUND_S, GAP_GOAL_S, long_flv  # noqa: F401  (long_flv is a fixture)
from tests.e2e.upgrade_helpers import TimedPlayer, UpgradeServer, assert_every_frame_once, play_on_then_quit
from tests.helpers import (Server, assert_frames_match_timestamps, finish_player, publish_file, start_player,
                           stop_proc, wait_for)

pytestmark = pytest.mark.timeout(120)

FRAME_S = 0.04          # the test file's 25 fps


@pytest.mark.long   # make test runs the real path below (an upgrade), which shows the same promise
def test_edge_pull_is_re_established_after_a_handover_without_the_player_noticing(test_flv, tmp_path):
    path = str(tmp_path / "handover.sock")
    origin = Server().start()
    body = f"cluster {{ mode remote; origin 127.0.0.1:{origin.rtmp_port}; }}"
    old = Server(vhost_body=body, env={"NONSTOP_TEST_HANDOVER_TO": path}).start()
    new = Server(vhost_body=body, args=("--takeover", path)).start()
    publisher = publish_file(origin.rtmp_url(), test_flv)
    try:
        wait_for(lambda: "publish __defaultVhost__/live/livestream" in origin.log(), 15, what="publish")
        player = start_player(old.rtmp_url(), 8)
        wait_for(lambda: "edge change from 100 to state 101 (pull)." in old.log(), 15, what="the edge pull")
        time.sleep(3)   # mid-stream
        wait_for(lambda: os.path.exists(path), 10, what="the receiver's socket")
        old.signal(signal.SIGUSR2)
        wait_for(lambda: old.proc.poll() is not None, 15, what="the old process to exit")
        assert "handed over __defaultVhost__/live/livestream: 1 conns" in old.log(), old.log()
        wait_for(lambda: "re-establishing it" in new.log(), 5, what="the new process to pull again")
        result = finish_player(player, 40)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip() == "", f"decode errors after the handover: {result.stderr}"
        assert_frames_match_timestamps(result)
        pts = result.video_pts()
        assert pts == sorted(pts) and len(set(pts)) == len(pts), "a frame repeated"
        step = max(b - a for a, b in zip(pts, pts[1:]))
        print(f"player: {len(pts)} frames over {pts[-1] - pts[0]:.2f}s, largest step {step * 1000:.0f} ms; "
              f"{new.log().count('edge pull __defaultVhost__/live/livestream: playing from')} new upstream")
        assert step <= FRAME_S + 0.001, f"a hole in the video timeline: {step:.3f}s"
        joined = [ln.split("] ", 1)[1] for ln in new.log().splitlines() if "joined the upstream session" in ln]
        print("\n".join(joined))
        assert joined, new.log()
    finally:
        stop_proc(publisher)
        for server in (old, new, origin):
            server.stop()


def test_an_upgraded_edge_pulls_again_and_its_rtmp_and_flv_players_see_every_frame_once(long_flv):
    """The real path (SIGUSR2 in master mode): the old edge worker hands its source and players to the new one,
    which re-establishes the upstream pull; RTMP and HTTP-FLV players on the edge go on with no hole, no repeat."""
    # min_latency on, at both: the worst gap then is the upgrade's (a pull re-established), not a 350 ms merge.
    origin = Server(vhost_body="min_latency on;").start()
    body = f"min_latency on; cluster {{ mode remote; origin 127.0.0.1:{origin.rtmp_port}; }}"
    edge = UpgradeServer(vhost_body=body).start()
    publisher = publish_file(origin.rtmp_url(), long_flv, loop=False)
    players = []
    try:
        wait_for(lambda: "publish __defaultVhost__/live/livestream," in origin.log(), 15, what="publish")
        players = [TimedPlayer(edge.rtmp_url(), 30).start(), TimedPlayer(edge.flv_url(), 30).start()]
        wait_for(lambda: all(p.playing() for p in players), 20, what="the edge players to play")
        time.sleep(2)   # mid-stream
        took = edge.upgrade(1)
        upgrade = edge.summaries()["upgrade"]
        print(f"edge upgrade: {upgrade} (signal to done {took:.2f}s)")
        assert upgrade["state"] == "done" and upgrade["handed_over"] >= 2 and upgrade["failed"] == 0, upgrade
        wait_for(lambda: "re-establishing it" in edge.log() or "joined the upstream session" in edge.log(), 10,
                 what="the new worker to pull again")
        play_on_then_quit(players, 2)   # 2 s on the new worker's pull, then the check
        for player, what in zip(players, ("RTMP player", "HTTP-FLV player")):
            result = player.finish(40)
            print(f"{what}: {len(result.video_pts())} frames, worst gap {player.worst_gap() * 1000:.0f} ms "
                  f"(goal {GAP_GOAL_S * 1000:.0f} ms)")
            assert_every_frame_once(result, what=what)
            assert player.worst_gap() <= GAP_BOUND_S
    finally:
        for player in players:
            player.kill()
        stop_proc(publisher)
        edge.stop()
        origin.stop()
