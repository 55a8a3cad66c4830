"""The HLS segmenter as a specification: where it cuts, what the playlist holds, how long memory lasts, what a
republish does, and that a snapshot taken anywhere (through the handover's plain-data wire format) continues
byte for byte like the segmenter that was never interrupted."""

from __future__ import annotations

import time

from hypothesis import given, settings, strategies as st

from nonstop.config.schema import Hls
from nonstop.handover import wire
from nonstop.media.hls import EXPIRED_KEPT, REPUBLISH_WINDOW_MS, HlsIndex, Segmenter, render, settings_from_config
from nonstop.media.source import Source
from nonstop.protocol.rtmp import MSG_AUDIO, MSG_VIDEO

AVC_SH = bytes.fromhex("1700000000") + bytes.fromhex("0164001fffe1000b6764001facd9405005ba10") \
    + bytes.fromhex("01000468ebe3cb")
AAC_SH = bytes.fromhex("af001210")


def frame(key: bool, size: int = 300) -> bytes:
    nal = (b"\x65" if key else b"\x41") + bytes(size)
    return bytes((0x17 if key else 0x27, 1, 0, 0, 0)) + len(nal).to_bytes(4, "big") + nal


def make(**overrides) -> Segmenter:
    hls = Hls(enabled=True, hls_fragment=2, hls_window=10)
    for k, v in overrides.items():
        setattr(hls, k, v)
    return Segmenter(settings_from_config(hls), "__defaultVhost__", "live", "s", HlsIndex())


def stream(n: int, fps: int = 25, gop: int = 25, start_ms: int = 0, audio: bool = True):
    """(type, timestamp, payload) of an H.264/AAC stream: headers, then n video frames and audio between."""
    yield MSG_VIDEO, start_ms, AVC_SH
    if audio:
        yield MSG_AUDIO, start_ms, AAC_SH
    for i in range(n):
        ts = start_ms + i * 1000 // fps
        yield MSG_VIDEO, ts, frame(i % gop == 0)
        if audio:
            yield MSG_AUDIO, ts + 5, b"\xaf\x01" + b"\x21" * 50


def feed(seg: Segmenter, messages) -> None:
    for type_id, ts, payload in messages:
        seg.on_media(type_id, ts, payload, wall_ms=1_700_000_000_000)


