"""Access control for HLS viewers (gate.py's HLS path, hls_http.py): a real Worker with an access-controlled
vhost, stand-in connections and a stand-in hook client whose answers the test gives. A new session is checked
like a play, once; its verdict lives in the session; segments, parts and keys need an allowed session; an
unknown hls_ctx is no bearer; on_stop once at expiry, kick or quit; an edge checks before it pulls."""

from __future__ import annotations

import asyncio
import time

from nonstop.access import signed
from nonstop.config import load_text
from nonstop.server import hls_http
from nonstop.server.worker import Worker
from tests.unit.test_hls_edge import feed_one_segment
from tests.unit.test_hls_http import FakeConn

WINDOW_S = 3
SECRET = "unit-secret-long-enough"


class Conn(FakeConn):
    def __init__(self, worker, headers=None, cid="conn1"):
        super().__init__(worker, headers)
        self.cid = cid
        self.refused = None

    def refuse_access(self, action, request, reason):
        self.refused = reason
        self.sent.append(b"HTTP/1.1 403 Forbidden\r\nX: y\r\n\r\n403 Forbidden\n")
        self.closed = True

    def close(self, reason):
        self.closed = True


class FakeHooks:
    """The hook client: on_play waits for the test's answer; notifications are recorded."""

    def __init__(self):
        self.asked: list[dict] = []
        self.told: list[dict] = []
        self.answers: asyncio.Queue | None = None
        self.calls_total = self.refused_total = self.in_flight = 0
        self.worst_ms = 0.0

    async def post_all(self, cid, action, urls, data, timeout, vhost="", bound=256):
        self.asked.append(data)
        if self.answers is None:
            return None
        return await self.answers.get()

    async def post(self, url, data, timeout, vhost="", bound=256):
        self.told.append(data)
        return None

    async def close(self):
        pass


def worker_for(access: str, hls: str = "", edge: bool = False) -> Worker:
    cluster = "cluster { mode remote; origin 127.0.0.1:1; retry_min 60000; retry_max 60000; }" if edge else ""
    config = load_text(f"""
        listen 19350;
        vhost __defaultVhost__ {{
            {cluster}
            hls {{ enabled on; hls_fragment 1; hls_window {WINDOW_S}; {hls} }}
            {access}
        }}
        """)
    worker = Worker(config)
    worker.access.hooks = FakeHooks()
    return worker


def with_stream(worker: Worker, stream: str = "s"):
    vhost = worker.config.vhosts["__defaultVhost__"]
    source = worker.fetch_source(vhost, "live", stream, time.monotonic())
    feed_one_segment(source)
    return source.hls


def ask(worker, path, query="", headers=None, cid="conn1") -> Conn:
    conn = Conn(worker, headers, cid)
    assert hls_http.serve(conn, "GET", path, query)
    return conn


def token(stream="s", ip="", expires=None) -> str:
    return signed.make_token("k1", SECRET, "play", "__defaultVhost__", "live", stream,
                             expires or int(time.time()) + 3600, ip)


def status(conn) -> int:
    return conn.head_and_body()[0]


def ctx_of(conn) -> str:
    body = conn.head_and_body()[2].decode()
    return body.split("hls_ctx=")[1].split("&")[0].split("\n")[0]


SIGNED = f'signed_url {{ enabled on; key k1 "{SECRET}"; publish off; play on; }}'
HOOKS = "http_hooks { enabled on; on_play http://h/play; on_stop http://h/stop; }"


