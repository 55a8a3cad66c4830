"""The gate (nonstop/access/gate.py) with fake connections and a fake hook client: what is asked, when, and
what is owed, without sockets."""

from __future__ import annotations

import asyncio
import types

import pytest

from nonstop.access.gate import Access
from nonstop.access.state import ConnAccess
from nonstop.config import load_text
from nonstop.media.registry import SourceRegistry
from nonstop.protocol import rtmp

HOOKS = """listen 1935;
vhost __defaultVhost__ {
    http_hooks { enabled on; on_connect http://h/c; on_close http://h/c; on_publish http://h/p;
                 on_unpublish http://h/p; on_play http://h/s; on_stop http://h/s; }
    %s
}
"""


class FakeHooks:
    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.deny: set[str] = set()
        self.gate: asyncio.Event | None = None      # when set, questions wait for it
        self.gated = ("on_connect", "on_publish", "on_play")

    async def post_all(self, cid, action, urls, data, timeout_ms, vhost="", bound=256):
        self.calls.append((action, data))
        if self.gate is not None and action in self.gated:
            await self.gate.wait()
        return f"http hook {action} {urls[0]} refused: response code 1" if action in self.deny else None

    async def post(self, url, data, timeout_ms, vhost="", bound=256):
        self.calls.append((data["action"], data))
        return None

    async def close(self):
        pass

    def actions(self):
        return [a for a, _ in self.calls]


class FakeWorker:
    def __init__(self, text: str):
        self.config = load_text(text)
        self.registry = SourceRegistry()
        self.server_id, self.service_id = "vid-w1", "svc1"
        self.conns = {}

    def fetch_source(self, vhost, app, stream, now):
        return self.registry.fetch_or_create(vhost.name, app, stream, now)


class FakeConn:
    kind = "rtmp"

    def __init__(self, worker, cid="c1"):
        self.worker, self.cid, self.ip = worker, cid, "10.0.0.1"
        self.vhost = worker.config.vhosts["__defaultVhost__"]
        self.session = types.SimpleNamespace(app="live", tc_url="rtmp://h/live", query="")
        self.page_url, self.access = "", ConnAccess()
        self.closed, self.held, self.resumed, self.refused = False, False, [], []
        self.handing_over = False
        self.send_bytes, self.recv_bytes = 10, 20

    def hold_for_access(self):
        self.held = True

    def resume_access(self, request):
        self.resumed.append(request)

    def refuse_access(self, action, request, reason):
        self.refused.append(reason)

    def close(self, reason=""):
        if not self.closed:
            self.closed = True
            self.worker.access.closed(self)


def publish(name="cam", query=""):
    return rtmp.PublishRequest(1, 4.0, name, query, "live", True)


def play(name="cam"):
    return rtmp.PlayRequest(1, 4.0, name, "", -2.0, -1.0, True)


def setup(extra=""):
    worker = FakeWorker(HOOKS % extra)
    worker.access = Access(worker)
    worker.access.hooks = FakeHooks()
    return worker, worker.access.hooks


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_publish_is_held_asked_once_and_resumed_then_owed_once():
    async def main():
        worker, hooks = setup()
        conn = FakeConn(worker)
        event = publish()
        assert worker.access.rtmp_request(conn, "publish", event) is True and conn.held
        await settle()
        assert hooks.actions() == ["on_connect", "on_publish"] and conn.resumed == [event]
        assert worker.access.rtmp_request(conn, "publish", event) is False, "replayed: not asked again"
        worker.access.left(conn, "publish")
        worker.access.left(conn, "publish")
        # republish on the same connection: on_publish again, no second on_connect
        event2 = publish("cam2")
        assert worker.access.rtmp_request(conn, "publish", event2) is True
        await settle()
        conn.close()
        await settle()
        assert hooks.actions() == ["on_connect", "on_publish", "on_unpublish", "on_publish", "on_unpublish",
                                   "on_close"]
        assert hooks.calls[-1][1]["send_bytes"] == 10 and hooks.calls[-1][1]["recv_bytes"] == 20
    asyncio.run(main())


