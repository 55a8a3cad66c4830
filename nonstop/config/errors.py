"""The one error type of the config package: a message tied to the file and line that caused it.

Every problem with a config, whatever its stage (lexing, includes, unknown directives, bad values,
environment overrides), is a ConfigError, so the CLI can print it and exit with one code.
"""


class ConfigError(Exception):
    """A config that nonstop refuses. ``str(e)`` is ``"FILE:LINE: message"``.

    ``file`` is the file the problem is in (an included file names itself), ``"<embedded>"`` for the
    built-in default, or ``"<env NONSTOP_X>"`` for an environment override (then ``line`` is 0).
    Line 0 also stands for the file as a whole, for problems that have no single line.
    """

    def __init__(self, file: str, line: int, message: str):
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message

    def __reduce__(self):
        # Exceptions pickle through their args; ours has three, so say how (multiprocessing, handover).
        return (type(self), (self.file, self.line, self.message))
