"""Where an edge goes: the URLs it builds and follows (as SRS builds them), and the origin pool's round robin
with health and backoff."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.cluster.balance import OriginPool
from nonstop.cluster.urls import (
    flv_location, host_of_header, host_of_url, parse_rtmp_url, redirect_tc_url, rtmp_url, stream_with_query,
    tc_url_for,
)

# ----- URLs ---------------------------------------------------------------------------------------------


def test_stream_keeps_the_players_query_string_for_the_origin():
    assert stream_with_query("10.0.0.5", "__defaultVhost__", "livestream", "token=abc") == "livestream?token=abc"
    assert stream_with_query("10.0.0.5", "__defaultVhost__", "livestream", "") == "livestream"


def test_stream_names_the_vhost_as_srs_does_when_the_host_is_a_name_or_the_vhost_is_not_default():
    assert stream_with_query("edge.example.com", "__defaultVhost__", "s", "") == "s?vhost=edge.example.com"
    assert stream_with_query("10.0.0.5", "live.example.com", "s", "t=1") == "s?t=1&vhost=live.example.com"
    assert stream_with_query("edge.example.com", "__defaultVhost__", "s", "vhost=x") == "s?vhost=x"


def test_tc_url_uses_the_vhost_as_host_unless_default_and_drops_port_1935():
    assert tc_url_for("10.0.0.1", 1935, "__defaultVhost__", "live") == "rtmp://10.0.0.1/live"
    assert tc_url_for("10.0.0.1", 19350, "__defaultVhost__", "live") == "rtmp://10.0.0.1:19350/live"
    assert tc_url_for("10.0.0.1", 1935, "v.example.com", "live") == "rtmp://v.example.com/live"


def test_redirect2_is_srs_rtmp_url_and_redirect_is_its_tc_url():
    url = rtmp_url("10.0.0.1", 1935, "10.0.0.2", "__defaultVhost__", "live", "livestream", "token=abc")
    assert url == "rtmp://10.0.0.1:1935/live/livestream?token=abc"
    assert redirect_tc_url(url) == "rtmp://10.0.0.1:1935/live"


def test_edge_follows_redirect2_to_host_port_app_and_stream_with_its_query():
    target = parse_rtmp_url("rtmp://10.0.0.1:19350/live/livestream?token=abc")
    assert (target.host, target.port, target.app, target.stream) == ("10.0.0.1", 19350, "live",
                                                                      "livestream?token=abc")
    assert target.tc_url == "rtmp://10.0.0.1:19350/live"
    assert parse_rtmp_url("rtmp://origin/live/s").port == 1935
    assert parse_rtmp_url("rtmp://[::1]:1936/a/b/s").host == "::1"
    assert parse_rtmp_url("rtmp://[::1]:1936/a/b/s").app == "a/b"


def test_a_tc_url_alone_or_another_scheme_is_not_something_to_play():
    assert parse_rtmp_url("rtmp://10.0.0.1:1935/live") is None
    assert parse_rtmp_url("http://10.0.0.1/live/s") is None
    assert parse_rtmp_url("garbage") is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parse_rtmp_url_never_raises(text):
    target = parse_rtmp_url(text)
    assert target is None or (target.host and 0 <= target.port)


def test_hosts_of_urls_and_headers():
    assert host_of_url("rtmp://a.b:1935/live?x=1") == "a.b"
    assert host_of_url("rtmp://[::1]:1935/live") == "::1"
    assert host_of_header("a.b:8080") == "a.b"
    assert host_of_header("[::1]:8080") == "::1"
    assert flv_location("10.0.0.1", 8080, "/live/s.flv", "t=1") == "http://10.0.0.1:8080/live/s.flv?t=1"


# ----- the origin pool -----------------------------------------------------------------------------------


def pool(n: int = 3, retry_min: int = 1000, retry_max: int = 10000) -> OriginPool:
    return OriginPool([f"10.0.0.{i}:1935" for i in range(1, n + 1)], retry_min, retry_max)


def test_origins_are_taken_round_robin_on_every_attempt():
    p = pool()
    picks = [p.pick(0.0)[0].address for _ in range(4)]
    assert picks == ["10.0.0.1:1935", "10.0.0.2:1935", "10.0.0.3:1935", "10.0.0.1:1935"]


def test_an_origin_that_just_failed_is_skipped_until_its_backoff_ends():
    p = pool()
    first, _ = p.pick(0.0)
    assert p.failed(first, 0.0) == 1.0
    assert [p.pick(0.5)[0].address for _ in range(3)] == ["10.0.0.2:1935", "10.0.0.3:1935", "10.0.0.2:1935"]
    assert "10.0.0.1:1935" in [p.pick(1.0)[0].address for _ in range(3)]


def test_backoff_doubles_from_retry_min_to_retry_max_and_a_success_clears_it():
    p = pool(1)
    origin = p.origins[0]
    holds, now = [], 0.0
    for _ in range(6):
        holds.append(p.failed(origin, now))
        now += holds[-1]
    assert holds == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    p.succeeded(origin)
    assert p.failed(origin, now) == 1.0


def test_many_streams_losing_one_origin_at_once_count_one_failure():
    p = pool(1)
    origin = p.origins[0]
    for _ in range(50):
        p.failed(origin, 0.0)
    assert origin.failures == 1 and origin.down_until == 1.0


def test_with_every_origin_held_pick_says_how_long_to_wait():
    p = pool(2)
    p.failed(p.origins[0], 0.0)
    p.failed(p.origins[1], 0.5)
    origin, wait = p.pick(0.6)
    assert origin is None and abs(wait - 0.4) < 1e-9


def test_a_callers_own_hold_skips_an_origin_for_that_caller_only():
    p = pool(2)
    assert p.pick(0.0, {"10.0.0.1:1935": 5.0})[0].address == "10.0.0.2:1935"
    assert p.pick(0.0, {"10.0.0.1:1935": 5.0})[0].address == "10.0.0.2:1935"
    assert p.pick(0.0)[0].address == "10.0.0.1:1935"


def test_pool_snapshot_restores_health_and_turn():
    p = pool()
    p.pick(0.0)
    p.failed(p.origins[2], 3.0, "refused")
    q = OriginPool.restore(p.snapshot())
    assert q.snapshot() == p.snapshot()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.floats(0, 5)), max_size=40),
       st.integers(1, 5000), st.integers(1, 30000))
def test_pick_never_returns_a_held_origin_and_holds_stay_within_bounds(steps, retry_min, retry_max):
    p = pool(3, retry_min, retry_max)
    now = 0.0
    for index, fail, advance in steps:
        now += advance
        origin = p.origins[index]
        if fail:
            hold = p.failed(origin, now)
            assert 0 < hold <= max(retry_min, retry_max) / 1000 + 1e-9
        else:
            p.succeeded(origin)
        picked, wait = p.pick(now)
        if picked is None:
            assert wait > 0 and all(o.down_until > now for o in p.origins)
        else:
            assert picked.down_until <= now
