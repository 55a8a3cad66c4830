"""What changed between two Configs, for a reload (SIGHUP): the caller decides which changes it can apply
live (log level, vhost settings) and which need new listeners or an upgrade (listen ports).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from nonstop.config.schema import Config
from nonstop.config.values import Endpoint

# Not settings: where the config came from, and what was said about it.
_NOT_SETTINGS = frozenset({"path", "warnings", "vhosts"})


def diff(old: Config, new: Config) -> dict[str, tuple]:
    """Changed settings as ``{key: (old value, new value)}``.

    Keys are field paths: ``"listen"``, ``"max_connections"``, ``"log_level"``, ``"http_api.listen"``,
    ``"http_api.auth.password"``. A vhost that changed in any way, appeared or went away is one key,
    ``"vhost:NAME"``, with its whole old and new Vhost (None when absent). Equal configs give ``{}``.
    """
    changes: dict[str, tuple] = {}
    for f in fields(Config):
        if f.name not in _NOT_SETTINGS:
            _compare(f.name, getattr(old, f.name), getattr(new, f.name), changes)
    for name in dict.fromkeys([*old.vhosts, *new.vhosts]):
        before, after = old.vhosts.get(name), new.vhosts.get(name)
        if before != after:
            changes[f"vhost:{name}"] = (before, after)
    return changes


def _compare(key: str, before: object, after: object, changes: dict[str, tuple]) -> None:
    # Nested settings blocks are compared field by field; an Endpoint is one value.
    if is_dataclass(before) and is_dataclass(after) and not isinstance(before, Endpoint):
        for f in fields(before):
            _compare(f"{key}.{f.name}", getattr(before, f.name), getattr(after, f.name), changes)
    elif before != after:
        changes[key] = (before, after)
