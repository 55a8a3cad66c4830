"""The config package, as a specification: SRS syntax and semantics, exact FILE:LINE errors, includes,
SRS directives nonstop lacks, refused access control, environment overrides, the default, and diff."""

import os
import textwrap

import pytest

from nonstop.config import (
    DEFAULT_CONFIG_TEXT, DEFAULT_VHOST, Config, ConfigError, Endpoint, diff, load, load_text,
)
from nonstop.config.env import TABLE, env_suffix
from nonstop.config.schema import leaf_paths


def conf(text: str, env=None, path="nonstop.conf") -> Config:
    return load_text(textwrap.dedent(text), path, env={} if env is None else env)


def error(text: str, env=None, path="nonstop.conf") -> str:
    with pytest.raises(ConfigError) as info:
        conf(text, env, path)
    return str(info.value)


# ---- a real SRS config ----

SRS_CONF = """\
# conf/srs.conf, the way an SRS 7 user has it
listen              1935;
max_connections     1000;
daemon              off;
srs_log_tank        console;
ff_log_dir          ./objs;
http_api {
    enabled         on;
    listen          1985;
    raw_api { enabled off; }
}
http_server {
    enabled         on;
    listen          8080;
    dir             ./objs/nginx/html;
}
rtc_server {
    enabled on;
    listen 8000;
    candidate $CANDIDATE;
}
vhost __defaultVhost__ {
    hls {
        enabled         on;
        hls_fragment    10;
        hls_window      60;
    }
    dvr {
        enabled      off;
        dvr_path     ./objs/nginx/html/[app]/[stream].[timestamp].flv;
    }
    http_remux {
        enabled     on;
        mount       [vhost]/[app]/[stream].flv;
    }
    play {
        gop_cache       off;
        queue_length    10;
        mw_latency      100;
    }
    http_hooks {
        enabled         off;
        on_publish      http://127.0.0.1:8085/api/v1/streams;
    }
}
"""


def test_an_srs_conf_with_hls_and_dvr_loads_with_warnings_naming_file_and_line():
    config = conf(SRS_CONF, path="srs.conf")
    assert config.listen == [Endpoint("0.0.0.0", 1935)]
    assert config.http_api.enabled and config.http_api.listen == Endpoint("0.0.0.0", 1985)
    assert config.http_server.enabled and config.http_server.dir == "./objs/nginx/html"
    vhost = config.vhosts[DEFAULT_VHOST]
    assert vhost.http_remux.enabled
    assert vhost.play.gop_cache is False and vhost.play.queue_length == 10.0 and vhost.play.mw_latency == 100
    assert config.warnings == [
        "srs.conf:6: 'ff_log_dir' is an SRS directive nonstop does not support; ignored",
        "srs.conf:10: 'http_api.raw_api' is an SRS directive nonstop does not support; ignored",
        "srs.conf:17: 'rtc_server' is an SRS directive nonstop does not support; ignored",
        "srs.conf:28: 'dvr' is an SRS directive nonstop does not support; ignored",
    ]
    assert vhost.http_hooks.on_publish == ["http://127.0.0.1:8085/api/v1/streams"] and not vhost.http_hooks.enabled


def test_hls_block_reads_srs_directives_with_srs_defaults():
    vhost = conf(SRS_CONF, path="srs.conf").vhosts[DEFAULT_VHOST]
    hls = vhost.hls
    assert hls.enabled and hls.hls_fragment == 10.0 and hls.hls_window == 60.0
    assert (hls.hls_td_ratio, hls.hls_aof_ratio, hls.hls_dispose, hls.hls_cleanup, hls.hls_wait_keyframe) == \
        (1.0, 2.1, 120, True, True)
    assert (hls.hls_m3u8_file, hls.hls_ts_file, hls.hls_path) == ("[app]/[stream].m3u8", "[app]/[stream]-[seq].ts",
                                                                  None)
    assert conf("listen 1935;\nvhost v { }\n").vhosts["v"].hls.enabled is False


def test_hls_directives_nonstop_lacks_are_warned_by_name_and_bad_values_name_the_line():
    config = conf("""\
        listen 1935;
        vhost v {
            hls {
                enabled on;
                hls_fragment 2.5;
                hls_path /tmp/hls;
                hls_ts_floor on;
                hls_dts_directly on;
            }
        }
    """, path="c.conf")
    assert config.vhosts["v"].hls.hls_fragment == 2.5 and config.vhosts["v"].hls.hls_path == "/tmp/hls"
    assert config.warnings == [
        "c.conf:7: 'hls.hls_ts_floor' is an SRS directive nonstop does not support; ignored",
        "c.conf:8: 'hls.hls_dts_directly' is an SRS directive nonstop does not support; ignored",
    ]
    assert error("listen 1935;\nvhost v {\n hls { hls_td_ratio -1; }\n}\n") == \
        "nonstop.conf:3: hls.hls_td_ratio: expected a positive number, got '-1'"
    assert error("listen 1935;\nvhost v {\n hls { hls_acodec opus; }\n}\n").startswith(
        "nonstop.conf:3: hls.hls_acodec:")


