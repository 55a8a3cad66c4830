"""What a nonstop config holds: the typed Config, with every default, and the table of directives that
fills it. The table is the single source of truth: the builder reads files with it, and the environment
override names (NONSTOP_HTTP_API_LISTEN, ...) are derived from its paths, so they cannot drift apart.

Defaults follow SRS 7 (docs/srs-reference.md §2) except where the comment says why not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

from nonstop.config.values import (
    Endpoint, Parser, endpoint, host_optional_port, host_port, integer, on_off, one_of, path_value,
    positive_seconds, text_value,
)

DEFAULT_VHOST = "__defaultVhost__"     # SRS's name for the vhost that serves any host
DEFAULT_RTMP_PORT = 1935
CHUNK_SIZE_MIN, CHUNK_SIZE_MAX = 128, 65536     # RTMP spec minimum; SRS's maximum
MW_MSGS_MAX = 128                               # SRS_PERF_MW_MSGS: messages per merged write


@dataclass
class ApiAuth:
    enabled: bool = False
    username: str = ""
    password: str = ""


@dataclass
class HttpApi:
    enabled: bool = False
    listen: Endpoint = Endpoint("0.0.0.0", 1985)
    crossdomain: bool = True
    auth: ApiAuth = field(default_factory=ApiAuth)
    # New: API connections are a pool of their own, apart from the media's max_connections (README: a full
    # server still answers its probes, and API clients never take a viewer's place). Probes, a scraper and a
    # few consoles need a handful; 64 fits in the fds the start-up check keeps beyond max_connections.
    max_connections: int = 64


@dataclass
class HttpServer:
    enabled: bool = False
    listen: Endpoint = Endpoint("0.0.0.0", 8080)
    dir: str = "./objs/nginx/html"
    crossdomain: bool = True


@dataclass
class HttpRemux:
    enabled: bool = False
    mount: str = "[vhost]/[app]/[stream].flv"
    # New (SRS ends the response at unpublish): an HTTP-FLV player waits this long for a republish (a
    # reconnecting OBS) and goes on with continuous timestamps; after it, the response ends. 0: end at once.
    republish_window: int = 5000        # ms


@dataclass
class Play:
    gop_cache: bool = True
    gop_cache_max_frames: int = 2500
    # New: SRS bounds the GOP cache in frames only, so 2500 frames of 256 KB pin 600 MB. Past this many bytes
    # of messages since the keyframe, the cache is cleared as at the frame bound (README: Configuration).
    gop_cache_max_bytes: int = 32 << 20
    queue_length: float = 30.0          # seconds
    time_jitter: str = "full"           # full | zero | off
    mw_latency: int = 350               # ms
    mw_msgs: int = 8


@dataclass
class Publish:
    firstpkt_timeout: int = 20000       # ms
    normal_timeout: int = 5000          # ms


@dataclass
class Cluster:
    mode: str = "local"                 # local (origin) | remote (edge)
    origin: list[str] = field(default_factory=list)        # "host[:port]"
    origin_cluster: bool = False
    coworkers: list[str] = field(default_factory=list)     # "host:port" of the other origins' HTTP API
    protocol: str = "rtmp"
    # New in nonstop; SRS hard-codes the edge's timings (srs-reference §4: 3 s retry, 5 s receive).
    connect_timeout: int = 3000         # ms
    recv_timeout: int = 5000            # ms, SRS's pull receive timeout
    retry_min: int = 1000               # ms, first retry delay; doubles up to retry_max
    retry_max: int = 10000              # ms
    linger: int = 3000                  # ms an edge keeps pulling after its last player left
    coworker_timeout: int = 1000        # ms per coworker query; SRS waits 30 s, users report slow starts
    advertise: str = ""                 # the host other nodes should use to reach this one ("" = guess)


HOOK_EVENTS = ("on_connect", "on_close", "on_publish", "on_unpublish", "on_play", "on_stop")
# Accepted and kept, for the features that will call them (HLS, DVR); nothing calls them yet.
HOOK_EVENTS_RESERVED = ("on_dvr", "on_hls", "on_hls_notify")
HOOK_TIMEOUT_MS = 3000      # new: SRS waits up to 30 s (SRS_HTTP_CLIENT_TIMEOUT), with the client held
HOOK_MAX_INFLIGHT = 256     # new: SRS has no bound (a coroutine per client)


@dataclass
class HttpHooks:
    """SRS's vhost http_hooks: each event holds its URLs, called in order (nonstop/access/hooks.py)."""
    enabled: bool = False
    on_connect: list[str] = field(default_factory=list)
    on_close: list[str] = field(default_factory=list)
    on_publish: list[str] = field(default_factory=list)
    on_unpublish: list[str] = field(default_factory=list)
    on_play: list[str] = field(default_factory=list)
    on_stop: list[str] = field(default_factory=list)
    on_dvr: list[str] = field(default_factory=list)
    on_hls: list[str] = field(default_factory=list)
    on_hls_notify: list[str] = field(default_factory=list)
    timeout: int = HOOK_TIMEOUT_MS      # ms per URL, new
    max_inflight: int = HOOK_MAX_INFLIGHT   # new: this vhost's hook calls in flight at once, per worker


