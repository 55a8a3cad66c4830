"""handover/transfer.py with real Workers in one loop (uvloop, as the worker runs), real RTMP clients on
loopback and a real UNIX socketpair between the workers: each defect of issue 10's handover, reproduced."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import uvloop

from nonstop.handover import transfer, wire
from nonstop.protocol import rtmp
from nonstop.server.rtmp_conn import RtmpConnection
from tests.rtmp_client import RtmpTestClient
from tests.unit.handover_harness import Client, Handover, ServedWorker, Stepper, wait_until


def run(coro):
    return uvloop.run(asyncio.wait_for(coro, 60))


async def two_workers():
    return await ServedWorker().start(), await ServedWorker().start()


async def stream_on(worker: ServedWorker, name: str = "s", players: int = 2):
    publisher = await Client("publish", name).open(worker.rtmp_port)
    viewers = [await Client("play", name).open(worker.rtmp_port) for _ in range(players)]
    await wait_until(lambda: all(worker.conn_of(c.port) for c in [publisher, *viewers]), what="registered")
    return publisher, viewers


def served_by(client: Client, *workers: ServedWorker) -> list[int]:
    return [i for i, w in enumerate(workers) if w.conn_of(client.port) is not None]


async def media_flows(publisher: Client, viewers: list[Client]) -> None:
    """The publisher's next frames reach every viewer (the stream is not frozen)."""
    before = [v.media for v in viewers]
    publisher.send_frame(key=True)
    for _ in range(3):
        publisher.send_frame()
    await wait_until(lambda: all(v.media >= b + 4 for v, b in zip(viewers, before)), what="media after")


async def close_all(*workers: ServedWorker) -> None:
    for w in workers:
        await w.stop()


def test_a_stream_moves_whole_and_plays_on():
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        sent, received = await Handover(old, new).finish()
        assert (sent.handed_over, sent.failed, sent.streams, sent.broken) == (3, 0, 1, "")
        assert received.handed_over == 3
        for c in [publisher, *viewers]:
            assert served_by(c, old, new) == [1] and c.live
        source = new.worker.registry.sources["__defaultVhost__/live/s"]
        assert source.publisher is new.conn_of(publisher.port)
        assert not old.worker.registry.sources
        await media_flows(publisher, viewers)
        await close_all(old, new)
    run(main())


def test_an_early_player_hanging_up_as_its_stream_arrives_does_not_free_the_source():
    """Issue 10 item 1: a player on the new worker plays the moving stream, and hangs up the moment the
    source arrives, before the publisher is attached: the source was freed as idle, and every connection of
    the stream was then closed 'handed over without its source'."""
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        early = await Client("play", "s").open(new.rtmp_port)
        await wait_until(lambda: new.conn_of(early.port) is not None)
        adopt = new.worker.adopt_source

        def adopt_then_hang_up(source):
            adopt(source)
            conn = new.conn_of(early.port)
            if conn is not None:
                early.left = True
                conn.close("client closed the connection")      # the early player hangs up right then
        new.worker.adopt_source = adopt_then_hang_up
        await Handover(old, new).finish()
        for c in [publisher, *viewers]:
            assert c.live and served_by(c, old, new) == [1], "the handover closed a live client"
        assert new.worker.registry.sources["__defaultVhost__/live/s"].publisher is new.conn_of(publisher.port)
        assert not new.freed_pinned
        await media_flows(publisher, viewers)
        await close_all(old, new)
    run(main())


