"""The HTTP API's JSON, built from fake objects, checked field by field against SRS's samples (srs-reference §6)."""

from __future__ import annotations

from types import SimpleNamespace

from nonstop.api import views
from nonstop.api.stats import (TYPE_FLASH_PUBLISH, TYPE_FLV_PLAY, TYPE_FMLE_PUBLISH, TYPE_RTMP_PLAY, GroupTotals,
                               client_type)
from nonstop.media.source import Source

# The key order of SRS's samples in srs-reference.md §6.
SRS_STREAM_KEYS = ["id", "name", "vhost", "app", "tcUrl", "url", "live_ms", "clients", "frames", "send_bytes",
                   "recv_bytes", "kbps", "publish", "video", "audio"]
SRS_CLIENT_KEYS = ["id", "vhost", "stream", "ip", "pageUrl", "swfUrl", "tcUrl", "url", "name", "type", "publish",
                   "alive", "send_bytes", "recv_bytes", "kbps"]
KBPS = {"recv_30s": 2089, "send_30s": 1685}


def make_source(vhost: str = "__defaultVhost__") -> Source:
    source = Source(f"{vhost}/live/test", vhost, "live", "test", source_id="vid-1o37825")
    source.frames = 1050
    source.info.video_codec = "H264"
    source.info.video = {"profile": "High", "level": "3.1", "width": 1280, "height": 720}
    source.info.audio_codec = "AAC"
    source.info.audio = {"profile": "LC", "sample_rate": 44100, "channel": 2}
    return source


def rtmp_conn(source, role: str = "play", fmle: bool = False, cid: str = "064358z2"):
    session = SimpleNamespace(tc_url="rtmp://127.0.0.1:19350/live", stream_name="test")
    return SimpleNamespace(kind="rtmp", cid=cid, ip="127.0.0.1", role=role, publish_fmle=fmle, source=source,
                           session=session, page_url="", swf_url="", created_wall=1000.0, closed=False,
                           send_bytes=1145660, recv_bytes=3471)


def flv_conn(source, cid: str = "flv00001"):
    return SimpleNamespace(kind="http", cid=cid, ip="10.0.0.9", role="play", source=source, closed=False,
                           headers={"host": "example.com:8080", "referer": "https://site/page.html"},
                           created_wall=1000.0, send_bytes=10, recv_bytes=120)


def test_envelope_has_code_server_service_and_pid_as_a_string():
    out = views.envelope(views.Ident("vid-abc", "svc123", 12345), data={"x": 1})
    assert out == {"code": 0, "server": "vid-abc", "service": "svc123", "pid": "12345", "data": {"x": 1}}
    assert isinstance(out["pid"], str)


def test_errors_are_only_a_code():
    assert views.error(views.ERROR_RTMP_STREAM_NOT_FOUND) == {"code": 2048}
    assert views.ERROR_RTMP_CLIENT_NOT_FOUND == 2049
    assert views.ERROR_RTMP_VHOST_NOT_FOUND == 2014


def test_versions_split_major_minor_revision():
    assert views.version_data("0.1.0") == {"major": 0, "minor": 1, "revision": 0, "version": "0.1.0"}
    assert views.version_data("6.0.157") == {"major": 6, "minor": 0, "revision": 157, "version": "6.0.157"}
    assert views.version_data("2") == {"major": 2, "minor": 0, "revision": 0, "version": "2"}


def test_stream_json_matches_srs_sample_field_by_field():
    source = make_source()
    publisher = rtmp_conn(source, role="publish", fmle=True, cid="th53yu22")
    source.publisher = publisher
    totals = GroupTotals(clients=5, send_bytes=11753361, recv_bytes=10084635)
    out = views.stream_json(source, server_id="vid-srv", now_ms=1795265262995, totals=totals, kbps=KBPS)
    assert list(out) == SRS_STREAM_KEYS
    assert out == {
        "id": "vid-1o37825", "name": "test", "vhost": views.vhost_id("vid-srv", "__defaultVhost__"), "app": "live",
        "tcUrl": "rtmp://127.0.0.1:19350/live", "url": "/live/test", "live_ms": 1795265262995, "clients": 5,
        "frames": 1050, "send_bytes": 11753361, "recv_bytes": 10084635, "kbps": KBPS,
        "publish": {"active": True, "cid": "th53yu22"},
        "video": {"codec": "H264", "profile": "High", "level": "3.1", "width": 1280, "height": 720},
        "audio": {"codec": "AAC", "sample_rate": 44100, "channel": 2, "profile": "LC"},
    }
    assert list(out["video"]) == ["codec", "profile", "level", "width", "height"]
    assert list(out["audio"]) == ["codec", "sample_rate", "channel", "profile"]


def test_stream_without_publisher_is_inactive_without_cid_and_keeps_a_clients_tc_url():
    source = make_source()
    totals = GroupTotals(clients=1, tc_url="rtmp://h/live")
    out = views.stream_json(source, server_id="s", now_ms=1, totals=totals, kbps=KBPS)
    assert out["publish"] == {"active": False}
    assert out["tcUrl"] == "rtmp://h/live"


def test_stream_without_codecs_has_null_video_and_audio():
    source = Source("v/live/a", "__defaultVhost__", "live", "a", source_id="vid-x")
    out = views.stream_json(source, server_id="s", now_ms=1, totals=None, kbps=KBPS)
    assert out["video"] is None and out["audio"] is None
    assert out["clients"] == 0 and out["send_bytes"] == 0


