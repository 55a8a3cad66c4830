"""An edge pull against in-process origins over real TCP: failover to the next origin at once, a dead origin
skipped for its backoff, SRS redirects followed (`redirect2`, else `redirect`), and a clean stop."""

from __future__ import annotations

import asyncio
import time

from nonstop.cluster.balance import OriginPool
from nonstop.cluster.edge import EDGE_INGEST_CONNECTED, EdgeIngester
from nonstop.config import load_text
from nonstop.media.source import Source
from nonstop.protocol import rtmp

AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1F, 0xFF, 0xE1, 0x00, 0x04, 0x67, 0x64, 0x00, 0x1F,
                    0x01, 0x00, 0x04, 0x68, 0xEB, 0xEC, 0xB2])


class FakeOrigin:
    """An RTMP origin in this process. `behaviour`: 'play' (headers, then a frame every 20 ms), 'not_found',
    or ('redirect', redirect, redirect2)."""

    def __init__(self, behaviour="play"):
        self.behaviour = behaviour
        self.plays: list[tuple[str, str, str]] = []     # (tcUrl, stream, query)
        self.transports: list = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> "FakeOrigin":
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _OriginConn(self), "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def kill(self) -> None:
        """Close the listener and every connection, as a dead process would."""
        self.server.close()
        await self.server.wait_closed()
        for transport in self.transports:
            transport.abort()


class _OriginConn(asyncio.Protocol):
    def __init__(self, origin: FakeOrigin):
        self.origin = origin
        self.session = rtmp.RtmpSession(rtmp.SERVER)
        self.transport = None
        self.feeding: asyncio.Task | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.origin.transports.append(transport)

    def connection_lost(self, exc):
        if self.feeding is not None:
            self.feeding.cancel()

    def data_received(self, data):
        for event in self.session.receive_data(data):
            if isinstance(event, rtmp.ConnectRequest):
                self.session.accept_connect(event)
            elif isinstance(event, rtmp.PlayRequest):
                self.origin.plays.append((self.session.tc_url, event.name, event.query))
                behaviour = self.origin.behaviour
                if behaviour == "play":
                    self.session.accept_play(event)
                    self.feeding = asyncio.get_running_loop().create_task(self.feed())
                elif behaviour == "not_found":
                    self.session.send_stream_not_found(event.stream_id, event.name)
                else:
                    _, redirect, redirect2 = behaviour
                    ex = {"code": 302.0, "redirect": redirect}
                    if redirect2:
                        ex["redirect2"] = redirect2
                    self.session._send_command(rtmp.CSID_STREAM, 0, "onStatus", 0.0, None,
                                               {"level": "error", "code": "NetConnection.Connect.Rejected",
                                                "description": "RTMP 302 Redirect", "ex": ex})
        self.transport.write(self.session.data_to_send())

    async def feed(self):
        write = lambda t, ts, p: self.transport.write(   # noqa: E731
            self.session.writer.encode(rtmp.CSID_VIDEO, t, ts, 1, p))
        write(rtmp.MSG_VIDEO, 0, AVC_HEADER)
        for i in range(10_000):
            write(rtmp.MSG_VIDEO, i * 20, bytes([0x17 if i % 10 == 0 else 0x27, 1, 0, 0, 0]) + i.to_bytes(4, "big"))
            await asyncio.sleep(0.02)


def ingester(*origins: str, retry_min: int = 200, extra: str = "") -> EdgeIngester:
    config = load_text(f"""listen 1935; vhost __defaultVhost__ {{ cluster {{
        mode remote; origin {' '.join(origins)}; retry_min {retry_min}; retry_max {max(retry_min, 2000)};
        connect_timeout 1000;
        {extra} }} }}""")
    vhost = config.vhosts["__defaultVhost__"]
    c = vhost.cluster
    source = Source("__defaultVhost__/live/s", "__defaultVhost__", "live", "s")
    return EdgeIngester(source, vhost, OriginPool(c.origin, c.retry_min, c.retry_max), app="live", stream="s",
                        query="token=abc", host="10.9.9.9", chunk_size=60000, now=time.monotonic())


