"""Access control's pure parts: security rules, refer, signed URL tokens, the hook answer rule and bodies."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from nonstop.access import signed
from nonstop.access.hooks import body, judge, stream_url
from nonstop.access.rules import page_host, refer_check, security_check
from nonstop.access.state import ConnAccess
from nonstop.config.schema import SecurityRule


def rules(*specs: str) -> list[SecurityRule]:
    out = []
    for spec in specs:
        verb, action, target = spec.split()
        out.append(SecurityRule(verb == "allow", action, target))
    return out


# ---- security: SRS's order (deny first, then allow, then "default deny" unless only deny rules) ----

@pytest.mark.parametrize("specs, action, ip, allowed", [
    ((), "play", "1.2.3.4", False),                                         # enabled, no rule: default deny
    (("allow play all",), "play", "1.2.3.4", True),
    (("allow play all",), "publish", "1.2.3.4", False),                     # an allow rule exists: others denied
    (("deny publish all",), "play", "1.2.3.4", True),                       # only deny rules: the rest allowed
    (("deny publish all",), "publish", "1.2.3.4", False),
    (("allow publish all", "deny publish 10.0.0.0/8"), "publish", "10.9.8.7", False),     # deny wins, any order
    (("allow publish all", "deny publish 10.0.0.0/8"), "publish", "11.0.0.1", True),
    (("allow publish 192.168.1.0/24",), "publish", "192.168.1.77", True),
    (("allow publish 192.168.1.0/24",), "publish", "192.168.2.77", False),
    (("allow publish 127.0.0.1",), "publish", "127.0.0.1", True),
    (("allow play 2001:db8::/32",), "play", "2001:db8:1::5", True),         # IPv6 CIDR
    (("allow play 2001:db8::/32",), "play", "2001:db9::5", False),
    (("deny play ::1", "allow play all"), "play", "::1", False),            # IPv6 exact
    (("deny play 0:0::1", "allow play all"), "play", "::1", False),         # the same address, spelt otherwise
    (("allow publish 10.0.0.0/8",), "publish", "::ffff:10.1.2.3", True),    # IPv4-mapped from a dual-stack socket
    (("allow publish 10.0.0.0/8",), "publish", "::a01:203", False),         # a v6 address is not its v4 twin
    (("allow play all",), "play", "not-an-ip", True),
    (("allow play 10.0.0.0/8",), "play", "not-an-ip", False),
])
def test_security_rules_follow_srs(specs, action, ip, allowed):
    reason = security_check(rules(*specs), action, ip)
    assert (reason is None) == allowed, reason


def test_a_deny_names_its_rule():
    assert security_check(rules("deny play 10.0.0.0/8"), "play", "10.0.0.1") == (
        "security: 10.0.0.1 denied by 'deny play 10.0.0.0/8'")


# ---- refer: the page URL's host must end with a domain (SrsRefer::check_single_refer) ----

@pytest.mark.parametrize("page, domains, ok", [
    ("http://www.github.com/x/y", ["github.com"], True),
    ("https://github.io:8443/p", ["github.com", "github.io"], True),
    ("http://github.com.evil.net/", ["github.com"], False),
    ("", ["github.com"], False),                 # ffmpeg sends no pageUrl: refused once a list is given
    ("", None, True),                            # no list: allowed
    ("github.com/page", ["github.com"], True),   # no scheme
    ("http://evilgithub.com/", ["github.com"], True),   # SRS's suffix match, not a label match
])
def test_refer_matches_like_srs(page, domains, ok):
    assert refer_check(page, domains) is ok


def test_page_host():
    assert page_host("rtmp://a.b.c:1935/live") == "a.b.c"


# ---- signed URLs ----

KEYS = {"k1": "0123456789abcdef0123", "k2": "another-secret-of-20ch"}
NOW = 1_800_000_000


def token(action="play", vhost="__defaultVhost__", app="live", stream="cam", expires=NOW + 60, ip="", kid="k1"):
    return signed.make_token(kid, KEYS[kid], action, vhost, app, stream, expires, ip)


def check(tok, action="play", vhost="__defaultVhost__", app="live", stream="cam", ip="10.0.0.1", now=NOW):
    return signed.check(KEYS, tok, action, vhost, app, stream, ip, now)


def test_a_valid_token_passes_and_its_format_is_documented():
    tok = token()
    assert check(tok) is None
    kid, expires, bind, sig = tok.split(".")
    assert (kid, expires, bind, len(sig)) == ("k1", str(NOW + 60), "0", 43)


@pytest.mark.parametrize("change, why", [
    (dict(now=NOW + 60), "expired"),
    (dict(stream="other"), "bad signature"),
    (dict(app="other"), "bad signature"),
    (dict(vhost="v.com"), "bad signature"),
    (dict(action="publish"), "bad signature"),     # a play token does not publish
])
def test_a_token_is_refused_for_anything_else(change, why):
    assert why in check(token(), **change)


def test_a_wrong_signature_an_unknown_key_and_no_token():
    tok = token()
    forged = tok[:-2] + ("AA" if not tok.endswith("AA") else "BA")
    assert "bad signature" in check(forged)
    assert check(token(kid="k2")) is None
    assert "unknown key id 'k9'" in check("k9" + tok[2:])
    assert "no nstoken" in check(None)
    assert "malformed" in check("k1.123.0.short")


def test_an_ip_bound_token_passes_only_from_that_ip():
    tok = token(ip="10.0.0.1")
    assert tok.split(".")[2] == "1"
    assert check(tok, ip="10.0.0.1") is None
    assert "bad signature" in check(tok, ip="10.0.0.2")


def test_fields_cannot_slide_into_one_another():
    # With plain concatenation "live" + "/cam" and "live/" + "cam" would sign the same bytes.
    assert signed.message("play", "v", "live", "/cam", 1, "") != signed.message("play", "v", "live/", "cam", 1, "")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_the_token_parser_only_ever_raises_token_error(text):
    try:
        tok = signed.parse_token(text)
    except signed.TokenError:
        return
    assert signed.make_token  # parsed: the fields are what the text said
    assert text.startswith(tok.kid + ".") and len(tok.sig) == 32


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40), st.integers(0, 10 ** 12 - 1),
       st.booleans())
def test_fuzz_tokens_round_trip_and_check_only_their_own_stream(app, stream, expires, bound):
    ip = "192.0.2.1" if bound else ""
    tok = signed.make_token("k1", KEYS["k1"], "publish", "v", app, stream, expires, ip)
    parsed = signed.parse_token(tok)
    assert (parsed.kid, parsed.expires, parsed.bind_ip) == ("k1", expires, bound)
    assert signed.check(KEYS, tok, "publish", "v", app, stream, "192.0.2.1", expires - 1) is None
    assert signed.check(KEYS, tok, "publish", "v", app, stream + "x", "192.0.2.1", expires - 1) is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_check_never_raises(raw):
    text = raw.decode("latin-1")
    assert isinstance(signed.check(KEYS, text, "play", "v", "a", "s", "1.1.1.1", NOW), str)


# ---- the hook answer (SrsHttpHooks::do_post) ----

@pytest.mark.parametrize("status, text, allowed", [
    (200, '{"code":0}', True),
    (200, '{"code": 0, "data": null}', True),
    (200, "0", True),
    (201, "0", True),
    (200, '{"code":1}', False),
    (200, '{"code":"0"}', False),
    (200, '{"code":false}', False),
    (200, '{}', False),
    (200, "", False),
    (200, "1", False),
    (200, "ok", False),
    (403, '{"code":0}', False),
    (500, "0", False),
    (302, "0", False),
])
def test_the_answer_rule_is_srs(status, text, allowed):
    assert (judge(status, text) is None) == allowed


# ---- the bodies, field for field as SRS 7 builds them ----

WHO = ConnAccess(cid="c1", ip="10.0.0.1", vhost="__defaultVhost__", app="live", tc_url="rtmp://h/live",
                 stream="cam", param="?a=1", page_url="http://p/")


@pytest.mark.parametrize("action, keys", [
    ("on_connect", "server_id service_id action client_id ip vhost app stream param tcUrl pageUrl"),
    ("on_close", "server_id service_id action client_id ip vhost app send_bytes recv_bytes"),
    ("on_publish", "server_id service_id action client_id ip vhost app tcUrl stream param stream_url stream_id"),
    ("on_unpublish", "server_id service_id action client_id ip vhost app tcUrl stream param stream_url stream_id"),
    ("on_play", "server_id service_id action client_id ip vhost app stream tcUrl param pageUrl stream_url "
                "stream_id"),
    ("on_stop", "server_id service_id action client_id ip vhost app tcUrl stream param stream_url stream_id"),
])
def test_bodies_have_srs_fields_in_srs_order(action, keys):
    b = body(action, WHO, "vid-s", "svc", stream_id="vid-x", send_bytes=5, recv_bytes=7)
    assert list(b) == keys.split()
    assert b["action"] == action and b["client_id"] == "c1" and b["server_id"] == "vid-s"
    json.dumps(b)


def test_stream_url_is_srs():
    assert stream_url("__defaultVhost__", "live", "cam") == "/live/cam"
    assert stream_url("v.com", "live", "cam") == "v.com/live/cam"


def test_conn_access_snapshot_round_trips_and_old_snapshots_owe_nothing():
    who = ConnAccess(cid="c", connected=True, publishing=True, pending={"action": "play", "event": {}})
    assert ConnAccess.restore(who.snapshot()) == who
    assert ConnAccess.restore(None) == ConnAccess()
    assert ConnAccess.restore({**who.snapshot(), "from_the_future": 1}) == who