def test_an_flv_play_arriving_during_the_handover_waits_for_the_publisher_not_a_404():
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        handover = Handover(old, new, Stepper())
        reader, writer = await asyncio.open_connection("127.0.0.1", new.http_port)
        writer.write(b"GET /live/s.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        await handover.finish()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()
        await close_all(old, new)
    run(main())


def test_a_player_closing_between_the_quiesce_and_the_fd_duplication_never_freezes_its_stream(monkeypatch):
    """Issue 10 item 1 (the AttributeError 'NoneType' object has no attribute 'fileno'): a churn player
    gone after the quiesce. It is dropped from the batch; the rest of its stream moves and plays on."""
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old, players=3)
        quiesce = transfer._quiesce
        gone = viewers[0]

        async def quiesce_then_hang_up(conns):
            result = await quiesce(conns)
            conn = old.conn_of(gone.port)
            if conn is not None:
                gone.left = True
                conn.close("connection lost")     # as a reset seen while its buffer emptied
            return result
        monkeypatch.setattr(transfer, "_quiesce", quiesce_then_hang_up)
        sent, _ = await Handover(old, new).finish()
        assert sent.broken == ""
        for c in [publisher, *viewers[1:]]:
            assert c.live and served_by(c, old, new) == [1]
        await media_flows(publisher, viewers[1:])
        # and the next upgrade still works
        third = await ServedWorker().start()
        sent, _ = await Handover(new, third).finish()
        assert sent.handed_over == 3 and sent.broken == ""
        await media_flows(publisher, viewers[1:])
        await close_all(old, new, third)
    run(main())


def test_any_error_in_a_streams_handover_resumes_that_stream_here(monkeypatch):
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        monkeypatch.setattr(RtmpConnection, "snapshot", lambda self: 1 / 0)
        sent, _ = await Handover(old, new).finish()
        assert sent.failed == 3 and sent.handed_over == 0 and sent.broken == ""
        for c in [publisher, *viewers]:
            assert c.live and served_by(c, old, new) == [0]
        await media_flows(publisher, viewers)
        monkeypatch.undo()
        sent, _ = await Handover(old, new).finish()      # a later handover is not refused
        assert sent.handed_over == 3
        await close_all(old, new)
    run(main())


def test_a_batch_is_all_or_nothing_when_one_connection_cannot_be_restored(monkeypatch):
    """The receiver kept the connections it adopted before one failed and answered NAK; the sender resumed
    them all: a socket served by two processes."""
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        bad = old.conn_of(publisher.port).cid
        restore = RtmpConnection.restore.__func__

        def failing_restore(cls, worker, snap, *args):
            if snap["cid"] == bad:
                raise ValueError("cannot restore this one")
            return restore(cls, worker, snap, *args)
        monkeypatch.setattr(RtmpConnection, "restore", classmethod(failing_restore))
        sent, received = await Handover(old, new).finish()
        assert sent.handed_over == 0 and sent.failed == 3
        await asyncio.sleep(0.05)
        for c in [publisher, *viewers]:
            assert served_by(c, old, new) == [0], f"client {c.port} served by {served_by(c, old, new)}"
            assert c.live
        assert not new.worker.conns and "__defaultVhost__/live/s" not in new.worker.registry.sources
        await media_flows(publisher, viewers)
        await close_all(old, new)
    run(main())


def test_a_connection_that_cannot_resume_at_commit_is_reset_alone_never_read_by_two_workers(monkeypatch):
    """Past the commit's point of no return some of the batch may already be read by the new worker: a failure
    of one connection's resume (seen when code changed on disk under a starting worker) must not refuse the
    batch, or the sender resumes sockets the receiver reads too. The failing one is reset alone."""
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        bad = old.conn_of(viewers[0].port).cid
        resume = RtmpConnection.resume_takeover

        def failing_resume(self, rejoin=None):
            if self.cid == bad:
                raise AttributeError("a build skew")
            return resume(self, rejoin)
        monkeypatch.setattr(RtmpConnection, "resume_takeover", failing_resume)
        sent, received = await Handover(old, new).finish()
        assert received.lost == 1
        await asyncio.sleep(0.05)
        assert served_by(viewers[0], old, new) == []      # reset: served by no one, never by both
        for c in [publisher, viewers[1]]:
            assert served_by(c, old, new) == [1] and c.live
        await media_flows(publisher, [viewers[1]])
        await close_all(old, new)
    run(main())


