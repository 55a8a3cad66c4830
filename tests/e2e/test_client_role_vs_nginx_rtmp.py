"""nonstop's client role against a server that is not nonstop: nginx with nginx-rtmp from Debian.

Edges and the load generator use this client, so it must publish to and play from real servers.
"""

from __future__ import annotations

import asyncio

import pytest

from nonstop.protocol import rtmp
from tests.e2e.test_interop_nginx_rtmp import start_nginx, stop_nginx
from tests.rtmp_client import AVC_HEADER, AVC_INTER, AVC_KEYFRAME, RtmpTestClient

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def nginx_rtmp(tmp_path):
    proc, port = start_nginx(tmp_path, "application live { live on; }\n")
    try:
        yield port
    finally:
        stop_nginx(proc)


def test_client_publishes_to_and_plays_from_nginx_rtmp(nginx_rtmp):
    async def scenario():
        publisher = await RtmpTestClient().open(nginx_rtmp)
        status = await publisher.publish("stream?token=t")
        assert status.code == "NetStream.Publish.Start", status
        player = await RtmpTestClient().open(nginx_rtmp)
        start = await player.play("stream")
        assert start.code == "NetStream.Play.Start"
        publisher.send_media(rtmp.MSG_VIDEO, 0, AVC_HEADER)
        publisher.send_media(rtmp.MSG_VIDEO, 0, AVC_KEYFRAME)
        for i in range(1, 30):
            publisher.send_media(rtmp.MSG_VIDEO, i * 40, AVC_INTER)
        await publisher.drain()
        got = []
        while len(got) < 10:
            event = await player.wait_for(lambda e: isinstance(e, rtmp.Media) and e.type_id == rtmp.MSG_VIDEO)
            got.append(event)
        assert any(e.payload == AVC_KEYFRAME for e in got)
        stamps = [e.timestamp for e in got if e.payload == AVC_INTER]
        assert stamps == sorted(stamps) and len(stamps) >= 5
        await player.close()
        await publisher.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
