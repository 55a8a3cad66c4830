"""`nonstop sign`: print a signed stream URL (the scheme is in signed.py).

    nonstop sign -c nonstop.conf --play --expires-in 3600 rtmp://example.com/live/cam1
    rtmp://example.com/live/cam1?nstoken=k1.1767229200.0.Qm9v...

The secret is read from the config (`signed_url { key KID SECRET; }` of the vhost the URL names), the first key
unless --key names another; or given with --secret (or $NONSTOP_SIGN_SECRET) and --key, with no config.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from urllib.parse import parse_qsl, urlsplit

from nonstop.access import signed

USAGE = """\
usage: nonstop sign [-c FILE] [--publish | --play] [--expires-in SECONDS | --expires UNIX_TIME]
                    [--ip ADDRESS] [--key KID] [--secret SECRET] [--vhost NAME] URL

Print URL with an nstoken that lets a client publish or play that stream until the expiry.
  URL            rtmp://HOST[:PORT]/APP/STREAM, http(s)://HOST[:PORT]/APP/STREAM.flv or .../APP/STREAM.m3u8
  --publish      sign for publishing (default: --play); a play token cannot publish, nor the reverse
  --expires-in   seconds from now (default 3600); --expires gives the Unix time itself
  --ip           bind the token to this client address (as the server sees it)
  --key          the key id (default: the first key of the vhost's signed_url)
  --secret       the secret, instead of reading it from the config ($NONSTOP_SIGN_SECRET too)
  --vhost        the vhost name (default: the URL's ?vhost=, else the config's vhost for the URL's host,
                 else __defaultVhost__)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def stream_of(url: str) -> tuple[str, str, str, str]:
    """(host, app, stream, query) of a stream URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("rtmp", "rtmps", "http", "https") or not parts.hostname:
        raise ValueError(f"expected rtmp:// or http(s):// URL, got {url!r}")
    path = parts.path.strip("/")
    if "/" not in path:
        raise ValueError(f"expected /APP/STREAM in {url!r}")
    app, stream = path.rsplit("/", 1)
    if parts.scheme.startswith("http"):
        suffix = next((s for s in (".flv", ".m3u8") if stream.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"expected an HTTP-FLV URL ending in .flv or an HLS one in .m3u8, got {url!r}")
        stream = stream[:-len(suffix)]      # HLS: the default hls_m3u8_file, [app]/[stream].m3u8
    if not app or not stream:
        raise ValueError(f"expected /APP/STREAM in {url!r}")
    return parts.hostname, app, stream, parts.query


def main(argv: list[str]) -> int:
    p = _Parser(prog="nonstop sign", add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-c", "--conf")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--publish", action="store_true")
    group.add_argument("--play", action="store_true")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--expires-in", type=int, default=None)
    when.add_argument("--expires", type=int, default=None)
    p.add_argument("--ip", default="")
    p.add_argument("--key", default=None)
    p.add_argument("--secret", default=os.environ.get("NONSTOP_SIGN_SECRET"))
    p.add_argument("--vhost", default=None)
    p.add_argument("url", nargs="?")
    try:
        args = p.parse_args(argv)
        if args.help:
            print(USAGE, end="")
            return 0
        if not args.url:
            raise ValueError("a URL is needed")
        host, app, stream, query = stream_of(args.url)
        vhost = args.vhost or dict(parse_qsl(query)).get("vhost")
        secret, kid = args.secret, args.key
        conf = args.conf or os.environ.get("NONSTOP_CONF")
        if not secret or not vhost:
            if not conf:
                if not secret:
                    raise ValueError("no secret: give -c FILE (its signed_url keys) or --secret with --key")
            else:
                from nonstop.config import ConfigError, load
                try:
                    config = load(conf)
                except (ConfigError, OSError) as e:
                    print(f"nonstop sign: config error: {e}", file=sys.stderr)
                    return 3
                v = config.vhosts.get(vhost) if vhost else config.vhost_for(host)
                if v is None:
                    raise ValueError(f"no vhost serves {vhost or host} in {conf}")
                vhost = v.name
                if not secret:
                    if not v.signed_url.keys:
                        raise ValueError(f"vhost {v.name} has no signed_url keys in {conf}")
                    kid = kid or next(iter(v.signed_url.keys))
                    if kid not in v.signed_url.keys:
                        raise ValueError(f"no key '{kid}' in vhost {v.name}'s signed_url")
                    secret = v.signed_url.keys[kid]
        vhost = vhost or "__defaultVhost__"
        if not kid:
            raise ValueError("--secret needs --key KID (the id the server knows the secret by)")
        expires = args.expires if args.expires is not None else int(time.time()) + (
            3600 if args.expires_in is None else args.expires_in)
        token = signed.make_token(kid, secret, "publish" if args.publish else "play", vhost, app, stream,
                                  expires, args.ip)
    except ValueError as e:
        print(f"nonstop sign: {e}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr, end="")
        return 2
    print(f"{args.url}{'&' if '?' in args.url else '?'}{signed.PARAM}={token}")
    return 0
