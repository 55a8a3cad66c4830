"""nonstop's configuration: SRS-style config files (srs.conf works as is), environment overrides, and
the embedded default.

    config = load("conf/nonstop.conf")      # or load(None) for the embedded default
    config.listen, config.vhost_for("example.com").play.gop_cache, config.warnings

Everything here is a pure function of (text, path, env); only ``load`` reads files (the config and its
includes). Problems are ConfigError ("FILE:LINE: message"); lesser ones are strings in
``Config.warnings``, for the caller to log.
"""

from __future__ import annotations

import os
from typing import Mapping

from nonstop.config.build import build, normalize
from nonstop.config.default import DEFAULT_CONFIG_TEXT
from nonstop.config.diff import diff
from nonstop.config.env import apply_env
from nonstop.config.errors import ConfigError
from nonstop.config.lexer import Reader, decode, parse
from nonstop.config.schema import (
    DEFAULT_VHOST, ApiAuth, Cluster, Config, HttpApi, HttpRemux, HttpServer, Play, Publish, Vhost,
)
from nonstop.config.values import Endpoint

EMBEDDED = "<embedded>"

__all__ = [
    "ApiAuth", "Cluster", "Config", "ConfigError", "DEFAULT_CONFIG_TEXT", "DEFAULT_VHOST", "Endpoint",
    "HttpApi", "HttpRemux", "HttpServer", "Play", "Publish", "Vhost", "diff", "load", "load_text",
]


def load(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config file ``path`` (None: the embedded default), with overrides from ``env``
    (None: os.environ).

    Raises OSError when the file itself cannot be read (the CLI words that itself), ConfigError for
    anything else, including an include that cannot be read.
    """
    if path is None:
        return load_text(DEFAULT_CONFIG_TEXT, EMBEDDED, env)
    with open(path, "rb") as f:
        data = f.read()
    return _load(decode(data, path), path, env, _read_file)


def load_text(text: str, path: str = EMBEDDED, env: Mapping[str, str] | None = None) -> Config:
    """Load a config from text; ``path`` only names it in messages. An ``include`` in it is an error,
    since reading files is ``load``'s job."""
    return _load(text, path, env, None)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _load(text: str, path: str, env: Mapping[str, str] | None, reader: Reader | None) -> Config:
    warnings: list[str] = []
    env_warnings: list[str] = []
    tree = normalize(parse(text, path, reader), path, warnings)
    apply_env(tree, os.environ if env is None else env, env_warnings)
    config = build(tree, path, warnings)
    config.warnings.extend(env_warnings)        # the file's warnings first, in reading order
    return config
