"""Turn a parsed directive tree into a validated Config: unknown directives are errors, SRS directives
nonstop lacks are warnings, enabled access control that nonstop lacks is an error, values are checked.

The steps, in order (``__init__.load_text`` runs them):
  1. ``normalize``: SRS's own rewrites of older spellings (srs_config_transform_vhost), so a config SRS 7
     accepts means the same here; and an implicit ``vhost __defaultVhost__ {}`` when none is given.
  2. environment overrides (env.py) replace directives in the tree, so they are validated like the rest.
  3. ``build``: the directive table (schema.py) fills the dataclasses; then checks across directives.

A directive given twice where one is expected keeps the first, as SRS does, with a warning.
"""

from __future__ import annotations

from nonstop.config.errors import ConfigError
from nonstop.config.lexer import Directive
from nonstop.config.schema import (
    DEFAULT_RTMP_PORT, DEFAULT_VHOST, ROOT, VHOST, Block, Config, Leaf, Vhost,
)
from nonstop.config import access
from nonstop.config.srs_directives import (
    LEGACY_ROOT_RENAMES, LEGACY_VHOST_MOVES, RTMP_BLOCK, RTMP_BLOCK_DIRECTIVES, UNSUPPORTED, display,
)
from nonstop.config.values import Endpoint


def _warn(warnings: list[str], d: Directive, message: str) -> None:
    warnings.append(f"{d.file}:{d.line}: {message}")


# ---- step 1: SRS's rewrites ----

def normalize(root: list[Directive], path: str, warnings: list[str]) -> list[Directive]:
    """Apply SRS's rewrites of older spellings, and add the implicit default vhost."""
    out: list[Directive] = []
    hoisted: list[Directive] = []
    for d in root:
        if d.name in LEGACY_ROOT_RENAMES:
            new = LEGACY_ROOT_RENAMES[d.name]
            _warn(warnings, d, f"'{d.name}' is the SRS 1 name of '{new}'; read as '{new}'")
            d.name = new
        if d.name == RTMP_BLOCK:
            hoisted.extend(_rtmp_block(d))
            continue
        if d.name == "vhost" and d.block is not None:
            _normalize_vhost(d, warnings)
        out.append(d)
    # After the top-level ones: SRS lets a top-level `listen` win over `rtmp { listen }`.
    out.extend(hoisted)
    if not any(d.name == "vhost" for d in out):
        out.append(Directive("vhost", [DEFAULT_VHOST], path, 0, []))
    return out


def _rtmp_block(d: Directive) -> list[Directive]:
    """SRS 7's `rtmp { listen; chunk_size; }`: the same as the top-level directives."""
    if d.block is None:
        raise ConfigError(d.file, d.line, f"'{d.name}' needs a block: {d.name} {{ ... }}")
    if d.args:
        raise ConfigError(d.file, d.line, f"'{d.name}' takes no value before its block")
    for child in d.block:
        if child.name not in RTMP_BLOCK_DIRECTIVES:
            raise ConfigError(child.file, child.line, f"unknown directive '{d.name}.{child.name}'")
    return d.block


def _normalize_vhost(vhost: Directive, warnings: list[str]) -> None:
    """Move SRS 1/2 vhost-level directives into the block SRS 3+ reads them from."""
    moved: dict[str, list[Directive]] = {}
    kept: list[Directive] = []
    for d in vhost.block:
        if d.name not in LEGACY_VHOST_MOVES:
            kept.append(d)
            continue
        block, name = LEGACY_VHOST_MOVES[d.name]
        _warn(warnings, d, f"'{d.name}' directly in a vhost is the SRS 1/2 spelling of '{block}.{name}'; "
                           f"read as '{block}.{name}'")
        moved.setdefault(block, []).append(Directive(name, d.args, d.file, d.line, d.block))
    for block, directives in moved.items():
        target = next((d for d in kept if d.name == block), None)
        if target is None:
            target = Directive(block, [], vhost.file, vhost.line, [])
            kept.append(target)
        if target.block is not None:        # a malformed `play;` is reported by the builder
            target.block.extend(directives)
    vhost.block = kept