@dataclass(frozen=True)
class SecurityRule:
    allow: bool                 # allow or deny
    action: str                 # publish | play
    target: str                 # "all", an IP or a CIDR, as written


@dataclass
class Security:
    """SRS's vhost security: allow/deny rules, in file order (nonstop/access/rules.py)."""
    enabled: bool = False
    rules: list[SecurityRule] = field(default_factory=list)


@dataclass
class Refer:
    """SRS's vhost refer: None is "not specified" (allow), a list the domains a page URL must end with."""
    enabled: bool = False
    all: list[str] | None = None
    publish: list[str] | None = None
    play: list[str] | None = None


@dataclass
class SignedUrl:
    """New: stateless signed stream URLs (nonstop/access/signed.py). Keys by id, the first is the one
    `nonstop sign` uses by default; publish and play are required separately."""
    enabled: bool = False
    keys: dict[str, str] = field(default_factory=dict)     # key id -> secret, in file order
    publish: bool = True        # publishers need a token
    play: bool = True           # players need a token


@dataclass
class Hls:
    """SRS's `hls { }` block (conf/full.conf, SRS 7), same names and defaults except hls_path (see below)."""
    enabled: bool = False
    hls_fragment: float = 10.0          # s, a segment's length (cut at the first keyframe after it)
    hls_td_ratio: float = 1.0           # EXT-X-TARGETDURATION = hls_td_ratio * hls_fragment at least
    hls_aof_ratio: float = 2.1          # audio-only streams are cut at hls_aof_ratio * hls_fragment
    hls_window: float = 60.0            # s of segments the playlist holds
    # SRS writes files under ./objs/nginx/html unless told otherwise. nonstop serves HLS from memory, so it
    # writes files only when hls_path is given (None: memory only).
    hls_path: str | None = None
    hls_m3u8_file: str = "[app]/[stream].m3u8"
    hls_ts_file: str = "[app]/[stream]-[seq].ts"
    hls_dispose: int = 120              # s after the publisher left: the playlist and segments are dropped
    hls_cleanup: bool = True            # remove the files of segments that left the window (with hls_path)
    hls_wait_keyframe: bool = True      # cut only at keyframes (off: cut at hls_fragment whatever comes)
    hls_acodec: str = "aac"             # the PMT's audio before the stream says (an: none)
    hls_vcodec: str = "h264"            # the PMT's video before the stream says (vn: none)
    hls_entry_prefix: str = ""          # base URL written before each segment URI in the playlist
    hls_nb_notify: int = 64             # read for compatibility: it sizes SRS's on_hls_notify (no hooks yet)
    hls_ctx: bool = True                # track each viewer by an hls_ctx session id (SRS 5+)
    hls_ts_ctx: bool = True             # and its segment requests too
    hls_keys: bool = False              # AES-128 encryption of the segments
    hls_fragments_per_key: int = 5      # a new key every this many segments
    hls_key_file: str = "[app]/[stream]-[seq].key"     # the key's path and URL ([seq]: its first segment)
    hls_key_file_path: str | None = None    # where key files are written with hls_path (None: hls_path)
    hls_key_url: str = ""               # a base URL before the key's path in the playlist (e.g. https://...)
    hls_use_fmp4: bool = False          # fMP4 (CMAF) segments instead of MPEG-TS (SRS 7)
    hls_fmp4_file: str = "[app]/[stream]-[seq].m4s"
    hls_init_file: str = "[app]/[stream]-init.mp4"
    # New (SRS has no LL-HLS): LL-HLS parts of this many seconds, with hls_use_fmp4; 0 = off.
    hls_part: float = 0.0


