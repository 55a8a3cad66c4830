"""HLS segmenter: one per Source with HLS on (never one per viewer), fed by the source's publish path.

It cuts the stream into MPEG-TS segments at keyframes, as SRS's SrsHlsController does (srs_app_hls.cpp):
a segment is reaped at the first keyframe once it lasts hls_fragment * hls_td_ratio (at once when
hls_wait_keyframe is off); an audio-only stream is reaped at hls_aof_ratio * hls_fragment. The playlist holds
hls_window seconds of segments; the segments and the playlist are kept in memory, and written to hls_path
only when it is given. Every piece of state is plain data: `snapshot()` goes with the Source's snapshot, so an
upgrade hands over the playlist, the media sequence, the segments, the open segment and the TS continuity
counters, and a player polling through the upgrade sees one unbroken playlist.

Choices where SRS differs or is silent:
- A segment's duration runs to the start of the next one (SRS: first to last frame of the segment), so the
  EXTINF durations add up to the timeline and a player never drifts.
- Audio reaps at hls_aof_ratio only when the stream has no video, so a segment with video always starts at a
  keyframe (SRS reaps any stream there; with a GOP over 2.1 * hls_fragment that cuts a GOP in two).
- A segment that leaves the playlist is still served for EXPIRED_KEPT more segments: a player that fetched the
  playlist just before never gets a 404 for a segment it lists.
- A republish within REPUBLISH_WINDOW_MS with the same codec configuration goes on without a discontinuity
  (the source's timeline is continuous); any other republish marks its first segment #EXT-X-DISCONTINUITY,
  as SRS marks every segment that starts with a new sequence header.
"""

from __future__ import annotations

import functools
import os
import re
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nonstop.log import log
from nonstop.protocol import flv, m3u8
from nonstop.protocol.fmp4 import Fmp4Muxer, Sample
from nonstop.protocol.mpegts import TsError, TsMuxer
from nonstop.protocol.rtmp import MSG_AUDIO, MSG_VIDEO

SNAPSHOT_VERSION = 1
# SRS_HLS_SEGMENT_MIN_DURATION: a segment shorter than this when it closes is dropped (too short to play).
MIN_SEGMENT_MS = 100
# Segments that left the playlist but are still served (see the module's docstring).
EXPIRED_KEPT = 2
# The same figure as http_remux.republish_window's default: a republish this soon goes on seamlessly.
REPUBLISH_WINDOW_MS = 5000
# An open segment with no keyframe for this many times its target is cut anyway (bounded memory for a
# stream whose keyframes stopped): SRS keeps at most max_td * 3 worth.
MAX_OPEN_RATIO = 3
# LL-HLS (hls_part): a part is cut at the first frame once it lasts this share of hls_part, so that it never
# exceeds PART-TARGET and, but for a segment's last part, is at least 85 % of it (RFC 8216bis 4.4.4.9).
PART_CUT_RATIO = 0.85
# The completed segments whose parts the playlist still lists (RFC 8216bis: those in the last 3 target durations).
PARTS_LISTED_SEGMENTS = 3


def settings_from_config(hls) -> dict:
    """Plain settings from a config `Hls` block (they travel in the snapshot)."""
    return {"fragment_ms": int(hls.hls_fragment * 1000), "td_ratio": hls.hls_td_ratio,
            "aof_ratio": hls.hls_aof_ratio, "window_ms": int(hls.hls_window * 1000),
            "wait_keyframe": hls.hls_wait_keyframe, "m3u8_file": hls.hls_m3u8_file, "ts_file": hls.hls_ts_file,
            "entry_prefix": hls.hls_entry_prefix, "path": hls.hls_path, "cleanup": hls.hls_cleanup,
            "dispose_s": hls.hls_dispose, "ctx": hls.hls_ctx, "ts_ctx": hls.hls_ts_ctx,
            "keys": hls.hls_keys, "fragments_per_key": hls.hls_fragments_per_key, "key_file": hls.hls_key_file,
            "key_file_path": hls.hls_key_file_path, "key_url": hls.hls_key_url,
            "fmp4": hls.hls_use_fmp4, "fmp4_file": hls.hls_fmp4_file, "init_file": hls.hls_init_file,
            "part_ms": int(hls.hls_part * 1000) if hls.hls_use_fmp4 else 0}


