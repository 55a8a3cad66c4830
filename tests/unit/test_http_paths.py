"""HTTP-FLV request paths: percent-decoded once, and refused when they cannot name a stream."""

from hypothesis import given, strategies as st

from nonstop.server.http_conn import decode_path, mount_pattern


def test_percent_decoding_happens_once():
    assert decode_path(b"/live/a%20b.flv") == ("/live/a b.flv", None)
    assert decode_path(b"/live/a%2520b.flv") == ("/live/a%20b.flv", None)
    assert decode_path(b"/live/%E9%A2%91%E9%81%93.flv") == ("/live/频道.flv", None)
    assert decode_path(b"/live/plain.flv") == ("/live/plain.flv", None)


def test_control_characters_encoded_slashes_and_bad_utf8_are_refused():
    assert decode_path(b"/live/a%0d%0ab.flv")[1] == "control character 0x0d at offset 7"
    assert decode_path(b"/live/a%00.flv")[1] == "control character 0x00 at offset 7"
    assert decode_path(b"/live%2Fs.flv")[1] == "an encoded slash (%2F)"
    assert decode_path(b"/live/a%2fb.flv")[1] == "an encoded slash (%2F)"
    assert decode_path(b"/live/%ff.flv")[1] == "bytes that are not UTF-8 once percent-decoded"


def test_a_decoded_path_routes_like_a_plain_one():
    pattern = mount_pattern("[vhost]/[app]/[stream].flv", "__defaultVhost__")
    path, problem = decode_path(b"/live/a%20b.flv")
    match = pattern.match(path)
    assert problem is None and (match.group("app"), match.group("stream")) == ("live", "a b")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1).filter(lambda t: "/" not in t))
def test_any_name_without_control_characters_survives_a_quote_and_decode(name):
    from urllib.parse import quote
    path, problem = decode_path(f"/live/{quote(name, safe='')}.flv".encode("ascii"))
    assert problem is None and path == f"/live/{name}.flv"
