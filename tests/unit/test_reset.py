"""nonstop/reset.py: a reset sets SO_LINGER 0 (so the kernel sends RST and keeps nothing) and aborts."""

import socket
import struct

from nonstop.reset import reset


class FakeTransport:
    def __init__(self, sock):
        self.sock = sock
        self.aborted = False

    def get_extra_info(self, name):
        return self.sock if name == "socket" else None

    def abort(self):
        self.aborted = True


def test_reset_sets_a_zero_linger_then_aborts():
    listener = socket.create_server(("127.0.0.1", 0))
    b = socket.create_connection(listener.getsockname())
    a, _ = listener.accept()
    listener.close()
    try:
        transport = FakeTransport(a)
        reset(transport)
        assert transport.aborted
        onoff, seconds = struct.unpack("ii", a.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
        assert (onoff, seconds) == (1, 0)
    finally:
        a.close()
        b.close()


def test_reset_of_a_transport_whose_socket_is_gone_still_aborts():
    closed = socket.socket()
    closed.close()
    transport = FakeTransport(closed)
    reset(transport)
    assert transport.aborted
    reset(None)     # nothing to do