def test_segments_start_at_keyframes_once_hls_fragment_has_passed():
    seg = make(hls_fragment=2.5)
    feed(seg, stream(25 * 12, gop=25))
    durations = [s.duration_ms for s in seg.segments]
    # keyframes every second: the first keyframe at or after 2.5 s is at 3 s
    assert durations and all(d == 3000 for d in durations), durations
    for s in seg.segments:
        assert s.data[:1] == b"\x47" and len(s.data) % 188 == 0
    assert seg.playlist.startswith(b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-TARGETDURATION:3\n")


def test_without_wait_keyframe_segments_cut_at_hls_fragment():
    seg = make(hls_fragment=1, hls_wait_keyframe=False)
    feed(seg, stream(25 * 6, gop=250))
    assert [s.duration_ms for s in seg.segments] == [1000] * 5


def test_audio_only_cuts_at_hls_aof_ratio():
    seg = make(hls_fragment=1, hls_aof_ratio=2.0)
    feed(seg, [(MSG_AUDIO, 0, AAC_SH)] + [(MSG_AUDIO, i * 23, b"\xaf\x01" + b"\x21" * 40) for i in range(600)])
    assert seg.segments and all(2000 <= s.duration_ms < 2023 + 23 for s in seg.segments)


def test_playlist_holds_hls_window_and_memory_is_bounded():
    seg = make(hls_fragment=1, hls_window=4)
    feed(seg, stream(25 * 60))
    assert sum(s.duration_ms for s in seg.segments) <= 4000 + 1000
    assert len(seg.expired) == EXPIRED_KEPT
    assert seg.segments[0].seq == seg.next_seq - len(seg.segments)
    served = set(seg.index.paths)
    assert served == {"live/s.m3u8"} | {s.name for s in seg.segments + seg.expired}
    bound = (len(seg.segments) + EXPIRED_KEPT + 1) * max(len(s.data) for s in seg.segments)
    assert seg.memory_bytes() <= bound
    print(f"memory after 60 s: {seg.memory_bytes()} bytes in {len(seg.segments)} + {len(seg.expired)} segments")


def test_expired_segments_are_still_served_then_forgotten():
    seg = make(hls_fragment=1, hls_window=2)
    feed(seg, stream(25 * 10))
    first_listed = seg.segments[0].seq
    assert seg.segment_data(f"live/s-{first_listed - 1}.ts") is not None
    assert seg.segment_data(f"live/s-{first_listed - EXPIRED_KEPT - 1}.ts") is None
    assert seg.index.get(f"live/s-{first_listed - EXPIRED_KEPT - 1}.ts") is None


def test_templates_and_entry_prefix():
    assert render("[app]/[stream]-[seq]-[timestamp].ts", "v", "live", "s", 7, 1234) == "live/s-7-1234.ts"
    assert render("/hls/[vhost]/[stream].m3u8", "v", "live", "s") == "hls/v/s.m3u8"
    seg = make(hls_fragment=1, hls_entry_prefix="http://cdn.example/")
    feed(seg, stream(25 * 3))
    assert b"\nhttp://cdn.example/live/s-0.ts\n" in seg.playlist
    other = make(hls_fragment=1, hls_m3u8_file="[app]/[stream]/index.m3u8", hls_ts_file="ts/[stream]-[seq].ts")
    feed(other, stream(25 * 3))
    assert b"\n/ts/s-0.ts\n" in other.playlist      # not under the playlist's directory: absolute


def test_republish_within_the_window_continues_and_after_it_marks_a_discontinuity():
    seg = make(hls_fragment=1)
    feed(seg, stream(25 * 3))
    seg.on_unpublish(100.0)
    seg.on_publish(100.0 + REPUBLISH_WINDOW_MS / 1000 - 1)
    feed(seg, stream(25 * 3, start_ms=3010))
    assert not any(s.discontinuity for s in seg.segments)
    seg.on_unpublish(200.0)
    seg.on_publish(200.0 + REPUBLISH_WINDOW_MS / 1000 + 1)
    n = seg.next_seq
    feed(seg, stream(25 * 3, start_ms=6020))
    assert [s.seq for s in seg.segments if s.discontinuity] == [n]
    assert b"#EXT-X-DISCONTINUITY\n#EXTINF" in seg.playlist


def test_a_new_codec_configuration_starts_a_discontinuity_at_once():
    seg = make(hls_fragment=1)
    feed(seg, stream(25 * 3))
    other_sh = AVC_SH[:-1] + b"\xcc"
    n = seg.next_seq
    feed(seg, [(MSG_VIDEO, 3000, other_sh)] + list(stream(25 * 3, start_ms=3000, audio=False))[1:])
    assert [s.seq for s in seg.segments if s.discontinuity] == [n + 1]


def test_lingers_for_hls_dispose_after_unpublish_then_is_idle():
    seg = make(hls_fragment=1, hls_dispose=30)
    assert seg.is_idle(0.0)          # nothing to serve yet
    feed(seg, stream(25 * 3))
    assert not seg.is_idle(50.0)
    seg.on_unpublish(50.0)
    assert not seg.is_idle(79.0) and seg.is_idle(80.0)
    assert seg.index.sweep(79.0) == [] and seg.index.sweep(80.0) == [seg]
    assert seg.index.paths == {}


def test_a_source_with_hls_is_not_freed_while_its_playlist_lingers_and_carries_it_in_its_snapshot():
    source = Source("v/live/s", "v", "live", "s", source_id="vid-x")
    source.hls = make(hls_fragment=1)
    source.on_publish(object(), 10.0)
    for type_id, ts, payload in stream(25 * 3):
        source.on_media(type_id, ts, payload, 10.0)
    assert len(source.hls.segments) == 2
    source.on_unpublish(time.monotonic())     # Source.is_idle asks the clock: the real one here
    assert not source.is_idle()
    snap = wire.loads(wire.dumps(source.snapshot()))
    again = Source.restore(snap, 12.0)
    assert again.hls.playlist == source.hls.playlist and again.hls.index is None
    index = HlsIndex()
    again.hls.attach(index)
    assert index.get("live/s.m3u8") is again.hls and index.get("live/s-1.ts") is again.hls
    del snap["hls"]       # a snapshot from a build without HLS restores without it
    assert Source.restore(snap, 12.0).hls is None


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 25 * 8 * 2 + 1), st.integers(1, 3), st.booleans(), st.sampled_from(["ts", "fmp4", "ll"]))
def test_a_snapshot_anywhere_continues_byte_for_byte(split, gop_s, wait_keyframe, kind):
    messages = list(stream(25 * 8, gop=25 * gop_s))
    options = {"hls_use_fmp4": kind != "ts", "hls_part": 0.3 if kind == "ll" else 0.0}
    whole = make(hls_fragment=1, hls_window=4, hls_wait_keyframe=wait_keyframe, **options)
    feed(whole, messages)
    first = make(hls_fragment=1, hls_window=4, hls_wait_keyframe=wait_keyframe, **options)
    feed(first, messages[:split])
    moved = Segmenter.restore(wire.loads(wire.dumps(first.snapshot())), HlsIndex())
    feed(moved, messages[split:])
    assert moved.playlist == whole.playlist
    assert [(s.seq, s.name, s.data) for s in moved.segments + moved.expired] == \
        [(s.seq, s.name, s.data) for s in whole.segments + whole.expired]
    assert moved.muxer.snapshot() == whole.muxer.snapshot()
    assert set(moved.index.paths) == set(whole.index.paths)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([MSG_VIDEO, MSG_AUDIO]), st.integers(0, 100000),
                          st.one_of(st.binary(max_size=64),
                                    st.sampled_from([AVC_SH, AAC_SH, frame(True), frame(False)]),
                                    st.binary(max_size=40).map(lambda b: b"\x17\x00\x00\x00\x00" + b),
                                    st.binary(max_size=40).map(lambda b: b"\xaf\x00" + b))),
                max_size=60), st.booleans())
