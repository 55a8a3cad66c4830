"""deleteStream / closeStream are answered as nginx-rtmp answers them (issue 11, item 2): GStreamer's rtmpsrc
waits for the answer before it stops."""

from __future__ import annotations

import struct

import pytest

from nonstop.protocol import amf0, rtmp
from nonstop.protocol.chunk import ChunkReader, encode_message
from tests.unit.test_rtmp_session import connected_pair, pump


def started(role: str):
    server, client, _, _ = connected_pair()
    client.create_stream()
    pump(client, server)
    (client.play if role == "play" else client.publish)(1, "s")
    _, events = pump(client, server)
    request = events[-1]
    (server.accept_play if role == "play" else server.accept_publish)(request)
    server.data_to_send()
    return server


def command(name: str, stream_id: int) -> bytes:
    # librtmp sends deleteStream on the connection's stream with the stream id as argument; closeStream
    # goes on the media stream itself.
    msg_stream = 0 if name == "deleteStream" else stream_id
    return encode_message(3, rtmp.MSG_COMMAND_AMF0, 0, msg_stream, amf0.encode(name, 0.0, None, float(stream_id)),
                          60000)


@pytest.mark.parametrize("name", ["deleteStream", "closeStream"])
def test_a_player_gets_stream_eof(name):
    server = started("play")
    events = server.receive_data(command(name, 1))
    assert [type(e) for e in events] == [rtmp.StopPlay]
    messages = ChunkReader(chunk_size=60000).feed(server.data_to_send())
    assert [(m.type_id, m.payload) for m in messages] == \
        [(rtmp.MSG_USER_CONTROL, struct.pack(">HI", rtmp.UC_STREAM_EOF, 1))]
    assert server.receive_data(command(name, 1)) == [] and server.data_to_send() == b"", "answered once"


@pytest.mark.parametrize("name", ["deleteStream", "closeStream"])
def test_a_publisher_gets_unpublish_success(name):
    server = started("publish")
    events = server.receive_data(command(name, 1))
    assert [type(e) for e in events] == [rtmp.Unpublish]
    messages = ChunkReader(chunk_size=60000).feed(server.data_to_send())
    assert len(messages) == 1 and messages[0].stream_id == 1
    values = amf0.decode_all(messages[0].payload)
    assert values[0] == "onStatus" and values[3]["code"] == "NetStream.Unpublish.Success"


def test_delete_stream_of_an_idle_connection_gets_nothing():
    server, _, _, _ = connected_pair()
    assert server.receive_data(command("deleteStream", 1)) == [] and server.data_to_send() == b""
