"""FLV: header and tag bytes, the incremental reader, and payload inspection (keyframes, codecs, SPS, AAC)."""

import pytest

from nonstop.protocol import flv
from nonstop.protocol.errors import ProtocolError
from nonstop.protocol.flv import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, FlvError, FlvReader, FlvTag

# Sequence headers from ffmpeg 5.1 + libx264 (`-f lavfi -i testsrc=size=WxH -pix_fmt yuv420p -c:v libx264
# -f flv`): the whole first video tag payload, AVCDecoderConfigurationRecord after the 5-byte prefix.
AVC_SH_1280X720_HIGH_31 = bytes.fromhex(
    "17000000000164001fffe1001a6764001facd9405005bb011000000300100000030320f183196001000668ebe3cb22c0fdf8f800")
AVC_SH_1920X1080_HIGH_40 = bytes.fromhex(  # 1088 coded lines cropped to 1080
    "170000000001640028ffe1001b67640028acd940780227e5c044000003000400000300c83c60c65801000668ebe3cb22c0fdf8f800")
AVC_SH_1920X1080_INTERLACED = bytes.fromhex(  # -x264-params interlaced=1: frame_mbs_only_flag 0
    "170000000001640028ffe1001a67640028acd94078044fde0220000003002000000643e2c5b2c001000668fba3cb22c0fdf8f800")
AVC_SH_640X360_BASELINE_30 = bytes.fromhex(
    "17000000000142c01effe100196742c01ed900a02ff97011000003000100000300320f162e4801000568cb83cb20")
AVC_SH_642X362_HIGH444 = bytes.fromhex(  # -pix_fmt yuv444p: chroma_format_idc 3, crop unit 1
    "170000000001f4001effe1001a67f4001e919b281485fc7cf808800000030080000019078b16cb01000868ebe3c44c000440fff8f800")
AAC_SH_LC_44100_STEREO = bytes.fromhex("af001210")  # ffmpeg's aac encoder, -ac 2 -ar 44100
AVC_KEYFRAME = bytes.fromhex("1701000000") + b"\x00\x00\x00\x05\x65\x88\x84\x00\x10"
AVC_INTER = bytes.fromhex("2701000050") + b"\x00\x00\x00\x03\x41\x9a\x00"
AVC_END_OF_SEQUENCE = bytes.fromhex("1702000000")


def ex_video(frame_type: int, packet_type: int, fourcc: bytes, body: bytes = b"") -> bytes:
    """An Enhanced RTMP video payload: IsExHeader | FrameType << 4 | PacketType, then the FourCC."""
    return bytes([0x80 | frame_type << 4 | packet_type]) + fourcc + body


# ----- writing ---------------------------------------------------------------------------------------------
def test_file_header_is_13_bytes_with_the_first_previous_tag_size():
    assert flv.file_header(True, True) == b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
    assert flv.file_header(True, False)[4] == 0x04
    assert flv.file_header(False, True)[4] == 0x01
    assert flv.file_header(False, False)[4] == 0x00
    assert len(flv.file_header(True, True)) == flv.FLV_HEADER_SIZE + flv.PREV_TAG_SIZE_LEN


def test_tag_is_header_payload_and_previous_tag_size():
    tag = flv.encode_tag(TAG_VIDEO, 0x123456, b"abc")
    assert tag == bytes.fromhex("09" "000003" "123456" "00" "000000") + b"abc" + bytes.fromhex("0000000e")


def test_timestamp_bits_24_to_31_go_in_the_extension_byte():
    tag = flv.encode_tag(TAG_AUDIO, 0x89ABCDEF, b"")
    assert tag[4:8] == bytes.fromhex("abcdef89")


def test_timestamp_at_2_pow_32_and_beyond_wraps():
    assert flv.encode_tag(TAG_AUDIO, 2**32, b"x")[4:8] == b"\x00\x00\x00\x00"
    assert flv.encode_tag(TAG_AUDIO, 2**32 + 2**24 + 5, b"x")[4:8] == b"\x00\x00\x05\x01"


def test_payload_too_big_for_the_u24_size_is_refused():
    with pytest.raises(FlvError):
        flv.encode_tag(TAG_VIDEO, 0, bytes(0x1000000))