def test_unsupported_blocks_are_skipped_whole_even_with_unknown_contents():
    config = conf("""\
        listen 1935;
        vhost v { transcode { engine ff { vfilter { i logo.png; } vcodec libx264; } } }
    """)
    assert list(config.vhosts) == ["v"]


def test_srs_1_and_2_spellings_that_srs_7_still_rewrites_are_read():
    config = conf("""\
        listen 1935;
        http_stream { enabled on; listen 8080; }
        vhost v {
            gop_cache off;
            queue_length 5;
            mode remote;
            origin 10.0.0.1:1935;
            publish_1stpkt_timeout 1000;
            atc on;
        }
    """)
    v = config.vhosts["v"]
    assert config.http_server.enabled
    assert (v.play.gop_cache, v.play.queue_length) == (False, 5.0)
    assert (v.cluster.mode, v.cluster.origin) == ("remote", ["10.0.0.1:1935"])
    assert v.publish.firstpkt_timeout == 1000
    assert "nonstop.conf:4: 'gop_cache' directly in a vhost is the SRS 1/2 spelling of 'play.gop_cache'; " \
           "read as 'play.gop_cache'" in config.warnings
    assert "nonstop.conf:9: 'atc' is an SRS directive nonstop does not support; ignored" in config.warnings


def test_srs_7_rtmp_block_sets_listen_and_chunk_size():
    config = conf("rtmp { listen 1936; chunk_size 4096; }\n")
    assert config.listen == [Endpoint("0.0.0.0", 1936)] and config.chunk_size == 4096


# ---- syntax ----

def test_comments_quotes_and_escapes():
    config = conf("""\
        listen 1935; # a comment; with { braces }
        pid "/run/my nonstop;{#}.pid";
        srs_log_file '/var/log/it\\'s.log';
        http_api { enabled on; auth { enabled on; username "ad\\"min"; password 'a b'; } }
        http_server { dir "C:\\www"; }
    """)
    assert config.pid == "/run/my nonstop;{#}.pid"
    assert config.log_file == "/var/log/it's.log"
    assert (config.http_api.auth.username, config.http_api.auth.password) == ('ad"min', "a b")
    assert config.http_server.dir == "C:\\www"


def test_a_hash_inside_a_word_is_not_a_comment():
    assert conf("listen 1935;\nhttp_server { dir ./a#b; }\n").http_server.dir == "./a#b"


def test_crlf_line_endings_and_a_byte_order_mark_are_fine(tmp_path):
    path = tmp_path / "win.conf"
    path.write_bytes(b"\xef\xbb\xbflisten 1935;\r\nmax_connections 7;\r\n")
    assert load(str(path), env={}).max_connections == 7


def test_empty_quoted_value_is_an_empty_argument():
    config = conf('listen 1935;\nvhost v { cluster { advertise ""; } }\n')
    assert config.vhosts["v"].cluster.advertise == ""


def test_missing_semicolon_is_reported_at_its_own_line():
    text = "listen 1935;\n\n# comment\n\n\n\nmax_connections 1000\ndaemon off;\n"
    assert error(text) == "nonstop.conf:7: expected ';' or '{' after 'max_connections 1000'"


def test_missing_semicolon_on_the_last_line_and_before_a_closing_brace():
    assert error("listen 1935;\nmax_connections 1000") == \
        "nonstop.conf:2: expected ';' or '{' after 'max_connections 1000'"
    assert error("listen 1935;\nhttp_api {\n  enabled on }\n") == \
        "nonstop.conf:3: expected ';' or '{' after 'enabled on'"


def test_a_block_brace_must_be_on_the_directive_line():
    assert error("listen 1935;\nvhost v\n{\n}\n") == "nonstop.conf:2: expected ';' or '{' after 'vhost v'"


def test_unclosed_block_names_the_block_and_its_line():
    assert error("listen 1935;\n\nvhost v {\n  play {\n  }\n") == \
        "nonstop.conf:3: unclosed block 'vhost' opened at line 3"


def test_stray_closing_brace_and_lone_punctuation():
    assert error("listen 1935;\n}\n") == "nonstop.conf:2: unexpected '}'"
    assert error("listen 1935;\n;\n") == "nonstop.conf:2: unexpected ';'"
    assert error("listen 1935;\n{ }\n") == "nonstop.conf:2: unexpected '{'"


