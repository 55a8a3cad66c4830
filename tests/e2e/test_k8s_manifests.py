"""deploy/k8s and deploy/Dockerfile, checked offline: every kustomization builds (with each kubectl there is),
validates against the Kubernetes schemas, mounts a nonstop config that passes `nonstop -t` with the environment
the manifests set, keeps the grace arithmetic true, and agrees with the Dockerfile.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from nonstop.config import load_text
from tests.e2e.k8s_manifests import (
    CONFIG_PATH, GRACE_MARGIN_S, K8S, OVERLAYS, SCHEMA_VERSION, built, dockerfile, find, kubectls, kustomize,
    pod_spec, workloads,
)
from tests.helpers import run_nonstop

pytestmark = pytest.mark.timeout(120)

EDGES = {"base": ("nonstop-edge",), "overlays/stable": ("nonstop-edge",),
         "overlays/canary": ("nonstop-edge", "nonstop-edge-canary")}


def _normalized(text: str) -> list:
    """The documents of a build, with ConfigMap hash suffixes blanked (they depend on kustomize's version)."""
    text = re.sub(r"-config-[a-z0-9]{10}\b", "-config-HASH", text)
    return sorted((yaml.dump(d, sort_keys=True) for d in yaml.safe_load_all(text) if d))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_kustomization_builds_the_same_with_every_kubectl(overlay):
    assert kubectls(), "no kubectl: `make test` installs Debian's kubernetes-client"
    outputs = {}
    for kubectl in kubectls():
        version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=30)
        print(f"{kubectl}: {version.stdout.strip().splitlines()[0] if version.stdout else '?'}")
        outputs[kubectl] = _normalized(kustomize(overlay, kubectl))
    first = next(iter(outputs.values()))
    assert all(out == first for out in outputs.values()), "kubectl versions build different manifests"
    kinds = sorted(d["kind"] for d in built(overlay))
    print(f"{overlay}: {kinds}")
    assert {"StatefulSet", "Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= set(kinds)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_built_manifests_validate_against_the_kubernetes_schemas_offline(overlay, tmp_path):
    path = tmp_path / "built.yaml"
    path.write_text(kustomize(overlay))
    tool = [sys.executable, "-m", "kubernetes_validate"]
    proc = subprocess.run([*tool, "--strict", "-k", SCHEMA_VERSION, "--quiet", str(path)],
                          capture_output=True, text=True, timeout=60)
    print(proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_mounted_config_passes_nonstop_t_with_the_environment_the_manifests_set(overlay, tmp_path):
    docs = built(overlay)
    for workload in workloads(docs):
        spec = pod_spec(docs, workload["kind"], workload["metadata"]["name"])
        pod_name = f"{workload['metadata']['name']}-0"
        env = spec.env(pod_name, "10.0.0.1")
        conf = tmp_path / f"{workload['metadata']['name']}.conf"
        conf.write_text(spec.config_text)
        proc = run_nonstop("-t", "-c", str(conf), env=env)
        print(f"{workload['kind']}/{workload['metadata']['name']} with {env}: {proc.stdout.strip()}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "warning" not in (proc.stdout + proc.stderr).lower()
        config = load_text(spec.config_text, CONFIG_PATH, env)
        cluster = config.vhost_for("__defaultVhost__").cluster
        if workload["kind"] == "StatefulSet":
            assert cluster.advertise == f"{pod_name}.{workload['spec']['serviceName']}", cluster.advertise


def _origin_pod_names(docs) -> tuple[list[str], str]:
    origins = find(docs, "StatefulSet", "nonstop-origin")
    service = origins["spec"]["serviceName"]
    return [f"nonstop-origin-{i}.{service}" for i in range(origins["spec"]["replicas"])], service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_origins_and_edges_name_every_origin_pod_by_its_dns_name(overlay):
    docs = built(overlay)
    names, service = _origin_pod_names(docs)
    headless = find(docs, "Service", service)
    assert headless["spec"]["clusterIP"] == "None"
    origin = load_text(pod_spec(docs, "StatefulSet", "nonstop-origin").config_text, CONFIG_PATH, {})
    cluster = origin.vhost_for("__defaultVhost__").cluster
    assert cluster.mode == "local" and cluster.origin_cluster
    api_port = origin.http_api.listen.port
    assert cluster.coworkers == [f"{n}:{api_port}" for n in names]
    for name in EDGES[overlay]:
        edge = load_text(pod_spec(docs, "Deployment", name).config_text, CONFIG_PATH, {})
        cluster = edge.vhost_for("__defaultVhost__").cluster
        assert cluster.mode == "remote"
        assert cluster.origin == [f"{n}:{origin.listen[0].port}" for n in names]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_arithmetic_leaves_the_kubelet_no_reason_to_sigkill(overlay):
    docs = built(overlay)
    for workload in workloads(docs):
        spec = pod_spec(docs, workload["kind"], workload["metadata"]["name"])
        grace = spec.grace_settings_ms()
        prestop = spec.prestop()
        wait = prestop[1] if prestop else 0.0
        total = wait + (grace["grace_start_wait"] + grace["grace_max_wait"] + grace["grace_final_wait"]) / 1000
        print(f"{workload['metadata']['name']}: preStop wait {wait:g} s + grace_start_wait "
              f"{grace['grace_start_wait'] / 1000:g} s + grace_max_wait {grace['grace_max_wait'] / 1000:g} s + "
              f"grace_final_wait {grace['grace_final_wait'] / 1000:g} s + margin {GRACE_MARGIN_S} s = "
              f"{total + GRACE_MARGIN_S:g} s <= terminationGracePeriodSeconds {spec.grace_period:g}")
        assert grace["force_grace_quit"], "SIGTERM must be a graceful quit (force_grace_quit on)"
        assert grace["grace_max_wait"] > 0, "an unbounded drain can always meet the SIGKILL"
        assert total + GRACE_MARGIN_S <= spec.grace_period
        if workload["kind"] == "Deployment":
            assert prestop is not None and prestop[0][-1] == CONFIG_PATH
            strategy = workload["spec"]["strategy"]
            assert strategy["type"] == "RollingUpdate"
            assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
            # the endpoint is gone (readiness) well before the listeners close
            readiness = spec.probe("readinessProbe")
            assert readiness["httpGet"]["path"] == "/readyz"
            assert spec.probe("livenessProbe")["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dockerfile_runs_what_the_manifests_expect(overlay):
    docker = dockerfile()
    print(docker)
    assert docker["from"].startswith("python:3.11-slim")
    assert docker["cmd"] == ["nonstop", "-c", CONFIG_PATH]
    assert docker["user"].isdigit() and docker["user"] != "0", "a numeric non-root USER (runAsNonRoot checks it)"
    docs = built(overlay)
    for workload in workloads(docs):
        spec = pod_spec(docs, workload["kind"], workload["metadata"]["name"])
        assert spec.argv in ([], docker["cmd"]), spec.argv
        security = spec.pod["securityContext"]
        assert security["runAsNonRoot"] and str(security["runAsUser"]) == docker["user"]
        ports = sorted(p["containerPort"] for p in spec.container["ports"])
        assert ports == sorted(docker["expose"])
        config = load_text(spec.config_text, CONFIG_PATH, {})
        assert sorted([config.listen[0].port, config.http_api.listen.port, config.http_server.listen.port]) == ports
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == config.http_api.listen.port
        assert annotations["prometheus.io/path"] == "/metrics"


def test_the_canary_shares_the_services_selector_with_the_new_image():
    docs = built("overlays/canary")
    service = find(docs, "Service", "nonstop-edge")
    assert service["spec"]["type"] == "LoadBalancer"
    stable, canary = find(docs, "Deployment", "nonstop-edge"), find(docs, "Deployment", "nonstop-edge-canary")
    selector = service["spec"]["selector"]
    images = []
    for deployment in (stable, canary):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), (selector, labels)
        images.append(deployment["spec"]["template"]["spec"]["containers"][0]["image"])
    print(f"stable {images[0]}, canary {images[1]}")
    assert images[0] != images[1]
    assert canary["spec"]["replicas"] == 1
    assert stable["spec"]["selector"] != canary["spec"]["selector"], "each Deployment must own only its pods"
    # the canary's pod is the stable one apart from its image and track
    a, b = (yaml.dump(d["spec"]["template"]["spec"], sort_keys=True) for d in (stable, canary))
    assert a.replace(images[0], "IMAGE") == b.replace(images[1], "IMAGE")
    assert sorted(p.name for p in (K8S / "overlays").iterdir()) == ["canary", "stable"]