async def idle_client(port: int, partial: int) -> socket.socket:
    """A client that connects, then leaves one message `partial` bytes into a larger one (held by the
    server's chunk decoder, so it is in the connection's snapshot)."""
    client = await RtmpTestClient().open(port)
    if partial:
        chunk = 128     # the server reads 128-byte chunks until the client announces another size
        size = partial + 1000
        header = bytes([0x04]) + (0).to_bytes(3, "big") + size.to_bytes(3, "big") + bytes([rtmp.MSG_VIDEO]) \
            + (1).to_bytes(4, "little")
        body = b"\x00" * partial
        out = header + body[:chunk]
        for i in range(chunk, partial, chunk):
            out += bytes([0xC4]) + body[i:i + chunk]
        client.writer.write(out)
        await client.writer.drain()
    return client


def test_frames_are_bounded_by_construction_and_an_oversized_connection_stays_behind_alone(monkeypatch):
    """Issue 10 item 2: idle clients holding partial messages made one frame over the cap; the handover
    broke. Now batches are bounded in bytes too, and one connection over the bound stays behind alone."""
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        # Scaled down: since the pre-identify caps (rtmp.MAX_PARTIAL_UNPUBLISHED, 32 KiB) a client that has not
        # published can hold no more than that, so the frame bounds are scaled below it.
        monkeypatch.setattr(wire, "MAX_PAYLOAD", 100_000)
        monkeypatch.setattr(transfer, "MAX_BATCH_BYTES", 50_000, raising=False)
        monkeypatch.setattr(transfer, "MAX_CONN_SNAPSHOT", 25_000, raising=False)
        monkeypatch.setattr(transfer, "LEFT_BEHIND_MAX_S", 0.3, raising=False)
        idle = [await idle_client(old.rtmp_port, 20_000) for _ in range(6)]
        huge = await idle_client(old.rtmp_port, 30_000)
        ports = [c.writer.get_extra_info("sockname")[1] for c in idle]
        huge_port = huge.writer.get_extra_info("sockname")[1]
        await wait_until(lambda: all(old.conn_of(p) is not None and old.conn_of(p).recv_bytes > 20_000
                                     for p in ports) and old.conn_of(huge_port) is not None
                         and old.conn_of(huge_port).recv_bytes > 30_000, what="partial messages held")
        sent, received = await Handover(old, new).finish()
        assert sent.broken == "" and sent.failed == 0 and sent.drained == 1
        assert sent.handed_over == 3 + 6
        for port in ports:
            assert old.conn_of(port) is None and new.conn_of(port) is not None
        for c in [publisher, *viewers]:
            assert c.live and served_by(c, old, new) == [1]
        await media_flows(publisher, viewers)
        started = time.monotonic()
        await wait_until(lambda: old.conn_of(huge_port) is None, timeout=5, what="the oversized one closed")
        print(f"left-behind connection closed {time.monotonic() - started:.2f}s after the handover")
        await close_all(old, new)
    run(main())


async def non_reading_viewer(worker: ServedWorker, name: str = "s") -> Client:
    """A viewer with a tiny receive buffer that stops reading after its play started."""
    viewer = Client("play", name)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", worker.rtmp_port))
    sock.setblocking(False)
    viewer.rtmp.reader, viewer.rtmp.writer = await asyncio.open_connection(sock=sock)
    viewer.rtmp.session.connect("live", f"rtmp://127.0.0.1:{worker.rtmp_port}/live")
    viewer.rtmp._flush()
    await viewer.rtmp.wait_for(lambda e: isinstance(e, rtmp.Connected))
    await viewer.rtmp.play(name)
    viewer.port = sock.getsockname()[1]
    viewer.rtmp.writer.transport.pause_reading()
    return viewer


