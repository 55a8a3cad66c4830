"""RtmpConnection without sockets: a real connection and a real Worker on a test config, a fake transport, and the
bytes of nonstop's own client-role RtmpSession.

The connection's paths, each from the client's side (what it receives) and the worker's (sources, counters):
connect, publish, play, unpublish, the close paths, the refusals (no vhost, a busy stream, max_connections, a
protocol error), and the deadlines, driven through `check_deadline(now)` as the worker's sweep does.
"""

from __future__ import annotations

import io
import time

import pytest

from nonstop.config import load_text
from nonstop.log import log
from nonstop.protocol import amf0, rtmp
from nonstop.protocol.chunk import encode_message
from nonstop.server.rtmp_conn import CLOSE_AFTER_REFUSAL_S, ROLE_NONE, ROLE_PLAY, ROLE_PUBLISH, RtmpConnection
from nonstop.server.worker import Worker

HANDSHAKE_MS = 2000
FIRSTPKT_MS = 3000
NORMAL_MS = 1500
CONFIG = f"""
listen 1935;
max_connections 3;
handshake_timeout {HANDSHAKE_MS};
vhost __defaultVhost__ {{
    min_latency on;
    publish {{ firstpkt_timeout {FIRSTPKT_MS}; normal_timeout {NORMAL_MS}; }}
}}
"""
# No __defaultVhost__: a client must name this vhost (in its tcUrl's host or a `?vhost=` query).
NAMED_ONLY = """
listen 1935;
vhost named.example { }
"""

AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0]) + bytes.fromhex("0164001fffe1001967640020acd9405005bb0110000003001000"
                                                           "000303c0f18319601000568ebecb22c0")
KEY = bytes([0x17, 0x01, 0, 0, 0]) + b"K" * 300
INTER = bytes([0x27, 0x01, 0, 0, 0]) + b"P" * 100


class FakeTransport:
    """What RtmpConnection uses of an asyncio transport; it records instead of sending."""

    def __init__(self, peer=("192.0.2.7", 50123)):
        self.peer = peer
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.buffered = 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def writelines(self, chunks) -> None:
        assert not self.closed, "write after close"
        for chunk in chunks:
            self.out += chunk

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


class Client:
    """A client-role RtmpSession wired to a real RtmpConnection. `pump()` moves bytes both ways until quiet
    and returns the events the client saw."""

    def __init__(self, worker: Worker, peer=("192.0.2.7", 50123)):
        self.worker = worker
        self.transport = FakeTransport(peer)
        self.conn = RtmpConnection(worker)
        self.conn.connection_made(self.transport)
        self.session = rtmp.RtmpSession(rtmp.CLIENT)
        self.stream_id = 0

    def pump(self) -> list:
        events = []
        for _ in range(20):
            out = self.session.data_to_send()
            if out:
                self.conn.data_received(out)
            back = self.transport.take()
            if back:
                events += self.session.receive_data(back)
            if not out and not back:
                break
        return events

    def send(self, raw: bytes) -> list:
        self.conn.data_received(raw)
        return self.pump()

    def connect(self, tc_url: str = "rtmp://127.0.0.1/live", app: str = "live") -> list:
        self.session.connect(app, tc_url)
        return self.pump()

    def create_stream(self) -> None:
        self.session.create_stream()
        created = [e for e in self.pump() if isinstance(e, rtmp.StreamCreated)]
        assert len(created) == 1
        self.stream_id = created[0].stream_id

    def publish(self, name: str) -> list:
        self.session.release_stream(name)
        self.create_stream()
        self.session.publish(self.stream_id, name)
        return statuses(self.pump())

    def play(self, name: str) -> list:
        self.create_stream()
        self.session.play(self.stream_id, name)
        return self.pump()

    def media(self, type_id: int, timestamp: int, payload: bytes) -> list:
        return self.send(self.session.send_media(type_id, timestamp, self.stream_id, payload))

    def command(self, name: str, *args, stream_id: int = 0) -> list:
        """A command the client session has no method for, as one full (type 0) chunk-stream-3 message."""
        return self.send(encode_message(3, rtmp.MSG_COMMAND_AMF0, 0, stream_id, amf0.encode(name, *args), 128))


def statuses(events) -> list[str]:
    return [e.code for e in events if isinstance(e, rtmp.Status)]


def media(events) -> list[bytes]:
    """Audio and video payloads (not |RtmpSampleAccess or onMetaData)."""
    return [e.payload for e in events if isinstance(e, rtmp.Media) and e.type_id in (rtmp.MSG_AUDIO, rtmp.MSG_VIDEO)]


