"""HLS media playlist writer (RFC 8216), sans-IO: a list of segments in, the playlist text out.

Written as SRS writes it (version 3, `#EXTINF:%.3f,`, `#EXT-X-DISCONTINUITY` before a segment that starts
a new publish), so tools that parse SRS's playlists parse ours.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field

VERSION = 3     # EXTINF with decimals needs version 3 (RFC 8216 7)
VERSION_MAP = 7     # EXT-X-MAP in a playlist without I-frames only needs 6; hls.js and Apple's tools write 7
VERSION_LL = 9      # what Apple's low-latency examples declare
# PART-HOLD-BACK: how far from the live edge a player stays, at least 3 part targets (RFC 8216bis 4.4.3.8).
PART_HOLD_BACK_PARTS = 3


@dataclass
class Entry:
    uri: str
    duration_ms: int
    discontinuity: bool = False
    key_uri: str = ""       # AES-128: the key's URI ("" = not encrypted)
    iv: str = ""            # and its IV, 32 hex digits
    parts: list = field(default_factory=list)   # LL-HLS: (uri, duration_ms, independent) of its parts
    wall_ms: int = 0        # EXT-X-PROGRAM-DATE-TIME, ms since the epoch (0: none)


@dataclass
class LowLatency:
    """LL-HLS (RFC 8216bis): the part target, the parts of the segment being filled, the next part's URI."""
    part_target_ms: int
    open_parts: list        # (uri, duration_ms, independent)
    preload_hint: str = ""
    open_wall_ms: int = 0   # EXT-X-PROGRAM-DATE-TIME of the segment being filled, before its first part (0: none)


def target_duration(entries: list[Entry], floor_ms: int) -> int:
    """EXT-X-TARGETDURATION: the longest segment rounded up, never below `floor_ms` (SRS's hls_td_ratio *
    hls_fragment). RFC 8216 4.3.3.1: every EXTINF rounded to the nearest integer must be <= it."""
    longest = max([e.duration_ms for e in entries] + [floor_ms])
    return max(1, math.ceil(longest / 1000))


def _date_time(wall_ms: int) -> str:
    when = datetime.datetime.fromtimestamp(wall_ms / 1000, datetime.timezone.utc)
    return f"#EXT-X-PROGRAM-DATE-TIME:{when:%Y-%m-%dT%H:%M:%S}.{wall_ms % 1000:03d}Z"


def _part(uri: str, duration_ms: int, independent: bool) -> str:
    return f'#EXT-X-PART:DURATION={duration_ms / 1000:.3f},URI="{uri}"' + (",INDEPENDENT=YES" if independent else "")


def media_playlist(entries: list[Entry], media_sequence: int, *, target_floor_ms: int,
                   discontinuity_sequence: int = 0, ended: bool = False, map_uri: str = "",
                   low_latency: LowLatency | None = None) -> str:
    """The playlist of `entries`, the first having media sequence number `media_sequence`; `map_uri` is the
    fMP4 init segment (EXT-X-MAP); `low_latency` adds LL-HLS's server control, parts and preload hint."""
    version = VERSION_LL if low_latency else VERSION_MAP if map_uri else VERSION
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}", f"#EXT-X-MEDIA-SEQUENCE:{media_sequence}"]
    if low_latency:
        target = low_latency.part_target_ms / 1000
        lines.append(f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={PART_HOLD_BACK_PARTS * target:.3f}")
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={target:.3f}")
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
        if entry.wall_ms:
            lines.append(_date_time(entry.wall_ms))
        lines.extend(_part(*p) for p in entry.parts)
        lines.append(f"#EXTINF:{entry.duration_ms / 1000:.3f}, no desc")
        lines.append(entry.uri)
    if low_latency:
        if low_latency.open_wall_ms and low_latency.open_parts:
            lines.append(_date_time(low_latency.open_wall_ms))
        lines.extend(_part(*p) for p in low_latency.open_parts)
        if low_latency.preload_hint:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{low_latency.preload_hint}"')
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