AES_BLOCK = 16


def encrypt_segment(data: bytes, key: bytes, iv: bytes) -> bytes:
    """AES-128-CBC with PKCS7 padding over the whole segment (RFC 8216 4.3.2.4, METHOD=AES-128)."""
    pad = AES_BLOCK - len(data) % AES_BLOCK
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data + bytes((pad,)) * pad) + encryptor.finalize()


def render(template: str, vhost: str, app: str, stream: str, seq: int | None = None, wall_ms: int = 0,
           duration_ms: int = 0) -> str:
    """SRS's path templates: [vhost] [app] [stream] [seq] [timestamp] [duration] and the date parts
    [2006] [01] [02] [15] [04] [05] [999] (local time, as SRS)."""
    out = template.replace("[vhost]", vhost).replace("[app]", app).replace("[stream]", stream)
    if seq is not None:
        out = out.replace("[seq]", str(seq))
    out = out.replace("[timestamp]", str(wall_ms)).replace("[duration]", str(duration_ms))
    if "[" in out:
        t = time.localtime(wall_ms / 1000)
        for key, value in (("[2006]", f"{t.tm_year:04d}"), ("[01]", f"{t.tm_mon:02d}"), ("[02]", f"{t.tm_mday:02d}"),
                           ("[15]", f"{t.tm_hour:02d}"), ("[04]", f"{t.tm_min:02d}"), ("[05]", f"{t.tm_sec:02d}"),
                           ("[999]", f"{wall_ms % 1000:03d}")):
            out = out.replace(key, value)
    return out.lstrip("/")


@functools.lru_cache(maxsize=64)
def m3u8_pattern(template: str, vhost: str) -> "re.Pattern | None":
    """The inverse of render() for a playlist path (hls_m3u8_file): a regex with groups `app` and `stream`, or
    None when the template does not name both (such a path cannot say which stream to pull on an edge)."""
    if "[app]" not in template or "[stream]" not in template:
        return None
    pattern, seen = "", set()
    for part in re.split(r"(\[vhost\]|\[app\]|\[stream\])", template.lstrip("/")):
        if part == "[vhost]":
            pattern += re.escape(vhost)
        elif part in ("[app]", "[stream]"):
            name = part[1:-1]
            pattern += f"(?P={name})" if name in seen else \
                (f"(?P<{name}>[^?#]+?)" if name == "app" else f"(?P<{name}>[^/?#]+)")
            seen.add(name)
        else:
            pattern += re.escape(part)
    return re.compile(pattern)


class Segment:
    __slots__ = ("seq", "name", "uri", "duration_ms", "data", "discontinuity", "key_name", "iv", "parts", "wall_ms")

    def __init__(self, seq: int, name: str, uri: str, duration_ms: int, data: bytes, discontinuity: bool,
                 key_name: str = "", iv: str = "", parts: list | None = None, wall_ms: int = 0):
        self.seq = seq
        self.name = name            # the path it is served at (and written to under hls_path), no leading /
        self.uri = uri              # what the playlist says
        self.duration_ms = duration_ms
        self.data = data
        self.discontinuity = discontinuity
        self.key_name = key_name    # hls_keys: the path of the key it is encrypted with, and the IV (hex)
        self.iv = iv
        # LL-HLS: [name, duration_ms, independent, offset, length] of each part; a part is a slice of data.
        self.parts = parts or []
        self.wall_ms = wall_ms      # the wall clock when its first frame arrived (EXT-X-PROGRAM-DATE-TIME)

    def snapshot(self) -> list:
        return [self.seq, self.name, self.uri, self.duration_ms, self.data, self.discontinuity, self.key_name,
                self.iv, self.parts, self.wall_ms]


