"""The vhost's access control blocks: SRS's `http_hooks`, `security` and `refer`, and nonstop's `signed_url`.

They are read here rather than by the directive table, because their directives repeat (`allow`, `deny`,
`key`) or take lists, and SRS's own checks (srs_app_config.cpp check_normal_config) apply:
  - http_hooks: enabled, on_connect, on_close, on_publish, on_unpublish, on_play, on_stop, on_dvr, on_hls,
    on_hls_notify (and nonstop's `timeout` and `max_inflight`); each on_* takes one or more URLs;
  - security: enabled, allow, deny; a rule is `allow|deny publish|play all|IP|CIDR`;
  - refer: enabled, all, publish, play; each takes domains. SRS 1/2's vhost-level `refer DOMAIN...;`,
    `refer_play` and `refer_publish` become `refer { enabled on; all|play|publish ...; }`, as SRS 7 does.
Where SRS reads a malformed value as something else (atoi, an IP that is no IP), nonstop refuses it.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from nonstop.config.errors import ConfigError
from nonstop.config.lexer import Directive
from nonstop.config.schema import (
    HOOK_EVENTS, HOOK_EVENTS_RESERVED, HttpHooks, Refer, Security, SecurityRule, SignedUrl,
)
from nonstop.config.values import integer, on_off

ACCESS_BLOCKS = ("http_hooks", "security", "refer", "signed_url")
LEGACY_REFER = {"refer_play": "play", "refer_publish": "publish"}      # and a `refer` without a block: all
REFER_RULES = ("all", "publish", "play")
HOOK_TIMEOUT_MAX_MS = 60000
_timeout = integer(1, HOOK_TIMEOUT_MAX_MS)
_max_inflight = integer(1, 65536)
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
SECRET_MIN = 16         # characters: an HMAC key shorter than this is a password, not a secret


def _one(d: Directive, shown: str) -> str:
    if d.block is not None:
        raise ConfigError(d.file, d.line, f"'{shown}' takes a value, not a block")
    if len(d.args) != 1:
        raise ConfigError(d.file, d.line, f"{shown}: expected one value, got {len(d.args)}")
    return d.args[0]


def _flag(d: Directive, shown: str) -> bool:
    try:
        return on_off(_one(d, shown))
    except ValueError as e:
        raise ConfigError(d.file, d.line, f"{shown}: {e}") from None


def _block(d: Directive) -> list[Directive]:
    if d.block is None:
        raise ConfigError(d.file, d.line, f"'{d.name}' needs a block: {d.name} {{ ... }}")
    if d.args:
        raise ConfigError(d.file, d.line, f"'{d.name}' takes no value before its block")
    return d.block


def hook_url(text: str) -> str:
    """An http:// or https:// URL with a host, as SRS's SrsHttpUri takes; anything else is refused here
    rather than failing every client later."""
    try:
        parts = urlsplit(text)
        port = parts.port           # raises ValueError for a bad port
    except ValueError as e:
        raise ValueError(f"malformed hook URL '{text}': {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"malformed hook URL '{text}': expected http:// or https://")
    if not parts.hostname:
        raise ValueError(f"malformed hook URL '{text}': no host")
    if port == 0:
        raise ValueError(f"malformed hook URL '{text}': port 0")
    return text


def http_hooks(d: Directive) -> HttpHooks:
    hooks = HttpHooks()
    seen: set[str] = set()
    for child in _block(d):
        shown = f"http_hooks.{child.name}"
        if child.name in seen and child.name != "enabled":
            # SRS's get() reads the first; a second list would be silently ignored there.
            raise ConfigError(child.file, child.line, f"'{shown}' given twice; put every URL on one line")
        seen.add(child.name)
        if child.name == "enabled":
            # Every `enabled` counts: a later `enabled on` must not hide behind an earlier off, nor the reverse.
            hooks.enabled = hooks.enabled or _flag(child, shown)
        elif child.name in ("timeout", "max_inflight"):
            parse = _timeout if child.name == "timeout" else _max_inflight
            try:
                setattr(hooks, child.name, parse(_one(child, shown)))
            except ValueError as e:
                raise ConfigError(child.file, child.line, f"{shown}: {e}") from None
        elif child.name in HOOK_EVENTS or child.name in HOOK_EVENTS_RESERVED:
            if child.block is not None or not child.args:
                raise ConfigError(child.file, child.line, f"{shown}: expected one or more URLs")
            if child.name == "on_hls_notify":   # a GET template with [app], [stream]...: kept as written
                urls = list(child.args)
            else:
                try:
                    urls = [hook_url(arg) for arg in child.args]
                except ValueError as e:
                    raise ConfigError(child.file, child.line, f"{shown}: {e}") from None
            setattr(hooks, child.name, urls)
        elif child.name == "on_forward":
            raise ConfigError(child.file, child.line, "'http_hooks.on_forward' is not an SRS directive: SRS's "
                                                      "on_forward is forward.backend, which nonstop lacks")
        else:
            raise ConfigError(child.file, child.line, f"unknown directive '{shown}'")
    return hooks


def security_rule(child: Directive) -> SecurityRule:
    shown = f"security.{child.name}"
    if child.block is not None or len(child.args) != 2:
        raise ConfigError(child.file, child.line, f"{shown}: expected 'publish|play all|IP|CIDR'")
    action, target = child.args
    if action not in ("publish", "play"):
        raise ConfigError(child.file, child.line, f"{shown}: expected publish or play, got '{action}'")
    if target != "all":
        try:
            if "/" in target:
                ipaddress.ip_network(target, strict=False)
            else:
                ipaddress.ip_address(target)
        except ValueError:
            raise ConfigError(child.file, child.line,
                              f"{shown}: expected all, an IP or a CIDR, got '{target}'") from None
    return SecurityRule(child.name == "allow", action, target)


def security(d: Directive) -> Security:
    sec = Security()
    for child in _block(d):
        if child.name == "enabled":
            sec.enabled = sec.enabled or _flag(child, "security.enabled")
        elif child.name in ("allow", "deny"):
            sec.rules.append(security_rule(child))
        else:
            raise ConfigError(child.file, child.line, f"unknown directive 'security.{child.name}'")
    return sec


def _domains(child: Directive, shown: str) -> list[str]:
    if child.block is not None or not child.args:
        raise ConfigError(child.file, child.line, f"{shown}: expected one or more domains")
    return list(child.args)


def refer(d: Directive, into: Refer) -> None:
    """`refer { ... }`, or SRS 1/2's `refer DOMAIN...;`, `refer_play ...;`, `refer_publish ...;` (which SRS 7
    turns into an enabled refer block), read into ``into``."""
    if d.name in LEGACY_REFER or d.block is None:
        into.enabled = True
        setattr(into, LEGACY_REFER.get(d.name, "all"), _domains(d, d.name))
        return
    if d.args:
        raise ConfigError(d.file, d.line, "'refer' takes no value before its block")
    for child in d.block:
        if child.name == "enabled":
            into.enabled = into.enabled or _flag(child, "refer.enabled")
        elif child.name in REFER_RULES:
            setattr(into, child.name, _domains(child, f"refer.{child.name}"))
        else:
            raise ConfigError(child.file, child.line, f"unknown directive 'refer.{child.name}'")


def signed_url(d: Directive) -> SignedUrl:
    signed = SignedUrl()
    for child in _block(d):
        shown = f"signed_url.{child.name}"
        if child.name == "enabled":
            signed.enabled = signed.enabled or _flag(child, shown)
        elif child.name in ("publish", "play"):
            setattr(signed, child.name, _flag(child, shown))
        elif child.name == "key":
            if child.block is not None or len(child.args) != 2:
                raise ConfigError(child.file, child.line, f"{shown}: expected 'key ID SECRET'")
            kid, secret = child.args
            if not _KEY_ID.fullmatch(kid):
                raise ConfigError(child.file, child.line,
                                  f"{shown}: a key id is 1 to 32 of A-Z a-z 0-9 _ -, got '{kid}'")
            if kid in signed.keys:
                raise ConfigError(child.file, child.line, f"{shown}: key id '{kid}' given twice")
            if len(secret) < SECRET_MIN:
                raise ConfigError(child.file, child.line,
                                  f"{shown}: the secret of '{kid}' is shorter than {SECRET_MIN} characters")
            signed.keys[kid] = secret
        else:
            raise ConfigError(child.file, child.line, f"unknown directive '{shown}'")
    if signed.enabled and not signed.keys:
        raise ConfigError(d.file, d.line, "signed_url is enabled but has no 'key ID SECRET;'")
    return signed
