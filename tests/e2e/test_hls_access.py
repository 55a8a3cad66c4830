"""HLS viewers go through access control end to end: a real server, ffmpeg publishing and playing, raw HTTP
requests (from 127.0.0.1 or 127.0.0.2), and the recording hook server of test_access.py. A new HLS session is
checked like a play (signed URL, security, refer, on_play); its segments and keys need the session; on_stop
once per session; a slow hook server delays no allowed viewer; an edge pulls nothing for a refused viewer."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from tests.e2e.hook_server import HookServer, hooks_block
from tests.e2e.test_access import SRS_KEYS, sign
from tests.e2e.test_hls import segments_of
from tests.helpers import (FFMPEG, Server, assert_frames_match_timestamps, parse_framecrc, publish_file, stop_proc,
                           wait_for)

pytestmark = pytest.mark.timeout(120)

HLS = "hls { enabled on; hls_fragment 1; hls_window 2; hls_dispose 30; }"
SECRET = "hls-access-secret-0123456789"


def hget(server: Server, target: str, headers: dict | None = None, source_ip: str = "127.0.0.1",
         timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET of `target` (path?query) on the HTTP server, from `source_ip`."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=timeout, source_address=(source_ip, 0))
    try:
        conn.request("GET", target, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ctx_of(master: bytes) -> str:
    return re.search(rb"hls_ctx=([0-9a-f]+)", master).group(1).decode()


def wait_playlist(server: Server, query: str, n: int = 2, timeout: float = 30) -> str:
    """The media playlist once it lists `n` segments, through a session opened with `query`."""
    found = {}
    wait_for(lambda: (found.__setitem__("master", hget(server, f"/live/cam.m3u8?{query}")) or
                      found["master"][0] == 200), timeout, interval=0.2, what="a first segment")
    ctx = ctx_of(found["master"][1])

    def enough():
        status, body = hget(server, f"/live/cam.m3u8?hls_ctx={ctx}")
        found["text"] = body.decode()
        return status == 200 and len(segments_of(found["text"])) >= n
    wait_for(enough, timeout, interval=0.2, what=f"{n} HLS segments")
    return found["text"]


def wait_publishing(server: Server) -> None:
    wait_for(lambda: "publish __defaultVhost__/live/cam," in server.log(), 15, what="the publish")


def test_signed_hls_url_required_plays_every_frame_with_a_token_and_nothing_without(test_flv):
    body = f'{HLS}\nsigned_url {{ enabled on; key k1 "{SECRET}"; publish off; play on; }}'
    with Server(vhost_body=body) as server:
        pub = publish_file(server.rtmp_url("cam"), test_flv)
        try:
            wait_publishing(server)
            url = f"http://127.0.0.1:{server.http_port}/live/cam.m3u8"
            signed = sign(server, url)
            token = signed.split("nstoken=")[1]
            playlist = wait_playlist(server, f"nstoken={token}")
            seg_uri = segments_of(playlist)[0][1]
            assert "hls_ctx=" in seg_uri
            seg_path = "/live/" + seg_uri.split("?")[0]
            assert hget(server, "/live/" + seg_uri)[0] == 200
            # Refused: no token, an expired one, a forged one, another stream's; a guessed segment; a made-up
            # hls_ctx on the playlist or on a segment.
            expired = sign(server, url, "--expires", str(int(time.time()) - 10)).split("nstoken=")[1]
            forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
            other = sign(server, url.replace("cam.m3u8", "other.m3u8")).split("nstoken=")[1]
            for target in ("/live/cam.m3u8", f"/live/cam.m3u8?nstoken={expired}", f"/live/cam.m3u8?nstoken={forged}",
                           f"/live/cam.m3u8?nstoken={other}", "/live/cam.m3u8?hls_ctx=0badc0de", seg_path,
                           f"{seg_path}?hls_ctx=0badc0de", f"{seg_path}?nstoken={token}"):
                assert hget(server, target)[0] == 403, target
            log = server.log()
            assert "hls play refused for 127.0.0.1: signed_url: no nstoken in the URL" in log
            assert "signed_url: token expired" in log and "bad signature" in log
            assert "no allowed HLS session" in log
            # The whole signed session plays with ffmpeg, every frame.
            proc = subprocess.run([FFMPEG, "-v", "error", "-i", signed, "-t", "3", "-f", "framecrc", "-"],
                                  capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr[-2000:]
            result = parse_framecrc(proc.returncode, proc.stdout, proc.stderr)
            assert_frames_match_timestamps(result, min_frames=60)
            print(f"signed HLS: ffmpeg decoded {len(result.video)} video and {len(result.audio)} audio frames")
        finally:
            stop_proc(pub)


def test_security_by_cidr_and_refer_refuse_a_new_hls_session(test_flv):
    body = (f"{HLS}\nsecurity {{ enabled on; allow publish all; deny play 127.0.0.2/32; allow play all; }}\n"
            "refer { enabled on; play example.com; }")
    with Server(vhost_body=body) as server:
        pub = publish_file(server.rtmp_url("cam"), test_flv)
        try:
            wait_publishing(server)
            page = {"Referer": "https://www.example.com/watch"}
            wait_for(lambda: hget(server, "/live/cam.m3u8", page)[0] == 200, 30, interval=0.2, what="the playlist")
            assert hget(server, "/live/cam.m3u8", page, source_ip="127.0.0.2")[0] == 403
            assert hget(server, "/live/cam.m3u8")[0] == 403
            assert hget(server, "/live/cam.m3u8", {"Referer": "https://example.com.evil.net/"})[0] == 403
            log = server.log()
            assert "hls play refused for 127.0.0.2: security: 127.0.0.2 denied by 'deny play 127.0.0.2/32'" in log
            assert "refer: page URL '' matches no refer.play domain ['example.com']" in log
        finally:
            stop_proc(pub)


def test_hooks_on_play_once_per_session_on_stop_at_expiry_and_kick_and_a_slow_hook_delays_no_viewer(test_flv):
    hooks = HookServer().start()
    body = f"{HLS}\n{hooks_block(hooks, timeout_ms=5000, events=('on_play', 'on_stop'))}"
    quick_quit = "grace_start_wait 0; grace_final_wait 0; grace_max_wait 300;"
    try:
        with Server(vhost_body=body, extra_global=quick_quit) as server:
            pub = publish_file(server.rtmp_url("cam"), test_flv)
            try:
                wait_publishing(server)
                page = {"Referer": "http://player.example/page.html"}
                wait_for(lambda: hget(server, "/live/cam.m3u8?a=1", page)[0] == 200, 30, interval=0.2,
                         what="a first session")
                status, master = hget(server, "/live/cam.m3u8?a=1", page)
                ctx = ctx_of(master)
                mine = hooks.wait("on_play", client_id=ctx)
                assert set(mine[0]) == set(SRS_KEYS["on_play"].split()), sorted(mine[0])
                assert {k: mine[0][k] for k in ("ip", "vhost", "app", "stream", "param", "pageUrl")} == {
                    "ip": "127.0.0.1", "vhost": "__defaultVhost__", "app": "live", "stream": "cam",
                    "param": "?a=1", "pageUrl": "http://player.example/page.html"}
                for _ in range(3):
                    status, playlist = hget(server, f"/live/cam.m3u8?hls_ctx={ctx}")
                    assert status == 200
                    assert hget(server, "/live/" + segments_of(playlist.decode())[-1][1])[0] == 200
                assert len(hooks.bodies("on_play", client_id=ctx)) == 1, "asked again for a known session"
                # A slow hook server (2 s): a new viewer waits for it; a viewer of an allowed session does not.
                hooks.delay_s = 2.0
                slow: dict = {}

                def new_viewer():
                    started = time.monotonic()
                    slow["status"], slow["body"] = hget(server, "/live/cam.m3u8")
                    slow["s"] = time.monotonic() - started
                asker = threading.Thread(target=new_viewer)
                asker.start()
                wait_for(lambda: hooks.in_flight == 1, 5, what="the slow question in flight")
                worst = 0.0
                for _ in range(5):
                    started = time.monotonic()
                    status, playlist = hget(server, f"/live/cam.m3u8?hls_ctx={ctx}")
                    assert status == 200
                    assert hget(server, "/live/" + segments_of(playlist.decode())[-1][1])[0] == 200
                    worst = max(worst, time.monotonic() - started)
                asker.join(10)
                hooks.delay_s = 0.0
                print(f"allowed viewer's playlist+segment while a 2 s hook is asked: worst {worst * 1000:.0f} ms; "
                      f"the new viewer's answer: {slow['s']:.2f} s")
                assert slow["status"] == 200 and slow["s"] >= 1.9
                assert worst < 2.0 / 3, f"an allowed viewer waited {worst:.2f}s for another's hook"
                slow_ctx = ctx_of(slow["body"])
                # A refusing hook: 403, and no session.
                hooks.answer_allow = '{"code":1}'
                assert hget(server, "/live/cam.m3u8")[0] == 403
                hooks.answer_allow = '{"code":0}'
                assert "hls play refused for 127.0.0.1: http hook on_play" in server.log()
                # A kick: on_stop at once, and the session's requests end.
                status, master = hget(server, "/live/cam.m3u8")
                kicked = ctx_of(master)
                request = urllib.request.Request(f"http://127.0.0.1:{server.api_port}/api/v1/clients/{kicked}",
                                                 method="DELETE")
                with urllib.request.urlopen(request, timeout=5) as r:
                    assert json.load(r)["code"] == 0
                hooks.wait("on_stop", client_id=kicked, timeout=3)
                assert hget(server, f"/live/cam.m3u8?hls_ctx={kicked}")[0] == 404
                # Expiry: 2 * hls_window (4 s) after a session's last request, one on_stop each.
                left = time.monotonic()
                hooks.wait("on_stop", client_id=ctx, timeout=15)
                hooks.wait("on_stop", client_id=slow_ctx, timeout=15)
                print(f"on_stop at expiry {time.monotonic() - left:.1f} s after the last request (2 * hls_window 4 s)")
                time.sleep(1.5)     # a second on_stop would come at the next sweeps
                for session in (ctx, slow_ctx, kicked):
                    assert len(hooks.bodies("on_stop", client_id=session)) == 1, session
                    assert len(hooks.bodies("on_play", client_id=session)) == 1, session
                # A graceful quit: a live session's on_stop is sent before the worker exits.
                status, master = hget(server, "/live/cam.m3u8")
                last = ctx_of(master)
                server.signal(signal.SIGQUIT)
                server.proc.wait(15)
                assert len(hooks.bodies("on_stop", client_id=last)) == 1
            finally:
                stop_proc(pub)
    finally:
        hooks.stop()


def test_an_edge_with_signed_urls_pulls_nothing_for_made_up_names_without_a_token():
    body = (f"cluster {{ mode remote; origin 127.0.0.1:1; }}\n{HLS}\n"
            f'signed_url {{ enabled on; key k1 "{SECRET}"; publish off; play on; }}')
    with Server(vhost_body=body) as server:
        started = time.monotonic()
        statuses = [hget(server, f"/live/made-up-{i}.m3u8")[0] for i in range(50)]
        elapsed = time.monotonic() - started
        print(f"50 made-up playlists without a token: {elapsed * 1000:.0f} ms")
        assert statuses == [403] * 50
        with urllib.request.urlopen(f"http://127.0.0.1:{server.api_port}/api/v1/streams", timeout=5) as r:
            assert json.load(r)["streams"] == []
        assert "edge pull" not in server.log()
        # The same request with a token starts the pull (so the check above would see one).
        signed = sign(server, f"http://127.0.0.1:{server.http_port}/live/real.m3u8")
        def held_viewer():
            try:
                hget(server, signed.split(str(server.http_port), 1)[1])
            except OSError:
                pass        # held for a first segment that never comes: the server stops first
        threading.Thread(target=held_viewer, daemon=True).start()
        wait_for(lambda: "edge pull __defaultVhost__/live/real: asked for by an HLS viewer" in server.log(), 5,
                 what="the pull of a signed request")


def test_an_upgrade_moves_a_session_with_its_verdict_one_on_play_and_one_on_stop(test_flv):
    """The verdict travels with the session (transfer.py, HlsSessions.snapshot_for): the new worker asks the hook
    server nothing for it, lists the same client, and sends its one on_stop at expiry; the old worker, which
    forgot what moved, sends none when it exits."""
    from tests.e2e.upgrade_helpers import UpgradeServer
    hooks = HookServer().start()
    server = UpgradeServer(vhost_body=f"{HLS}\n{hooks_block(hooks, events=('on_play', 'on_stop'))}").start()
    pub = publish_file(server.rtmp_url("cam"), test_flv)
    try:
        wait_publishing(server)
        wait_for(lambda: hget(server, "/live/cam.m3u8")[0] == 200, 30, interval=0.2, what="a first session")
        status, master = hget(server, "/live/cam.m3u8")
        ctx = ctx_of(master)
        hooks.wait("on_play", client_id=ctx)
        old = server.live_worker_pids()
        server.upgrade(1)
        status, playlist = hget(server, f"/live/cam.m3u8?hls_ctx={ctx}")
        assert status == 200 and hget(server, "/live/" + segments_of(playlist.decode())[-1][1])[0] == 200
        left = time.monotonic()     # the session's last request
        with urllib.request.urlopen(f"http://127.0.0.1:{server.api_port}/api/v1/clients/{ctx}", timeout=5) as r:
            assert json.load(r)["client"]["id"] == ctx, "the same client, listed by the new worker"
        wait_for(lambda: not any(pid in server.live_worker_pids() for pid in old), 15, what="the old worker to exit")
        hooks.wait("on_stop", client_id=ctx, timeout=15)
        took = time.monotonic() - left
        print(f"on_stop {took:.1f} s after the last request")
        # At expiry (2 * hls_window, 4 s), from the new worker: not at the old worker's exit.
        assert took > 3.5, "on_stop came before the session expired: the old worker ended it when it exited"
        time.sleep(1.5)     # a second on_stop would come at the next sweeps
        assert len(hooks.bodies("on_play", client_id=ctx)) == 1, "the new worker asked again"
        assert len(hooks.bodies("on_stop", client_id=ctx)) == 1, hooks.bodies("on_stop", client_id=ctx)
    finally:
        stop_proc(pub)
        server.stop()
        hooks.stop()
