"""The parent of a run: one process on uvloop, or `--procs N` forked processes that it coordinates.

With N > 1 the parent forks N children before any event loop exists (so each child starts its own uvloop
cleanly) and talks to each over a socketpair, with length-prefixed JSON messages:

    child -> parent  {"type": "ready", ...}     its publishers are publishing (or failed)
    parent -> child  {"type": "go", "schedule"}  the shared timeline (see loadgen)
    child -> parent  {"type": "result", ...}    its counters, plain data

The parent itself opens no connection; it samples the CPU and memory of the server (`--server-pid`) and of
the load generator's own processes at the window's edges, and merges the results into the report.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
import traceback

import uvloop

from nonstop.bench import report
from nonstop.bench.loadgen import CHURN_GRACE_S, START_DELAY_S, Options, ProcessRun, make_schedule, sleep_until
from nonstop.bench.procs import per_process_cpu, sample_tree

_LENGTH = struct.Struct(">I")
# How long the parent waits for a child's ready message (publishers connect within connect_timeout) and,
# after the window, for its result (closing thousands of connections and the churn grace take seconds).
READY_GRACE_S = 10.0
RESULT_GRACE_S = 30.0


class RunError(Exception):
    """The run could not be done (a publisher could not publish, a child process died)."""


async def _send(writer: asyncio.StreamWriter, message: dict) -> None:
    data = json.dumps(message).encode()
    writer.write(_LENGTH.pack(len(data)) + data)
    await writer.drain()


async def _receive(reader: asyncio.StreamReader, timeout: float) -> dict:
    head = await asyncio.wait_for(reader.readexactly(_LENGTH.size), timeout)
    return json.loads(await asyncio.wait_for(reader.readexactly(_LENGTH.unpack(head)[0]), timeout))


class Sampler:
    """CPU and RSS of the server's process trees and of the load generator, at the window's edges."""

    def __init__(self, server_pids: list[int]):
        self.server_pids = server_pids
        self.samples: dict[str, dict] = {}

    def take(self, label: str) -> None:
        entry: dict = {"at": time.monotonic(), "bench_per_process": per_process_cpu([os.getpid()])}
        if self.server_pids:
            s = sample_tree(self.server_pids)
            entry["server"] = {"pids": s.pids, "utime": s.utime, "stime": s.stime, "rss_kb": s.rss_kb}
        self.samples[label] = entry

    async def run(self, schedule: dict) -> dict:
        await sleep_until(schedule["window_start"])
        self.take("window_start")
        await sleep_until(schedule["window_end"])
        self.take("window_end")
        return self.samples


def run(opts: Options, media) -> dict:
    """Run the load; return the report (a dict). Raises RunError."""
    if opts.procs <= 1:
        return uvloop.run(_run_single(opts, media))
    return _run_forked(opts, media)


async def _run_single(opts: Options, media) -> dict:
    share = ProcessRun(opts, 0, 1, media)
    ready = await share.prepare()
    if ready["errors"]:
        share.close()
        raise RunError("publisher failed: " + "; ".join(ready["errors"]))
    sampler = Sampler(opts.server_pids)
    sampler.take("baseline")
    schedule = make_schedule(opts, time.monotonic() + START_DELAY_S)
    sampling = asyncio.get_running_loop().create_task(sampler.run(schedule))
    result = await share.run(schedule)
    return report.build(opts, media, [result], await sampling, schedule)


def _run_forked(opts: Options, media) -> dict:
    children = []
    for share in range(opts.procs):
        parent_sock, child_sock = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            for _, other in children:
                other.close()
            code = 0
            try:
                uvloop.run(_child(opts, media, share, child_sock))
            except BaseException:  # a child must never return into the parent's code
                traceback.print_exc()
                code = 1
            os._exit(code)
        child_sock.close()
        children.append((pid, parent_sock))
    try:
        return uvloop.run(_parent(opts, media, children))
    finally:
        for pid, sock in children:
            sock.close()
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


async def _child(opts: Options, media, share: int, sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    process = ProcessRun(opts, share, opts.procs, media)
    try:
        await _send(writer, {"type": "ready", **await process.prepare()})
        go = await _receive(reader, None)
        if go["type"] != "go":
            process.close()
            return
        result = await process.run(go["schedule"])
        await _send(writer, {"type": "result", "result": result})
    except Exception as e:
        await _send(writer, {"type": "error", "error": f"{e!r}\n{traceback.format_exc()}"})
        raise
    finally:
        writer.close()


async def _parent(opts: Options, media, children) -> dict:
    links = [await asyncio.open_connection(sock=sock) for _, sock in children]
    errors = []
    for reader, _ in links:
        try:
            ready = await _receive(reader, opts.connect_timeout + 2 * READY_GRACE_S)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            raise RunError(f"a load generator process did not start: {e!r}") from None
        errors += ready.get("errors", []) + ([ready["error"]] if ready["type"] == "error" else [])
    if errors:
        for _, writer in links:
            await _send(writer, {"type": "stop"})
        raise RunError("publisher failed: " + "; ".join(errors))
    sampler = Sampler(opts.server_pids)
    sampler.take("baseline")
    schedule = make_schedule(opts, time.monotonic() + START_DELAY_S)
    for _, writer in links:
        await _send(writer, {"type": "go", "schedule": schedule})
    samples = await sampler.run(schedule)
    results = []
    for reader, _ in links:
        try:
            message = await _receive(reader, RESULT_GRACE_S + _churn_wait(opts))
        except (asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            raise RunError(f"a load generator process gave no result: {e!r}") from None
        if message["type"] != "result":
            raise RunError(f"a load generator process failed: {message.get('error')}")
        results.append(message["result"])
    for _, writer in links:
        writer.close()
    return report.build(opts, media, results, samples, schedule)


def _churn_wait(opts: Options) -> float:
    """How long a child may still spend on churn stragglers after the window."""
    return min(CHURN_GRACE_S, opts.connect_timeout) if opts.churn else 0.0
