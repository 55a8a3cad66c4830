"""Harness for the rollout simulation (no tests here): the built manifests played on this machine.

- Pods: nonstop processes run with the container's command and args, its env (fieldRefs resolved, $(VAR)
  expanded) and the ConfigMap's config, each in its own network namespace with its own IP (the cluster tests'
  `Net`). Pod DNS names (nonstop-origin-N.nonstop-origin) resolve through /etc/netns/NS/hosts, which
  `ip netns exec` mounts over /etc/hosts: the config is used as built. Where namespaces are not allowed, pods
  get 127.0.0.x and the listen addresses, origins, coworkers and advertise come from environment overrides
  instead (said in the output).
- The Service: HAProxy from Debian in TCP mode, health-checking `/readyz` on the API port as often as the
  readiness probe says; endpoints are added and removed on its admin socket.
- The kubelet: readiness and liveness probes on their periods; termination runs the preStop hook while the
  endpoint is removed after a propagation delay, then SIGTERM, then SIGKILL at terminationGracePeriodSeconds
  if the pod still lives.
- The Deployment controller: a rolling update by the strategy (maxSurge 1, maxUnavailable 0): a new pod, ready
  for minReadySeconds, then the deletion of an old one, and so on; terminating pods do not count.

Every duration of the manifests (grace period, preStop wait, grace_* settings, probe periods, minReadySeconds,
the propagation delay) is multiplied by one `scale`; the grace_* settings reach the pods as NONSTOP_GRACE_*
overrides. Probe timeouts are not scaled below 1 s (a loaded CI machine answers slower, not faster).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nonstop.config import load_text
from tests.e2e.k8s_manifests import CONFIG_PATH, PodSpec
from tests.e2e.ops_helpers import http_status
from tests.e2e.test_cluster_harness import Net
from tests.helpers import ROOT, port_open, stop_proc, wait_for

# Endpoint propagation (kube-proxy, cloud load balancers) takes about a second or two after a pod is deleted;
# the edge's grace_start_wait (5 s) covers it. The simulation removes the endpoint this long after the deletion.
ENDPOINT_PROPAGATION_S = 2.0
# A probe's timeout does not scale either: an answer's time depends on the machine, not on the simulation's
# clock. The manifests' timeoutSeconds is 2 s; scaled it would be 0.2 s, so a probe waits the real 2 s.
PROBE_TIMEOUT_FLOOR_S = 2.0
# A process's start does not scale with the simulation: two Python processes (master, worker) start in 0.2-1.0 s
# here, more on a loaded machine, while a scaled initialDelaySeconds of 5 s is 0.5 s. The liveness probe's first
# look waits at least this long, as the real 5 s does for a real start.
PROBE_DELAY_FLOOR_S = 2.0
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


# A probe that races a terminating pod's exit (its listeners close a moment before the process ends).
EXIT_RACE_S = 1.0


def _exits_within(pod, seconds: float) -> bool:
    """Whether the pod's process ends within `seconds` (it is exiting)."""
    try:
        pod.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


