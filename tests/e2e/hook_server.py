"""A real SRS-style http_hooks server for the tests: aiohttp in a thread, recording every body, answering per
action and stream (allow by default), with an optional delay."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from tests.helpers import free_port, wait_for


@dataclass
class HookServer:
    port: int = field(default_factory=free_port)
    deny: set = field(default_factory=set)      # {(action, stream)}, or {(action, "*")}
    delay_s: float = 0.0
    answer_allow: str = '{"code":0}'            # "0" for SRS's bare answer
    calls: list = field(default_factory=list)   # (monotonic arrival, path, body)
    in_flight: int = 0
    max_in_flight: int = 0
    _stopping: bool = False

    def url(self, path: str = "/api/v1/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "HookServer":
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "hook server did not start"
        return self

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=2048).start())
        ready.set()
        self._loop.run_forever()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        self.calls.append((time.monotonic(), request.path, body))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            end = time.monotonic() + self.delay_s
            while time.monotonic() < end and not self._stopping:    # stop() ends a "dead" server's waits
                await asyncio.sleep(min(0.02, max(0.0, end - time.monotonic())))
        finally:
            self.in_flight -= 1
        action, stream = body.get("action"), body.get("stream", "")
        if (action, stream) in self.deny or (action, "*") in self.deny:
            return web.Response(text='{"code":403,"msg":"denied by the test"}', content_type="application/json")
        return web.Response(text=self.answer_allow, content_type="application/json")

    def bodies(self, action: str | None = None, stream: str | None = None, **match) -> list[dict]:
        out = []
        for _, _, body in list(self.calls):
            if action is not None and body.get("action") != action:
                continue
            if stream is not None and body.get("stream") != stream:
                continue
            if any(body.get(k) != v for k, v in match.items()):
                continue
            out.append(body)
        return out

    def wait(self, action: str, count: int = 1, timeout: float = 10, **match) -> list[dict]:
        wait_for(lambda: len(self.bodies(action, **match)) >= count, timeout,
                 what=f"{count} {action} hook calls matching {match}")
        return self.bodies(action, **match)

    def stop(self) -> None:
        self._stopping = True
        async def down():
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def hooks_block(hooks: HookServer, timeout_ms: int = 3000, events=("on_connect", "on_close", "on_publish",
                                                                   "on_unpublish", "on_play", "on_stop"),
                max_inflight: int = 256) -> str:
    lines = "\n".join(f"{e} {hooks.url('/api/v1/' + e)};" for e in events)
    return f"http_hooks {{ enabled on; timeout {timeout_ms}; max_inflight {max_inflight};\n{lines}\n}}"