def test_a_refusal_by_on_connect_skips_on_publish_and_still_owes_on_close():
    async def main():
        worker, hooks = setup()
        hooks.deny.add("on_connect")
        conn = FakeConn(worker)
        worker.access.rtmp_request(conn, "publish", publish())
        await settle()
        assert hooks.actions() == ["on_connect"] and "on_connect" in conn.refused[0]
        conn.close()
        await settle()
        assert hooks.actions() == ["on_connect", "on_close"]
    asyncio.run(main())


def test_a_close_during_the_question_is_settled_after_the_answer_in_order():
    async def main():
        worker, hooks = setup()
        hooks.gate = asyncio.Event()
        conn = FakeConn(worker)
        worker.access.rtmp_request(conn, "play", play())
        await settle()
        conn.close()            # while on_connect is asked
        await settle()
        assert hooks.actions() == ["on_connect"], "nothing sent before the answer"
        hooks.gate.set()
        await settle()
        assert hooks.actions() == ["on_connect", "on_close"], "no on_play for a client that is gone"
        assert conn.resumed == []
    asyncio.run(main())


def test_a_close_while_on_publish_is_asked_hears_on_unpublish_before_on_close():
    async def main():
        worker, hooks = setup()
        hooks.gate, hooks.gated = asyncio.Event(), ("on_publish",)
        conn = FakeConn(worker)
        worker.access.rtmp_request(conn, "publish", publish())
        await settle()
        conn.close()            # on_connect answered, on_publish in flight
        await settle()
        hooks.gate.set()
        await settle()
        assert hooks.actions() == ["on_connect", "on_publish", "on_unpublish", "on_close"]
    asyncio.run(main())


def test_a_handover_during_the_question_sends_nothing_and_the_snapshot_asks_again():
    async def main():
        worker, hooks = setup()
        hooks.gate = asyncio.Event()
        conn = FakeConn(worker)
        event = play()
        worker.access.rtmp_request(conn, "play", event)
        await settle()
        snap = conn.access.snapshot()
        conn.closed, conn.handed_over = True, True      # what finish_handover does
        hooks.gate.set()
        await settle()
        assert hooks.actions() == ["on_connect"], "the old worker stops at the handover"
        new_worker, new_hooks = setup()
        moved = FakeConn(new_worker)
        moved.access = ConnAccess.restore(snap)
        again = new_worker.access.pending_request(moved)
        assert again == event
        assert new_worker.access.rtmp_request(moved, "play", again) is True
        await settle()
        assert new_hooks.actions() == ["on_connect", "on_play"] and moved.resumed == [again]
    asyncio.run(main())


@pytest.mark.parametrize("deny", [False, True])
def test_an_answer_during_a_handover_travels_in_the_snapshot_and_is_not_asked_again(deny):
    async def main():
        worker, hooks = setup()
        if deny:
            hooks.deny.add("on_play")
        hooks.gate = asyncio.Event()
        conn = FakeConn(worker)
        event = play()
        worker.access.rtmp_request(conn, "play", event)
        await settle()
        conn.handing_over = True        # begin_handover
        hooks.gate.set()
        await settle()
        assert conn.resumed == [] and conn.refused == [], "nothing is done mid-handover"
        snap = conn.access.snapshot()
        conn.closed, conn.handed_over, conn.handing_over = True, True, False     # finish_handover
        await asyncio.sleep(0.05)
        new_worker, new_hooks = setup()
        moved = FakeConn(new_worker)
        moved.access = ConnAccess.restore(snap)
        again = new_worker.access.pending_request(moved)
        assert new_worker.access.rtmp_request(moved, "play", again) is deny
        await settle()
        assert new_hooks.actions() == [], "the new worker asked nothing"
        if deny:
            assert "on_play" in moved.refused[0]
        moved.close()
        await settle()
        assert new_hooks.actions() == (["on_close"] if deny else ["on_stop", "on_close"])
    asyncio.run(main())


