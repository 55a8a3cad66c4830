"""Turn config text (nginx/SRS syntax) into a tree of Directives, each with its exact file and line.

The syntax, as SRS reads it (srs_app_config.cpp, `read_token`, itself a copy of nginx's):
  - tokens are separated by spaces, tabs and line ends; `#` at the start of a token comments out the
    rest of the line (inside a token, as in `a#b`, it is an ordinary character);
  - a token may be quoted with `"` or `'`; a quoted token may hold spaces, `;`, `{`, `}` and `#`;
  - `;` ends a directive, `{ ... }` gives it a block;
  - `include FILE...;` may appear anywhere and splices the files' directives in its place.

SRS requires a directive to end on the line where it starts ("unexpected end of line to parse token"),
unlike nginx. We keep SRS's rule, because it is what makes a forgotten `;` point at its own line:
``max_connections 1000`` followed by ``daemon off;`` is reported at the first line, not the second. The
same rule means a quoted token cannot span lines, and a block's `{` sits on the directive's line.

Simplifications and additions, all deliberate:
  - inside quotes, a backslash escapes the quote character and the backslash itself (``"a \\" b"``);
    any other backslash is kept as is, so Windows paths and regular expressions need no doubling;
  - an empty quoted token (``password "";``) is a real, empty argument (SRS drops it);
  - control characters other than tab, CR and LF are refused: no config needs them, and a NUL in a path
    would only fail later, far from its line;
  - a UTF-8 byte order mark at the start of a file is ignored.

Only ``parse`` is here; reading files is the caller's business (``reader``), so the module stays pure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from nonstop.config.errors import ConfigError

# nginx caps include nesting only through its recursion; we name a limit. 16 levels is far more than any
# real layout (SRS's samples use one), and it also ends a symlink loop that the path check cannot see.
MAX_INCLUDE_DEPTH = 16

# SRS's deepest block is vhost > transcode > engine > vfilter (4 levels). The cap keeps hostile text
# such as 10,000 nested `a {` from building a tree that recursive consumers could choke on.
MAX_BLOCK_DEPTH = 32

# Long directives are cut in messages; the line number already says where the whole thing is.
ECHO_LIMIT = 60

# Reads an included file: given the path (already made relative to the including file's folder),
# returns its bytes or raises OSError.
Reader = Callable[[str], bytes]

_WORD_END = " \t\r\n;{}"
_TOKEN = re.compile(r"""
    (?P<nl>\n)
  | (?P<space>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<punct>[;{}])
  | (?P<dq>"(?:[^"\\\n]|\\[^\n])*")
  | (?P<sq>'(?:[^'\\\n]|\\[^\n])*')
  | (?P<word>[^ \t\r\n;{}"'\#][^ \t\r\n;{}]*)
""", re.VERBOSE)
_DQ_ESCAPE = re.compile(r'\\([\\"])')
_SQ_ESCAPE = re.compile(r"\\([\\'])")
CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")   # all but tab, LF, CR


@dataclass
class Directive:
    """One directive: ``name arg...;`` (block is None) or ``name arg... { ... }`` (block is a list)."""
    name: str
    args: list[str]
    file: str
    line: int
    block: list[Directive] | None = None

    def echo(self) -> str:
        """The directive as written (without its block), cut to ECHO_LIMIT characters, for messages."""
        text = " ".join([self.name, *self.args])
        return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT - 3] + "..."


@dataclass
class _Token:
    kind: str          # "word" or one of ";", "{", "}"
    text: str
    line: int


@dataclass
class _Open:
    """A block being filled: its directive (None for the file itself) and its list of children."""
    directive: Directive | None
    children: list[Directive] = field(default_factory=list)


def decode(data: bytes, path: str) -> str:
    """Bytes of a config file to text; invalid UTF-8 is a ConfigError naming the line of the bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(path, line, "the file is not valid UTF-8 text") from None
    return text[1:] if text.startswith("\ufeff") else text


def tokenize(text: str, path: str) -> list[_Token]:
    """Split text into words and punctuation, dropping spaces and comments."""
    bad = CONTROL_CHARACTER.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError(path, line, f"unexpected control character 0x{ord(bad.group()):02x}")
    tokens: list[_Token] = []
    line, pos, end = 1, 0, len(text)
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:
            # Only a quote can fail to match: it did not close before the end of the line.
            raise ConfigError(path, line, f"unterminated quoted string; a {text[pos]} must close on its own line")
        kind, pos = m.lastgroup, m.end()
        if kind == "nl":
            line += 1
        elif kind == "punct":
            tokens.append(_Token(m.group(), m.group(), line))
        elif kind == "word":
            tokens.append(_Token("word", m.group(), line))
        elif kind in ("dq", "sq"):
            if pos < end and text[pos] not in _WORD_END:
                raise ConfigError(path, line, f"expected a space or ';' after the quoted string {m.group()}")
            escape = _DQ_ESCAPE if kind == "dq" else _SQ_ESCAPE
            tokens.append(_Token("word", escape.sub(r"\1", m.group()[1:-1]), line))
    return tokens


def parse(text: str, path: str, reader: Reader | None = None, _chain: tuple[str, ...] = ()) -> list[Directive]:
    """Parse config text into its top-level directives, reading includes through ``reader``.

    ``path`` names the text in errors and anchors relative includes. With ``reader`` None (text that
    did not come from a file), an include is a ConfigError.
    """
    chain = _chain or (_identity(path),)
    tokens = tokenize(text, path)
    stack = [_Open(None)]
    pending: list[_Token] = []         # the words of the directive being read

    def unfinished() -> ConfigError:
        d = Directive(pending[0].text, [t.text for t in pending[1:]], path, pending[0].line)
        return ConfigError(path, d.line, f"expected ';' or '{{' after '{d.echo()}'")

    for tok in tokens:
        if pending and tok.line != pending[0].line:
            raise unfinished()
        if tok.kind == "word":
            pending.append(tok)
            continue
        if tok.kind == "}":
            if pending:
                raise unfinished()
            if len(stack) == 1:
                raise ConfigError(path, tok.line, "unexpected '}'")
            stack.pop()
            continue
        if not pending:
            raise ConfigError(path, tok.line, f"unexpected '{tok.kind}'")
        directive = Directive(pending[0].text, [t.text for t in pending[1:]], path, pending[0].line)
        pending = []
        if tok.kind == "{":
            if directive.name == "include":
                raise ConfigError(path, directive.line, "include takes file names, not a block")
            if len(stack) > MAX_BLOCK_DEPTH:
                raise ConfigError(path, directive.line, f"blocks nested deeper than {MAX_BLOCK_DEPTH} levels")
            directive.block = []
            stack[-1].children.append(directive)
            stack.append(_Open(directive, directive.block))
        elif directive.name == "include":
            stack[-1].children.extend(_include(directive, reader, chain))
        else:
            stack[-1].children.append(directive)
    if pending:
        raise unfinished()
    if len(stack) > 1:
        opened = stack[-1].directive
        raise ConfigError(path, opened.line, f"unclosed block '{opened.name}' opened at line {opened.line}")
    return stack[0].children


def _identity(path: str) -> str:
    """What makes two include paths the same file, for loop detection (no symlink resolution: the depth
    cap ends loops through links)."""
    return os.path.normpath(os.path.abspath(path)) if not path.startswith("<") else path


def _include(directive: Directive, reader: Reader | None, chain: tuple[str, ...]) -> list[Directive]:
    """The directives of every file an ``include`` names, in order."""
    here, line = directive.file, directive.line
    if not directive.args:
        raise ConfigError(here, line, "include: expected one or more file names")
    spliced: list[Directive] = []
    for name in directive.args:
        if not name:
            raise ConfigError(here, line, "include: empty file name")
        if reader is None:
            raise ConfigError(here, line, f"include: cannot read '{name}': this config was given as text, "
                                          "and only load() reads files")
        if len(chain) > MAX_INCLUDE_DEPTH:
            raise ConfigError(here, line, f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels")
        target, data = _read_include(here, line, name, reader)
        identity = _identity(target)
        if identity in chain:
            raise ConfigError(here, line, f"include loop: '{target}' is already being read")
        spliced.extend(parse(decode(data, target), target, reader, chain + (identity,)))
    return spliced


def _read_include(here: str, line: int, name: str, reader: Reader) -> tuple[str, bytes]:
    """An include's file and bytes. A relative name is looked for next to the including file first, then
    in the working directory, where SRS looks (its samples say `include ./conf/include.vhost.conf;` and are
    run from SRS's folder). When neither is readable, the error names both places."""
    beside = os.path.join(os.path.dirname(here), name)
    places = [beside]
    if not os.path.isabs(name) and _identity(name) != _identity(beside):
        places.append(name)
    failures = []
    for target in places:
        try:
            return target, reader(target)
        except OSError as e:
            failures.append(f"'{target}' ({e.strerror or e})")
    if len(failures) == 1:
        raise ConfigError(here, line, f"include: cannot read {failures[0]}")
    raise ConfigError(here, line, f"include: cannot read '{name}': not beside the including file, as "
                                  f"{failures[0]}, nor in the working directory {os.getcwd()!r}, as {failures[1]}")