# ----- reading ---------------------------------------------------------------------------------------------
def small_stream() -> tuple[bytes, list[FlvTag]]:
    tags = [
        FlvTag(TAG_SCRIPT, 0, b"\x02\x00\x0aonMetaData\x05"),
        FlvTag(TAG_VIDEO, 0, AVC_SH_1280X720_HIGH_31),
        FlvTag(TAG_AUDIO, 0, AAC_SH_LC_44100_STEREO),
        FlvTag(TAG_VIDEO, 2**24 + 40, AVC_KEYFRAME),
        FlvTag(TAG_AUDIO, 2**32 - 1, b""),
        FlvTag(TAG_VIDEO, 80, AVC_INTER),
    ]
    data = flv.file_header(True, True) + b"".join(flv.encode_tag(t.tag_type, t.timestamp, t.payload) for t in tags)
    return data, tags


def test_reader_parses_header_and_tags():
    data, tags = small_stream()
    reader = FlvReader()
    assert reader.header is None
    assert reader.feed(data) == tags
    assert reader.header == (True, True)


def test_reader_gives_the_same_tags_for_every_split_point():
    data, tags = small_stream()
    for cut in range(len(data) + 1):
        reader = FlvReader()
        assert reader.feed(data[:cut]) + reader.feed(data[cut:]) == tags, f"split at {cut}"


def test_reader_accepts_one_byte_at_a_time():
    data, tags = small_stream()
    reader = FlvReader()
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i:i + 1])
    assert got == tags


def test_a_tag_is_returned_before_its_previous_tag_size_arrives():
    data, tags = small_stream()
    first_tag_end = 13 + flv.TAG_HEADER_SIZE + len(tags[0].payload)
    assert FlvReader().feed(data[:first_tag_end]) == tags[:1]


def test_read_file_tags_reads_a_whole_file():
    data, tags = small_stream()
    assert flv.read_file_tags(data) == tags
    assert flv.read_file_tags(data[:-4]) == tags, "a missing last PreviousTagSize is tolerated"


def test_read_file_tags_refuses_a_file_that_ends_inside_a_tag():
    data, _ = small_stream()
    with pytest.raises(FlvError, match="inside a tag"):
        flv.read_file_tags(data[:-6])
    with pytest.raises(FlvError, match="header"):
        flv.read_file_tags(data[:5])


def test_previous_tag_sizes_are_not_checked():
    # Some writers put a wrong PreviousTagSize (without the 11 header bytes); the tag sizes delimit the stream.
    tag = flv.encode_tag(TAG_VIDEO, 0, b"abc")
    wrong = tag[:-4] + b"\x00\x00\x00\x03"
    assert flv.read_file_tags(flv.file_header(False, True) + wrong * 2) == [FlvTag(TAG_VIDEO, 0, b"abc")] * 2


def test_data_offset_beyond_9_is_skipped():
    header = b"FLV\x01\x01\x00\x00\x00\x0c" + b"pad" + b"\x00\x00\x00\x00"
    assert flv.read_file_tags(header + flv.encode_tag(TAG_VIDEO, 7, b"v")) == [FlvTag(TAG_VIDEO, 7, b"v")]


def test_bad_signature_is_an_flv_error():
    with pytest.raises(FlvError, match="signature"):
        FlvReader().feed(b"GIF89a\x00\x00\x00\x00\x00\x00\x00")


def test_data_offset_below_9_or_far_beyond_is_an_flv_error():
    with pytest.raises(FlvError, match="DataOffset"):
        FlvReader().feed(b"FLV\x01\x05\x00\x00\x00\x08")
    with pytest.raises(FlvError, match="DataOffset"):
        FlvReader().feed(b"FLV\x01\x05\xff\xff\xff\xff")


@pytest.mark.parametrize("tag_type", [0, 7, 10, 17, 19, 0x20 | TAG_VIDEO, 0x40 | TAG_AUDIO, 0xFF])
def test_unknown_tag_types_and_the_filter_bit_are_flv_errors(tag_type):
    data = flv.file_header(True, True) + flv.encode_tag(tag_type, 0, b"x")
    with pytest.raises(FlvError, match="tag type"):
        FlvReader().feed(data)


