"""`nonstop bench`: the load generator's command line.

Exit codes as the `nonstop` command's: 0 the run completed (read the report for how it went), 1 the run could
not be done (a publisher could not publish, the file is unreadable), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

from nonstop.bench.loadgen import Options
from nonstop.bench.target import TargetError, parse_target

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
# When the file gives no frame interval (no publisher of ours), a timestamp step over this is a hole.
DEFAULT_HOLE_MS = 100.0
# SO_RCVLOWAT: the performance bar's load generator reads 64 KiB at a time. A low-rate stream would take
# seconds to fill that, hiding stalls, so 'auto' caps the wait at a quarter second of the stream.
MAX_RCVLOWAT = 64 * 1024
RCVLOWAT_SECONDS = 0.25
# A step of more than this many video frame intervals is a hole (one or more frames missing).
HOLE_FRAMES = 1.5

DESCRIPTION = """\
Load generator: RTMP and HTTP-FLV players, publishers replaying an FLV file in real time, idle connections and
connection churn, with a report of rates, first-frame times, stalls, timestamp holes, latency and churn.
Players play URL (rtmp://HOST[:PORT]/APP/STREAM or http://HOST:PORT/APP/STREAM.flv). With --publishers M > 1
the streams are STREAM_0 .. STREAM_{M-1} and players are spread over them.
"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nonstop bench", description=DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", nargs="?", help="what players play (and publishers publish to, when rtmp://)")
    g = p.add_argument_group("players")
    g.add_argument("--players", type=int, default=0, metavar="N", help="players (default 0)")
    g.add_argument("--ramp", type=float, default=200.0, metavar="RATE",
                   help="new player and idle connections per second (default 200)")
    g.add_argument("--reconnect", action="store_true",
                   help="players reconnect at once when a connection ends; the gaps are timed")
    g.add_argument("--reconnecting", type=int, default=0, metavar="K",
                   help="K of the players hang up every --hangup-every seconds and reconnect at once")
    g.add_argument("--hangup-every", type=float, default=2.0, metavar="S", help="(default 2)")
    g.add_argument("--rcvlowat", default="auto", metavar="BYTES",
                   help="SO_RCVLOWAT once the first frame is in: fewer wakeups, coarser times. 'auto' (default): "
                        "64 KiB, or a quarter second of the stream when that is less; 0: off, for latency")
    g = p.add_argument_group("publishers")
    g.add_argument("--publishers", type=int, default=0, metavar="M",
                   help="publishers replaying --file in real time, looped, to M streams")
    g.add_argument("--file", metavar="FLV", help="the FLV file publishers replay")
    g.add_argument("--publish-url", metavar="URL", help="rtmp:// URL to publish to (default: URL if rtmp://)")
    g = p.add_argument_group("other connections")
    g.add_argument("--idle", type=int, default=0, metavar="N",
                   help="connections that complete connect and createStream, then sit")
    g.add_argument("--churn", type=float, default=0.0, metavar="RATE",
                   help="connections per second, during the window, that complete the handshake and connect "
                        "and close")
    g.add_argument("--rtmp-url", metavar="URL",
                   help="rtmp:// URL for idle and churn connections (default: URL or --publish-url)")
    g = p.add_argument_group("run")
    g.add_argument("--duration", type=float, default=20.0, metavar="S", help="measurement window (default 20)")
    g.add_argument("--warmup", type=float, default=2.0, metavar="S",
                   help="wait after the ramp before the window (default 2)")
    g.add_argument("--procs", type=int, default=1, metavar="P", help="load generator processes (default 1)")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="a connection not playing (or connected) within this is a failure (default 10)")
    g.add_argument("--stall-threshold", type=float, default=1.0, metavar="S",
                   help="a gap between video frames longer than this is a stall (default 1)")
    g.add_argument("--hole-ms", type=float, default=None, metavar="MS",
                   help="a timestamp step larger than this is a hole (default 1.5 frame intervals of --file, "
                        f"else {DEFAULT_HOLE_MS:g})")
    g.add_argument("--stream-kbps", type=float, default=None, metavar="KBPS",
                   help="the stream's rate when no publisher of ours feeds it (for 'starved')")
    g.add_argument("--server-pid", type=int, action="append", default=[], metavar="PID",
                   help="measure this process tree's CPU and RSS over the window (repeatable)")
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def options_from_args(argv: list[str]) -> Options:
    """Parse and check the command line. Raises UsageError."""
    a = parser().parse_args(argv)
    try:
        target = parse_target(a.url) if a.url else None
        publish = parse_target(a.publish_url) if a.publish_url else None
        rtmp_url = parse_target(a.rtmp_url) if a.rtmp_url else None
    except TargetError as e:
        raise UsageError(str(e)) from None
    if publish is None and target is not None and target.is_rtmp:
        publish = target
    if publish is not None and not publish.is_rtmp:
        raise UsageError("--publish-url must be an rtmp:// URL")
    if rtmp_url is None:
        rtmp_url = target if target is not None and target.is_rtmp else publish
    for name in ("players", "publishers", "idle", "reconnecting"):
        if getattr(a, name) < 0:
            raise UsageError(f"--{name} must not be negative")
    if a.players and target is None:
        raise UsageError("players need a URL")
    if a.publishers and (publish is None or not a.file):
        raise UsageError("publishers need --file and an rtmp:// URL (or --publish-url)")
    if (a.idle or a.churn) and rtmp_url is None:
        raise UsageError("idle and churn connections need an rtmp:// URL (or --rtmp-url)")
    if a.reconnecting > a.players:
        raise UsageError("--reconnecting cannot exceed --players")
    if a.rcvlowat != "auto" and not a.rcvlowat.isdigit():
        raise UsageError("--rcvlowat takes a number of bytes or 'auto'")
    if a.ramp <= 0 or a.duration <= 0 or a.warmup < 0 or a.procs < 1 or a.churn < 0 or a.hangup_every <= 0:
        raise UsageError("--ramp, --duration, --procs and --hangup-every must be positive; --warmup and "
                         "--churn not negative")
    if not (a.players or a.publishers or a.idle or a.churn):
        raise UsageError("nothing to do: give --players, --publishers, --idle or --churn")
    return Options(target=target, players=a.players, ramp=a.ramp, reconnect=a.reconnect,
                   reconnecting=a.reconnecting, hangup_every=a.hangup_every, publishers=a.publishers, file=a.file,
                   publish_target=publish, idle=a.idle, churn=a.churn, churn_target=rtmp_url,
                   duration=a.duration, warmup=a.warmup, procs=a.procs, rcvlowat=-1 if a.rcvlowat == "auto" else int(a.rcvlowat),
                   stall_threshold=a.stall_threshold, hole_ms=a.hole_ms or 0.0,
                   connect_timeout=a.connect_timeout, stream_kbps=a.stream_kbps, server_pids=a.server_pid,
                   json=a.json)


def raise_nofile_limit() -> None:
    """Every connection is a file descriptor: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    from nonstop.bench import report, runner
    from nonstop.bench.publisher import MediaFile
    from nonstop.protocol.errors import ProtocolError

    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(parser().format_help(), end="")
        return EXIT_OK
    try:
        opts = options_from_args(argv)
    except UsageError as e:
        print(f"nonstop bench: {e}\n", file=sys.stderr)
        print(parser().format_usage(), file=sys.stderr, end="")
        return EXIT_USAGE
    media = None
    if opts.publishers:
        try:
            media = MediaFile(opts.file)
        except (OSError, ValueError, ProtocolError) as e:
            print(f"nonstop bench: cannot use {opts.file}: {e}", file=sys.stderr)
            return EXIT_RUNTIME
    if not opts.hole_ms:
        opts.hole_ms = HOLE_FRAMES * media.frame_ms if media is not None else DEFAULT_HOLE_MS
    if opts.rcvlowat < 0:
        kbps = media.kbps if media is not None else opts.stream_kbps
        opts.rcvlowat = min(MAX_RCVLOWAT, int(kbps * 1000 / 8 * RCVLOWAT_SECONDS)) if kbps else MAX_RCVLOWAT
    raise_nofile_limit()
    try:
        result = runner.run(opts, media)
    except runner.RunError as e:
        print(f"nonstop bench: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    if opts.json:
        print(json.dumps(result, indent=2))
    else:
        print(report.format_text(result), end="")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