@dataclass
class Vhost:
    name: str
    enabled: bool = True
    min_latency: bool = False
    tcp_nodelay: bool = False
    chunk_size: int | None = None       # None: the global chunk_size
    http_remux: HttpRemux = field(default_factory=HttpRemux)
    play: Play = field(default_factory=Play)
    publish: Publish = field(default_factory=Publish)
    cluster: Cluster = field(default_factory=Cluster)
    hls: Hls = field(default_factory=Hls)
    http_hooks: HttpHooks = field(default_factory=HttpHooks)
    security: Security = field(default_factory=Security)
    refer: Refer = field(default_factory=Refer)
    signed_url: SignedUrl = field(default_factory=SignedUrl)


@dataclass
class Config:
    path: str                           # the file given, or "<embedded>"
    listen: list[Endpoint]
    max_connections: int = 1000
    daemon: bool = False                # SRS: on. Ours is off: containers and systemd Type=notify want it
    pid: str = "./objs/nonstop.pid"
    chunk_size: int = 60000
    log_tank: str = "console"           # SRS: file. Console suits containers and journald
    log_file: str = "./objs/nonstop.log"
    log_level: str = "trace"
    grace_start_wait: int = 2300        # ms
    grace_final_wait: int = 3200        # ms
    grace_max_wait: int = 0             # ms, new: bounds the drain; 0 = no bound, as in SRS
    force_grace_quit: bool = False
    handshake_timeout: int = 10000      # ms, new: handshake + connect must finish within it
    # ms, new: a connected client must publish or play within it. SRS closes such a client after its receive
    # timeout (SRS_CONSTS_RTMP_TIMEOUT, 30 s without a message); ours is a total, so chatter does not extend it,
    # and twice SRS's figure so that a client SRS would keep for merely pausing between commands stays too.
    identify_timeout: int = 60000
    master_process: bool = True         # new, nginx's name: off runs one process, without upgrades
    reuse_port: bool = False            # new: SO_REUSEPORT on the listeners
    upgrade_timeout: int = 30000        # ms, new: how long an upgrade may take before it is abandoned
    http_api: HttpApi = field(default_factory=HttpApi)
    http_server: HttpServer = field(default_factory=HttpServer)
    vhosts: dict[str, Vhost] = field(default_factory=dict)     # in file order
    warnings: list[str] = field(default_factory=list)         # "FILE:LINE: ..." strings

    def vhost_for(self, host: str | None) -> Vhost | None:
        """The vhost serving ``host``: the one of that exact name, else __defaultVhost__ if defined."""
        if host is not None and host in self.vhosts:
            return self.vhosts[host]
        return self.vhosts.get(DEFAULT_VHOST)


# ---- the directive table ----

@dataclass(frozen=True)
class Leaf:
    """A directive with values: ``name value;`` (or several values when ``multi``)."""
    attr: str                       # the dataclass field it sets
    parse: Parser
    multi: bool = False             # takes one or more values, stored as a list
    optional: bool = False          # the field is ``X | None``: only set when given