def test_tag_over_the_cap_fails_at_its_header_without_buffering_it():
    reader = FlvReader(max_tag_size=100)
    with pytest.raises(FlvError, match="exceeds the cap"):
        reader.feed(flv.file_header(True, True) + flv.encode_tag(TAG_VIDEO, 0, bytes(101))[:11])


def test_tag_at_the_cap_is_accepted():
    reader = FlvReader(max_tag_size=100)
    tags = reader.feed(flv.file_header(True, True) + flv.encode_tag(TAG_VIDEO, 0, bytes(100)))
    assert tags == [FlvTag(TAG_VIDEO, 0, bytes(100))]


def test_after_an_error_every_feed_fails():
    reader = FlvReader()
    with pytest.raises(FlvError):
        reader.feed(b"XLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00")
    with pytest.raises(FlvError, match="already failed"):
        reader.feed(flv.file_header(True, True))


def test_buffer_never_exceeds_one_tag():
    data, tags = small_stream()
    largest = max(len(t.payload) for t in tags)
    reader = FlvReader()
    for i in range(len(data)):
        reader.feed(data[i:i + 1])
        assert len(reader.snapshot()["buffer"]) < flv.TAG_HEADER_SIZE + largest


def test_snapshot_restores_mid_tag_at_every_split_point():
    data, tags = small_stream()
    for cut in range(0, len(data) + 1, 3):
        reader = FlvReader(max_tag_size=1000)
        first = reader.feed(data[:cut])
        restored = FlvReader.restore(reader.snapshot())
        assert restored.max_tag_size == 1000
        assert first + restored.feed(data[cut:]) == tags, f"split at {cut}"


def test_snapshot_is_plain_data():
    reader = FlvReader()
    reader.feed(flv.file_header(True, False) + b"\x09\x00")
    assert reader.snapshot() == {"max_tag_size": flv.MAX_TAG_SIZE, "header": [True, False],
                                 "buffer": b"\x09\x00", "skip": 0, "error": None}


def test_bad_snapshot_is_an_flv_error():
    with pytest.raises(FlvError):
        FlvReader.restore({"header": None})


def test_flv_error_is_a_protocol_error():
    assert issubclass(FlvError, ProtocolError)


# ----- keyframes and sequence headers --------------------------------------------------------------------
def test_legacy_avc_keyframe_inter_frame_and_sequence_header():
    assert flv.is_video_keyframe(AVC_KEYFRAME)
    assert not flv.is_video_keyframe(AVC_INTER)
    assert flv.is_video_sequence_header(AVC_SH_1280X720_HIGH_31)
    assert not flv.is_video_keyframe(AVC_SH_1280X720_HIGH_31), "a sequence header is not a picture"
    assert not flv.is_video_sequence_header(AVC_KEYFRAME)


def test_avc_end_of_sequence_is_neither_keyframe_nor_sequence_header():
    assert not flv.is_video_keyframe(AVC_END_OF_SEQUENCE)
    assert not flv.is_video_sequence_header(AVC_END_OF_SEQUENCE)


def test_legacy_hevc_and_av1_codec_ids_12_and_13():
    assert flv.is_video_sequence_header(b"\x1c\x00\x00\x00\x00") and flv.video_codec(b"\x1c") == "HEVC"
    assert flv.is_video_keyframe(b"\x1c\x01\x00\x00\x00")
    assert flv.is_video_sequence_header(b"\x1d\x00\x00\x00\x00") and flv.video_codec(b"\x1d") == "AV1"


def test_legacy_codecs_without_packet_type_use_the_frame_type_alone():
    assert flv.is_video_keyframe(b"\x14abc")  # VP6 keyframe
    assert not flv.is_video_keyframe(b"\x24abc")
    assert not flv.is_video_sequence_header(b"\x14\x00")
    assert flv.video_codec(b"\x12") == "H263"


def test_enhanced_rtmp_hevc_keyframe():
    coded_frames = ex_video(1, 1, b"hvc1", b"\x00\x00\x00" + b"\x00\x00\x00\x02\x26\x01")
    assert flv.is_video_keyframe(coded_frames)
    assert not flv.is_video_sequence_header(coded_frames)
    assert flv.video_codec(coded_frames) == "HEVC"
    coded_frames_x = ex_video(1, 3, b"hvc1", b"\x00\x00\x00\x02\x26\x01")  # no composition time
    assert flv.is_video_keyframe(coded_frames_x)