@dataclass
class Pod:
    """One pod of a workload: its name, node (network namespace) and nonstop process."""
    net: Net
    node: str
    name: str
    spec: PodSpec
    scale: float
    extra_env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nonstop-pod-")))
    ready_at: float | None = None
    deleted_at: float | None = None
    grace_sent_at: float | None = None      # when its preStop hook started `nonstop -s grace` (a lower bound)
    exited_at: float | None = None
    killed: bool = False
    liveness_failures: int = 0
    probing: bool = False

    def __post_init__(self):
        self.ip = self.net.ips[self.node]
        config = load_text(self.spec.config_text, CONFIG_PATH, {})
        self.ports = {"rtmp": config.listen[0].port, "api": config.http_api.listen.port,
                      "http": config.http_server.listen.port}
        if self.net.mode != "netns":          # one namespace for all: a port each
            self.ports = {k: _free_port(self.ip) for k in self.ports}

    @property
    def rtmp_addr(self) -> str:
        return f"{self.ip}:{self.ports['rtmp']}"

    def url(self, stream: str = "livestream") -> str:
        return f"rtmp://{self.rtmp_addr}/live/{stream}"

    def api_url(self, path: str) -> str:
        return f"http://{self.ip}:{self.ports['api']}{path}"

    def _map(self, argv: list[str]) -> list[str]:
        """A container command run here: `nonstop` is this checkout's, the mounted config is the pod's file."""
        out = [sys.executable, "-m", "nonstop.cli"] + argv[1:] if argv and argv[0] == "nonstop" else list(argv)
        return [str(self.workdir / "nonstop.conf") if a == CONFIG_PATH else a for a in out]

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.spec.env(self.name, self.ip)}
        grace = self.spec.grace_settings_ms()
        for name in ("grace_start_wait", "grace_max_wait", "grace_final_wait"):
            env[f"NONSTOP_{name.upper()}"] = str(round(grace[name] * self.scale))
        if self.net.mode != "netns":
            env.update({"NONSTOP_LISTEN": f"{self.ip}:{self.ports['rtmp']}",
                        "NONSTOP_HTTP_API_LISTEN": f"{self.ip}:{self.ports['api']}",
                        "NONSTOP_HTTP_SERVER_LISTEN": f"{self.ip}:{self.ports['http']}"})
        env.update(self.extra_env)
        return env

    def start(self) -> "Pod":
        (self.workdir / "nonstop.conf").write_text(self.spec.config_text)
        self._log = open(self.workdir / "server.log", "ab")
        argv = self.net.command(self.node, self._map(self.spec.argv))
        self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.environment(), start_new_session=True)
        return self

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def players(self) -> int | None:
        """RTMP players on this pod, from its API (None when it does not answer)."""
        import json
        try:
            with urllib.request.urlopen(self.api_url("/api/v1/clients/?count=10000"), timeout=2) as r:
                clients = json.loads(r.read())["clients"]
        except (OSError, ValueError):
            return None
        return sum(1 for c in clients if c["type"] == "rtmp-play")

    def kill(self) -> None:
        """SIGKILL to the pod's processes: in a namespace, all of them; else the master and its descendants
        (the worker runs in its own process group, so killing the master's group is not enough)."""
        if self.proc is None:
            return
        if self.net.mode == "netns":
            self.net.kill_all(self.node)
        else:
            for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(10)

    def cleanup(self) -> None:
        if self.proc is not None:
            self.kill()
            self._log.close()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Service:
    """HAProxy in TCP mode in front of the pods' RTMP port, one server slot per pod."""

    def __init__(self, slots: list[Pod], check_inter_s: float, check_timeout_s: float):
        self.dir = Path(tempfile.mkdtemp(prefix="nonstop-haproxy-"))
        self.port = _free_port()
        self.socket_path = self.dir / "admin.sock"
        servers = "\n".join(
            f"    server {p.name} {p.rtmp_addr} check port {p.ports['api']} disabled" for p in slots)
        inter = max(100, round(check_inter_s * 1000))
        (self.dir / "haproxy.cfg").write_text(textwrap.dedent(f"""\
            global
                stats socket {self.socket_path} mode 600 level admin
                maxconn 4000
            defaults
                mode tcp
                timeout connect 2s
                timeout client 1h
                timeout server 1h
                timeout check {max(1000, round(check_timeout_s * 1000))}ms
            frontend service
                bind 127.0.0.1:{self.port}
                default_backend pods
            backend pods
                balance roundrobin
                option httpchk GET /readyz
                default-server inter {inter}ms fall 1 rise 1
            """) + servers + "\n")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.dir / "haproxy.cfg")],
                                     stdout=open(self.dir / "haproxy.log", "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port) and self.socket_path.exists() or self.proc.poll() is not None, 10,
                 what="haproxy to listen")
        assert self.proc.poll() is None, (self.dir / "haproxy.log").read_text()

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def add(self, pod: Pod) -> None:
        self.command(f"set server pods/{pod.name} state ready")

    def remove(self, pod: Pod) -> None:
        self.command(f"set server pods/{pod.name} state maint")

    def _servers(self) -> list[dict]:
        lines = self.command("show stat").lstrip("# ").splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return [r for r in rows if r["pxname"] == "pods" and r["svname"] != "BACKEND"]

    def up(self) -> set[str]:
        """The servers HAProxy sends new connections to (status UP)."""
        return {r["svname"] for r in self._servers() if r["status"].startswith("UP")}

    def sessions(self) -> dict[str, int]:
        """The TCP sessions open now through the Service to each pod (HAProxy's scur)."""
        return {r["svname"]: int(r["scur"] or 0) for r in self._servers()}

    def url(self, stream: str = "livestream") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{stream}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_proc(self.proc, sig=signal.SIGTERM)


