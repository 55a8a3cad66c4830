"""HLS viewers in an upgrade's handover (transfer.py I1), with real Workers, real sockets and the real handover:
a held LL-HLS request moves with its stream and is answered by the new worker, the hls_ctx sessions move with the
source's frame (ids, counters, kicks), and a keep-alive HLS connection between two polls moves with the idle
connections instead of being closed. Plus the plain-data snapshots they travel as."""

from __future__ import annotations

import asyncio
import pickle
import time

import uvloop

from nonstop.access.state import ConnAccess
from nonstop.handover import wire
from nonstop.protocol import rtmp
from nonstop.server import hls_http
from nonstop.server.hls_http import HlsSession, HlsSessions
from tests.unit.handover_harness import CONFIG, Client, Handover, ServedWorker, Stepper, wait_until
from tests.unit.test_hls_http import AVC_SH, frame

HLS_CONFIG = CONFIG.replace("    publish {", """\
    hls { enabled on; hls_fragment 1; hls_window 10; hls_use_fmp4 on; hls_part 0.5; }
    publish {""")


def run(coro):
    return uvloop.run(asyncio.wait_for(coro, 60))


class Publisher(Client):
    """Real H.264 headers (the fMP4 writer parses the SPS), 25 fps, a keyframe every second."""

    def __init__(self, stream: str = "s"):
        super().__init__("publish", stream)
        self.frames = 0

    async def open(self, port: int) -> "Publisher":
        await self.rtmp.open(port)
        self.port = self.rtmp.writer.get_extra_info("sockname")[1]
        status = await self.rtmp.publish(self.stream)
        assert status.code == "NetStream.Publish.Start", status
        self.rtmp.send_media(rtmp.MSG_VIDEO, 0, AVC_SH)
        self.reader = asyncio.ensure_future(self._read())
        return self

    def send(self, count: int) -> None:
        for _ in range(count):
            self.rtmp.send_media(rtmp.MSG_VIDEO, self.frames * 40, frame(self.frames % 25 == 0))
            self.frames += 1


class Http:
    """One keep-alive HTTP/1.1 connection, as a player keeps it."""

    async def open(self, port: int) -> "Http":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.port = self.writer.get_extra_info("sockname")[1]
        return self

    def ask(self, target: str) -> None:
        self.writer.write(f"GET /{target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    async def answer(self, timeout: float = 10.0) -> tuple[int, dict, bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
        body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), timeout)
        return int(lines[0].split()[1]), headers, body

    async def get(self, target: str) -> tuple[int, dict, bytes]:
        self.ask(target)
        return await self.answer()


async def live_stream(old: ServedWorker) -> tuple[Publisher, object]:
    publisher = await Publisher().open(old.rtmp_port)
    await wait_until(lambda: old.worker.registry.sources.get("__defaultVhost__/live/s") is not None, what="source")
    source = old.worker.registry.sources["__defaultVhost__/live/s"]
    publisher.send(64)      # two segments and a part of the third
    await wait_until(lambda: source.hls is not None and source.hls.next_seq >= 2 and source.hls.open_parts,
                     what="segments and parts")
    return publisher, source


def lists(playlist: bytes, msn: int, part: int) -> bool:
    """Whether a media playlist lists segment `msn`'s part `part` (or the whole segment)."""
    seq, parts = None, 0
    for line in playlist.decode().splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(line.split(":")[1])
        elif line.startswith("#EXT-X-PART:"):
            parts += 1
        elif line and not line.startswith("#"):
            seq, parts = seq + 1, 0
    return msn < seq or (msn == seq and part < parts)