def test_enhanced_rtmp_av1_keyframe():
    keyframe = ex_video(1, 1, b"av01", b"\x12\x00\x0a\x0b")
    assert flv.is_video_keyframe(keyframe)
    assert flv.video_codec(keyframe) == "AV1"


def test_enhanced_rtmp_sequence_start_is_a_header_not_a_keyframe():
    for fourcc in (b"hvc1", b"av01", b"vp09", b"avc1"):
        start = ex_video(1, 0, fourcc, b"\x01\x02\x03")
        assert flv.is_video_sequence_header(start)
        assert not flv.is_video_keyframe(start)


def test_enhanced_rtmp_inter_frame_and_sequence_end_are_not_keyframes():
    assert not flv.is_video_keyframe(ex_video(2, 1, b"hvc1", b"\x00\x00\x00"))
    assert not flv.is_video_keyframe(ex_video(1, 2, b"hvc1"))  # SequenceEnd
    assert not flv.is_video_keyframe(ex_video(1, 1, b"xxxx", b"\x00\x00\x00")), "unknown FourCC"


def test_enhanced_rtmp_codecs_by_fourcc():
    assert [flv.video_codec(ex_video(1, 1, f)) for f in (b"avc1", b"hvc1", b"av01", b"vp09", b"abcd")] == [
        "H264", "HEVC", "AV1", "VP9", None]


def test_aac_sequence_header_and_raw_frame():
    assert flv.is_audio_sequence_header(AAC_SH_LC_44100_STEREO)
    assert not flv.is_audio_sequence_header(b"\xaf\x01\x21\x00")
    assert not flv.is_audio_sequence_header(b"\x2f\x00")  # MP3 has no sequence header


def test_enhanced_rtmp_audio_sequence_start():
    opus_head = b"\x90Opus" + b"OpusHead\x01\x02"
    assert flv.is_audio_sequence_header(opus_head)
    assert flv.audio_codec(opus_head) == "Opus"
    assert not flv.is_audio_sequence_header(b"\x91Opus\x00")


def test_audio_codecs_by_sound_format():
    assert [flv.audio_codec(bytes([f << 4])) for f in (10, 2, 11, 13, 7, 8, 14, 9, 12)] == [
        "AAC", "MP3", "Speex", "Opus", "G711A", "G711U", "MP3", None, None]
    assert flv.audio_codec(b"\x90mp4a\x00") == "AAC"


@pytest.mark.parametrize("payload", [b"", b"\x17", b"\x80", b"\x80hvc", b"\xaf", b"\x90Op", b"\x1c"])
def test_short_payloads_are_false_or_none_never_errors(payload):
    assert flv.is_video_keyframe(payload) in (True, False)
    assert not flv.is_video_sequence_header(payload)
    assert not flv.is_audio_sequence_header(payload)
    assert flv.video_codec(payload) in (None, "H264", "HEVC")
    assert flv.parse_avc_sequence_header(payload) is None
    assert flv.parse_aac_sequence_header(payload) is None
    assert flv.video_codec(b"") is None and flv.audio_codec(b"") is None and not flv.is_video_keyframe(b"")


# ----- SPS -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload, expected", [
    (AVC_SH_1280X720_HIGH_31, {"profile": "High", "level": "3.1", "width": 1280, "height": 720}),
    (AVC_SH_1920X1080_HIGH_40, {"profile": "High", "level": "4", "width": 1920, "height": 1080}),
    (AVC_SH_1920X1080_INTERLACED, {"profile": "High", "level": "4", "width": 1920, "height": 1080}),
    (AVC_SH_640X360_BASELINE_30, {"profile": "Baseline", "level": "3", "width": 640, "height": 360}),
    (AVC_SH_642X362_HIGH444, {"profile": "High444", "level": "3", "width": 642, "height": 362}),
])
def test_avc_sequence_header_from_x264(payload, expected):
    assert flv.parse_avc_sequence_header(payload) == expected