def test_unterminated_quote_and_junk_after_a_quote():
    assert error('listen 1935;\npid "/run/x.pid;\n').startswith("nonstop.conf:2: unterminated quoted string")
    assert error('listen 1935;\npid "a"b;\n').startswith("nonstop.conf:2: expected a space or ';' after")


def test_control_characters_are_refused_with_their_line():
    assert error("listen 1935;\npid a\x00b;\n") == "nonstop.conf:2: unexpected control character 0x00"


def test_invalid_utf8_is_reported_at_its_line(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_bytes(b"listen 1935;\npid \xff;\n")
    with pytest.raises(ConfigError, match=r"bad.conf:2: the file is not valid UTF-8 text"):
        load(str(path), env={})


def test_deep_nesting_is_capped():
    assert "blocks nested deeper than" in error("a {" * 100 + "}" * 100)


# ---- directives and values ----

def test_unknown_directive_is_an_error_at_its_line():
    assert error("listen 1935;\nfoo bar;\n") == "nonstop.conf:2: unknown directive 'foo'"
    assert error("listen 1935;\nvhost v {\n play { fast on; }\n}\n") == \
        "nonstop.conf:3: unknown directive 'play.fast'"
    assert error("listen 1935;\nhls { enabled on; }\n") == "nonstop.conf:2: unknown directive 'hls'"


@pytest.mark.parametrize("text, message", [
    ("max_connections abc;", "max_connections: expected a positive integer, got 'abc'"),
    ("max_connections 0;", "max_connections: expected a positive integer, got '0'"),
    ("max_connections 10abc;", "max_connections: expected a positive integer, got '10abc'"),
    ("listen 70000;", "listen: port 70000 out of range 1..65535"),
    ("listen 0;", "listen: port 0 out of range 1..65535"),
    ("listen abc;", "listen: expected [ip:]port, got 'abc'"),
    ("listen localhost:1935;", "listen: expected [ip:]port with an IP address, got 'localhost:1935'"),
    ("listen ::1:1935;", "listen: an IPv6 address needs brackets, as in [::1]:1935, got '::1:1935'"),
    ("chunk_size 100;", "chunk_size: 100 out of range 128..65536"),
    ("chunk_size 65537;", "chunk_size: 65537 out of range 128..65536"),
    ("daemon yes;", "daemon: expected on or off, got 'yes'"),
    ("srs_log_tank syslog;", "srs_log_tank: expected console or file, got 'syslog'"),
    ("srs_log_level debug;", "srs_log_level: expected verbose or info or trace or warn or error, got 'debug'"),
    ("grace_start_wait -1;", "grace_start_wait: expected a non-negative integer, got '-1'"),
    ("max_connections 1 2;", "max_connections: expected one value, got 2: '1 2'"),
    ("max_connections;", "max_connections: expected a value"),
    ("daemon { }", "'daemon' takes no block"),
    ("http_api on;", "'http_api' needs a block: http_api { ... }"),
    ("http_api { listen 1985 1986; }", "http_api.listen: expected one value, got 2: '1985 1986'"),
])
def test_bad_values_are_errors_naming_the_directive(text, message):
    assert error("# line 1\n" + text + "\n") == f"nonstop.conf:2: {message}"


@pytest.mark.parametrize("text, message", [
    ("play { time_jitter smooth; }", "play.time_jitter: expected full or zero or off, got 'smooth'"),
    ("play { queue_length 0; }", "play.queue_length: expected a positive number of seconds, got '0'"),
    ("play { queue_length nan; }", "play.queue_length: expected a positive number of seconds, got 'nan'"),
    ("play { mw_msgs 129; }", "play.mw_msgs: 129 out of range 0..128"),
    ("play { gop_cache_max_frames 0; }", "play.gop_cache_max_frames: expected a positive integer, got '0'"),
    ("cluster { mode edge; }", "cluster.mode: expected local or remote, got 'edge'"),
    ("cluster { protocol flv; }", "cluster.protocol: expected rtmp, got 'flv'"),
    ("cluster { coworkers a:1985 b; }", "cluster.coworkers: expected host:port, got 'b'"),
    ("cluster { origin a:99999; }", "cluster.origin: port 99999 out of range 1..65535"),
    ("chunk_size 64;", "chunk_size: 64 out of range 128..65536"),
])
def test_bad_vhost_values_are_errors_naming_the_directive(text, message):
    assert error("listen 1935;\nvhost v {\n" + text + "\n}\n") == f"nonstop.conf:3: {message}"


def test_listen_origin_and_coworkers_take_several_values():
    config = conf("""\
        listen 1935 127.0.0.1:1936 [::]:1937;
        vhost v { cluster { mode remote; origin a b:19350 [::1]:1935; origin_cluster on; coworkers a:1985 b:1985; } }
    """)
    assert config.listen == [Endpoint("0.0.0.0", 1935), Endpoint("127.0.0.1", 1936), Endpoint("::", 1937)]
    assert [str(ep) for ep in config.listen] == ["0.0.0.0:1935", "127.0.0.1:1936", "[::]:1937"]
    cluster = config.vhosts["v"].cluster
    assert cluster.origin == ["a", "b:19350", "[::1]:1935"] and cluster.coworkers == ["a:1985", "b:1985"]


def test_repeated_directive_keeps_the_first_with_a_warning():
    config = conf("listen 1935;\nmax_connections 10;\nmax_connections 20;\n")
    assert config.max_connections == 10
    assert config.warnings == ["nonstop.conf:3: 'max_connections' repeated; keeping the first (line 2)"]


def test_repeated_listen_keeps_the_first_as_srs_does_and_says_how_to_give_several():
    config = conf("listen 1935;\nlisten 1936;\n")
    assert config.listen == [Endpoint("0.0.0.0", 1935)]
    assert config.warnings == ["nonstop.conf:2: 'listen' repeated; keeping the first (line 1); "
                               "give several values in one directive instead: listen a b;"]


def test_repeated_vhost_keeps_the_first():
    config = conf("listen 1935;\nvhost a { enabled off; }\nvhost a { enabled on; }\n")
    assert config.vhosts["a"].enabled is False
    assert config.warnings == ["nonstop.conf:3: 'vhost a' repeated; keeping the first (line 2)"]


def test_missing_listen_defaults_to_1935_with_a_warning():
    config = conf("max_connections 5;\n")
    assert config.listen == [Endpoint("0.0.0.0", 1935)]
    assert config.warnings == ["nonstop.conf:0: no 'listen' directive; listening on 0.0.0.0:1935"]


def test_checks_across_directives():
    assert error("listen 1935 1935;\n") == "nonstop.conf:1: listen: 0.0.0.0:1935 given twice"
    assert error("listen 8080;\nhttp_server { enabled on; }\n") == \
        "nonstop.conf:1: listen: 0.0.0.0:8080 is also http_server.listen (0.0.0.0:8080)"
    assert error("listen 1935;\nhttp_api { enabled on;\n auth { enabled on; username u; } }\n") == \
        "nonstop.conf:3: http_api.auth is enabled, but its username or password is empty"
    assert error("listen 1935;\nvhost v { cluster {\n retry_min 5000;\n retry_max 100; } }\n") == \
        "nonstop.conf:4: cluster.retry_max (100) is less than cluster.retry_min (5000)"
    assert error("listen 1935;\nvhost v { cluster {\n mode remote; } }\n") == \
        "nonstop.conf:3: cluster.mode remote (an edge) needs at least one cluster.origin"


def test_http_api_and_http_server_may_share_a_port():
    config = conf("listen 1935;\nhttp_api { enabled on; listen 8080; }\nhttp_server { enabled on; listen 8080; }\n")
    assert config.http_api.listen.port == config.http_server.listen.port == 8080


# ---- vhosts ----

def test_a_file_without_vhost_gets_an_implicit_default_vhost():
    config = conf("listen 1935;\n")
    assert list(config.vhosts) == [DEFAULT_VHOST]
    assert config.vhost_for("anything.example.com").name == DEFAULT_VHOST


def test_vhost_for_matches_the_exact_name_else_the_default_else_none():
    config = conf("listen 1935;\nvhost a.com { }\nvhost __defaultVhost__ { }\nvhost b.com { chunk_size 4096; }\n")
    assert list(config.vhosts) == ["a.com", DEFAULT_VHOST, "b.com"]
    assert config.vhost_for("b.com").chunk_size == 4096
    assert config.vhost_for("c.com").name == DEFAULT_VHOST
    assert config.vhost_for(None).name == DEFAULT_VHOST
    only_named = conf("listen 1935;\nvhost a.com { }\n")
    assert only_named.vhost_for("c.com") is None and only_named.vhost_for("a.com").name == "a.com"


def test_vhost_needs_one_name_and_a_block():
    assert error("listen 1935;\nvhost { }\n") == "nonstop.conf:2: vhost: expected one name, got ''"
    assert error("listen 1935;\nvhost a;\n") == "nonstop.conf:2: 'vhost' needs a block: vhost NAME { ... }"


# ---- access control (the parsing; the checks are tests/unit/test_access*.py) ----

def test_http_hooks_take_srs_full_conf_lists_in_order():
    config = conf("""listen 1935;
vhost v {
    http_hooks {
        enabled on;
        on_connect http://127.0.0.1:8085/api/v1/clients http://localhost:8085/api/v1/clients;
        on_close http://127.0.0.1:8085/api/v1/clients;
        on_publish http://127.0.0.1:8085/api/v1/streams https://h.example/x?y=1;
        on_unpublish http://127.0.0.1:8085/api/v1/streams;
        on_play http://127.0.0.1:8085/api/v1/sessions;
        on_stop http://127.0.0.1:8085/api/v1/sessions;
        on_dvr http://127.0.0.1:8085/api/v1/dvrs;
        on_hls http://127.0.0.1:8085/api/v1/hls;
        on_hls_notify http://127.0.0.1:8085/api/v1/hls/[server_id]/[app]/[stream]/[ts_url][param];
        timeout 1500;
        max_inflight 32;
    }
}
""")
    hooks = config.vhosts["v"].http_hooks
    assert hooks.enabled and hooks.timeout == 1500 and hooks.max_inflight == 32
    assert hooks.on_connect == ["http://127.0.0.1:8085/api/v1/clients", "http://localhost:8085/api/v1/clients"]
    assert hooks.on_publish == ["http://127.0.0.1:8085/api/v1/streams", "https://h.example/x?y=1"]
    assert hooks.on_dvr == ["http://127.0.0.1:8085/api/v1/dvrs"] and config.warnings == []


@pytest.mark.parametrize("url", ["127.0.0.1:8085/api", "ftp://h/x", "http://", "http://h:99999/x", "http:///x"])
def test_a_malformed_hook_url_is_an_error_with_file_and_line(url):
    text = f"listen 1935;\nvhost v {{\n  http_hooks {{\n    enabled on;\n    on_play http://ok/x {url};\n  }}\n}}\n"
    message = error(text)
    assert message.startswith("nonstop.conf:5: http_hooks.on_play: malformed hook URL "), message


def test_http_hooks_refuse_unknown_directives_a_repeated_event_and_on_forward():
    assert error("listen 1935;\nvhost v { http_hooks {\n on_bogus http://a/b; } }\n") == (
        "nonstop.conf:3: unknown directive 'http_hooks.on_bogus'")
    assert error("listen 1935;\nvhost v { http_hooks { on_play http://a/b;\n on_play http://c/d; } }\n").startswith(
        "nonstop.conf:3: 'http_hooks.on_play' given twice")
    assert "not supported by nonstop" in error(
        "listen 1935;\nvhost v { forward { enabled on;\n backend http://127.0.0.1:8085/api/v1/forward; } }\n")
    assert error("listen 1935;\nvhost v { http_hooks {\n timeout 0; } }\n").startswith(
        "nonstop.conf:3: http_hooks.timeout: 0 out of range 1..60000")


def test_a_later_enabled_on_is_not_hidden_by_an_earlier_off():
    config = conf("listen 1935;\nvhost v { security { enabled off;\n enabled on; } }\n")
    assert config.vhosts["v"].security.enabled


def test_security_rules_keep_their_order_and_refuse_what_is_not_an_ip():
    from nonstop.config.schema import SecurityRule
    sec = conf("listen 1935;\nvhost v { security { enabled on; deny publish 10.0.0.0/8; allow play all;\n"
               "allow publish ::1; allow publish 2001:db8::/32; } }\n").vhosts["v"].security
    assert sec.rules == [SecurityRule(False, "publish", "10.0.0.0/8"), SecurityRule(True, "play", "all"),
                         SecurityRule(True, "publish", "::1"), SecurityRule(True, "publish", "2001:db8::/32")]
    assert error("listen 1935;\nvhost v { security {\n allow publish 10.0.0.300; } }\n") == (
        "nonstop.conf:3: security.allow: expected all, an IP or a CIDR, got '10.0.0.300'")
    assert error("listen 1935;\nvhost v { security {\n deny record all; } }\n") == (
        "nonstop.conf:3: security.deny: expected publish or play, got 'record'")


def test_refer_block_and_srs_1_spellings():
    ref = conf("listen 1935;\nvhost v { refer { enabled on; all github.com github.io; play a.com; } }\n"
               ).vhosts["v"].refer
    assert ref.enabled and ref.all == ["github.com", "github.io"] and ref.play == ["a.com"] and ref.publish is None
    old = conf("listen 1935;\nvhost v { refer x.com;\n refer_publish p.com; refer_play q.com; }\n").vhosts["v"].refer
    assert old.enabled and old.all == ["x.com"] and old.publish == ["p.com"] and old.play == ["q.com"]
    assert error("listen 1935;\nvhost v { refer {\n none a.com; } }\n") == (
        "nonstop.conf:3: unknown directive 'refer.none'")


def test_signed_url_keys():
    signed = conf("listen 1935;\nvhost v { signed_url { enabled on; key k2 0123456789abcdef0123; "
                  "key k1 fedcba9876543210fedc; play off; } }\n").vhosts["v"].signed_url
    assert signed.enabled and list(signed.keys) == ["k2", "k1"] and signed.publish and not signed.play
    assert error("listen 1935;\nvhost v {\n signed_url { enabled on; } }\n") == (
        "nonstop.conf:3: signed_url is enabled but has no 'key ID SECRET;'")
    assert "shorter than 16" in error("listen 1935;\nvhost v { signed_url {\n key k1 short; } }\n")
    assert "key id 'k' given twice" in error(
        "listen 1935;\nvhost v { signed_url {\n key k 0123456789abcdef0; key k 0123456789abcdef1; } }\n")


# ---- includes ----

def test_includes_are_relative_to_the_including_file(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "vhosts.conf").write_text("vhost a.com {\n  include a.play.conf;\n}\n")
    (tmp_path / "conf.d" / "a.play.conf").write_text("play { gop_cache off; }\n")
    (tmp_path / "main.conf").write_text("listen 1935;\ninclude conf.d/vhosts.conf;\n")
    config = load(str(tmp_path / "main.conf"), env={})
    assert config.vhosts["a.com"].play.gop_cache is False


def test_errors_in_an_included_file_name_that_file_and_line(tmp_path):
    (tmp_path / "inc.conf").write_text("# first\nmax_connections abc;\n")
    (tmp_path / "main.conf").write_text("listen 1935;\ninclude inc.conf;\n")
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "main.conf"), env={})
    assert str(info.value) == f"{tmp_path / 'inc.conf'}:2: max_connections: expected a positive integer, got 'abc'"