@pytest.fixture
def logged(monkeypatch):
    """What the connection logs, one line per event."""
    out = io.StringIO()
    monkeypatch.setattr(log, "stream", out)
    monkeypatch.setattr(log, "level", 0)
    return out


@pytest.fixture
def worker():
    return Worker(load_text(CONFIG))


def connected(worker, **kw) -> Client:
    client = Client(worker, **kw)
    assert [type(e) for e in client.connect()] == [rtmp.Connected]
    return client


def publishing(worker, name: str = "s") -> Client:
    client = connected(worker)
    assert client.publish(name) == ["NetStream.Publish.Start"]
    return client


# ----- connect ---------------------------------------------------------------------------------------------

def test_connect_is_answered_in_srs_order_and_the_connection_is_counted(worker, logged):
    client = Client(worker)
    assert client.conn.ip == "192.0.2.7" and worker.conns == {client.conn.cid: client.conn}
    assert worker.accepted_total == 1
    client.session.connect("live?token=t", "rtmp://127.0.0.1/live?token=t")
    client.conn.data_received(client.session.data_to_send())    # the handshake
    client.session.receive_data(client.transport.take())
    client.conn.data_received(client.session.data_to_send())    # C2 and connect
    events = client.session.receive_data(client.transport.take())
    assert [type(e) for e in events] == [rtmp.Connected]
    assert events[0].info["code"] == "NetConnection.Connect.Success"
    assert events[0].info["data"]["server"].startswith("nonstop/")
    assert client.conn.vhost.name == "__defaultVhost__" and client.conn.session.app == "live"
    assert client.session.state == rtmp.CONNECTED
    line = logged.getvalue()
    assert f"[{client.conn.cid}] connect ip=192.0.2.7, vhost=__defaultVhost__, app=live" in line
    assert "query=token=t" in line


def test_connect_to_no_vhost_is_refused_and_closed_after_the_grace(logged):
    worker = Worker(load_text(NAMED_ONLY))
    client = Client(worker)
    events = client.connect("rtmp://other.example/live")
    assert [type(e) for e in events] == [rtmp.ConnectRejected]
    assert events[0].info["description"] == "no such vhost: other.example"
    assert "connect refused: no vhost for host='other.example'" in logged.getvalue()
    assert not client.transport.reading, "a refused client is not read any more"
    assert not client.transport.closed, "the client gets time to read the refusal"
    refused_at = time.monotonic()
    client.conn.check_deadline(refused_at + CLOSE_AFTER_REFUSAL_S - 0.5)
    assert not client.conn.closed
    client.conn.check_deadline(refused_at + CLOSE_AFTER_REFUSAL_S + 0.5)
    assert client.conn.closed and client.transport.closed
    assert "reason=no such vhost" in logged.getvalue()


@pytest.mark.parametrize("tc_url", ["rtmp://named.example/live", "rtmp://10.0.0.1/live?vhost=named.example"])
def test_a_named_vhost_is_found_by_host_or_by_query(tc_url):
    worker = Worker(load_text(NAMED_ONLY))
    client = Client(worker)
    assert [type(e) for e in client.connect(tc_url)] == [rtmp.Connected]
    assert client.conn.vhost.name == "named.example"


def test_a_connection_over_max_connections_is_closed_at_accept(worker, logged):
    clients = [Client(worker) for _ in range(3)]
    extra = Client(worker, peer=("198.51.100.1", 4000))
    assert extra.transport.closed and extra.conn.closed
    assert extra.conn.cid not in worker.conns and len(worker.conns) == 3
    assert worker.rejected_total == 1 and worker.accepted_total == 3
    assert "reject connection from 198.51.100.1: max_connections 3 reached" in logged.getvalue()
    clients[0].conn.connection_lost(None)
    assert Client(worker).conn.cid in worker.conns, "a slot freed by a close is taken again"


# ----- publish and play ------------------------------------------------------------------------------------

def test_publish_creates_the_source_and_media_reaches_a_player(worker):
    publisher = publishing(worker)
    source = worker.registry.get("__defaultVhost__", "live", "s")
    assert source is not None and source.publisher is publisher.conn and publisher.conn.role == ROLE_PUBLISH
    player = connected(worker)
    events = player.play("s")
    assert statuses(events) == ["NetStream.Play.Reset", "NetStream.Play.Start"]
    assert player.conn.role == ROLE_PLAY and player.conn.consumer in source.consumers
    publisher.media(rtmp.MSG_VIDEO, 0, AVC_HEADER)
    publisher.media(rtmp.MSG_VIDEO, 0, KEY)
    publisher.media(rtmp.MSG_VIDEO, 40, INTER)
    assert media(player.pump()) == [AVC_HEADER, KEY, INTER]
    assert source.frames == 2 and publisher.conn.got_media
    # A late player starts with the sequence header, then the GOP from its keyframe.
    late = connected(worker)
    assert media(late.play("s")) == [AVC_HEADER, KEY, INTER]
    assert late.conn.send_bytes > len(KEY) and publisher.conn.recv_bytes > len(KEY)


