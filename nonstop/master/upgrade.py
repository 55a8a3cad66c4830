"""The upgrade's plain state, owned by the master: where the last upgrade is, its figures, the counters behind
`nonstop_upgrades_total{result}` and `nonstop_handover_seconds`, and the state that crosses the master's
`execve` in an environment variable. No I/O here, so it is tested with data alone.

An upgrade goes `checking` (run `nonstop -t` with the code on disk) -> `reexec` (the master execs itself) ->
`starting` (a new worker starts, bounded by `upgrade_timeout`) -> `handing_over` (the old worker hands its
connections over) -> `done`. It ends early as `failed` (the config check failed), `rolled_back` (the new worker
exited or was not ready in time; the old worker kept serving) or `abandoned` (a quit began before the handover:
nothing is handed over, every worker quits). Only one may be in flight; an upgrade is over
when the handover is done, not when the old worker has exited (it may still drain leftovers).
"""

from __future__ import annotations

import json
import os

IDLE = "idle"
CHECKING = "checking"
REEXEC = "reexec"
STARTING = "starting"
HANDING_OVER = "handing_over"
DONE = "done"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
ABANDONED = "abandoned"
IN_FLIGHT = (CHECKING, REEXEC, STARTING, HANDING_OVER)
# Before the handover: a quit that begins then ends the upgrade as ABANDONED.
BEFORE_HANDOVER = (CHECKING, REEXEC, STARTING)
RESULTS = (DONE, FAILED, ROLLED_BACK, ABANDONED)