async def until(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def frames(edge: EdgeIngester) -> int:
    return edge.source.frames


def test_pull_skips_a_dead_origin_and_plays_from_the_next_with_the_token():
    async def scenario():
        good = await FakeOrigin().start()
        dead = await FakeOrigin().start()
        await dead.kill()
        edge = ingester(dead.address, good.address)
        edge.start(time.monotonic())
        await until(lambda: frames(edge) >= 5, 5, "frames from the good origin")
        assert edge.state == EDGE_INGEST_CONNECTED
        assert good.plays == [("rtmp://127.0.0.1:%d/live" % good.port, "s", "token=abc")]
        assert edge.pool.origins[0].failures == 1 and edge.pool.origins[0].down_until > time.monotonic() - 1
        edge.stop(time.monotonic(), "test over")
        await asyncio.wait_for(edge.wait_closed(), 2)
        assert edge.source.publisher is None and all(t.is_closing() for t in good.transports)
    asyncio.run(scenario())


def test_when_the_origin_dies_mid_stream_the_next_one_is_taken_at_once():
    async def scenario():
        first, second = await FakeOrigin().start(), await FakeOrigin().start()
        edge = ingester(first.address, second.address, retry_min=5000)
        edge.start(time.monotonic())
        await until(lambda: frames(edge) >= 5, 5, "frames from the first origin")
        await first.kill()
        before = frames(edge)
        took = await until(lambda: frames(edge) >= before + 5, 5, "frames from the second origin")
        print(f"resumed from the second origin after {took * 1000:.0f} ms (retry_min is 5000 ms)")
        assert took < 2.0 and len(second.plays) == 1
        edge.stop(time.monotonic(), "test over")
    asyncio.run(scenario())


def test_an_origin_without_the_stream_is_retried_after_retry_min_without_a_growing_backoff():
    async def scenario():
        empty = await FakeOrigin("not_found").start()
        edge = ingester(empty.address, retry_min=100)
        edge.start(time.monotonic())
        await until(lambda: len(empty.plays) >= 4, 5, "four tries")
        assert edge.pool.origins[0].failures == 0
        empty.behaviour = "play"
        await until(lambda: frames(edge) >= 3, 5, "frames once the stream exists")
        edge.stop(time.monotonic(), "test over")
    asyncio.run(scenario())


def test_redirect2_is_followed_with_the_stream_and_query_it_names():
    async def scenario():
        target = await FakeOrigin().start()
        url = f"rtmp://127.0.0.1:{target.port}/live/s?token=abc"
        redirector = await FakeOrigin(("redirect", url.rsplit("/", 1)[0], url)).start()
        edge = ingester(redirector.address)
        edge.start(time.monotonic())
        await until(lambda: frames(edge) >= 3, 5, "frames from the redirect target")
        assert target.plays == [(f"rtmp://127.0.0.1:{target.port}/live", "s", "token=abc")]
        edge.stop(time.monotonic(), "test over")
    asyncio.run(scenario())


def test_redirect_without_redirect2_keeps_the_stream_on_the_named_server():
    async def scenario():
        target = await FakeOrigin().start()
        redirector = await FakeOrigin(("redirect", f"rtmp://127.0.0.1:{target.port}/live", None)).start()
        edge = ingester(redirector.address)
        edge.start(time.monotonic())
        await until(lambda: frames(edge) >= 3, 5, "frames from the redirect target")
        assert target.plays[0][1:] == ("s", "token=abc")
        edge.stop(time.monotonic(), "test over")
    asyncio.run(scenario())


def test_a_redirect_loop_falls_back_to_the_edges_own_origins():
    async def scenario():
        loop_origin = await FakeOrigin().start()
        loop_origin.behaviour = ("redirect", "", f"rtmp://127.0.0.1:{loop_origin.port}/live/s")
        good = await FakeOrigin().start()
        edge = ingester(loop_origin.address, good.address)
        edge.start(time.monotonic())
        await until(lambda: frames(edge) >= 3, 5, "frames from the good origin")
        assert 1 < len(loop_origin.plays) <= 5
        edge.stop(time.monotonic(), "test over")
    asyncio.run(scenario())


def test_link_state_snapshots_to_plain_data():
    async def scenario():
        good = await FakeOrigin().start()
        edge = ingester(good.address)
        edge.start(time.monotonic())
        await until(lambda: frames(edge) >= 3, 5, "frames")
        snap = edge.snapshot()
        assert snap["state"] == EDGE_INGEST_CONNECTED and snap["upstream"]["phase"] == "started"
        assert snap["upstream"]["session"]["playing_stream_id"] == 1
        other = ingester(good.address)
        other.restore_state(snap)
        assert other.snapshot()["attempts"] == snap["attempts"] and other.cid == edge.cid
        edge.stop(time.monotonic(), "test over")
    asyncio.run(scenario())
