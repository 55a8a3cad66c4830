"""A small asyncio RTMP client for tests, over nonstop's own sans-IO client session."""

from __future__ import annotations

import asyncio

from nonstop.protocol import rtmp

AVC_KEYFRAME = bytes([0x17, 0x01, 0, 0, 0]) + b"\x00" * 64
AVC_INTER = bytes([0x27, 0x01, 0, 0, 0]) + b"\x00" * 32
AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1F, 0xFF, 0xE1, 0x00, 0x04, 0x67, 0x64, 0x00, 0x1F,
                    0x01, 0x00, 0x04, 0x68, 0xEB, 0xEC, 0xB2])


class RtmpTestClient:
    def __init__(self):
        self.session = rtmp.RtmpSession(rtmp.CLIENT)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.events: list = []
        self.stream_id = 0

    async def open(self, port: int, app: str = "live", host: str = "127.0.0.1", tc_url: str | None = None):
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.session.connect(app, tc_url or f"rtmp://{host}:{port}/{app}")
        self._flush()
        await self.wait_for(lambda e: isinstance(e, (rtmp.Connected, rtmp.ConnectRejected)))
        return self

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            self.writer.write(out)

    async def read_once(self, timeout: float) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            return False
        self.events.extend(self.session.receive_data(data))
        self._flush()
        return True

    async def wait_for(self, predicate, timeout: float = 10.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, event in enumerate(self.events):
                if predicate(event):
                    del self.events[: i + 1]
                    return event
            self.events.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no matching RTMP event")
            if not await self.read_once(remaining):
                raise ConnectionError("server closed the connection")

    async def create_stream(self) -> int:
        self.session.create_stream()
        self._flush()
        event = await self.wait_for(lambda e: isinstance(e, rtmp.StreamCreated))
        self.stream_id = event.stream_id
        return self.stream_id

    async def publish(self, name: str) -> rtmp.Status:
        self.session.release_stream(name)
        await self.create_stream()
        self.session.publish(self.stream_id, name)
        self._flush()
        return await self.wait_for(lambda e: isinstance(e, rtmp.Status))

    async def play(self, name: str) -> rtmp.Status:
        await self.create_stream()
        self.session.play(self.stream_id, name)
        self._flush()
        return await self.wait_for(lambda e: isinstance(e, rtmp.Status) and e.code == "NetStream.Play.Start")

    def send_media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        self.writer.write(self.session.send_media(type_id, timestamp, self.stream_id, payload))

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
