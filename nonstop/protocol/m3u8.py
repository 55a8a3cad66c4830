"""HLS media playlist writer (RFC 8216), sans-IO: a list of segments in, the playlist text out.

Written as SRS writes it (version 3, `#EXTINF:%.3f,`, `#EXT-X-DISCONTINUITY` before a segment that starts
a new publish), so tools that parse SRS's playlists parse ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

VERSION = 3     # EXTINF with decimals needs version 3 (RFC 8216 7)
VERSION_MAP = 7     # EXT-X-MAP in a playlist without I-frames only needs 6; hls.js and Apple's tools write 7


@dataclass
class Entry:
    uri: str
    duration_ms: int
    discontinuity: bool = False
    key_uri: str = ""       # AES-128: the key's URI ("" = not encrypted)
    iv: str = ""            # and its IV, 32 hex digits


def target_duration(entries: list[Entry], floor_ms: int) -> int:
    """EXT-X-TARGETDURATION: the longest segment rounded up, never below `floor_ms` (SRS's hls_td_ratio *
    hls_fragment). RFC 8216 4.3.3.1: every EXTINF rounded to the nearest integer must be <= it."""
    longest = max([e.duration_ms for e in entries] + [floor_ms])
    return max(1, math.ceil(longest / 1000))


def media_playlist(entries: list[Entry], media_sequence: int, *, target_floor_ms: int,
                   discontinuity_sequence: int = 0, ended: bool = False, map_uri: str = "") -> str:
    """The playlist of `entries`, the first having media sequence number `media_sequence`; `map_uri` is the
    fMP4 init segment (EXT-X-MAP)."""
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION_MAP if map_uri else VERSION}",
             f"#EXT-X-MEDIA-SEQUENCE:{media_sequence}"]
    if discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}")
    lines.append(f"#EXT-X-TARGETDURATION:{target_duration(entries, target_floor_ms)}")
    if map_uri:
        lines.append(f'#EXT-X-MAP:URI="{map_uri}"')
    key = ("", "")
    for entry in entries:
        if entry.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        # RFC 8216 4.3.2.4: a key applies to every segment after it until the next EXT-X-KEY, so one is written
        # before the first segment listed and wherever the key changes, never only where a key began (SRS),
        # which would leave the first segments of a sliding window without one.
        if (entry.key_uri, entry.iv) != key:
            key = (entry.key_uri, entry.iv)
            lines.append(f'#EXT-X-KEY:METHOD=AES-128,URI="{entry.key_uri}",IV=0x{entry.iv}' if entry.key_uri
                         else "#EXT-X-KEY:METHOD=NONE")
        lines.append(f"#EXTINF:{entry.duration_ms / 1000:.3f}, no desc")
        lines.append(entry.uri)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