def test_an_answer_during_a_cancelled_handover_is_acted_on_here():
    async def main():
        worker, hooks = setup()
        hooks.gate = asyncio.Event()
        conn = FakeConn(worker)
        event = play()
        worker.access.rtmp_request(conn, "play", event)
        await settle()
        conn.handing_over = True
        hooks.gate.set()
        await settle()
        assert conn.resumed == []
        conn.handing_over = False       # cancel_handover
        await asyncio.sleep(0.05)
        assert conn.resumed == [event] and conn.access.pending is None
    asyncio.run(main())


def test_a_granted_connection_moved_by_a_handover_owes_exactly_what_it_owed():
    async def main():
        worker, hooks = setup()
        conn = FakeConn(worker)
        worker.access.rtmp_request(conn, "publish", publish())
        await settle()
        snap = conn.access.snapshot()
        conn.closed, conn.handed_over = True, True
        new_worker, new_hooks = setup()
        moved = FakeConn(new_worker)
        moved.access = ConnAccess.restore(snap)
        assert new_worker.access.pending_request(moved) is None
        moved.close()
        await settle()
        assert new_hooks.actions() == ["on_unpublish", "on_close"]
        assert {d["server_id"] for _, d in hooks.calls + new_hooks.calls} == {"vid-w1"}
    asyncio.run(main())


def test_rules_refuse_before_any_hook_is_asked():
    async def main():
        worker, hooks = setup("security { enabled on; deny publish 10.0.0.0/8; allow publish all; }")
        conn = FakeConn(worker)
        assert worker.access.rtmp_request(conn, "publish", publish()) is True
        await settle()
        assert hooks.actions() == [] and "denied by 'deny publish 10.0.0.0/8'" in conn.refused[0]
        conn.close()
        await settle()
        assert hooks.actions() == [], "no on_connect was asked: no on_close is owed"
    asyncio.run(main())


def test_signed_url_on_the_stream_or_the_tcurl_query():
    from nonstop.access import signed
    async def main():
        worker, hooks = setup("signed_url { enabled on; key k1 0123456789abcdef01; play off; }")
        worker.access.clock = lambda: 1000
        tok = signed.make_token("k1", "0123456789abcdef01", "publish", "__defaultVhost__", "live", "cam", 2000)
        conn = FakeConn(worker)
        conn.session.query = f"nstoken={tok}"           # on the tcUrl (`rtmp://h/live?nstoken=...`)
        assert worker.access.rtmp_request(conn, "publish", publish()) is True
        await settle()
        assert conn.resumed and not conn.refused
        player = FakeConn(worker, "c2")                 # `play off`: players need no token
        assert worker.access.rtmp_request(player, "play", play()) is True
        await settle()
        assert player.resumed
    asyncio.run(main())


@pytest.mark.parametrize("extra, allowed", [("", True), ("refer { enabled on; play example.com; }", False)])
def test_flv_plays_get_on_play_and_on_stop_only(extra, allowed):
    async def main():
        worker, hooks = setup(extra)
        conn = FakeConn(worker)
        conn.kind, conn.query, conn.headers = "http", "a=1", {"referer": "http://evil.net/"}
        vhost = conn.vhost
        assert worker.access.flv_request(conn, "GET", vhost, "live", "cam") is True
        await settle()
        assert bool(conn.resumed) == allowed
        assert worker.access.flv_request(conn, "GET", vhost, "live", "cam") is (not allowed)
        conn.close()
        await settle()
        assert hooks.actions() == (["on_play", "on_stop"] if allowed else [])
        if allowed:
            assert hooks.calls[0][1]["tcUrl"] == "rtmp://__defaultVhost__/live"
            assert hooks.calls[0][1]["param"] == "?a=1" and hooks.calls[0][1]["pageUrl"] == "http://evil.net/"
    asyncio.run(main())


def test_notifications_follow_the_config_in_force():
    async def main():
        worker, hooks = setup()
        conn = FakeConn(worker)
        worker.access.rtmp_request(conn, "play", play())
        await settle()
        worker.config = load_text(HOOKS.replace("http_hooks { enabled on;", "http_hooks { enabled off;") % "")
        conn.close()
        await settle()
        assert hooks.actions() == ["on_connect", "on_play"], "hooks turned off by a reload: nothing more sent"
    asyncio.run(main())