class Segmenter:
    """The HLS output of one source. `index` (an HlsIndex) is told which paths this segmenter serves."""

    def __init__(self, settings: dict, vhost: str, app: str, stream: str, index: "HlsIndex | None" = None,
                 cid: str = "hls"):
        self.settings = settings
        self.vhost, self.app, self.stream = vhost, app, stream
        self.cid = cid
        self.index = index
        # MPEG-TS, or fMP4 with hls_use_fmp4: the open segment is then a list of Samples, not TS bytes.
        self.fmp4 = bool(settings.get("fmp4"))
        self.muxer = Fmp4Muxer() if self.fmp4 else TsMuxer()
        self.init_name = render(settings["init_file"], vhost, app, stream) if self.fmp4 else ""
        self.init_data = b""
        # LL-HLS (hls_part, fMP4 only): the open segment's name and its parts so far ([name, duration_ms,
        # independent, data]); open_chunks then holds the samples of the part being filled since part_start_ts.
        self.part_ms = settings.get("part_ms", 0) if self.fmp4 else 0
        self.open_name = ""
        self.open_parts: list[list] = []
        self.part_start_ts = 0
        # Requests held until a part or segment exists (blocking reload): [ready(), wake(), owner]; not handed
        # over (a request in flight drains in the old worker).
        self.waiters: list = []
        self.segments: list[Segment] = []       # in the playlist, oldest first
        self.expired: list[Segment] = []        # left the playlist, still served
        self.next_seq = 0                       # media sequence number of the next segment to open
        # The open segment: its TS bytes so far, first timestamp, newest timestamp, wall clock at open.
        self.open_chunks: list[bytes] | None = None
        self.open_bytes = 0
        self.open_start_ts = 0
        self.open_last_ts = 0
        self.open_wall_ms = 0
        self.open_discontinuity = False
        self.discontinuity_next = False
        self.video_sh: bytes | None = None
        self.audio_sh: bytes | None = None
        self.unpublished_at: float | None = None    # time.monotonic() when the publisher left
        self.dropped_frames = 0
        self.m3u8_name = render(settings["m3u8_file"], vhost, app, stream)
        # hls_keys: the keys still needed by a segment served (path -> 16 bytes), and the one in use with its IV.
        self.keys: dict[str, bytes] = {}
        self.key_name = ""
        self.key_iv = ""
        # The playlist, once a segment exists; only then does the index serve its path, so a stream that was
        # asked for but never published leaves nothing behind in the index.
        self.playlist: bytes | None = None

    # ----- the publish path (Source.on_media) -----------------------------------------------------------

    def on_publish(self, now: float) -> None:
        """A publisher came. Within the republish window the playlist goes on seamlessly; later, its first
        segment is marked as a discontinuity."""
        if self.unpublished_at is not None and (now - self.unpublished_at) * 1000 > REPUBLISH_WINDOW_MS:
            self.discontinuity_next = True
        self.unpublished_at = None

    def on_unpublish(self, now: float) -> None:
        """The publisher left: close the open segment (the playlist stays until hls_dispose)."""
        self._reap(self.open_last_ts, final=True)
        self.unpublished_at = now

    def on_media(self, type_id: int, timestamp: int, payload: bytes, wall_ms: int | None = None) -> None:
        """One corrected message of the source (its timeline, in ms)."""
        if type_id == MSG_VIDEO:
            if flv.is_video_sequence_header(payload):
                self._on_sequence_header("video_sh", payload, timestamp)
                return
            keyframe = flv.is_video_keyframe(payload)
            self._maybe_reap(timestamp, keyframe, video=True, wall_ms=wall_ms)
            if self.open_chunks is None:
                return
            self._maybe_cut_part(timestamp)
            self._write(self.muxer.video, timestamp, payload)
        elif type_id == MSG_AUDIO:
            if flv.is_audio_sequence_header(payload):
                self._on_sequence_header("audio_sh", payload, timestamp)
                return
            self._maybe_reap(timestamp, False, video=False, wall_ms=wall_ms)
            if self.open_chunks is None:
                return
            if self.video_sh is None:
                # Parts are cut at video frames when there is video: a part's last video frame then lasts until
                # the next part's first, with no hole in the video timeline.
                self._maybe_cut_part(timestamp)
            self._write(self.muxer.audio, timestamp, payload)

    def _on_sequence_header(self, attr: str, payload: bytes, timestamp: int) -> None:
        previous = getattr(self, attr)
        if previous == payload:
            return
        try:
            (self.muxer.video if attr == "video_sh" else self.muxer.audio)(timestamp, payload)
        except TsError as e:
            log.warn(self.cid, f"hls {self.m3u8_name}: bad sequence header, ignored: {e}")
            return
        setattr(self, attr, bytes(payload))
        video = attr == "video_sh"
        codec_of = flv.video_codec if video else flv.audio_codec
        codec = codec_of(payload)
        carried = self.muxer.video_codecs if video else self.muxer.audio_codecs
        if codec not in carried:
            # AV1, VP9, Opus...: no HLS segment here carries them (README: HLS). Said once per codec; a new
            # configuration of a codec left out changes nothing in the segments.
            if previous is not None and codec_of(previous) == codec:
                return
            log.warn(self.cid, f"hls {self.m3u8_name}: {'video' if video else 'audio'} codec {codec} is not carried "
                               f"by HLS in {'fMP4' if self.fmp4 else 'MPEG-TS'} segments (only "
                               f"{', '.join(carried)}): its frames are left out")
        if previous is not None:
            # New codec configuration: the next segment starts with it and tells players to reset.
            self._reap(timestamp)
            self.discontinuity_next = True

    def _maybe_reap(self, timestamp: int, keyframe: bool, *, video: bool, wall_ms: int | None) -> None:
        s = self.settings
        has_video = self.video_sh is not None
        if self.open_chunks is None:
            # A segment with video starts at a keyframe; an audio-only stream starts anywhere.
            if (video and keyframe) or (not video and not has_video) or (video and not s["wait_keyframe"]):
                self._open(timestamp, wall_ms)
            return
        duration = timestamp - self.open_start_ts
        target = s["fragment_ms"] * s["td_ratio"]
        if video:
            if duration >= target and (keyframe or not s["wait_keyframe"]):
                self._reap(timestamp)
                self._open(timestamp, wall_ms)
            elif duration >= target * MAX_OPEN_RATIO:
                # No keyframe for too long: close what we have; the next segment starts at a keyframe.
                self._reap(timestamp)
        elif not has_video and duration >= s["fragment_ms"] * s["aof_ratio"]:
            self._reap(timestamp)
            self._open(timestamp, wall_ms)

    def _open(self, timestamp: int, wall_ms: int | None) -> None:
        self.open_chunks = [] if self.fmp4 else [self.muxer.tables()]
        self.open_bytes = sum(len(c) for c in self.open_chunks)
        self.open_start_ts = self.open_last_ts = timestamp
        self.open_wall_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        self.open_discontinuity = self.discontinuity_next
        self.discontinuity_next = False
        if self.part_ms:
            # Parts are requested before their segment ends, so the name is fixed now ([duration] is 0).
            self.open_name = render(self.settings["fmp4_file"], self.vhost, self.app, self.stream, self.next_seq,
                                    self.open_wall_ms, 0)
            self.open_parts = []
            self.part_start_ts = timestamp
            self._refresh_playlist()
            self._index_hint()
            self._wake()

    def _part_name(self, segment_name: str, index: int) -> str:
        base, ext = os.path.splitext(segment_name)
        return f"{base}.{index}{ext}"

    def _maybe_cut_part(self, timestamp: int) -> None:
        if self.part_ms and self.open_chunks and timestamp - self.part_start_ts >= self.part_ms * PART_CUT_RATIO:
            self._cut_part(timestamp)
            self._refresh_playlist()
            self._index_hint()
            self._wake()

    def _cut_part(self, end_ts: int) -> None:
        """The samples since the last part become one moof/mdat part, served at once under its own name."""
        samples, self.open_chunks = self.open_chunks, []
        first = samples[0]
        independent = first.sync and (first.track == 1 or self.video_sh is None)
        if not independent and any(s.track == 1 and s.sync for s in samples):
            independent = samples[[s.track == 1 for s in samples].index(True)].sync
        name = self._part_name(self.open_name, len(self.open_parts))
        data = self.muxer.fragment(samples, end_ts)
        self.open_parts.append([name, end_ts - self.part_start_ts, independent, data])
        self.init_data = self.muxer.init_segment()
        if self.index is not None:
            self.index.add(name, self)
            self.index.add(self.init_name, self)
        self.part_start_ts = end_ts

    def _index_hint(self) -> None:
        """The hinted part's path is served (held until the part exists), so a player may ask for it early."""
        hint = self.preload_hint()
        if hint and self.index is not None:
            self.index.add(hint, self)

    def _wake(self) -> None:
        """Answer the held requests that can be answered now."""
        if self.waiters:
            ready, waiting = [], []
            for waiter in self.waiters:         # one pass: thousands of held requests cost no more than a list
                (ready if waiter[0]() else waiting).append(waiter)
            self.waiters = waiting
            for waiter in ready:
                waiter[1]()

    def has(self, msn: int, part: int | None) -> bool:
        """Whether the playlist already holds segment `msn` whole, or its part `part` (blocking reload)."""
        if msn < self.next_seq:
            return True
        return msn == self.next_seq and part is not None and self.open_chunks is not None \
            and part < len(self.open_parts)

    def too_far_ahead(self, msn: int, part: int | None) -> bool:
        """RFC 8216bis 6.2.5.2: a blocking reload for a segment further than the last one plus two, or for a part
        more than the Advance Part Limit (3 / PART-TARGET parts when PART-TARGET is under a second, else 3) past
        the last part listed, is refused at once (400) rather than held. The segment being filled is `next_seq`; a
        part of the one after it counts as at least one part past the end of the open one."""
        if msn > self.next_seq + 1:
            return True
        if part is None or msn < self.next_seq or not self.part_ms:
            return False
        target_s = self.part_ms / 1000
        limit = 3 / target_s if target_s < 1 else 3
        ahead = part - len(self.open_parts) + 1 if msn == self.next_seq else part + 1
        return ahead > limit

    def preload_hint(self) -> str:
        """The path of the part that comes next (EXT-X-PRELOAD-HINT), or "" when none is being filled."""
        if not self.part_ms or self.open_chunks is None:
            return ""
        return self._part_name(self.open_name, len(self.open_parts))

    def _write(self, mux, timestamp: int, payload: bytes) -> None:
        try:
            data = mux(timestamp, payload)
        except TsError as e:
            self.dropped_frames += 1
            if self.dropped_frames == 1 or self.dropped_frames % 1000 == 0:
                log.warn(self.cid, f"hls {self.m3u8_name}: frame dropped ({self.dropped_frames} so far): {e}")
            return
        if data:
            self.open_chunks.append(data)
            self.open_bytes += len(data.data) if self.fmp4 else len(data)
            if timestamp > self.open_last_ts:
                self.open_last_ts = timestamp

    def _reap(self, end_ts: int, final: bool = False) -> None:
        """Close the open segment at `end_ts` (the next segment's start) and publish it in the playlist."""
        if self.open_chunks is None:
            return
        chunks, self.open_chunks = self.open_chunks, None
        duration = end_ts - self.open_start_ts
        if duration < MIN_SEGMENT_MS:
            if not final:
                # Too short to keep: its frames go to the next segment's start instead.
                self.open_chunks = chunks
            elif self.open_parts:
                for part in self.open_parts:
                    if self.index is not None:
                        self.index.remove(part[0], self)
                self.open_parts = []
            return
        parts = []
        if self.part_ms:
            if chunks:
                self.open_chunks = chunks
                self._cut_part(end_ts)
                self.open_chunks = None
            chunks = self.open_parts
            self.open_parts = []
            hint = self._part_name(self.open_name, len(chunks))
            if self.index is not None:
                self.index.remove(hint, self)    # hinted, never made: the segment ended first
        if self.fmp4 and not chunks:
            return
        seq = self.next_seq
        self.next_seq += 1
        template = self.settings["fmp4_file"] if self.fmp4 else self.settings["ts_file"]
        name = render(template, self.vhost, self.app, self.stream, seq, self.open_wall_ms, duration)
        if self.part_ms:
            name, offset = self.open_name, 0
            for part_name, part_duration, independent, part_data in chunks:
                parts.append([part_name, part_duration, independent, offset, len(part_data)])
                offset += len(part_data)
            data = b"".join(p[3] for p in chunks)
        elif self.fmp4:
            data = self.muxer.fragment(chunks, end_ts)
            # The init segment follows the codec configuration (a change also marks a discontinuity).
            self.init_data = self.muxer.init_segment()
            if self.index is not None:
                self.index.add(self.init_name, self)
        else:
            data = b"".join(chunks)
        key_name = iv = ""
        if self.settings.get("keys") and not self.fmp4:
            key_name, iv = self._key_for(seq)
            data = encrypt_segment(data, self.keys[key_name], bytes.fromhex(iv))
        segment = Segment(seq, name, self._uri(name), duration, data, self.open_discontinuity, key_name, iv, parts,
                          self.open_wall_ms)
        self.segments.append(segment)
        if self.index is not None:
            self.index.add(name, self)
            self.index.add(self.m3u8_name, self)
        self._shrink()
        self._refresh_playlist()
        if final or not self.part_ms:
            self._wake()
        # With LL-HLS parts, held requests are otherwise answered by the next _open, once the playlist hints at
        # the next segment's first part: a playlist that ends on a segment's URI with no part or hint after it
        # makes hls.js take that segment for the one being filled (its fragmentHint), and from then on it merges
        # each segment's timing with the one before it and its timeline falls apart (bufferStalledError,
        # bufferSeekOverHole).
        if self.settings["path"]:
            self._write_files(segment)

    def _key_for(self, seq: int) -> tuple[str, str]:
        """A new key every hls_fragments_per_key segments (SRS: when seq % n == 0), with its own random IV."""
        if not self.key_name or seq % self.settings["fragments_per_key"] == 0:
            self.key_name = render(self.settings["key_file"], self.vhost, self.app, self.stream, seq)
            self.key_iv = os.urandom(AES_BLOCK).hex()
            self.keys[self.key_name] = os.urandom(AES_BLOCK)
            if self.index is not None:
                self.index.add(self.key_name, self)
            if self.settings["path"]:
                try:
                    self._write_atomic(os.path.join(self.settings["key_file_path"] or self.settings["path"],
                                                    self.key_name), self.keys[self.key_name])
                except OSError as e:
                    log.warn(self.cid, f"hls {self.m3u8_name}: cannot write the key file: {e}")
        return self.key_name, self.key_iv

    def _key_uri(self, key_name: str) -> str:
        """hls_key_url + the key's path when hls_key_url is set (SRS), else as a segment's URI."""
        url = self.settings.get("key_url")
        return url.rstrip("/") + "/" + key_name if url else self._uri(key_name)

    def _uri(self, name: str) -> str:
        """The segment's URI in the playlist: relative to the playlist's directory when under it (as SRS),
        else absolute; after hls_entry_prefix when one is set."""
        base = os.path.dirname(self.m3u8_name)
        uri = name[len(base) + 1:] if base and name.startswith(base + "/") else (name if not base else "/" + name)
        prefix = self.settings["entry_prefix"]
        if prefix:
            uri = prefix.rstrip("/") + "/" + name
        return uri

    def _shrink(self) -> None:
        """Keep hls_window seconds in the playlist (SRS's segments->shrink): at least one segment."""
        total = sum(s.duration_ms for s in self.segments)
        while len(self.segments) > 1 and total > self.settings["window_ms"]:
            old = self.segments.pop(0)
            total -= old.duration_ms
            self.expired.append(old)
        while len(self.expired) > EXPIRED_KEPT:
            gone = self.expired.pop(0)
            if self.index is not None:
                self.index.remove(gone.name, self)
                for part in gone.parts:
                    self.index.remove(part[0], self)
            if self.settings["path"] and self.settings["cleanup"]:
                self._unlink(gone.name)
        if self.keys:
            needed = {seg.key_name for seg in self.segments + self.expired} | {self.key_name}
            for key_name in [k for k in self.keys if k not in needed]:
                del self.keys[key_name]
                if self.index is not None:
                    self.index.remove(key_name, self)

    def _refresh_playlist(self) -> None:
        entries = [m3u8.Entry(s.uri, s.duration_ms, s.discontinuity, self._key_uri(s.key_name) if s.key_name else "",
                              s.iv) for s in self.segments]
        floor = int(self.settings["fragment_ms"] * self.settings["td_ratio"])
        first = self.segments[0].seq if self.segments else self.next_seq
        map_uri = self._uri(self.init_name) if self.fmp4 else ""
        low_latency = None
        if self.part_ms:
            for entry, segment in zip(entries, self.segments):
                entry.wall_ms = segment.wall_ms     # players measure their latency from it
            for entry, segment in list(zip(entries, self.segments))[-PARTS_LISTED_SEGMENTS:]:
                entry.parts = [(self._uri(p[0]), p[1], p[2]) for p in segment.parts]
            hint = self.preload_hint()
            low_latency = m3u8.LowLatency(self.part_ms, [(self._uri(p[0]), p[1], p[2]) for p in self.open_parts],
                                          self._uri(hint) if hint else "", self.open_wall_ms)
        if not entries and low_latency is None:
            return
        self.playlist = m3u8.media_playlist(entries, first, target_floor_ms=floor, map_uri=map_uri,
                                            low_latency=low_latency).encode()

    # ----- serving ---------------------------------------------------------------------------------------

    def key_data(self, name: str) -> bytes | None:
        return self.keys.get(name)

    def init_segment_data(self, name: str) -> bytes | None:
        return self.init_data if self.fmp4 and name == self.init_name and self.init_data else None

    def segment_data(self, name: str) -> bytes | None:
        for segment in self.segments:
            if segment.name == name:
                return segment.data
        for segment in self.expired:
            if segment.name == name:
                return segment.data
        if self.part_ms:
            return self._part_data(name)
        return None

    def _part_data(self, name: str) -> bytes | None:
        for part in self.open_parts:
            if part[0] == name:
                return part[3]
        for segment in reversed(self.segments + self.expired):
            for part_name, _, _, offset, length in segment.parts:
                if part_name == name:
                    return memoryview(segment.data)[offset:offset + length]
        return None

    def linger_s(self) -> float:
        """How long the playlist stays after the publisher left: hls_dispose (0 in SRS keeps the files
        forever; in memory that would be a leak, so 0 keeps it for hls_window)."""
        return self.settings["dispose_s"] or self.settings["window_ms"] / 1000

    def is_idle(self, now: float | None = None) -> bool:
        """True when there is nothing to serve, or the publisher left more than linger_s() ago: the source may
        be freed then. A source with a publisher is never idle anyway."""
        if not self.segments and self.open_chunks is None:
            return True
        if self.unpublished_at is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self.unpublished_at >= self.linger_s()

    def memory_bytes(self) -> int:
        return sum(len(s.data) for s in self.segments) + sum(len(s.data) for s in self.expired) + self.open_bytes

    # ----- disk (hls_path) ---------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.settings["path"], name)

    def _write_files(self, segment: Segment) -> None:
        try:
            self._write_atomic(self._path(segment.name), segment.data)
            self._write_atomic(self._path(self.m3u8_name), self.playlist)
        except OSError as e:
            log.warn(self.cid, f"hls {self.m3u8_name}: cannot write to hls_path {self.settings['path']}: {e}")

    @staticmethod
    def _write_atomic(path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except OSError:
            pass

    def dispose(self) -> None:
        """Forget every path (and remove the files, as SRS's hls_dispose does)."""
        if self.index is not None:
            for segment in self.segments + self.expired:
                self.index.remove(segment.name, self)
            for key_name in self.keys:
                self.index.remove(key_name, self)
            if self.init_name:
                self.index.remove(self.init_name, self)
            self.index.remove(self.m3u8_name, self)
        if self.settings["path"]:
            for segment in self.segments + self.expired:
                self._unlink(segment.name)
            self._unlink(self.m3u8_name)
        self.segments, self.expired, self.open_chunks = [], [], None

    # ----- handover ----------------------------------------------------------------------------------------

    def attach(self, index: "HlsIndex") -> None:
        """Serve this segmenter's paths from `index` (after a restore)."""
        self.index = index
        if self.playlist is not None:
            index.add(self.m3u8_name, self)
        for segment in self.segments + self.expired:
            index.add(segment.name, self)
            for part in segment.parts:
                index.add(part[0], self)
        for part in self.open_parts:
            index.add(part[0], self)
        for key_name in self.keys:
            index.add(key_name, self)
        if self.init_data:
            index.add(self.init_name, self)
        self._index_hint()

    def snapshot(self) -> dict:
        return {"version": SNAPSHOT_VERSION, "settings": dict(self.settings), "vhost": self.vhost, "app": self.app,
                "stream": self.stream, "muxer": self.muxer.snapshot(),
                "segments": [s.snapshot() for s in self.segments], "expired": [s.snapshot() for s in self.expired],
                "next_seq": self.next_seq,
                "open_name": self.open_name, "open_parts": [list(p) for p in self.open_parts],
                "part_start_ts": self.part_start_ts,
                "open": None if self.open_chunks is None else {
                    "data": [[c.track, c.dts, c.cts, c.data, c.sync] for c in self.open_chunks] if self.fmp4
                    else b"".join(self.open_chunks), "start_ts": self.open_start_ts,
                    # apart from "data", so that a build without exact AAC timing still reads the snapshot
                    "ticks": [c.ticks for c in self.open_chunks] if self.fmp4 else [],
                    "last_ts": self.open_last_ts, "wall_ms": self.open_wall_ms,
                    "discontinuity": self.open_discontinuity},
                "discontinuity_next": self.discontinuity_next, "video_sh": self.video_sh, "audio_sh": self.audio_sh,
                "unpublished_at": self.unpublished_at, "dropped_frames": self.dropped_frames,
                "keys": dict(self.keys), "key_name": self.key_name, "key_iv": self.key_iv,
                "init_data": self.init_data}

    @classmethod
    def restore(cls, snap: dict, index: "HlsIndex | None" = None, cid: str = "hls") -> "Segmenter":
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown HLS snapshot version {snap.get('version')!r}")
        self = cls(snap["settings"], snap["vhost"], snap["app"], snap["stream"], None, cid)
        self.muxer = (Fmp4Muxer if self.fmp4 else TsMuxer).restore(snap["muxer"])
        self.init_data = snap.get("init_data", b"")
        self.open_name, self.part_start_ts = snap.get("open_name", ""), snap.get("part_start_ts", 0)
        self.open_parts = [list(p) for p in snap.get("open_parts", [])]
        self.segments = [Segment(*s) for s in snap["segments"]]
        self.expired = [Segment(*s) for s in snap["expired"]]
        self.next_seq = snap["next_seq"]
        opened = snap["open"]
        if opened is not None:
            if self.fmp4:
                ticks = opened.get("ticks") or [None] * len(opened["data"])
                self.open_chunks = [Sample(*c, ticks=t) for c, t in zip(opened["data"], ticks)]
                self.open_bytes = sum(len(c.data) for c in self.open_chunks)
            else:
                self.open_chunks = [opened["data"]]
                self.open_bytes = len(opened["data"])
            self.open_start_ts, self.open_last_ts = opened["start_ts"], opened["last_ts"]
            self.open_wall_ms, self.open_discontinuity = opened["wall_ms"], opened["discontinuity"]
        self.discontinuity_next = snap["discontinuity_next"]
        self.video_sh, self.audio_sh = snap["video_sh"], snap["audio_sh"]
        self.unpublished_at, self.dropped_frames = snap["unpublished_at"], snap["dropped_frames"]
        self.keys = dict(snap.get("keys") or {})
        self.key_name, self.key_iv = snap.get("key_name", ""), snap.get("key_iv", "")
        if self.segments or self.open_parts:
            self._refresh_playlist()
        if index is not None:
            self.attach(index)
        return self


class HlsIndex:
    """Which segmenter serves which path (`live/s.m3u8`, `live/s-3.ts`): the HTTP server's lookup table.
    Each worker has one; segmenters add and remove their own paths."""

    def __init__(self):
        self.paths: dict[str, Segmenter] = {}

    def add(self, path: str, segmenter: Segmenter) -> None:
        self.paths[path] = segmenter

    def remove(self, path: str, segmenter: Segmenter) -> None:
        if self.paths.get(path) is segmenter:
            del self.paths[path]

    def get(self, path: str) -> Segmenter | None:
        return self.paths.get(path)

    def sweep(self, now: float) -> list[Segmenter]:
        """Dispose of the segmenters whose publisher left more than their linger time ago (their sources are
        freed by the registry's sweep at the same moment). Returns those disposed, for the log."""
        gone = [seg for seg in set(self.paths.values()) if seg.unpublished_at is not None and seg.is_idle(now)]
        for seg in gone:
            seg.dispose()
        return gone
