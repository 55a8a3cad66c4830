"""The benchmark suite behind `bench/run`: the same scenarios against nonstop, nginx-rtmp and Node-Media-Server.

Each (scenario, server, point) starts the server fresh with its own config on free ports, runs `nonstop bench`
against it with `--server-pid` (so the load generator samples that server's process tree from /proc over the
window), stores the JSON report under bench/out/RUN/, and stops the server. `bench/report.py` turns a run's
JSON into bench/RESULTS.md tables and one PNG per scenario.

Scenarios (see README "Benchmarks"):
  fanout   1 publisher of the 2 Mb/s 720p30 stream, N RTMP players (and N HTTP-FLV players where the server
           has HTTP-FLV: nonstop, NMS; Debian's nginx-rtmp has none)
  ingest   200 publishers of a 500 kb/s stream, one RTMP player each
  idle     5000 connections that complete connect and createStream, then sit
  latency  publisher-to-player latency at 100 RTMP players, read with SO_RCVLOWAT off; nonstop also with
           `min_latency on`
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MEDIA = BENCH / "media"
OUT = BENCH / "out"
PEERS = BENCH / "peers"
PYTHON = sys.executable

NMS_VERSION = "4.4.3"   # the newest Node-Media-Server; it needs Node >= 20 (2.x runs on older Node)
NGINX_RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
SERVERS = ("nonstop", "nginx-rtmp", "nms")
SCENARIOS = ("fanout", "ingest", "idle", "latency")
FULL_PLAYERS = (100, 500, 1000, 2000, 4000)
QUICK_PLAYERS = (100, 1000)
INGEST_PUBLISHERS = 200
IDLE_CONNECTIONS = 5000
LATENCY_PLAYERS = 100
# Above this many players the load generator runs as two processes (one process drives 2000, see README).
ONE_PROCESS_MAX = 2000

# The streams, generated once. Noise keeps x264 at its target rate (a test pattern alone compresses to less).
STREAMS = {
    "main": dict(file="720p30-2mbps.flv", size="1280x720", vrate="1900k", arate="128k", seconds=30),
    "ingest": dict(file="360p30-500kbps.flv", size="640x360", vrate="440k", arate="48k", seconds=30),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")
        time.sleep(0.1)


# ----- media and peers -------------------------------------------------------------------------------------

def make_stream(name: str) -> Path:
    spec = STREAMS[name]
    path = MEDIA / spec["file"]
    if path.exists():
        return path
    MEDIA.mkdir(parents=True, exist_ok=True)
    log(f"generating {path.name} with ffmpeg (once)")
    vrate = spec["vrate"]
    tmp = path.with_suffix(".tmp.flv")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={spec['size']}:rate=30,noise=alls=12:allf=t",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
         "-t", str(spec["seconds"]), "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high",
         "-pix_fmt", "yuv420p", "-g", "60", "-bf", "0", "-b:v", vrate, "-minrate", vrate, "-maxrate", vrate,
         "-bufsize", vrate, "-x264-params", "nal-hrd=cbr",
         "-c:a", "aac", "-b:a", spec["arate"], "-ac", "2", "-f", "flv", str(tmp)],
        check=True)
    tmp.rename(path)
    return path


def ensure_peers(servers: list[str]) -> None:
    if "nginx-rtmp" in servers and not (shutil.which("nginx") and Path(NGINX_RTMP_MODULE).exists()):
        log("installing nginx and libnginx-mod-rtmp (apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx", "libnginx-mod-rtmp"],
                       check=True, env=env)
    if "nms" in servers and not nms_app().exists():
        if not shutil.which("npm"):
            raise RuntimeError("Node-Media-Server needs node and npm (apt-get install nodejs npm)")
        log(f"installing node-media-server@{NMS_VERSION} into {PEERS} (npm)")
        PEERS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(PEERS),
                        f"node-media-server@{NMS_VERSION}"], check=True)


def nms_app() -> Path:
    return PEERS / "node_modules" / "node-media-server" / "bin" / "app.js"


def versions() -> dict:
    def out(args):
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    nms = None
    pkg = PEERS / "node_modules" / "node-media-server" / "package.json"
    if pkg.exists():
        nms = json.loads(pkg.read_text())["version"]
    rtmp_mod = out(["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-rtmp"])
    return {"python": platform.python_version(), "nginx": out(["nginx", "-v"]), "libnginx-mod-rtmp": rtmp_mod,
            "node": out(["node", "--version"]), "node-media-server": nms,
            "nonstop": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                      capture_output=True, text=True).stdout.strip()}


# ----- servers ---------------------------------------------------------------------------------------------

class Peer:
    """A server under test: its config on free ports, its process, its URLs."""
    name = ""
    has_flv = False

    def __init__(self, workdir: Path, min_latency: bool = False):
        self.workdir = workdir
        self.min_latency = min_latency
        self.rtmp_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None

    def rtmp_url(self, stream="s") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{stream}"

    def flv_url(self, stream="s") -> str:
        return f"http://127.0.0.1:{self.http_port}/live/{stream}.flv"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "Peer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.rtmp_port, self.proc, self.name)
        if self.has_flv:
            wait_port(self.http_port, self.proc, self.name)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()


class Nonstop(Peer):
    name = "nonstop"
    has_flv = True

    def command(self) -> list[str]:
        conf = self.workdir / "nonstop.conf"
        conf.write_text(textwrap.dedent(f"""\
            listen 127.0.0.1:{self.rtmp_port};
            max_connections 12000;
            daemon off;
            pid {self.workdir}/nonstop.pid;
            srs_log_tank console;
            srs_log_level warn;
            http_server {{ enabled on; listen 127.0.0.1:{self.http_port}; }}
            vhost __defaultVhost__ {{
                min_latency {"on" if self.min_latency else "off"};
                http_remux {{ enabled on; mount [vhost]/[app]/[stream].flv; }}
            }}
            """))
        return [PYTHON, "-m", "nonstop.cli", "-c", str(conf)]


class NginxRtmp(Peer):
    name = "nginx-rtmp"
    has_flv = False  # Debian's nginx-rtmp has no HTTP-FLV (that is the separate nginx-http-flv-module)

    def command(self) -> list[str]:
        conf = self.workdir / "nginx.conf"
        conf.write_text(textwrap.dedent(f"""\
            load_module {NGINX_RTMP_MODULE};
            daemon off;
            master_process on;
            worker_processes 1;
            worker_rlimit_nofile 20000;
            pid {self.workdir}/nginx.pid;
            error_log {self.workdir}/error.log warn;
            events {{ worker_connections 12000; }}
            rtmp {{
                server {{
                    listen 127.0.0.1:{self.rtmp_port};
                    application live {{ live on; }}
                }}
            }}
            """))
        return ["nginx", "-p", str(self.workdir), "-c", str(conf), "-e", f"{self.workdir}/error.log"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # nginx: graceful; SIGTERM is fast, either is fine
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        super().stop()


class NodeMediaServer(Peer):
    name = "nms"
    has_flv = True

    def command(self) -> list[str]:
        conf = self.workdir / "nms.json"
        conf.write_text(json.dumps({
            "bind": "127.0.0.1",
            "notify": {"url": ""},
            "store": {"path": str(self.workdir / "data"), "maxHistory": 100},
            "auth": {"play": False, "publish": False, "secret": ""},
            "rtmp": {"port": self.rtmp_port},
            "http": {"port": self.http_port},
            "webadmin": {"enable": False},
            "record": {"auto": False, "path": str(self.workdir / "record")},
        }, indent=2))
        return ["node", str(nms_app()), "-c", str(conf), "--no-admin", "-b", "127.0.0.1",
                "--rtmp-port", str(self.rtmp_port), "--http-port", str(self.http_port)]


PEER_CLASSES = {"nonstop": Nonstop, "nginx-rtmp": NginxRtmp, "nms": NodeMediaServer}


# ----- running -------------------------------------------------------------------------------------------

def bench(peer: Peer, args: list[str], timeout: float) -> dict:
    cmd = [PYTHON, "-m", "nonstop.cli", "bench", *args, "--server-pid", str(peer.proc.pid), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"nonstop bench exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    result = json.loads(p.stdout)
    result["bench_command"] = " ".join(["nonstop", "bench", *args])
    return result


def run_point(run_dir: Path, scenario: str, server: str, label: str, make_args, opts, min_latency=False,
              expected_s: float = 60.0) -> None:
    name = f"{scenario}_{server}_{label}"
    out = run_dir / f"{name}.json"
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{server}-"))
    peer = PEER_CLASSES[server](workdir, min_latency=min_latency)
    log(f"{name}: starting {server}")
    try:
        peer.start()
        time.sleep(0.5)
        result = bench(peer, make_args(peer), timeout=expected_s + 120)
        result.update(scenario=scenario, server_name=server, label=label)
        out.write_text(json.dumps(result, indent=1))
        s, pl = result.get("server") or {}, result["players"]
        if result["publishers"]["errors"]:
            log(f"{name}: WARNING: publisher lost during the run: {result['publishers']['errors'][0]}")
        ok = result["idle"] or result["connections"]
        log(f"{name}: {ok['ok']} ok, {ok['failed']} failed; "
            f"starved {pl['starved']}; server {s.get('cpu_pct_of_core')}% of a core, "
            f"{s.get('cpu_s_per_gb')} CPU-s/GB, {s.get('rss_kb_per_connection')} KB/conn; "
            f"latency p50 {result['latency_ms']['p50']} ms; bench {result['bench']['cpu_pct_of_core']}%")
    except Exception as e:  # one failed point must not lose the others
        log(f"{name}: FAILED: {e}")
        out.write_text(json.dumps({"scenario": scenario, "server_name": server, "label": label, "error": str(e)}))
    finally:
        peer.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma list of {', '.join(SERVERS)}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--players", default=None,
                   help="fan-out player counts, comma list (default 100,500,1000,2000,4000)")
    p.add_argument("--flv-players", default=None, help="HTTP-FLV fan-out player counts (default: as --players; 0: none)")
    p.add_argument("--window", type=float, default=30.0, help="measurement window in seconds (default 30)")
    p.add_argument("--ramp", type=float, default=500.0, help="new connections per second (default 500)")
    p.add_argument("--ingest", type=int, default=INGEST_PUBLISHERS, help="ingest publishers (default 200)")
    p.add_argument("--idle", type=int, default=IDLE_CONNECTIONS, help="idle connections (default 5000)")
    p.add_argument("--quick", action="store_true",
                   help="scaled down: fan-out at 100 and 1000 players, 20 s windows")
    p.add_argument("--out", default=None, help="results directory (default bench/out/RUN-TIMESTAMP)")
    p.add_argument("--no-report", action="store_true", help="do not rewrite bench/RESULTS.md and the plots")
    p.add_argument("--note", default="", help="a note stored with the run (e.g. 'machine shared')")
    a = p.parse_args(argv)

    servers = [s for s in a.servers.split(",") if s]
    scenarios = [s for s in a.scenarios.split(",") if s]
    for s in servers:
        if s not in SERVERS:
            p.error(f"unknown server {s}")
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s}")
    window = a.window
    players = FULL_PLAYERS
    if a.quick:
        players = QUICK_PLAYERS
        window = min(window, 20.0)
    if a.players:
        players = tuple(int(x) for x in a.players.split(","))
    flv_players = tuple(int(x) for x in a.flv_players.split(",") if int(x) > 0) if a.flv_players else players

    ensure_peers(servers)
    main_file = make_stream("main")
    ingest_file = make_stream("ingest") if "ingest" in scenarios else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(a.out) if a.out else OUT / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"started": stamp, "command": " ".join(["bench/run", *(argv if argv is not None else sys.argv[1:])]),
            "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "kernel": platform.release(),
                        "loadavg_at_start": os.getloadavg()},
            "versions": versions(), "window_s": window, "servers": servers, "scenarios": scenarios,
            "note": a.note, "files": {"main": main_file.name, "ingest": ingest_file.name if ingest_file else None}}
    if (run_dir / "run.json").exists():  # adding points to an earlier run (--out): keep its story
        before = json.loads((run_dir / "run.json").read_text())
        meta["command"] = f"{before['command']}, then {meta['command']}"
        meta["started"] = before["started"]
        meta["machine"]["loadavg_at_start"] = before["machine"]["loadavg_at_start"]
        meta["servers"] = sorted(set(before["servers"]) | set(servers))
        meta["scenarios"] = sorted(set(before["scenarios"]) | set(scenarios))
        meta["files"] = {k: meta["files"][k] or before["files"].get(k) for k in meta["files"]}
        meta["window_s"] = min(window, before["window_s"])
        if before["versions"]["nonstop"] not in meta["versions"]["nonstop"].split(" then "):
            meta["versions"]["nonstop"] = f"{before['versions']['nonstop']} then {meta['versions']['nonstop']}"
    (run_dir / "run.json").write_text(json.dumps(meta, indent=1))
    log(f"results in {run_dir}")
    common = ["--duration", str(window), "--warmup", "2", "--ramp", str(a.ramp)]

    def procs(n):
        return ["--procs", "2"] if n > ONE_PROCESS_MAX else []

    if "fanout" in scenarios:
        for server in servers:
            for n in players:
                run_point(run_dir, "fanout", server, f"rtmp-{n}",
                          lambda peer, n=n: [peer.rtmp_url(), "--publishers", "1", "--file", str(main_file),
                                             "--players", str(n), *procs(n), *common],
                          a, expected_s=window + n / a.ramp + 5)
            if PEER_CLASSES[server].has_flv:
                for n in flv_players:
                    run_point(run_dir, "fanout", server, f"flv-{n}",
                              lambda peer, n=n: [peer.flv_url(), "--publish-url", peer.rtmp_url(), "--publishers",
                                                 "1", "--file", str(main_file), "--players", str(n), *procs(n),
                                                 *common],
                              a, expected_s=window + n / a.ramp + 5)
    if "ingest" in scenarios:
        for server in servers:
            run_point(run_dir, "ingest", server, f"rtmp-{a.ingest}",
                      lambda peer: [peer.rtmp_url(), "--publishers", str(a.ingest), "--file", str(ingest_file),
                                    "--players", str(a.ingest), *common],
                      a, expected_s=window + 30)
    if "idle" in scenarios:
        for server in servers:
            run_point(run_dir, "idle", server, f"idle-{a.idle}",
                      lambda peer: [peer.rtmp_url(), "--idle", str(a.idle), "--duration", "5", "--warmup", "3",
                                    "--ramp", str(a.ramp)],
                      a, expected_s=a.idle / a.ramp + 10)
    if "latency" in scenarios:
        for server in servers:
            modes = [("default", False)] + ([("min_latency", True)] if server == "nonstop" else [])
            for mode, min_latency in modes:
                run_point(run_dir, "latency", server, f"{mode}-{LATENCY_PLAYERS}",
                          lambda peer: [peer.rtmp_url(), "--publishers", "1", "--file", str(main_file),
                                        "--players", str(LATENCY_PLAYERS), "--rcvlowat", "0", *common],
                          a, min_latency=min_latency, expected_s=window + 5)
    meta["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta["machine"]["loadavg_at_end"] = os.getloadavg()
    (run_dir / "run.json").write_text(json.dumps(meta, indent=1))
    log(f"done: {run_dir}")
    if not a.no_report:
        import report
        report.main([str(run_dir)])
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