def test_a_player_waits_for_a_publisher_then_gets_publish_notify(worker):
    player = connected(worker)
    assert statuses(player.play("later")) == ["NetStream.Play.Reset", "NetStream.Play.Start"]
    publisher = publishing(worker, "later")
    assert statuses(player.pump()) == ["NetStream.Play.PublishNotify"]
    publisher.media(rtmp.MSG_VIDEO, 0, KEY)
    assert media(player.pump()) == [KEY]


def test_a_second_publisher_of_a_live_stream_is_refused_busy_and_closed_after_the_grace(worker, logged):
    first = publishing(worker)
    second = connected(worker)
    assert second.publish("s") == ["NetStream.Publish.BadName"]
    assert f"publish refused: stream __defaultVhost__/live/s is busy (publisher {first.conn.cid})" in logged.getvalue()
    assert second.conn.role == ROLE_NONE and not second.transport.reading
    refused_at = time.monotonic()
    second.conn.check_deadline(refused_at + CLOSE_AFTER_REFUSAL_S - 0.5)
    assert not second.conn.closed
    second.conn.check_deadline(refused_at + CLOSE_AFTER_REFUSAL_S + 0.5)
    assert second.conn.closed and "reason=stream busy" in logged.getvalue()
    source = worker.registry.get("__defaultVhost__", "live", "s")
    assert source.publisher is first.conn and not first.conn.closed, "the first publisher goes on"


def test_publish_or_play_twice_on_one_connection_is_a_protocol_error(worker, logged):
    publisher = publishing(worker)
    publisher.session.play(publisher.stream_id, "other")
    publisher.pump()
    assert publisher.conn.closed and publisher.transport.closed
    assert "reason=protocol error: play while already publishing" in logged.getvalue()
    assert worker.registry.get("__defaultVhost__", "live", "s") is None, "its source went with it"


def test_pause_holds_the_player_and_unpause_sends_what_it_missed(worker):
    publisher = publishing(worker)
    player = connected(worker)
    player.play("s")
    publisher.media(rtmp.MSG_VIDEO, 0, KEY)
    assert media(player.pump()) == [KEY]
    assert media(player.command("pause", 0.0, None, True, 40.0, stream_id=player.stream_id)) == []
    assert player.conn.consumer.paused
    publisher.media(rtmp.MSG_VIDEO, 40, INTER)
    assert media(player.pump()) == []
    assert media(player.command("pause", 0.0, None, False, 40.0, stream_id=player.stream_id)) == [INTER]


# ----- unpublish and closing -------------------------------------------------------------------------------

def test_fcunpublish_ends_the_publish_and_players_get_unpublish_notify(worker, logged):
    publisher = publishing(worker)
    player = connected(worker)
    player.play("s")
    publisher.media(rtmp.MSG_VIDEO, 0, KEY)
    player.pump()
    events = publisher.command("FCUnpublish", 5.0, None, "s")
    assert "NetStream.Unpublish.Success" in statuses(events)
    assert publisher.conn.role == ROLE_NONE and publisher.conn.source is None and not publisher.conn.closed
    assert statuses(player.pump()) == ["NetStream.Play.UnpublishNotify"]
    source = worker.registry.get("__defaultVhost__", "live", "s")
    assert source is not None and source.publisher is None, "kept for the waiting player"
    assert f"[{publisher.conn.cid}] unpublish __defaultVhost__/live/s: client unpublished" in logged.getvalue()
    # The same connection may publish again (OBS does on a reconnect of the stream).
    publisher.session.publish(publisher.stream_id, "s")
    assert statuses(publisher.pump()) == ["NetStream.Publish.Start"]
    assert statuses(player.pump()) == ["NetStream.Play.PublishNotify"]


def test_delete_stream_stops_the_play_and_the_source_is_freed(worker, logged):
    player = connected(worker)
    player.play("s")
    consumer = player.conn.consumer
    player.command("deleteStream", 6.0, None, float(player.stream_id))
    assert player.conn.consumer is None and player.conn.role == ROLE_NONE and consumer.closed
    assert not player.conn.closed, "the connection stays; only the play ended"
    assert worker.registry.get("__defaultVhost__", "live", "s") is None, "nobody is left on it"
    assert f"[{player.conn.cid}] stop play __defaultVhost__/live/s" in logged.getvalue()


