"""What the API derives from the objects that own the numbers: 30-second kbps, and per-stream byte totals.

Nothing here runs in the media path. The connections and sources own their counters (bytes sent and
received, frames); a one-second tick of the API reads them and keeps, per object, a few samples (a RateSampler)
so that `kbps.recv_30s` and `kbps.send_30s` can be answered, and a Ledger that keeps a stream's byte totals
growing when its clients leave (SRS's stream `send_bytes` counts every client it ever had). The per-client pass
runs every SAMPLE_STEP_S (every fifth tick), the process CPU meters every tick.

SRS refreshes its 30 s rate once every 30 s, so a new client shows 0 for half a minute; we keep a sample every
SAMPLE_STEP_S and answer with the rate over the last 30 to 35 s, or over what there is for a younger object.
"""

from __future__ import annotations

from dataclasses import dataclass

# The rate window SRS reports (`recv_30s`, `send_30s`).
RATE_WINDOW_S = 30.0
# One sample every 5 s: 7 samples per object cover the window, a few hundred bytes even with 10k players.
# The client pass (ApiStats.tick) runs at this pace too: it costs ~2 ms per 1000 clients, and a leaving client's
# bytes since the last pass (at most this long) are the only thing a stream's totals miss.
SAMPLE_STEP_S = 5.0
# Ticks are not exactly SAMPLE_STEP_S apart: a sample that comes this much early still counts as due.
SAMPLE_SLACK_S = 0.5
# Below this much history a rate is noise: answer 0, as SRS does for a new client.
MIN_RATE_SPAN_S = 1.0


class RateSampler:
    """Samples (time, sent, received) of one object's monotonic byte counters, for a rate over ~30 s."""

    __slots__ = ("points",)

    def __init__(self):
        self.points: list[tuple[float, int, int]] = []

    def sample(self, now: float, send: int, recv: int) -> None:
        points = self.points
        if not points or now - points[-1][0] >= SAMPLE_STEP_S - SAMPLE_SLACK_S:
            points.append((now, send, recv))
        # Keep exactly one sample at least RATE_WINDOW_S old: the start of the window.
        while len(points) > 1 and now - points[1][0] >= RATE_WINDOW_S:
            del points[0]

    def kbps(self, now: float, send: int, recv: int) -> dict:
        """{'recv_30s': kbps, 'send_30s': kbps} from the oldest kept sample to the counters now."""
        if not self.points:
            return {"recv_30s": 0, "send_30s": 0}
        then, send0, recv0 = self.points[0]
        span = now - then
        if span < MIN_RATE_SPAN_S:
            return {"recv_30s": 0, "send_30s": 0}
        return {"recv_30s": max(0, int((recv - recv0) * 8 / 1000 / span)),
                "send_30s": max(0, int((send - send0) * 8 / 1000 / span))}


def zero_kbps() -> dict:
    return {"recv_30s": 0, "send_30s": 0}


@dataclass
class GroupTotals:
    """A stream's (or vhost's) clients now and its bytes ever, as the API shows them."""
    clients: int = 0
    send_bytes: int = 0
    recv_bytes: int = 0
    tc_url: str = ""
    streams: int = 0        # for a vhost: how many of its streams are listed