def test_a_viewer_that_never_reads_does_not_hold_back_its_stream(monkeypatch):
    """Issue 10 item 6: the quiesce waited QUIESCE_TIMEOUT_S (2 s) for the whole stream. Now the stuck one is
    left behind alone once its buffer stops shrinking, and it is cut LEFT_BEHIND_MAX_S later."""
    async def main():
        monkeypatch.setattr(transfer, "LEFT_BEHIND_MAX_S", 0.5, raising=False)
        stuck_after_ms = getattr(transfer, "STUCK_AFTER_S", 0.1) * 1000     # (absent on c3acb38)
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        stuck = await non_reading_viewer(old)
        for _ in range(60):
            publisher.rtmp.send_media(rtmp.MSG_VIDEO, publisher.next_ts, b"\x27\x01\x00\x00\x00" + b"\x00" * 60_000)
            publisher.next_ts += 40
        await wait_until(lambda: old.conn_of(stuck.port) is not None
                         and old.conn_of(stuck.port).transport.get_write_buffer_size() > 0, what="a full buffer")
        await wait_until(lambda: all(v.media >= 60 for v in viewers), what="the healthy viewers read")
        sent, _ = await Handover(old, new).finish()
        stall_ms = sent.worst_ms
        print(f"stream stall with a never-reading viewer: {stall_ms:.1f} ms (the quiesce bound is "
              f"{transfer.QUIESCE_TIMEOUT_S * 1000:.0f} ms; a stuck writer is left after "
              f"{stuck_after_ms:.0f} ms)")
        # Measured 128-149 ms on 2 shared cores (STUCK_AFTER_S plus the move itself): the goal is 150 ms,
        # asserted with 3x. On c3acb38 it was the whole quiesce timeout, 2 s.
        assert stall_ms < 3 * 150, stall_ms
        assert sent.drained == 1 and sent.handed_over == 3
        for c in [publisher, *viewers]:
            assert c.live and served_by(c, old, new) == [1]
        await media_flows(publisher, viewers)
        started = time.monotonic()
        await wait_until(lambda: not old.worker.conns, timeout=5, what="the left-behind viewer cut")
        print(f"left-behind viewer cut {time.monotonic() - started:.2f}s after the handover "
              f"(LEFT_BEHIND_MAX_S=0.5 here, sweep every 1 s)")
        await close_all(old, new)
    run(main())


def test_a_player_that_joined_before_its_stream_arrived_moves_at_the_next_upgrade():
    """Found by reading the code: adopt_source moved consumer.source only, the handover selected by
    conn.source, so the early player stayed behind at the next upgrade."""
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        early = await Client("play", "s").open(new.rtmp_port)
        await Handover(old, new).finish()
        third = await ServedWorker().start()
        sent, _ = await Handover(new, third).finish()
        assert sent.handed_over == 4, sent.as_dict()
        for c in [publisher, early, *viewers]:
            assert c.live and served_by(c, old, new, third) == [2]
        await media_flows(publisher, [early, *viewers])
        await close_all(old, new, third)
    run(main())


def test_the_sender_carries_the_totals_it_is_given():
    async def main():
        old, new = await two_workers()
        await stream_on(old)
        _, received = await Handover(old, new, totals=lambda: {"accepted": 41}).finish()
        assert received.carried == {"accepted": 41}
        await close_all(old, new)
    run(main())


