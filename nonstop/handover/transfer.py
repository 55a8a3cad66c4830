"""Live handover of sources and their connections from one worker process to another.

The sender goes stream by stream, so a publisher always moves together with its players (no split brain):
1. quiesce: stop reading from the publisher, stop feeding the players, wait (bounded) until each player's
   transport buffer is empty, so its position is exact (architecture decision 4);
2. send the source's snapshot, then the connections' snapshots with their fds (SCM_RIGHTS, <= 253 a frame);
3. on the receiver's acknowledgement, drop the connections without a FIN (the fd lives on in the receiver);
   on a refusal or an error, resume them here as if nothing happened.
A player whose buffer did not empty in time stays here and drains.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from nonstop.api.metrics import worker_totals
from nonstop.handover import wire
from nonstop.log import log
from nonstop.media.source import Source

ACK = b"K"
NAK = b"N"
# How long a player's transport may take to empty before it is left to drain on the old worker instead.
QUIESCE_TIMEOUT_S = 2.0
QUIESCE_POLL_S = 0.002


class HandoverStats:
    def __init__(self):
        self.handed_over = 0
        self.failed = 0
        self.drained = 0
        self.started = time.monotonic()
        self.worst_ms = 0.0
        # Seconds from the start of each moved connection's quiesce to the receiver's acknowledgement.
        self.per_conn_s: list[float] = []
        # The receiver: the sender's running totals, for worker.carried_totals.
        self.carried: dict | None = None
        # The sender: why the socket broke (the receiver is gone), or "" if it did not.
        self.broken = ""

    def as_dict(self) -> dict:
        return {"handed_over": self.handed_over, "failed": self.failed, "drained": self.drained,
                "total_ms": round((time.monotonic() - self.started) * 1000, 1), "worst_ms": round(self.worst_ms, 1)}


async def _call(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _recv_ack(sock: socket.socket) -> bytes:
    return wire._recv_exact(sock, 1)


async def hand_over(worker, path: str) -> HandoverStats:
    """Send every source with its publisher and players to the worker listening on `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await _call(sock.connect, path)
    return await hand_over_on(worker, sock)


async def hand_over_on(worker, sock: socket.socket) -> HandoverStats:
    """Send every source with its publisher and players, then the idle connections, on a connected (blocking)
    UNIX stream socket; it is closed at the end."""
    stats = HandoverStats()
    sock.setblocking(True)
    # Connections with no stream yet stop reading first: one must not start playing or publishing here a
    # stream that has already moved (a player of an empty new source, a split brain). They move last.
    for conn in _idle(worker):
        conn.begin_handover()
    try:
        for source in list(worker.registry.sources.values()):
            if stats.broken:
                break
            conns = [c for c in list(worker.conns.values()) if c.source is source and c.role and not c.closed]
            await _hand_over_stream(worker, sock, source, conns, stats)
        # RTMP connections with no stream yet (mid-handshake, or connected and idle) move too; their session
        # snapshot carries the handshake state. Refused ones finish closing here; HTTP requests in flight drain.
        if not stats.broken:
            await _hand_over_conns(sock, _idle(worker), stats)
        if not stats.broken:
            try:
                await _call(wire.send_frame, sock, {"type": "done", "carried": _totals(worker)}, [])
            except OSError as e:
                stats.broken = f"cannot send the end of the handover: {e}"
    finally:
        sock.close()
        for conn in _idle(worker):      # whatever did not move goes on here
            if conn.handing_over:
                conn.cancel_handover()
    return stats


def _idle(worker) -> list:
    return [c for c in list(worker.conns.values())
            if c.kind == "rtmp" and not c.role and not c.closed and not c.close_reason]


def _totals(worker) -> dict:
    """This worker's running totals (with what it carried itself) for the receiver to carry on: what moved was
    already forgotten here without counting, and moved connections bring their own counters."""
    try:
        return worker_totals(worker)
    except Exception as e:  # totals are a nicety; the handover must not fail for them
        log.warn("handover", f"cannot count the totals to carry over: {e!r}")
        return {}


async def _quiesce(conns: list) -> tuple[list, list]:
    """Stop reading and feeding; wait (bounded) for each transport to empty. Returns (movable, stuck)."""
    now = time.monotonic()
    for conn in conns:
        conn.quiesced_at = now
        conn.begin_handover()
    deadline = time.monotonic() + QUIESCE_TIMEOUT_S
    while any(c.transport.get_write_buffer_size() for c in conns if not c.closed) and time.monotonic() < deadline:
        await asyncio.sleep(QUIESCE_POLL_S)
    movable = [c for c in conns if not c.closed and c.transport.get_write_buffer_size() == 0]
    stuck = [c for c in conns if not c.closed and c not in movable]
    return movable, stuck


async def _send_conns(sock, conns: list, stats: HandoverStats) -> None:
    """Send connections in batches of at most MAX_FDS_PER_FRAME; each acknowledged batch is dropped here.
    Raises on a refusal or an error; the connections not yet acknowledged are still ours then."""
    for i in range(0, len(conns), wire.MAX_FDS_PER_FRAME):
        batch = conns[i:i + wire.MAX_FDS_PER_FRAME]
        fds = [os.dup(c.fileno()) for c in batch]
        try:
            await _call(wire.send_frame, sock, {"type": "conns", "conns": [c.snapshot() for c in batch]}, fds)
        finally:
            for fd in fds:
                os.close(fd)   # the receiver has its own copies, or none: either way no FIN is sent
        if await _call(_recv_ack, sock) != ACK:
            raise wire.HandoverError("receiver refused the connections")
        now = time.monotonic()
        for conn in batch:
            stats.per_conn_s.append(now - getattr(conn, "quiesced_at", now))
            conn.finish_handover()
        stats.handed_over += len(batch)


async def _hand_over_stream(worker, sock, source: Source, conns: list, stats: HandoverStats) -> None:
    """One stream at a message boundary: its source first, then its publisher and players together."""
    started = time.monotonic()
    movable, stuck = await _quiesce(conns)
    # The publisher goes last: the receiver resumes reading from it at once, and a keyframe then trims the
    # source's log down to what its *attached* players still need. Players restored after that would find
    # their next message trimmed away and be cut back (a hole of the merge interval, seen with 500 players).
    movable.sort(key=lambda c: c.role == "publish")
    try:
        await _call(wire.send_frame, sock, {"type": "source", "source": source.snapshot()}, [])
        if await _call(_recv_ack, sock) != ACK:
            raise wire.HandoverError("receiver refused the source")
        await _send_conns(sock, movable, stats)
    except (OSError, EOFError, wire.HandoverError) as e:
        log.warn("handover", f"handover of {source.key} failed, keeping it here: {e}")
        if not isinstance(e, wire.HandoverError):
            stats.broken = f"{e!r}"
        remaining = [c for c in movable if not c.closed]
        for conn in remaining + stuck:
            conn.cancel_handover()
        stats.failed += len(remaining)
        return
    # Players whose buffer did not empty stay here; the source went away, so they drain and end.
    for conn in stuck:
        conn.cancel_handover()
        conn.on_source_unpublish()
        stats.drained += 1
    worker.registry.remove(source)
    elapsed = (time.monotonic() - started) * 1000
    stats.worst_ms = max(stats.worst_ms, elapsed)
    log.trace("handover", f"handed over {source.key}: {len(movable)} conns in {elapsed:.1f} ms"
                          + (f", {len(stuck)} left to drain" if stuck else ""))


async def _hand_over_conns(sock, conns: list, stats: HandoverStats) -> None:
    """Connections with no stream: no source to keep consistent, so any batch may move on its own."""
    movable, stuck = await _quiesce(conns)
    for conn in stuck:
        conn.cancel_handover()
    try:
        await _send_conns(sock, movable, stats)
    except (OSError, EOFError, wire.HandoverError) as e:
        log.warn("handover", f"handover of idle connections failed, keeping them here: {e}")
        if not isinstance(e, wire.HandoverError):
            stats.broken = f"{e!r}"
        remaining = [c for c in movable if not c.closed]
        for conn in remaining:
            conn.cancel_handover()
        stats.failed += len(remaining)


async def take_over(worker, path: str) -> HandoverStats:
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
    return await take_over_on(worker, sock)


async def take_over_on(worker, sock: socket.socket) -> HandoverStats:
    """Adopt what the sender sends on a connected UNIX stream socket until it says done (or goes away: what
    was not acknowledged is still the sender's). The socket is closed at the end."""
    stats = HandoverStats()
    sock.setblocking(True)
    try:
        while True:
            version, frame, fds = await _call(wire.recv_frame, sock)
            if frame is None:
                log.warn("handover", f"refusing handover frame of schema {version}; this build reads "
                                     f"{sorted(wire.READABLE_SCHEMAS)}")
                for fd in fds:
                    os.close(fd)
                await _call(sock.sendall, NAK)
                continue
            kind = frame.get("type")
            if kind == "done":
                stats.carried = frame.get("carried") or {}
                break
            adopted = 0
            try:
                if kind == "source":
                    worker.adopt_source(Source.restore(frame["source"], time.monotonic()))
                elif kind == "conns":
                    for snap, fd in zip(frame["conns"], fds):
                        await worker.adopt_connection(snap, fd)
                        adopted += 1
                    stats.handed_over += adopted
            except Exception as e:  # a state we cannot restore must not take the worker down
                log.error("handover", f"cannot adopt handover frame {kind}: {e!r}")
                for fd in fds[adopted:]:
                    os.close(fd)   # the sender still holds its own fd: no FIN reaches the client
                await _call(sock.sendall, NAK)
                continue
            await _call(sock.sendall, ACK)
    except (OSError, EOFError, wire.HandoverError) as e:
        log.warn("handover", f"handover receive ended: {e}")
    finally:
        sock.close()
    log.trace("handover", f"took over {stats.handed_over} connections")
    return stats
