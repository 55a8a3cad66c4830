"""The media playlist writer: SRS's layout, target duration rules (RFC 8216 4.3.3.1), discontinuities."""

from __future__ import annotations

from hypothesis import given, strategies as st

from nonstop.protocol.m3u8 import Entry, media_playlist, target_duration


def test_playlist_as_srs_writes_it():
    text = media_playlist([Entry("livestream-7.ts", 10010), Entry("livestream-8.ts", 9980, discontinuity=True)],
                          7, target_floor_ms=10000)
    assert text == ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-TARGETDURATION:11\n"
                    "#EXTINF:10.010, no desc\nlivestream-7.ts\n#EXT-X-DISCONTINUITY\n"
                    "#EXTINF:9.980, no desc\nlivestream-8.ts\n")


def test_ended_playlist_has_endlist():
    assert media_playlist([], 0, target_floor_ms=2000, ended=True).endswith("#EXT-X-ENDLIST\n")


@given(st.lists(st.integers(1, 100000), max_size=20), st.integers(0, 60000))
def test_target_duration_bounds_every_rounded_extinf(durations, floor):
    entries = [Entry(f"s{i}.ts", d) for i, d in enumerate(durations)]
    target = target_duration(entries, floor)
    assert all(round(d / 1000) <= target for d in durations)
    assert target >= floor / 1000 and target >= 1
