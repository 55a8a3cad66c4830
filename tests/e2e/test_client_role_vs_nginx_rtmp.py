"""nonstop's client role against a server that is not nonstop: nginx with nginx-rtmp from Debian.

Edges and the load generator use this client, so it must publish to and play from real servers.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import textwrap

import pytest

from nonstop.protocol import rtmp
from tests.helpers import free_port, port_open, wait_for
from tests.rtmp_client import AVC_HEADER, AVC_INTER, AVC_KEYFRAME, RtmpTestClient

pytestmark = pytest.mark.timeout(60)

RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


@pytest.fixture
def nginx_rtmp(tmp_path):
    if not shutil.which("nginx"):
        pytest.fail("nginx is not installed: `make test` installs nginx and libnginx-mod-rtmp with apt-get")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        load_module {RTMP_MODULE};
        daemon off;
        master_process off;
        pid {tmp_path}/nginx.pid;
        error_log {tmp_path}/error.log info;
        events {{ worker_connections 256; }}
        rtmp {{
            server {{
                listen 127.0.0.1:{port};
                chunk_size 4096;
                application live {{ live on; }}
            }}
        }}
        """))
    proc = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(conf), "-e", f"{tmp_path}/error.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 10, what="nginx-rtmp to listen")
        assert proc.poll() is None, proc.stderr.read().decode()
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


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
