"""The bounded history of upgrades and reloads (master/upgrade.py), what the master tells its workers
(master/upgrading.py _push_upgrade) and what the API makes of it (api/nonstop.py)."""

from __future__ import annotations

import json

from nonstop.master import upgrade as up
from tests.unit.test_master_states import CONFIG, logged, make  # noqa: F401  (the fixtures)


def finished(u: up.Upgrade, result: str, at: int) -> None:
    u.begin(at)
    u.finish(result, at + 5, "why" if result != up.DONE else "")


def test_each_finished_upgrade_and_reload_is_remembered_oldest_first_and_bounded():
    u = up.Upgrade()
    finished(u, up.DONE, 1000)
    u.record_reload(False, 2000, 2001, "bad config")
    finished(u, up.ROLLED_BACK, 3000)
    assert [(e["kind"], e["state"], e["started_ms"]) for e in u.history] == \
        [("upgrade", "done", 1000), ("reload", "failed", 2000), ("upgrade", "rolled_back", 3000)]
    assert u.history[1]["reason"] == "bad config" and u.history[2]["reason"] == "why"
    for i in range(up.HISTORY_MAX + 5):
        u.record_reload(True, 10_000 + i, 10_001 + i)
    assert len(u.history) == up.HISTORY_MAX
    assert u.history[-1]["started_ms"] == 10_000 + up.HISTORY_MAX + 4, "the newest are kept"


def test_an_upgrade_in_flight_is_not_in_the_history_until_it_ends():
    u = up.Upgrade()
    u.begin(1)
    u.advance(up.REEXEC)
    assert u.history == []
    u.finish(up.DONE, 2)
    u.finish(up.DONE, 3)            # a second finish of the same upgrade is ignored
    assert len(u.history) == 1


def test_the_history_crosses_execve_with_the_upgrade_state():
    u = up.Upgrade()
    finished(u, up.DONE, 1000)
    u.record_reload(True, 2000, 2001)
    text = up.encode_state(listeners=[], pidfile_fd=None, pid=1, workers=[], generation=2, upgrade=u,
                           ever_ready=True)
    back = up.Upgrade.from_dict(up.decode_state(text)["upgrade"])
    assert back.history == u.history
    # A past self's history that is too long or has junk in it is cut and cleaned.
    data = {**u.to_dict(), "history": ["junk"] + [{"kind": "reload"}] * (up.HISTORY_MAX + 3)}
    assert len(up.Upgrade.from_dict(json.loads(json.dumps(data))).history) == up.HISTORY_MAX


def test_a_reload_is_recorded_and_every_worker_is_told_the_history_and_the_workers(make, tmp_path):  # noqa: F811
    path = tmp_path / "nonstop.conf"
    path.write_text(CONFIG.format(extra=""))
    h = make(path=path)
    worker = h.master.workers[0]
    h.orders(worker)
    h.master.handle_hup()
    h.report(worker, "reloaded", ok=True, error="")
    status = [m for m in h.orders(worker) if m["op"] == "upgrade_status"]
    assert status, "the end of a reload is told to the workers"
    history = status[-1]["upgrade"]["history"]
    assert [(e["kind"], e["state"]) for e in history] == [("reload", "done")]
    assert history[0]["finished_ms"] >= history[0]["started_ms"] > 0
    assert status[-1]["workers"] == [{"pid": worker.pid, "generation": 1, "state": "serving",
                                      "started_ms": status[-1]["workers"][0]["started_ms"]}]
    path.write_text(CONFIG.format(extra="no_such_directive on;"))
    h.master.handle_hup()
    history = [m for m in h.orders(worker) if m["op"] == "upgrade_status"][-1]["upgrade"]["history"]
    assert [(e["kind"], e["state"]) for e in history] == [("reload", "done"), ("reload", "failed")]
    assert "no_such_directive" in history[-1]["reason"]


def test_a_worker_exit_tells_the_others_the_new_worker_list(make):  # noqa: F811
    h = make()
    first = h.master.workers[0]
    second = h.ready(h.master.spawn())
    h.orders(first)
    h.exit(second, 0)
    status = [m for m in h.orders(first) if m["op"] == "upgrade_status"]
    assert status and [w["pid"] for w in status[-1]["workers"]] == [first.pid]