def test_signed_urls_gate_the_session_and_every_segment_and_key():
    async def scenario():
        worker = worker_for(SIGNED, hls="hls_keys on; hls_fragments_per_key 5;")
        seg = with_stream(worker)
        seg_name = next(n for n in seg.playlist.decode().split("\n") if n and not n.startswith("#"))
        key_line = next(n for n in seg.playlist.decode().split("\n") if n.startswith("#EXT-X-KEY"))
        key_name = key_line.split('URI="')[1].split('"')[0]
        # No token, a forged one, an expired one: 403, no session.
        for query in ("", f"nstoken={token()[:-2]}AA", f"nstoken={token(expires=int(time.time()) - 5)}",
                      f"nstoken={token(stream='other')}"):
            conn = ask(worker, "/live/s.m3u8", query)
            assert status(conn) == 403 and conn.refused, query
        assert not worker.hls_sessions.sessions
        # A guessed segment or key, with no session, a made-up hls_ctx, or a token alone: 403.
        for name in (seg_name, key_name):
            for query in ("", "hls_ctx=abcd1234", f"nstoken={token()}"):
                assert status(ask(worker, "/live/" + name, query)) == 403, (name, query)
        # An unknown hls_ctx on the playlist is checked like a new session (no bearer).
        assert status(ask(worker, "/live/s.m3u8", "hls_ctx=abcd1234")) == 403
        assert not worker.hls_sessions.sessions
        # A valid token: a session; its playlist's every URI (segments and key) carries it; they are served.
        master = ask(worker, "/live/s.m3u8", f"nstoken={token()}")
        assert status(master) == 200
        ctx = ctx_of(master)
        media = ask(worker, "/live/s.m3u8", f"hls_ctx={ctx}")
        body = media.head_and_body()[2].decode()
        assert status(media) == 200 and f'{key_name}?hls_ctx={ctx}"' in body and f"{seg_name}?hls_ctx={ctx}" in body
        assert status(ask(worker, "/live/" + seg_name, f"hls_ctx={ctx}")) == 200
        key = ask(worker, "/live/" + key_name, f"hls_ctx={ctx}")
        assert status(key) == 200 and len(key.head_and_body()[2]) == 16
        # A session is no pass to another stream.
        with_stream(worker, "t")
        assert status(ask(worker, "/live/t.m3u8", f"hls_ctx={ctx}")) == 403
        t_seg = next(n for n in worker.hls_index.get("live/t.m3u8").playlist.decode().split("\n")
                     if n and not n.startswith("#"))
        assert status(ask(worker, "/live/" + t_seg, f"hls_ctx={ctx}")) == 403
        assert worker.access.refused_total >= 13
    asyncio.run(scenario())


def test_hooks_ask_once_per_session_with_srs_body_and_on_stop_once_at_expiry_and_kick():
    async def scenario():
        worker = worker_for(HOOKS)
        hooks = worker.access.hooks
        hooks.answers = asyncio.Queue()
        with_stream(worker)
        held = ask(worker, "/live/s.m3u8", "a=1", headers={"referer": "http://page.example/x"})
        await asyncio.sleep(0.01)
        assert not held.sent and len(hooks.asked) == 1, "answered before the hook"
        # Another viewer's request for an allowed session is not delayed by the question in flight.
        body = hooks.asked[0]
        assert {k: body[k] for k in ("action", "ip", "vhost", "app", "stream", "param", "pageUrl")} == {
            "action": "on_play", "ip": "192.0.2.1", "vhost": "__defaultVhost__", "app": "live", "stream": "s",
            "param": "?a=1", "pageUrl": "http://page.example/x"}
        await hooks.answers.put(None)
        for _ in range(100):
            if held.sent:
                break
            await asyncio.sleep(0.01)
        assert status(held) == 200
        ctx = ctx_of(held)
        assert body["client_id"] == ctx and "a=1" in held.head_and_body()[2].decode()
        seg_name = next(n for n in worker.hls_index.get("live/s.m3u8").playlist.decode().split("\n")
                        if n and not n.startswith("#"))
        for _ in range(3):
            assert status(ask(worker, "/live/s.m3u8", f"hls_ctx={ctx}")) == 200
            assert status(ask(worker, "/live/" + seg_name, f"hls_ctx={ctx}")) == 200
        assert len(hooks.asked) == 1, "asked again for a known session"
        # Expiry: 2 * hls_window after the last request, one on_stop.
        session = worker.hls_sessions.get(ctx)
        worker.hls_sessions.sweep(session.last_seen + 2 * WINDOW_S + 0.1)
        worker.hls_sessions.sweep(session.last_seen + 4 * WINDOW_S)
        await asyncio.sleep(0.01)
        assert [d["action"] for d in hooks.told] == ["on_stop"] and hooks.told[0]["client_id"] == ctx
        # A refusing hook: 403, no session.
        refused = ask(worker, "/live/s.m3u8", "", cid="conn2")
        await hooks.answers.put("http hook on_play http://h/play refused: response code 1")
        for _ in range(100):
            if refused.sent:
                break
            await asyncio.sleep(0.01)
        assert status(refused) == 403 and not worker.hls_sessions.sessions
        # A kick: on_stop at once, and not again at expiry.
        kicked = ask(worker, "/live/s.m3u8", "", cid="conn3")
        await hooks.answers.put(None)
        for _ in range(100):
            if kicked.sent:
                break
            await asyncio.sleep(0.01)
        kctx = ctx_of(kicked)
        worker.hls_sessions.get(kctx).kick("api")
        worker.hls_sessions.sweep(time.monotonic() + 4 * WINDOW_S)
        await asyncio.sleep(0.01)
        assert [d["client_id"] for d in hooks.told] == [ctx, kctx]
        # A client that leaves while asked, then allowed: its on_stop still comes (paired with the on_play).
        gone = ask(worker, "/live/s.m3u8", "", cid="conn4")
        gone.closed = True
        await hooks.answers.put(None)
        await asyncio.sleep(0.05)
        assert len(hooks.told) == 3 and not gone.sent
        # A quit: each session's on_stop.
        live = ask(worker, "/live/s.m3u8", "", cid="conn5")
        await hooks.answers.put(None)
        await asyncio.sleep(0.05)
        worker.hls_sessions.end_all("server quit")
        await asyncio.sleep(0.01)
        assert hooks.told[-1]["client_id"] == ctx_of(live) and len(hooks.told) == 4
    asyncio.run(scenario())


