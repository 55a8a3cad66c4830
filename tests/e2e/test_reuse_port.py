"""`reuse_port on`: two *instances* (each its own master and pid file) serve one port, and the old one drains
under connect churn. When a reuseport listener closes, the connections waiting in its own accept queue are
reset unless `net.ipv4.tcp_migrate_req` is 1 (Linux >= 5.14), which moves them to a sibling listener.

The sysctl is per network namespace: each run sets it inside a namespace of its own, never on the host. Where
namespaces are not available (not root, no `ip`), the test is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

import pytest

from tests.e2e.upgrade_helpers import UpgradeServer
from tests.helpers import nonstop_cmd, wait_for

pytestmark = pytest.mark.timeout(120)

CHURN_RATE = 200
CHURN_SECONDS = 6


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@pytest.fixture
def netns():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    name = f"nsupg{os.urandom(3).hex()}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"network namespaces not available: {e.stderr.strip()}")
    try:
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        for pid in _ip("netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _ip("netns", "del", name, check=False)


@dataclass
class NetnsServer(UpgradeServer):
    """A server started inside a network namespace (its ports are not reachable from the test's own)."""
    netns: str = ""

    def start(self, wait: bool = True) -> "NetnsServer":
        self.conf_path.write_text(self.config_text())
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns,
                                      *nonstop_cmd("-c", str(self.conf_path))], cwd=self.workdir,
                                     stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        if wait:
            self.wait_log("worker serving", timeout=15)
        return self


@pytest.mark.parametrize("migrate_req", [0, 1])
def test_two_instances_share_a_port_and_the_old_one_drains_under_churn(netns, migrate_req):
    _ip("netns", "exec", netns, "sysctl", "-q", "-w", f"net.ipv4.tcp_migrate_req={migrate_req}")
    settings = "reuse_port on; grace_start_wait 300; grace_final_wait 100; grace_max_wait 2000;"
    old = NetnsServer(netns=netns, extra_global=settings).start()
    new = None
    bench = subprocess.Popen(["ip", "netns", "exec", netns,
                              *nonstop_cmd("bench", f"rtmp://127.0.0.1:{old.rtmp_port}/live/churn", "--churn",
                                           str(CHURN_RATE), "--duration", str(CHURN_SECONDS), "--warmup", "0",
                                           "--json")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: old.log().count("connect ip=") >= 100, 15, what="churn on the old instance")
        new = NetnsServer(netns=netns, extra_global=settings, rtmp_port=old.rtmp_port).start()
        wait_for(lambda: new.log().count("connect ip=") >= 20, 15, what="the new instance to take connects")
        old.signal(signal.SIGQUIT)
        assert old.proc.wait(15) == 0
        out, err = bench.communicate(timeout=60)
        assert bench.returncode == 0, err[-2000:]
        churn = json.loads(out)["churn"]
        print(f"tcp_migrate_req={migrate_req}: {churn['ok']} ok of {churn['attempted']} connects; refused "
              f"{churn['refused']}, reset {churn['reset']}, unanswered {churn['unanswered']}; old instance "
              f"served {old.log().count('connect ip=')}, new {new.log().count('connect ip=')}")
        assert churn["attempted"] >= CHURN_RATE * CHURN_SECONDS * 0.8
        assert churn["refused"] == 0, "the new instance listened the whole time"
        if migrate_req:
            assert churn["failed"] == 0, churn
        assert new.proc.poll() is None and new.log().count("connect ip=") > 100
    finally:
        if bench.poll() is None:
            bench.kill()
        old.stop()
        if new is not None:
            new.stop()
