"""SRS's `security` and `refer` checks, as pure functions (srs_app_security.cpp, srs_app_refer.cpp).

security, when enabled (SrsSecurity::do_check):
  1. a `deny` rule for this action that matches the client (all, its IP, a CIDR holding it) refuses;
  2. else an `allow` rule for this action that matches allows;
  3. else: refused if there is any `allow` rule at all (for either action) or no rule at all ("default deny");
     allowed if there are only `deny` rules.
SRS matches CIDRs for IPv4 only and IPv6 by exact text; nonstop matches both families by address, and reads
an IPv4-mapped IPv6 peer (::ffff:10.0.0.1, from a dual-stack listener) as its IPv4 address.

refer, when enabled (SrsRefer::check): a list of domains that is not given allows; a given list allows a page
URL whose host (scheme, path and port stripped) ends with one of the domains, found where it first occurs.
An empty page URL matches nothing. RTMP uses the connect's pageUrl, HTTP-FLV the Referer header.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache


def client_address(ip: str):
    """The peer address as an ipaddress object (IPv4-mapped IPv6 as IPv4), or None if it is not an IP."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@lru_cache(maxsize=1024)
def _network(target: str):
    return ipaddress.ip_network(target, strict=False)


def _matches(target: str, ip: str, addr) -> bool:
    if target == "all" or target == ip:
        return True
    if addr is None:
        return False
    try:
        net = _network(target) if "/" in target else _network(client_address(target).compressed)
    except (ValueError, AttributeError):
        return False
    return addr.version == net.version and addr in net


def security_check(rules, action: str, ip: str) -> str | None:
    """None if `action` (publish|play) from `ip` is allowed by these rules (SecurityRule list), else why not."""
    addr = client_address(ip)
    for rule in rules:
        if not rule.allow and rule.action == action and _matches(rule.target, ip, addr):
            return f"security: {ip} denied by 'deny {action} {rule.target}'"
    allows = 0
    for rule in rules:
        if rule.allow:
            allows += 1
            if rule.action == action and _matches(rule.target, ip, addr):
                return None
    if allows or not rules:
        return f"security: {ip} not allowed to {action} by any of {len(rules)} rules"
    return None


def page_host(page_url: str) -> str:
    """SrsRefer's reading of a page URL: drop `scheme://`, then everything from the first '/', then ':port'."""
    host = page_url
    if "://" in host:
        host = host[host.index("://") + 3:]
    return host.split("/", 1)[0].split(":", 1)[0]


def refer_check(page_url: str, domains: list[str] | None) -> bool:
    """Whether a page URL passes a refer list (None: not specified, which allows)."""
    if domains is None:
        return True
    host = page_host(page_url)
    for domain in domains:
        pos = host.find(domain)
        if pos != -1 and pos == len(host) - len(domain):
            return True
    return False
