"""App and stream names: control characters are refused, anything else is a name (server/names.py)."""

from hypothesis import given, strategies as st

from nonstop.server.names import name_problem


def test_control_characters_are_named_with_their_code_and_offset():
    assert name_problem("live\r\nx") == "control character 0x0d at offset 4"
    assert name_problem("\x00") == "control character 0x00 at offset 0"
    assert name_problem("a\x7f") == "control character 0x7f at offset 1"
    assert name_problem("a\x9b[2J") == "control character 0x9b at offset 1"


def test_ordinary_names_pass_spaces_punctuation_and_non_latin_letters_included():
    for name in ("livestream", "a b", "live/sub", "s-1_2.3", "频道", "Überstream", "x?y=z", ""):
        assert name_problem(name) is None, name


@given(st.text())
def test_a_name_is_refused_exactly_when_it_holds_a_unicode_control_character(text):
    import unicodedata
    assert (name_problem(text) is not None) == any(unicodedata.category(c) == "Cc" for c in text)
