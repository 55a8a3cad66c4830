"""The handover's invariants (handover/transfer.py I1-I6), proved by a hypothesis state machine.

Real Worker objects in one uvloop loop, the real transfer code between them over a real UNIX socketpair, real
RTMP clients on loopback. Rules interleave player joins (and probes that hang up at their first frame),
leaves, publishes, unpublishes, server-side kicks and media with every step of the handover (the `step`
seam of transfer.py stops it at each phase). After every step:
- each live client socket is served by exactly one worker (HTTP connections between requests too: they move
  with the idle connections);
- a stream with a live publisher has its source on the worker serving the publisher, with that publisher,
  and every live player plays the source its worker holds for its stream;
- no pinned source was freed;
- no live client was closed by the handover.
Upgrades repeat: after a handover ends, the new worker becomes the old one of the next.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.unit.handover_harness import CONFIG, Client, Handover, ServedWorker, Stepper, wait_until

STREAMS = ("a", "b")
KEY = "__defaultVhost__/live/{}"
# HTTP connections that have sent nothing wait here for the whole run (the default gives them 10 s).
MACHINE_CONFIG = CONFIG.replace("max_connections 1000;", "max_connections 1000;\nhandshake_timeout 600000;")


def conn_for(worker: ServedWorker, client):
    """The worker's open connection of this client socket: its port and the server port it connected to (a
    client port alone can be reused: a client that left while the old worker had stopped reading it is still
    registered there until its handover, and a new client may get its port number towards another listener)."""
    writer = client.rtmp.writer if isinstance(client, Client) else client.writer
    ours = (client.port, writer.get_extra_info("peername")[1])
    for conn in worker.worker.conns.values():
        if conn.closed or conn.transport is None:
            continue
        peer, local = conn.transport.get_extra_info("peername"), conn.transport.get_extra_info("sockname")
        if peer and local and (peer[1], local[1]) == ours:
            return conn
    return None


class HttpIdle:
    """An HTTP connection between requests (a keep-alive player between two polls, or one that has not asked
    yet): it moves with the idle connections and must never be closed by the handover."""

    role, stream = "http", ""

    def __init__(self):
        self.left = self.kicked = self.server_closed = False
        self.port = 0
        self.reader = self.writer = self.task = None

    async def open(self, port: int) -> "HttpIdle":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.port = self.writer.get_extra_info("sockname")[1]
        self.task = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        try:
            await self.reader.read()
        except (OSError, asyncio.CancelledError):
            pass
        if not self.left:
            self.server_closed = True

    async def leave(self) -> None:
        self.left = True
        self.task.cancel()
        self.writer.close()

    @property
    def live(self) -> bool:
        return not self.left and not self.kicked and not self.server_closed


class HandoverMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.loop = uvloop.new_event_loop()
        self.clients: list[Client] = []
        self.workers: list[ServedWorker] = []
        self.serving: ServedWorker | None = None
        self.handover: Handover | None = None
        self.upgrades = 0

    def run(self, coro, timeout: float = 20.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    @initialize()
    def start(self):
        self.serving = self.run(ServedWorker(MACHINE_CONFIG).start())
        self.workers.append(self.serving)

    # ----- where clients go ------------------------------------------------------------------------------

    @property
    def front(self) -> ServedWorker:
        """Where a new client lands: the new worker once a handover started (the old one stopped accepting)."""
        return self.handover.new if self.handover is not None else self.serving

    @property
    def current(self) -> list[ServedWorker]:
        return [self.serving] + ([self.handover.new] if self.handover is not None else [])

    def live(self, role: str | None = None, stream: str | None = None) -> list[Client]:
        return [c for c in self.clients if c.live and (role is None or c.role == role)
                and (stream is None or c.stream == stream)]

    def served_by(self, client: Client) -> list[ServedWorker]:
        return [w for w in self.current if conn_for(w, client) is not None]

    # ----- client rules ----------------------------------------------------------------------------------

    @rule(stream=st.sampled_from(STREAMS), probe=st.booleans())
    def join_player(self, stream, probe):
        async def join():
            client = await Client("play", stream).open(self.front.rtmp_port)
            self.clients.append(client)
            await wait_until(lambda: self.front.conn_of(client.port) is not None, what="player registered")
            if probe:       # hangs up at its first video frame, or at once if there is none yet
                if self.live("publish", stream):
                    try:
                        await wait_until(lambda: client.media > 0, timeout=0.5)
                    except TimeoutError:
                        pass
                await client.leave()
        self.run(join())

    @precondition(lambda self: any(c.role == "play" for c in self.live()))
    @rule(pick=st.integers(0, 10_000))
    def leave(self, pick):
        players = self.live("play")
        self.run(players[pick % len(players)].leave())

    @rule()
    def join_http_idle(self):
        async def join():
            client = await HttpIdle().open(self.front.http_port)
            self.clients.append(client)
            await wait_until(lambda: self.front.conn_of(client.port) is not None, what="http conn registered")
        self.run(join())

    @precondition(lambda self: any(c.role == "http" for c in self.live()))
    @rule(pick=st.integers(0, 10_000))
    def leave_http(self, pick):
        idle = self.live("http")
        self.run(idle[pick % len(idle)].leave())

    @rule(stream=st.sampled_from(STREAMS))
    def publish(self, stream):
        if self.live("publish", stream):
            return
        async def go():
            client = await Client("publish", stream).open(self.front.rtmp_port)
            self.clients.append(client)
            await wait_until(lambda: self.front.conn_of(client.port) is not None, what="publisher registered")
        self.run(go())

    @precondition(lambda self: any(c.role == "publish" for c in self.live()))
    @rule(pick=st.integers(0, 10_000))
    def unpublish(self, pick):
        publishers = self.live("publish")
        self.run(publishers[pick % len(publishers)].leave())

    @precondition(lambda self: any(c.role == "publish" for c in self.live()))
    @rule(key=st.booleans())
    def media(self, key):
        async def send():
            for publisher in self.live("publish"):
                publisher.send_frame(key=key)
                publisher.send_frame()
            await asyncio.sleep(0.005)
        self.run(send())

    @precondition(lambda self: bool(self.live()))
    @rule(pick=st.integers(0, 10_000))
    def kick(self, pick):
        clients = self.live()
        client = clients[pick % len(clients)]
        for worker in self.served_by(client):
            conn = conn_for(worker, client)
            client.kicked = True
            conn.kick("kicked by the test")

    # ----- handover rules --------------------------------------------------------------------------------

    @precondition(lambda self: self.handover is None and self.upgrades < 3)
    @rule()
    def start_handover(self):
        async def begin():
            new = await ServedWorker(MACHINE_CONFIG).start()
            self.workers.append(new)
            self.handover = Handover(self.serving, new, Stepper())
            await self._step()
        self.run(begin())

    @precondition(lambda self: self.handover is not None)
    @rule()
    def step_handover(self):
        self.run(self._step())

    async def _step(self):
        if not await self.handover.step():
            sent, received = await self.handover.finish()
            assert not sent.broken, sent.as_dict()
            old, new = self.handover.old, self.handover.new
            # What was not moved must be a connection that closed or was left behind, never a live one.
            for client in self.live():
                assert conn_for(old, client) is None, f"live client {client.port} left on the old worker"
            self.handover = None
            self.serving = new
            self.upgrades += 1
            await old.stop()

    # ----- invariants --------------------------------------------------------------------------------------

    @invariant()
    def each_live_client_is_served_by_exactly_one_worker(self):
        if self.serving is None:
            return
        for client in self.live():
            served = self.served_by(client)
            assert len(served) == 1, f"{client.role} {client.stream} {client.port} served by {len(served)}"

    @invariant()
    def a_live_publishers_stream_has_its_source_where_it_is_served(self):
        if self.serving is None:
            return
        for client in self.live():
            if client.role == "http":
                continue
            [worker] = self.served_by(client)
            conn = conn_for(worker, client)
            source = worker.worker.registry.sources.get(KEY.format(client.stream))
            assert source is not None and conn.source is source, f"{client.role} {client.stream}: no source"
            if client.role == "publish":
                assert source.publisher is conn

    @invariant()
    def no_pinned_source_was_freed(self):
        for worker in self.workers:
            assert not worker.freed_pinned, worker.freed_pinned

    @invariant()
    def no_live_client_was_closed_by_the_handover(self):
        closed = [c for c in self.clients if c.server_closed and not c.kicked and not c.left]
        assert not closed, [(c.role, c.stream, c.port) for c in closed]

    def teardown(self):
        async def end():
            if self.handover is not None:
                await self._step()
                while self.handover is not None:
                    await self._step()
            await asyncio.sleep(0.05)       # let any EOF reach the readers
            self.no_live_client_was_closed_by_the_handover()
            for client in self.clients:
                if not client.left:
                    await client.leave()
            for worker in self.workers:
                await worker.stop()
        try:
            self.run(end(), timeout=60)
        finally:
            self.loop.run_until_complete(_cancel_the_rest())
            self.loop.close()


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


TestHandoverMachine = HandoverMachine.TestCase
TestHandoverMachine.settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                                        suppress_health_check=list(HealthCheck))


@pytest.mark.long
def test_handover_machine_long():
    from hypothesis.stateful import run_state_machine_as_test
    run_state_machine_as_test(HandoverMachine, settings=settings(
        max_examples=300, stateful_step_count=60, deadline=None, suppress_health_check=list(HealthCheck)))
