"""RtmpSession, both roles, talking to each other through bytes alone."""

from __future__ import annotations

import struct

import pytest

from nonstop.protocol import amf0, rtmp
from nonstop.protocol.chunk import ChunkReader, encode_message
from nonstop.protocol.errors import ProtocolError


def pump(a: rtmp.RtmpSession, b: rtmp.RtmpSession, chunk: int | None = None):
    """Move bytes both ways until quiet; returns the events each side saw."""
    events_a, events_b = [], []
    for _ in range(50):
        moved = False
        out = a.data_to_send()
        if out:
            moved = True
            for i in range(0, len(out), chunk or len(out)):
                events_b += b.receive_data(out[i:i + (chunk or len(out))])
        out = b.data_to_send()
        if out:
            moved = True
            events_a += a.receive_data(out)
        if not moved:
            break
    return events_a, events_b


def connected_pair(chunk: int | None = None):
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = rtmp.RtmpSession(rtmp.CLIENT)
    client.connect("live?token=abc", "rtmp://example.com:1935/live?token=abc")
    ev_client, ev_server = pump(client, server, chunk)
    connect = [e for e in ev_server if isinstance(e, rtmp.ConnectRequest)]
    assert len(connect) == 1
    server.accept_connect(connect[0])
    ev_client, _ = pump(client, server, chunk)
    return server, client, connect[0], ev_client


def test_connect_round_trip_in_srs_order():
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = rtmp.RtmpSession(rtmp.CLIENT)
    client.connect("live", "rtmp://h/live")
    _, ev_server = pump(client, server)
    request = ev_server[0]
    assert request.app == "live" and request.tc_url == "rtmp://h/live"
    server.accept_connect(request)
    raw = server.data_to_send()
    messages = ChunkReader().feed(raw)
    types = [m.type_id for m in messages]
    assert types[:3] == [rtmp.MSG_WINDOW_ACK_SIZE, rtmp.MSG_SET_PEER_BANDWIDTH, rtmp.MSG_SET_CHUNK_SIZE]
    result = amf0.decode_all(messages[3].payload)
    assert result[0] == "_result" and result[2]["fmsVer"] == rtmp.FMS_VERSION
    assert result[3]["code"] == "NetConnection.Connect.Success"
    assert result[3]["data"]["server"].startswith("nonstop/")
    assert amf0.decode_all(messages[4].payload)[0] == "onBWDone"
    assert struct.unpack(">I", messages[2].payload)[0] == 60000
    events = client.receive_data(raw)
    assert any(isinstance(e, rtmp.Connected) for e in events)


def test_connect_query_is_kept_out_of_the_app():
    _, _, request, _ = connected_pair()
    assert request.app == "live" and request.query == "token=abc"


def test_fmle_publish_sequence_and_media():
    server, client, _, _ = connected_pair()
    client.release_stream("s?token=x")
    client.create_stream()
    ev_client, ev_server = pump(client, server)
    created = [e for e in ev_client if isinstance(e, rtmp.StreamCreated)]
    assert created and created[0].stream_id == rtmp.PLAY_STREAM_ID
    client.publish(created[0].stream_id, "s?token=x")
    _, ev_server = pump(client, server)
    publish = [e for e in ev_server if isinstance(e, rtmp.PublishRequest)][0]
    assert (publish.name, publish.query, publish.fmle) == ("s", "token=x", True)
    server.accept_publish(publish)
    ev_client, _ = pump(client, server)
    codes = [e.code for e in ev_client if isinstance(e, rtmp.Status)]
    assert codes == ["NetStream.Publish.Start"]
    data = client.send_media(rtmp.MSG_VIDEO, 40, 1, b"\x17\x01video")
    events = server.receive_data(data)
    assert events == [rtmp.Media(9, 40, 1, b"\x17\x01video")]


def test_busy_publish_is_refused_with_badname():
    server, client, _, _ = connected_pair()
    client.create_stream()
    pump(client, server)
    client.publish(1, "s")
    _, ev_server = pump(client, server)
    server.reject_publish(ev_server[0])
    ev_client, _ = pump(client, server)
    status = [e for e in ev_client if isinstance(e, rtmp.Status)][0]
    assert (status.level, status.code) == ("error", "NetStream.Publish.BadName")


