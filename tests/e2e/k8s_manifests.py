"""The built Kubernetes manifests (deploy/k8s), read the way the kubelet reads them: kustomize builds, the pod
template of a workload, its container's env (fieldRef and $(VAR) expansion), its preStop hook, probes and
grace, and the nonstop config its ConfigMap mounts. Shared by the static tests and the rollout simulation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import yaml

from tests.helpers import ROOT

K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
OVERLAYS = ("base", "overlays/stable", "overlays/canary")
CONFIG_DIR = "/etc/nonstop"                 # where the ConfigMap is mounted
CONFIG_PATH = f"{CONFIG_DIR}/nonstop.conf"
# The schemas kubernetes-validate bundles go from 1.25 up; 1.32 is the kubectl installed on the dev machines,
# and policy/v1 PodDisruptionBudgets need 1.21 or later.
SCHEMA_VERSION = "1.32.0"
# The preStop hook, as edge-deployment.yaml writes it: nonstop's graceful quit, then a wait in seconds.
PRESTOP = re.compile(r"^(nonstop -s grace -c (\S+));\s*sleep (\d+(?:\.\d+)?)$")
# Seconds of slack between the last grace wait and the kubelet's SIGKILL: a loaded node is slow to exit.
GRACE_MARGIN_S = 10


def kubectls() -> list[str]:
    """Every kubectl to build with: the one on PATH, plus KUBECTL_EXTRA (paths separated by ':'), for checking
    that Debian's kubectl 1.20 (kustomize v2) builds the same."""
    found = [shutil.which("kubectl")] + [p for p in os.environ.get("KUBECTL_EXTRA", "").split(":") if p]
    return [k for k in found if k]


def kustomize(overlay: str, kubectl: str | None = None) -> str:
    kubectl = kubectl or kubectls()[0]
    proc = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{kubectl} kustomize {overlay} failed: {proc.stderr}"
    return proc.stdout


@lru_cache(maxsize=None)
def built(overlay: str) -> tuple[dict, ...]:
    return tuple(d for d in yaml.safe_load_all(kustomize(overlay)) if d)


def find(docs, kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} in the build"
    return matches[0]


def workloads(docs) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


@dataclass
class PodSpec:
    """One workload's pod, as the kubelet sees it."""
    workload: dict
    config_text: str            # the nonstop.conf its ConfigMap mounts at /etc/nonstop

    @property
    def pod(self) -> dict:
        return self.workload["spec"]["template"]["spec"]

    @property
    def container(self) -> dict:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "nonstop"]
        return container

    @property
    def argv(self) -> list[str]:
        return list(self.container.get("command", [])) + list(self.container.get("args", []))

    @property
    def grace_period(self) -> float:
        return float(self.pod.get("terminationGracePeriodSeconds", 30))

    def prestop(self) -> tuple[list[str], float] | None:
        """(the grace command's argv, the wait in seconds after it), or None without a preStop hook."""
        hook = self.container.get("lifecycle", {}).get("preStop")
        if hook is None:
            return None
        command = hook["exec"]["command"]
        assert command[:2] == ["/bin/sh", "-c"] and len(command) == 3, command
        m = PRESTOP.match(command[2])
        assert m, f"preStop is not `nonstop -s grace -c CONF; sleep N`: {command[2]!r}"
        return m.group(1).split(), float(m.group(3))

    def probe(self, kind: str) -> dict:
        """readinessProbe / livenessProbe, with the named port resolved to a number."""
        probe = dict(self.container[kind])
        get = dict(probe["httpGet"])
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        get["port"] = ports.get(get["port"], get["port"])
        probe["httpGet"] = get
        return probe

    def env(self, pod_name: str, pod_ip: str) -> dict[str, str]:
        """The container's environment: fieldRefs resolved and $(VAR) expanded as the kubelet does."""
        out: dict[str, str] = {}
        fields = {"metadata.name": pod_name, "status.podIP": pod_ip, "metadata.namespace": "default"}
        for entry in self.container.get("env", []):
            if "valueFrom" in entry:
                out[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                out[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)),
                                            entry.get("value", ""))
        return out

    def grace_settings_ms(self) -> dict[str, int]:
        """grace_start_wait, grace_max_wait, grace_final_wait (SRS defaults when absent) and force_grace_quit."""
        values = {"grace_start_wait": 2300, "grace_max_wait": 0, "grace_final_wait": 3200}
        for name in values:
            m = re.search(rf"^\s*{name}\s+(\d+)\s*;", self.config_text, re.M)
            if m:
                values[name] = int(m.group(1))
        m = re.search(r"^\s*force_grace_quit\s+(\w+)\s*;", self.config_text, re.M)
        values["force_grace_quit"] = bool(m and m.group(1) == "on")
        return values


def pod_spec(docs, kind: str, name: str) -> PodSpec:
    workload = find(docs, kind, name)
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    spec = PodSpec(workload, "")
    (mount,) = [m for m in spec.container["volumeMounts"] if m["mountPath"] == CONFIG_DIR]
    configmap = find(docs, "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    spec.config_text = configmap["data"]["nonstop.conf"]
    return spec


def dockerfile() -> dict:
    """CMD (exec form), USER, EXPOSE and WORKDIR of deploy/Dockerfile (the last of each, as Docker reads it)."""
    out: dict = {"expose": []}
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "CMD":
            out["cmd"] = yaml.safe_load(rest)          # the exec form is a JSON array
        elif word == "USER":
            out["user"] = rest.strip()
        elif word == "EXPOSE":
            out["expose"] += [int(p.split("/")[0]) for p in rest.split()]
        elif word in ("FROM", "WORKDIR"):
            out[word.lower()] = rest.strip()
    return out
