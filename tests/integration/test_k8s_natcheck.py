"""k8s/check/natcheck.sh, the in-cluster NAT check's script, run as the Job's pod would run it: in a
network namespace standing for the pod, against a bootstrap and a relay in another one standing for
the cluster's services. It builds two hosts behind symmetric NATs with the NAT lab, connects the lab
to the "pod"'s network, and must reach one host from the other through the keyed relay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from .netns import private_namespace

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "k8s" / "check" / "natcheck.sh"
BIN = Path(sys.executable).parent


def test_natcheck_reaches_a_host_behind_a_symmetric_nat_through_the_deployed_relay(tmp_path: Path) -> None:
    prefix = f"k8c{uuid.uuid4().hex[:5]}"
    with private_namespace("cmk8ssvc") as svc, private_namespace("cmk8spod") as pod:
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "cmk8s0",
                "netns",
                svc.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.name,
            ],
            check=True,
            capture_output=True,
        )
        svc.run("ip", "addr", "add", "10.250.0.1/24", "dev", "cmk8s0")
        svc.run("ip", "link", "set", "cmk8s0", "up")
        pod.run("ip", "addr", "add", "10.250.0.2/24", "dev", "eth0")
        pod.run("ip", "link", "set", "eth0", "up")
        pod.run("ip", "route", "add", "default", "via", "10.250.0.1")
        svc.spawn(
            str(BIN / "coremesh-bootstrap"),
            "--listen",
            "10.250.0.1:7946",
            "--data-dir",
            str(tmp_path / "boot"),
            "--admin",
            "127.0.0.1:7948",
            log_path=str(tmp_path / "bootstrap.log"),
        )
        svc.spawn(
            str(BIN / "coremesh-relay"),
            "--listen",
            "10.250.0.1:3478",
            "--keyed-listen",
            "10.250.0.1:8443",
            "--min-port",
            "49152",
            "--max-port",
            "49161",
            "--admin",
            "127.0.0.1:9641",
            log_path=str(tmp_path / "relay.log"),
        )
        svc.wait_http("127.0.0.1:7948")
        svc.wait_http("127.0.0.1:9641")
        env = os.environ | {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "COREMESH_CHECK_PREFIX": prefix,
            "COREMESH_CHECK_BOOTSTRAP": "10.250.0.1:7946",
            "COREMESH_CHECK_RELAY_HOST": "10.250.0.1",
            "COREMESH_CHECK_KEYED_RELAY_HOST": "10.250.0.1",
        }
        done = subprocess.run(
            ["ip", "netns", "exec", pod.name, "sh", str(SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "natcheck: ok: a reached b through the deployment" in done.stdout
        assert '"via": "keyed"' in done.stdout  # two symmetric NATs: relayed, through the "cluster"'s relay
    # The script took its NAT lab down, also on success.
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