def test_play_answers_stream_begin_reset_start_and_sample_access():
    server, client, _, _ = connected_pair()
    client.create_stream()
    pump(client, server)
    client.play(1, "s?x=1")
    _, ev_server = pump(client, server)
    play = [e for e in ev_server if isinstance(e, rtmp.PlayRequest)][0]
    assert (play.name, play.query) == ("s", "x=1")
    server.accept_play(play)
    messages = ChunkReader(chunk_size=60000).feed(server.data_to_send())
    assert messages[0].type_id == rtmp.MSG_USER_CONTROL
    assert struct.unpack(">HI", messages[0].payload) == (rtmp.UC_STREAM_BEGIN, 1)
    codes = [amf0.decode_all(m.payload)[3]["code"] for m in messages[1:3]]
    assert codes == ["NetStream.Play.Reset", "NetStream.Play.Start"]
    assert amf0.decode_all(messages[3].payload) == ["|RtmpSampleAccess", True, True]
    assert all(m.stream_id == 1 for m in messages[1:])


def test_redirect_is_srs_302_and_the_client_follows_redirect2():
    server, client, _, _ = connected_pair()
    server.send_redirect(1, "rtmp://10.0.0.2:1935/live", "rtmp://10.0.0.2:1935/live/s")
    raw = server.data_to_send()
    message = ChunkReader(chunk_size=60000).feed(raw)[0]
    assert message.csid == rtmp.CSID_STREAM and message.stream_id == 0
    values = amf0.decode_all(message.payload)
    assert values[:3] == ["onStatus", 0.0, None]
    assert values[3]["code"] == "NetConnection.Connect.Rejected"
    assert values[3]["description"] == "RTMP 302 Redirect"
    assert values[3]["ex"] == {"code": 302.0, "redirect": "rtmp://10.0.0.2:1935/live",
                               "redirect2": "rtmp://10.0.0.2:1935/live/s"}
    events = client.receive_data(raw)
    assert events[0].redirect == "rtmp://10.0.0.2:1935/live/s"


def test_ping_request_is_answered():
    server, client, _, _ = connected_pair()
    ping = encode_message(2, rtmp.MSG_USER_CONTROL, 0, 0, struct.pack(">HI", rtmp.UC_PING_REQUEST, 1234), 60000)
    server.receive_data(ping)
    reply = ChunkReader().feed(server.data_to_send())[0]
    assert struct.unpack(">HI", reply.payload) == (rtmp.UC_PING_RESPONSE, 1234)


def test_acknowledgements_follow_the_peer_window():
    server, client, _, _ = connected_pair()
    server.receive_data(encode_message(2, rtmp.MSG_WINDOW_ACK_SIZE, 0, 0, struct.pack(">I", 4096), 128))
    server.data_to_send()
    server.receive_data(client.send_media(rtmp.MSG_VIDEO, 0, 1, b"x" * 5000))
    acks = [m for m in ChunkReader().feed(server.data_to_send()) if m.type_id == rtmp.MSG_ACK]
    assert len(acks) == 1 and struct.unpack(">I", acks[0].payload)[0] == server.bytes_received


def test_handshake_split_byte_by_byte():
    connected_pair(chunk=1)


def test_command_before_connect_is_an_error_and_the_session_stops():
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = rtmp.RtmpSession(rtmp.CLIENT)
    pump(client, server)
    bad = encode_message(3, rtmp.MSG_COMMAND_AMF0, 0, 0, amf0.encode("play", 1.0, None, "s"), 128)
    with pytest.raises(ProtocolError):
        server.receive_data(bad)
    assert server.state == rtmp.ERROR
    with pytest.raises(ProtocolError):
        server.receive_data(b"more")


def test_amf3_command_is_read_as_amf0_after_its_first_byte():
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = rtmp.RtmpSession(rtmp.CLIENT)
    pump(client, server)
    payload = b"\x00" + amf0.encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"})
    events = server.receive_data(encode_message(3, rtmp.MSG_COMMAND_AMF3, 0, 0, payload, 128))
    assert isinstance(events[0], rtmp.ConnectRequest) and events[0].app == "live"


def test_snapshot_restore_mid_stream_goes_on():
    server, client, _, _ = connected_pair()
    client.create_stream()
    pump(client, server)
    client.publish(1, "s")
    _, ev = pump(client, server)
    server.accept_publish(ev[0])
    pump(client, server)
    data = client.send_media(rtmp.MSG_VIDEO, 40, 1, b"v" * 1000)
    server.receive_data(data[:300])   # half a message is in the reader
    snap = server.snapshot()
    restored = rtmp.RtmpSession.restore(snap)
    events = restored.receive_data(data[300:])
    assert events == [rtmp.Media(9, 40, 1, b"v" * 1000)]
    assert restored.app == "live" and restored.stream_name == "s"