def test_a_codec_without_details_shows_other_as_srs_does():
    source = Source("v/live/a", "__defaultVhost__", "live", "a", source_id="vid-x")
    source.info.video_codec = "HEVC"
    source.info.audio_codec = "MP3"
    out = views.stream_json(source, server_id="s", now_ms=1, totals=None, kbps=KBPS)
    assert out["video"] == {"codec": "HEVC", "profile": "Other", "level": "Other", "width": 0, "height": 0}
    assert out["audio"] == {"codec": "MP3", "sample_rate": 0, "channel": 0, "profile": "Other"}


def test_stream_url_has_the_vhost_unless_it_is_the_default():
    assert views.stream_url("__defaultVhost__", "live", "test") == "/live/test"
    assert views.stream_url("example.com", "live", "test") == "example.com/live/test"


def test_rtmp_client_json_matches_srs_sample_field_by_field():
    source = make_source()
    conn = rtmp_conn(source)
    out = views.client_json(conn, client_type(conn), server_id="vid-srv", now_wall=1004.6712,
                            kbps={"recv_30s": 0, "send_30s": 0})
    assert list(out) == SRS_CLIENT_KEYS
    assert out == {
        "id": "064358z2", "vhost": views.vhost_id("vid-srv", "__defaultVhost__"), "stream": "vid-1o37825",
        "ip": "127.0.0.1", "pageUrl": "", "swfUrl": "", "tcUrl": "rtmp://127.0.0.1:19350/live",
        "url": "/live/test", "name": "test", "type": "rtmp-play", "publish": False, "alive": 4.67,
        "send_bytes": 1145660, "recv_bytes": 3471, "kbps": {"recv_30s": 0, "send_30s": 0},
    }


def test_flv_client_takes_its_page_url_and_tc_url_from_the_request():
    source = make_source()
    out = views.client_json(flv_conn(source), TYPE_FLV_PLAY, server_id="s", now_wall=1001.0, kbps=KBPS)
    assert out["type"] == "flv-play" and out["publish"] is False
    assert out["pageUrl"] == "https://site/page.html"
    assert out["tcUrl"] == "http://example.com:8080/live"
    assert out["ip"] == "10.0.0.9"


def test_client_types_follow_role_and_fmle():
    source = make_source()
    assert client_type(rtmp_conn(source, "play")) == TYPE_RTMP_PLAY
    assert client_type(rtmp_conn(source, "publish", fmle=True)) == TYPE_FMLE_PUBLISH
    assert client_type(rtmp_conn(source, "publish", fmle=False)) == TYPE_FLASH_PUBLISH
    assert client_type(flv_conn(source)) == TYPE_FLV_PLAY


def test_connections_without_a_stream_are_not_clients():
    source = make_source()
    idle = rtmp_conn(None, role="")
    closed = rtmp_conn(source)
    closed.closed = True
    waiting_http = flv_conn(source)
    waiting_http.role = ""
    assert client_type(idle) is None
    assert client_type(closed) is None
    assert client_type(waiting_http) is None


def test_publishing_clients_say_publish_true():
    source = make_source()
    out = views.client_json(rtmp_conn(source, "publish"), TYPE_FLASH_PUBLISH, server_id="s", now_wall=1001.0,
                            kbps=KBPS)
    assert out["publish"] is True and out["type"] == "flash-publish"


def test_vhost_json_has_srs_keys_and_a_stable_id():
    totals = GroupTotals(clients=3, send_bytes=10, recv_bytes=20, streams=1)
    out = views.vhost_json("__defaultVhost__", enabled=True, server_id="vid-srv", totals=totals, kbps=KBPS)
    assert list(out) == ["id", "name", "enabled", "clients", "streams", "send_bytes", "recv_bytes", "kbps", "hls"]
    assert out["clients"] == 3 and out["streams"] == 1 and out["hls"] == {"enabled": False}
    assert out["id"] == views.vhost_id("vid-srv", "__defaultVhost__")
    assert out["id"].startswith("vid-") and len(out["id"]) == len("vid-73e8263")
    assert views.vhost_id("vid-srv", "a.com") != views.vhost_id("vid-srv", "b.com")


def test_paging_defaults_to_srs_count_of_10_and_reads_garbage_as_missing():
    assert views.paging({}) == (0, 10)
    assert views.paging({"start": "5", "count": "3"}) == (5, 3)
    assert views.paging({"start": "-4", "count": "0"}) == (0, 10)
    assert views.paging({"start": "x", "count": "y"}) == (0, 10)
    items = list(range(25))
    assert views.page(items, {}) == list(range(10))
    assert views.page(items, {"start": "20"}) == [20, 21, 22, 23, 24]
    assert views.page(items, {"start": "30"}) == []


def test_summaries_data_has_srs_shape():
    out = views.summaries_data(ok=True, now_ms=5, self_info={"pid": 1, "generation": 1}, system={"cpus": 2})
    upgrade = out.pop("upgrade")
    assert out == {"ok": True, "now_ms": 5, "self": {"pid": 1, "generation": 1}, "system": {"cpus": 2}}
    assert upgrade["state"] == "idle" and upgrade["handed_over"] == 0 and set(upgrade) >= {
        "state", "started_ms", "finished_ms", "handed_over", "failed", "drained", "total_ms", "worst_ms"}