# ---- step 3: the directive table fills the Config ----

class _Builder:
    def __init__(self, path: str, warnings: list[str]):
        self.path = path
        self.warnings = warnings
        self.given: dict[tuple[int, str], Directive] = {}      # (id(object), field) -> directive

    def build(self, root: list[Directive]) -> Config:
        config = Config(path=self.path, listen=[])
        self.fill(config, ROOT, root, "", config)
        self.check(config)
        config.warnings = self.warnings
        return config

    def fill(self, obj: object, spec: Block, directives: list[Directive], section: str, config: Config) -> None:
        """Set obj's fields from directives, by the table ``spec``; ``section`` is spec's dotted path."""
        seen: dict[str, Directive] = {}
        for d in directives:
            shown = display(section, d.name)
            if section == "vhost" and (d.name in access.ACCESS_BLOCKS or d.name in access.LEGACY_REFER):
                self.access(obj, d, seen)
                continue
            if section == "vhost" and d.name == "forward" and d.block is not None:
                self.forward(d)
            child = spec.children.get(d.name)
            if child is None:
                if d.name in UNSUPPORTED.get(section, ()):
                    _warn(self.warnings, d, f"'{shown}' is an SRS directive nonstop does not support; ignored")
                    continue
                raise ConfigError(d.file, d.line, f"unknown directive '{shown}'")
            if section == "" and d.name == "vhost":
                self.vhost(d, config)
                continue
            if d.name in seen:
                self.repeated(d, seen[d.name], shown, isinstance(child, Leaf) and child.multi)
                continue
            seen[d.name] = d
            self.given[(id(obj), child.attr)] = d
            if isinstance(child, Leaf):
                setattr(obj, child.attr, self.value(d, child, shown))
                continue
            if d.block is None:
                raise ConfigError(d.file, d.line, f"'{shown}' needs a block: {d.name} {{ ... }}")
            if d.args:
                raise ConfigError(d.file, d.line, f"'{shown}' takes no value before its block")
            sub = child.factory()
            self.fill(sub, child, d.block, f"{section}.{d.name}" if section else d.name, config)
            setattr(obj, child.attr, sub)

    def repeated(self, d: Directive, first: Directive, shown: str, multi: bool = False) -> None:
        where = f"line {first.line}" if first.file == d.file else f"{first.file}:{first.line}"
        hint = f"; give several values in one directive instead: {d.name} a b;" if multi else ""
        _warn(self.warnings, d, f"'{shown}' repeated; keeping the first ({where}){hint}")

    @staticmethod
    def value(d: Directive, spec: Leaf, shown: str) -> object:
        if d.block is not None:
            raise ConfigError(d.file, d.line, f"'{shown}' takes no block")
        if not d.args:
            raise ConfigError(d.file, d.line, f"{shown}: expected a value")
        if not spec.multi and len(d.args) > 1:
            raise ConfigError(d.file, d.line,
                              f"{shown}: expected one value, got {len(d.args)}: '{' '.join(d.args)}'")
        try:
            values = [spec.parse(arg) for arg in d.args]
        except ValueError as e:
            raise ConfigError(d.file, d.line, f"{shown}: {e}") from None
        return values if spec.multi else values[0]

    def vhost(self, d: Directive, config: Config) -> None:
        if d.block is None:
            raise ConfigError(d.file, d.line, "'vhost' needs a block: vhost NAME { ... }")
        if len(d.args) != 1 or not d.args[0]:
            raise ConfigError(d.file, d.line, f"vhost: expected one name, got '{' '.join(d.args)}'")
        name = d.args[0]
        if name in config.vhosts:
            first = self.given[(id(config.vhosts[name]), "name")]
            self.repeated(d, first, f"vhost {name}")
            return
        vhost = Vhost(name=name)
        self.given[(id(vhost), "name")] = d
        self.fill(vhost, VHOST, d.block, "vhost", config)
        config.vhosts[name] = vhost

    def access(self, vhost: Vhost, d: Directive, seen: dict[str, Directive]) -> None:
        """The access control blocks (config/access.py). A repeated block keeps the first, as SRS's get()
        does; SRS 1/2's referer directives add to the one refer block, as SRS 7's transform does."""
        if d.name == "refer" or d.name in access.LEGACY_REFER:
            access.refer(d, vhost.refer)
            return
        if d.name in seen:
            self.repeated(d, seen[d.name], d.name)
            return
        seen[d.name] = d
        parse = {"http_hooks": access.http_hooks, "security": access.security, "signed_url": access.signed_url}
        setattr(vhost, d.name, parse[d.name](d))

    def forward(self, d: Directive) -> None:
        """SRS's on_forward hook is `forward { backend URL; }`: nonstop lacks it, and skipping it with the rest
        of `forward` would drop a callback its owner relies on, so it is refused, loudly."""
        for child in d.block:
            if child.name == "backend":
                raise ConfigError(child.file, child.line,
                                  "'forward.backend' (SRS's on_forward hook) is not supported by nonstop; "
                                  "refusing to start rather than silently never calling it")

    # ---- checks across directives ----

    def where(self, obj: object, *fields: str) -> tuple[str, int]:
        """File and line of the first of ``fields`` the config set on obj, else of the file as a whole."""
        for name in fields:
            d = self.given.get((id(obj), name))
            if d is not None:
                return d.file, d.line
        return self.path, 0

    def check(self, config: Config) -> None:
        if (id(config), "listen") not in self.given:
            config.listen = [Endpoint("0.0.0.0", DEFAULT_RTMP_PORT)]
            self.warnings.append(f"{self.path}:0: no 'listen' directive; listening on 0.0.0.0:{DEFAULT_RTMP_PORT}")
        self.check_listeners(config)
        auth = config.http_api.auth
        if auth.enabled and not (auth.username and auth.password):
            raise ConfigError(*self.where(auth, "enabled"),
                              "http_api.auth is enabled, but its username or password is empty")
        for vhost in config.vhosts.values():
            cluster = vhost.cluster
            if cluster.retry_max < cluster.retry_min:
                raise ConfigError(*self.where(cluster, "retry_max", "retry_min"),
                                  f"cluster.retry_max ({cluster.retry_max}) is less than "
                                  f"cluster.retry_min ({cluster.retry_min})")
            if cluster.mode == "remote" and not cluster.origin:
                raise ConfigError(*self.where(cluster, "mode"),
                                  "cluster.mode remote (an edge) needs at least one cluster.origin")

    def check_listeners(self, config: Config) -> None:
        """Each RTMP endpoint once, and none on a port the HTTP API or server also binds."""
        file, line = self.where(config, "listen")
        for i, ep in enumerate(config.listen):
            if ep in config.listen[:i]:
                raise ConfigError(file, line, f"listen: {ep} given twice")
        # The API and the server may share a port: one socket then serves both (SRS does the same).
        others = [(name, block.listen) for name, block in
                  (("http_api", config.http_api), ("http_server", config.http_server)) if block.enabled]
        for ep in config.listen:
            for name, other in others:
                if _overlap(ep, other):
                    raise ConfigError(file, line, f"listen: {ep} is also {name}.listen ({other})")


def _overlap(a: Endpoint, b: Endpoint) -> bool:
    """Whether two listeners would claim the same address. A wildcard covers its own family, and "::"
    also covers IPv4 (Linux binds it dual-stack by default)."""
    if a.port != b.port:
        return False

    def covers(x: Endpoint, y: Endpoint) -> bool:
        return x.is_wildcard and (x.host == "::" or (":" in x.host) == (":" in y.host))
    return a.host == b.host or covers(a, b) or covers(b, a)


def build(root: list[Directive], path: str, warnings: list[str]) -> Config:
    """The Config a normalized, env-overridden tree describes; warnings are appended to ``warnings``."""
    return _Builder(path, warnings).build(root)
