"""Live handover of sources and their connections from one worker process to another.

The sender goes stream by stream, so a publisher always moves together with its players (no split brain):
1. quiesce: stop reading from the publisher, stop feeding the players, wait (bounded) until each writer's
   transport buffer is empty, so its position is exact (architecture decision 4);
2. send the stream as one batch: its source's snapshot, then its connections' snapshots with their fds
   (SCM_RIGHTS), in as many frames as the bounds below need, then a commit;
3. on the receiver's acknowledgement of the commit, drop the connections without a FIN (the fd lives on in
   the receiver); on a refusal or an error, resume them here as if nothing happened.
Connections with no stream yet (handshaking, connected and idle RTMP; HTTP connections between two requests,
such as a keep-alive HLS player between polls) move last, in batches of their own. An HTTP request half read or
being answered is not moved: the old worker answers it (with `Connection: close`) and the connection drains.

Invariants of the handover (architecture.md), and where each is kept:

I1. A stream's source, publisher and players are one unit, moved in one all-or-nothing batch.
    `_stream_conns` reads the stream's members from the source itself (`Source.publisher`, the sinks of
    `Source.consumers`): the one list, so a player that joined before its stream arrived here is moved too.
    An HTTP connection holding an LL-HLS request is a member of the stream whose segmenter holds it
    (`HlsSessions.held_conns`): its request (method, path, query, deadline) moves as plain data in its snapshot
    and is answered, or held again until that deadline, by the receiver once the batch commits. While its batch
    is in flight neither side answers it: the segmenter's wake and the sweep skip a connection handing over.
    The stream's HLS viewers (hls_ctx sessions, counters and kicks) travel in the source's frame, plain data
    bounded by hls_http.MAX_SESSIONS_MOVED; the receiver merges them at the commit. Sessions beyond the bound,
    or from a sender without them, are adopted as new at their next request (the fallback).
I2. A source being received is pinned (never freed as idle, by `on_idle` or the sweep) until its publisher is
    attached or the stream is known to be gone. `_Receiver._commit` adopts the source pinned
    (`SourceRegistry.pin`) and releases it only after the batch's publisher was attached, or when the batch
    says it has none (the stream's publisher left: the stream is gone), or when that publisher closed.
I3. A batch is all or nothing: ACK = all moved, NAK = none moved. The receiver restores every connection of
    a batch (and its source) before it registers any (`_Receiver._stage`); at the commit it connects the
    sockets with reading paused, and only once all are connected registers and resumes them in one
    synchronous step. Any failure before that step undoes the staging (the fds are closed without a FIN:
    the sender still holds its own) and answers NAK. uvloop reads a socket as soon as its transport exists:
    a staged connection holds what it reads (RtmpConnection.data_received, HttpConnection.data_received: an HLS
    player's next request) and acts on it after the commit.
    The one way such bytes can be lost is a socket that cannot be connected at all (EBADF-like) in the same
    batch: the batch is then refused and what the others held is dropped with it.
I4. What moved is never killed because something later failed. A failed batch rolls back only itself; the
    sender reports how many connections moved (`HandoverStats.handed_over`), and once anything has moved the
    old worker keeps the new one (worker_main: no rollback, the master does not kill it) and drains the rest.
I5. A stuck writer never holds back its stream. The quiesce moves a stream as soon as every writer that makes
    progress has drained; a writer whose buffer did not shrink for STUCK_AFTER_S is left behind alone (it
    gets the unpublish notice, drains here, and is cut LEFT_BEHIND_MAX_S later: the old worker's exit is
    bounded even with `grace_max_wait 0`). A keep-alive HTTP connection still writing its last response is
    left behind the same way: it is closed with a FIN once its response went out, or cut at that bound.
I6. Frames are bounded by construction: a frame holds at most MAX_FDS_PER_FRAME fds and at most
    MAX_BATCH_BYTES of connection snapshots; a connection whose own snapshot is over MAX_CONN_SNAPSHOT stays
    behind alone (its stream stays too if it is the publisher); each snapshot is pickled on its own, so the
    sender never builds more than one batch's bytes at once; a source over wire.MAX_PAYLOAD stays. The source's
    frame carries at most hls_http.MAX_SESSIONS_MOVED HLS sessions (about 15 MB); a held HLS request adds its
    request head to its connection's snapshot (at most http_conn.MAX_REQUEST_HEAD).

A broken link (the receiver is gone) ends the handover; what was not acknowledged is still the sender's. If
the link breaks after a commit was sent but before its answer, the sender resumes the batch: the receiver
only closes the link by exiting, which closes its copies.

Test seam: `step`, an optional `async def step(phase, key)` given to hand_over_on/take_over_on, is awaited
between the phases ("quiesced", "sent", "committed", "kept"; "received", "staged", "committed" on the
receiver). It does nothing in production (None); tests/unit/test_handover_stateful.py interleaves client
actions with it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from nonstop.handover import wire
from nonstop.log import log
from nonstop.media.source import Source

ACK = b"K"
NAK = b"N"
# How long a stream's writers that make progress may take to empty before their stream moves without them.
QUIESCE_TIMEOUT_S = 2.0
# A writer whose unsent bytes did not shrink for this long is stuck (a viewer that does not read): it is left
# behind, and its stream moves without it. It bounds what one such viewer costs its stream at an upgrade.
STUCK_AFTER_S = 0.1
QUIESCE_POLL_S = 0.002
# A left-behind connection (stuck writer, too big a snapshot) has this long to drain on the old worker, then
# it is closed: the old worker's exit is bounded even with `grace_max_wait 0`. README: operations.
LEFT_BEHIND_MAX_S = 5.0
# Connection snapshots per frame, in bytes (pickled); a frame carries fewer if they are bigger.
MAX_BATCH_BYTES = 32 * 1024 * 1024
# One connection whose snapshot is bigger than this never moves (a client holding huge partial messages).
MAX_CONN_SNAPSHOT = 16 * 1024 * 1024 + 64 * 1024


class HandoverStats:
    def __init__(self):
        self.handed_over = 0
        self.failed = 0
        self.drained = 0
        self.streams = 0
        self.started = time.monotonic()
        self.worst_ms = 0.0
        # Seconds from the start of each moved connection's quiesce to the receiver's acknowledgement.
        self.per_conn_s: list[float] = []
        # The receiver: the sender's running totals, for worker.carried_totals; batches it refused.
        self.carried: dict | None = None
        self.refused = 0
        # The receiver: connections that moved but could not be resumed here, reset (see _commit).
        self.lost = 0
        # The sender: why the link broke (the receiver is gone), or "" if it did not.
        self.broken = ""

    @property
    def moved_any(self) -> bool:
        return self.handed_over > 0 or self.streams > 0

    def as_dict(self) -> dict:
        return {"handed_over": self.handed_over, "failed": self.failed, "drained": self.drained,
                "streams": self.streams, "total_ms": round((time.monotonic() - self.started) * 1000, 1),
                "worst_ms": round(self.worst_ms, 1), "broken": self.broken}


async def _call(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _no_step(phase: str, key: str) -> None:
    return None


class _LinkBroken(Exception):
    """The handover socket failed: the receiver is gone; stop the handover."""


class _Refused(Exception):
    """The receiver answered NAK: this batch did not move; the link is fine."""


class _Link:
    """The sender's end: one frame out, one answer back; any socket error breaks it for good."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    async def send(self, payload: bytes, fds: list[int]) -> None:
        if len(payload) > wire.MAX_PAYLOAD or len(fds) > wire.MAX_FDS_PER_FRAME:
            raise _Refused(f"a frame of {len(payload)} bytes and {len(fds)} fds is over the bounds")
        try:
            await _call(wire.send_payload, self.sock, payload, fds)
            answer = await _call(wire._recv_exact, self.sock, 1)
        except (OSError, EOFError, wire.HandoverError) as e:
            raise _LinkBroken(f"{e!r}") from e
        if answer != ACK:
            raise _Refused("the receiver refused the batch")

    async def send_obj(self, obj) -> None:
        await self.send(wire.dumps(obj), [])


