"""The Kubernetes manifests (k8s/): every overlay renders with kustomize, every object passes
``kubernetes-validate --strict`` against the newest release it knows, and the properties the design
promises hold on every workload, so that a regression fails here rather than in someone's cluster.

No cluster is needed: ``kubectl kustomize`` renders offline (scripts/test.sh installs Debian's
``kubernetes-client`` where ``kubectl`` is missing) and ``kubernetes_validate`` ships its schemas
(a dev extra). A missing tool is a failure, never a skip.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from coremesh_bootstrap.settings import ENV_VARS as BOOTSTRAP_ENV
from coremesh_natlab import load
from coremesh_node.settings import ENV_VARS as NODE_ENV
from coremesh_relay.settings import ENV_VARS as RELAY_ENV

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# What `kubectl apply -k` takes: the overlays, the hostNetwork relay variant, the NAT check.
DEPLOYMENTS = ("overlays/local", "overlays/cloud", "variants/hostnetwork")
TARGETS = (*DEPLOYMENTS, "check")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
KNOWN_ENV = {*NODE_ENV.values(), *RELAY_ENV.values(), *BOOTSTRAP_ENV.values()}
SMALL_RANGE = 100  # relay ports a Service may reasonably list one by one


@cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is missing: scripts/test.sh installs it (Debian: apt-get install kubernetes-client)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(target: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(target) if o["kind"] == kind]


def named(target: str, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects(target, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{target}: expected one {kind} {name}, got {len(found)}"
    return found[0]


def workloads(target: str) -> Iterator[dict[str, Any]]:
    return (o for o in render(target) if o["kind"] in WORKLOAD_KINDS)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(target: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for w in workloads(target):
        for c in pod_spec(w)["containers"]:
            yield f"{w['kind']}/{w['metadata']['name']}/{c['name']}", pod_spec(w), c


def configmap_env(target: str, name: str) -> dict[str, str]:
    data: dict[str, str] = named(target, "ConfigMap", name)["data"]
    return data


# The oldest release each target supports (docs/deploy.md): NetworkPolicy endPort is GA from 1.25;
# the check Job's appArmorProfile field is from 1.30.
OLDEST = {
    "overlays/local": "1.25.0",
    "overlays/cloud": "1.25.0",
    "variants/hostnetwork": "1.25.0",
    "check": "1.30.0",
}


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_passes_strict_validation(target: str) -> None:
    import kubernetes_validate  # a dev extra: an ImportError here is the missing tool, loudly

    docs = render(target)
    assert docs
    for version in (kubernetes_validate.latest_version(), OLDEST[target]):
        for doc in docs:
            # strict: an unknown or misspelt field is an error, not silently dropped by the API server
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("target", DEPLOYMENTS)
def test_every_coremesh_container_is_locked_down(target: str) -> None:
    seen = set()
    for where, pod, c in containers(target):
        seen.add(c["name"])
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod.get("automountServiceAccountToken") is False, where
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert not sc.get("privileged"), where
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, f"{where}: {kind}"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where
    assert seen == {"bootstrap", "relay", "node"}, target


def probe_port(c: dict[str, Any], probe: str) -> int:
    port = c[probe]["httpGet"]["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in c["ports"] if p.get("name") == port)
    assert isinstance(port, int)
    return port


@pytest.mark.parametrize("target", DEPLOYMENTS)
def test_written_paths_are_volumes_and_probes_reach_the_admin_api(target: str) -> None:
    for w in workloads(target):
        pod = pod_spec(w)
        volumes = {v["name"] for v in pod.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in pod["containers"]:
            where = f"{w['kind']}/{c['name']}"
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert set(mounts.values()) <= volumes, where
            # The data dir (identity key, lock) and /tmp are writable volumes; the root is read-only.
            assert {"/var/lib/coremesh", "/tmp"} <= mounts.keys(), where
            prefix = "COREMESH_" if c["name"] == "node" else f"COREMESH_{c['name'].upper()}_"
            env = configmap_env(target, f"coremesh-{c['name']}") | {
                e["name"]: e["value"] for e in c.get("env", []) if "value" in e
            }
            assert env[prefix + "DATA_DIR"] == "/var/lib/coremesh", where
            admin_port = int(env[prefix + "ADMIN"].rpartition(":")[2])
            assert probe_port(c, "readinessProbe") == probe_port(c, "livenessProbe") == admin_port, where


@pytest.mark.parametrize("target", DEPLOYMENTS)
def test_only_existing_settings_variables_are_set(target: str) -> None:
    names: set[str] = set()
    for cm in objects(target, "ConfigMap"):
        names |= set(cm["data"])
    for _, _, c in containers(target):
        names |= {e["name"] for e in c.get("env", [])}
    coremesh = {n for n in names if n.startswith("COREMESH_")}
    assert coremesh, target
    assert coremesh <= KNOWN_ENV, f"not a setting of any service: {sorted(coremesh - KNOWN_ENV)}"


@pytest.mark.parametrize("target", DEPLOYMENTS)
def test_the_relay_port_range_is_small_and_listed_everywhere(target: str) -> None:
    env = configmap_env(target, "coremesh-relay")
    low, high = int(env["COREMESH_RELAY_MIN_PORT"]), int(env["COREMESH_RELAY_MAX_PORT"])
    wanted = set(range(low, high + 1))
    assert 0 < len(wanted) <= SMALL_RANGE
    assert int(env["COREMESH_RELAY_TOTAL_QUOTA"]) <= len(wanted)  # no allocation without a port
    udp = named(target, "Service", "coremesh-relay-udp")
    listed = {p["port"] for p in udp["spec"]["ports"] if p["protocol"] == "UDP"}
    assert listed == wanted | {3478}
    assert {p["targetPort"] for p in udp["spec"]["ports"]} == listed  # no port remapping: TURN tells
    relay = [w for w in workloads(target) if w["metadata"]["name"] == "coremesh-relay"]
    assert len(relay) == 1
    declared = {
        p["containerPort"] for p in pod_spec(relay[0])["containers"][0]["ports"] if p["protocol"] == "UDP"
    }
    assert declared == wanted | {3478}
    policy = named(target, "NetworkPolicy", "coremesh-relay")
    opened = [p for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]]
    assert {"port": low, "endPort": high, "protocol": "UDP"} in opened
    keyed = int(env["COREMESH_RELAY_KEYED_LISTEN"].rpartition(":")[2])
    assert {"port": keyed, "protocol": "TCP"} in opened
    tcp = named(target, "Service", "coremesh-relay-tcp")
    assert {(p["port"], p["protocol"]) for p in tcp["spec"]["ports"]} == {(3478, "TCP"), (keyed, "TCP")}


def test_local_overlay_uses_local_images_and_no_load_balancer() -> None:
    for where, _, c in containers("overlays/local"):
        assert c["imagePullPolicy"] == "Never", where
        assert "/" not in c["image"], where
    for w in workloads("overlays/local"):
        assert w["spec"].get("replicas", 1) == 1
    types = {s["spec"].get("type", "ClusterIP") for s in objects("overlays/local", "Service")}
    assert types == {"ClusterIP", "NodePort"}


def test_cloud_overlay_uses_load_balancers_that_keep_the_client_address() -> None:
    lbs = {
        s["metadata"]["name"]: s
        for s in objects("overlays/cloud", "Service")
        if s["spec"].get("type") == "LoadBalancer"
    }
    assert {
        "coremesh-relay-udp",
        "coremesh-relay-tcp",
        "coremesh-bootstrap-0-udp",
        "coremesh-bootstrap-1-udp",
    } <= lbs.keys()
    for name, svc in lbs.items():
        assert svc["spec"]["externalTrafficPolicy"] == "Local", name  # STUN must see the real source
    boot = named("overlays/cloud", "StatefulSet", "coremesh-bootstrap")
    assert boot["spec"]["replicas"] == 2
    pinned = {
        lbs[f"coremesh-bootstrap-{i}-udp"]["spec"]["selector"]["statefulset.kubernetes.io/pod-name"]
        for i in (0, 1)
    }
    assert pinned == {"coremesh-bootstrap-0", "coremesh-bootstrap-1"}
    for where, _, c in containers("overlays/cloud"):
        assert c["image"].startswith("REGISTRY.example.com/"), where
    # TURN behind the load balancer reports its public IP: a documentation address until replaced.
    external = configmap_env("overlays/cloud", "coremesh-relay")["COREMESH_RELAY_EXTERNAL_IP"]
    assert ipaddress.ip_address(external) in ipaddress.ip_network("192.0.2.0/24")
    assert "PLACEHOLDER" in (K8S / "overlays/cloud/cloud-relay-config.yaml").read_text()
    # The relay stays one pod per address: allocations and keyed sessions live in one process.
    relay = named("overlays/cloud", "Deployment", "coremesh-relay")
    assert relay["spec"]["replicas"] == 1 and relay["spec"]["strategy"]["type"] == "Recreate"


def test_hostnetwork_variant_runs_the_relay_on_the_nodes() -> None:
    target = "variants/hostnetwork"
    assert not [d for d in objects(target, "Deployment") if d["metadata"]["name"] == "coremesh-relay"]
    ds = named(target, "DaemonSet", "coremesh-relay")
    pod = pod_spec(ds)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    c = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    # No NetworkPolicy guards a hostNetwork pod: the unauthenticated admin API stays on loopback.
    assert env["COREMESH_RELAY_ADMIN"].startswith("127.0.0.1:")
    assert env["COREMESH_RELAY_ADMIN_ALLOW_REMOTE"] == "false"
    assert c["readinessProbe"]["httpGet"]["host"] == "127.0.0.1"
    for p in c["ports"]:
        assert p["hostPort"] == p["containerPort"]
    cloud = (K8S / "overlays/cloud/cloud-replicas.yaml").read_text()
    assert (K8S / target / "replicas.yaml").read_text() == cloud


def test_secrets_are_marked_placeholders() -> None:
    secrets = objects("overlays/cloud", "Secret")
    assert [s["metadata"]["name"] for s in secrets] == ["coremesh-turn"]
    data = secrets[0]["stringData"]
    assert data["password"].startswith("PLACEHOLDER") and data["rest-secret"].startswith("PLACEHOLDER")


def test_disruption_budgets_and_network_policies_cover_every_service() -> None:
    for target in DEPLOYMENTS:
        apps = {"coremesh-bootstrap", "coremesh-relay", "coremesh-node"}
        pdbs = {
            p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            for p in objects(target, "PodDisruptionBudget")
        }
        assert pdbs == apps
        policies = objects(target, "NetworkPolicy")
        deny = [p for p in policies if p["spec"]["podSelector"] == {}]
        assert len(deny) == 1 and "ingress" not in deny[0]["spec"]
        for p in policies:
            for rule in p["spec"].get("ingress", []):
                # An admin port (no authentication) is open only to labelled admin clients.
                if any(port["port"] in (7947, 7948, 9641) for port in rule["ports"]):
                    assert rule["from"] == [
                        {"podSelector": {"matchLabels": {"coremesh.io/admin-client": "true"}}}
                    ]


def test_nat_check_job_has_only_net_admin_and_sys_admin() -> None:
    job = named("check", "Job", "coremesh-natcheck")
    pod = pod_spec(job)
    assert not pod.get("hostNetwork")
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN"]}
    assert sc["readOnlyRootFilesystem"] is True
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    # The script and topology come from the generated ConfigMap the pod mounts.
    (cm,) = objects("check", "ConfigMap")
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {cm["metadata"]["name"]}
    topology = load(K8S / "check" / "natcheck.toml")
    assert {r.name: r.nat.mapping for r in topology.routers} == {
        "nat_a": "address-and-port-dependent",
        "nat_b": "address-and-port-dependent",
    }
    assert tomllib.loads(cm["data"]["natcheck.toml"]) == tomllib.loads(
        (K8S / "check" / "natcheck.toml").read_text()
    )
    done = subprocess.run(
        ["sh", "-n", str(K8S / "check" / "natcheck.sh")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def container_env(target: str, c: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom ConfigMaps, then env, with Secret
    values and ``$(NAME)`` references to earlier variables expanded as the kubelet does."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env |= configmap_env(target, source["configMapRef"]["name"])
    secrets = {s["metadata"]["name"]: s["stringData"] for s in objects(target, "Secret")}
    for e in c.get("env", []):
        if "value" in e:
            value = e["value"]
            for name, known in env.items():
                value = value.replace(f"$({name})", known)
            assert "$(" not in value, f"{e['name']}: unresolved reference in {e['value']!r}"
            env[e["name"]] = value
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env


@pytest.mark.parametrize("target", DEPLOYMENTS)
def test_each_service_accepts_its_command_and_environment(target: str) -> None:
    # The services' own settings layers check what the manifests give them (no socket is opened).
    from coremesh_bootstrap.settings import resolve as bootstrap_settings
    from coremesh_node.settings import resolve as node_settings
    from coremesh_relay.settings import resolve as relay_settings

    resolvers = {
        "coremesh-node": node_settings,
        "coremesh-relay": relay_settings,
        "coremesh-bootstrap": bootstrap_settings,
    }
    checked = set()
    for where, _, c in containers(target):
        program, *argv = c["command"]
        settings = resolvers[program](argv, container_env(target, c))
        checked.add(program)
        if program == "coremesh-relay":
            env = container_env(target, c)
            assert (settings.min_port, settings.max_port) == (
                int(env["COREMESH_RELAY_MIN_PORT"]),
                int(env["COREMESH_RELAY_MAX_PORT"]),
            )
            assert settings.keyed_listen is not None and len(settings.users) == 1, where
            assert settings.static_auth_secret is not None, where
        if program == "coremesh-node":
            (relay,) = settings.mesh.relay_servers
            assert (relay.username, relay.address.port) == ("mesh", 3478), where
            assert len(settings.mesh.keyed_relay_urls) == 1 and settings.mesh.bootstrap_addresses, where
    assert checked == set(resolvers)