class Ledger:
    """Byte totals of groups (streams) whose members (clients) come and go.

    A group's total is what its departed members carried while in it, plus what its present members sent
    and received since they joined it. Members are observed once a tick as `live`: {cid: (group, send, recv)}
    with monotonic counters; a member that left between two ticks is counted with its last observed bytes,
    so at most one tick of a leaving client's bytes is missed.
    """

    def __init__(self):
        self.departed: dict[str, list[int]] = {}     # group -> [send, recv]
        # cid -> [group, base_send, base_recv, last_send, last_recv]: base is the counter when it joined.
        self.members: dict[str, list] = {}

    def totals(self, live: dict[str, tuple[str, int, int]]) -> dict[str, GroupTotals]:
        """The groups' totals with the counters now, without changing what the ledger remembers."""
        out: dict[str, GroupTotals] = {}
        for group, (send, recv) in self.departed.items():
            out[group] = GroupTotals(send_bytes=send, recv_bytes=recv)
        for cid, member in self.members.items():
            now = live.get(cid)
            if now is None or now[0] != member[0]:
                # Left, or moved to another group: the old group keeps what it carried there.
                acc = out.setdefault(member[0], GroupTotals())
                acc.send_bytes += member[3] - member[1]
                acc.recv_bytes += member[4] - member[2]
        for cid, (group, send, recv) in live.items():
            base_send, base_recv = self._base(cid, group)
            acc = out.setdefault(group, GroupTotals())
            acc.clients += 1
            acc.send_bytes += send - base_send
            acc.recv_bytes += recv - base_recv
        return out

    def commit(self, live: dict[str, tuple[str, int, int]], alive_groups) -> dict[str, list[int]]:
        """The tick: remember the members as they are now. Groups no longer in `alive_groups` and with no
        member are forgotten; their final [send, recv] are returned (a vhost keeps counting them)."""
        for cid, member in list(self.members.items()):
            now = live.get(cid)
            if now is None or now[0] != member[0]:
                acc = self.departed.setdefault(member[0], [0, 0])
                acc[0] += member[3] - member[1]
                acc[1] += member[4] - member[2]
                if now is None:
                    del self.members[cid]
                else:
                    member[0], member[1], member[2] = now[0], member[3], member[4]
        for cid, (group, send, recv) in live.items():
            member = self.members.get(cid)
            if member is None:
                # First seen: everything it did so far (handshake, connect) counts for this group.
                self.members[cid] = [group, 0, 0, send, recv]
            else:
                member[3], member[4] = send, recv
        member_groups = {member[0] for member in self.members.values()}
        retired = {}
        for group in [g for g in self.departed if g not in alive_groups and g not in member_groups]:
            retired[group] = self.departed.pop(group)
        return retired

    def _base(self, cid: str, group: str) -> tuple[int, int]:
        member = self.members.get(cid)
        if member is None:
            return 0, 0
        if member[0] == group:
            return member[1], member[2]
        return member[3], member[4]     # moved since the last tick: it joined this group about then


# ----- clients, as SRS's API lists them ----------------------------------------------------------------------

TYPE_RTMP_PLAY = "rtmp-play"
TYPE_FMLE_PUBLISH = "fmle-publish"
TYPE_FLASH_PUBLISH = "flash-publish"
TYPE_FLV_PLAY = "flv-play"
TYPE_HLS_PLAY = "hls-play"
CLIENT_TYPES = (TYPE_RTMP_PLAY, TYPE_FMLE_PUBLISH, TYPE_FLASH_PUBLISH, TYPE_FLV_PLAY, TYPE_HLS_PLAY)


def client_objects(worker) -> list:
    """What can be a client: the connections, and the HLS viewers (sessions by hls_ctx, not connections)."""
    hls = getattr(worker, "hls_sessions", None)
    return list(worker.conns.values()) + (hls.clients() if hls is not None else [])


def client_type(conn) -> str | None:
    """SRS's client type of a connection, or None when it is not (or no longer) a client of a stream.

    As in SRS, a connection becomes a client when it publishes or plays: one still in its handshake, or an
    RTMP connection between streams, is not listed (it still counts in /metrics' connections)."""
    if getattr(conn, "source", None) is None or getattr(conn, "closed", False):
        return None
    role = getattr(conn, "role", "")
    if getattr(conn, "kind", "") == "hls":
        return TYPE_HLS_PLAY
    if getattr(conn, "kind", "") == "rtmp":
        if role == "play":
            return TYPE_RTMP_PLAY
        if role == "publish":
            return TYPE_FMLE_PUBLISH if getattr(conn, "publish_fmle", False) else TYPE_FLASH_PUBLISH
        return None
    return TYPE_FLV_PLAY if role == "play" else None