@dataclass(frozen=True)
class Block:
    """A directive with a block: ``name { ... }``, filling a nested dataclass."""
    attr: str
    factory: Callable[[], object]
    children: dict[str, Union[Leaf, "Block"]]


_ms = integer(0)            # a duration in ms where 0 means "none" or "at once"
_ms_positive = integer(1)   # a timeout, where 0 would mean every connection fails
_chunk = integer(CHUNK_SIZE_MIN, CHUNK_SIZE_MAX)


def _ratio(text: str) -> float:
    """A positive ratio, such as hls_td_ratio 1.5 (SRS reads it with atof)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError(f"expected a positive number, got '{text}'")
    return value

HTTP_API = Block("http_api", HttpApi, {
    "enabled": Leaf("enabled", on_off),
    "listen": Leaf("listen", endpoint),
    "crossdomain": Leaf("crossdomain", on_off),
    "max_connections": Leaf("max_connections", integer(1)),
    "auth": Block("auth", ApiAuth, {
        "enabled": Leaf("enabled", on_off),
        "username": Leaf("username", text_value),
        "password": Leaf("password", text_value),
    }),
})

HTTP_SERVER = Block("http_server", HttpServer, {
    "enabled": Leaf("enabled", on_off),
    "listen": Leaf("listen", endpoint),
    "dir": Leaf("dir", path_value),
    "crossdomain": Leaf("crossdomain", on_off),
})

VHOST = Block("vhost", Vhost, {
    "enabled": Leaf("enabled", on_off),
    "min_latency": Leaf("min_latency", on_off),
    "tcp_nodelay": Leaf("tcp_nodelay", on_off),
    "chunk_size": Leaf("chunk_size", _chunk, optional=True),
    "http_remux": Block("http_remux", HttpRemux, {
        "enabled": Leaf("enabled", on_off),
        "mount": Leaf("mount", path_value),
        "republish_window": Leaf("republish_window", _ms),
    }),
    "play": Block("play", Play, {
        "gop_cache": Leaf("gop_cache", on_off),
        # SRS takes 0 as "no cap"; nonstop keeps every cache bounded, so the cap must be real.
        "gop_cache_max_frames": Leaf("gop_cache_max_frames", integer(1)),
        "gop_cache_max_bytes": Leaf("gop_cache_max_bytes", integer(1)),
        "queue_length": Leaf("queue_length", positive_seconds),
        "time_jitter": Leaf("time_jitter", one_of("full", "zero", "off")),
        "mw_latency": Leaf("mw_latency", _ms),
        "mw_msgs": Leaf("mw_msgs", integer(0, MW_MSGS_MAX)),
    }),
    "publish": Block("publish", Publish, {
        "firstpkt_timeout": Leaf("firstpkt_timeout", _ms_positive),
        "normal_timeout": Leaf("normal_timeout", _ms_positive),
    }),
    "cluster": Block("cluster", Cluster, {
        "mode": Leaf("mode", one_of("local", "remote")),
        "origin": Leaf("origin", host_optional_port, multi=True),
        "origin_cluster": Leaf("origin_cluster", on_off),
        "coworkers": Leaf("coworkers", host_port, multi=True),
        # SRS also pulls over flv/flvs; nonstop's edge speaks RTMP only, so anything else is refused.
        "protocol": Leaf("protocol", one_of("rtmp")),
        "connect_timeout": Leaf("connect_timeout", _ms_positive),
        "recv_timeout": Leaf("recv_timeout", _ms_positive),
        "retry_min": Leaf("retry_min", _ms_positive),
        "retry_max": Leaf("retry_max", _ms_positive),
        "linger": Leaf("linger", _ms),
        "coworker_timeout": Leaf("coworker_timeout", _ms_positive),
        "advertise": Leaf("advertise", text_value),
    }),
    "hls": Block("hls", Hls, {
        "enabled": Leaf("enabled", on_off),
        "hls_fragment": Leaf("hls_fragment", positive_seconds),
        "hls_td_ratio": Leaf("hls_td_ratio", _ratio),
        "hls_aof_ratio": Leaf("hls_aof_ratio", _ratio),
        "hls_window": Leaf("hls_window", positive_seconds),
        "hls_path": Leaf("hls_path", path_value, optional=True),
        "hls_m3u8_file": Leaf("hls_m3u8_file", path_value),
        "hls_ts_file": Leaf("hls_ts_file", path_value),
        "hls_dispose": Leaf("hls_dispose", integer(0)),
        "hls_cleanup": Leaf("hls_cleanup", on_off),
        "hls_wait_keyframe": Leaf("hls_wait_keyframe", on_off),
        "hls_acodec": Leaf("hls_acodec", one_of("aac", "mp3", "an")),
        "hls_vcodec": Leaf("hls_vcodec", one_of("h264", "h265", "hevc", "vn")),
        "hls_entry_prefix": Leaf("hls_entry_prefix", text_value),
        "hls_nb_notify": Leaf("hls_nb_notify", integer(1)),
        "hls_ctx": Leaf("hls_ctx", on_off),
        "hls_ts_ctx": Leaf("hls_ts_ctx", on_off),
        "hls_keys": Leaf("hls_keys", on_off),
        "hls_fragments_per_key": Leaf("hls_fragments_per_key", integer(1)),
        "hls_key_file": Leaf("hls_key_file", path_value),
        "hls_key_file_path": Leaf("hls_key_file_path", path_value, optional=True),
        "hls_key_url": Leaf("hls_key_url", text_value),
        "hls_use_fmp4": Leaf("hls_use_fmp4", on_off),
        "hls_fmp4_file": Leaf("hls_fmp4_file", path_value),
        "hls_init_file": Leaf("hls_init_file", path_value),
        "hls_part": Leaf("hls_part", positive_seconds),
    }),
})

ROOT = Block("", lambda: Config(path="", listen=[]), {
    "listen": Leaf("listen", endpoint, multi=True),
    "max_connections": Leaf("max_connections", integer(1)),
    "daemon": Leaf("daemon", on_off),
    "pid": Leaf("pid", path_value),
    "chunk_size": Leaf("chunk_size", _chunk),
    "srs_log_tank": Leaf("log_tank", one_of("console", "file")),
    "srs_log_file": Leaf("log_file", path_value),
    "srs_log_level": Leaf("log_level", one_of("verbose", "info", "trace", "warn", "error")),
    "grace_start_wait": Leaf("grace_start_wait", _ms),
    "grace_final_wait": Leaf("grace_final_wait", _ms),
    "grace_max_wait": Leaf("grace_max_wait", _ms),
    "force_grace_quit": Leaf("force_grace_quit", on_off),
    "handshake_timeout": Leaf("handshake_timeout", _ms_positive),
    "identify_timeout": Leaf("identify_timeout", _ms_positive),
    "master_process": Leaf("master_process", on_off),
    "reuse_port": Leaf("reuse_port", on_off),
    "upgrade_timeout": Leaf("upgrade_timeout", _ms_positive),
    "http_api": HTTP_API,
    "http_server": HTTP_SERVER,
    "vhost": VHOST,         # named and repeatable: the builder handles it apart
})


def leaf_paths(block: Block = ROOT, prefix: str = "") -> list[tuple[str, Leaf]]:
    """Every leaf directive's dotted path ("http_api.auth.enabled", "vhost.play.gop_cache"), in table order."""
    paths: list[tuple[str, Leaf]] = []
    for name, spec in block.children.items():
        if isinstance(spec, Leaf):
            paths.append((prefix + name, spec))
        else:
            paths.extend(leaf_paths(spec, f"{prefix}{name}."))
    return paths