class BitWriter:
    """Writes SPS fields (u(n), ue(v), se(v)) for hand-built test vectors."""

    def __init__(self):
        self.bits = ""

    def u(self, n, value):
        self.bits += format(value, f"0{n}b") if n else ""

    def ue(self, value):
        code = format(value + 1, "b")
        self.bits += "0" * (len(code) - 1) + code

    def se(self, value):
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self) -> bytes:
        bits = self.bits + "1"  # rbsp_stop_one_bit
        bits += "0" * (-len(bits) % 8)
        rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big")
        out, zeros = bytearray(b"\x67"), 0
        for byte in rbsp:  # emulation prevention
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def avc_sh(sps: bytes) -> bytes:
    return bytes.fromhex("1700000000") + bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + len(sps).to_bytes(
        2, "big") + sps + b"\x01\x00\x02\x68\xce"


def build_sps(profile=100, level=31, chroma=1, scaling=False, width_mbs=80, height_units=45,
              frame_mbs_only=1, crop=None, poc_type=0, constraints=0, non_ref_offset=-3):
    w = BitWriter()
    w.u(8, profile), w.u(8, constraints), w.u(8, level), w.ue(0)
    if profile in (100, 110, 122, 244):
        w.ue(chroma)
        if chroma == 3:
            w.u(1, 0)  # separate_colour_plane_flag
        w.ue(0), w.ue(0), w.u(1, 0)
        w.u(1, 1 if scaling else 0)
        if scaling:
            for i in range(12 if chroma == 3 else 8):
                w.u(1, 1)  # every list present
                for j in range(16 if i < 6 else 64):
                    w.se(1 if j % 2 else -1)
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0), w.se(non_ref_offset), w.se(2), w.ue(3)
        for k in (1, -1, 0):
            w.se(k)
    w.ue(4), w.u(1, 0)
    w.ue(width_mbs - 1), w.ue(height_units - 1)
    w.u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, 1)
    w.u(1, 1)
    w.u(1, 1 if crop else 0)
    if crop:
        for value in crop:
            w.ue(value)
    w.u(1, 0)  # vui_parameters_present_flag
    return w.nal()


def test_sps_with_scaling_lists_in_every_slot():
    sps = build_sps(scaling=True, width_mbs=120, height_units=68, crop=(0, 0, 0, 4))
    assert flv.parse_avc_sequence_header(avc_sh(sps)) == {
        "profile": "High", "level": "3.1", "width": 1920, "height": 1080}


def test_sps_4_4_4_with_twelve_scaling_lists():
    sps = build_sps(profile=244, chroma=3, scaling=True, width_mbs=40, height_units=23, crop=(1, 2, 3, 4))
    assert flv.parse_avc_sequence_header(avc_sh(sps)) == {
        "profile": "High444", "level": "3.1", "width": 640 - 3, "height": 368 - 7}


def test_sps_4_2_2_crops_in_units_of_two_columns_one_row():
    sps = build_sps(profile=122, chroma=2, width_mbs=80, height_units=45, crop=(1, 1, 1, 1))
    assert flv.parse_avc_sequence_header(avc_sh(sps))["width"] == 1280 - 4
    assert flv.parse_avc_sequence_header(avc_sh(sps))["height"] == 720 - 2


def test_sps_interlaced_crops_in_units_of_four_rows():
    sps = build_sps(frame_mbs_only=0, width_mbs=45, height_units=18, crop=(0, 0, 0, 2))
    assert flv.parse_avc_sequence_header(avc_sh(sps))["height"] == 576 - 8


def test_sps_with_pic_order_count_type_1_and_2():
    for poc_type in (1, 2):
        sps = build_sps(profile=77, level=40, poc_type=poc_type)
        assert flv.parse_avc_sequence_header(avc_sh(sps)) == {
            "profile": "Main", "level": "4", "width": 1280, "height": 720}


def test_sps_emulation_prevention_bytes_are_removed():
    # A large offset_for_non_ref_pic is a long run of zero bits, so the writer must insert 00 00 03.
    sps = build_sps(poc_type=1, non_ref_offset=5 - 2 ** 27)
    assert b"\x00\x00\x03" in sps
    assert flv.parse_avc_sequence_header(avc_sh(sps)) == {
        "profile": "High", "level": "3.1", "width": 1280, "height": 720}
    assert b"\x00\x00\x03" in AVC_SH_1280X720_HIGH_31, "x264's SPS has them too (in its VUI)"


