"""The log: one line per event whatever a client sends (issue 10 item 11, log forging)."""

from __future__ import annotations

import io
import re

from hypothesis import given, strategies as st

from nonstop.log import FIELD_MAX, LINE_MAX, Logger, escape, quote


def logged(message: str, cid: str = "c1") -> str:
    logger = Logger()
    logger.stream = io.StringIO()
    logger.trace(cid, message)
    return logger.stream.getvalue()


def test_cr_lf_and_nul_in_a_stream_name_cannot_forge_a_line():
    out = logged("play live/evil\r\n[2026-01-01 00:00:00.000][Trace][1][x] forged\x00")
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "\r" not in out and "\x00" not in out
    assert out.rstrip("\n").endswith("play live/evil\\r\\n[2026-01-01 00:00:00.000][Trace][1][x] forged\\x00")


def test_terminal_escapes_del_c1_and_unicode_line_separators_are_escaped():
    out = logged("a\x1b[31mred\x7f\x9b\u2028b\u2029c\ttab")
    assert out.rstrip("\n").endswith("a\\x1b[31mred\\x7f\\x9b\\u2028b\\u2029c\\ttab")


def test_backslash_is_escaped_so_an_escape_sequence_cannot_be_faked():
    # A client that sends the four characters `\x0a` must not look like one that sent a newline.
    assert escape("\\x0a") == "\\\\x0a"
    assert escape("\n") == "\\n"
    assert escape("\\x0a") != escape("\n")


def test_lone_surrogates_are_escaped_so_a_utf8_log_keeps_the_line():
    out = logged("name=\udcff")
    out.encode("utf-8")     # would raise if the surrogate were written raw
    assert "name=\\udcff" in out


def test_plain_text_and_non_ascii_names_are_unchanged():
    assert escape("publish __defaultVhost__/live/livestream, query=token=abc") == \
        "publish __defaultVhost__/live/livestream, query=token=abc"
    assert escape("play live/Überstream-频道") == "play live/Überstream-频道"


def test_a_60kb_field_is_cut_by_quote_and_a_60kb_line_by_the_line_cap():
    app = "a" * 60_000
    assert len(quote(app)) < FIELD_MAX + 40
    assert quote(app).startswith("a" * FIELD_MAX) and quote(app).endswith(f"...({60_000 - FIELD_MAX} more chars)")
    assert quote("short") == "short"
    assert quote(12345, cap=3) == "123...(2 more chars)"
    out = logged(f"connect app={app}, tcUrl=rtmp://h/{app}")
    print(f"a 120 KB message logs as a {len(out)}-char line (cap {LINE_MAX})")
    assert len(out) <= LINE_MAX + 1 and out.count("\n") == 1
    assert "line cut" in out


def test_escaping_cannot_push_a_line_over_the_cap():
    out = logged("\x00" * 10_000)     # 4 characters each once escaped
    assert len(out) <= LINE_MAX + 1 and out.count("\n") == 1


@given(st.text(max_size=300))
def test_any_text_logs_as_exactly_one_printable_line(text):
    out = logged(text, cid="cid")
    assert out.endswith("\n") and out.count("\n") == 1
    body = out[:-1]
    assert not any(ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f or ch in "\u2028\u2029" or
                   0xD800 <= ord(ch) <= 0xDFFF for ch in body)
    body.encode("utf-8")


def unescape(text: str) -> str:
    """The reader's side: the escapes turned back into characters."""
    short = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}

    def back(m: re.Match) -> str:
        body = m.group(1)
        return short[body] if body in short else chr(int(body[1:], 16))
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt\\])", back, text)


@given(st.text(max_size=200))
def test_escaping_is_reversible_so_nothing_is_lost_or_ambiguous(text):
    assert unescape(escape(text)) == text