# The re-exec'd master finds its past self here (JSON, see MasterState).
STATE_ENV = "NONSTOP_MASTER_STATE"
# The history of upgrades and reloads the console shows (/api/v1/nonstop/upgrades): the last this many, oldest
# first. Each entry is a few hundred bytes of JSON, and it rides every status order to the workers and the
# state across the master's execve.
HISTORY_MAX = 20
RELOAD = "reload"
UPGRADE = "upgrade"
# Per-connection handover time, seconds: a quiesce plus a frame and its acknowledgement is a few ms; a slow
# player's writer may take up to the quiesce bound (2 s) before it is left to drain.
HANDOVER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Bucket counts (not cumulative), a sum and a count: what a Prometheus histogram needs, as plain data."""

    def __init__(self, counts: list[int] | None = None, total: float = 0.0):
        self.counts = list(counts) if counts else [0] * (len(HANDOVER_BUCKETS) + 1)
        self.sum = total

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(HANDOVER_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, cumulative count)] ending with +Inf, as prometheus_client's HistogramMetricFamily takes it."""
        out, running = [], 0
        for bound, n in zip((*HANDOVER_BUCKETS, float("inf")), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out

    def as_dict(self) -> dict:
        return {"counts": list(self.counts), "sum": self.sum}

    @classmethod
    def from_dict(cls, data: dict | None) -> "Histogram":
        if not data or len(data.get("counts", [])) != len(HANDOVER_BUCKETS) + 1:
            return cls()
        return cls(data["counts"], float(data.get("sum", 0.0)))


class Upgrade:
    """The last upgrade (`data.upgrade` in /api/v1/summaries) and the running totals of all of them."""

    def __init__(self):
        self.state = IDLE
        self.reason = ""
        self.started_ms = 0
        self.finished_ms = 0
        self.handed_over = 0
        self.failed = 0
        self.drained = 0
        self.total_ms = 0.0
        self.worst_ms = 0.0
        self.results = dict.fromkeys(RESULTS, 0)
        self.histogram = Histogram()
        self.history: list[dict] = []      # finished upgrades and reloads, oldest first, at most HISTORY_MAX

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT

    def begin(self, now_ms: int) -> None:
        if self.in_flight:
            raise ValueError(f"an upgrade is already {self.state}")
        self.state, self.reason = CHECKING, ""
        self.started_ms, self.finished_ms = now_ms, 0
        self.handed_over = self.failed = self.drained = 0
        self.total_ms = self.worst_ms = 0.0

    def advance(self, state: str) -> None:
        order = IN_FLIGHT
        if state not in order or not self.in_flight or order.index(state) < order.index(self.state):
            raise ValueError(f"upgrade cannot go from {self.state} to {state}")
        self.state = state

    def handover_stats(self, stats: dict, per_conn_s: list[float]) -> None:
        """The old worker's figures for its handover (transfer.HandoverStats.as_dict())."""
        self.handed_over += int(stats.get("handed_over", 0))
        self.failed += int(stats.get("failed", 0))
        self.drained += int(stats.get("drained", 0))
        self.total_ms = max(self.total_ms, float(stats.get("total_ms", 0.0)))
        self.worst_ms = max(self.worst_ms, float(stats.get("worst_ms", 0.0)))
        for seconds in per_conn_s:
            self.histogram.observe(float(seconds))

    def finish(self, result: str, now_ms: int, reason: str = "") -> None:
        if result not in RESULTS:
            raise ValueError(f"unknown upgrade result {result}")
        if not self.in_flight:
            return
        self.state, self.reason, self.finished_ms = result, reason, now_ms
        self.results[result] += 1
        self.remember({"kind": UPGRADE, **self.as_dict()})

    def record_reload(self, ok: bool, started_ms: int, finished_ms: int, reason: str = "") -> None:
        """A reload (SIGHUP) ended: `done`, or `failed` with the reason (the old config kept running)."""
        self.remember({"kind": RELOAD, "state": DONE if ok else FAILED, "reason": reason,
                       "started_ms": started_ms, "finished_ms": finished_ms})

    def remember(self, entry: dict) -> None:
        self.history.append(entry)
        del self.history[:-HISTORY_MAX]

    def as_dict(self) -> dict:
        """`data.upgrade`."""
        return {"state": self.state, "reason": self.reason, "started_ms": self.started_ms,
                "finished_ms": self.finished_ms, "handed_over": self.handed_over, "failed": self.failed,
                "drained": self.drained, "total_ms": round(self.total_ms, 1), "worst_ms": round(self.worst_ms, 1)}

    def totals(self) -> dict:
        """What workers need for /metrics: upgrades by result and the handover histogram."""
        return {"results": dict(self.results), "histogram": self.histogram.as_dict()}

    def to_dict(self) -> dict:
        return {**self.as_dict(), **self.totals(), "history": [dict(e) for e in self.history]}

    @classmethod
    def from_dict(cls, data: dict) -> "Upgrade":
        self = cls()
        for key in ("state", "reason", "started_ms", "finished_ms", "handed_over", "failed", "drained",
                    "total_ms", "worst_ms"):
            if key in data:
                setattr(self, key, data[key])
        self.results.update({k: int(v) for k, v in data.get("results", {}).items() if k in RESULTS})
        self.histogram = Histogram.from_dict(data.get("histogram"))
        history = data.get("history")
        if isinstance(history, list):
            self.history = [dict(e) for e in history if isinstance(e, dict)][-HISTORY_MAX:]
        return self


# ----- the state that crosses execve ---------------------------------------------------------------------------

def encode_state(*, listeners: list[tuple[str, int]], pidfile_fd: int | None, pid: int,
                 workers: list[dict], generation: int, upgrade: Upgrade, ever_ready: bool) -> str:
    """Everything the re-exec'd master must know: its listeners, pid file and workers by fd number (the fds
    themselves are inherited: the caller makes them inheritable), and the upgrade under way."""
    return json.dumps({"listeners": [[k, fd] for k, fd in listeners], "pidfile_fd": pidfile_fd, "pid": pid,
                       "workers": workers, "generation": generation, "upgrade": upgrade.to_dict(),
                       "ever_ready": ever_ready})


def decode_state(text: str) -> dict:
    """The dict of encode_state(), checked; raises ValueError on anything else."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("master state is not an object")
    for key, kind in (("listeners", list), ("workers", list), ("generation", int), ("upgrade", dict)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"master state: {key} missing or not a {kind.__name__}")
    for pair in data["listeners"]:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], int)):
            raise ValueError(f"master state: bad listener {pair!r}")
    for worker in data["workers"]:
        if not (isinstance(worker, dict) and isinstance(worker.get("pid"), int)
                and isinstance(worker.get("channel"), int)):
            raise ValueError(f"master state: bad worker {worker!r}")
    return data


def take_state(environ=os.environ) -> dict | None:
    """The state a past self left in the environment (removed from it, so no child sees it), or None."""
    text = environ.pop(STATE_ENV, None)
    return decode_state(text) if text else None