def test_level_1b():
    assert flv.parse_avc_sequence_header(avc_sh(build_sps(profile=66, level=9)))["level"] == "1b"
    assert flv.parse_avc_sequence_header(avc_sh(build_sps(profile=66, level=11, constraints=0x10)))[
        "level"] == "1b"
    assert flv.parse_avc_sequence_header(avc_sh(build_sps(profile=100, level=11, constraints=0x10)))[
        "level"] == "1.1"


@pytest.mark.parametrize("payload", [
    AVC_SH_1280X720_HIGH_31[:20],                          # SPS cut short
    AVC_SH_1280X720_HIGH_31[:10],                          # record cut inside the SPS length
    AVC_SH_1280X720_HIGH_31[:10] + b"\xe0" + AVC_SH_1280X720_HIGH_31[11:],  # zero SPS in the record
    AVC_SH_1280X720_HIGH_31.replace(b"\x67\x64", b"\x68\x64"),  # not an SPS NAL
    b"\x17\x00\x00\x00\x00" + bytes(40),                   # all zeros
    b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x05\x67\x64\x00\x1f\xff",  # endless Exp-Golomb
    AVC_KEYFRAME,                                          # not a sequence header
    ex_video(1, 0, b"hvc1", AVC_SH_1280X720_HIGH_31[5:]),  # HEVC, not parsed as H.264
])
def test_bad_avc_sequence_headers_give_none(payload):
    assert flv.parse_avc_sequence_header(payload) is None


def test_enhanced_rtmp_avc1_sequence_start_is_parsed_too():
    payload = ex_video(1, 0, b"avc1", AVC_SH_1280X720_HIGH_31[5:])
    assert flv.parse_avc_sequence_header(payload)["width"] == 1280


# ----- AAC AudioSpecificConfig -----------------------------------------------------------------------------
@pytest.mark.parametrize("config, expected", [
    ("1210", {"profile": "LC", "sample_rate": 44100, "channel": 2}),
    ("1188", {"profile": "LC", "sample_rate": 48000, "channel": 1}),
    ("0a10", {"profile": "Main", "sample_rate": 44100, "channel": 2}),
    ("1618", {"profile": "LC", "sample_rate": 7350, "channel": 3}),
    ("11b8", {"profile": "LC", "sample_rate": 48000, "channel": 8}),  # channelConfiguration 7 is 7.1
    ("2b1188", {"profile": "HE", "sample_rate": 48000, "channel": 2}),  # SBR: 24 kHz core, 48 kHz out
    ("eb1188", {"profile": "HEv2", "sample_rate": 48000, "channel": 2}),
    ("1780562210", {"profile": "LC", "sample_rate": 44100, "channel": 2}),  # explicit 24-bit rate
])
def test_aac_audio_specific_config(config, expected):
    assert flv.parse_aac_sequence_header(b"\xaf\x00" + bytes.fromhex(config)) == expected


def test_aac_from_ffmpeg():
    assert flv.parse_aac_sequence_header(AAC_SH_LC_44100_STEREO) == {
        "profile": "LC", "sample_rate": 44100, "channel": 2}


def test_enhanced_rtmp_mp4a_sequence_start_is_parsed_too():
    assert flv.parse_aac_sequence_header(b"\x90mp4a\x12\x10")["sample_rate"] == 44100


@pytest.mark.parametrize("payload", [
    b"\xaf\x00", b"\xaf\x00\x12", b"\xaf\x01\x12\x10", b"\x2f\x00\x12\x10",
    b"\xaf\x00\x16\x90",         # reserved sampling frequency index 13
    b"\xaf\x00\x02\x10",         # object type 0
    b"\xaf\x00\x17\x80",         # explicit rate cut short
    b"\x90Opus\x12\x10",         # not AAC
])
def test_bad_aac_sequence_headers_give_none(payload):
    assert flv.parse_aac_sequence_header(payload) is None