# ----- rules a mutation probe found untested ---------------------------------------------------------------

def window_ack(size: int) -> bytes:
    return encode_message(2, rtmp.MSG_WINDOW_ACK_SIZE, 0, 0, struct.pack(">I", size), 128)


@pytest.mark.parametrize("size", [0, 1, 1023])
@pytest.mark.parametrize("role", [rtmp.SERVER, rtmp.CLIENT])
def test_a_window_ack_size_below_1024_is_a_protocol_error(role, size):
    """A tiny window would make us send an acknowledgement every few bytes (a cheap amplification)."""
    server, client, _, _ = connected_pair()
    session = server if role == rtmp.SERVER else client
    with pytest.raises(ProtocolError, match=f"window acknowledgement size {size} is below 1024"):
        session.receive_data(window_ack(size))
    assert session.state == rtmp.ERROR


@pytest.mark.parametrize("size", [1024, 4096, rtmp.WINDOW_ACK_SIZE])
def test_a_window_ack_size_of_1024_or_more_is_followed(size):
    server, client, _, _ = connected_pair()
    # A publisher: only an identified client may send more than the pre-identify byte cap (64 KiB).
    client.create_stream()
    ev_client, _ = pump(client, server)
    stream_id = [e for e in ev_client if isinstance(e, rtmp.StreamCreated)][0].stream_id
    client.publish(stream_id, "s")
    _, ev_server = pump(client, server)
    server.accept_publish([e for e in ev_server if isinstance(e, rtmp.PublishRequest)][0])
    pump(client, server)
    server.receive_data(window_ack(size))
    assert server.peer_window_ack_size == size and server.state == rtmp.CONNECTED
    server.data_to_send()
    server.receive_data(client.send_media(rtmp.MSG_VIDEO, 0, 1, b"x" * (size + 100)))
    acks = [m for m in ChunkReader().feed(server.data_to_send()) if m.type_id == rtmp.MSG_ACK]
    assert len(acks) == 1


def test_the_client_is_connecting_until_connect_succeeds_then_connected():
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = rtmp.RtmpSession(rtmp.CLIENT)
    client.connect("live", "rtmp://h/live")
    assert client.state == rtmp.HANDSHAKE
    _, ev_server = pump(client, server)
    assert client.state == rtmp.CONNECTING, "handshake done, connect sent, no answer yet"
    server.accept_connect(ev_server[0])
    events, _ = pump(client, server)
    assert [type(e) for e in events] == [rtmp.Connected]
    assert client.state == rtmp.CONNECTED


def test_a_refused_connect_leaves_the_client_not_connected():
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = rtmp.RtmpSession(rtmp.CLIENT)
    client.connect("live", "rtmp://nowhere/live")
    _, ev_server = pump(client, server)
    server.reject_connect(ev_server[0], "no such vhost: nowhere")
    events, _ = pump(client, server)
    assert [type(e) for e in events] == [rtmp.ConnectRejected]
    assert client.state != rtmp.CONNECTED


def through_the_handover_wire(session: rtmp.RtmpSession) -> rtmp.RtmpSession:
    """Snapshot, carry as the handover does (plain data, wire.dumps/loads), restore."""
    from nonstop.handover import wire
    return rtmp.RtmpSession.restore(wire.loads(wire.dumps(session.snapshot())))


def test_a_client_restored_while_waiting_for_answers_still_knows_what_it_asked():
    """An edge's upstream session moved mid-connect and mid-createStream: the answers that arrive after the
    restore are matched to the transactions the old process sent."""
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = rtmp.RtmpSession(rtmp.CLIENT)
    client.connect("live", "rtmp://h/live")
    _, ev_server = pump(client, server)
    server.accept_connect(ev_server[0])
    answer = server.data_to_send()
    assert client.pending == {1: "connect"}
    client = through_the_handover_wire(client)
    assert client.pending == {1: "connect"}
    assert [type(e) for e in client.receive_data(answer)] == [rtmp.Connected]
    assert client.state == rtmp.CONNECTED and client.pending == {}
    client.create_stream()
    client = through_the_handover_wire(client)
    events, _ = pump(client, server)
    assert [e for e in events if isinstance(e, rtmp.StreamCreated)] == [rtmp.StreamCreated(rtmp.PLAY_STREAM_ID)]
    assert client.pending == {} and client.next_transaction_id == 3