def test_the_handover_does_not_import_the_api_layer():
    code = ("import sys, nonstop.handover.transfer\n"
            "bad = sorted(m for m in sys.modules if m.startswith('nonstop.api'))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


class FakeConn:
    def __init__(self, size: int, closed: bool = False):
        self.size, self.closed = size, closed

    def snapshot(self):
        return b"x" * self.size


def test_batches_split_by_fd_count_and_bytes_and_pickle_one_frame_at_a_time():
    too_big: list = []
    sizes = [len(b) for b in transfer._lazy_batches([FakeConn(10) for _ in range(600)], too_big)]
    assert sizes == [253, 253, 94] and not too_big
    half = transfer.MAX_BATCH_BYTES // 2 + 1
    assert [len(b) for b in transfer._lazy_batches([FakeConn(half) for _ in range(3)], too_big)] == [1, 1, 1]
    huge, closed = FakeConn(transfer.MAX_CONN_SNAPSHOT + 1), FakeConn(10, closed=True)
    batches = list(transfer._lazy_batches([FakeConn(10), huge, closed, FakeConn(10)], too_big))
    assert [len(b) for b in batches] == [2] and too_big == [huge]
    pickled = []

    class Watched(FakeConn):
        def snapshot(self):
            pickled.append(self)
            return super().snapshot()
    gen = transfer._lazy_batches([Watched(10) for _ in range(300)], [])
    next(gen)
    assert len(pickled) == 254, "the second frame's snapshots are not built before the first is sent"

async def step_to(handover: Handover, phase: str) -> None:
    while True:
        assert await handover.step(), f"the handover ended before {phase}"
        if handover.stepper.phase[0] == phase:
            return


def test_a_kick_while_its_batch_is_in_flight_is_carried_to_the_new_worker():
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        handover = Handover(old, new, Stepper())
        await step_to(handover, "sent")
        viewers[0].kicked = True
        old.conn_of(viewers[0].port).kick("kicked during the handover")
        await handover.finish()
        await wait_until(lambda: viewers[0].server_closed, what="the kicked viewer to see the close")
        assert served_by(viewers[0], old, new) == []
        assert viewers[1].live and served_by(viewers[1], old, new) == [1]
        await media_flows(publisher, viewers[1:])
        await close_all(old, new)
    run(main())


def test_a_publisher_that_reconnects_to_the_new_worker_mid_handover_keeps_its_players():
    """The publisher drops and reconnects at once, landing on the new worker while its stream (with the old,
    unnoticed connection) is being moved: the players join the live stream; they are not stranded."""
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        handover = Handover(old, new, Stepper())
        await step_to(handover, "quiesced")
        await publisher.leave()                       # the old worker does not read it: it does not notice
        again = await Client("publish", "s").open(new.rtmp_port)
        sent, _ = await handover.finish()
        assert sent.failed == 0 and sent.broken == ""
        for v in viewers:
            assert v.live and served_by(v, old, new) == [1]
        source = new.worker.registry.sources["__defaultVhost__/live/s"]
        assert source.publisher is new.conn_of(again.port)
        await media_flows(again, viewers)
        await close_all(old, new)
    run(main())


def test_a_publisher_gone_during_the_quiesce_lets_its_players_move_to_wait_on_the_new_worker():
    async def main():
        old, new = await two_workers()
        publisher, viewers = await stream_on(old)
        handover = Handover(old, new, Stepper())
        await step_to(handover, "quiesced")
        publisher.left = True
        old.conn_of(publisher.port).close("connection lost")
        sent, _ = await handover.finish()
        assert sent.handed_over == 2 and sent.failed == 0
        for v in viewers:
            assert v.live and served_by(v, old, new) == [1]
        again = await Client("publish", "s").open(new.rtmp_port)
        await media_flows(again, viewers)
        await close_all(old, new)
    run(main())


def test_what_a_client_sends_while_its_batch_is_staged_is_acted_on_after_the_commit():
    """uvloop starts reading a taken-over socket whatever connection_made does: a play sent by an idle client
    while its batch was staged was acted on before the commit (a 'player' without a position: the batch was
    refused). Now it is held, and acted on once the batch is registered."""
    async def main():
        old, new = await two_workers()
        await stream_on(new)                            # the stream lives on the new worker already
        client = await RtmpTestClient().open(old.rtmp_port)
        port = client.writer.get_extra_info("sockname")[1]
        await wait_until(lambda: old.conn_of(port) is not None)
        handover = Handover(old, new, Stepper())
        await step_to(handover, "sent")                 # the idle batch is staged on the new worker
        client.session.create_stream()
        client.session.play(1, "s")
        client._flush()
        await client.writer.drain()
        await asyncio.sleep(0.05)
        sent, _ = await handover.finish()
        assert (sent.handed_over, sent.failed) == (1, 0), sent.as_dict()
        await client.wait_for(lambda e: isinstance(e, rtmp.Status) and e.code == "NetStream.Play.Start")
        conn = new.conn_of(port)
        assert conn is not None and conn.role == "play" and conn.source is \
            new.worker.registry.sources["__defaultVhost__/live/s"]
        await close_all(old, new)
    run(main())