def test_a_held_blocking_reload_moves_with_its_stream_and_the_new_worker_answers_it():
    async def main():
        old, new = await ServedWorker(HLS_CONFIG).start(), await ServedWorker(HLS_CONFIG).start()
        publisher, source = await live_stream(old)
        seg = source.hls
        msn, part = seg.next_seq, len(seg.open_parts)       # the next part: not there yet
        player = await Http().open(old.http_port)
        player.ask(f"{seg.m3u8_name}?hls_ctx=abcd1234&_HLS_msn={msn}&_HLS_part={part}")
        await wait_until(lambda: old.conn_of(player.port) is not None and old.conn_of(player.port).held is not None,
                         what="held on the old worker")
        held_deadline = old.conn_of(player.port).held.deadline
        handover = Handover(old, new, Stepper())
        while await handover.step():
            if handover.stepper.phase[0] == "sent":
                # Its batch is in flight: the old worker's sweep past the deadline must not answer it.
                old.worker.hls_sessions.sweep(time.monotonic() + 3600)
        sent, received = await handover.finish()
        assert (sent.streams, sent.failed, sent.broken) == (1, 0, "")
        assert sent.handed_over == received.handed_over == 2        # the publisher and the held request
        moved = new.conn_of(player.port)
        assert moved is not None and moved.held is not None and moved.held.deadline == held_deadline
        assert not player.reader.at_eof() and player.reader._buffer == b""      # nobody answered yet
        started = time.monotonic()
        publisher.send(15)      # to the new worker now: the awaited part is cut there
        status, headers, body = await player.answer()
        waited = time.monotonic() - started
        print(f"held request answered by the new worker {waited * 1000:.0f} ms after the media resumed")
        assert status == 200 and headers["connection"] == "keep-alive"
        assert lists(body, msn, part), body
        # The same connection polls on, on the new worker.
        status, _, _ = await player.get(f"{seg.m3u8_name}?hls_ctx=abcd1234")
        assert status == 200 and new.conn_of(player.port) is moved
        session = new.worker.hls_sessions.get("abcd1234")
        assert session is not None and session.requests >= 2
        await old.stop()
        await new.stop()
    run(main())


def test_sessions_move_with_their_stream_keep_their_counters_and_a_kick_holds():
    async def main():
        old, new = await ServedWorker(HLS_CONFIG).start(), await ServedWorker(HLS_CONFIG).start()
        publisher, source = await live_stream(old)
        seg = source.hls
        viewer, kicked = await Http().open(old.http_port), await Http().open(old.http_port)
        for player, ctx in ((viewer, "aaaa0001"), (kicked, "bbbb0002")):
            status, _, body = await player.get(f"{seg.m3u8_name}?hls_ctx={ctx}")
            assert status == 200
            segment = [line for line in body.decode().splitlines() if line.endswith(f"hls_ctx={ctx}")][0]
            assert (await player.get(seg.m3u8_name.rpartition("/")[0] + "/" + segment))[0] == 200
        old.worker.hls_sessions.get("bbbb0002").kick("test")
        # An allowed viewer's verdict (access control) moves with it: on_stop is owed by the new worker alone.
        old.worker.hls_sessions.get("aaaa0001").access = ConnAccess(cid="aaaa0001", ip="127.0.0.1", stream="s",
                                                                    granted="play", playing=True)
        before = {ctx: old.worker.hls_sessions.get(ctx).snapshot() for ctx in ("aaaa0001", "bbbb0002")}
        sent, received = await Handover(old, new).finish()
        assert sent.broken == "" and sent.streams == 1
        for ctx, snap in before.items():
            assert new.worker.hls_sessions.get(ctx).snapshot() == snap
        assert new.worker.hls_sessions.get("aaaa0001").access.playing
        assert not old.worker.hls_sessions.sessions, "the old worker forgets what moved (no second on_stop)"
        assert [s.cid for s in new.worker.hls_sessions.clients()] == ["aaaa0001"]
        # Both keep-alive connections moved too (between two polls): the next requests reach the new worker.
        assert new.conn_of(viewer.port) is not None and new.conn_of(kicked.port) is not None
        status, _, body = await viewer.get(f"{seg.m3u8_name}?hls_ctx=aaaa0001")
        assert status == 200
        session = new.worker.hls_sessions.get("aaaa0001")
        assert session.requests == before["aaaa0001"][10] + 1
        assert session.send_bytes == before["aaaa0001"][8] + len(body)
        status, _, body = await kicked.get(f"{seg.m3u8_name}?hls_ctx=bbbb0002")
        assert status == 404 and b"EOF" in body
        await old.stop()
        await new.stop()
    run(main())


