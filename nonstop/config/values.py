"""Parsers for directive values: each takes one argument (a string) and returns the typed value, or
raises ValueError with a message that the builder prefixes with the directive's file, line and name.

They are stricter than SRS, which reads numbers with atoi() ("10abc" is 10, "abc" is 0) and any
boolean other than "on" as off. A config that means something else than it says is worse than one
that does not start.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Callable

Parser = Callable[[str], object]

# 18 digits fit every sane setting and keep int() away from Python's 4300-digit conversion guard.
_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})")
_PORT = re.compile(r"[0-9]{1,18}")      # digits only; the range check says what is wrong
PORT_MIN, PORT_MAX = 1, 65535
WILDCARD_V4 = "0.0.0.0"


@dataclass(frozen=True)
class Endpoint:
    """A TCP address to listen on. ``str()`` is ``host:port``, with brackets for IPv6 (``[::]:1935``)."""
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.host in (WILDCARD_V4, "::")


def on_off(text: str) -> bool:
    """SRS booleans are `on` and `off`, nothing else."""
    if text == "on":
        return True
    if text == "off":
        return False
    raise ValueError(f"expected on or off, got '{text}'")


def integer(minimum: int, maximum: int | None = None) -> Parser:
    """A decimal integer in minimum..maximum (no maximum: unbounded above)."""
    if maximum is None:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if minimum == 0:
            wanted = "a non-negative integer"
    else:
        wanted = f"an integer in {minimum}..{maximum}"

    def parse(text: str) -> int:
        if not _INT.fullmatch(text):
            raise ValueError(f"expected {wanted}, got '{text}'")
        value = int(text)
        if value < minimum or (maximum is not None and value > maximum):
            if maximum is None:
                raise ValueError(f"expected {wanted}, got '{text}'")
            raise ValueError(f"{value} out of range {minimum}..{maximum}")
        return value
    return parse


def positive_seconds(text: str) -> float:
    """A positive, finite number of seconds, with a fraction if wanted (SRS reads it with atof)."""
    value = float(text) if _FLOAT.fullmatch(text) else math.nan
    if not value > 0:           # also catches NaN
        raise ValueError(f"expected a positive number of seconds, got '{text}'")
    return value


def one_of(*choices: str) -> Parser:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected {' or '.join(choices)}, got '{text}'")
        return text
    return parse


def text_value(text: str) -> str:
    """Any string, even empty (an empty password or advertise name is meaningful)."""
    return text


def path_value(text: str) -> str:
    if not text:
        raise ValueError("expected a path, got ''")
    return text


def _split_host_port(text: str) -> tuple[str, str | None]:
    """'h', 'h:p', '[v6]', '[v6]:p' -> (host, port text or None). A bare IPv6 address is ambiguous."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"missing ']' in '{text}'")
        host, rest = text[1:close], text[close + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected ':port' after ']' in '{text}'")
        return host, (rest[1:] if rest else None)
    if text.count(":") > 1:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:1935, got '{text}'")
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def _port(port: str, text: str) -> int:
    if not _PORT.fullmatch(port):
        raise ValueError(f"expected a port number, got '{text}'")
    value = int(port)
    if not PORT_MIN <= value <= PORT_MAX:
        raise ValueError(f"port {value} out of range {PORT_MIN}..{PORT_MAX}")
    return value


def endpoint(text: str) -> Endpoint:
    """`[ip:]port` as SRS's listen takes it: "1935", "127.0.0.1:1935", "[::]:1935". The host must be an
    IP address (SRS checks the same), because a name could resolve to several or none."""
    if _PORT.fullmatch(text):
        return Endpoint(WILDCARD_V4, _port(text, text))
    host, port = _split_host_port(text)
    if port is None:
        raise ValueError(f"expected [ip:]port, got '{text}'")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected [ip:]port with an IP address, got '{text}'") from None
    return Endpoint(str(address), _port(port, text))


def _valid_host(host: str, text: str) -> None:
    if not host or any(c in host for c in "/?#@[] "):
        raise ValueError(f"expected host[:port], got '{text}'")


def host_optional_port(text: str) -> str:
    """An upstream as SRS's cluster.origin takes it: host[:port] (port 1935 when absent). Kept as text."""
    host, port = _split_host_port(text)
    _valid_host(host, text)
    if port is not None:
        _port(port, text)
    return text


def host_port(text: str) -> str:
    """A coworker's HTTP API address, host:port. Kept as text, as SRS puts it straight into a URL."""
    host, port = _split_host_port(text)
    _valid_host(host, text)
    if port is None:
        raise ValueError(f"expected host:port, got '{text}'")
    _port(port, text)
    return text