def test_warnings_in_an_included_file_name_that_file(tmp_path):
    (tmp_path / "inc.conf").write_text("\nmax_connections 2;\n")
    (tmp_path / "main.conf").write_text("listen 1935;\nmax_connections 1;\ninclude inc.conf;\n")
    config = load(str(tmp_path / "main.conf"), env={})
    assert config.warnings == [
        f"{tmp_path / 'inc.conf'}:2: 'max_connections' repeated; keeping the first ({tmp_path / 'main.conf'}:2)"]


def test_include_of_a_missing_file_names_the_including_line(tmp_path):
    (tmp_path / "main.conf").write_text("listen 1935;\n\ninclude nowhere.conf;\n")
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "main.conf"), env={})
    assert str(info.value) == (f"{tmp_path / 'main.conf'}:3: include: cannot read 'nowhere.conf': not beside "
                               f"the including file, as '{tmp_path / 'nowhere.conf'}' (No such file or directory), "
                               f"nor in the working directory {os.getcwd()!r}, as 'nowhere.conf' (No such file "
                               f"or directory)")


def test_include_loops_are_errors(tmp_path):
    (tmp_path / "a.conf").write_text("include b.conf;\n")
    (tmp_path / "b.conf").write_text("\ninclude a.conf;\n")
    with pytest.raises(ConfigError, match=r"b\.conf:2: include loop: '.*a\.conf' is already being read"):
        load(str(tmp_path / "a.conf"), env={})


