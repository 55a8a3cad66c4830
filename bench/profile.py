"""Profile nonstop's worker under fan-out with py-spy: where the server's time goes.

Usage: .venv/bin/python bench/profile.py [--players 1000] [--flv] [--seconds 15] [--out bench/out/profile]

Starts nonstop as bench/run does, publishes the 2 Mb/s stream and plays it with N players (`nonstop bench`),
and meanwhile runs `py-spy record --format raw` on the worker for the given seconds (py-spy needs root, or
ptrace rights). Prints the functions with the most samples, by own time and by inclusive time, and keeps the
raw collapsed stacks (flamegraph input) in the output folder.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402


def worker_pid(master: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    if not out:
        raise RuntimeError("no worker process under the master")
    return int(out[0])


def summarize(raw: Path, top: int = 25) -> str:
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].replace(str(suite.ROOT) + "/", "") + ")"
                  if " (" in f else f for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--players", type=int, default=1000)
    p.add_argument("--flv", action="store_true", help="HTTP-FLV players instead of RTMP")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--native", action="store_true", help="py-spy --native: C frames too (uvloop, libc)")
    p.add_argument("--ingest", type=int, default=0, metavar="M",
                   help="ingest instead: M publishers of the 500 kb/s stream, one player each")
    p.add_argument("--out", default=str(suite.OUT / "profile"))
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    media = suite.make_stream("ingest" if a.ingest else "main")
    publishers = a.ingest or 1
    if a.ingest:
        a.players = a.ingest
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    peer = suite.Nonstop(workdir).start()
    try:
        url = peer.flv_url() if a.flv else peer.rtmp_url()
        ramp_s = a.players / 500
        bench = subprocess.Popen(
            [suite.PYTHON, "-m", "nonstop.cli", "bench", url, "--publish-url", peer.rtmp_url(), "--publishers",
             str(publishers), "--file", str(media), "--players", str(a.players), "--ramp", "500", "--warmup", "2",
             "--duration", str(a.seconds + 4), "--server-pid", str(peer.proc.pid)],
            cwd=suite.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.3 + ramp_s + 3 + (2 if a.ingest else 0))  # publisher settle, ramp, warmup
        kind = f"ingest-{a.ingest}" if a.ingest else f"{'flv' if a.flv else 'rtmp'}-{a.players}"
        raw = out / f"nonstop-{kind}{'-native' if a.native else ''}.txt"
        subprocess.run([shutil.which("py-spy") or str(Path(suite.PYTHON).parent / "py-spy"), "record", "--format",
                        "raw", "--duration", str(int(a.seconds)), "--rate", "200", "--output", str(raw),
                        *(["--native"] if a.native else []),
                        "--pid", str(worker_pid(peer.proc.pid))], check=True, capture_output=True)
        report, _ = bench.communicate(timeout=120)
        print(report)
        summary = summarize(raw)
        (raw.with_suffix(".summary.txt")).write_text(summary + "\n\n" + report)
        print(summary)
    finally:
        peer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
