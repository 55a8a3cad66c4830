"""An edge's upstream session against an origin's server session, in memory: what it sends (tokens, chunk
size, the FMLE publish), how each way of ending is told apart, deadlines, and a snapshot mid-stream."""

from __future__ import annotations

from nonstop.cluster.upstream import (
    ENDED, OUT_FAILED, OUT_NOT_FOUND, OUT_REDIRECT, OUT_REFUSED, OUT_TIMEOUT, PULL, PUSH, STARTED,
    UpstreamConnection,
)
from nonstop.cluster.urls import RtmpTarget
from nonstop.protocol import rtmp

TARGET = RtmpTarget("10.0.0.1", 1935, "rtmp://10.0.0.1/live", "live", "livestream?token=abc")


class FakeTransport:
    def __init__(self):
        self.out: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, chunks) -> None:
        self.out.extend(bytes(c) for c in chunks)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


class Link:
    """Records what the upstream reports."""

    def __init__(self):
        self.started = self.ended = 0
        self.media: list[rtmp.Media] = []
        self.statuses: list[str] = []

    def on_upstream_started(self, up):
        self.started += 1

    def on_upstream_ended(self, up):
        self.ended += 1

    def on_upstream_media(self, up, event):
        self.media.append(event)

    def on_upstream_status(self, up, status):
        self.statuses.append(status.code)

    def on_upstream_writable(self, up):
        pass


class Origin:
    """A server-role session answering like an origin; `play` decides what a play gets."""

    def __init__(self, play="accept"):
        self.session = rtmp.RtmpSession(rtmp.SERVER)
        self.play = play
        self.requests: list = []

    def on_event(self, event) -> None:
        self.requests.append(event)
        if isinstance(event, rtmp.ConnectRequest):
            self.session.accept_connect(event)
        elif isinstance(event, rtmp.PlayRequest):
            if self.play == "accept":
                self.session.accept_play(event)
            elif self.play == "not_found":
                self.session.send_stream_not_found(event.stream_id, event.name)
            elif self.play.startswith("redirect"):
                self.session.send_redirect(event.stream_id, "rtmp://10.0.0.2:1935/live",
                                           "rtmp://10.0.0.2:1935/live/livestream?token=abc")
        elif isinstance(event, rtmp.PublishRequest):
            self.session.accept_publish(event)

    def media(self, type_id: int, ts: int, payload: bytes) -> bytes:
        return self.session.writer.encode(rtmp.CSID_VIDEO, type_id, ts, rtmp.PLAY_STREAM_ID, payload)


def pump(up: UpstreamConnection, transport: FakeTransport, origin: Origin) -> None:
    for _ in range(50):
        sent = transport.take()
        if sent:
            for event in origin.session.receive_data(sent):
                origin.on_event(event)
        back = origin.session.data_to_send()
        if back and up.phase != ENDED:
            up.data_received(back)
        if not sent and not back:
            return


def connected(role=PULL, play="accept", now=100.0):
    link, transport, origin = Link(), FakeTransport(), Origin(play)
    up = UpstreamConnection(link, role, TARGET, now=now, connect_timeout_ms=3000)
    up.connection_made(transport)
    pump(up, transport, origin)
    return up, link, transport, origin


def test_pull_connects_with_the_tc_url_and_plays_the_stream_with_its_token():
    up, link, _, origin = connected()
    connect = next(e for e in origin.requests if isinstance(e, rtmp.ConnectRequest))
    play = next(e for e in origin.requests if isinstance(e, rtmp.PlayRequest))
    assert (connect.app, connect.tc_url) == ("live", "rtmp://10.0.0.1/live")
    assert (play.name, play.query) == ("livestream", "token=abc")
    assert up.phase == STARTED and link.started == 1


def test_pulled_media_reaches_the_link_but_not_the_origins_sample_access():
    up, link, transport, origin = connected()
    up.data_received(origin.media(rtmp.MSG_VIDEO, 40, b"\x17\x01" + b"v" * 300))
    assert [(m.type_id, m.timestamp) for m in link.media] == [(rtmp.MSG_VIDEO, 40)]


def test_push_announces_its_chunk_size_and_publishes_the_fmle_way():
    up, link, _, origin = connected(PUSH)
    publish = next(e for e in origin.requests if isinstance(e, rtmp.PublishRequest))
    assert publish.fmle and (publish.name, publish.query) == ("livestream", "token=abc")
    assert origin.session.reader.chunk_size == rtmp.DEFAULT_OUT_CHUNK_SIZE
    assert up.phase == STARTED and up.stream_id == rtmp.PLAY_STREAM_ID


def test_stream_not_found_redirect_and_refusal_are_told_apart():
    up, link, transport, _ = connected(play="not_found")
    assert (up.outcome, link.ended, transport.closing) == (OUT_NOT_FOUND, 1, True)
    up, _, _, _ = connected(play="redirect")
    assert (up.outcome, up.detail, up.redirect_has_stream) == \
        (OUT_REDIRECT, "rtmp://10.0.0.2:1935/live/livestream?token=abc", True)
    up, link, transport, origin = connected()
    origin.session.send_status(1, "error", "NetStream.Play.Failed", "nope")
    up.data_received(origin.session.data_to_send())
    assert up.outcome == OUT_REFUSED and link.ended == 1


def test_publisher_changes_at_the_origin_are_reported_not_fatal():
    up, link, _, origin = connected()
    origin.session.send_unpublish_notify(1)
    up.data_received(origin.session.data_to_send())
    assert link.statuses[-1] == "NetStream.Play.UnpublishNotify" and up.phase == STARTED


def test_connect_timeout_and_receive_timeout_end_the_session():
    link, transport = Link(), FakeTransport()
    up = UpstreamConnection(link, PULL, TARGET, now=100.0, connect_timeout_ms=3000)
    up.connection_made(transport)
    up.check(102.9, 5000)
    assert up.phase != ENDED
    up.check(103.0, 5000)
    assert (up.outcome, transport.aborted) == (OUT_FAILED, True)
    up, link, _, _ = connected()
    up.check(up.last_recv_at + 4.9, 5000)
    assert up.phase == STARTED
    up.check(up.last_recv_at + 5.0, 5000)
    assert up.outcome == OUT_TIMEOUT


def test_a_garbage_answer_fails_the_session_without_raising():
    link, transport = Link(), FakeTransport()
    up = UpstreamConnection(link, PULL, TARGET, now=0.0, connect_timeout_ms=3000)
    up.connection_made(transport)
    up.data_received(b"\x07" + b"\xff" * 4000)
    assert up.outcome in (OUT_FAILED,) and link.ended == 1


def test_an_upstream_goes_on_mid_stream_after_snapshot_and_restore():
    up, link, transport, origin = connected()
    up.data_received(origin.media(rtmp.MSG_VIDEO, 40, b"\x17\x01" + b"a" * 1000))
    snap = up.snapshot()
    link2, transport2 = Link(), FakeTransport()
    restored = UpstreamConnection.restore(link2, snap)
    restored.connection_made(transport2)
    assert transport2.take() == b""            # nothing new is said to the origin
    restored.data_received(origin.media(rtmp.MSG_VIDEO, 80, b"\x27\x01" + b"b" * 1000))
    assert [(m.timestamp, len(m.payload)) for m in link2.media] == [(80, 1002)]
    assert restored.phase == STARTED and restored.target == TARGET