def test_a_publisher_that_hangs_up_unpublishes_and_is_forgotten(worker, logged):
    publisher = publishing(worker)
    player = connected(worker)
    player.play("s")
    publisher.conn.eof_received()
    assert publisher.conn.closed and publisher.transport.closed
    assert statuses(player.pump()) == ["NetStream.Play.UnpublishNotify"]
    assert publisher.conn.cid in worker.conns, "forgotten only when the transport says the connection is lost"
    received = publisher.conn.recv_bytes
    publisher.conn.connection_lost(None)
    assert publisher.conn.cid not in worker.conns and worker.closed_recv_bytes == received
    assert "reason=client closed the connection" in logged.getvalue()


def test_a_player_whose_connection_is_lost_leaves_its_source_which_is_then_freed(worker, logged):
    player = connected(worker)
    player.play("s")
    source = player.conn.source
    player.conn.connection_lost(ConnectionResetError("reset by peer"))
    assert player.conn.closed and not source.consumers
    assert worker.registry.get("__defaultVhost__", "live", "s") is None
    assert player.conn.cid not in worker.conns and worker.closed_send_bytes == player.conn.send_bytes > 0
    assert "reason=connection lost: reset by peer" in logged.getvalue()


def test_data_after_close_is_ignored(worker):
    player = connected(worker)
    player.conn.close("test")
    player.conn.data_received(b"\x03anything at all")    # no exception, nothing written
    assert player.transport.out == b""


def test_a_command_before_connect_is_a_protocol_error_and_closes_without_a_traceback(worker, logged):
    client = Client(worker)
    client.session.create_stream()      # the client skips connect
    client.pump()
    assert client.conn.closed and client.transport.closed
    text = logged.getvalue()
    assert "reason=protocol error: 'createStream' before connect was accepted" in text
    assert "Traceback" not in text


def test_a_bad_handshake_is_a_protocol_error(worker, logged):
    client = Client(worker)
    client.conn.data_received(b"\x06" + bytes(1536))     # RTMPE (version 6) is not offered
    assert client.conn.closed and "reason=protocol error" in logged.getvalue()


def test_kick_closes_the_connection_and_says_why(worker, logged):
    player = connected(worker)
    player.play("s")
    player.conn.kick("kicked by the API")
    assert player.conn.closed and player.transport.is_closing() and player.conn.consumer is None
    assert f"[{player.conn.cid}] kick: kicked by the API" in logged.getvalue()


def test_send_status_reaches_the_publisher_on_its_stream(worker):
    publisher = publishing(worker)
    publisher.conn.send_status("NetStream.Unpublish.Success", "server quit")
    events = [e for e in publisher.pump() if isinstance(e, rtmp.Status)]
    assert [(e.stream_id, e.code) for e in events] == [(publisher.stream_id, "NetStream.Unpublish.Success")]


# ----- deadlines (the worker's sweep calls check_deadline every second) ----------------------------------

def test_handshake_and_connect_must_finish_within_handshake_timeout(worker, logged):
    silent = Client(worker)
    created = silent.conn.created_at
    silent.conn.check_deadline(created + HANDSHAKE_MS / 1000 - 0.01)
    assert not silent.conn.closed
    silent.conn.check_deadline(created + HANDSHAKE_MS / 1000)
    assert silent.conn.closed and silent.transport.closed
    assert f"reason=handshake and connect not done within {HANDSHAKE_MS} ms" in logged.getvalue()
    # One that connected in time is not closed by the handshake deadline.
    client = connected(worker)
    client.conn.check_deadline(client.conn.created_at + HANDSHAKE_MS / 1000 + 0.01)
    assert not client.conn.closed


def test_a_publisher_must_send_its_first_media_within_firstpkt_timeout(worker, logged):
    before = time.monotonic()
    silent = publishing(worker, "silent")
    after = time.monotonic()
    silent.conn.check_deadline(before + FIRSTPKT_MS / 1000 - 0.01)
    assert not silent.conn.closed
    silent.conn.check_deadline(after + FIRSTPKT_MS / 1000)
    assert silent.conn.closed
    assert f"reason=publisher sent no media for {FIRSTPKT_MS} ms" in logged.getvalue()
    assert worker.registry.get("__defaultVhost__", "live", "silent") is None


