"""HLS on the HTTP server, with a stand-in worker and connection: which paths are ours, the hls_ctx sessions,
keep-alive, HEAD, and the two upgrade cases (a new worker still taking over, an old one draining)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from nonstop.config.schema import Hls
from nonstop.media.hls import HlsIndex, Segmenter, settings_from_config
from nonstop.protocol.rtmp import MSG_VIDEO
from nonstop.server import hls_http
from nonstop.server.hls_http import HlsSessions

AVC_SH = bytes.fromhex("1700000000") + bytes.fromhex("0164001fffe1000b6764001facd9405005ba10") \
    + bytes.fromhex("01000468ebe3cb")


def frame(key: bool) -> bytes:
    nal = (b"\x65" if key else b"\x41") + bytes(200)
    return bytes((0x17 if key else 0x27, 1, 0, 0, 0)) + len(nal).to_bytes(4, "big") + nal


class FakeRegistry:
    def get(self, vhost, app, stream):
        return object()


class NoCluster:
    """Not an edge: no HLS request starts a pull (tests/unit/test_hls_edge.py covers edges)."""

    def on_hls_play(self, path, query, host_header, now):
        return None

    def hls_pull(self, vhost, app, stream, query, host_header, now):
        return None

    def hls_edge_target(self, path):
        return None


class FakeWorker:
    def __init__(self):
        self.cluster = NoCluster()
        self.hls_index = HlsIndex()
        self.hls_sessions = HlsSessions()
        self.registry = FakeRegistry()
        self.config = SimpleNamespace(vhosts={})   # no vhost config: no access control (test_hls_access.py)
        self.taking_over = False
        self.draining = False
        self.waiting = []

    def wait_for_takeover(self, waiter) -> bool:
        self.waiting.append(waiter)
        return True


class FakeConn:
    def __init__(self, worker, headers=None):
        self.worker = worker
        self.cid = "conn1"
        self.ip = "192.0.2.1"
        self.headers = headers or {}
        self.closed = False
        self.sent: list[bytes] = []
        self.keep_alive_s = None
        self.handing_over = False       # an upgrade's batch holds it (transfer.py)
        self.held = None                # the request hls_http holds for it

    def send_response(self, parts, keep_alive_s, reason):
        self.sent.append(b"".join(parts))
        self.keep_alive_s = keep_alive_s
        if keep_alive_s is None:
            self.closed = True

    def head_and_body(self):
        head, _, body = self.sent[-1].partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers, body


def worker_with_stream(segments: int = 3) -> FakeWorker:
    worker = FakeWorker()
    seg = Segmenter(settings_from_config(Hls(enabled=True, hls_fragment=1)), "__defaultVhost__", "live", "s",
                    worker.hls_index)
    seg.on_media(MSG_VIDEO, 0, AVC_SH)
    for i in range(25 * segments + 1):
        seg.on_media(MSG_VIDEO, i * 40, frame(i % 25 == 0))
    return worker


def ask(worker, path, query="", method="GET", headers=None):
    conn = FakeConn(worker, headers)
    served = hls_http.serve(conn, method, path, query)
    return served, conn


def test_paths_no_stream_serves_are_left_to_the_rest_of_the_server():
    worker = worker_with_stream()
    assert hls_http.serve(FakeConn(worker), "GET", "/live/other.m3u8", "") is False
    assert hls_http.serve(FakeConn(worker), "GET", "/live/s.flv", "") is False
    assert hls_http.serve(FakeConn(worker), "GET", "/../../etc/passwd", "") is False


def test_a_stream_with_no_segment_yet_leaves_nothing_in_the_index():
    worker = FakeWorker()
    Segmenter(settings_from_config(Hls(enabled=True)), "__defaultVhost__", "live", "s", worker.hls_index)
    assert worker.hls_index.paths == {}
    assert hls_http.serve(FakeConn(worker), "GET", "/live/s.m3u8", "hls_ctx=a") is False   # the server's 404


def test_404_keeps_the_connection_alive():
    worker = worker_with_stream()
    ask(worker, "/live/s.m3u8", "hls_ctx=k404")
    worker.hls_sessions.get("k404").kick("test")
    served, conn = ask(worker, "/live/s-0.ts", "hls_ctx=k404")
    assert served and conn.head_and_body()[0] == 404 and conn.keep_alive_s == hls_http.KEEPALIVE_IDLE_S


def test_master_playlist_then_media_playlist_with_ctx_on_every_segment():
    worker = worker_with_stream()
    _, conn = ask(worker, "/live/s.m3u8", "a=1")
    status, headers, body = conn.head_and_body()
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    url = body.decode().splitlines()[-1]
    assert url.startswith("/live/s.m3u8?hls_ctx=") and url.endswith("&a=1")
    ctx = url.split("hls_ctx=")[1].split("&")[0]
    assert ctx in worker.hls_sessions.sessions
    _, conn = ask(worker, "/live/s.m3u8", f"hls_ctx={ctx}&a=1")
    status, headers, body = conn.head_and_body()
    uris = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    assert uris == [f"s-{i}.ts?hls_ctx={ctx}" for i in range(3)]
    _, conn = ask(worker, "/live/s-1.ts", f"hls_ctx={ctx}")
    status, headers, body = conn.head_and_body()
    assert status == 200 and headers["Content-Type"] == "video/mp2t" and int(headers["Content-Length"]) == len(body)
    session = worker.hls_sessions.get(ctx)
    assert session.send_bytes >= len(body) and session.requests == 2


def test_head_has_the_length_but_no_body():
    worker = worker_with_stream()
    _, conn = ask(worker, "/live/s-0.ts", method="HEAD")
    status, headers, body = conn.head_and_body()
    assert status == 200 and int(headers["Content-Length"]) > 0 and body == b""


def test_connection_close_from_the_client_is_honoured():
    worker = worker_with_stream()
    _, conn = ask(worker, "/live/s-0.ts", headers={"connection": "close"})
    assert conn.closed and conn.head_and_body()[1]["Connection"] == "close"


def test_a_huge_hls_ctx_is_cut_and_a_kicked_session_gets_404():
    worker = worker_with_stream()
    _, conn = ask(worker, "/live/s.m3u8", "hls_ctx=" + "x" * 10000)
    assert conn.head_and_body()[0] == 200
    assert all(len(ctx) <= 64 for ctx in worker.hls_sessions.sessions)
    ask(worker, "/live/s.m3u8", "hls_ctx=k")
    worker.hls_sessions.get("k").kick("test")
    _, conn = ask(worker, "/live/s-0.ts", "hls_ctx=k")
    assert conn.head_and_body()[0] == 404
    assert "k" not in [s.cid for s in worker.hls_sessions.clients()]


def test_sessions_expire_two_windows_after_their_last_request():
    worker = worker_with_stream()
    session = worker.hls_sessions.touch("e", worker, worker.hls_index.get("live/s.m3u8"), "ip", 100.0)
    worker.hls_sessions.sweep(100.0 + 2 * session.window_s)
    assert worker.hls_sessions.get("e") is session
    worker.hls_sessions.sweep(100.0 + 2 * session.window_s + 0.1)
    assert worker.hls_sessions.get("e") is None


def test_a_new_worker_taking_over_holds_the_request_until_the_stream_arrives():
    worker = FakeWorker()
    worker.taking_over = True
    served, conn = ask(worker, "/live/s.m3u8", "hls_ctx=w")
    assert served and not conn.sent and len(worker.waiting) == 1
    ready = worker_with_stream()
    worker.hls_index = ready.hls_index          # the stream arrived
    worker.waiting[0].retry_play()
    assert conn.head_and_body()[0] == 200


def test_a_request_held_for_a_stream_that_never_comes_gets_404():
    worker = FakeWorker()
    worker.taking_over = True
    _, conn = ask(worker, "/live/s.m3u8")
    worker.taking_over = False
    worker.waiting[0].retry_play()
    assert conn.head_and_body()[0] == 404


def test_a_draining_worker_serves_what_it_has_with_close_and_sends_the_rest_back_to_itself():
    worker = worker_with_stream()
    worker.draining = True
    _, conn = ask(worker, "/live/s-0.ts")
    status, headers, _ = conn.head_and_body()
    assert status == 200 and headers["Connection"] == "close" and conn.closed
    # A segment the new worker made after the handover: the player's next connection reaches the new worker.
    _, conn = ask(worker, "/live/s-99.ts", "hls_ctx=d")
    status, headers, _ = conn.head_and_body()
    assert status == 302 and headers["Location"] == "/live/s-99.ts?hls_ctx=d" and conn.closed
    _, conn = ask(worker, "/live/new.m3u8", "hls_ctx=d")
    status, headers, _ = conn.head_and_body()
    assert status == 302 and headers["Location"] == "/live/new.m3u8?hls_ctx=d" and conn.closed


# ----- LL-HLS: blocking playlist reload ------------------------------------------------------------------------

def ll_worker(seconds: float = 3.0) -> tuple[FakeWorker, Segmenter, list]:
    """A worker with an LL-HLS stream (hls_part 0.5, 2 s segments), fed `seconds` of 25 fps video; the frames
    after it are returned to be fed later."""
    worker = FakeWorker()
    hls = Hls(enabled=True, hls_fragment=2, hls_use_fmp4=True, hls_part=0.5)
    seg = Segmenter(settings_from_config(hls), "__defaultVhost__", "live", "s", worker.hls_index)
    seg.on_media(MSG_VIDEO, 0, AVC_SH)
    frames = [(i * 40, frame(i % 50 == 0)) for i in range(25 * 12)]
    n = int(seconds * 25)
    for ts, payload in frames[:n]:
        seg.on_media(MSG_VIDEO, ts, payload)
    return worker, seg, frames[n:]


def test_blocking_reloads_too_far_ahead_or_malformed_get_400_at_once_and_hold_nothing():
    worker, seg, _ = ll_worker()
    listed = len(seg.open_parts)
    for query in (f"_HLS_msn={seg.next_seq + 2}",                       # a segment past the last one plus two
                  f"_HLS_msn={seg.next_seq + 1000000}&_HLS_part=0",
                  f"_HLS_msn={seg.next_seq}&_HLS_part={listed + 6}",     # 7 parts past the last listed (limit 6)
                  f"_HLS_msn={seg.next_seq + 1}&_HLS_part=6",
                  "_HLS_part=1",                                        # _HLS_part without _HLS_msn
                  "_HLS_msn=x", "_HLS_msn=-1", f"_HLS_msn={seg.next_seq}&_HLS_part=-2"):
        served, conn = ask(worker, "/live/s.m3u8", "hls_ctx=far&" + query)
        status, headers, _ = conn.head_and_body()
        assert served and status == 400, query
        assert conn.keep_alive_s == hls_http.KEEPALIVE_IDLE_S      # a bad request costs the player nothing more
    assert not worker.hls_sessions.held and not seg.waiters
    # within the limits: held
    for query in (f"_HLS_msn={seg.next_seq}&_HLS_part={listed + 5}", f"_HLS_msn={seg.next_seq + 1}&_HLS_part=5",
                  f"_HLS_msn={seg.next_seq + 1}"):
        served, conn = ask(worker, "/live/s.m3u8", "hls_ctx=near&" + query)
        assert served and not conn.sent, query
    assert len(worker.hls_sessions.held) == len(seg.waiters) == 3


def test_thousands_of_held_reloads_are_plain_list_entries_answered_by_the_part_that_completes_them():
    """No task, no timer, no event loop: a held request is an entry in the segmenter's waiters and in the worker's
    held list; the part cut answers those it completes, the sweep answers the rest at their deadline."""
    worker, seg, later = ll_worker()
    msn, part = seg.next_seq, len(seg.open_parts)
    conns = [ask(worker, "/live/s.m3u8", f"hls_ctx=h{i}&_HLS_msn={msn}&_HLS_part={part}")[1] for i in range(2000)]
    hint = seg.preload_hint()
    hinted = ask(worker, "/" + hint, "")[1]
    beyond = ask(worker, "/live/s.m3u8", f"hls_ctx=b&_HLS_msn={msn + 1}&_HLS_part=0")[1]
    assert not any(c.sent for c in conns + [hinted, beyond])
    assert len(seg.waiters) == len(worker.hls_sessions.held) == 2002
    i = 0
    while not conns[0].sent:            # feed frames until the part is cut
        seg.on_media(MSG_VIDEO, *later[i])
        i += 1
    for conn in conns:
        status, _, body = conn.head_and_body()
        assert status == 200 and f'URI="s-{msn}.{part}.m4s' in body.decode()
        assert body.decode().rstrip().splitlines()[-1].startswith("#EXT-X-PRELOAD-HINT:")
    status, headers, data = hinted.head_and_body()
    assert status == 200 and data[4:8] == b"moof" and headers["Content-Type"] == "video/mp4"
    assert not beyond.sent and len(seg.waiters) == 1
    worker.hls_sessions.sweep(time.monotonic() + 3 * 2 + 0.1)      # 3 target durations later
    assert beyond.head_and_body()[0] == 200 and not seg.waiters and not worker.hls_sessions.held


def test_thousands_of_held_reloads_expiring_at_once_cost_one_pass_each():
    """The sweep answers every held request past its deadline, with one pass over the held list and one over each
    segmenter's waiters (it was a pass per expired request: 2.4 s against 0.6 s here for 8,000; the time is
    printed, and bounded only against the quadratic blow-up of much larger numbers)."""
    worker, seg, _ = ll_worker()
    msn = seg.next_seq + 1
    conns = [ask(worker, "/live/s.m3u8", f"hls_ctx=e{i}&_HLS_msn={msn}")[1] for i in range(8000)]
    assert len(seg.waiters) == len(worker.hls_sessions.held) == 8000
    started = time.perf_counter()
    worker.hls_sessions.sweep(time.monotonic() + 3 * 2 + 0.1)
    took = time.perf_counter() - started
    print(f"8000 held requests answered at their deadline in {took * 1000:.0f} ms")
    assert all(c.head_and_body()[0] == 200 for c in conns)
    assert not seg.waiters and not worker.hls_sessions.held
    assert took < 5, took