def test_an_unknown_hls_ctx_is_adopted_only_where_no_access_control_applies():
    async def scenario():
        open_worker = worker_for("")
        with_stream(open_worker)
        assert status(ask(open_worker, "/live/s.m3u8", "hls_ctx=feedf00d")) == 200
        assert open_worker.hls_sessions.get("feedf00d") is not None
        worker = worker_for(HOOKS)
        with_stream(worker)
        conn = ask(worker, "/live/s.m3u8", "hls_ctx=feedf00d")
        await asyncio.sleep(0.01)
        # Asked with the session's own id; its media playlist once allowed (a player polling goes on).
        assert worker.access.hooks.asked[0]["client_id"] == "feedf00d" and b"#EXTINF" in conn.head_and_body()[2]
    asyncio.run(scenario())


def test_hls_ctx_off_checks_each_request_by_the_rules_and_refuses_on_play_hooks():
    async def scenario():
        worker = worker_for(SIGNED, hls="hls_ctx off;")
        seg = with_stream(worker)
        seg_name = next(n for n in seg.playlist.decode().split("\n") if n and not n.startswith("#"))
        assert status(ask(worker, "/live/s.m3u8")) == 403
        tok = token()
        media = ask(worker, "/live/s.m3u8", f"nstoken={tok}")
        assert status(media) == 200 and f"{seg_name}?nstoken={tok}".encode() in media.head_and_body()[2]
        assert status(ask(worker, "/live/" + seg_name, f"nstoken={tok}")) == 200
        assert status(ask(worker, "/live/" + seg_name)) == 403
        hooked = worker_for(HOOKS, hls="hls_ctx off;")
        with_stream(hooked)
        conn = ask(hooked, "/live/s.m3u8")
        assert status(conn) == 403 and "needs hls_ctx on" in conn.refused and not hooked.access.hooks.asked
    asyncio.run(scenario())


def test_an_edge_checks_before_it_pulls_made_up_names_cost_nothing():
    async def scenario():
        worker = worker_for(SIGNED, edge=True)
        try:
            for i in range(50):
                assert status(ask(worker, f"/live/ghost{i}.m3u8")) == 403
            assert not worker.cluster.ingesters and not worker.registry.sources and not worker.hls_index.paths
            assert not worker.hls_sessions.grants and not worker.hls_sessions.sessions
            # With a token: one pull; the held request becomes a session at the first segment, asked once.
            conn = ask(worker, "/live/s.m3u8", f"nstoken={token()}")
            assert len(worker.cluster.ingesters) == 1 and not conn.sent
            feed_one_segment(worker.cluster.ingesters["__defaultVhost__/live/s"].source)
            assert status(conn) == 200 and len(worker.hls_sessions.sessions) == 1 and not worker.hls_sessions.grants
        finally:
            await worker.cluster.stop()
    asyncio.run(scenario())


def test_hls_ts_ctx_off_checks_segments_on_their_own_and_on_play_hooks_refuse_them():
    async def scenario():
        worker = worker_for(SIGNED, hls="hls_ts_ctx off;")
        seg = with_stream(worker)
        seg_name = next(n for n in seg.playlist.decode().split("\n") if n and not n.startswith("#"))
        tok = token()
        ctx = ctx_of(ask(worker, "/live/s.m3u8", f"nstoken={tok}"))
        media = ask(worker, "/live/s.m3u8", f"hls_ctx={ctx}&nstoken={tok}")
        assert f"{seg_name}?nstoken={tok}".encode() in media.head_and_body()[2]
        assert status(ask(worker, "/live/" + seg_name, f"nstoken={tok}")) == 200
        assert status(ask(worker, "/live/" + seg_name, f"hls_ctx={ctx}")) == 403     # no token: no pass
        hooked = worker_for(HOOKS, hls="hls_ts_ctx off;")
        seg = with_stream(hooked)
        seg_name = next(n for n in seg.playlist.decode().split("\n") if n and not n.startswith("#"))
        conn = ask(hooked, "/live/s.m3u8")
        await asyncio.sleep(0.01)
        assert status(conn) == 200      # the session is asked for, once
        assert status(ask(hooked, "/live/" + seg_name, f"hls_ctx={ctx_of(conn)}")) == 403
    asyncio.run(scenario())
