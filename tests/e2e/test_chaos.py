"""The chaos test of issue 10: the real server (master + worker, `min_latency on`) under one publisher, long-lived
RTMP and HTTP-FLV readers that check every timestamp, churning short-lived players and probes, a player that never
reads and idle clients holding partial messages, while the operator upgrades 5 times in a row, kills the worker
with SIGKILL, stalls it with SIGSTOP for 6 s and reloads. Every client is a separate process.

The harness and the criteria are in tests/e2e/chaos.py (its docstring says what a `kill -9` of a worker allows:
the worker's sockets die with it, so its clients reconnect inside the kill window, counted apart; and that the
gap overlapping the SIGSTOP is excluded from the bound and printed apart). A failure lists every criterion that
failed, with the reader, the phase and the times, then the tails of the logs, which stay in the test's tmp dir.

`make test` runs the short version (about 60-90 s); `make test-long` runs the 10-minute soak.
"""

from __future__ import annotations

import pytest

from tests.e2e.chaos import MB, Chaos, ChaosPlan


@pytest.fixture
def chaos_run(tmp_path):
    """Chaos(plan) on the test's tmp dir; every process it started is ended afterwards, whatever happened."""
    runs = []

    def make(plan: ChaosPlan) -> Chaos:
        run = Chaos(plan, tmp_path)
        runs.append(run)
        return run
    yield make
    for run in runs:
        run.close()


def run_and_judge(run: Chaos) -> None:
    result = run.run()
    print(result.report())
    if result.failures:
        print(run.logs_for_failure())
    assert not result.failures, "\n".join(result.failures)


@pytest.mark.timeout(480)
def test_chaos_short(chaos_run):
    run_and_judge(chaos_run(ChaosPlan()))


@pytest.mark.long
@pytest.mark.timeout(1200)
def test_chaos_soak_10_minutes(chaos_run):
    run_and_judge(chaos_run(ChaosPlan(between_s=10.0, soak_s=600.0, idle_clients=18,
                                      idle_partial_bytes=16 * MB - 4096)))
