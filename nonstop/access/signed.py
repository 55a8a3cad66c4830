"""Signed stream URLs: stateless tokens that need no hook server (beyond SRS; nginx's secure_link and
OvenMediaEngine's SignedPolicy are the precedents).

A signed URL is the stream URL with one more query parameter:

    rtmp://host/live/cam1?nstoken=k1.1767225600.0.3q2-7w...       (RTMP: on the stream name)
    http://host:8080/live/cam1.flv?nstoken=k1.1767225600.1.Zm9v...  (HTTP-FLV)

    nstoken = KID "." EXPIRES "." BIND "." SIG
      KID      the key id: 1-32 of A-Z a-z 0-9 _ - (names a secret in `signed_url { key KID SECRET; }`)
      EXPIRES  Unix time in seconds, decimal, at most 12 digits; the token is refused from that second on
      BIND     "1": bound to the client's IP address; "0": any address
      SIG      base64url (no padding, 43 characters) of HMAC-SHA256(secret, MESSAGE)

    MESSAGE  = "nonstop-signed-url-v1\n" then, for each of ACTION, VHOST, APP, STREAM, EXPIRES, IP, the field's
               length in UTF-8 bytes, ":", the field, "\n". ACTION is publish or play (a play token cannot
               publish), VHOST the vhost's name as configured (__defaultVhost__ for the default one), APP and
               STREAM without any query, IP the client's address as the server sees it ("" when BIND is 0).

Length-prefixed fields cannot be confused with one another whatever a stream name holds. Rotation: add the new
key, reload, hand out URLs signed with it, then remove the old key and reload again; tokens of a removed key
are refused. A connection keeps the verdict it got (a reload does not cut it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

PARAM = "nstoken"
VERSION = b"nonstop-signed-url-v1\n"
ACTIONS = ("publish", "play")
_TOKEN = re.compile(r"([A-Za-z0-9_-]{1,32})\.([0-9]{1,12})\.([01])\.([A-Za-z0-9_-]{43})")
MAX_TOKEN = 32 + 1 + 12 + 1 + 1 + 1 + 43


class TokenError(ValueError):
    """A token that cannot be read; the message says why, for the log line."""


@dataclass(frozen=True)
class Token:
    kid: str
    expires: int
    bind_ip: bool
    sig: bytes          # the 32 raw bytes


def message(action: str, vhost: str, app: str, stream: str, expires: int, ip: str) -> bytes:
    out = [VERSION]
    for field in (action, vhost, app, stream, str(expires), ip):
        raw = field.encode("utf-8", "surrogatepass")
        out.append(b"%d:%s\n" % (len(raw), raw))
    return b"".join(out)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def signature(secret: str, action: str, vhost: str, app: str, stream: str, expires: int, ip: str = "") -> bytes:
    return hmac.new(secret.encode("utf-8"), message(action, vhost, app, stream, expires, ip), hashlib.sha256).digest()


def make_token(kid: str, secret: str, action: str, vhost: str, app: str, stream: str, expires: int,
               ip: str = "") -> str:
    """The nstoken value. `ip` non-empty binds the token to that client address."""
    if action not in ACTIONS:
        raise ValueError(f"action must be publish or play, got {action!r}")
    if not 0 <= expires < 10 ** 12:
        raise ValueError(f"expiry out of range: {expires}")
    sig = signature(secret, action, vhost, app, stream, expires, ip)
    return f"{kid}.{expires}.{1 if ip else 0}.{_b64(sig)}"


def parse_token(text: str) -> Token:
    """Read a token; TokenError if it is not one. Never raises anything else, whatever the text."""
    if len(text) > MAX_TOKEN:
        raise TokenError(f"token too long ({len(text)} characters)")
    m = _TOKEN.fullmatch(text)
    if m is None:
        raise TokenError("malformed token (expected KID.EXPIRES.BIND.SIGNATURE)")
    kid, expires, bind, sig = m.groups()
    raw = base64.urlsafe_b64decode(sig + "=")
    if _b64(raw) != sig:        # the last character must carry no stray bits: one spelling per signature
        raise TokenError("malformed token signature")
    return Token(kid, int(expires), bind == "1", raw)


def check(keys: dict[str, str], token_text: str | None, action: str, vhost: str, app: str, stream: str,
          ip: str, now: float) -> str | None:
    """None if the token lets `ip` do `action` on vhost/app/stream at `now` (Unix seconds), else why not."""
    if not token_text:
        return f"signed_url: no {PARAM} in the URL"
    try:
        token = parse_token(token_text)
    except TokenError as e:
        return f"signed_url: {e}"
    secret = keys.get(token.kid)
    if secret is None:
        return f"signed_url: unknown key id '{token.kid}'"
    expected = signature(secret, action, vhost, app, stream, token.expires, ip if token.bind_ip else "")
    if not hmac.compare_digest(expected, token.sig):
        return (f"signed_url: bad signature for {action} {vhost}/{app}/{stream}"
                + (f" from {ip}" if token.bind_ip else "") + f" (key '{token.kid}')")
    if now >= token.expires:
        return f"signed_url: token expired {int(now) - token.expires} s ago"
    return None
