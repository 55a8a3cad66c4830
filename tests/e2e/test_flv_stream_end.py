"""HTTP-FLV players when the publisher leaves (issue 11, item 3): they wait `republish_window` for a republish
and go on with continuous timestamps; after it the body ends cleanly (the chunked terminator), and during a
graceful quit at once. Real clients: curl (exits 18 on a chunked body cut short) and ffmpeg."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass

import pytest

from tests.helpers import (FFMPEG, Server, finish_player, publish_file, start_player, stop_proc,
                           wait_for)

pytestmark = pytest.mark.timeout(120)


@dataclass
class WindowServer(Server):
    republish_window: int | None = None

    def config_text(self) -> str:
        text = super().config_text()
        if self.republish_window is not None:
            text = text.replace("mount [vhost]/[app]/[stream].flv;",
                                f"mount [vhost]/[app]/[stream].flv; republish_window {self.republish_window};")
        return text


def wait_flv_playing(server: Server, count: int = 1) -> None:
    wait_for(lambda: server.log().count("flv play __defaultVhost__/live/s ip=") >= count, 20, interval=0.1,
             what="the HTTP-FLV player")


def wait_published(server: Server, count: int = 1) -> None:
    wait_for(lambda: server.log().count("publish __defaultVhost__/live/s,") >= count, 20, interval=0.1,
             what="the publisher")


def curl(url: str) -> subprocess.Popen:
    return subprocess.Popen(["curl", "-sS", "--http1.1", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                             url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_players_end_cleanly_once_the_republish_window_passes(test_flv):
    window_ms = 1000
    with WindowServer(republish_window=window_ms) as server:
        publisher = publish_file(server.rtmp_url("s"), test_flv)
        wait_published(server)
        curl_proc = curl(server.flv_url("s"))
        ffmpeg_proc = subprocess.Popen([FFMPEG, "-v", "error", "-i", server.flv_url("s"), "-f", "framecrc", "-"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_flv_playing(server, 2)
            time.sleep(1.0)     # media flows for a while (the players' own progress is not observable here)
            stop_proc(publisher)
            left = time.monotonic()
            out, err = curl_proc.communicate(timeout=30)
            curl_took = time.monotonic() - left
            result = finish_player(ffmpeg_proc, 30)
            ffmpeg_took = time.monotonic() - left
            print(f"republish_window {window_ms} ms: curl ended {curl_took:.2f} s, ffmpeg {ffmpeg_took:.2f} s "
                  f"after the publisher left; curl: {out}")
            # Ends after the window plus at most one sweep (1 s): 2 s; asserted with a 3x margin.
            assert curl_proc.returncode == 0, f"curl: {curl_proc.returncode} {err}"
            assert out.startswith("200 ") and int(out.split()[1]) > 10_000
            assert window_ms / 1000 <= curl_took < 6.0
            assert result.returncode == 0 and len(result.video) > 10, result.stderr[-2000:]
            assert ffmpeg_took < 6.0
            assert "no publisher within republish_window=1000 ms" in server.log()
        finally:
            for proc in (curl_proc, ffmpeg_proc):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
            stop_proc(publisher)


def test_a_player_goes_on_across_a_republish_within_the_window(test_flv):
    with WindowServer() as server:      # the default window, 5000 ms
        publisher = publish_file(server.rtmp_url("s"), test_flv)
        wait_published(server)
        player = start_player(server.flv_url("s"), 8)
        try:
            wait_flv_playing(server)
            time.sleep(2.5)
            stop_proc(publisher)
            wait_for(lambda: "unpublish __defaultVhost__/live/s" in server.log(), 10, what="the unpublish")
            publisher = publish_file(server.rtmp_url("s"), test_flv)
            wait_published(server, 2)
            result = finish_player(player, 40)
        finally:
            stop_proc(publisher)
        pts = result.video_pts()
        assert result.returncode == 0, result.stderr[-2000:]
        gaps = [b - a for a, b in zip(pts, pts[1:])]
        print(f"{len(pts)} frames over {pts[-1] - pts[0]:.2f} s, largest step {max(gaps):.3f} s")
        assert pts[-1] - pts[0] >= 7.5, "the player got its 8 s, across the republish"
        assert all(g > 0 for g in gaps), "timestamps never run backwards"
        assert max(gaps) < 3.0, "the republish gap is the real time it took, no jump"
        assert "republish_window" not in server.log()


def test_graceful_quit_ends_players_of_streams_without_a_publisher_at_once(test_flv):
    # A long window: only the quit can end this player; grace_max_wait 0 means the drain waits for it.
    server = WindowServer(republish_window=600000, extra_global="grace_start_wait 100; grace_final_wait 100;")
    with server:
        publisher = publish_file(server.rtmp_url("s"), test_flv)
        wait_published(server)
        curl_proc = curl(server.flv_url("s"))
        try:
            wait_flv_playing(server)
            stop_proc(publisher)
            wait_for(lambda: "unpublish __defaultVhost__/live/s" in server.log(), 10, what="the unpublish")
            assert curl_proc.poll() is None, "the player waits for a republish"
            quit_at = time.monotonic()
            server.signal(signal.SIGQUIT)
            out, err = curl_proc.communicate(timeout=30)
            curl_took = time.monotonic() - quit_at
            server.proc.wait(30)
            exit_took = time.monotonic() - quit_at
            print(f"graceful quit: the waiting player ended {curl_took:.2f} s and the server exited {exit_took:.2f} s "
                  f"after SIGQUIT")
            assert curl_proc.returncode == 0, f"curl: {curl_proc.returncode} {err}"
            # One sweep (1 s) after the drain starts (grace_start_wait 100 ms): asserted with a 3x margin.
            assert curl_took < 3.5
            assert server.proc.returncode == 0 and exit_took < 5.0
        finally:
            if curl_proc.poll() is None:
                curl_proc.kill()
                curl_proc.wait(5)
            stop_proc(publisher)


def test_an_http_10_player_gets_a_close_delimited_body_that_ends_with_the_connection(test_flv):

    with WindowServer(republish_window=0) as server:
        publisher = publish_file(server.rtmp_url("s"), test_flv)
        wait_published(server)
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        try:
            sock.sendall(b"GET /live/s.flv HTTP/1.0\r\nHost: x\r\n\r\n")
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding" not in data.split(b"\r\n\r\n")[0]
            assert data.split(b"\r\n\r\n", 1)[1].startswith(b"FLV")
            stop_proc(publisher)
            while chunk := sock.recv(65536):    # republish_window 0: the body ends with the publisher
                data += chunk
        finally:
            sock.close()
            stop_proc(publisher)
        assert not data.endswith(b"0\r\n\r\n")


