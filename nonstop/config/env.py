"""Environment overrides: ``NONSTOP_`` (or SRS's ``SRS_``) + a directive's dotted path, with dots turned
into `_` and upper-cased. ``NONSTOP_HTTP_API_LISTEN=2985`` sets ``http_api.listen``.

SRS reads ``srs.http_api.listen`` from ``SRS_HTTP_API_LISTEN`` (srs_getenv), and so do we, so an SRS
container's environment keeps working. The rules:
  - the names come from the directive table (schema.leaf_paths), so every directive has one and no two
    paths can share one (checked at import);
  - a vhost path (``NONSTOP_VHOST_PLAY_GOP_CACHE``) applies to every vhost, as in SRS;
  - a directive taking several values (listen, origin, coworkers) splits the value on spaces; the others
    take it whole, so a path may hold spaces;
  - an empty value counts as unset, as in SRS (``if (!srs_getenv(key).empty())``);
  - NONSTOP_ wins over SRS_; the canonical name wins over an alias within a prefix.

An override replaces the file's directive in the parsed tree, where it is validated like one. Its errors
name it: ``<env NONSTOP_MAX_CONNECTIONS>:0: max_connections: expected a positive integer, got 'abc'``.
Names that match no directive are ignored, except those naming an SRS directive nonstop lacks, which
get the same warning as the directive in a file would.
"""

from __future__ import annotations

from typing import Mapping

from nonstop.config.errors import ConfigError
from nonstop.config.lexer import CONTROL_CHARACTER, Directive
from nonstop.config.schema import HOOK_EVENTS, HOOK_EVENTS_RESERVED, leaf_paths
from nonstop.config.srs_directives import SECURITY_BLOCKS, UNSUPPORTED

PREFIXES = ("NONSTOP_", "SRS_")     # in order of precedence

# Other names SRS reads for the same directive: srs.log_file next to srs.srs_log_file (and likewise for
# the tank and level), and SRS 7's rtmp block (srs.rtmp.listen).
ALIASES: dict[str, tuple[str, ...]] = {
    "srs_log_tank": ("log_tank",),
    "srs_log_file": ("log_file",),
    "srs_log_level": ("log_level",),
    "listen": ("rtmp.listen",),
    "chunk_size": ("rtmp.chunk_size",),
}

# Access control, read outside the directive table (config/access.py): SRS reads these from the environment
# too (SRS_VHOST_HTTP_HOOKS_ENABLED=on, SRS_VHOST_HTTP_HOOKS_ON_PUBLISH="http://a http://b").
SECURITY_PATHS = tuple((f"vhost.{name}.enabled", False) for name in SECURITY_BLOCKS) + tuple(
    (f"vhost.http_hooks.{event}", True) for event in (*HOOK_EVENTS, *HOOK_EVENTS_RESERVED))


def env_suffix(path: str) -> str:
    """"http_api.listen" -> "HTTP_API_LISTEN"."""
    return path.replace(".", "_").upper()


def _table() -> list[tuple[str, bool, tuple[str, ...]]]:
    """(path, takes several values, env suffixes: canonical first) for every overridable directive."""
    entries = [(path, leaf.multi) for path, leaf in leaf_paths()] + list(SECURITY_PATHS)
    table = [(path, multi, tuple(env_suffix(p) for p in (path, *ALIASES.get(path, ()))))
             for path, multi in entries]
    names = [suffix for _, _, suffixes in table for suffix in suffixes]
    if len(names) != len(set(names)):
        raise RuntimeError("two config paths map to the same environment name")
    return table


TABLE = _table()
KNOWN_SUFFIXES = frozenset(suffix for _, _, suffixes in TABLE for suffix in suffixes)


def _unsupported_paths() -> list[tuple[str, str]]:
    """(env suffix, dotted path) of SRS directives nonstop lacks, longest first so the most precise wins."""
    paths = [f"{section}.{name}" if section else name
             for section, names in UNSUPPORTED.items() for name in names]
    return sorted(((env_suffix(p), p) for p in paths), key=lambda item: -len(item[0]))


UNSUPPORTED_SUFFIXES = _unsupported_paths()


def lookup(env: Mapping[str, str], suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    """(variable name, value) of the override in force for one directive, if any."""
    for prefix in PREFIXES:
        for suffix in suffixes:
            value = env.get(prefix + suffix, "")
            if value.strip():
                return prefix + suffix, value
    return None


def apply_env(root: list[Directive], env: Mapping[str, str], warnings: list[str]) -> None:
    """Replace directives in the (normalized) tree with the environment's overrides, in place."""
    for path, multi, suffixes in TABLE:
        found = lookup(env, suffixes)
        if found is None:
            continue
        name, value = found
        bad = CONTROL_CHARACTER.search(value)
        if bad:
            # Refused in files too (lexer.py): a control character in a path or a name only fails later.
            raise ConfigError(f"<env {name}>", 0, f"unexpected control character 0x{ord(bad.group()):02x}")
        args = value.split() if multi else [value.strip()]
        _override(root, path.split("."), Directive(path.rsplit(".", 1)[-1], args, f"<env {name}>", 0))
    for name in sorted(env):
        _warn_unsupported(name, env[name], warnings)


def _override(root: list[Directive], parts: list[str], directive: Directive) -> None:
    """Put ``directive`` first in the block ``parts`` leads to (in every vhost, for vhost paths),
    creating blocks on the way, and drop the directives of the same name it replaces."""
    containers = [root]
    if parts[0] == "vhost":
        containers = [d.block for d in root if d.name == "vhost" and d.block is not None]
        parts = parts[1:]
    for container in containers:
        target: list[Directive] | None = container
        for name in parts[:-1]:
            block = next((d for d in target if d.name == name), None)
            if block is None:
                block = Directive(name, [], directive.file, 0, [])
                target.append(block)
            target = block.block        # None for a malformed `http_api 1;`: the builder reports it
            if target is None:
                break
        if target is None:
            continue
        target[:] = [d for d in target if d.name != parts[-1]]
        target.insert(0, Directive(directive.name, list(directive.args), directive.file, 0))


def _warn_unsupported(name: str, value: str, warnings: list[str]) -> None:
    prefix = next((p for p in PREFIXES if name.startswith(p)), None)
    if prefix is None or not value.strip():
        return
    suffix = name[len(prefix):]
    if suffix in KNOWN_SUFFIXES:
        return
    for unsupported, path in UNSUPPORTED_SUFFIXES:
        if suffix == unsupported or suffix.startswith(unsupported + "_"):
            warnings.append(f"<env {name}>:0: '{path}' is an SRS directive nonstop does not support; ignored")
            return
