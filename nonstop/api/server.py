"""The HTTP API (/api/v1/*, /metrics, /healthz, /readyz) served by the worker with aiohttp.

Interface used by the worker (the operations issue fills in the endpoints):
- `ApiServer(worker)`; `await api.start(sockets)` serves on already-bound listening sockets;
- `api.adopt(transport, data)` takes a connection that arrived on the HTTP server port when the API shares it,
  with the bytes already read;
- `await api.stop()`.
"""

from __future__ import annotations


class ApiServer:
    def __init__(self, worker):
        self.worker = worker

    async def start(self, sockets) -> None:
        raise NotImplementedError("the HTTP API is the operations issue's")

    def adopt(self, transport, data: bytes) -> None:
        transport.close()

    async def stop(self) -> None:
        pass
