"""What every connection of one load-generator process shares: the read buffer, the latency table, counters.

One process runs one asyncio loop, and a protocol's get_buffer, the read into it and buffer_updated happen
back to back with no other callback in between (uvloop and asyncio both). So all the players of a process read
into the same buffer: 2,000 players cost one 256 KiB buffer, not 2,000.
"""

from __future__ import annotations

import errno
from collections import Counter

from nonstop.bench.stats import LatencyHistogram
from nonstop.protocol.errors import ProtocolError

# One read takes up to this much. With SO_RCVLOWAT at 64 KiB a read usually brings 64-128 KiB.
READ_BUFFER_SIZE = 256 * 1024

# How a connection that never reached its goal (play, connect, createStream) failed.
FAIL_REFUSED = "refused"      # ECONNREFUSED: nobody listens, or the backlog is full
FAIL_RESET = "reset"          # the server closed or reset the connection before answering
FAIL_REJECTED = "rejected"    # the server answered no: connect _error, an error onStatus, HTTP non-200
FAIL_TIMEOUT = "timeout"      # no answer within the timeout
FAIL_PROTOCOL = "protocol"    # the server's bytes made no sense
FAIL_ERROR = "error"          # any other OS error
FAIL_KINDS = (FAIL_REFUSED, FAIL_RESET, FAIL_REJECTED, FAIL_TIMEOUT, FAIL_PROTOCOL, FAIL_ERROR)


def classify(exc: BaseException | None) -> str:
    """The failure kind of an exception from connect, read or write (None: a clean EOF, so a reset)."""
    if exc is None or isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return FAIL_RESET
    if isinstance(exc, ConnectionRefusedError):
        return FAIL_REFUSED
    if isinstance(exc, TimeoutError):
        return FAIL_TIMEOUT
    if isinstance(exc, ProtocolError):
        return FAIL_PROTOCOL
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return FAIL_RESET
    return FAIL_ERROR


class Context:
    """Shared state of one process's connections. Plain attributes; the process runner owns it."""

    def __init__(self, opts, loop):
        self.opts = opts
        self.loop = loop
        self.buf = bytearray(READ_BUFFER_SIZE)
        self.view = memoryview(self.buf)
        # Latency: the send time of each video message of the publishers in this process, by latency key
        # (see publisher.latency_key) with the stream index in the top bits.
        self.sent_times: dict[int, float] = {}
        self.local_streams: set[int] = set()
        self.latency = LatencyHistogram()
        self.latency_unmatched = 0  # frames of a local stream whose key was unknown (ambiguous in the file)
        self.measuring = False
        self.stopping = False
        # Player connections.
        self.attempts = 0
        self.ok = 0
        self.failed: Counter = Counter()
        self.dropped = 0            # playing connections the server ended before the run did
        self.hangups = 0            # connections a reconnecting player closed itself