def test_a_publisher_that_sends_is_never_closed_and_one_that_stops_is_closed_after_normal_timeout(worker, logged):
    publisher = publishing(worker)
    publisher.media(rtmp.MSG_VIDEO, 0, KEY)
    # Past the first-packet deadline, but it sent: only the silence since its last message counts.
    late = time.monotonic() + FIRSTPKT_MS / 1000 + 1
    publisher.conn.last_media_at = late - NORMAL_MS / 1000 / 2      # as if it sent a moment ago
    publisher.conn.check_deadline(late)
    assert not publisher.conn.closed
    sent = time.monotonic()
    publisher.media(rtmp.MSG_VIDEO, 40, INTER)
    publisher.conn.check_deadline(sent + NORMAL_MS / 1000 - 0.01)
    assert not publisher.conn.closed
    publisher.conn.check_deadline(time.monotonic() + NORMAL_MS / 1000 + 0.01)
    assert publisher.conn.closed
    assert f"reason=publisher idle for {NORMAL_MS} ms" in logged.getvalue()


def test_a_player_has_no_deadline(worker):
    player = connected(worker)
    player.play("s")
    player.conn.check_deadline(time.monotonic() + 3600)
    assert not player.conn.closed


def test_the_server_acknowledges_a_publisher_after_the_window_the_client_announced(worker):
    """The client answers Set Peer Bandwidth with its own 2.5 MB window (as ffmpeg does): the server sends an
    Acknowledgement once it has received that much, and the client reads it."""
    publisher = publishing(worker)
    assert publisher.conn.session.peer_window_ack_size == rtmp.WINDOW_ACK_SIZE
    payload = bytes([0x27, 0x01, 0, 0, 0]) + b"x" * 65536
    for i in range(rtmp.WINDOW_ACK_SIZE // len(payload) + 2):
        publisher.media(rtmp.MSG_VIDEO, i, payload)
    acked = publisher.conn.session.last_ack_sent
    assert rtmp.WINDOW_ACK_SIZE <= acked <= publisher.conn.recv_bytes
    assert publisher.session.peer_acked == acked


# ----- what the origin cluster tells a connection (nonstop/cluster/manager.py) ------------------------------

def play_request(client: Client, name: str = "s") -> rtmp.PlayRequest:
    client.create_stream()
    return rtmp.PlayRequest(client.stream_id, 0.0, name, "", -2.0, -1.0, True)


def test_the_cluster_redirect_is_srs_302_and_the_connection_closes_after_the_grace(worker, logged):
    client = connected(worker)
    event = play_request(client)
    client.conn.answer_redirect(event, "rtmp://10.0.0.2:1935/live", "rtmp://10.0.0.2:1935/live/s")
    rejected = [e for e in client.pump() if isinstance(e, rtmp.ConnectRejected)]
    assert [e.redirect for e in rejected] == ["rtmp://10.0.0.2:1935/live/s"]
    assert not client.conn.closed and not client.transport.reading
    client.conn.check_deadline(time.monotonic() + CLOSE_AFTER_REFUSAL_S + 0.5)
    assert client.conn.closed and "reason=redirected to rtmp://10.0.0.2:1935/live/s" in logged.getvalue()


def test_the_cluster_stream_not_found_closes_at_once(worker, logged):
    client = connected(worker)
    client.conn.answer_stream_not_found(play_request(client), "stream not found in the cluster")
    assert client.conn.closed
    assert statuses(client.session.receive_data(client.transport.take())) == ["NetStream.Play.StreamNotFound"]
    assert "reason=stream not found in the cluster" in logged.getvalue()


def test_the_cluster_refusal_of_a_publish_is_badname_with_its_description(worker):
    client = connected(worker)
    client.create_stream()
    event = rtmp.PublishRequest(client.stream_id, 0.0, "s", "", "live", False)
    client.conn.refuse_publish(event, "Stream is already being published at 10.0.0.2:1935.", "busy in the cluster")
    status = [e for e in client.pump() if isinstance(e, rtmp.Status)]
    assert [(s.code, s.description) for s in status] == \
        [("NetStream.Publish.BadName", "Stream is already being published at 10.0.0.2:1935.")]
    assert not client.conn.closed and client.conn.role == ROLE_NONE


def test_the_cluster_lets_a_play_or_publish_go_on_here(worker):
    publisher = connected(worker)
    publisher.create_stream()
    publisher.conn.publish_local(rtmp.PublishRequest(publisher.stream_id, 0.0, "s", "", "live", False))
    assert statuses(publisher.pump()) == ["NetStream.Publish.Start"] and publisher.conn.role == ROLE_PUBLISH
    player = connected(worker)
    player.conn.play_local(play_request(player))
    assert statuses(player.pump()) == ["NetStream.Play.Reset", "NetStream.Play.Start"]
    assert player.conn.consumer in worker.registry.get("__defaultVhost__", "live", "s").consumers
