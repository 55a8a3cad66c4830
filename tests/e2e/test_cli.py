"""The command line contract: -v, -g, -h, -t and the exit codes."""

from __future__ import annotations

import pytest

from tests.helpers import run_nonstop

pytestmark = pytest.mark.timeout(60)


def test_version_and_signature():
    assert run_nonstop("-v").stdout == "0.1.0\n"
    assert run_nonstop("-g").stdout == "nonstop/0.1.0\n"


def test_help_explains_the_options_and_exit_codes():
    result = run_nonstop("-h")
    assert result.returncode == 0
    for option in ("-c FILE", "-t", "-v", "-g", "-s SIGNAL", "exit codes"):
        assert option in result.stdout


def test_unknown_option_is_a_usage_error():
    result = run_nonstop("--bogus")
    assert result.returncode == 2 and "usage" in result.stderr


def test_t_on_a_good_config(tmp_path):
    conf = tmp_path / "good.conf"
    conf.write_text("listen 19350;\nvhost __defaultVhost__ { }\n")
    result = run_nonstop("-t", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    assert f"the config file {conf} syntax is ok" in result.stdout
    assert f"config file {conf} test is successful" in result.stdout


def test_t_on_the_embedded_default_config():
    result = run_nonstop("-t")
    assert result.returncode == 0 and "test is successful" in result.stdout


@pytest.mark.parametrize("text, line, words", [
    ("listen 1935;\nmax_connections 1000\nvhost x { }\n", 2, "';'"),
    ("listen 1935;\nvhost x {\n  play { gop_cache on; }\n", 2, "unclosed"),
    ("listen 1935;\n\nbogus_directive on;\n", 3, "unknown directive"),
    ("listen 1935;\nmax_connections abc;\n", 2, "max_connections"),
    ("listen 70000;\n", 1, "70000"),
])
def test_t_on_broken_configs_names_the_line(tmp_path, text, line, words):
    conf = tmp_path / "broken.conf"
    conf.write_text(text)
    result = run_nonstop("-t", "-c", str(conf))
    assert result.returncode == 3
    assert f"{conf}:{line}" in result.stderr and words in result.stderr, result.stderr


def test_http_hooks_pass_and_a_malformed_hook_url_or_on_forward_is_refused_with_file_and_line(tmp_path):
    conf = tmp_path / "hooks.conf"
    conf.write_text("listen 1935;\nvhost __defaultVhost__ {\n  http_hooks {\n    enabled on;\n"
                    "    on_publish http://127.0.0.1:8085/api/v1/streams;\n  }\n}\n")
    assert run_nonstop("-t", "-c", str(conf)).returncode == 0
    conf.write_text("listen 1935;\nvhost __defaultVhost__ {\n  http_hooks {\n    enabled on;\n"
                    "    on_publish 127.0.0.1:8085/api/v1/streams;\n  }\n}\n")
    for args in (("-t", "-c", str(conf)), ("-c", str(conf))):
        result = run_nonstop(*args)
        assert result.returncode == 3, result
        assert f"{conf}:5: http_hooks.on_publish: malformed hook URL" in result.stderr
    conf.write_text("listen 1935;\nvhost __defaultVhost__ {\n  forward {\n    enabled on;\n"
                    "    backend http://127.0.0.1:8085/api/v1/forward;\n  }\n}\n")
    result = run_nonstop("-t", "-c", str(conf))
    assert result.returncode == 3 and f"{conf}:5: 'forward.backend' (SRS's on_forward hook)" in result.stderr


def test_sign_prints_a_signed_url_the_server_accepts_and_refuses_bad_usage(tmp_path):
    from nonstop.access import signed
    conf = tmp_path / "signed.conf"
    conf.write_text("listen 1935;\nvhost __defaultVhost__ {\n"
                    "  signed_url { enabled on; key k7 0123456789abcdef0123; }\n}\n")
    result = run_nonstop("sign", "-c", str(conf), "--publish", "--expires", "1900000000",
                         "rtmp://example.com/live/cam?x=1")
    assert result.returncode == 0, result.stderr
    url, _, token = result.stdout.strip().partition("&nstoken=")
    assert url == "rtmp://example.com/live/cam?x=1" and token.startswith("k7.1900000000.0.")
    assert signed.check({"k7": "0123456789abcdef0123"}, token, "publish", "__defaultVhost__", "live", "cam",
                        "1.2.3.4", 1_800_000_000) is None
    flv = run_nonstop("sign", "-c", str(conf), "--ip", "10.0.0.1", "http://example.com:8080/live/cam.flv")
    assert "/live/cam.flv?nstoken=k7." in flv.stdout and ".1." in flv.stdout
    assert run_nonstop("sign", "rtmp://example.com/live/cam").returncode == 2          # no secret
    assert run_nonstop("sign", "-c", str(conf), "ftp://x/live/cam").returncode == 2
    assert run_nonstop("sign", "-c", str(conf), "--key", "k9", "rtmp://h/live/cam").returncode == 2


def test_srs_only_directives_warn_but_start(tmp_path):
    conf = tmp_path / "srs.conf"
    conf.write_text("listen 1935;\nvhost __defaultVhost__ {\n  hls { enabled on; hls_path ./objs/nginx/html; }\n"
                    "  dvr { enabled off; }\n}\nstats { network 0; }\n")
    result = run_nonstop("-t", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    # hls is served since issue 13 (no warning); dvr and stats are still SRS-only.
    assert "'dvr'" in result.stderr and "'stats'" in result.stderr and "'hls'" not in result.stderr


def test_env_config_path_is_used(tmp_path):
    conf = tmp_path / "env.conf"
    conf.write_text("listen 1935;\nbroken\n")
    result = run_nonstop("-t", env={"NONSTOP_CONF": str(conf)})
    assert result.returncode == 3 and str(conf) in result.stderr
