"""SRS directives that nonstop reads but does not act on, so that an SRS user's srs.conf starts as is.

Gathered from SRS 7's `SrsConfig::check_normal_config()` and `srs_config_transform_vhost()`
(srs_app_config.cpp, 7.0.18 and the later 7.0 develop branch), plus `conf/full.conf`. Keys are the
schema paths of the blocks they appear in ("" is the top level, "vhost.play" the play block of a vhost).
A directive named here is skipped with everything in its block, and the skip is a warning. A directive
named nowhere, neither here nor in the schema, is an error, as in SRS.

The vhost-level access control blocks (http_hooks, security, refer) are read by config/access.py.
"""

from __future__ import annotations

UNSUPPORTED: dict[str, frozenset[str]] = {
    "": frozenset({
        # logging and process, SRS-specific
        "ff_log_dir", "ff_log_level", "srs_log_level_v2", "pithy_print_ms", "utc_time", "work_dir",
        "asprocess", "server_id", "empty_ip_ok", "disable_daemon_for_docker", "in_docker", "is_full",
        # config reload by file watching (nonstop reloads on SIGHUP)
        "inotify_auto_reload", "auto_reload_for_docker",
        # version check against ossrs.net
        "query_latest_version", "first_wait_for_qlv",
        # runtime tuning of SRS's own allocator and threads
        "tcmalloc_release_rate", "threads", "circuit_breaker",
        # reporting to external services
        "heartbeat", "stats", "exporter", "tencentcloud_cls", "tencentcloud_apm",
        # other protocols and servers
        "rtc_server", "srt_server", "rtsp_server", "stream_caster", "rtmps",
    }),
    "http_api": frozenset({"raw_api", "https"}),
    "http_api.auth": frozenset(),
    "http_server": frozenset({"https"}),
    "vhost": frozenset({
        # recording, packaging and processing
        "hds", "dash", "dvr", "exec", "ingest", "forward", "transcode", "http_static",
        # other protocols
        "rtc", "srt", "rtsp",
        # protocol details SRS exposes
        "bandcheck", "in_ack_size", "out_ack_size",
        # SRS 1/2 spellings that SRS 7 still moves into play/publish/cluster/rtc blocks, for features
        # nonstop lacks (the ones it has are in LEGACY_VHOST_MOVES below)
        "mix_correct", "atc", "atc_auto", "send_min_interval", "reduce_sequence_header", "mr",
        "token_traverse", "vhost", "debug_srs_upnode", "nack", "twcc", "http",
    }),
    "vhost.play": frozenset({"mix_correct", "atc", "atc_auto", "send_min_interval", "reduce_sequence_header"}),
    "vhost.publish": frozenset({"mr", "mr_latency", "parse_sps", "try_annexb_first", "kickoff_for_idle"}),
    "vhost.cluster": frozenset({"token_traverse", "vhost", "debug_srs_upnode", "follow_client"}),
    # HLS that nonstop does not do (yet): SRS's timestamp tweaks and error strategies.
    "vhost.hls": frozenset({
        "hls_on_error", "hls_ts_floor", "hls_dts_directly",
        "hls_recover", "hls_master_m3u8_path_relative", "hls_storage", "hls_mount",
    }),
    "vhost.http_remux": frozenset({
        "fast_cache", "drop_if_not_match", "has_audio", "has_video", "guess_has_av",
        "hstrs",        # SRS 1/2, always on since SRS 3, removed by SRS's transform
    }),
}

# Vhost-level access control, read by config/access.py. Listed here for the environment overrides
# (SRS_VHOST_HTTP_HOOKS_ENABLED=on): the blocks and their `enabled`.
SECURITY_BLOCKS: dict[str, str] = {
    "http_hooks": "authentication",
    "security": "its allow/deny rules",
    "refer": "its referer checks",
}

# SRS 1/2 put these directly in the vhost; SRS 3+ reads them from a block, and SRS 7 still moves them
# there (srs_config_transform_vhost). Name -> (block, name in the block).
LEGACY_VHOST_MOVES: dict[str, tuple[str, str]] = {
    "time_jitter": ("play", "time_jitter"),
    "mw_latency": ("play", "mw_latency"),
    "gop_cache": ("play", "gop_cache"),
    "gop_cache_max_frames": ("play", "gop_cache_max_frames"),
    "queue_length": ("play", "queue_length"),
    "mode": ("cluster", "mode"),
    "origin": ("cluster", "origin"),
    "publish_1stpkt_timeout": ("publish", "firstpkt_timeout"),
    "publish_normal_timeout": ("publish", "normal_timeout"),
}

# SRS 1 called the HTTP server block `http_stream`; SRS 2+ renames it on load.
LEGACY_ROOT_RENAMES: dict[str, str] = {"http_stream": "http_server"}

# SRS 7 (late 2025) moved `listen` and `chunk_size` into `rtmp { }`; the top-level spelling still
# works there and wins when both are given. nonstop reads either.
RTMP_BLOCK = "rtmp"
RTMP_BLOCK_DIRECTIVES = frozenset({"listen", "chunk_size"})


def display(section: str, name: str) -> str:
    """How messages name a directive: dotted from the top level, or from its vhost for vhost parts."""
    if section in ("", "vhost"):
        return name
    if section.startswith("vhost."):
        section = section[len("vhost."):]
    return f"{section}.{name}"