def test_an_idle_keep_alive_connection_moves_and_is_never_closed():
    async def main():
        old, new = await ServedWorker(HLS_CONFIG).start(), await ServedWorker(HLS_CONFIG).start()
        publisher, source = await live_stream(old)
        player = await Http().open(old.http_port)
        fresh = await Http().open(old.http_port)        # connected, nothing sent yet
        assert (await player.get(f"{source.hls.m3u8_name}?hls_ctx=cccc0003"))[0] == 200
        await wait_until(lambda: old.conn_of(fresh.port) is not None, what="fresh conn")
        sent, received = await Handover(old, new).finish()
        assert sent.handed_over == received.handed_over == 3 and sent.drained == 0
        for client in (player, fresh):
            assert old.conn_of(client.port) is None and new.conn_of(client.port) is not None
            status, headers, _ = await client.get(f"{source.hls.m3u8_name}?hls_ctx=cccc0003")
            assert status == 200 and headers["connection"] == "keep-alive"
        await old.stop()
        await new.stop()
    run(main())


def test_a_refused_batch_leaves_the_held_request_held_here_and_answered_here(monkeypatch):
    async def main():
        old, new = await ServedWorker(HLS_CONFIG).start(), await ServedWorker(HLS_CONFIG).start()
        publisher, source = await live_stream(old)
        seg = source.hls
        msn, part = seg.next_seq, len(seg.open_parts)
        player = await Http().open(old.http_port)
        player.ask(f"{seg.m3u8_name}?hls_ctx=dddd0004&_HLS_msn={msn}&_HLS_part={part}")
        await wait_until(lambda: old.conn_of(player.port) is not None and old.conn_of(player.port).held is not None,
                         what="held")
        monkeypatch.setattr(new.worker, "restore_connection",
                            lambda snap, source: (_ for _ in ()).throw(ValueError("test: refuse")))
        sent, _ = await Handover(old, new).finish()
        assert sent.failed == 2 and sent.handed_over == 0
        conn = old.conn_of(player.port)
        assert conn is not None and conn.held is not None and not conn.handing_over
        publisher.send(15)
        status, _, body = await player.answer()
        assert status == 200 and seg.has(msn, part)
        await old.stop()
        await new.stop()
    run(main())


