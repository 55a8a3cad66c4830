"""The one error family of the sans-IO core.

Every decoder in nonstop.protocol raises a subclass of ProtocolError for bad input, never anything else,
so the shell can turn any garbage from a peer into a log line and a close.
"""


class ProtocolError(Exception):
    """Bad bytes or a bad sequence of events from the peer."""
