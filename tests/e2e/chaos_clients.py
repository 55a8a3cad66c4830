"""The chaos test's clients, each run as its own process (`python -m tests.e2e.chaos_clients KIND ...`), so that
nothing they do shares an interpreter, a loop or a clock read with the server: they talk to it over TCP only.

They speak through nonstop's sans-IO client session (`RtmpSession(CLIENT)`, which answers pings and
acknowledges windows as real players do) and parse FLV tags themselves. They judge nothing: each writes one line
per event to stdout, starting with a word and a `time.monotonic()` value (CLOCK_MONOTONIC is system-wide, so the
harness places every event in its phases), and the harness (tests/e2e/chaos.py) does all the checking.

- `reader URL`: one long-lived RTMP or HTTP-FLV player. Lines: `conn T`, `play T`, `v T TS` (every video frame
  but the sequence header), `a T TS` (every audio frame but the AAC sequence header), `status T CODE`,
  `end T WHY`. When its connection ends it opens a new one at once (an HTTP error after 0.1 s), so the harness
  can tell a disconnect apart and the reader goes on measuring the later phases.
- `churn`: short-lived players (a random 0.1-1.5 s each) at one rate and probes that hang up at their first
  video frame at another, RTMP and HTTP-FLV alternately. One line per attempt when it ends:
  `c T_START T_END ROLE PROTO OUTCOME DETAIL`, OUTCOME one of ok, early (hung up as planned before the play
  started), refused, reset, rejected, timeout, dropped (the server ended a playing connection first), error.
- `hostile`: players that never read (a tiny receive buffer, one RTMP and one HTTP-FLV), and idle clients
  that `connect` and then leave large messages one chunk short. Lines: `nr T PROTO playing`,
  `nrstate T PROTO TCPSTATE` on a change of the kernel's TCP state, `idle T I ready|closed`, `ready T`.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

from nonstop.protocol import rtmp
from nonstop.protocol.chunk import encode_message

TAG_AUDIO, TAG_VIDEO = 8, 9
HTTP_HEAD_MAX = 16 * 1024
RETRY_DELAY_S = 0.1
IDLE_CHUNK_SIZE = 65536


def emit(*words) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")


def now() -> str:
    return f"{time.monotonic():.6f}"


def is_video_header(payload: bytes) -> bool:
    """An AVC sequence header (codec configuration, not a picture)."""
    return len(payload) >= 2 and payload[0] & 0x0F == 7 and payload[1] == 0


def is_audio_header(payload: bytes) -> bool:
    """An AAC sequence header."""
    return len(payload) >= 2 and payload[0] >> 4 == 10 and payload[1] == 0


class Target:
    def __init__(self, url: str):
        u = urlsplit(url)
        self.url = url
        self.rtmp = u.scheme == "rtmp"
        self.host = u.hostname
        self.port = u.port or (1935 if self.rtmp else 80)
        parts = u.path.strip("/").split("/")
        self.app = "/".join(parts[:-1])
        self.stream = parts[-1]
        self.path = u.path
        self.tc_url = f"rtmp://{self.host}:{self.port}/{self.app}"


class FlvBody:
    """HTTP body (chunked or not) -> FLV tags (type, timestamp, payload)."""

    def __init__(self, chunked: bool):
        self.chunked = chunked
        self.raw = bytearray()     # undecoded chunked framing
        self.chunk_left = 0        # bytes of chunk data still to come
        self.flv = bytearray()
        self.header_done = False

    def feed(self, data: bytes) -> list:
        if self.chunked:
            self._dechunk(data)
        else:
            self.flv += data
        return self._tags()

    def _dechunk(self, data: bytes) -> None:
        raw = self.raw
        raw += data
        while raw:
            if self.chunk_left > 0:
                n = min(self.chunk_left, len(raw))
                self.flv += raw[:n]
                del raw[:n]
                self.chunk_left -= n
                if self.chunk_left == 0:
                    self.chunk_left = -2        # the CRLF after the chunk data
                continue
            if self.chunk_left < 0:
                n = min(-self.chunk_left, len(raw))
                del raw[:n]
                self.chunk_left += n
                continue
            end = raw.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(raw[:end]).split(b";")[0], 16)
            del raw[:end + 2]
            if size == 0:
                raise EOFError("the chunked body ended")
            self.chunk_left = size

    def _tags(self) -> list:
        buf = self.flv
        tags = []
        if not self.header_done:
            if len(buf) < 13:
                return tags
            if buf[:3] != b"FLV":
                raise ValueError(f"not an FLV body: {bytes(buf[:16])!r}")
            offset = struct.unpack_from(">I", buf, 5)[0]
            del buf[:offset + 4]
            self.header_done = True
        pos = 0
        while len(buf) - pos >= 11:
            tag_type = buf[pos]
            size = int.from_bytes(buf[pos + 1:pos + 4], "big")
            ts = int.from_bytes(buf[pos + 4:pos + 7], "big") | (buf[pos + 7] << 24)
            end = pos + 11 + size + 4
            if len(buf) < end:
                break
            tags.append((tag_type, ts, bytes(buf[pos + 11:pos + 11 + size])))
            pos = end
        del buf[:pos]
        return tags


def parse_response_head(head: bytes) -> tuple[int, dict]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers


def http_get(target: Target) -> bytes:
    return (f"GET {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\nUser-Agent: nonstop-chaos\r\n"
            f"Accept: */*\r\nConnection: close\r\n\r\n").encode()


def failure_kind(exc: BaseException | None) -> str:
    if exc is None or isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, EOFError)):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    return "error"


# ----- the long-lived reader -------------------------------------------------------------------------------

def reader_main(url: str, stall_s: float) -> None:
    """Play forever; reconnect at once when a connection ends. Killed by the harness (SIGTERM)."""
    target = Target(url)
    while True:
        emit("conn", now())
        sys.stdout.flush()
        try:
            why = (_rtmp_reader if target.rtmp else _flv_reader)(target, stall_s)
        except Exception as e:  # noqa: BLE001 - any failure of one connection is reported, then we go on
            why = f"{failure_kind(e)}:{type(e).__name__}"
        emit("end", now(), why)
        sys.stdout.flush()
        if why.startswith(("http-", "refused")):
            time.sleep(RETRY_DELAY_S)


def _recv(sock: socket.socket, stall_s: float) -> bytes | None:
    """The next bytes, b'' at EOF, None after `stall_s` without any."""
    ready, _, _ = select.select([sock], [], [], stall_s)
    if not ready:
        return None
    return sock.recv(256 * 1024)


def _rtmp_reader(target: Target, stall_s: float) -> str:
    with socket.create_connection((target.host, target.port), timeout=5) as sock:
        sock.settimeout(None)
        session = rtmp.RtmpSession(rtmp.CLIENT)
        session.connect(target.app, target.tc_url)
        sock.sendall(session.data_to_send())
        while True:
            data = _recv(sock, stall_s)
            if data is None:
                return "stalled"
            if not data:
                return "eof"
            events = session.receive_data(data)
            t = now()
            for event in events:
                if isinstance(event, rtmp.Media):
                    if event.type_id == TAG_VIDEO and not is_video_header(event.payload):
                        emit("v", t, event.timestamp)
                    elif event.type_id == TAG_AUDIO and not is_audio_header(event.payload):
                        emit("a", t, event.timestamp)
                elif isinstance(event, rtmp.Connected):
                    session.create_stream()
                elif isinstance(event, rtmp.StreamCreated):
                    session.play(event.stream_id, target.stream)
                elif isinstance(event, rtmp.Status):
                    emit("play" if event.code == "NetStream.Play.Start" else "status", t, event.code)
                elif isinstance(event, rtmp.ConnectRejected):
                    return "rejected"
            out = session.data_to_send()
            if out:
                sock.sendall(out)
            sys.stdout.flush()


def _flv_reader(target: Target, stall_s: float) -> str:
    with socket.create_connection((target.host, target.port), timeout=5) as sock:
        sock.settimeout(None)
        sock.sendall(http_get(target))
        head = b""
        body = None
        while True:
            data = _recv(sock, stall_s)
            if data is None:
                return "stalled"
            if not data:
                return "eof"
            if body is None:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    if len(head) > HTTP_HEAD_MAX:
                        return "bad-head"
                    continue
                status, headers = parse_response_head(head[:end])
                if status != 200:
                    return f"http-{status}"
                emit("play", now(), 200)
                body = FlvBody("chunked" in headers.get("transfer-encoding", "").lower())
                data = head[end + 4:]
            try:
                tags = body.feed(data)
            except EOFError:
                return "eof"
            t = now()
            for tag_type, ts, payload in tags:
                if tag_type == TAG_VIDEO and not is_video_header(payload):
                    emit("v", t, ts)
                elif tag_type == TAG_AUDIO and not is_audio_header(payload):
                    emit("a", t, ts)
            sys.stdout.flush()


# ----- churn: short-lived players and probes ---------------------------------------------------------------

class _Attempt(asyncio.Protocol):
    """One short-lived player (hangs up after `duration`) or probe (hangs up at its first video frame)."""

    def __init__(self, target: Target, role: str, duration: float, timeout: float, done):
        self.target = target
        self.role = role
        self.duration = duration
        self.timeout = timeout
        self.done = done
        self.started = time.monotonic()
        self.transport = None
        self.playing = False
        self.outcome = None
        self.session = rtmp.RtmpSession(rtmp.CLIENT) if target.rtmp else None
        self.head = b""
        self.body: FlvBody | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.session is not None:
            self.session.connect(self.target.app, self.target.tc_url)
            self._flush()
        else:
            transport.write(http_get(self.target))

    def data_received(self, data: bytes) -> None:
        if self.outcome is not None or (self.playing and self.role == "player"):
            return      # a short-lived player that plays only waits for its time: the bytes cost nothing
        try:
            frames = self._rtmp(data) if self.session is not None else self._flv(data)
        except Exception as e:  # noqa: BLE001 - the server's bytes made no sense
            self.finish("error", f"{type(e).__name__}:{e}"[:80].replace(" ", "_"))
            return
        if frames and self.role == "probe" and self.outcome is None:
            self.finish("ok", "first-frame")

    def _rtmp(self, data: bytes) -> bool:
        frames = False
        for event in self.session.receive_data(data):
            if isinstance(event, rtmp.Media):
                if event.type_id == TAG_VIDEO and not is_video_header(event.payload):
                    frames = True
            elif isinstance(event, rtmp.Connected):
                self.session.create_stream()
            elif isinstance(event, rtmp.StreamCreated):
                self.session.play(event.stream_id, self.target.stream)
            elif isinstance(event, rtmp.Status):
                if event.code == "NetStream.Play.Start":
                    self.playing = True
                elif event.level == "error":
                    self.finish("rejected", event.code)
            elif isinstance(event, rtmp.ConnectRejected):
                self.finish("rejected", "connect")
        self._flush()
        return frames

    def _flv(self, data: bytes) -> bool:
        if self.body is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return False
            status, headers = parse_response_head(self.head[:end])
            if status != 200:
                self.finish("rejected", f"http-{status}")
                return False
            self.playing = True
            self.body = FlvBody("chunked" in headers.get("transfer-encoding", "").lower())
            data = self.head[end + 4:]
        return any(t == TAG_VIDEO and not is_video_header(p) for t, _, p in self.body.feed(data))

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        if self.outcome is None:
            self.finish("dropped" if self.playing else failure_kind(exc), "server-closed")

    def tick(self, t: float) -> None:
        """Called every 20 ms: a short-lived player hangs up at its time; a probe gives up at the timeout."""
        if self.outcome is not None:
            return
        age = t - self.started
        if self.role == "player" and age >= self.duration:
            self.finish("ok" if self.playing else "early", f"{self.duration:.2f}s")
        elif age >= self.timeout:
            self.finish("timeout", "playing" if self.playing else "not-playing")

    def finish(self, outcome: str, detail: str) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self.transport is not None:
            self.transport.abort()      # hang up as ffprobe does: no goodbye
        self.done(self, outcome, detail)


async def churn_main(urls: list[str], rate: float, probe_rate: float, min_s: float, max_s: float,
                     timeout: float, seed: int) -> None:
    loop = asyncio.get_running_loop()
    targets = [Target(u) for u in urls]
    rng = random.Random(seed)
    live: set = set()

    def done(attempt: _Attempt, outcome: str, detail: str) -> None:
        live.discard(attempt)
        proto = "rtmp" if attempt.target.rtmp else "flv"
        emit("c", f"{attempt.started:.6f}", now(), attempt.role, proto, outcome, detail)

    async def open_one(attempt: _Attempt) -> None:
        try:
            await asyncio.wait_for(loop.create_connection(lambda: attempt, attempt.target.host,
                                                          attempt.target.port), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            attempt.finish(failure_kind(e), "connect")

    def start(role: str, n: int) -> None:
        target = targets[n % len(targets)]
        attempt = _Attempt(target, role, rng.uniform(min_s, max_s), timeout, done)
        live.add(attempt)
        loop.create_task(open_one(attempt))

    started = time.monotonic()
    players = probes = 0
    while True:
        await asyncio.sleep(0.02)
        t = time.monotonic()
        while rate and players < (t - started) * rate:
            start("player", players)
            players += 1
        while probe_rate and probes < (t - started) * probe_rate:
            start("probe", probes)
            probes += 1
        for attempt in list(live):
            attempt.tick(t)
        sys.stdout.flush()


# ----- hostile: players that never read, idle clients holding partial messages --------------------------

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def tcp_state(sock: socket.socket) -> str:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return TCP_STATES.get(info[0], str(info[0]))


def _rtmp_until(sock: socket.socket, session: rtmp.RtmpSession, stream: str | None, deadline: float):
    """Drive a blocking RTMP client through connect (and play `stream`, if given) until it is answered."""
    sock.sendall(session.data_to_send())
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("the server closed the connection")
        for event in session.receive_data(data):
            if isinstance(event, rtmp.Connected):
                if stream is None:
                    sock.sendall(session.data_to_send())
                    return
                session.create_stream()
            elif isinstance(event, rtmp.StreamCreated):
                session.play(event.stream_id, stream)
            elif isinstance(event, rtmp.Status) and event.code == "NetStream.Play.Start":
                sock.sendall(session.data_to_send())
                return
            elif isinstance(event, (rtmp.ConnectRejected,)) or (isinstance(event, rtmp.Status)
                                                                  and event.level == "error"):
                raise ConnectionError(f"refused: {event}")
        out = session.data_to_send()
        if out:
            sock.sendall(out)
    raise TimeoutError("no answer")


def hostile_main(rtmp_url: str, flv_url: str, never_readers: list[str], idle: int, messages: int,
                 partial_bytes: int, rcvbuf: int) -> None:
    rt, ft = Target(rtmp_url), Target(flv_url)
    watched: list[tuple[str, socket.socket]] = []
    for proto in never_readers:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)     # before connect: the window stays small
        sock.settimeout(10)
        if proto == "rtmp":
            sock.connect((rt.host, rt.port))
            session = rtmp.RtmpSession(rtmp.CLIENT)
            session.connect(rt.app, rt.tc_url)
            _rtmp_until(sock, session, rt.stream, time.monotonic() + 10)
        else:
            sock.connect((ft.host, ft.port))
            sock.sendall(http_get(ft))
        emit("nr", now(), proto, "playing")
        watched.append((proto, sock))
    idlers: list[socket.socket] = []
    for i in range(idle):
        sock = socket.create_connection((rt.host, rt.port), timeout=10)
        session = rtmp.RtmpSession(rtmp.CLIENT)
        session.connect(rt.app, rt.tc_url)
        _rtmp_until(sock, session, None, time.monotonic() + 10)
        # Large chunks for large partials (the memory is the point here, not the parsing: item 7's), small ones
        # for partials within the server's pre-identify caps (rtmp.MAX_PARTIAL_UNPUBLISHED, 32 KiB).
        chunk = IDLE_CHUNK_SIZE if partial_bytes >= IDLE_CHUNK_SIZE else 4096
        length = max(2, partial_bytes // chunk) * chunk     # whole chunks: the last one is left out
        try:
            sock.sendall(encode_message(2, rtmp.MSG_SET_CHUNK_SIZE, 0, 0, struct.pack(">I", chunk),
                                        session.writer.chunk_size))
            for m in range(messages):
                whole = encode_message(4 + m, rtmp.MSG_COMMAND_AMF0, 0, 0, b"\x02" * length, chunk)
                sock.sendall(whole[:len(whole) - (chunk + 1)])
        except OSError:
            # The server refused it (issue 10 items 3 and 4: a client that has not published may hold only a few
            # KiB): that is the bound working, not a failure of this client.
            emit("idle", now(), i, "refused")
            sock.close()
            continue
        emit("idle", now(), i, "ready")
        idlers.append(sock)
    emit("ready", now())
    sys.stdout.flush()
    states = {proto: "ESTABLISHED" for proto, _ in watched}
    open_idlers = {sock.fileno(): (i, sock) for i, sock in enumerate(idlers)}
    while True:
        ready, _, _ = select.select([s for _, s in open_idlers.values()], [], [], 0.5)
        for sock in ready:
            i, _ = open_idlers[sock.fileno()]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                emit("idle", now(), i, "closed")
                del open_idlers[sock.fileno()]
        for proto, sock in watched:
            state = tcp_state(sock)
            if state != states[proto]:
                states[proto] = state
                emit("nrstate", now(), proto, state)
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="chaos_clients")
    sub = p.add_subparsers(dest="kind", required=True)
    r = sub.add_parser("reader")
    r.add_argument("url")
    r.add_argument("--stall", type=float, default=20.0)
    c = sub.add_parser("churn")
    c.add_argument("urls", nargs="+")
    c.add_argument("--rate", type=float, default=40.0)
    c.add_argument("--probe-rate", type=float, default=20.0)
    c.add_argument("--min", type=float, default=0.1)
    c.add_argument("--max", type=float, default=1.5)
    c.add_argument("--timeout", type=float, default=10.0)
    c.add_argument("--seed", type=int, default=1)
    h = sub.add_parser("hostile")
    h.add_argument("rtmp_url")
    h.add_argument("flv_url")
    h.add_argument("--never-readers", default="rtmp,flv")
    h.add_argument("--idle", type=int, default=8)
    h.add_argument("--messages", type=int, default=2)
    h.add_argument("--partial-bytes", type=int, default=1 << 20)
    h.add_argument("--rcvbuf", type=int, default=1024)
    a = p.parse_args(argv)
    if a.kind == "reader":
        reader_main(a.url, a.stall)
    elif a.kind == "churn":
        asyncio.run(churn_main(a.urls, a.rate, a.probe_rate, a.min, a.max, a.timeout, a.seed))
    else:
        hostile_main(a.rtmp_url, a.flv_url, [x for x in a.never_readers.split(",") if x], a.idle, a.messages,
                     a.partial_bytes, a.rcvbuf)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # the harness ends us: flush what we wrote
    try:
        main()
    except (KeyboardInterrupt, BrokenPipeError, SystemExit):
        pass
    finally:
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            os._exit(0)