class ApiStats:
    """The API's derived numbers over one worker: rate samplers and stream totals, fed by `tick(now)`."""

    def __init__(self, worker):
        self.worker = worker
        self.ledger = Ledger()
        self.client_rates: dict[str, RateSampler] = {}
        self.stream_rates: dict[str, RateSampler] = {}
        self.vhost_rates: dict[str, RateSampler] = {}
        # Streams freed since start keep counting in their vhost's bytes: vhost name -> [send, recv].
        self.vhost_retired: dict[str, list[int]] = {}
        self.stream_vhost: dict[str, str] = {}       # source id -> vhost name, for the streams the ledger knows

    # ----- reading (at request time) -------------------------------------------------------------------

    def clients(self) -> list:
        """Every client connection, sorted by id (SRS lists them from a map keyed by id: stable paging)."""
        found = [conn for conn in client_objects(self.worker) if client_type(conn) is not None]
        found.sort(key=lambda conn: conn.cid)
        return found

    def find_client(self, cid: str):
        conn = self.worker.conns.get(cid)
        if conn is None and getattr(self.worker, "hls_sessions", None) is not None:
            conn = self.worker.hls_sessions.get(cid)
        return conn if conn is not None and client_type(conn) is not None else None

    @staticmethod
    def live(clients) -> dict[str, tuple[str, int, int]]:
        return {conn.cid: (conn.source.id, conn.send_bytes, conn.recv_bytes) for conn in clients}

    def stream_totals(self, clients=None) -> dict[str, GroupTotals]:
        """Per source id: clients now, bytes ever, and a tcUrl (the publisher's, else any RTMP client's)."""
        clients = self.clients() if clients is None else clients
        totals = self.ledger.totals(self.live(clients))
        for conn in clients:
            acc = totals[conn.source.id]
            session = getattr(conn, "session", None)
            if session is not None and (not acc.tc_url or conn.role == "publish"):
                acc.tc_url = session.tc_url
        return totals

    def vhost_totals(self, stream_totals: dict[str, GroupTotals]) -> dict[str, GroupTotals]:
        out: dict[str, GroupTotals] = {}
        for name, (send, recv) in self.vhost_retired.items():
            out[name] = GroupTotals(send_bytes=send, recv_bytes=recv)
        vhost_of = dict(self.stream_vhost)
        for source in self.worker.registry.sources.values():
            vhost_of[source.id] = source.vhost
            out.setdefault(source.vhost, GroupTotals()).streams += 1
        for sid, totals in stream_totals.items():
            name = vhost_of.get(sid)
            if name is None:
                continue
            acc = out.setdefault(name, GroupTotals())
            acc.clients += totals.clients
            acc.send_bytes += totals.send_bytes
            acc.recv_bytes += totals.recv_bytes
        return out

    def client_kbps(self, conn, now: float) -> dict:
        sampler = self.client_rates.get(conn.cid)
        return sampler.kbps(now, conn.send_bytes, conn.recv_bytes) if sampler else zero_kbps()

    def stream_kbps(self, source_id: str, totals: GroupTotals | None, now: float) -> dict:
        sampler = self.stream_rates.get(source_id)
        if sampler is None or totals is None:
            return zero_kbps()
        return sampler.kbps(now, totals.send_bytes, totals.recv_bytes)

    def vhost_kbps(self, name: str, totals: GroupTotals | None, now: float) -> dict:
        sampler = self.vhost_rates.get(name)
        if sampler is None or totals is None:
            return zero_kbps()
        return sampler.kbps(now, totals.send_bytes, totals.recv_bytes)

    # ----- the tick ------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Every SAMPLE_STEP_S: sample every client, stream and vhost; fold departed clients into the totals."""
        clients = [conn for conn in client_objects(self.worker) if client_type(conn) is not None]
        live = self.live(clients)
        old_rates, self.client_rates = self.client_rates, {}
        for cid, (_, send, recv) in live.items():
            sampler = old_rates.get(cid) or RateSampler()
            sampler.sample(now, send, recv)
            self.client_rates[cid] = sampler
        sources = self.worker.registry.sources
        alive = set()
        for source in sources.values():
            alive.add(source.id)
            self.stream_vhost[source.id] = source.vhost
        streams = self.stream_totals(clients)
        old_rates, self.stream_rates = self.stream_rates, {}
        for sid in alive:
            totals = streams.get(sid)
            if totals is not None:
                sampler = old_rates.get(sid) or RateSampler()
                sampler.sample(now, totals.send_bytes, totals.recv_bytes)
                self.stream_rates[sid] = sampler
        for name, totals in self.vhost_totals(streams).items():
            self.vhost_rates.setdefault(name, RateSampler()).sample(now, totals.send_bytes, totals.recv_bytes)
        for sid, (send, recv) in self.ledger.commit(live, alive).items():
            name = self.stream_vhost.get(sid)
            if name is not None:
                acc = self.vhost_retired.setdefault(name, [0, 0])
                acc[0] += send
                acc[1] += recv
        known = alive | set(self.ledger.departed) | {m[0] for m in self.ledger.members.values()}
        for sid in [s for s in self.stream_vhost if s not in known]:
            del self.stream_vhost[sid]