def test_any_publisher_input_never_raises_and_keeps_segments_whole(messages, fmp4):
    seg = make(hls_fragment=0.1, hls_window=1, hls_use_fmp4=fmp4)
    feed(seg, messages)
    seg.on_unpublish(0.0)
    for s in seg.segments + seg.expired:
        assert s.duration_ms >= 100
        if fmp4:
            assert s.data[4:8] == b"moof"
        else:
            assert len(s.data) % 188 == 0 and s.data[:1] == b"\x47"


def test_a_stream_whose_keyframes_stop_is_cut_at_three_targets_and_resumes_at_the_next_keyframe():
    seg = make(hls_fragment=1)
    feed(seg, stream(25 * 12, gop=25 * 10, audio=False))
    assert [(s.seq, s.duration_ms) for s in seg.segments][:1] == [(0, 3000)]
    assert seg.open_start_ts == 10000      # the next segment opened at the keyframe at 10 s


def _decrypt(data: bytes, key: bytes, iv: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    return plain[:-plain[-1]]


def test_hls_keys_encrypt_each_segment_with_a_key_per_fragments_per_key_and_a_key_tag_where_it_changes():
    seg = make(hls_fragment=1, hls_window=5, hls_keys=True, hls_fragments_per_key=2)
    feed(seg, stream(25 * 9))
    lines = seg.playlist.decode().splitlines()
    keys = [line for line in lines if line.startswith("#EXT-X-KEY")]
    first_listed = seg.segments[0].seq
    # a key tag before the first segment listed, then one at each new key (seq % 2 == 0)
    assert lines[lines.index(keys[0]) + 2] == f"s-{first_listed}.ts"
    assert len(keys) == len({s.key_name for s in seg.segments})
    for s in seg.segments:
        assert s.key_name == f"live/s-{s.seq - s.seq % 2}.key"
        assert f'URI="s-{s.seq - s.seq % 2}.key",IV=0x{s.iv}' in seg.playlist.decode()
        plain = _decrypt(s.data, seg.key_data(s.key_name), bytes.fromhex(s.iv))
        assert plain[:1] == b"\x47" and len(plain) % 188 == 0
    # keys no segment needs any more are forgotten
    assert set(seg.keys) == {s.key_name for s in seg.segments + seg.expired} | {seg.key_name}
    assert seg.index.get(seg.segments[0].key_name) is seg
    moved = Segmenter.restore(wire.loads(wire.dumps(seg.snapshot())), HlsIndex())
    assert moved.playlist == seg.playlist and moved.keys == seg.keys
    assert moved.index.get(seg.key_name) is moved


def test_hls_key_url_prefixes_the_key_uri():
    seg = make(hls_fragment=1, hls_keys=True, hls_key_url="https://keys.example")
    feed(seg, stream(25 * 3))
    assert b'URI="https://keys.example/live/s-0.key"' in seg.playlist


def test_fmp4_segments_with_an_init_segment_in_ext_x_map():
    seg = make(hls_fragment=1, hls_use_fmp4=True)
    feed(seg, stream(25 * 4))
    text = seg.playlist.decode()
    assert "#EXT-X-VERSION:7" in text and '#EXT-X-MAP:URI="s-init.mp4"' in text and "\ns-0.m4s\n" in text
    assert seg.init_segment_data("live/s-init.mp4")[4:8] == b"ftyp"
    assert seg.segment_data("live/s-0.m4s")[4:8] == b"moof"
    assert seg.index.get("live/s-init.mp4") is seg


def test_ll_hls_parts_preload_hint_and_server_control():
    seg = make(hls_fragment=2, hls_use_fmp4=True, hls_part=0.5)
    feed(seg, stream(25 * 5 + 3, gop=50))
    text = seg.playlist.decode()
    assert "#EXT-X-VERSION:9" in text
    assert "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500" in text
    assert "#EXT-X-PART-INF:PART-TARGET=0.500" in text
    parts = [line for line in text.splitlines() if line.startswith("#EXT-X-PART:")]
    durations = [float(line.split("DURATION=")[1].split(",")[0]) for line in parts]
    assert parts and all(d <= 0.5 for d in durations), durations     # never over PART-TARGET
    for segment in seg.segments:     # and at least 85 % of it, but for a segment's last part
        assert all(425 <= p[1] for p in segment.parts[:-1]), segment.parts
    assert parts[0].endswith("INDEPENDENT=YES") and 'URI="s-0.0.m4s"' in parts[0]
    hint = seg.preload_hint()
    assert text.rstrip().endswith(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint.split("/")[-1]}"')
    # a segment is its parts, back to back; each part is served on its own
    first = seg.segments[0]
    assert b"".join(bytes(seg.segment_data(p[0])) for p in first.parts) == first.data
    assert seg.index.get(hint) is seg and seg.segment_data(hint) is None
    assert seg.has(0, None) and seg.has(seg.next_seq, 0) and not seg.has(seg.next_seq, len(seg.open_parts))
    assert not seg.has(seg.next_seq + 1, 0)


def test_held_requests_are_woken_when_their_part_exists():
    seg = make(hls_fragment=2, hls_use_fmp4=True, hls_part=0.5)
    feed(seg, stream(25 * 3, gop=50))
    woken = []
    msn, part = seg.next_seq, len(seg.open_parts)
    seg.waiters.append([lambda: seg.has(msn, part), lambda: woken.append(seg.has(msn, part)), None])
    feed(seg, list(stream(25 * 4, gop=50))[2 + 2 * 75:])      # the frames after 3 s, one part more
    assert woken == [True] and not seg.waiters


def test_a_request_held_until_a_segment_ends_gets_a_playlist_that_hints_at_the_next_one():
    """hls.js asks for the last part of a segment (`_HLS_msn=N&_HLS_part=LAST`) at each segment's end. Answered
    between the segment's close and the next one's open, the playlist ended on the segment's URI with no hint
    after it; hls.js then takes that segment for the one being filled, merges each segment's timing with the one
    before it, and stalls (bufferStalledError, bufferSeekOverHole). The answer must hint at the next part."""
    seg = make(hls_fragment=2, hls_use_fmp4=True, hls_part=0.5)
    feed(seg, stream(25 * 3, gop=50))
    msn = seg.next_seq
    answers = []
    seg.waiters.append([lambda: seg.has(msn, None), lambda: answers.append(seg.playlist.decode()), None])
    feed(seg, list(stream(25 * 5, gop=50))[2 + 2 * 75:])      # on past the keyframe at 4 s
    assert len(answers) == 1
    lines = answers[0].rstrip().splitlines()
    assert f"s-{msn}.m4s" in lines and lines[-1] == f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="s-{msn + 1}.0.m4s"'


def test_ll_hls_playlist_dates_the_segment_being_filled_before_its_first_part():
    seg = make(hls_fragment=2, hls_use_fmp4=True, hls_part=0.5)
    feed(seg, stream(25 * 3, gop=50))
    lines = seg.playlist.decode().splitlines()
    last_uri = max(i for i, line in enumerate(lines) if line.startswith("s-") and line.endswith(".m4s"))
    tail = lines[last_uri + 1:]
    assert tail[0].startswith("#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z") and \
        tail[1].startswith("#EXT-X-PART:") and tail[-1].startswith("#EXT-X-PRELOAD-HINT:")


def test_a_snapshot_from_a_build_without_exact_aac_timing_restores_and_goes_on():
    seg = make(hls_fragment=2, hls_use_fmp4=True, hls_part=0.5)
    messages = list(stream(25 * 6, gop=50))
    feed(seg, messages[:200])
    snap = wire.loads(wire.dumps(seg.snapshot()))
    assert len(snap["open"]["data"][0]) == 5            # the older layout of a sample, which older builds read
    del snap["open"]["ticks"], snap["muxer"]["audio_next"]
    moved = Segmenter.restore(snap, HlsIndex())
    feed(moved, messages[200:])
    assert moved.next_seq == 2 and moved.playlist.decode().rstrip().splitlines()[-1].startswith("#EXT-X-PRELOAD")
