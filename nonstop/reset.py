"""Resetting a TCP connection: how a kick or an expired deadline ends one at once, whatever the client does
(used by the media connections and the HTTP API alike, so it sits below both).

`transport.close()` waits until the unsent bytes are written, and a client that never reads never lets them
go: the socket stays ESTABLISHED (and counted, and holding its buffer) until TCP gives up, tens of seconds
later. `transport.abort()` drops asyncio's buffer and forgets the connection now, but the kernel still holds
the socket, with its unsent bytes, in FIN_WAIT1 for as long as the peer's window stays closed. SO_LINGER
with a zero timeout makes the close send RST and drop what the kernel holds too: nothing of it is left.
"""

from __future__ import annotations

import socket
import struct

_LINGER_RESET = struct.pack("ii", 1, 0)     # struct linger {l_onoff = 1, l_linger = 0}


def reset(transport) -> None:
    """Close `transport` at once with a TCP RST; its connection_lost() follows in the next loop iteration."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass    # already gone: abort() below is all that is left to do
    transport.abort()
