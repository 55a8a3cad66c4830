"""The upgrade's plain state (nonstop/master/upgrade.py): its state machine, figures, histogram, and the state
that crosses the master's execve."""

from __future__ import annotations

import pytest

from nonstop.master import upgrade as up


def test_an_upgrade_goes_checking_reexec_starting_handing_over_then_done():
    u = up.Upgrade()
    assert u.state == up.IDLE and not u.in_flight
    u.begin(1000)
    for state in (up.REEXEC, up.STARTING, up.HANDING_OVER):
        assert u.in_flight
        u.advance(state)
    u.handover_stats({"handed_over": 5, "failed": 1, "drained": 2, "total_ms": 12.5, "worst_ms": 7.25},
                     [0.002, 0.02, 3.0])
    u.finish(up.DONE, 1500)
    assert not u.in_flight
    assert u.as_dict() == {"state": "done", "reason": "", "started_ms": 1000, "finished_ms": 1500,
                           "handed_over": 5, "failed": 1, "drained": 2, "total_ms": 12.5, "worst_ms": 7.2}
    assert u.results == {"done": 1, "failed": 0, "rolled_back": 0, "abandoned": 0}


def test_only_one_upgrade_may_be_in_flight_and_states_never_go_back():
    u = up.Upgrade()
    u.begin(1)
    with pytest.raises(ValueError):
        u.begin(2)
    u.advance(up.STARTING)      # skipping the re-exec (execve failed) is allowed
    with pytest.raises(ValueError):
        u.advance(up.CHECKING)
    u.finish(up.ROLLED_BACK, 3, "the new worker exited")
    with pytest.raises(ValueError):
        u.advance(up.HANDING_OVER)
    u.finish(up.DONE, 4)        # an upgrade that is over is not finished twice
    assert (u.state, u.reason, u.results[up.ROLLED_BACK], u.results[up.DONE]) == \
        ("rolled_back", "the new worker exited", 1, 0)


def test_a_new_upgrade_starts_its_figures_afresh_but_the_totals_run_on():
    u = up.Upgrade()
    u.begin(1)
    u.handover_stats({"handed_over": 3}, [0.001])
    u.finish(up.DONE, 2)
    u.begin(3)
    assert (u.handed_over, u.finished_ms, u.histogram.count) == (0, 0, 1)
    u.finish(up.FAILED, 4, "config check")
    assert u.results == {"done": 1, "failed": 1, "rolled_back": 0, "abandoned": 0}


def test_the_histogram_counts_per_bucket_and_reports_cumulative_counts():
    h = up.Histogram()
    for seconds in (0.0005, 0.001, 0.02, 0.02, 100.0):
        h.observe(seconds)
    cumulative = dict(h.cumulative())
    assert cumulative["0.001"] == 2 and cumulative["0.025"] == 4 and cumulative["2.5"] == 4
    assert cumulative["+Inf"] == h.count == 5
    assert h.sum == pytest.approx(100.0415)
    again = up.Histogram.from_dict(h.as_dict())
    assert again.counts == h.counts and again.sum == h.sum
    assert up.Histogram.from_dict({"counts": [1, 2]}).count == 0     # another bucket layout is not mixed in


def test_the_master_state_crosses_execve_as_plain_json():
    u = up.Upgrade()
    u.begin(7)
    u.advance(up.REEXEC)
    text = up.encode_state(listeners=[("rtmp 0.0.0.0:1935", 5), ("api 127.0.0.1:1985", 6)], pidfile_fd=4,
                           pid=42, workers=[{"pid": 100, "channel": 9, "state": "serving", "generation": 2}],
                           generation=2, upgrade=u, ever_ready=True)
    environ = {up.STATE_ENV: text}
    state = up.take_state(environ)
    assert up.STATE_ENV not in environ, "no child inherits it"
    assert state["listeners"] == [["rtmp 0.0.0.0:1935", 5], ["api 127.0.0.1:1985", 6]]
    assert (state["pidfile_fd"], state["pid"], state["generation"]) == (4, 42, 2)
    assert state["workers"][0]["channel"] == 9
    restored = up.Upgrade.from_dict(state["upgrade"])
    assert restored.state == up.REEXEC and restored.started_ms == 7 and restored.in_flight
    assert up.take_state({}) is None


@pytest.mark.parametrize("text", ['[]', '{"listeners": [], "workers": [], "generation": 1}',
                                  '{"listeners": [["rtmp", "5"]], "workers": [], "generation": 1, "upgrade": {}}',
                                  '{"listeners": [], "workers": [{"pid": 1}], "generation": 1, "upgrade": {}}'])
def test_a_malformed_master_state_is_refused(text):
    with pytest.raises(ValueError):
        up.decode_state(text)
