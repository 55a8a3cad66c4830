"""What an app or a stream name may hold. A name becomes part of a stream key, of the API's JSON, of log lines
and of the URLs other servers are given (cluster redirects, edge pulls), so control characters are refused at
the door, with the protocol's own refusal: RTMP `NetConnection.Connect.Rejected` (app),
`NetStream.Publish.BadName` or `NetStream.Play.StreamNotFound` (stream); HTTP-FLV 400."""

from __future__ import annotations

import re

# Unicode's control characters (category Cc): C0, DEL and C1. Everything else, spaces and non-Latin letters
# included, is a valid name, as in SRS.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be an app or stream name, for the refusal and the log line; None when it can."""
    match = _CONTROL.search(name)
    if match is not None:
        return f"control character 0x{ord(match.group()):02x} at offset {match.start()}"
    return None
