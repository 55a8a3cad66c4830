"""onMetaData as players get it: an AMF0 Object, as SRS sends it (issue 11, item 1)."""

from __future__ import annotations

from nonstop.media.source import Source
from nonstop.protocol import amf0

# nginx-rtmp's `push` relay, video only: an Object that names `audiocodecid 0` (captured from Debian's
# libnginx-mod-rtmp 1.2.2, keys shortened).
NGINX_PUSH_META = amf0.encode("onMetaData", {"Server": "NGINX RTMP", "width": 320.0, "height": 240.0,
                                             "duration": 0.0, "videocodecid": 7.0, "audiocodecid": 0.0})
# FFmpeg's @setDataFrame with an ECMA array.
FFMPEG_META = amf0.encode("@setDataFrame", "onMetaData",
                          amf0.EcmaArray({"width": 320.0, "videocodecid": 7.0, "encoder": "Lavf59"}))


def published(payload: bytes) -> bytes:
    source = Source("__defaultVhost__/relay/s", "__defaultVhost__", "relay", "s", min_latency=True)
    source.on_publish(object(), 0.0)
    source.on_media(18, 0, payload, 0.0)
    return source.metadata.payload


def test_metadata_goes_out_as_an_amf0_object_whatever_the_publisher_used():
    for payload in (NGINX_PUSH_META, FFMPEG_META):
        out = published(payload)
        # String "onMetaData" (0x02, length 10), then the Object marker 0x03, not the ECMA array's 0x08.
        assert out[:13] == b"\x02\x00\x0aonMetaData" and out[13] == 0x03, out[:20].hex()
        name, meta = amf0.decode_all(out)
        assert name == "onMetaData" and type(meta) is dict
        assert meta["server"].startswith("nonstop/") and "duration" not in meta


def test_codec_ids_of_tracks_not_seen_pass_through_as_the_publisher_sent_them():
    name, meta = amf0.decode_all(published(NGINX_PUSH_META))
    assert meta["audiocodecid"] == 0.0 and meta["videocodecid"] == 7.0 and meta["Server"] == "NGINX RTMP"