def test_include_nesting_is_capped(tmp_path):
    for i in range(20):
        (tmp_path / f"{i}.conf").write_text(f"include {i + 1}.conf;\n")
    (tmp_path / "20.conf").write_text("listen 1935;\n")
    with pytest.raises(ConfigError, match="includes nested deeper than 16 levels"):
        load(str(tmp_path / "0.conf"), env={})


def test_several_files_in_one_include_and_include_inside_a_block(tmp_path):
    (tmp_path / "a.conf").write_text("listen 1935;\n")
    (tmp_path / "b.conf").write_text("max_connections 3;\n")
    (tmp_path / "api.conf").write_text("enabled on;\n")
    (tmp_path / "main.conf").write_text("include a.conf b.conf;\nhttp_api { include api.conf; }\n")
    config = load(str(tmp_path / "main.conf"), env={})
    assert (config.max_connections, config.http_api.enabled) == (3, True)


def test_include_in_text_is_refused_since_only_load_reads_files():
    assert "include: cannot read 'x.conf'" in error("include x.conf;\n")


def test_a_missing_config_file_is_an_oserror_for_the_cli_to_word(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(str(tmp_path / "absent.conf"), env={})


# ---- environment overrides ----

def test_env_overrides_top_level_and_nested_directives():
    config = conf("listen 1935;\nmax_connections 1000;\nhttp_api { enabled on; listen 1985; }\n",
                  env={"NONSTOP_HTTP_API_LISTEN": "2985", "NONSTOP_MAX_CONNECTIONS": "10",
                       "NONSTOP_LISTEN": "1935 1936", "NONSTOP_HTTP_API_AUTH_ENABLED": "on",
                       "NONSTOP_HTTP_API_AUTH_USERNAME": "admin", "NONSTOP_HTTP_API_AUTH_PASSWORD": "s3cret pass"})
    assert config.http_api.listen == Endpoint("0.0.0.0", 2985)
    assert config.max_connections == 10
    assert config.listen == [Endpoint("0.0.0.0", 1935), Endpoint("0.0.0.0", 1936)]
    assert config.http_api.auth.password == "s3cret pass"      # single values keep their spaces
    assert config.warnings == []                               # an override is no repetition


def test_srs_prefixed_names_work_and_nonstop_wins_over_srs():
    config = conf("listen 1935;\n", env={"SRS_HTTP_API_LISTEN": "2985", "SRS_MAX_CONNECTIONS": "7",
                                         "NONSTOP_MAX_CONNECTIONS": "8", "SRS_LOG_LEVEL": "warn"})
    assert config.http_api.listen.port == 2985 and config.max_connections == 8 and config.log_level == "warn"


def test_vhost_scoped_env_applies_to_every_vhost():
    config = conf("listen 1935;\nvhost a { play { gop_cache on; } }\nvhost b { }\n",
                  env={"NONSTOP_VHOST_CLUSTER_ORIGIN": "a:1935 b:1935", "NONSTOP_VHOST_PLAY_GOP_CACHE": "off",
                       "NONSTOP_VHOST_CLUSTER_ADVERTISE": "pod-0.svc", "NONSTOP_VHOST_CLUSTER_MODE": "remote"})
    for vhost in config.vhosts.values():
        assert vhost.cluster.origin == ["a:1935", "b:1935"] and vhost.cluster.mode == "remote"
        assert vhost.play.gop_cache is False and vhost.cluster.advertise == "pod-0.svc"


def test_vhost_scoped_env_reaches_the_implicit_default_vhost():
    config = conf("listen 1935;\n", env={"NONSTOP_VHOST_PLAY_GOP_CACHE": "off"})
    assert config.vhosts[DEFAULT_VHOST].play.gop_cache is False


def test_bad_env_values_name_the_variable():
    assert error("listen 1935;\n", env={"NONSTOP_MAX_CONNECTIONS": "abc"}) == \
        "<env NONSTOP_MAX_CONNECTIONS>:0: max_connections: expected a positive integer, got 'abc'"
    assert error("listen 1935;\n", env={"SRS_LISTEN": "1935 70000"}) == \
        "<env SRS_LISTEN>:0: listen: port 70000 out of range 1..65535"
    assert error("listen 1935;\n", env={"NONSTOP_VHOST_PLAY_GOP_CACHE": "maybe"}) == \
        "<env NONSTOP_VHOST_PLAY_GOP_CACHE>:0: play.gop_cache: expected on or off, got 'maybe'"


def test_unknown_and_empty_env_vars_are_ignored():
    config = conf("listen 1935;\nmax_connections 5;\n",
                  env={"NONSTOP_NO_SUCH_THING": "1", "NONSTOP_CONF": "/etc/x.conf", "NONSTOP_MAX_CONNECTIONS": "",
                       "MAX_CONNECTIONS": "9", "SRS_ENV_ONLY": "on"})
    assert config.max_connections == 5 and config.warnings == []


def test_env_naming_an_unsupported_srs_directive_is_a_warning():
    config = conf("listen 1935;\n", env={"SRS_VHOST_DVR_DVR_PATH": "x", "SRS_IN_DOCKER": "on"})
    assert config.warnings == [
        "<env SRS_IN_DOCKER>:0: 'in_docker' is an SRS directive nonstop does not support; ignored",
        "<env SRS_VHOST_DVR_DVR_PATH>:0: 'vhost.dvr' is an SRS directive nonstop does not support; ignored",
    ]


def test_access_control_from_the_environment_as_srs_reads_it():
    config = conf("listen 1935;\n", env={"SRS_VHOST_HTTP_HOOKS_ENABLED": "on",
                                          "SRS_VHOST_HTTP_HOOKS_ON_PUBLISH": "http://a/1 http://b/2"})
    hooks = config.vhosts[DEFAULT_VHOST].http_hooks
    assert hooks.enabled and hooks.on_publish == ["http://a/1", "http://b/2"]
    assert error("listen 1935;\n", env={"SRS_VHOST_HTTP_HOOKS_ON_PLAY": "nope"}).startswith(
        "<env SRS_VHOST_HTTP_HOOKS_ON_PLAY>:0: http_hooks.on_play: malformed hook URL")


def test_every_directive_has_its_own_env_name():
    names = [suffix for _, _, suffixes in TABLE for suffix in suffixes]
    assert len(names) == len(set(names))
    assert {env_suffix(path) for path, _ in leaf_paths()} <= set(names)
    assert "VHOST_CLUSTER_COWORKERS" in names and "SRS_LOG_TANK" in names and "HTTP_API_AUTH_PASSWORD" in names


# ---- the embedded default ----

def test_the_embedded_default_loads_with_the_documented_values():
    config = load(None, env={})
    assert config.path == "<embedded>" and config.warnings == []
    assert config.listen == [Endpoint("0.0.0.0", 1935)]
    assert (config.max_connections, config.daemon, config.log_tank) == (1000, False, "console")
    assert config.http_api.enabled and config.http_api.listen == Endpoint("0.0.0.0", 1985)
    assert config.http_server.enabled and config.http_server.listen == Endpoint("0.0.0.0", 8080)
    vhost = config.vhosts[DEFAULT_VHOST]
    assert vhost.http_remux.enabled and vhost.http_remux.mount == "[vhost]/[app]/[stream].flv"
    assert list(config.vhosts) == [DEFAULT_VHOST]


def test_the_default_text_is_srs_syntax_with_comments():
    assert "#" in DEFAULT_CONFIG_TEXT and "vhost __defaultVhost__ {" in DEFAULT_CONFIG_TEXT


def test_defaults_of_everything_not_given():
    config = conf("listen 1935;\n")
    assert (config.pid, config.chunk_size, config.log_file, config.log_level) == \
        ("./objs/nonstop.pid", 60000, "./objs/nonstop.log", "trace")
    assert (config.grace_start_wait, config.grace_final_wait, config.grace_max_wait, config.force_grace_quit) == \
        (2300, 3200, 0, False)
    assert (config.handshake_timeout, config.master_process, config.reuse_port, config.upgrade_timeout) == \
        (10000, True, False, 30000)
    assert not config.http_api.enabled and not config.http_server.enabled
    v = config.vhosts[DEFAULT_VHOST]
    assert (v.enabled, v.min_latency, v.tcp_nodelay, v.chunk_size) == (True, False, False, None)
    assert (v.play.gop_cache, v.play.gop_cache_max_frames, v.play.queue_length, v.play.time_jitter,
            v.play.mw_latency, v.play.mw_msgs) == (True, 2500, 30.0, "full", 350, 8)
    assert (v.publish.firstpkt_timeout, v.publish.normal_timeout) == (20000, 5000)
    c = v.cluster
    assert (c.mode, c.origin, c.origin_cluster, c.coworkers, c.protocol, c.advertise) == \
        ("local", [], False, [], "rtmp", "")
    assert (c.connect_timeout, c.recv_timeout, c.retry_min, c.retry_max, c.linger, c.coworker_timeout) == \
        (3000, 5000, 1000, 10000, 3000, 1000)


def test_nonstop_directives_are_read():
    config = conf("""\
        listen 1935;
        grace_max_wait 60000;
        handshake_timeout 5000;
        master_process off;
        reuse_port on;
        upgrade_timeout 45000;
        force_grace_quit on;
        srs_log_tank file;
        srs_log_file /var/log/nonstop.log;
        srs_log_level warn;
    """)
    assert (config.grace_max_wait, config.handshake_timeout, config.master_process, config.reuse_port) == \
        (60000, 5000, False, True)
    assert (config.upgrade_timeout, config.force_grace_quit, config.log_tank, config.log_file, config.log_level) == \
        (45000, True, "file", "/var/log/nonstop.log", "warn")


# ---- errors and diff ----

def test_config_error_carries_file_line_and_message():
    with pytest.raises(ConfigError) as info:
        conf("listen 1935;\nfoo;\n", path="x.conf")
    assert (info.value.file, info.value.line, info.value.message) == ("x.conf", 2, "unknown directive 'foo'")


def test_diff_lists_changed_fields_and_vhosts():
    old = conf("listen 1935;\nhttp_api { listen 1985; }\nvhost a { }\nvhost b { }\n")
    new = conf("listen 1935 1936;\nhttp_api { listen 2985; }\nsrs_log_level warn;\nvhost a { }\n"
               "vhost b { min_latency on; }\nvhost c { }\n")
    changes = diff(old, new)
    assert changes == {
        "listen": ([Endpoint("0.0.0.0", 1935)], [Endpoint("0.0.0.0", 1935), Endpoint("0.0.0.0", 1936)]),
        "http_api.listen": (Endpoint("0.0.0.0", 1985), Endpoint("0.0.0.0", 2985)),
        "log_level": ("trace", "warn"),
        "vhost:b": (old.vhosts["b"], new.vhosts["b"]),
        "vhost:c": (None, new.vhosts["c"]),
    }
    assert diff(old, conf("listen 1935;\nhttp_api { listen 1985; }\nvhost a { }\nvhost b { }\n")) == {}


def test_control_characters_in_env_values_are_refused():
    assert error("listen 1935;\n", env={"NONSTOP_PID": "/run/a\x01.pid"}) == \
        "<env NONSTOP_PID>:0: unexpected control character 0x01"
