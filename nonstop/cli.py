"""The `nonstop` command: run the server, test a config, print the version, signal a running master.

Exit codes (README): 0 ok, 1 runtime error, 2 usage error, 3 config error, 4 already running, 5 no such process.
"""

from __future__ import annotations

import argparse
import os
import sys

from nonstop import SERVER_NAME, __version__

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_RUNNING = 4
EXIT_NO_PROCESS = 5

USAGE = """\
usage: nonstop [-h] [-v] [-g] [-t] [-c FILE] [-s SIGNAL]
       nonstop bench ...
       nonstop sign [-c FILE] [--publish | --play] [--expires-in SECONDS] [--ip IP] URL

A live-streaming server (RTMP, HTTP-FLV) whose operation never interrupts a viewer.

options:
  -c FILE     the config file; default $NONSTOP_CONF, else the embedded default config
              (RTMP 1935, HTTP API 1985, HTTP server 8080 with HTTP-FLV, logs to the console)
  -t          test the config file and exit
  -v          print the version and exit
  -g          print the server signature (nonstop/VERSION) and exit
  -s SIGNAL   send a signal to the running master named by the config's pid file:
              stop (fast), quit or grace (graceful), reload, reopen, upgrade
  -h          show this help and exit

exit codes: 0 ok, 1 runtime error, 2 usage error, 3 config error, 4 already running,
            5 no such process (for -s)
"""


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 itself; we want our own message and code
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nonstop", add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-v", "--version", action="store_true")
    p.add_argument("-g", "--signature", action="store_true")
    p.add_argument("-t", "--test", action="store_true")
    p.add_argument("-c", "--conf", metavar="FILE")
    p.add_argument("-s", "--signal", metavar="SIGNAL")
    # Internal: a worker started by the master, and the handover receiver.
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--takeover", metavar="PATH", help=argparse.SUPPRESS)
    return p


def config_path(args) -> str | None:
    return args.conf or os.environ.get("NONSTOP_CONF") or None


def load_config(path: str | None):
    from nonstop.config import load
    return load(path)


def test_config(path: str | None) -> int:
    from nonstop.config import ConfigError
    name = path or "<embedded>"
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        print(f"configuration file {name} test failed", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"config error: cannot read {name}: {e.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"the config file {name} syntax is ok")
    print(f"config file {name} test is successful")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from nonstop.bench.cli import main as bench_main
        return bench_main(argv[1:])
    if argv and argv[0] == "sign":
        from nonstop.access.sign_cli import main as sign_main
        return sign_main(argv[1:])
    try:
        args, extra = _parser().parse_known_args(argv)
        if extra:
            raise UsageError(f"unexpected argument {extra[0]!r}")
    except UsageError as e:
        print(f"nonstop: {e}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr, end="")
        return EXIT_USAGE
    if args.help:
        print(USAGE, end="")
        return EXIT_OK
    if args.version:
        print(__version__)
        return EXIT_OK
    if args.signature:
        print(SERVER_NAME)
        return EXIT_OK
    path = config_path(args)
    if args.test:
        return test_config(path)
    if args.signal:
        from nonstop.master.control import send_signal
        return send_signal(args.signal, path)
    from nonstop.config import ConfigError
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"nonstop: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        print(f"nonstop: cannot read config {path}: {e.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    if args.worker:
        from nonstop.server.worker_main import run_worker
        return run_worker(config)
    # The handover test hooks need the single process (master_process off) that they were written for.
    if config.master_process and not args.takeover and not os.environ.get("NONSTOP_TEST_HANDOVER_TO"):
        from nonstop.master.master import run_master
        return run_master(config)
    from nonstop.server.run import run_single_process
    return run_single_process(config, takeover=args.takeover)


if __name__ == "__main__":
    sys.exit(main())