def test_snapshots_are_plain_data():
    class W:
        registry = None
    sessions = HlsSessions()
    session = HlsSession.__new__(HlsSession)
    values = ["ab12cd34", "__defaultVhost__", "live", "s", "192.0.2.1", 12.5, 1.7e9, 13.0, 4096, 0, 3, 10.0, True]
    snap = HlsSession.restore(W(), values).snapshot()
    assert snap == values + [None] and pickle.loads(wire.dumps(snap)) == values + [None]   # no verdict: None
    granted = HlsSession.restore(W(), values + [ConnAccess(cid="ab12cd34", playing=True).snapshot()])
    assert granted.access.playing and pickle.loads(wire.dumps(granted.snapshot()))[-1]["cid"] == "ab12cd34"
    sessions.check([snap])
    sessions.restore(W(), [snap])
    assert sessions.get("ab12cd34").closed and sessions.total == 1
    # A session adopted here meanwhile (a player that came during the upgrade) is merged into the moved one.
    here = HlsSession.restore(W(), ["ab12cd34", "__defaultVhost__", "live", "s", "192.0.2.1", 20.0, 1.7e9, 21.0,
                                    100, 0, 1, 10.0, False])
    sessions2 = HlsSessions()
    sessions2.sessions["ab12cd34"] = here
    sessions2.restore(W(), [snap])
    merged = sessions2.get("ab12cd34")
    assert (merged.created_at, merged.send_bytes, merged.requests, merged.last_seen, merged.closed) == \
        (12.5, 4196, 4, 21.0, True)
    for bad in ([["x"]], "nope", [values[:-1]], [[None] + values[1:]], [values + [{"playing": True}, 1]]):
        try:
            sessions.check(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    # The held request is plain data too.
    held = hls_http.Held(object(), "GET", "/live/s.m3u8", "_HLS_msn=3&_HLS_part=1", None, 123.25)
    assert held.snapshot() == {"method": "GET", "path": "/live/s.m3u8", "query": "_HLS_msn=3&_HLS_part=1",
                               "deadline": 123.25}
    assert set(hls_http.HELD_FIELDS) == set(held.snapshot())


def test_the_session_table_moved_is_bounded(monkeypatch):
    monkeypatch.setattr(hls_http, "MAX_SESSIONS_MOVED", 3)

    class Seg:
        vhost, app, stream = "v", "a", "s"
        settings = {"window_ms": 10000}
    sessions = HlsSessions()
    for i in range(5):
        sessions.touch(f"c{i}", None, Seg(), "ip", float(i))
    sessions.touch("other", None, type("O", (Seg,), {"stream": "t"})(), "ip", 9.0)
    snaps = sessions.snapshot_for("v", "a", "s")
    assert [s[0] for s in snaps] == ["c4", "c3", "c2"]      # the most recently seen


def test_a_keep_alive_connection_still_writing_is_left_behind_and_closed_with_a_fin_once_drained():
    """I5 for HLS: a player still reading its last segment does not hold the handover back; it stays on the old
    worker, which neither resets it nor closes it as an idle keep-alive while its response drains, then closes it
    cleanly (a FIN, not a reset)."""
    class Writing:
        """The connection's transport, with a write buffer that does not shrink until the test says so."""
        def __init__(self, transport):
            self.transport, self.size = transport, 1000

        def __getattr__(self, name):
            return getattr(self.transport, name)

        def get_write_buffer_size(self):
            return self.size

    async def main():
        old, new = await ServedWorker(HLS_CONFIG).start(), await ServedWorker(HLS_CONFIG).start()
        publisher, source = await live_stream(old)
        player = await Http().open(old.http_port)
        assert (await player.get(f"{source.hls.m3u8_name}?hls_ctx=eeee0005"))[0] == 200
        conn = old.conn_of(player.port)
        conn.transport = writing = Writing(conn.transport)
        sent, _ = await Handover(old, new).finish()
        assert sent.drained == 1 and old.conn_of(player.port) is conn and conn.left_behind
        old.worker.draining = True
        old.worker.sweep(time.monotonic())
        assert not conn.closed, "closed as an idle keep-alive while its response drains"
        writing.size = 0
        old.worker.sweep(time.monotonic())
        assert conn.closed
        assert await asyncio.wait_for(player.reader.read(), 5) == b""      # a FIN: no ConnectionResetError
        await old.stop()
        await new.stop()
    run(main())


def test_a_half_received_request_stays_and_is_answered_by_the_old_worker_with_close():
    """A request head half read when the handover starts does not move (its parser state does not): the old worker
    reads the rest, answers from the copy it has with `Connection: close`, and the player's next connection goes
    to the new worker."""
    async def main():
        old, new = await ServedWorker(HLS_CONFIG).start(), await ServedWorker(HLS_CONFIG).start()
        publisher, source = await live_stream(old)
        player = await Http().open(old.http_port)
        player.writer.write(f"GET /{source.hls.m3u8_name}?hls_ctx=ffff0006 HTTP/1.1\r\nHo".encode())
        await wait_until(lambda: old.conn_of(player.port) is not None and old.conn_of(player.port).in_message,
                         what="half a request read")
        sent, _ = await Handover(old, new).finish()
        assert old.conn_of(player.port) is not None and new.conn_of(player.port) is None
        old.worker.draining = True      # what the old worker does once the handover is over
        player.writer.write(b"st: x\r\n\r\n")
        status, headers, body = await player.answer()
        assert status == 200 and headers["connection"] == "close" and body.startswith(b"#EXTM3U")
        assert await asyncio.wait_for(player.reader.read(), 5) == b""
        await old.stop()
        await new.stop()
    run(main())