# ----- the sender ---------------------------------------------------------------------------------------------


async def hand_over(worker, path: str, *, totals=None, step=None) -> HandoverStats:
    """Send every source with its publisher and players to the worker listening on `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await _call(sock.connect, path)
    return await hand_over_on(worker, sock, totals=totals, step=step)


async def hand_over_on(worker, sock: socket.socket, *, totals=None, step=None) -> HandoverStats:
    """Send every stream (I1), then the idle connections, on a connected (blocking) UNIX stream socket; it is
    closed at the end. `totals()` gives the running totals for the receiver to carry on (the caller owns
    them). Never raises: whatever did not move goes on here."""
    stats = HandoverStats()
    step = step or _no_step
    sock.setblocking(True)
    link = _Link(sock)
    # Connections with no stream yet stop reading first: one must not start playing or publishing here a
    # stream that has already moved (a player of an empty new source, a split brain). They move last.
    for conn in _idle(worker):
        conn.begin_handover()
    try:
        for source in list(worker.registry.sources.values()):
            if stats.broken:
                break
            if worker.registry.sources.get(source.key) is not source:
                continue    # freed while an earlier stream moved
            await _hand_over_stream(worker, link, source, stats, step)
        # RTMP connections with no stream yet (mid-handshake, or connected and idle) move too; their session
        # snapshot carries the handshake state. Refused ones finish closing here; HTTP requests in flight drain.
        if not stats.broken:
            await _hand_over_idle(worker, link, stats, step)
        if not stats.broken:
            carried = {}
            if totals is not None:
                try:
                    carried = totals()
                except Exception as e:  # totals are a nicety; the handover must not fail for them
                    log.warn("handover", f"cannot count the totals to carry over: {e!r}")
            try:
                await _call(wire.send_frame, sock, {"type": "done", "carried": carried}, [])
            except (OSError, wire.HandoverError) as e:
                stats.broken = f"cannot send the end of the handover: {e}"
    except Exception as e:  # never leave a stream frozen, nor the worker unable to upgrade again
        log.error("handover", f"handover stopped by an unexpected error: {e!r}")
        stats.broken = stats.broken or f"{e!r}"
    finally:
        sock.close()
        for conn in list(worker.conns.values()):      # whatever did not move goes on here
            if conn.handing_over and not conn.closed:
                conn.cancel_handover()
    return stats


def _idle(worker) -> list:
    return [c for c in list(worker.conns.values())
            if (c.kind == "rtmp" and not c.role and not c.closed and not c.close_reason)
            or (c.kind == "http" and c.between_requests() and not worker.access.asking(c.cid))]


def _stream_conns(worker, source: Source) -> list:
    """The stream's connections, from the source's own lists (I1): its publisher and the sinks of its
    consumers, those that are connections of this worker (an edge's ingester or forwarder stays)."""
    members = [source.publisher] + [c.sink for c in list(source.consumers)]
    if source.hls is not None:
        members += worker.hls_sessions.held_conns(source.hls)
    return [c for c in members if c is not None and worker.conns.get(getattr(c, "cid", None)) is c and not c.closed]


async def _quiesce(conns: list) -> tuple[list, list]:
    """Stop reading and feeding; wait until every writer that makes progress is empty (I5). A writer whose
    buffer did not shrink for STUCK_AFTER_S is stuck; QUIESCE_TIMEOUT_S bounds the whole wait.
    Returns (movable, stuck); connections that closed meanwhile are in neither."""
    now = time.monotonic()
    for conn in conns:
        conn.quiesced_at = now
        conn.begin_handover()
    deadline = now + QUIESCE_TIMEOUT_S
    last = {id(c): (c.transport.get_write_buffer_size(), now) for c in conns}
    stuck: set[int] = set()
    while True:
        now = time.monotonic()
        waiting = False
        for c in conns:
            if c.closed or id(c) in stuck:
                continue
            size = c.transport.get_write_buffer_size()
            if not size:
                continue
            before, since = last[id(c)]
            if size < before:
                last[id(c)] = (size, now)
            elif now - since >= STUCK_AFTER_S:
                stuck.add(id(c))
                continue
            waiting = True
        if not waiting or now >= deadline:
            break
        await asyncio.sleep(QUIESCE_POLL_S)
    movable = [c for c in conns if not c.closed and c.transport.get_write_buffer_size() == 0]
    left = [c for c in conns if not c.closed and c not in movable]
    return movable, left


def _leave_behind(conns: list, stats: HandoverStats, source_gone: bool) -> None:
    """I5: these stay here alone; they drain, bounded by LEFT_BEHIND_MAX_S."""
    deadline = time.monotonic() + LEFT_BEHIND_MAX_S
    for conn in conns:
        if not conn.closed:
            conn.leave_behind(deadline, source_gone)
            stats.drained += 1


def _lazy_batches(conns: list, too_big: list):
    """Frames' worth of (connection, pickled snapshot), each connection pickled only as its frame is built, so
    the sender never holds more than one frame of snapshots (I6): at most MAX_FDS_PER_FRAME connections and
    MAX_BATCH_BYTES. A connection whose own snapshot is over MAX_CONN_SNAPSHOT goes to `too_big` (it stays
    behind alone); closed ones are skipped."""
    batch, size = [], 0
    for conn in conns:
        if conn.closed:
            continue
        data = wire.dumps(conn.snapshot())
        if len(data) > MAX_CONN_SNAPSHOT:
            too_big.append(conn)
            continue
        if batch and (len(batch) >= wire.MAX_FDS_PER_FRAME or size + len(data) > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((conn, data))
        size += len(data)
    if batch:
        yield batch


async def _send_batch(link: _Link, source_payload: bytes | None, batches, publisher, too_big: list, key: str,
                      step) -> list:
    """One all-or-nothing batch (I3): [source], conns frames, commit. Returns the connections sent; raises
    _Refused or _LinkBroken. A connection that closed before its frame went out is left out of it (churn);
    its fd is duplicated in the same loop step as that check, so it cannot close in between."""
    if source_payload is not None:
        await link.send(source_payload, [])
    sent = []
    for batch in batches:
        if publisher is not None and publisher in too_big:
            raise _Refused("its publisher's snapshot is too big to move")
        alive = [(conn, data) for conn, data in batch if not conn.closed and conn.transport is not None
                 and conn.transport.get_extra_info("socket") is not None]
        if not alive:
            continue
        fds = [os.dup(conn.fileno()) for conn, _ in alive]
        try:
            await link.send(wire.dumps({"type": "conns", "conns": [data for _, data in alive]}), fds)
        finally:
            for fd in fds:
                os.close(fd)   # the receiver has its own copies, or none: either way no FIN is sent
        sent.extend(conn for conn, _ in alive)
    if publisher is not None and publisher in too_big:
        raise _Refused("its publisher's snapshot is too big to move")
    if not sent and source_payload is None:
        return sent
    await step("sent", key)
    await link.send_obj({"type": "commit", "publisher": publisher.cid if publisher in sent else None})
    return sent


async def _abort(link: _Link) -> None:
    """Tell the receiver to drop what it staged of this batch (it also does so at the next batch)."""
    try:
        await link.send_obj({"type": "abort"})
    except (_Refused, _LinkBroken):
        pass


async def _hand_over_stream(worker, link: _Link, source: Source, stats: HandoverStats, step) -> None:
    """One stream at a message boundary: its source, publisher and players in one batch (I1, I3)."""
    started = time.monotonic()
    conns = _stream_conns(worker, source)
    # Its players are detached while it moves: a publisher leaving meanwhile must not free it as idle, or the
    # players resumed after a refusal would play a source nobody can find (I2 on the sending side).
    worker.registry.pin(source)
    movable, stuck = await _quiesce(conns)
    await step("quiesced", source.key)
    publisher = source.publisher if source.publisher in conns else None
    try:
        if publisher is not None and publisher in stuck:
            # Its session's position would be lost with the unsent bytes: the stream stays, whole.
            raise _Refused("its publisher's buffer did not empty")
        # The stream's members as they are now: churn closed some while we waited (never dup a closed one).
        # A publisher that left meanwhile: the stream moves without one (its players wait there for it).
        movable = [c for c in movable if not c.closed]
        if publisher is not None and publisher not in movable:
            publisher = None
        too_big: list = []
        sessions = worker.hls_sessions.snapshot_for(source.vhost, source.app, source.stream)
        source_payload = wire.dumps({"type": "source", "source": source.snapshot(), "hls_sessions": sessions})
        if len(source_payload) > wire.MAX_PAYLOAD:
            raise _Refused(f"its source's snapshot of {len(source_payload)} bytes is over {wire.MAX_PAYLOAD}")
        # The publisher goes last: the receiver resumes reading from it last, so a keyframe cannot trim the
        # log before the players it brings are attached.
        movable.sort(key=lambda conn: conn is publisher)
        moved = await _send_batch(link, source_payload, _lazy_batches(movable, too_big), publisher, too_big,
                                  source.key, step)
    except _LinkBroken as e:
        stats.broken = str(e)
        _keep_stream(worker, source, conns, stats, f"the link broke: {e}")
        return
    except _Refused as e:
        await _abort(link)
        _keep_stream(worker, source, conns, stats, str(e))
        await step("kept", source.key)
        return
    except Exception as e:  # an unexpected error in one stream must never freeze it (I4, I5)
        log.error("handover", f"handover of {source.key} hit an error: {e!r}")
        await _abort(link)
        _keep_stream(worker, source, conns, stats, f"{e!r}")
        await step("kept", source.key)
        return
    await _finish_batch(link, moved, stats)
    stats.streams += 1
    # Players whose buffer did not empty, or too big to move, stay here alone; the source went away.
    _leave_behind([c for c in stuck + too_big if not c.closed], stats, source_gone=True)
    worker.registry.moved_away(source)
    worker.hls_sessions.moved_away(sessions)    # the receiver has them, and owes their on_stop now
    elapsed = (time.monotonic() - started) * 1000
    stats.worst_ms = max(stats.worst_ms, elapsed)
    left = len(stuck) + len(too_big)
    log.trace("handover", f"handed over {source.key}: {len(moved)} conns in {elapsed:.1f} ms"
                          + (f", {left} left to drain" if left else ""))
    await step("committed", source.key)


async def _finish_batch(link: _Link, moved: list, stats: HandoverStats) -> None:
    """The receiver holds the batch now: let go of it here. A connection this worker closed while its batch
    was in flight (a kick, a reset seen while writing) lives on in the receiver's copy of the socket: tell the
    receiver to close it too, so a kick during a handover is not undone by it."""
    now = time.monotonic()
    closed = [conn.cid for conn in moved if conn.closed]
    for conn in moved:
        stats.per_conn_s.append(now - getattr(conn, "quiesced_at", now))
        conn.finish_handover()
    stats.handed_over += len(moved)
    if closed:
        try:
            await link.send_obj({"type": "close", "cids": closed})
        except _Refused:
            pass
        except _LinkBroken as e:
            stats.broken = str(e)


def _keep_stream(worker, source: Source, conns: list, stats: HandoverStats, why: str) -> None:
    log.warn("handover", f"handover of {source.key} failed, keeping it here: {why}")
    kept = [c for c in conns if not c.closed]
    for conn in kept:
        conn.cancel_handover()
    stats.failed += len(kept)
    worker.registry.unpin(source)


async def _hand_over_idle(worker, link: _Link, stats: HandoverStats, step) -> None:
    """Connections with no stream: no source to keep consistent, so each bounded batch moves on its own."""
    conns = [c for c in _idle(worker) if c.handing_over]
    movable, stuck = await _quiesce(conns)
    await step("quiesced", "")
    too_big: list = []
    for batch in _lazy_batches(movable, too_big):
        try:
            moved = await _send_batch(link, None, [batch], None, too_big, "", step)
        except _LinkBroken as e:
            stats.broken = str(e)
            _keep_idle(batch, stats, f"the link broke: {e}")
            break
        except Exception as e:  # _Refused or unexpected: this batch stays, the next may go
            if not isinstance(e, _Refused):
                log.error("handover", f"handover of idle connections hit an error: {e!r}")
            await _abort(link)
            _keep_idle(batch, stats, str(e))
            continue
        await _finish_batch(link, moved, stats)
        await step("committed", "")
    _leave_behind(stuck + too_big, stats, source_gone=False)


def _keep_idle(batch: list, stats: HandoverStats, why: str) -> None:
    log.warn("handover", f"handover of {len(batch)} idle connections failed, keeping them here: {why}")
    for conn, _ in batch:
        if not conn.closed:
            conn.cancel_handover()
            stats.failed += 1


# ----- the receiver -------------------------------------------------------------------------------------------


async def take_over(worker, path: str, *, step=None) -> HandoverStats:
    """Listen on `path`, accept one sender and adopt what it sends until it says done."""
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        sock, _ = await _call(listener.accept)
    finally:
        listener.close()
    return await take_over_on(worker, sock, step=step)


async def take_over_on(worker, sock: socket.socket, *, step=None) -> HandoverStats:
    """Adopt what the sender sends on a connected UNIX stream socket until it says done (or goes away: what
    was not committed is still the sender's). The socket is closed at the end."""
    receiver = _Receiver(worker, step or _no_step)
    sock.setblocking(True)
    try:
        while True:
            version, frame, fds = await _call(wire.recv_frame, sock)
            if frame is None:
                log.warn("handover", f"refusing handover frame of schema {version}; this build reads "
                                     f"{sorted(wire.READABLE_SCHEMAS)}")
                for fd in fds:
                    os.close(fd)
                receiver.drop_staged()
                receiver.stats.refused += 1
                await _call(sock.sendall, NAK)
                continue
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "done":
                receiver.drop_staged()
                receiver.stats.carried = frame.get("carried") or {}
                break
            ok = await receiver.on_frame(kind, frame, fds)
            await _call(sock.sendall, ACK if ok else NAK)
    except (OSError, EOFError, wire.HandoverError) as e:
        log.warn("handover", f"handover receive ended: {e}")
    finally:
        receiver.drop_staged()
        sock.close()
    log.trace("handover", f"took over {receiver.stats.handed_over} connections"
                          + (f", {receiver.stats.lost} of them reset: they could not be resumed" if receiver.stats.lost
                             else ""))
    return receiver.stats


class _Receiver:
    """The staging of one batch (I3): restored objects and their sockets, registered only at the commit."""

    def __init__(self, worker, step):
        self.worker = worker
        self.step = step
        self.stats = HandoverStats()
        self.source: Source | None = None
        self.sessions: list = []        # the source's HLS sessions (plain data), merged at the commit
        self.staged: list = []          # [(conn, socket)]
        self.failed = False             # a frame of this batch was refused: refuse until the next batch

    def drop_staged(self) -> None:
        """Undo a batch that will not commit: close our copies of its fds (the sender holds its own, so no
        FIN reaches a client) and forget the restored objects, which were never registered."""
        for _, sock in self.staged:
            sock.close()
        self.staged = []
        self.source = None
        self.sessions = []
        self.failed = False

    async def on_frame(self, kind, frame: dict, fds: list[int]) -> bool:
        if kind in ("source", "abort"):
            self.drop_staged()          # a new batch starts: what an unfinished one staged goes
        if kind == "abort":
            for fd in fds:
                os.close(fd)
            return True
        if self.failed:
            for fd in fds:
                os.close(fd)
            return False
        try:
            if kind == "source":
                self.source = Source.restore(frame["source"], time.monotonic())
                self.sessions = list(frame.get("hls_sessions") or [])
                self.worker.hls_sessions.check(self.sessions)    # refused now, whole, not half-merged later
                await self.step("received", self.source.key)
            elif kind == "conns":
                self._stage(frame["conns"], fds)
                await self.step("staged", self.source.key if self.source else "")
            elif kind == "close":
                for cid in frame["cids"]:
                    conn = self.worker.conns.get(cid)
                    if conn is not None:
                        conn.close("closed by the old worker while it was handed over")
            elif kind == "commit":
                ok = await self._commit(frame.get("publisher"))
                if ok:
                    await self.step("committed", "")
                return ok
            else:
                raise wire.HandoverError(f"unknown handover frame {kind!r}")
        except Exception as e:  # a state we cannot restore must not take the worker down
            log.error("handover", f"cannot adopt handover frame {kind}: {e!r}")
            self.drop_staged()
            self.failed = True
            self.stats.refused += 1
            return False
        return True

    def _stage(self, snaps: list, fds: list[int]) -> None:
        if len(snaps) != len(fds):
            for fd in fds:
                os.close(fd)
            raise wire.HandoverError(f"{len(snaps)} connections with {len(fds)} fds")
        socks = [socket.socket(fileno=fd) for fd in fds]     # owned now: closed by drop_staged if need be
        start = len(self.staged)
        self.staged.extend((None, sock) for sock in socks)
        for i, data in enumerate(snaps):
            self.staged[start + i] = (self.worker.restore_connection(wire.loads(data), self.source), socks[i])

    async def _commit(self, publisher_cid) -> bool:
        """Connect every staged socket (reading paused), then register the source and every connection in one
        synchronous step (I3), the source pinned until its publisher is attached (I2)."""
        staged, source, sessions = self.staged, self.source, self.sessions
        self.staged, self.source, self.sessions = [], None, []
        loop = asyncio.get_running_loop()
        connected = []
        try:
            for conn, sock in staged:
                sock.setblocking(False)
                await loop.connect_accepted_socket(lambda c=conn: c, sock=sock)
                connected.append(conn)
        except Exception as e:
            log.error("handover", f"cannot take over a connection: {e!r}; refusing its batch")
            for conn in connected:
                conn.abandon_takeover()
            for conn, sock in staged[len(connected):]:
                sock.close()
            self.stats.refused += 1
            return False
        # From here on nothing awaits: the batch is registered whole.
        registry = self.worker.registry
        rejoin = None
        if source is not None:
            existing = registry.sources.get(source.key)
            if existing is not None and existing.publisher is not None:
                # Its publisher reconnected here during the upgrade (or a second one came): the stream is live
                # here. The batch's players join it from its latest keyframe; a publisher in the batch is
                # closed as a second publisher of a busy stream (RtmpConnection.resume_takeover).
                rejoin = existing
        if source is not None and rejoin is None:
            registry.pin(source)        # before adopting: an early player may hang up as it moves over
            try:
                self.worker.adopt_source(source)
            except Exception as e:      # nothing resumed yet: the batch can still be refused whole (I3)
                log.error("handover", f"cannot adopt the source {source.key}: {e!r}; refusing its batch")
                registry.unpin(source)
                registry.remove(source)
                for conn in connected:
                    conn.abandon_takeover()
                self.stats.refused += 1
                return False
        self.worker.hls_sessions.restore(self.worker, sessions)    # checked when received: cannot fail
        attached = False
        for conn in connected:
            # Past the point of no return (I3): some of the batch may already read here, so the batch is
            # acknowledged whatever happens next. A connection that cannot be resumed (a bug, or code changed
            # on disk under the new worker) is reset here, alone, with a log line: a lost client, never a
            # socket read by two processes.
            try:
                conn.resume_takeover(rejoin)
            except Exception as e:
                log.error("handover", f"cannot resume {conn.cid} after its handover: {e!r}; resetting it")
                self.stats.lost += 1
                try:
                    conn.close(f"cannot resume after the handover: {e!r}", abort=True)
                except Exception:
                    conn.transport.abort()
                continue
            if conn.cid == publisher_cid and not conn.closed:
                attached = True
        self.stats.handed_over += len(connected)
        if source is not None and rejoin is None:
            # I2: the publisher is attached, or the stream has none (gone, or an edge's upstream that the
            # cluster re-establishes): either way the pin has done its work.
            registry.unpin(source)
            if attached:
                self.worker.retry_waiting_flv(source.key)
        return True