class Kubelet:
    """Probes and termination of the pods, as the manifests say, on `scale`d durations."""

    def __init__(self, net: Net, service: Service | None, scale: float):
        self.net, self.service, self.scale = net, service, scale
        self.terminations: list[threading.Thread] = []
        self.events: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def note(self, what: str) -> None:
        with self.lock:
            self.events.append((time.monotonic(), what))
        print(f"[{time.strftime('%H:%M:%S')}] {what}")

    def _thread(self, target, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        return thread

    def start(self, pod: Pod) -> None:
        pod.start()
        pod.probing = True
        self.note(f"{pod.name} started on {pod.ip}")
        self._thread(self._readiness, pod)
        self._thread(self._liveness, pod)

    def _probe_args(self, pod: Pod, kind: str) -> tuple[str, float, float, float, int]:
        probe = pod.spec.probe(kind)
        url = f"http://{pod.ip}:{pod.ports['api']}{probe['httpGet']['path']}"
        return (url, probe.get("periodSeconds", 10) * self.scale,
                max(PROBE_TIMEOUT_FLOOR_S, probe.get("timeoutSeconds", 1) * self.scale),
                max(PROBE_DELAY_FLOOR_S, probe.get("initialDelaySeconds", 0) * self.scale)
                if kind == "livenessProbe" else probe.get("initialDelaySeconds", 0) * self.scale,
                probe.get("failureThreshold", 3))

    def _readiness(self, pod: Pod) -> None:
        url, period, timeout, delay, _ = self._probe_args(pod, "readinessProbe")
        time.sleep(delay)
        while pod.probing and pod.alive():
            if http_status(url, timeout) == 200:
                if pod.ready_at is None:
                    pod.ready_at = time.monotonic()
                    self.note(f"{pod.name} ready")
                    if self.service is not None:
                        self.service.add(pod)       # the endpoint: added to the Service once Ready
                return
            time.sleep(period)

    def _liveness(self, pod: Pod) -> None:
        url, period, timeout, delay, threshold = self._probe_args(pod, "livenessProbe")
        time.sleep(delay)
        failures = 0
        while pod.probing and pod.alive():
            status = http_status(url, timeout)
            if status == 200:
                failures = 0
            elif pod.deleted_at is not None and _exits_within(pod, EXIT_RACE_S):
                # A terminating pod that closed its ports as it exited: the kubelet stops probing a container
                # that ended, and restarts none; not a liveness failure.
                self.note(f"{pod.name} liveness probe unanswered as it exited ({status})")
                break
            else:
                failures += 1
                pod.liveness_failures += 1
                since = "" if pod.deleted_at is None else f", {time.monotonic() - pod.deleted_at:.2f}s after deletion"
                self.note(f"{pod.name} liveness probe failed: {status}{since}")
                if failures >= threshold:
                    self.note(f"{pod.name} LIVENESS FAILED {failures} times: the kubelet would restart it")
            time.sleep(period)

    def delete(self, pod: Pod) -> None:
        """A pod deletion: endpoint removal after the propagation delay, in parallel with preStop, TERM, KILL."""
        pod.deleted_at = time.monotonic()
        self.note(f"{pod.name} deleted (terminating)")
        if self.service is not None:
            self._thread(self._remove_endpoint, pod)
        self.terminations.append(self._thread(self._terminate, pod))

    def _remove_endpoint(self, pod: Pod) -> None:
        time.sleep(ENDPOINT_PROPAGATION_S * self.scale)
        self.service.remove(pod)
        self.note(f"{pod.name} removed from the Service")

    def _terminate(self, pod: Pod) -> None:
        deadline = pod.deleted_at + pod.spec.grace_period * self.scale
        prestop = pod.spec.prestop()
        if prestop is not None:
            command, wait = prestop
            pod.grace_sent_at = time.monotonic()
            proc = subprocess.run(self.net.command(pod.node, pod._map(command)), cwd=pod.workdir,
                                  capture_output=True, text=True, timeout=30, env=pod.environment())
            self.note(f"{pod.name} preStop `{' '.join(command)}` exit {proc.returncode} "
                      f"{(proc.stdout + proc.stderr).strip()[:200]}; then sleep {wait * self.scale:g}s")
            time.sleep(max(0.0, min(wait * self.scale, deadline - time.monotonic())))
        if pod.alive():
            pod.proc.send_signal(signal.SIGTERM)
            self.note(f"{pod.name} SIGTERM")
        try:
            pod.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pod.killed = True
            pod.kill()
            self.note(f"{pod.name} SIGKILLed at terminationGracePeriodSeconds")
        pod.exited_at = time.monotonic()
        pod.probing = False
        self.note(f"{pod.name} exited with {pod.proc.returncode}, "
                  f"{pod.exited_at - pod.deleted_at:.2f}s after its deletion")

    def wait_ready(self, pod: Pod, timeout: float) -> None:
        wait_for(lambda: pod.ready_at is not None or not pod.alive(), timeout, what=f"{pod.name} to be ready")
        assert pod.alive(), f"{pod.name} exited: {pod.log()[-3000:]}"

    def rolling_update(self, old: list[Pod], new: list[Pod], workload: dict) -> None:
        """The Deployment controller with maxSurge 1, maxUnavailable 0: one new pod, Ready (and available
        after minReadySeconds), then one old pod deleted; terminating pods do not count against the surge."""
        strategy = workload["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}, strategy
        min_ready = workload["spec"].get("minReadySeconds", 0) * self.scale
        for old_pod, new_pod in zip(old, new):
            self.start(new_pod)
            self.wait_ready(new_pod, 30)
            time.sleep(min_ready)
            self.note(f"{new_pod.name} available")
            self.delete(old_pod)

    def join(self, timeout: float) -> None:
        """Until every deleted pod is gone."""
        deadline = time.monotonic() + timeout
        for thread in self.terminations:
            thread.join(max(0.0, deadline - time.monotonic()))


def write_hosts(net: Net, names: dict[str, str]) -> list[Path]:
    """The cluster DNS for pods: /etc/netns/NS/hosts in every namespace (mounted over /etc/hosts by
    `ip netns exec`). Returns the directories to remove."""
    text = "127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in names.items())
    made = []
    for ns in net.namespaces.values():
        directory = Path("/etc/netns") / ns
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts").write_text(text)
        made.append(directory)
    return made


def remove_hosts(directories: list[Path]) -> None:
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
