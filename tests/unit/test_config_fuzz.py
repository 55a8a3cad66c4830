"""Fuzzing the config loader: any text either loads or is a ConfigError, never another exception, and
quickly. Inputs are built from the syntax's own pieces too, so the fuzz gets past the lexer."""

import time

from hypothesis import given, settings, strategies as st

from nonstop.config import Config, ConfigError, load_text
from nonstop.config.env import TABLE, PREFIXES
from nonstop.config.schema import leaf_paths

# Generous: a load of a few KB takes about a millisecond.
MAX_SECONDS = 1.0

PIECES = sorted({path.rsplit(".", 1)[-1] for path, _ in leaf_paths()} | {
    "vhost", "http_api", "http_server", "play", "publish", "cluster", "http_remux", "auth", "hls", "dvr",
    "http_hooks", "security", "refer", "include", "rtmp", "http_stream", "gop_cache", "mode", "on", "off",
    "1935", "0", "-1", "70000", "[::]:1935", "127.0.0.1:80", "a:b:c", "full", "remote", "__defaultVhost__",
    ";", "{", "}", "#", '"', "'", "\\", "\n", " ", "\t", "\r", '"a b"', "'x;y'", "\x00", "\ufeff", "é",
})


def check(text: str, env=None) -> None:
    start = time.monotonic()
    try:
        result = load_text(text, "fuzz.conf", env={} if env is None else env)
    except ConfigError as e:
        assert str(e).startswith(f"{e.file}:{e.line}: ")
    else:
        assert isinstance(result, Config) and result.listen and result.vhosts
    assert time.monotonic() - start < MAX_SECONDS


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=2000))
def test_arbitrary_text_loads_or_is_a_config_error(text):
    check(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=120).map(" ".join))
def test_token_soup_loads_or_is_a_config_error(text):
    check(text)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.builds(lambda p, s: p + s, st.sampled_from(PREFIXES),
              st.sampled_from([suffix for _, _, suffixes in TABLE for suffix in suffixes] + ["VHOST_HLS_ENABLED"])),
    st.one_of(st.sampled_from(["on", "off", "1935", "a:1935 b", "abc", "", " ", "0", "[::]:1"]), st.text(max_size=20)),
    max_size=6))
def test_arbitrary_env_overrides_load_or_are_a_config_error(env):
    check("listen 1935;\nvhost a { play { gop_cache on; } }\nvhost b { }\n", env)


def test_a_large_config_loads_quickly():
    text = "listen 1935;\n" + "".join(f"vhost v{i} {{ play {{ gop_cache off; }} cluster {{ origin a b c; }} }}\n"
                                      for i in range(2000))
    start = time.monotonic()
    assert len(load_text(text, env={}).vhosts) == 2000
    assert time.monotonic() - start < 2.0
