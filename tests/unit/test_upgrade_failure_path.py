"""The master's side of a broken handover (master/upgrading.py): once anything moved, the new worker is kept
and the old one drains (handover/transfer.py I4); with nothing moved, the upgrade rolls back."""

from __future__ import annotations

from nonstop.master import upgrade as up
from nonstop.master.upgrading import Upgrading
from nonstop.master.workers import RETIRING, SERVING


class FakeProc:
    def __init__(self):
        self.killed = False

    def poll(self):
        return -9 if self.killed else None

    def kill(self):
        self.killed = True


class FakeWorker:
    def __init__(self, pid: int, generation: int, candidate: bool = False):
        self.pid, self.generation, self.candidate = pid, generation, candidate
        self.proc = FakeProc()
        self.state = SERVING
        self.discarded = False
        self.handover_end = None
        self.started_at = 0.0
        self.orders: list = []

    def order(self, op, fds=None, **fields):
        self.orders.append((op, fields))
        return True


class FakeMaster(Upgrading):
    def __init__(self):
        self.old = FakeWorker(10, 1)
        self.old.state = RETIRING
        self.new = FakeWorker(11, 2, candidate=True)
        self.workers = [self.old, self.new]
        self.generation = 2
        self.quitting = None
        self.upgrade = up.Upgrade()
        self.upgrade.begin(1)
        for state in (up.REEXEC, up.STARTING, up.HANDING_OVER):
            self.upgrade.advance(state)

    def live_workers(self):
        return [w for w in self.workers if not w.proc.killed]


def broken(handed_over: int, failed: int, streams: int) -> dict:
    return {"op": "handover_failed", "error": "BrokenPipeError(32, 'Broken pipe')",
            "stats": {"handed_over": handed_over, "failed": failed, "drained": 0, "streams": streams,
                      "total_ms": 5.0, "worst_ms": 2.0, "broken": "BrokenPipeError"}, "per_conn": [0.01]}


def test_a_handover_that_breaks_after_streams_moved_keeps_the_new_worker_and_drains_the_old(capsys):
    master = FakeMaster()
    master._handover_failed(master.old, broken(handed_over=150, failed=40, streams=1))
    assert not master.new.proc.killed, "the new worker holds the streams that moved: never killed"
    assert master.upgrade.state == up.DONE and master.generation == 2
    assert ("quit", {"graceful": True}) in master.old.orders and master.old.state == RETIRING
    assert master.upgrade.failed == 40 and master.upgrade.handed_over == 150


def test_a_handover_that_breaks_before_anything_moved_rolls_back():
    master = FakeMaster()
    master._handover_failed(master.old, broken(handed_over=0, failed=3, streams=0))
    assert master.new.proc.killed and master.new.discarded
    assert master.upgrade.state == up.ROLLED_BACK and master.generation == 1 and master.old.state == SERVING


def test_the_upgrade_line_is_a_warning_with_the_failures_when_anything_failed(monkeypatch):
    lines = []
    from nonstop.master import upgrading
    monkeypatch.setattr(upgrading.log, "warn", lambda cid, msg: lines.append(("warn", msg)))
    monkeypatch.setattr(upgrading.log, "trace", lambda cid, msg: lines.append(("trace", msg)))
    master = FakeMaster()
    master._handover_failed(master.old, broken(handed_over=150, failed=40, streams=1))
    done = [line for line in lines if "upgrade done" in line[1]]
    assert done and done[0][0] == "warn" and "failed=40" in done[0][1] and "the handover broke" in done[0][1]
