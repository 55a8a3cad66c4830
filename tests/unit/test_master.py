"""The master's small parts, without a server: sd_notify, the pid file lock, the control channel, and the
listener plans a reload makes."""

from __future__ import annotations

import os
import signal
import socket
import uuid

import pytest

from nonstop.config import load_text
from nonstop.config.values import Endpoint
from nonstop.master import sdnotify
from nonstop.master.channel import Channel, socketpair
from nonstop.master.control import SIGNALS
from nonstop.master.pidfile import AlreadyRunning, PidFile, read_pid
from nonstop.master.sockets import ListenerSet, api_shares_http, endpoint_matches, wanted


def conf(body: str):
    return load_text(body + "\nvhost __defaultVhost__ { }\n")


# ----- sd_notify ---------------------------------------------------------------------------------------------

def test_notify_without_notify_socket_is_a_no_op():
    assert sdnotify.notify("READY=1", environ={}) is False


def test_notify_sends_one_datagram_to_a_path(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        assert sdnotify.notify("RELOADING=1", "MONOTONIC_USEC=5", environ={"NOTIFY_SOCKET": path})
        assert receiver.recv(100) == b"RELOADING=1\nMONOTONIC_USEC=5"


def test_notify_reaches_an_abstract_address_written_with_an_at_sign():
    name = f"nonstop-unit-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert receiver.recv(100) == b"READY=1"


def test_notify_to_a_missing_socket_fails_quietly(tmp_path):
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False


# ----- pid file ------------------------------------------------------------------------------------------------

def _try_lock_in_a_child(path: str) -> int:
    """POSIX locks are per process: only another process can see ours. Exit 4 if locked, 0 if it got it."""
    pid = os.fork()
    if pid == 0:
        try:
            PidFile(path).acquire()
            os._exit(0)
        except AlreadyRunning:
            os._exit(4)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_pid_file_holds_the_pid_with_a_newline_and_locks_out_another_process(tmp_path):
    path = str(tmp_path / "objs" / "nonstop.pid")
    pidfile = PidFile(path)
    pidfile.acquire()
    try:
        # Read through the lock's own fd: closing any other fd of the file would drop a POSIX lock.
        assert os.pread(pidfile.fd, 64, 0) == f"{os.getpid()}\n".encode()
        assert _try_lock_in_a_child(path) == 4
        assert read_pid(path) == os.getpid()
    finally:
        pidfile.release()
    assert not os.path.exists(path)
    assert _try_lock_in_a_child(path) == 0, "free again once released"


def test_a_stale_pid_file_is_taken_over(tmp_path):
    path = tmp_path / "nonstop.pid"
    path.write_text("123456")            # SRS style: no newline, left behind, unlocked
    pidfile = PidFile(str(path))
    pidfile.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    pidfile.release()


def test_release_keeps_a_pid_file_that_holds_another_pid(tmp_path):
    path = tmp_path / "nonstop.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    os.pwrite(pidfile.fd, b"99999\n", 0)     # as if an operator or another instance rewrote it
    pidfile.release()
    assert path.read_text() == "99999\n"


# ----- control channel ------------------------------------------------------------------------------------------

def test_channel_carries_messages_and_fds_and_reports_eof():
    master_end, worker_end = socketpair()
    master, worker = Channel(master_end), Channel(worker_end)
    with socket.socket() as listener:
        assert master.send("reload", [listener.fileno()], path="/etc/nonstop.conf", add=["rtmp 0.0.0.0:1935"])
        assert master.send("reopen")
        messages = worker.receive()
        assert [m["op"] for m, _ in messages] == ["reload", "reopen"]
        (reload, fds), (_, no_fds) = messages
        assert reload["add"] == ["rtmp 0.0.0.0:1935"] and len(fds) == 1 and no_fds == []
        assert os.fstat(fds[0]).st_ino == os.fstat(listener.fileno()).st_ino, "the same socket"
        os.close(fds[0])
    assert worker.receive() == [], "nothing more waiting"
    master.close()
    assert worker.receive() is None, "the peer is gone"
    worker.close()


def test_channel_drops_malformed_messages():
    a, b = socketpair()
    a.send(b"not json")
    a.send(b'["no", "op"]')
    Channel(a).send("ready", pid=7)
    assert Channel(b).receive() == [({"op": "ready", "pid": 7}, [])]
    a.close()
    b.close()


# ----- listeners ------------------------------------------------------------------------------------------------

def test_wanted_listeners_by_kind_and_a_shared_api_port():
    config = conf("listen 1935 127.0.0.1:1936; http_api { enabled on; listen 1985; } "
                  "http_server { enabled on; listen 8080; }")
    assert list(wanted(config)) == ["rtmp 0.0.0.0:1935", "rtmp 127.0.0.1:1936", "http 0.0.0.0:8080",
                                    "api 0.0.0.0:1985"]
    shared = conf("listen 1935; http_api { enabled on; listen 8080; } http_server { enabled on; listen 8080; }")
    assert api_shares_http(shared) and list(wanted(shared)) == ["rtmp 0.0.0.0:1935", "http 0.0.0.0:8080"]


def test_a_wildcard_endpoint_matches_either_familys_wildcard_socket():
    with socket.socket(socket.AF_INET6) as v6, socket.socket() as v4:
        v6.bind(("::", 0))
        v4.bind(("127.0.0.1", 0))
        assert endpoint_matches(v6, Endpoint("0.0.0.0", v6.getsockname()[1]))
        assert not endpoint_matches(v4, Endpoint("0.0.0.0", v4.getsockname()[1]))
        assert endpoint_matches(v4, Endpoint("127.0.0.1", v4.getsockname()[1]))
        assert not endpoint_matches(v4, Endpoint("127.0.0.1", v4.getsockname()[1] + 1))


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_a_reload_plan_keeps_moves_and_closes_listeners():
    a, b, c = _ports(3)
    listeners = ListenerSet()
    listeners.open(conf(f"listen 127.0.0.1:{a}; http_server {{ enabled on; listen 127.0.0.1:{b}; }}"))
    kept = listeners.sockets[f"http 127.0.0.1:{b}"]
    moved = listeners.sockets[f"rtmp 127.0.0.1:{a}"]
    plan = listeners.plan(conf(f"listen 127.0.0.1:{c}; http_server {{ enabled on; listen 127.0.0.1:{b}; }}"))
    assert list(plan.keep) == [f"http 127.0.0.1:{b}"] and plan.keep[f"http 127.0.0.1:{b}"] is kept
    assert list(plan.add) == [f"rtmp 127.0.0.1:{c}"] and plan.remove == [f"rtmp 127.0.0.1:{a}"]
    assert plan.close == [moved]
    listeners.commit(plan)
    assert moved.fileno() == -1 and kept.fileno() >= 0
    assert set(listeners.sockets) == {f"http 127.0.0.1:{b}", f"rtmp 127.0.0.1:{c}"}
    listeners.close_all()


def test_a_listener_that_changes_kind_keeps_its_socket():
    a, b = _ports(2)
    listeners = ListenerSet()
    listeners.open(conf(f"listen 127.0.0.1:{a}; http_api {{ enabled on; listen 127.0.0.1:{b}; }}"))
    api = listeners.sockets[f"api 127.0.0.1:{b}"]
    plan = listeners.plan(conf(f"listen 127.0.0.1:{a}; http_server {{ enabled on; listen 127.0.0.1:{b}; }}"))
    assert plan.add == {f"http 127.0.0.1:{b}": api} and plan.remove == [f"api 127.0.0.1:{b}"]
    assert plan.close == []
    listeners.commit(plan)
    assert api.fileno() >= 0
    listeners.close_all()


def test_a_plan_that_cannot_bind_binds_nothing():
    a, b = _ports(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", b))
        squatter.listen()
        listeners = ListenerSet()
        listeners.open(conf(f"listen 127.0.0.1:{a};"))
        before = dict(listeners.sockets)
        with pytest.raises(OSError):
            listeners.plan(conf(f"listen 127.0.0.1:{a} 127.0.0.1:{b};"))
        assert listeners.sockets == before and all(s.fileno() >= 0 for s in before.values())
        listeners.close_all()


def test_s_verbs_map_to_nginx_signals():
    assert SIGNALS == {"stop": signal.SIGINT, "quit": signal.SIGQUIT, "grace": signal.SIGQUIT,
                       "reload": signal.SIGHUP, "reopen": signal.SIGUSR1, "upgrade": signal.SIGUSR2}
